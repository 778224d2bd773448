"""Ready callbacks for :func:`tempering.train` and its wrappers.

A callback receives each round's :class:`tempering.RoundRecord` (numpy) as the
round ends; a truthy return value stops the run after that round. The loggers
here write the standard per-replica scalars:

- :class:`JsonlLogger`: one JSON line per round (no dependency);
- :class:`TensorBoardLogger`: TensorBoard event files through ``tensorboardX``
  (``pip install "tempering[tensorboard]"``), one scalar per replica and
  quantity, e.g. ``val_loss/replica_3``, and per rung for a move's per-rung
  fields, e.g. ``move/temperatures/rung_0``;
- :func:`stop_when`: stops the run when a condition on the record holds.

Example:
    >>> with TensorBoardLogger("runs/pt") as log:
    ...     pt_train(state, ladder, key, ..., callback=log)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from tempering.records import RoundRecord

__all__ = [
    "JsonlLogger",
    "TensorBoardLogger",
    "record_rung_scalars",
    "record_scalars",
    "stop_when",
]


def record_scalars(record: RoundRecord) -> Iterator[tuple[str, int, float]]:
    """``(tag, replica, value)`` for every per-replica scalar of a round.

    Tags: ``train_loss``, ``score``, ``rung`` (a move with rungs), ``val_loss``, ``val_<metric>``,
    ``test_loss``, ``test_<metric>``, ``hyperparams/<name>``, and the move's
    per-replica fields as ``move/<field>`` (a mapping's entries as
    ``move/<field>/<key>``): those its info's ``per_replica_fields()`` lists,
    or, for an info without that method, every field of shape ``(M,)`` that
    its ``per_rung_fields()`` does not list (:func:`record_rung_scalars`).
    """
    num = len(record.score)
    per_replica: dict[str, Any]
    value: Any
    per_replica = {"train_loss": record.train_loss, "score": record.score}
    if record.rungs is not None:
        per_replica["rung"] = record.rungs
    for prefix, metrics in (("val", record.validation), ("test", record.test)):
        if metrics is not None:
            per_replica[f"{prefix}_loss"] = metrics.loss
            for name, value in metrics.metrics.items():
                per_replica[f"{prefix}_{name}"] = value
    for name, value in record.hyperparams.items():
        per_replica[f"hyperparams/{name}"] = value
    listed = _declared(record.move, "per_replica_fields")
    per_rung = _declared(record.move, "per_rung_fields") or ()
    for (field, *keys), value in _move_leaves(record.move).items():
        chosen = field in listed if listed is not None else field not in per_rung
        if chosen and isinstance(value, np.ndarray) and value.shape == (num,):
            per_replica["/".join(("move", field, *keys))] = value
    for tag, values in per_replica.items():
        for m in range(num):
            yield tag, m, float(values[m])


def record_rung_scalars(record: RoundRecord) -> Iterator[tuple[str, int, float]]:
    """``(tag, rung, value)`` for the move's per-rung fields (``move/<field>``).

    The fields its info's ``per_rung_fields()`` lists (the exchange's
    ``temperatures``), one value per rung of the ladder.
    """
    per_rung = _declared(record.move, "per_rung_fields") or ()
    for (field, *keys), value in _move_leaves(record.move).items():
        if field in per_rung and isinstance(value, np.ndarray) and value.ndim == 1:
            tag = "/".join(("move", field, *keys))
            for rung, item in enumerate(value):
                yield tag, rung, float(item)


def _declared(info: Any, name: str) -> tuple[str, ...] | None:
    """The fields an info's method ``name()`` lists, or None without one."""
    method = getattr(info, name, None)
    return tuple(method()) if callable(method) else None


