"""Datasets as in-memory arrays: train / validation / test splits.

Every loader returns a :class:`Dataset` of numpy arrays that the engine puts on
the device once; batches are then gathered on the device inside the compiled
training segment, so no host round trip happens per step.

Image datasets of the paper (MNIST, Fashion-MNIST, CIFAR-10, EMNIST-letters)
come from :func:`load_dataset`, either from local raw files (the original IDX
files, CIFAR-10 as ``.npz`` parts) or from tensorflow-datasets' array-record
data sources, read without TensorFlow. :func:`augment_crop_flip` is the
on-device random crop + horizontal flip used to train the ResNets.
"""

from __future__ import annotations

import gzip
import lzma
import os
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "RawSplits",
    "Split",
    "augment_crop_flip",
    "channel_stats",
    "load_dataset",
    "load_mnist1d",
    "load_raw",
    "load_tfds",
    "normalise",
    "read_idx_gz",
    "read_idx_split",
    "read_npz_split",
    "split_validation",
]


class Split(NamedTuple):
    """One split of a classification dataset."""

    inputs: np.ndarray  # shape=(N, ...), dtype=float32, normalised
    labels: np.ndarray  # shape=(N,), dtype=int32, values in [0, num_classes)


class Dataset(NamedTuple):
    """A classification dataset with a held-out validation split."""

    train: Split
    validation: Split
    test: Split
    num_classes: int
    name: str


def _check_fraction(fraction: Any) -> None:
    """Raises unless ``fraction`` is a number in (0, 1), before any data is read."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.number):
        raise TypeError(
            f"validation_fraction must be a number in (0, 1), got {fraction!r}"
        )
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be in (0, 1), got {fraction}; "
            "the paper holds out 0.1 of the training set."
        )


def split_validation(
    inputs: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[Split, Split]:
    """Holds out a seeded random ``fraction`` of a training set for validation.

    Args:
        inputs: training inputs, shape ``(N, ...)``.
        labels: training labels, shape ``(N,)``.
        fraction: share of examples held out, in ``(0, 1)``.
        seed: seed of the permutation; the same seed gives the same split.

    Returns:
        ``(train, validation)`` splits.
    """
    _check_fraction(fraction)
    if len(inputs) != len(labels):
        raise ValueError(
            f"inputs and labels must hold the same number of examples, got "
            f"{len(inputs)} inputs and {len(labels)} labels"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    n_val = max(1, int(round(fraction * len(labels))))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return (
        Split(inputs[train_idx], labels[train_idx]),
        Split(inputs[val_idx], labels[val_idx]),
    )


def load_mnist1d(
    *, num_samples: int = 5000, seed: int = 42, validation_fraction: float = 0.1
) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated procedurally: no network, no files.

    Uses the ``mnist1d`` package's ``make_dataset`` (install the
    ``experiments`` extra). Inputs are 40-sample 1D signals, 10 classes.

    Args:
        num_samples: total examples generated (train + test, 80 / 20).
        seed: seed of the generator and of the validation split.
        validation_fraction: share of the training set held out for validation.

    Returns:
        A :class:`Dataset` with inputs of shape ``(N, 40)``, standardised with
        the training mean and std.
    """
    _check_fraction(validation_fraction)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise TypeError(f"num_samples must be an int, got {num_samples!r}")
    if num_samples < 10:
        raise ValueError(f"num_samples must be >= 10, got {num_samples}")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_mnist1d needs the mnist1d package: pip install 'tempering[experiments]'"
        ) from err
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    raw = make_dataset(args)
    x_train = np.asarray(raw["x"], np.float32)
    y_train = np.asarray(raw["y"], np.int32)
    x_test = np.asarray(raw["x_test"], np.float32)
    y_test = np.asarray(raw["y_test"], np.int32)
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    train, validation = split_validation(x_train, y_train, validation_fraction, seed)
    return Dataset(train, validation, Split(x_test, y_test), 10, "mnist1d")


# ----------------------------------------------------------------------------
# Image datasets of the paper: MNIST, Fashion-MNIST, CIFAR-10, EMNIST-letters.
# ----------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 0x00000803  # IDX: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # IDX: unsigned bytes, 1 dimension

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CIFAR_TRAIN_PARTS = ("train_0.npz", "train_1.npz", "train_2.npz")
_CIFAR_TEST_PARTS = ("test.npz",)

