"""The engine's data types: train / validation / test splits as in-memory arrays.

A :class:`Split` is one split's ``(inputs, labels)``; a :class:`Dataset` the
three splits of a classification task; :func:`split_validation` holds out a
validation split. The datasets themselves (MNIST-1D, the paper's image
datasets) are in :mod:`tempering.zoo.datasets`, imported only by those who need
them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Dataset", "Split", "check_fraction", "check_seed", "split_validation"]


class Split(NamedTuple):
    """One split of a classification dataset."""

    inputs: np.ndarray  # shape=(N, ...), dtype=float32, normalised
    labels: np.ndarray  # shape=(N,), dtype=int32, values in [0, num_classes)

    def __repr__(self) -> str:
        """Shapes and dtypes: a notebook shows a dataset without its arrays."""
        parts = (
            f"{name}={np.shape(a)} {getattr(a, 'dtype', type(a).__name__)}"
            for name, a in zip(self._fields, self, strict=True)
        )
        return f"Split({', '.join(parts)})"


class Dataset(NamedTuple):
    """A classification dataset with a held-out validation split."""

    train: Split
    validation: Split
    test: Split
    num_classes: int
    name: str


def check_fraction(fraction: Any) -> None:
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


def check_seed(seed: Any) -> None:
    """Raises unless ``seed`` is an int >= 0, before any data is read.

    None would draw a fresh split at every call: another validation set each
    run, silently.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(
            f"seed must be an int >= 0 (the same seed, the same split), got {seed!r}"
        )
    if seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed}")


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

    Raises:
        ValueError: a fraction outside ``(0, 1)``, a negative seed, inputs and
            labels of different lengths, no examples, or none left to train on.
    """
    check_fraction(fraction)
    check_seed(seed)
    if len(inputs) != len(labels):
        raise ValueError(
            f"inputs and labels must hold the same number of examples, got "
            f"{len(inputs)} inputs and {len(labels)} labels"
        )
    if not len(labels):
        raise ValueError(
            "the training set holds no examples: there is nothing to split (an "
            "empty file or array?)"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    n_val = max(1, int(round(fraction * len(labels))))
    if n_val >= len(labels):
        raise ValueError(
            f"validation_fraction={fraction} of {len(labels)} examples holds out "
            f"{n_val}, leaving none to train on: lower it or give more examples"
        )
    val_idx, train_idx = order[:n_val], order[n_val:]
    return (
        Split(inputs[train_idx], labels[train_idx]),
        Split(inputs[val_idx], labels[val_idx]),
    )
