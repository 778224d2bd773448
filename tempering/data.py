"""Datasets as in-memory arrays: train / validation / test splits.

Every loader returns a :class:`Dataset` of numpy arrays that the engine puts on
the device once; batches are then gathered on the device inside the compiled
training segment, so no host round trip happens per step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "Split", "load_mnist1d", "split_validation"]


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
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be in (0, 1), got {fraction}; "
            "the paper holds out 0.1 of the training set."
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
