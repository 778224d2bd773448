"""Data sources: in-memory arrays or any iterable of host batches.

Training data is either

- in memory: a ``Split``, or an ``(inputs, targets)`` pair of arrays with a
  leading example axis. The batches are gathered on device from seeded epoch
  permutations, so the batch of global step s depends only on the run's key;
- a stream: any iterable of batches (a Python generator, ``tfds.as_numpy(...)``,
  a grain ``DataLoader``; a re-iterable starts a new pass when one ends, a
  generator must last the run). Each element is an ``(inputs, targets)`` pair, a
  ``Split``, or a dict with one of the key pairs in :data:`BATCH_KEYS`. The
  driver pulls a segment's batches at once and sends them to the device
  together, so there is no host round trip per step.

Evaluation data (validation, test) is in memory, or a *re-iterable* of batches
(a list, a ``tf.data`` / tfds dataset, a grain loader) or a function returning
a fresh iterator: it is read once per round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tempering import sharding
from tempering.data import Split
from tempering.state import ReplicaState, cross_entropy
from tempering.step import check_model_takes

if TYPE_CHECKING:
    from tempering.config import RunConfig, RunData

__all__ = [
    "BATCH_KEYS",
    "ArraySource",
    "BatchReader",
    "IterableSource",
    "RunSources",
    "as_eval_source",
    "as_train_source",
    "batch_pair",
    "prepare_sources",
]

BATCH_KEYS = (
    ("inputs", "targets"),
    ("inputs", "labels"),
    ("image", "label"),
    ("x", "y"),
)


class ArraySource(NamedTuple):
    """A dataset held in memory."""

    inputs: Any  # shape=(N, ...)
    targets: Any  # shape=(N, ...)


class IterableSource(NamedTuple):
    """Batches read from an iterable (``make_iterator()`` starts a fresh pass)."""

    make_iterator: Callable[[], Iterator]
    restartable: bool  # False for a generator or iterator: it is read only once


class BatchReader:
    """Reads training batches; a restartable source starts a new pass when done."""

    def __init__(self, source: IterableSource, name: str):
        self._source, self._name = source, name
        self._iterator = source.make_iterator()
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.batches_read = 0

    def peek(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch, kept for the next :meth:`take`."""
        if not self._pending:
            self._pending = self._read(1)
            self.batches_read -= 1
        return self._pending[0]

    def take(self, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The next ``count`` batches as numpy ``(inputs, targets)`` pairs."""
        out, self._pending = self._pending[:count], self._pending[count:]
        self.batches_read += len(out)
        return out + self._read(count - len(out))

    def _read(self, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out: list[tuple[np.ndarray, np.ndarray]] = []
        restarted = False
        while len(out) < count:
            try:
                element = next(self._iterator)
            except StopIteration:
                if not self._source.restartable or restarted:
                    raise ValueError(
                        f"{self._name} ran out after {self.batches_read} batches; "
                        "give more batches (e.g. repeat the dataset) or fewer "
                        "num_steps"
                    ) from None
                self._iterator, restarted = self._source.make_iterator(), True
                continue
            restarted = False
            out.append(batch_pair(element, self._name))
            self.batches_read += 1
        return out


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def batch_pair(element: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` of one batch from a pair, a ``Split`` or a dict."""
    if isinstance(element, dict):
        for keys in BATCH_KEYS:
            if all(k in element for k in keys):
                return np.asarray(element[keys[0]]), np.asarray(element[keys[1]])
        raise ValueError(
            f"a batch of {name} is a dict with keys {sorted(element)}; it needs one "
            f"of the key pairs {BATCH_KEYS}, or yield (inputs, targets) pairs"
        )
    if isinstance(element, tuple | list) and len(element) == 2:
        return np.asarray(element[0]), np.asarray(element[1])
    raise TypeError(
        f"a batch of {name} must be an (inputs, targets) pair or a dict, got "
        f"{type(element).__name__}"
    )


def _in_memory(data: Any) -> bool:
    return (
        isinstance(data, Split)
        or isinstance(data, tuple | list)
        and len(data) == 2
        and all(_is_array(part) for part in data)
    )


def _check_arrays(source: ArraySource, name: str, min_size: int) -> ArraySource:
    inputs, targets = source
    if np.ndim(inputs) < 1 or np.ndim(targets) < 1:
        raise ValueError(
            f"{name} needs a leading example axis: inputs (N, ...) and targets "
            f"(N, ...), got shapes {np.shape(inputs)} and {np.shape(targets)}"
        )
    if len(targets) == 0:
        raise ValueError(f"{name} is empty: it needs at least {min_size} examples")
    if len(targets) != len(inputs):
        raise ValueError(
            f"{name} has {len(inputs)} inputs but {len(targets)} targets; they "
            "must match"
        )
    if len(targets) < min_size:
        raise ValueError(
            f"{name} has {len(targets)} examples, fewer than batch_size={min_size}; "
            "lower batch_size or give more data"
        )
    return source


def as_train_source(
    data: Any, name: str, batch_size: int
) -> ArraySource | IterableSource:
    """The training source of ``data`` (arrays, or an iterable of batches)."""
    if _in_memory(data):
        return _check_arrays(ArraySource(*data), name, batch_size)
    if isinstance(data, Iterator):
        return IterableSource(lambda: data, restartable=False)
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | dict):
        return IterableSource(lambda: iter(data), restartable=True)
    raise TypeError(
        f"{name} must be a tempering.data.Split, an (inputs, targets) pair of "
        f"arrays, or an iterable of (inputs, targets) batches; got "
        f"{type(data).__name__}"
    )


