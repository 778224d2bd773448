"""Datasets as in-memory arrays: MNIST-1D and the paper's image datasets.

Every loader returns a :class:`tempering.data.Dataset` of numpy arrays that the
engine puts on the device once; batches are then gathered on the device inside
the compiled training segment, so no host round trip happens per step.

Image datasets of the paper (MNIST, Fashion-MNIST, CIFAR-10, EMNIST-letters)
come from :func:`load_dataset`, either from local raw files (the original IDX
files, CIFAR-10 as ``.npz`` parts) or from tensorflow-datasets' array-record
data sources, read without TensorFlow (:mod:`tempering.zoo.dataset_files`).
:func:`augment_crop_flip` is the on-device random crop + horizontal flip used
to train the ResNets.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from tempering.data import (
    Dataset,
    Split,
    check_fraction,
    check_seed,
    split_validation,
)
from tempering.zoo.dataset_files import (
    DATASETS,
    DatasetSpec,
    RawSplits,
    dataset_spec,
    load_raw,
    load_tfds,
    raw_path,
    read_idx_gz,
    read_idx_split,
    read_npz_split,
)

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
    check_fraction(validation_fraction)
    check_seed(seed)
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
    caller_rng = np.random.get_state()  # make_dataset reseeds numpy's global one
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(caller_rng)
    x_train = np.asarray(raw["x"], np.float32)
    y_train = np.asarray(raw["y"], np.int32)
    x_test = np.asarray(raw["x_test"], np.float32)
    y_test = np.asarray(raw["y_test"], np.int32)
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    train, validation = split_validation(x_train, y_train, validation_fraction, seed)
    return Dataset(train, validation, Split(x_test, y_test), 10, "mnist1d")


_SOURCES = ("auto", "raw", "tfds")


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
            for ``emnist/letters``, corrupt files, ``validation_fraction``
            outside ``(0, 1)``, a negative ``seed``.
        TypeError: ``validation_fraction`` or ``seed`` not a number.
        FileNotFoundError: missing files; also when ``source="auto"`` and
            ``data_dir`` holds only some of the raw files of ``name``.
        ImportError: ``source="tfds"`` without tensorflow-datasets.
    """
    spec = dataset_spec(name)
    check_fraction(validation_fraction)
    check_seed(seed)
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


def _resolve_source(
    name: str, spec: DatasetSpec, source: str, data_dir: str | os.PathLike | None
) -> str:
    if source not in _SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(_SOURCES)}")
    if source != "auto":
        return source
    if data_dir is None or not spec.raw_files:
        return "tfds"
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"data_dir {os.fspath(data_dir)} is no folder: give the folder that "
            f"holds {spec.raw_subdir}/ (the raw files) or tfds' data, or None for "
            "tfds' default folder"
        )
    paths = [raw_path(spec, data_dir, f) for f in spec.raw_files]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return "raw"
    if len(missing) < len(paths):
        raise FileNotFoundError(
            f"{os.fspath(data_dir)} holds only part of the raw files of {name!r}; "
            f"missing: {', '.join(missing)}"
        )
    if all(os.path.isfile(os.path.join(data_dir, f)) for f in spec.raw_files):
        raise FileNotFoundError(
            f"data_dir {os.fspath(data_dir)} holds the raw files of {name!r} "
            f"themselves: give its parent, whose {spec.raw_subdir}/ holds them"
        )
    return "tfds"


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
    offsets = jax.random.randint(key_crop, (n, 2), 0, 2 * padding + 1, jnp.int32)
    flips = jax.random.bernoulli(key_flip, jnp.float32(0.5), (n,))

    def crop_flip(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
        crop = jax.lax.dynamic_slice(
            image, (offset[0], offset[1], jnp.int32(0)), (h, w, c)
        )
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(crop_flip)(padded, offsets, flips)