# EMNIST-letters in tensorflow-datasets declares ``ClassLabel(num_classes=37)``
# (the builder's ``class_number``), but the data it is built from (the
# ``emnist-letters-*-labels-idx1-ubyte`` files of the EMNIST distribution) only
# uses labels 1..26 for the letters a/A..z/Z; 0 and 27..36 never occur.
EMNIST_LETTERS_FIRST_LABEL = 1
EMNIST_LETTERS_NUM_CLASSES = 26


class DatasetSpec(NamedTuple):
    """What :func:`load_dataset` knows about one named dataset.

    Attributes:
        tfds_name: name for ``tfds.data_source``.
        raw_files: file names under ``<data_dir>/<raw_subdir>`` of the local raw
            copy, ``()`` when there is none.
        raw_subdir: folder of the raw copy under ``data_dir``.
        image_shape: ``(H, W, C)`` of one image.
        num_classes: number of classes after any label remapping.
    """

    tfds_name: str
    raw_files: tuple[str, ...]
    raw_subdir: str
    image_shape: tuple[int, int, int]
    num_classes: int


_IDX_FILE_NAMES = _IDX_FILES["train"] + _IDX_FILES["test"]

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", _IDX_FILE_NAMES, "mnist", (28, 28, 1), 10),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", _IDX_FILE_NAMES, "fashion_mnist", (28, 28, 1), 10
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        _CIFAR_TRAIN_PARTS + _CIFAR_TEST_PARTS,
        "cifar10",
        (32, 32, 3),
        10,
    ),
    "emnist/letters": DatasetSpec(
        "emnist/letters", (), "emnist_letters", (28, 28, 1), 26
    ),
}

_SOURCES = ("auto", "raw", "tfds")


