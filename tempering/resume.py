"""What a call of the driver saves and resumes: its progress, as checkpoint trees.

:func:`tempering.train` with ``checkpoint_dir`` saves its carry (replicas and
move state) and its :class:`Progress` (where it stands in its plan, the round
records so far, the values before its first round) through a
:class:`tempering.checkpoint.Checkpointer`: the arrays as one pytree, the rest
as JSON. Resuming rebuilds that pytree into a template the call builds from
its own state, move and data, so nothing in the checkpoint chooses a type.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from tempering import checkpoint
from tempering.config import RunConfig
from tempering.records import RecordRows, RoundRecord
from tempering.sources import RunSources

__all__ = ["Progress", "checkpointer", "restore", "save"]


class Progress(NamedTuple):
    """Where a call stands, besides its replicas and move state (host values)."""

    next_segment: int  # index in the call's plan of the first segment left
    records: RecordRows  # the round records so far
    initial: Any  # (rungs or None, hyperparams) before the call's first round
    burn_values: Any  # hyperparams used in the burn-in


def checkpointer(
    state: Any,
    move_state: Any,
    key: jax.Array,
    move: Any,
    data: RunSources,
    config: RunConfig,
) -> checkpoint.Checkpointer:
    """The call's checkpointer, its fingerprint holding everything the call depends on."""
    assert config.checkpoint_dir is not None  # only called with one
    return checkpoint.Checkpointer(
        os.fspath(config.checkpoint_dir),
        every=config.checkpoint_every,
        keep=config.keep_checkpoints,
        allowed=config.resume_allowing,
        settings=checkpoint.fingerprint(
            state,
            move_state,
            key,
            move,
            data,
            schedule=tuple(config.rounds),
            batch_size=config.batch_size,
            shared_batch=config.shared_batch,
            augment=config.augment,
            eval_batch_size=config.eval_batch_size,
            metrics_fn=config.metrics_fn,
            score_fn=config.score_fn,
            on_diverge=config.on_diverge,
            move_at_end=config.move_at_end,
            burn_in_hyperparams=jax.tree.map(
                float, dict(config.burn_in_hyperparams or {})
            ),
        ),
    )


def save(
    saver: checkpoint.Checkpointer, carry: Any, progress: Progress, step: int
) -> None:
    """Writes the carry and progress at global step ``step``."""
    rows = progress.records.stacked()
    metrics = None  # the names of the metrics (validation and test alike)
    evaluated = None if rows is None else (rows.validation or rows.test)
    if evaluated is not None:
        metrics = sorted(evaluated.metrics)
    tree = {
        "carry": carry,
        "records": rows,
        "initial": progress.initial,
        "burn_values": progress.burn_values,
    }
    extra = {
        "next_segment": int(progress.next_segment),
        "rounds": int(progress.records.count),
        "metrics": metrics,
        "has_initial": progress.initial is not None,
    }
    saver.save(tree, extra, step)


def restore(
    saver: checkpoint.Checkpointer,
    carry: Any,
    progress: Progress,
    initial: Any,
    empty_record: Callable[[list[str] | None], RoundRecord],
) -> tuple[Any, Progress] | None:
    """The newest intact checkpoint's carry and progress, or None without one.

    Args:
        saver: the call's checkpointer.
        carry: the call's ``(replicas, move_state)``: the template of the
            saved carry (structure, shardings, key types).
        progress: the call's fresh progress (its records' capacity).
        initial: the template of ``progress.initial`` (rungs, hyperparams).
        empty_record: ``empty_record(metric_names)``, a record stacked over zero
            rounds with those validation metrics: the template of the saved
            records.
    """

    def template(extra: dict) -> dict:
        rounds = int(extra["rounds"])
        return {
            "carry": carry,
            "records": empty_record(extra["metrics"]) if rounds else None,
            "initial": initial if extra["has_initial"] else None,
            "burn_values": progress.burn_values,
        }

    restored = saver.restore(template)
    if restored is None:
        return None
    tree, extra = restored
    records = RecordRows(progress.records.capacity)
    if tree["records"] is not None:
        records.extend(tree["records"], int(extra["rounds"]))
    resumed = Progress(
        int(extra["next_segment"]), records, tree["initial"], tree["burn_values"]
    )
    return tree["carry"], resumed
