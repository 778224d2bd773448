"""The files of the paper's image datasets: raw IDX / ``.npz`` files and tfds sources.

:func:`load_raw` reads the original MNIST-style IDX files (gzip) and CIFAR-10
as ``.npz`` parts from a directory; :func:`load_tfds` reads
tensorflow-datasets' array-record data sources without TensorFlow. Both return
:class:`RawSplits` (uint8 images, int labels), which
:func:`tempering.zoo.datasets.load_dataset` normalises and splits. :data:`DATASETS`
describes each dataset (shapes, classes, files, tfds name).
"""

from __future__ import annotations

import gzip
import lzma
import os
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "RawSplits",
    "dataset_spec",
    "load_raw",
    "load_tfds",
    "raw_path",
    "read_idx_gz",
    "read_idx_split",
    "read_npz_split",
]


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


class RawSplits(NamedTuple):
    """Un-normalised uint8 images (NHWC) and int32 labels of train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


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
            except (
                OSError,
                EOFError,
                ValueError,
                zipfile.BadZipFile,
                zlib.error,
                lzma.LZMAError,
            ) as err:
                raise ValueError(
                    f"{path}: a member is corrupt ({err}); expected {expected}"
                ) from err


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: labels span [{labels.min()}, {labels.max()}], expected "
            f"values in [0, {num_classes})"
        )


def raw_path(spec: DatasetSpec, data_dir: str | os.PathLike, file: str) -> str:
    """Where the raw ``file`` of ``spec`` lies under ``data_dir``."""
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
    spec = dataset_spec(name)
    if not spec.raw_files:
        raise ValueError(
            f"{name!r} has no raw-file loader (no verified raw copy is "
            "distributed with this project); load it through tensorflow-datasets "
            f"with load_dataset({name!r}, source='tfds')"
        )
    paths = {f: raw_path(spec, data_dir, f) for f in spec.raw_files}
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
    spec = dataset_spec(name)
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
            "--data_dir=...`, or use local raw files with source='raw'"
            + (
                f" (data_dir/{spec.raw_subdir}/{{{', '.join(spec.raw_files)}}})."
                if spec.raw_files
                else "."
            )
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


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``, else a ValueError naming the known ones."""
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]