class RawSplits(NamedTuple):
    """Un-normalised uint8 images (NHWC) and int32 labels of train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# ----------------------------------------------------------------------------
# Raw files: IDX (gzip) and npz.
# ----------------------------------------------------------------------------


def read_idx_gz(path: str | os.PathLike, *, magic: int) -> np.ndarray:
    """Reads one gzip-compressed IDX file of unsigned bytes.

    Args:
        path: the ``.gz`` file.
        magic: the expected big-endian int32 magic number, e.g.
            ``0x00000803`` for 3-dimensional uint8 images or ``0x00000801``
            for 1-dimensional uint8 labels.

    Returns:
        A uint8 array whose shape is given by the file header.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not gzip, has another magic number or its
            payload size disagrees with its header.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"IDX file not found: {path} (expected a gzip-compressed IDX file "
            f"with magic number {magic:#010x})"
        )
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"{path} is not a valid gzip file ({err}); expected a "
            f"gzip-compressed IDX file with magic number {magic:#010x}"
        ) from err
    if len(data) < 4 or int.from_bytes(data[:4], "big") != magic:
        found = f"{int.from_bytes(data[:4], 'big'):#010x}" if len(data) >= 4 else "none"
        raise ValueError(
            f"{path} has IDX magic number {found}, expected {magic:#010x} "
            f"(uint8 data with {magic & 0xFF} dimension(s))"
        )
    header_len = 4 + 4 * (magic & 0xFF)
    if len(data) < header_len:
        raise ValueError(
            f"{path} is too short for an IDX header: {len(data)} bytes, expected "
            f"at least {header_len}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data[4:header_len], dtype=">u4"))
    expected = int(np.prod(dims))
    if len(data) - header_len != expected:
        raise ValueError(
            f"{path}: header gives shape {dims}, i.e. {expected} bytes of data, "
            f"but the file holds {len(data) - header_len}"
        )
    return np.frombuffer(data, np.uint8, offset=header_len).reshape(dims).copy()


def read_idx_split(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a pair of IDX image and label files (MNIST format).

    Args:
        images_path: ``*-images-idx3-ubyte.gz``.
        labels_path: ``*-labels-idx1-ubyte.gz``.
        image_shape: expected ``(H, W, 1)`` of one image.
        num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
        ``(images, labels)``: uint8 ``(N, H, W, 1)`` and int32 ``(N,)``.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: if a file is corrupt or the two files disagree.
    """
    images = read_idx_gz(images_path, magic=IDX_IMAGES_MAGIC)
    labels = read_idx_gz(labels_path, magic=IDX_LABELS_MAGIC)
    if images.shape[1:] != image_shape[:2]:
        raise ValueError(
            f"{os.fspath(images_path)} holds images of shape {images.shape[1:]}, "
            f"expected {image_shape[:2]}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{os.fspath(images_path)} holds {len(images)} images but "
            f"{os.fspath(labels_path)} holds {len(labels)} labels; expected equal "
            "counts"
        )
    _check_labels(labels, num_classes, os.fspath(labels_path))
    return images[..., None], labels.astype(np.int32)


def read_npz_split(
    paths: Sequence[str | os.PathLike],
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads and concatenates ``.npz`` parts holding ``x`` (NHWC uint8) and ``y``.

    Args:
        paths: the parts, concatenated in this order.
        image_shape: expected ``(H, W, C)`` of one image.
        num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
        ``(images, labels)``: uint8 ``(N, H, W, C)`` and int32 ``(N,)``.

    Raises:
        FileNotFoundError: if a part is missing.
        ValueError: if a part is unreadable, lacks ``x`` or ``y``, or holds
            arrays of the wrong shape or dtype.
    """
    xs, ys = [], []
    for path in [os.fspath(p) for p in paths]:
        x, y = _read_npz_part(path, image_shape)
        _check_labels(y, num_classes, path)
        xs.append(x)
        ys.append(y.astype(np.int32))
    return np.concatenate(xs), np.concatenate(ys)


def _read_npz_part(
    path: str, image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    expected = (
        f"an npz archive with 'x' (uint8, shape (N, {', '.join(map(str, image_shape))}))"
        " and 'y' (integer labels, shape (N,))"
    )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz file not found: {path} (expected {expected})")
    x, y = _npz_members(path, expected)
    if x.dtype != np.uint8 or x.shape[1:] != image_shape or x.ndim != 4:
        raise ValueError(
            f"{path}: 'x' has dtype {x.dtype} and shape {x.shape}; expected {expected}"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{path}: 'y' has dtype {y.dtype} and shape {y.shape} for {len(x)} "
            f"images; expected {expected}"
        )
    return x, y


def _npz_members(path: str, expected: str) -> tuple[np.ndarray, np.ndarray]:
    """Members ``x`` and ``y`` of an npz archive; ValueError naming ``path``."""
    with open(path, "rb") as f:
        try:
            loaded = np.load(f, allow_pickle=False)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"{path} is not a readable npz file ({err}); expected {expected}"
            ) from err
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single array, expected {expected}")
        with loaded as archive:
            missing = sorted({"x", "y"} - set(archive.files))
            if missing:
                raise ValueError(
                    f"{path} lacks key(s) {missing} (found {sorted(archive.files)}); "
                    f"expected {expected}"
                )
            try:
                return archive["x"], archive["y"]
            except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as err:
                raise ValueError(
                    f"{path}: a member is corrupt ({err}); expected {expected}"
                ) from err


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: labels span [{labels.min()}, {labels.max()}], expected "
            f"values in [0, {num_classes})"
        )


def _raw_path(spec: DatasetSpec, data_dir: str | os.PathLike, file: str) -> str:
    return os.path.join(os.fspath(data_dir), spec.raw_subdir, file)


def load_raw(name: str, data_dir: str | os.PathLike) -> RawSplits:
    """Reads the local raw copy of a dataset (layout of ``shared/data``).

    Layout: ``<data_dir>/mnist/*.gz`` and ``<data_dir>/fashion_mnist/*.gz``
    (the four original IDX files each), ``<data_dir>/cifar10/train_0.npz``,
    ``train_1.npz``, ``train_2.npz`` (training images in the original order)
    and ``test.npz``, each holding ``x`` (uint8 NHWC) and ``y`` (labels).

    Args:
        name: one of :data:`DATASETS` that has a raw copy.
        data_dir: root folder of the raw copies.

    Returns:
        The un-normalised train and test splits.

    Raises:
        ValueError: for ``emnist/letters`` (no raw copy exists), an unknown
            name, or a corrupt file.
        FileNotFoundError: if a file is missing.
    """
    spec = _spec(name)
    if not spec.raw_files:
        raise ValueError(
            f"{name!r} has no raw-file loader (no verified raw copy is "
            "distributed with this project); load it through tensorflow-datasets "
            f"with load_dataset({name!r}, source='tfds')"
        )
    paths = {f: _raw_path(spec, data_dir, f) for f in spec.raw_files}
    if spec.raw_files == _IDX_FILE_NAMES:
        train = read_idx_split(
            *(paths[f] for f in _IDX_FILES["train"]),
            image_shape=spec.image_shape,
            num_classes=spec.num_classes,
        )
        test = read_idx_split(
            *(paths[f] for f in _IDX_FILES["test"]),
            image_shape=spec.image_shape,
            num_classes=spec.num_classes,
        )
    else:
        train = read_npz_split(
            [paths[f] for f in _CIFAR_TRAIN_PARTS],
            image_shape=spec.image_shape,
            num_classes=spec.num_classes,
        )
        test = read_npz_split(
            [paths[f] for f in _CIFAR_TEST_PARTS],
            image_shape=spec.image_shape,
            num_classes=spec.num_classes,
        )
    return RawSplits(*train, *test)


# ----------------------------------------------------------------------------
# tensorflow-datasets (array-record data sources, no TensorFlow needed).
# ----------------------------------------------------------------------------


def load_tfds(name: str, data_dir: str | os.PathLike | None = None) -> RawSplits:
    """Reads a dataset through ``tfds.data_source``, without TensorFlow.

    The dataset must already be prepared in the ``array_record`` file format
    under ``data_dir`` (e.g. ``tfds build mnist --file_format=array_record``,
    run once where TensorFlow and network are available); nothing is
    downloaded here. Every example is read into memory.

    EMNIST-letters is fixed up on the way: tfds stores the images as in the
    EMNIST distribution, i.e. transposed (mirrored and rotated by 90 degrees),
    so the height and width axes are swapped back; and its labels 1..26
    (a..z, tfds declares 37 classes but only these occur) become 0..25.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: tfds data directory; ``None`` for tfds' default.

    Returns:
        The un-normalised train and test splits.

    Raises:
        ImportError: if tensorflow-datasets is not installed.
        FileNotFoundError: if the prepared dataset is not found.
        ValueError: if the examples have an unexpected shape or labels.
    """
    spec = _spec(name)
    train = _read_tfds_split(spec, "train", data_dir)
    test = _read_tfds_split(spec, "test", data_dir)
    if name == "emnist/letters":
        train = _fix_emnist_letters(*train, where=f"tfds {name} train")
        test = _fix_emnist_letters(*test, where=f"tfds {name} test")
    return RawSplits(*train, *test)


def _read_tfds_split(
    spec: DatasetSpec, split: str, data_dir: str | os.PathLike | None
) -> tuple[np.ndarray, np.ndarray]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "source='tfds' needs tensorflow-datasets: pip install 'tempering[tfds]'"
        ) from err
    where = f"tfds {spec.tfds_name!r} split {split!r}"
    try:
        source = tfds.data_source(
            spec.tfds_name, split=split, data_dir=data_dir, download=False
        )
    except (NotImplementedError, AssertionError, FileNotFoundError) as err:
        raise FileNotFoundError(
            f"{where}: no array_record copy found in "
            f"{data_dir or 'the default tfds data_dir'} ({err}). Prepare it once "
            f"with `tfds build {spec.tfds_name} --file_format=array_record "
            "--data_dir=...`, or use local raw files with source='raw'."
        ) from err
    images, labels = _examples_to_arrays([source[i] for i in range(len(source))])
    if images.shape[1:] != spec.image_shape or images.dtype != np.uint8:
        raise ValueError(
            f"{where}: images have dtype {images.dtype} and shape "
            f"{images.shape[1:]}, expected uint8 {spec.image_shape}"
        )
    return images, labels


