"""What a call of the driver saves and resumes: its progress, as checkpoint trees.

:func:`tempering.train` with ``checkpoint_dir`` saves its carry (replicas and
move state) and its :class:`Progress` (where it stands in its plan, the round
records so far, the values before its first round) through a
:class:`tempering.checkpoint.Checkpointer`: the arrays as one pytree, the rest
as JSON. Resuming rebuilds that pytree into a template the call builds from
its own state, move and data, so nothing in the checkpoint chooses a type.
A training stream that can save its position (:class:`BatchReader`) saves it
in the JSON too (with a digest of the batch it yields there, and, for a
re-iterable replayed from a fresh pass, a CRC-32 of the pass's elements read
before it), and a resume sets it and checks them: the same batches follow.

It also holds what Ctrl-C does to a call (:class:`StopOnInterrupt`).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from tempering import checkpoint, fingerprints
from tempering._caller import warn
from tempering.config import RunConfig
from tempering.records import RecordRows, RoundRecord
from tempering.sources import BatchReader, RunSources

__all__ = [
    "Progress",
    "StopOnInterrupt",
    "checkpointer",
    "restore",
    "save",
    "stream_position",
    "warn_interrupted",
]


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
    if jax.process_count() > 1:  # arrays over several processes, gathered to hash
        state = state.replace(
            params=_gathered(state.params),
            batch_stats=_gathered(state.batch_stats),
            opt_state=_gathered(state.opt_state),
            hyperparams=_gathered(state.hyperparams),
        )
        move_state, key = _gathered(move_state), _gathered(key)
    return checkpoint.Checkpointer(
        os.fspath(config.checkpoint_dir),
        every=config.checkpoint_every,
        keep=config.keep_checkpoints,
        allowed=config.resume_allowing,
        check=functools.partial(_check_restored_move_state, move),
        settings=fingerprints.fingerprint(
            state,
            move_state,
            key,
            move,
            data,
            schedule=tuple(config.rounds),
            batch_size=config.array_batch_size,
            shared_batch=config.shared_batch,
            augment=config.augment,
            eval_batch_size=config.eval_batch_size,
            metrics_fn=config.metrics_fn,
            score_fn=config.score_fn,
            vectorize=config.vectorize,  # the formulation shapes the bits
            loop=config.loop,  # so does the loop (host or device)
            on_diverge=config.on_diverge,
            move_at_end=config.move_at_end,
            burn_in_hyperparams=jax.tree.map(
                _as_floats, dict(config.burn_in_hyperparams or {})
            ),
        ),
    )


def _check_restored_move_state(move: Any, tree: dict) -> None:
    """A ValueError unless the restored move state passes the move's own check.

    Its layout is the template's (the checkpointer compares it); a move with a
    ``check_state`` (the exchanges) also checks its values, e.g. an adapted
    ladder's ends and rounds: with ``resume_allowing=("move", ...)`` the
    checkpoint's state may be another move's.

    Args:
        move: the call's move.
        tree: the restored checkpoint tree (``tree["carry"][1]``: the move state).
    """
    check_state = getattr(move, "check_state", None)
    if check_state is None:
        return
    try:
        check_state(tree["carry"][1])
    except ValueError as error:
        raise ValueError(
            f"its move state does not fit this call's move ({error}); resume with "
            "the checkpointed run's move settings, or give another checkpoint_dir"
        ) from None


def _as_floats(value: Any) -> float | list:
    """A burn-in value (one for every replica, or one per replica) as floats."""
    if np.ndim(value) == 0:
        return float(value)
    return np.asarray(value, np.float64).tolist()


def _gathered(tree: Any) -> Any:
    """``tree`` on the host, PRNG keys as their data (a collective).

    The fingerprint digests keys as their data, so the digest is the same.
    """
    from tempering import sharding

    def data(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
            leaf.dtype, jax.dtypes.prng_key
        ):
            return jax.random.key_data(leaf)
        return leaf

    return sharding.to_host(jax.tree.map(data, tree))


def stream_position(train: Any) -> dict | None:
    """Where the call's training source stands (JSON), or None: it cannot say.

    A :class:`BatchReader` whose stream can save its position says it.
    """
    return train.position() if isinstance(train, BatchReader) else None


def with_next_batch(position: dict | None, train: Any) -> dict | None:
    """``position`` with a digest of the batch the stream yields there.

    For a call that trains on from ``position`` (it reads that batch anyway):
    a resume checks that its stream yields the same batch there
    (:func:`restore`). Reading it may raise a BatchError.
    """
    if position is None:
        return None
    return {**position, "next_batch": fingerprints.digest(train.peek())}


def save(
    saver: checkpoint.Checkpointer,
    carry: Any,
    progress: Progress,
    train_position: dict | None,
) -> None:
    """Writes the carry and progress at the replicas' step.

    ``train_position`` is the training stream's :func:`stream_position` where
    the carry stands; a resume continues the stream from there.
    """
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
        "train_stream": train_position,
    }
    saver.save(tree, extra, int(carry[0].step))


def restore(
    saver: checkpoint.Checkpointer,
    carry: Any,
    progress: Progress,
    initial: Any,
    empty_record: Callable[[list[str] | None], RoundRecord],
    resume_at: Callable[[int, int], int] | None = None,
) -> tuple[Any, Progress, dict | None] | None:
    """The newest intact checkpoint's carry, progress and stream position, or None.

    The position is the training stream's, for :func:`continue_stream`.

    It reads no training batch: a call it refuses leaves a generator where it was.

    Args:
        saver: the call's checkpointer.
        carry: the call's ``(replicas, move_state)``: the template of the
            saved carry (structure, shardings, key types).
        progress: the call's fresh progress (its records' capacity).
        initial: the template of ``progress.initial`` (rungs, hyperparams).
        empty_record: ``empty_record(metric_names)``, a record stacked over zero
            rounds with those validation metrics: the template of the saved
            records.
        resume_at: ``resume_at(step, rounds)``, the index of the call's
            segment that follows the saved ``step`` and ``rounds`` recorded
            rounds (a ValueError where the call's plan has none); None: the
            saved index.
    """
    records: list[RoundRecord] = []  # the records' template, once built

    def template(extra: dict) -> dict:
        rounds = int(extra["rounds"])
        if rounds:
            records.append(_records_template(extra["metrics"], empty_record))
        return {
            "carry": carry,
            "records": records[-1] if rounds else None,
            "initial": initial if extra["has_initial"] else None,
            "burn_values": progress.burn_values,
        }

    restored = saver.restore(template)
    if restored is None:
        return None
    tree, extra = restored
    if tree["records"] is not None:
        refuse = functools.partial(saver.refusal, int(tree["carry"][0].step))
        checkpoint.together(
            lambda: _check_records(tree["records"], records[-1], refuse)
        )
    next_segment = int(extra["next_segment"])
    if resume_at is not None:
        next_segment = resume_at(int(tree["carry"][0].step), int(extra["rounds"]))
    rows = RecordRows(progress.records.capacity)
    if tree["records"] is not None:
        rows.extend(tree["records"], int(extra["rounds"]))
    resumed = Progress(next_segment, rows, tree["initial"], tree["burn_values"])
    return tree["carry"], resumed, extra.get("train_stream")


def continue_stream(
    saver: checkpoint.Checkpointer, position: dict | None, train: Any
) -> None:
    """A restored call's training stream continues at the checkpoint's position.

    ``train``: a :class:`BatchReader` (else nothing to do); ``position``
    None: it reads on from wherever it is. Called after the stream's first
    batch is checked, so the batches read at the position are checked (and
    too short ones dropped) as the run's were.
    """
    if isinstance(train, BatchReader):
        checkpoint.together(lambda: _continue_stream(position, train, saver.allowed))


def _records_template(
    saved_metrics: Any, empty_record: Callable[[list[str] | None], RoundRecord]
) -> RoundRecord:
    """This call's records over zero rounds: the template of the saved ones.

    Args:
        saved_metrics: the metric names the checkpoint's rounds recorded
            (None: no evaluation).
        empty_record: ``empty_record(None)`` builds this call's records over
            zero rounds, with the metrics its ``metrics_fn`` gives.

    Raises:
        TypeError: ``saved_metrics`` is malformed (no list).
        tempering.checkpoint.ResumeRefusedError: the checkpoint's rounds recorded
            other metrics than this call's ``metrics_fn`` gives (a history
            keeps one set of metrics).
    """
    if saved_metrics is not None and not isinstance(saved_metrics, list):
        raise TypeError(f"metrics is {type(saved_metrics).__name__}, not a list")
    mine = empty_record(None)
    evaluated = mine.validation if mine.validation is not None else mine.test
    names = None if evaluated is None else sorted(evaluated.metrics)
    if names != saved_metrics:
        raise checkpoint.ResumeRefusedError(
            f"its rounds recorded {_metrics_text(saved_metrics)}, and this call's "
            f"metrics_fn gives {_metrics_text(names)}: a run's records "
            "keep one set of metrics, so resume_allowing=('metrics_fn',) resumes "
            "only with a metrics_fn of the same names. Give a metrics_fn with the "
            "checkpoint's metrics, or another checkpoint_dir"
        )
    return mine


def _metrics_text(names: list[str] | None) -> str:
    """Metric names as a message reads them (None: no evaluation)."""
    return "no evaluation" if names is None else f"the metrics {names}"


def _check_records(
    saved: RoundRecord, template: RoundRecord, refuse: Callable[[str], ValueError]
) -> None:
    """A ValueError unless each saved record field has this call's shape per round.

    Args:
        saved: the checkpoint's records, stacked over its rounds.
        template: this call's records over zero rounds (the same structure).
        refuse: the checkpointer's refusal of this checkpoint, given a reason.
    """
    paths = jax.tree_util.tree_leaves_with_path(template)
    for (path, expected), value in zip(paths, jax.tree.leaves(saved), strict=True):
        if np.shape(value)[1:] != np.shape(expected)[1:]:
            raise refuse(
                f"its round records hold "
                f"{jax.tree_util.keystr(path)} of shape {np.shape(value)[1:]} per "
                f"round, this call records {np.shape(expected)[1:]} (another move "
                "or number of replicas); resume with the checkpointed run's move "
                "and replicas, or give another checkpoint_dir"
            )


def _continue_stream(
    position: dict | None, train: BatchReader, allowed: tuple[str, ...]
) -> None:
    """Sets the stream at ``position`` and checks it reads the saved run's batches.

    A training stream is fingerprinted by its kind only (it is read once):
    the CRC-32 of the elements its current pass read (a re-iterable replayed
    from a fresh pass; absent from checkpoints of older versions) and the
    batch at the saved position tell another dataset of the same kind. Over
    several processes every process calls it (through
    :func:`tempering.checkpoint.together`): a refusal on one is a refusal on all.
    """
    train.set_position(position)
    if position is None or "train_data" in allowed:
        return
    saved_crc = position.get("pass_crc")
    if (
        saved_crc is not None
        and "skip" in position
        and train.pass_crc != int(saved_crc)
    ):
        raise _other_batches(
            f"the {position['skip']} elements of train_data's current pass before "
            f"the saved position (batch {position['batches']}) are not those the "
            "checkpointed run read",
            "the same batches in the same order",
        )
    saved_batch = position.get("next_batch")  # None: the run trained no further
    if saved_batch is not None and fingerprints.digest(train.peek()) != saved_batch:
        raise _other_batches(
            f"at the saved position (batch {position['batches']}) train_data "
            "yields a batch that differs from the one the checkpointed run read "
            "there",
            "the same stream (same files, seed and order)",
        )


def _other_batches(what: str, same: str) -> ValueError:
    """The refusal of a stream that is not the checkpointed run's: ``what`` differs."""
    return ValueError(
        f"the checkpoint's run read other training batches: {what} (they differ "
        f"in: train_data); resume with {same}, give another checkpoint_dir to "
        "start afresh, or resume anyway with RunConfig(resume_allowing="
        "('train_data',))"
    )


class StopOnInterrupt:
    """Ctrl-C sets ``requested`` (stop after the round); a second one aborts.

    Only in the main thread (signals are delivered there), and only where
    SIGINT is not ignored (a background job's, ``nohup``'s): elsewhere a no-op.
    """

    def __init__(self):
        self.requested, self.previous = False, None

    def __enter__(self):
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "tempering: stopping after the round in progress (Ctrl-C again aborts)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def warn_interrupted(step: int, checkpointed: bool, final_lost: bool) -> None:
    """The warning of a call that Ctrl-C stopped at ``step``."""
    how = (
        "call again with the same arguments to resume"
        if checkpointed
        else "give checkpoint_dir= to resume exactly"
    )
    lost = (
        "; a second Ctrl-C stopped the final evaluation, so final is None"
        if final_lost
        else ""
    )
    warn(
        f"interrupted: stopped at step {step} after a whole round; the result "
        f"holds the rounds done ({how}){lost}",
        RuntimeWarning,
    )