def as_eval_source(data: Any, name: str) -> ArraySource | IterableSource:
    """The evaluation source of ``data`` (arrays, a re-iterable, or a factory)."""
    if _in_memory(data):
        return _check_arrays(ArraySource(*data), name, 1)
    if isinstance(data, Iterator):
        raise TypeError(
            f"{name} is a one-pass iterator (e.g. a generator), but it is read "
            "every round; pass a list of batches, a re-iterable dataset, or a "
            "function that returns a fresh iterator"
        )
    if callable(data):
        return IterableSource(lambda: iter(data()), restartable=True)
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | dict):
        return IterableSource(lambda: iter(data), restartable=True)
    raise TypeError(
        f"{name} must be a tempering.data.Split, an (inputs, targets) pair of "
        "arrays, a re-iterable of batches or a function returning an iterator; "
        f"got {type(data).__name__}"
    )


# A run's data, validated against the model and placed before anything compiles.


def _check_compatible(
    state: ReplicaState, inputs: Any, targets: Any, name: str, metrics_fn: Any
) -> None:
    """Model, loss and metrics accept one example of ``name``, before compiling."""
    out = check_model_takes(state, inputs, name, axis=0)
    y = jax.ShapeDtypeStruct((1, *np.shape(targets)[1:]), jnp.result_type(targets))
    classification = state.loss_fn is cross_entropy
    if classification:
        _check_labels(targets, out, name)
    try:
        jax.eval_shape(state.loss_fn, out, y)
        if metrics_fn is not None:
            jax.eval_shape(metrics_fn, out, y)
    except Exception as error:  # noqa: BLE001 - re-raised with the fix
        raise ValueError(
            f"{name}: loss_fn or metrics_fn cannot take model outputs {out.shape[1:]} "
            f"with targets {y.shape[1:]} per example ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})"
        ) from error


def _check_labels(targets: Any, out: Any, name: str) -> None:
    labels = np.asarray(targets)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"{name} labels must be integers for the default cross-entropy loss, got "
            f"{labels.dtype}; for regression or other targets pass loss_fn= to "
            "create_replicas (e.g. a mean squared error)"
        )
    num_classes = out.shape[-1]
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} labels must lie in [0, {num_classes}) (the model has "
                f"{num_classes} outputs), got values in [{low}, {high}]"
            )


def _first_batch(source: IterableSource, name: str) -> tuple[np.ndarray, np.ndarray]:
    for element in source.make_iterator():
        return batch_pair(element, name)
    raise ValueError(f"{name} yielded no batches")


def _eval_source(data: Any, name: str, state: ReplicaState, metrics_fn: Any):
    source = as_eval_source(data, name)
    if isinstance(source, ArraySource):
        _check_finite(source, name)
        _check_compatible(state, *source, name, metrics_fn)
        return _on_devices(source, state)
    _check_compatible(state, *_first_batch(source, name), name, metrics_fn)
    return source


def _check_finite(source: ArraySource, name: str) -> None:
    """In-memory data with NaN or inf would poison every replica: refused up front."""
    for part, array in (("inputs", source.inputs), ("targets", source.targets)):
        dtype = getattr(array, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(np.asarray(array))))
        if bad:
            raise ValueError(
                f"{name} {part} hold {bad} non-finite values (NaN or inf); every "
                "replica would train or be scored on them. Clean or drop them first"
            )


def _on_devices(source: ArraySource, state: ReplicaState) -> ArraySource:
    """In-memory data on the device, or on every device of a sharded state."""
    mesh = sharding.mesh_of(state)
    if mesh is None:
        return ArraySource(jnp.asarray(source.inputs), jnp.asarray(source.targets))
    return ArraySource(*sharding.replicate((source.inputs, source.targets), mesh))


class RunSources(NamedTuple):
    """A call's data, validated and placed: what the segments and evaluations read."""

    train: ArraySource | BatchReader  # in-memory data on device, or a reader
    validation: ArraySource | IterableSource | None
    test: ArraySource | IterableSource | None
    sample: Any  # training inputs shaped like a batch (for the loop's "auto")


def prepare_sources(
    state: ReplicaState, data: RunData, config: RunConfig
) -> RunSources:
    """Validated sources, checked against the model before anything compiles."""
    metrics_fn = config.metrics_fn
    given = as_train_source(data.train, "train_data", config.batch_size)
    train: ArraySource | BatchReader
    if isinstance(given, ArraySource):
        _check_finite(given, "train_data")
        _check_compatible(state, *given, "train_data", metrics_fn)
        train = _on_devices(given, state)
        sample = train.inputs
    else:
        train = BatchReader(given, "train_data")
        x, y = train.peek()
        if not config.shared_batch:  # (M, B, ...) batches: check one replica's
            x, y = x[0], y[0]
        _check_compatible(state, x, y, "train_data", metrics_fn)
        sample = x
    validation = test = None
    if data.validation is not None:
        validation = _eval_source(data.validation, "validation_data", state, metrics_fn)
    if data.test is not None:
        test = _eval_source(data.test, "test_data", state, metrics_fn)
    return RunSources(train, validation, test, sample)