def _examples_to_arrays(
    examples: Sequence[dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([np.asarray(ex["image"]) for ex in examples])
    labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
    return images, labels


def _fix_emnist_letters(
    images: np.ndarray, labels: np.ndarray, *, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Transposes EMNIST images upright and maps letter labels 1..26 to 0..25."""
    first, n = EMNIST_LETTERS_FIRST_LABEL, EMNIST_LETTERS_NUM_CLASSES
    if labels.size and (labels.min() < first or labels.max() >= first + n):
        raise ValueError(
            f"{where}: labels span [{labels.min()}, {labels.max()}], expected the "
            f"EMNIST-letters labels {first}..{first + n - 1} (a..z)"
        )
    upright = np.ascontiguousarray(images.transpose(0, 2, 1, 3))
    return upright, (labels - first).astype(np.int32)


# ----------------------------------------------------------------------------
# Normalisation and the public loader.
# ----------------------------------------------------------------------------


def channel_stats(
    images: np.ndarray, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of NHWC images, in float64, chunk by chunk.

    Args:
        images: shape ``(N, H, W, C)``, any numeric dtype.
        chunk: images converted to float64 at a time (bounds the memory).

    Returns:
        ``(mean, std)``, each of shape ``(C,)``, in the units of ``images``.
    """
    total = np.zeros(images.shape[-1])
    total_sq = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64)
        total += block.sum(axis=(0, 1, 2))
        total_sq += np.square(block).sum(axis=(0, 1, 2))
    count = max(1, images.size // images.shape[-1])
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))


def normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(images - mean) / std`` per channel, as float32 (a std of 0 counts as 1).

    Args:
        images: shape ``(N, H, W, C)``.
        mean: shape ``(C,)``.
        std: shape ``(C,)``.

    Returns:
        float32 array of the shape of ``images``.
    """
    out = images.astype(np.float32)
    out -= np.asarray(mean, np.float32)
    out /= np.where(np.asarray(std) > 0, std, 1.0).astype(np.float32)
    return out


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Loads an image dataset of the paper with its seeded validation split.

    ``validation_fraction`` of the training set is held out for validation
    (seeded, :func:`split_validation`); the mean and std of each channel are
    computed on the remaining training split and applied to all three splits.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or
            ``"emnist/letters"``.
        data_dir: root of the raw files (``<data_dir>/mnist/*.gz``,
            ``<data_dir>/cifar10/*.npz``, see :func:`load_raw`) and/or the tfds
            data directory; ``None``: tfds' default directory.
        source: ``"raw"`` (local raw files, :func:`load_raw`), ``"tfds"``
            (tensorflow-datasets array-record data, :func:`load_tfds`) or
            ``"auto"``: raw when ``data_dir`` holds all raw files of ``name``,
            else tfds.
        validation_fraction: share of the training set held out.
        seed: seed of the validation split.

    Returns:
        A :class:`Dataset` with float32 NHWC inputs, ``(N, 28, 28, 1)`` or
        ``(N, 32, 32, 3)``, and int32 labels in ``[0, num_classes)``.

    Raises:
        ValueError: unknown name or source, raw source without ``data_dir`` or
            for ``emnist/letters``, corrupt files.
        FileNotFoundError: missing files; also when ``source="auto"`` and
            ``data_dir`` holds only some of the raw files of ``name``.
    """
    spec = _spec(name)
    _check_fraction(validation_fraction)
    resolved = _resolve_source(name, spec, source, data_dir)
    if resolved == "raw":
        if data_dir is None:
            raise ValueError(
                "source='raw' needs data_dir, the folder holding "
                f"{spec.raw_subdir}/{{{', '.join(spec.raw_files)}}}"
            )
        raw = load_raw(name, data_dir)
    else:
        raw = load_tfds(name, data_dir)
    train, validation = split_validation(
        raw.train_images, raw.train_labels, validation_fraction, seed
    )
    mean, std = channel_stats(train.inputs)
    return Dataset(
        train=Split(normalise(train.inputs, mean, std), train.labels),
        validation=Split(normalise(validation.inputs, mean, std), validation.labels),
        test=Split(normalise(raw.test_images, mean, std), raw.test_labels),
        num_classes=spec.num_classes,
        name=name,
    )


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]