def _fields(info: Any) -> dict[str, Any] | None:
    """The fields of a NamedTuple, a dataclass or a mapping; None for anything else."""
    if hasattr(info, "_asdict"):
        return dict(info._asdict())
    if isinstance(info, Mapping):
        return {str(k): v for k, v in info.items()}
    if dataclasses.is_dataclass(info) and not isinstance(info, type):
        return {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    return None


def _move_leaves(move: Any) -> dict[tuple[str, ...], Any]:
    """A move's info as ``{(field, key, ...): value}``, nested fields flattened."""
    leaves: dict[tuple[str, ...], Any] = {}

    def visit(path: tuple[str, ...], value: Any) -> None:
        fields = _fields(value)
        if fields is None:
            leaves[path] = value
            return
        for name, item in fields.items():
            visit((*path, name), item)

    if move is not None:
        visit((), move)
    return {path: value for path, value in leaves.items() if path}


def _plain(tree: Any) -> Any:
    """NamedTuples, dataclasses and mappings as dicts (for JSON), recursively."""
    fields = _fields(tree)
    if fields is not None:
        return {name: _plain(value) for name, value in fields.items()}
    if isinstance(tree, list | tuple):
        return [_plain(item) for item in tree]
    return tree


def _finite_or_none(value: Any) -> Any:
    """``value`` with its non-finite floats (in lists too) as None: JSON's null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


def _jsonable(tree: Any) -> Any:
    """Plain JSON values: arrays as lists, NaN and infinities as ``null``."""
    return jax.tree.map(
        lambda x: _finite_or_none(
            x.tolist() if isinstance(x, np.generic | np.ndarray) else x
        ),
        tree,
        is_leaf=lambda x: isinstance(x, np.ndarray | np.generic),
    )


class JsonlLogger:
    """Appends every round's record to a JSON-lines file (one object per round).

    Every line is standard JSON (RFC 8259), readable by ``jq`` or
    ``JSON.parse``: a non-finite value (a diverged replica's NaN or infinite
    loss) is written as ``null``; the record's ``diverged`` field says which
    replicas those are.

    A run resumed from a checkpoint repeats the rounds after it, which the
    stopped process may have logged already: at its first record, a logger
    moves the file's lines of that round and later ones (and a line cut
    short by the stop) to ``<path>.superseded`` (appended; nothing is
    deleted), with a warning, so the file holds each round once. One logger
    given several calls appends them all (a continued run, or runs in a
    loop); a new logger on a file another run wrote takes its rounds for
    this run's repeated ones, so give each run its own path (one per seed).
    A path that is not a regular file (a pipe, ``/dev/stdout``) is only
    appended to.
    """

    def __init__(self, path: str | os.PathLike):
        """Appends to ``path`` (a continued run adds its rounds).

        The file is opened at the first record: over several processes only
        process 0 receives records, so the others create no file.
        """
        self._path = _checked_path(path, "JsonlLogger's path")
        if os.path.isdir(self._path):
            raise ValueError(
                f"JsonlLogger's path {self._path!r} is a folder: give a file's path, "
                f"e.g. {os.path.join(self._path, 'rounds.jsonl')!r}"
            )
        folder = os.path.dirname(os.path.abspath(self._path))
        if not os.path.isdir(folder):
            raise ValueError(
                f"JsonlLogger's path {self._path!r} is in a folder that does not "
                f"exist ({folder!r}): create it first, e.g. "
                f"os.makedirs({folder!r}, exist_ok=True)"
            )
        self._file: Any = None

    def __call__(self, record: RoundRecord) -> None:
        """Writes one line; never stops the run."""
        if self._file is None:
            _supersede_from(self._path, int(record.round))
            self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        line = {
            "round": record.round,
            "step": record.step,
            "train_loss": record.train_loss,
            "score": record.score,
            "rungs": record.rungs,
            "hyperparams": record.hyperparams,
            "validation": None if record.validation is None else {
                "loss": record.validation.loss, **record.validation.metrics},
            "test": None if record.test is None else {
                "loss": record.test.loss, **record.test.metrics},
            "move": _plain(record.move),
            "diverged": record.diverged,
            "restored_from": record.restored_from,
        }  # fmt: skip
        self._file.write(json.dumps(_jsonable(line), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Closes the file (if a record opened it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line_round(line: str) -> int | None:
    """The ``round`` of a JSON line, None for a line that is not one of ours."""
    try:
        value = json.loads(line)["round"]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


def _supersede_from(path: str, first_round: int) -> None:
    """Moves ``path``'s lines from round ``first_round`` on to ``path.superseded``.

    Lines that do not read as a round (cut short) go too. A path that is not
    a regular file (a pipe, a terminal) is left alone; a file that cannot be
    read or rewritten warns and is appended to.
    """
    if not os.path.isfile(path):
        return
    try:
        _move_superseded(path, first_round)
    except (OSError, UnicodeDecodeError) as error:  # unreadable: appended to
        warnings.warn(
            f"JsonlLogger: could not set aside the lines of {path} from round "
            f"{first_round} on ({error}); appending",
            UserWarning,
            stacklevel=3,
        )


def _move_superseded(path: str, first_round: int) -> None:
    with open(path, encoding="utf-8") as file:
        lines = file.readlines()
    rounds = [_line_round(line) for line in lines]
    kept = [r is not None and r < first_round for r in rounds]
    if all(kept):
        return
    moved = [line if line.endswith("\n") else line + "\n"
             for line, keep in zip(lines, kept, strict=True) if not keep]  # fmt: skip
    with open(path + ".superseded", "a", encoding="utf-8") as file:
        file.writelines(moved)
    temporary = path + ".rewrite"
    with open(temporary, "w", encoding="utf-8") as file:
        file.writelines(line for line, keep in zip(lines, kept, strict=True) if keep)
    os.replace(temporary, path)
    warnings.warn(
        f"JsonlLogger: {path} held {len(moved)} line(s) of round {first_round} or "
        "later (or cut short), which this run writes again (a resumed run "
        "repeats the rounds after its last checkpoint); they were moved to "
        f"{path}.superseded",
        UserWarning,
        stacklevel=4,
    )


def _checked_path(path: Any, name: str) -> str:
    """``path`` as a str, else a TypeError naming ``name``."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise TypeError(f"{name} must be a path (a str or os.PathLike), got {path!r}")
    return os.fspath(path)


