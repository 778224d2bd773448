"""Streamed training batches: reading, checking, and their position in the stream.

:class:`BatchReader` reads an iterable of batches for training (a new pass
when a restartable source ends), checks every batch against the first one
(:func:`check_batch`: shapes, dtypes, finite values, class indices; a bad one
is a :class:`BatchError` naming its index), drops a pass's short last batch,
saves and restores its position in the stream (the iterator's
``get_state``/``set_state``, or, for a re-iterable whose iterator cannot save
one, the count of elements read in the current pass and a CRC-32 of them,
replayed and compared on resume), and, over several processes, checks that
every process read the same batches.
:mod:`tempering.sources` builds the readers and re-exports these names.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from tempering import sharding
from tempering._caller import warn

__all__ = [
    "BATCH_KEYS",
    "BatchError",
    "BatchReader",
    "BatchSpec",
    "IterableSource",
    "batch_pair",
    "check_batch",
]

BATCH_KEYS = (
    ("inputs", "targets"),
    ("inputs", "labels"),
    ("image", "label"),
    ("x", "y"),
)


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


def examples_problem(x: np.ndarray, y: np.ndarray, axis: int = 0) -> str | None:
    """What is wrong with a batch's count of examples (None: nothing).

    Inputs and targets must hold as many examples (along ``axis``), and at
    least one.
    """
    if np.ndim(y) <= axis < np.ndim(x):
        return (
            f"its targets have no example axis (shape {np.shape(y)}): a batch is "
            "inputs (B, ...) and targets (B, ...); a dataset of single examples (a "
            "tfds data_source, a grain dataset without .batch(B)) yields one "
            "example at a time: batch it"
        )
    if np.ndim(x) <= axis or np.ndim(y) <= axis:
        return None  # the layout checks name it
    inputs, targets = np.shape(x)[axis], np.shape(y)[axis]
    if inputs != targets:
        return f"it holds {inputs} inputs but {targets} targets: give them in pairs"
    if inputs == 0:
        return "it holds no examples"
    return None


def batch_problem(
    x: np.ndarray, y: np.ndarray, spec: BatchSpec, *, evaluated: bool = False
) -> str | None:
    """What is wrong with a batch for ``spec`` (None: nothing).

    ``evaluated``: an evaluation batch, which may hold fewer examples than the
    first (it is padded and masked); only its examples' shapes must match.
    """
    unpaired = examples_problem(x, y, spec.batch_axis)
    if unpaired is not None:
        return unpaired
    if spec.num_classes is not None:
        found = _label_problem(y, spec.num_classes, len(spec.targets[0]))
        if found is not None:
            return found[1]
    for part, array, (shape, dtype) in (
        ("inputs", x, spec.inputs),
        ("targets", y, spec.targets),
    ):
        fits = array.shape[1:] == shape[1:] if evaluated else array.shape == shape
        if not fits or array.dtype != dtype:
            return (
                f"{part} have shape {array.shape} and dtype {array.dtype}, the first "
                f"batch's {shape} and {dtype}: every batch needs the first's "
                + (
                    "shape per example and dtype"
                    if evaluated
                    else "shape and dtype (only a pass's last batch may be smaller: "
                    "it is dropped)"
                )
            )
        if np.issubdtype(array.dtype, np.inexact):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                use = "is scored on" if evaluated else "trains on"
                return (
                    f"{part} hold {bad} non-finite values (NaN or inf); every replica "
                    f"{use} the same batch, so all would diverge. Clean or drop it"
                )
    return None


def check_batch(
    x: np.ndarray, y: np.ndarray, spec: BatchSpec, index: int, name: str
) -> None:
    """Raises :class:`BatchError` unless batch ``index`` of ``name`` fits ``spec``."""
    problem = batch_problem(x, y, spec)
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


_ENDED = object()


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
        self._in_pass = 0  # elements read from the current pass's iterator
        self._pass_crc = 0  # CRC-32 of those elements (a replaying reader's)
        # (batch, the stream's mark and count before it was read: see _mark)
        self._pending: list[tuple[tuple[np.ndarray, np.ndarray], Any, int]] = []
        self._spec: BatchSpec | None = None
        self._unsaved_warned = False
        self._short_warned = False
        self.count = 0
        self._digest = 0  # CRC-32 of the batches taken since the last check
        self._checked_from = 0

    @property
    def batches_read(self) -> int:
        """Elements taken from the stream so far, before the next batch to take.

        Counted as :attr:`count` is (a dropped short batch too), before any
        peeked batch: where :meth:`position` stands.
        """
        return self._pending[0][2] if self._pending else self.count

    def expect(self, spec: BatchSpec) -> None:
        """Checks every batch from now on (and the peeked ones) against ``spec``."""
        self._spec = spec
        first = self.batches_read
        for offset, (batch, _, _) in enumerate(self._pending):
            check_batch(*batch, spec, first + offset, self._name)

    def peek(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch, kept for the next :meth:`take`."""
        if not self._pending:
            mark, count = self._mark(), self.count
            self._pending = [(self._read(1)[0], mark, count)]
        return self._pending[0][0]

    def unread(self) -> None:
        """Gives the peeked batches back to a stream that can be set back.

        An iterator with ``get_state`` / ``set_state`` is set to its state
        before the first peeked batch, so that a later call given the same
        iterator reads them (a call stopped early took the next batch only to
        fingerprint it). A re-iterable is read afresh by each call, and a
        one-pass iterator cannot be set back: nothing to do.
        """
        if self._pending and _can_save(self._iterator):
            _, mark, count = self._pending[0]
            self._iterator.set_state(mark)
            self.count, self._pending = count, []

    def take(self, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The next ``count`` batches as numpy ``(inputs, targets)`` pairs."""
        out, self._pending = self._pending[:count], self._pending[count:]
        batches = [batch for batch, _, _ in out] + self._read(count - len(out))
        if jax.process_count() > 1:
            for batch in batches:
                for array in batch:
                    data = np.ascontiguousarray(array).view(np.uint8)
                    self._digest = zlib.crc32(data.data, self._digest)
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
                "are not those of process 0 (or it refused one: its own error says "
                "why). Over several processes every process "
                "reads the whole stream and must yield the same batches (same "
                "files, seed and order); per-process shards of a stream are not "
                "supported"
            )

    @property
    def from_its_start(self) -> bool:
        """Whether a call reads it from its first batch, not where one stopped.

        A re-iterable's: each call makes a new iterator.
        """
        return self._source.restartable

    def _replays(self) -> bool:
        """Its position is a count of elements into a pass (no get_state to save)."""
        return self._source.restartable and not _can_save(self._iterator)

    @property
    def pass_crc(self) -> int:
        """CRC-32 of the elements read so far in the current pass (0 at its start).

        Kept by a reader that replays its position (:meth:`_replays`): a
        resume compares it, after :meth:`set_position` re-read them, with the
        saved one (``"pass_crc"``), so a list of batches changed before the
        saved position is told from the run's.
        """
        return self._pass_crc

    def _mark(self) -> Any:
        """The stream's position now (None: a one-pass iterator cannot say).

        The iterator's state, or, where it has none (:meth:`_replays`), the
        elements read in the current pass and their CRC-32.
        """
        if _can_save(self._iterator):
            return self._iterator.get_state()
        return (self._in_pass, self._pass_crc) if self._source.restartable else None

    def _count_element(self, element: Any, batch: Any = None) -> None:
        """Counts an element read from the current pass (and its CRC, replaying).

        ``batch``: the element's ``(inputs, targets)`` when already read.
        """
        self._in_pass += 1
        if self._replays():
            if batch is None:
                self._pass_crc = element_crc(element, self._name, self._pass_crc)
            else:
                self._pass_crc = batch_crc(batch, self._pass_crc)

    def _new_pass(self) -> None:
        """Starts a fresh pass over the restartable source."""
        self._iterator = self._source.make_iterator()
        self._in_pass = self._pass_crc = 0

    def position(self) -> dict | None:
        """Where the next batch taken comes from (JSON), or None: cannot be saved.

        The stream's mark before the first peeked batch (if any), else now: the
        iterator's state, or for a re-iterable whose iterator has none the
        elements read in the current pass (``"skip"``: a resume starts a
        fresh pass and reads that many) and their CRC-32 (``"pass_crc"``:
        the resume compares the elements it re-read, :attr:`pass_crc`).
        """
        if _can_save(self._iterator) or self._replays():
            mark = self._pending[0][1] if self._pending else self._mark()
        else:
            self._warn_unsaved(
                "it is a one-pass iterator (a generator?), which cannot be rewound"
            )
            return None
        if self._replays():
            skip, crc = mark
            return {"batches": self.batches_read, "skip": skip, "pass_crc": crc}
        try:
            return {"batches": self.batches_read, "state": _encode_state(mark)}
        except (TypeError, ValueError) as error:
            self._warn_unsaved(f"its iterator's get_state() is not JSON ({error})")
            return None

    def _warn_unsaved(self, why: str) -> None:
        """Warns once that checkpoints cannot hold this stream's position."""
        if self._unsaved_warned:
            return
        self._unsaved_warned = True
        warn(
            f"{self._name}: {why}; checkpoints do not hold the stream's position, "
            "and a resumed call reads on from wherever the iterator is (not the "
            "batches of an uninterrupted run); give an iterable that can be "
            "iterated again (a list, a dataset) or an iterator with "
            "get_state() / set_state() to resume bit for bit",
            RuntimeWarning,
        )

    def set_position(self, position: dict | None) -> None:
        """Continues from a :meth:`position` (None: from wherever the iterator is).

        A ``"skip"`` position starts a fresh pass and reads that many elements
        (:attr:`pass_crc` then holds their CRC-32, for the caller to compare
        with the saved ``"pass_crc"``).
        """
        if position is None:
            return
        if "skip" in position:
            if not self._source.restartable:
                raise ValueError(
                    f"the checkpoint's run read its {self._name} from a re-iterable "
                    "(e.g. a list of batches), but this call's is a one-pass "
                    "iterator: resume with the same re-iterable"
                )
            self._new_pass()
            for _ in range(int(position["skip"])):
                element = next(self._iterator, _ENDED)
                if element is _ENDED:
                    break  # a shorter pass: not the run's stream (the resume checks)
                self._count_element(element)
        elif not _can_save(self._iterator):
            raise ValueError(
                f"the checkpoint holds the position of a stream that can be rewound, "
                f"but this call's {self._name} has no set_state(): resume with the "
                "same kind of stream (e.g. the grain dataset or loader of the run)"
            )
        else:
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
                self._new_pass()
                restarted = True
                continue
            restarted = False
            batch = batch_pair(element, self._name)
            self._count_element(element, batch)
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
            self._count_element(next(self._iterator))
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


def element_crc(element: Any, name: str, start: int = 0) -> int:
    """A CRC-32 of a stream element's batch (shapes, dtypes, bytes), continuing ``start``.

    An element that is no batch (:func:`batch_pair` refuses it) counts by its
    type's name: reading it is refused elsewhere.
    """
    try:
        batch = batch_pair(element, name)
    except (TypeError, ValueError):
        return zlib.crc32(type(element).__qualname__.encode(), start)
    return batch_crc(batch, start)


def batch_crc(batch: tuple[np.ndarray, np.ndarray], start: int = 0) -> int:
    """A CRC-32 of ``(inputs, targets)``: shapes, dtypes and bytes, continuing ``start``."""
    for array in batch:
        start = sharding.crc32_of(array, start)
    return start


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


def checkable(array: Any) -> Any:
    """``array`` where a check reads it best.

    Numpy in host memory (a CPU array is not copied); a jax array on an
    accelerator as it is, so that a check's reductions run there and only
    their result is read back, not the whole dataset at every call.
    """
    if isinstance(array, jax.Array) and any(
        device.platform != "cpu" for device in array.devices()
    ):
        return array
    return np.asarray(array)


def check_labels(targets: Any, outputs: Any, what: str) -> None:
    """Refuses ``targets`` (N, ...) that are not class indices for ``outputs``.

    ``outputs`` is the model's output for one example, shape ``(1, ..., C)``;
    the error (a TypeError or a ValueError) starts with ``what``.
    """
    rank = len(outputs.shape) - 1
    found = _label_problem(checkable(targets), outputs.shape[-1], rank)
    if found is not None:
        raise found[0](f"{what} {found[1]}")


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
    if labels.ndim == rank + 1 and labels.shape[-1] == 1:
        return ValueError, (
            f"labels of shape {labels.shape} have a trailing axis of 1: the default "
            "cross-entropy loss takes one class index per example, shape "
            f"{labels.shape[:-1]}; pass labels[..., 0] (or labels.squeeze(-1))"
        )
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            return ValueError, (
                f"labels must lie in [0, {num_classes}) (the model has "
                f"{num_classes} outputs), got values in [{low}, {high}]"
            )
    return None