def _resolve_source(
    name: str, spec: DatasetSpec, source: str, data_dir: str | os.PathLike | None
) -> str:
    if source not in _SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(_SOURCES)}")
    if source != "auto":
        return source
    if data_dir is None or not spec.raw_files:
        return "tfds"
    paths = [_raw_path(spec, data_dir, f) for f in spec.raw_files]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return "raw"
    if len(missing) < len(paths):
        raise FileNotFoundError(
            f"{os.fspath(data_dir)} holds only part of the raw files of {name!r}; "
            f"missing: {', '.join(missing)}"
        )
    return "tfds"


# ----------------------------------------------------------------------------
# On-device augmentation.
# ----------------------------------------------------------------------------


def augment_crop_flip(
    key: jax.Array, images: jax.Array, *, padding: int = 4
) -> jax.Array:
    """Random crop after zero padding and random horizontal flip, per example.

    The standard CIFAR ResNet augmentation: each image of the NHWC batch is
    padded with ``padding`` zeros on every side (zero is the mean pixel once
    the inputs are normalised), cropped back to ``(H, W)`` at an offset drawn
    uniformly in ``[0, 2 * padding]`` per axis, and mirrored left-right with
    probability 1/2. Pure and jittable; vmap it over replicas with one key
    each.

    Args:
        key: PRNG key.
        images: shape ``(N, H, W, C)``.
        padding: pixels of zero padding on each side.

    Returns:
        Augmented images, same shape and dtype as ``images``.
    """
    if np.ndim(images) != 4:
        raise ValueError(
            f"images must be NHWC, shape (N, H, W, C), got shape {np.shape(images)}"
        )
    if isinstance(padding, bool) or not isinstance(padding, int | np.integer):
        raise TypeError(f"padding must be an int >= 0, got {padding!r}")
    if padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding}")
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    key_crop, key_flip = jax.random.split(key)
    offsets = jax.random.randint(key_crop, (n, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(key_flip, 0.5, (n,))

    def crop_flip(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(crop_flip)(padded, offsets, flips)