#: Seconds within which TensorBoardLogger's events reach the file (its
#: background writer's period; tensorboardX's default is 120).
FLUSH_SECONDS = 2


class TensorBoardLogger:
    """Writes every per-replica scalar of a round as TensorBoard events.

    Needs ``tensorboardX`` (the ``tensorboard`` extra); no TensorFlow. A run
    resumed from a checkpoint repeats the rounds after it: the writer is
    created with ``purge_step`` at the first record's step (unless
    ``writer_kwargs`` sets one), so TensorBoard hides the events a stopped
    run wrote from that step on instead of drawing them twice. Each logger
    writes its own event file (a unique ``filename_suffix`` unless
    ``writer_kwargs`` sets one): a second logger on the same ``logdir``, a
    continuing call's, never overwrites the first one's.

    tensorboardX writes the events from a background thread, so a round
    reaches the file within ``flush_secs`` of being logged (2 s here unless
    ``writer_kwargs`` sets it; tensorboardX's own default is 120 s) and every
    round at :meth:`close`: a process killed at once may lose its last
    round's events, where :class:`JsonlLogger`'s line is on disk when the
    call returns.
    """

    def __init__(self, logdir: str | os.PathLike, **writer_kwargs: Any):
        """Creates the event file writer under ``logdir`` at the first record."""
        try:
            from tensorboardX import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "TensorBoardLogger needs tensorboardX: pip install "
                '"tempering[tensorboard]" (or use JsonlLogger)'
            ) from error
        self._kwargs = {"flush_secs": FLUSH_SECONDS, **writer_kwargs}
        logdir = _checked_path(logdir, "TensorBoardLogger's logdir")
        self._open = functools.partial(SummaryWriter, logdir, **self._kwargs)
        self._writer: Any = None  # created at the first record (process 0's)

    def __call__(self, record: RoundRecord) -> None:
        """Writes the round's scalars at its global step; never stops the run."""
        if self._writer is None:
            opened: dict[str, Any] = {}
            if "purge_step" not in self._kwargs:
                opened["purge_step"] = record.step
            if "filename_suffix" not in self._kwargs:  # its own file: the default
                # name (seconds, host) is another writer's within the same second
                opened["filename_suffix"] = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
            self._writer = self._open(**opened)
        for tag, m, value in record_scalars(record):
            self._writer.add_scalar(f"{tag}/replica_{m}", value, record.step)
        for tag, rung, value in record_rung_scalars(record):
            self._writer.add_scalar(f"{tag}/rung_{rung}", value, record.step)
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file (if a record created it)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_when(
    condition: Callable[[RoundRecord], bool],
    then: Callable[[RoundRecord], Any] | None = None,
) -> Callable[[RoundRecord], bool]:
    """A callback that stops the run once ``condition(record)`` holds.

    Args:
        condition: e.g. ``lambda r: r.validation.loss.min() < 0.1``.
        then: another callback to call on every record first (a logger).

    Returns:
        The callback.
    """
    if not callable(condition):
        raise TypeError(
            "condition must be a function of the round's record, e.g. lambda r: "
            f"r.validation.loss.min() < 0.1, got {condition!r}"
        )
    if then is not None and not callable(then):
        raise TypeError(f"then must be a callback (a logger) or None, got {then!r}")

    def callback(record: RoundRecord) -> bool:
        if then is not None:
            then(record)
        return bool(condition(record))

    return callback
