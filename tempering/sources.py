"""Data sources: in-memory arrays or any iterable of host batches.

Training data is either

- in memory: a ``Split``, or an ``(inputs, targets)`` pair of arrays with a
  leading example axis. The batches are gathered on device from seeded epoch
  permutations, so the batch of global step s depends only on the run's key;
- a stream: any iterable of batches (a Python generator, a grain dataset or
  ``DataLoader``, ``tfds.data_source(...)`` batched by grain, or
  ``tfds.as_numpy(...)``, which needs TensorFlow; a re-iterable starts a new
  pass when one ends, a generator must last the run). Each element is an
  ``(inputs, targets)`` pair, a ``Split``, or a dict with one of the key pairs
  in :data:`BATCH_KEYS`. The driver pulls a segment's batches at once and sends
  them to the device together, so there is no host round trip per step.
  Streamed batches keep their own size: ``batch_size`` is for in-memory data,
  and one given with a stream must equal the stream's batch size (else a
  ValueError before anything compiles).

Every streamed training batch is checked on the host before it trains: it
must have the first batch's shapes and dtypes, finite float values, and, with
the default loss (:func:`tempering.state.cross_entropy`), integer class
indices in ``[0, num_classes)`` (the model's output size). The one exception
is a pass's short last batch (fewer examples than the first, e.g. a dataset
batched without ``drop_remainder``): it is dropped, with one warning naming
it. A bad batch is a :class:`BatchError` (a ValueError) naming its index,
raised before it trains;
:func:`tempering.train` attaches to it the replicas after the last round that
ended finite and the history, so nothing trained is lost.

A stream whose iterator can save its position (``get_state()`` and
``set_state()``, as grain's ``DataLoader`` and dataset iterators can) is
checkpointed with the run: ``BatchReader.position`` is the iterator's state
(JSON) before the next batch to train, whatever the reader has peeked, and a
resumed call sets it, so it trains on the same batches, bit for bit. Any other
iterable cannot be rewound: a resumed call reads on from wherever the given
iterator is.

Evaluation data (validation, test) is in memory, or a *re-iterable* of batches
(a list, a ``tf.data`` / tfds dataset, a grain loader) or a function returning
a fresh iterator: it is read once per round. Its batches may differ in size
as long as none is larger than the first (a short last batch is evaluated
whole, padded and masked).
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tempering import sharding
from tempering._caller import warn
from tempering.data import Split
from tempering.state import ReplicaState, cross_entropy
from tempering.step import check_model_takes

if TYPE_CHECKING:
    from tempering.config import RunConfig, RunData

__all__ = [
    "BATCH_KEYS",
    "ArraySource",
    "BatchError",
    "BatchReader",
    "BatchSpec",
    "IterableSource",
    "RunSources",
    "as_eval_source",
    "as_train_source",
    "batch_pair",
    "check_batch",
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


class BatchError(ValueError):
    """A streamed training batch that cannot train, named by its index.

    Raised on the host before the batch trains. :func:`tempering.train` sets
    ``state`` and ``move_state`` (the replicas and move state after the last
    round that ended finite: the call's start when none did) and ``history``
    (the rounds done); they stay None for a batch refused before training.

    Attributes:
        index: the batch's index in the stream, counting from 0 at the first
            batch this call read (at the stream's start after a resume that
            restored the stream's position).
    """

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index
        self.state = self.move_state = self.history = None


class BatchSpec(NamedTuple):
    """What every streamed training batch must match (the first batch's layout)."""

    inputs: tuple[tuple[int, ...], np.dtype]  # shape and dtype
    targets: tuple[tuple[int, ...], np.dtype]
    num_classes: int | None  # the model's outputs with the default loss, else None
    batch_axis: int = 0  # the examples' axis: 1 for (M, B, ...) per-replica batches


def _layout(array: np.ndarray) -> tuple[tuple[int, ...], np.dtype]:
    return tuple(array.shape), array.dtype


def check_batch(
    x: np.ndarray, y: np.ndarray, spec: BatchSpec, index: int, name: str
) -> None:
    """Raises :class:`BatchError` unless batch ``index`` of ``name`` fits ``spec``."""
    problem = None
    if spec.num_classes is not None:
        found = _label_problem(y, spec.num_classes, len(spec.targets[0]))
        problem = found and found[1]
    for part, array, expected in (
        ("inputs", x, spec.inputs),
        ("targets", y, spec.targets),
    ):
        if problem is None and _layout(array) != expected:
            problem = (
                f"{part} have shape {array.shape} and dtype {array.dtype}, the first "
                f"batch's {expected[0]} and {expected[1]}: every batch needs the "
                "first's shape and dtype (only a pass's last batch may be smaller: "
                "it is dropped)"
            )
        if problem is None and np.issubdtype(array.dtype, np.inexact):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                problem = (
                    f"{part} hold {bad} non-finite values (NaN or inf); every replica "
                    "trains on the same batch, so all would diverge. Clean or drop it"
                )
    if problem is not None:
        raise BatchError(
            f"{name} batch {index} (counting from 0) is refused before it trains: "
            f"{problem}",
            index,
        )


def _is_short(x: np.ndarray, y: np.ndarray, spec: BatchSpec) -> bool:
    """The batch has fewer examples than ``spec`` and is otherwise like it."""
    axis = spec.batch_axis

    def fewer(array: np.ndarray, expected: tuple[tuple[int, ...], np.dtype]) -> bool:
        shape, dtype = expected
        return (
            array.dtype == dtype
            and array.ndim == len(shape) > axis
            and 0 < array.shape[axis] < shape[axis]
            and array.shape[:axis] + array.shape[axis + 1 :]
            == shape[:axis] + shape[axis + 1 :]
        )

    return (
        fewer(x, spec.inputs)
        and fewer(y, spec.targets)
        and x.shape[axis] == y.shape[axis]
    )


def _encode_state(state: Any) -> dict:
    """An iterator's state as JSON (bytes, as a grain ``DataLoader`` gives, in base64)."""
    if isinstance(state, bytes):
        return {"bytes": base64.b64encode(state).decode("ascii")}

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"{type(value).__name__} is not JSON")

    return {"json": json.loads(json.dumps(state, default=plain))}


def _decode_state(saved: dict) -> Any:
    if "bytes" in saved:
        return base64.b64decode(saved["bytes"])
    return saved["json"]


def _can_save(iterator: Any) -> bool:
    return callable(getattr(iterator, "get_state", None)) and callable(
        getattr(iterator, "set_state", None)
    )


class BatchReader:
    """Reads and checks training batches; a restartable source starts a new pass.

    ``count`` is the number of batches read from the stream (peeked ones
    included): the index of the next batch read.
    """

    def __init__(self, source: IterableSource, name: str):
        self._source, self._name = source, name
        self._iterator: Any = source.make_iterator()  # maybe get_state/set_state
        # (batch, the iterator's state before it, or None when it cannot save)
        self._pending: list[tuple[tuple[np.ndarray, np.ndarray], Any]] = []
        self._spec: BatchSpec | None = None
        self._unsaved_warned = False
        self._short_warned = False
        self.count = 0
        self._digest = 0  # CRC-32 of the batches taken since the last check
        self._checked_from = 0

    @property
    def batches_read(self) -> int:
        """Batches taken so far (the index of the next batch :meth:`take` gives)."""
        return self.count - len(self._pending)

    def expect(self, spec: BatchSpec) -> None:
        """Checks every batch from now on (and the peeked ones) against ``spec``."""
        self._spec = spec
        first = self.batches_read
        for offset, (batch, _) in enumerate(self._pending):
            check_batch(*batch, spec, first + offset, self._name)

    def peek(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch, kept for the next :meth:`take`."""
        if not self._pending:
            state = self._iterator.get_state() if _can_save(self._iterator) else None
            self._pending = [(self._read(1)[0], state)]
        return self._pending[0][0]

    def take(self, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The next ``count`` batches as numpy ``(inputs, targets)`` pairs."""
        out, self._pending = self._pending[:count], self._pending[count:]
        batches = [batch for batch, _ in out] + self._read(count - len(out))
        if jax.process_count() > 1:
            for batch in batches:
                for array in batch:
                    self._digest = zlib.crc32(np.ascontiguousarray(array), self._digest)
        return batches

    def check_same_on_processes(self) -> None:
        """A ValueError unless every process took the same batches since the last check.

        Over several processes every process reads the whole stream and
        trains on the batches it reads: a stream that differs between
        processes would train each process's replicas on other data. A
        collective: every process calls it at the same point (a round's end).
        """
        if jax.process_count() == 1:
            return
        first, self._checked_from = self._checked_from, self.batches_read
        digest, self._digest = self._digest, 0
        differing = sharding.processes_differing(np.array([digest], np.uint32))
        if differing:
            raise ValueError(
                f"{self._name} differs between processes: batches {first} to "
                f"{self.batches_read - 1} of the stream on process {differing[0]} "
                "are not those of process 0. Over several processes every process "
                "reads the whole stream and must yield the same batches (same "
                "files, seed and order); per-process shards of a stream are not "
                "supported"
            )

    def position(self) -> dict | None:
        """Where the next batch taken comes from (JSON), or None: cannot be saved.

        The iterator's state before the first peeked batch (if any), else now.
        """
        if not _can_save(self._iterator):
            return None
        state = self._pending[0][1] if self._pending else self._iterator.get_state()
        try:
            return {"batches": self.batches_read, "state": _encode_state(state)}
        except (TypeError, ValueError) as error:
            if not self._unsaved_warned:
                self._unsaved_warned = True
                warn(
                    f"{self._name}: its iterator's get_state() is not JSON ({error}); "
                    "checkpoints do not hold the stream's position, and a resumed "
                    "call reads on from wherever the iterator is",
                    RuntimeWarning,
                )
            return None

    def set_position(self, position: dict | None) -> None:
        """Continues from a :meth:`position` (None: from wherever the iterator is)."""
        if position is None:
            return
        if not _can_save(self._iterator):
            raise ValueError(
                f"the checkpoint holds the position of a stream that can be rewound, "
                f"but this call's {self._name} has no set_state(): resume with the "
                "same kind of stream (e.g. the grain dataset or loader of the run)"
            )
        self._iterator.set_state(_decode_state(position["state"]))
        self._pending = []
        self.count = self._checked_from = int(position["batches"])

    def _read(self, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out: list[tuple[np.ndarray, np.ndarray]] = []
        restarted = False
        while len(out) < count:
            try:
                element = next(self._iterator)
            except StopIteration:
                if not self._source.restartable or restarted:
                    raise ValueError(
                        f"{self._name} ran out after {self.count} batches; "
                        "give more batches (e.g. repeat the dataset) or fewer "
                        "num_steps"
                    ) from None
                self._iterator, restarted = self._source.make_iterator(), True
                continue
            restarted = False
            batch = batch_pair(element, self._name)
            if self._spec is not None:
                if _is_short(*batch, self._spec) and self._pass_ended():
                    self._drop_short(batch, self._spec)
                    self.count += 1
                    continue
                check_batch(*batch, self._spec, self.count, self._name)
            out.append(batch)
            self.count += 1
        return out

    def _pass_ended(self) -> bool:
        """Whether the iterator is exhausted (it reads one element ahead to know).

        Called on a short batch only: when another batch follows, the short one
        is refused anyway, so the element read ahead is not needed.
        """
        try:
            next(self._iterator)
        except StopIteration:
            self._iterator = iter(())  # ended: the next read restarts (or runs out)
            return True
        return False

    def _drop_short(self, batch: tuple[np.ndarray, np.ndarray], spec: BatchSpec):
        """A pass's short last batch is not trained on (warned about once)."""
        if self._short_warned:
            return
        self._short_warned = True
        axis = spec.batch_axis
        warn(
            f"{self._name} batch {self.count} (counting from 0) has "
            f"{batch[1].shape[axis]} examples, fewer than the first batch's "
            f"{spec.targets[0][axis]}, and ends a pass over the data: it is dropped "
            "(as is every pass's short last batch after it; batch with "
            "drop_remainder=True to drop them yourself)",
            RuntimeWarning,
        )


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
) -> Any:
    """Model, loss and metrics accept one example of ``name``; the model's output.

    Checked before compiling; the output is a ``jax.ShapeDtypeStruct`` of
    shape ``(1, ...)``.
    """
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
    return out


def _check_labels(targets: Any, out: Any, name: str) -> None:
    """``targets`` (N, ...) are class indices for outputs ``out`` (1, ..., C)."""
    found = _label_problem(np.asarray(targets), out.shape[-1], len(out.shape) - 1)
    if found is not None:
        raise found[0](f"{name} {found[1]}")


def _label_problem(
    labels: np.ndarray, num_classes: int, rank: int
) -> tuple[type[Exception], str] | None:
    """What is wrong with ``labels`` for the default loss (``rank``: their ndim)."""
    if not np.issubdtype(labels.dtype, np.integer):
        return TypeError, (
            "labels must be integers (class indices) for the default cross-entropy "
            f"loss, got {labels.dtype}; for one-hot or soft labels pass loss_fn= to "
            "create_replicas (e.g. optax.softmax_cross_entropy), for regression or "
            "other targets a loss of your own (e.g. a mean squared error)"
        )
    if labels.ndim == rank + 1 and labels.shape[-1] == num_classes:
        return ValueError, (
            f"labels of shape {labels.shape} look one-hot: the default cross-entropy "
            "loss takes integer class indices (labels.argmax(-1)); for one-hot or "
            "soft labels pass loss_fn= to create_replicas (e.g. "
            "optax.softmax_cross_entropy)"
        )
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            return ValueError, (
                f"labels must lie in [0, {num_classes}) (the model has "
                f"{num_classes} outputs), got values in [{low}, {high}]"
            )
    return None


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


def _check_stream_batch_size(config: RunConfig, size: tuple[int, ...]) -> None:
    """A ValueError when ``batch_size`` was set and the stream's batches differ.

    Streamed batches keep the size they have; ``batch_size`` is for in-memory
    data. Not given (None), or equal to the stream's batch size, it is fine.
    """
    if not size or config.batch_size in (None, size[0]):
        return
    raise ValueError(
        f"batch_size={config.batch_size} is given, but train_data is a stream whose "
        f"batches hold {size[0]} examples: streamed batches keep their own size "
        "(batch_size only batches in-memory data). Drop batch_size, or batch the "
        f"stream to {config.batch_size} examples (e.g. grain's "
        f".batch({config.batch_size}, drop_remainder=True))"
    )


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
    given = as_train_source(data.train, "train_data", config.array_batch_size)
    train: ArraySource | BatchReader
    if isinstance(given, ArraySource):
        _check_finite(given, "train_data")
        _check_compatible(state, *given, "train_data", metrics_fn)
        train = _on_devices(given, state)
        sample = train.inputs
    else:
        train = BatchReader(given, "train_data")
        x, y = first = train.peek()
        if not config.shared_batch:  # (M, B, ...) batches: check one replica's
            x, y = x[0], y[0]
        _check_stream_batch_size(config, np.shape(y)[:1])
        out = _check_compatible(state, x, y, "train_data", metrics_fn)
        classes = out.shape[-1] if state.loss_fn is cross_entropy else None
        axis = 0 if config.shared_batch else 1
        inputs, targets = _layout(first[0]), _layout(first[1])
        train.expect(BatchSpec(inputs, targets, classes, axis))
        sample = x
    validation = test = None
    if data.validation is not None:
        validation = _eval_source(data.validation, "validation_data", state, metrics_fn)
    if data.test is not None:
        test = _eval_source(data.test, "test_data", state, metrics_fn)
    return RunSources(train, validation, test, sample)
