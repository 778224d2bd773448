"""Ready callbacks for :func:`tempering.train` and its wrappers.

A callback receives each round's :class:`tempering.RoundRecord` (numpy) as the
round ends; a truthy return value stops the run after that round. The loggers
here write the standard per-replica scalars:

- :class:`JsonlLogger`: one JSON line per round (no dependency);
- :class:`TensorBoardLogger`: TensorBoard event files through ``tensorboardX``
  (``pip install "tempering[tensorboard]"``), one scalar per replica and
  quantity, e.g. ``val_loss/replica_3``;
- :func:`stop_when`: stops the run when a condition on the record holds.

Example:
    >>> with TensorBoardLogger("runs/pt") as log:
    ...     pt_train(state, ladder, key, ..., callback=log)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from tempering.records import RoundRecord

__all__ = ["JsonlLogger", "TensorBoardLogger", "record_scalars", "stop_when"]


def record_scalars(record: RoundRecord) -> Iterator[tuple[str, int, float]]:
    """``(tag, replica, value)`` for every per-replica scalar of a round.

    Tags: ``train_loss``, ``score``, ``rung`` (a move with rungs), ``val_loss``, ``val_<metric>``,
    ``test_loss``, ``test_<metric>``, ``hyperparams/<name>``, and the move's
    per-replica fields as ``move/<field>`` where they have shape ``(M,)``.
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
    fields: dict[str, Any] = (
        getattr(record.move, "_asdict", dict)() if record.move is not None else {}
    )
    for name, value in fields.items():
        if isinstance(value, np.ndarray) and value.shape == (num,):
            per_replica[f"move/{name}"] = value
    for tag, values in per_replica.items():
        for m in range(num):
            yield tag, m, float(values[m])


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
    """

    def __init__(self, path: str | os.PathLike):
        """Opens ``path`` for appending (a continued run adds its rounds)."""
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def __call__(self, record: RoundRecord) -> None:
        """Writes one line; never stops the run."""
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
            "move": getattr(record.move, "_asdict", lambda: record.move)(),
            "diverged": record.diverged,
            "restored_from": record.restored_from,
        }  # fmt: skip
        self._file.write(json.dumps(_jsonable(line), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Closes the file."""
        self._file.close()

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardLogger:
    """Writes every per-replica scalar of a round as TensorBoard events.

    Needs ``tensorboardX`` (the ``tensorboard`` extra); no TensorFlow.
    """

    def __init__(self, logdir: str | os.PathLike, **writer_kwargs: Any):
        """Creates the event file writer under ``logdir``."""
        try:
            from tensorboardX import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "TensorBoardLogger needs tensorboardX: pip install "
                '"tempering[tensorboard]" (or use JsonlLogger)'
            ) from error
        self._writer = SummaryWriter(str(logdir), **writer_kwargs)

    def __call__(self, record: RoundRecord) -> None:
        """Writes the round's scalars at its global step; never stops the run."""
        for tag, m, value in record_scalars(record):
            self._writer.add_scalar(f"{tag}/replica_{m}", value, record.step)
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self._writer.close()

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

    def callback(record: RoundRecord) -> bool:
        if then is not None:
            then(record)
        return bool(condition(record))

    return callback
