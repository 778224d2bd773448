"""Replaying a PBT schedule: the lineage of a final replica, retrained from scratch.

:func:`best_schedule` reads the piecewise-constant hyperparameter schedule of
any final replica of a :func:`tempering.pbt_train` run out of its history (its
ancestors' hyperparameters, segment by segment); :func:`replay_schedule`
retrains fresh replicas on it through the same engine, with the run's key for
the same batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tempering.config import RunConfig, RunData, check_int, require_validation
from tempering.driver import check_not_traced, train
from tempering.hyperparams import check_names, check_values, set_hyperparams
from tempering.moves import NoInfo
from tempering.records import History, check_history, metric_of
from tempering.state import ReplicaState

__all__ = ["ReplayResult", "Schedule", "best_schedule", "replay_schedule"]


class Schedule(NamedTuple):
    """A piecewise-constant hyperparameter schedule, S pieces.

    Piece ``s`` covers steps ``[starts[s], starts[s + 1])``, the last piece
    ending at ``num_steps``.

    Attributes:
        starts: shape ``(S,)``, int; the first SGD step of each piece.
        values: name -> shape ``(S,)``, the value during each piece.
        replicas: shape ``(S,)``, int; the ancestor slot that trained it.
        num_steps: the step at which the last piece ends.
    """

    starts: np.ndarray  # shape=(S,), int; first SGD step of each piece
    values: dict[str, np.ndarray]  # name -> shape=(S,), value during each piece
    replicas: np.ndarray  # shape=(S,), int; the ancestor slot that trained it
    num_steps: int


def best_schedule(history: History, replica: int) -> Schedule:
    """The hyperparameter schedule that produced final replica ``replica``.

    Follows the lineage backwards: the weights of ``replica`` after round r
    came from ``history.parent[r, replica]``, which trained the segment before
    with its own hyperparameters, and so on back to step 0. A replica restored
    in round r (``on_diverge="restore"``, before the move) holds the weights
    its source (``history.restored_from[r]``) trained: the lineage passes
    through the source.

    Args:
        history: a :class:`History` from :func:`pbt_train`.
        replica: final replica index, e.g. ``result.summary.best_replica``.

    Returns:
        The :class:`Schedule` (burn-in piece first when ``burn_in > 0``).

    Raises:
        TypeError: a history without PBT's lineage (a PT run's), or a
            ``replica`` that is not an int.
        ValueError: a history that does not start at step 0 (a continued
            call's: join every call's with :meth:`History.concatenate`), or a
            ``replica`` out of range.
    """
    check_history(history, "best_schedule")
    if "parent" not in getattr(history.move, "_fields", ()):
        raise TypeError(
            f"best_schedule follows PBT's lineage (history.parent), but this "
            f"history's move info is {type(history.move).__name__}: give the "
            "history of a pbt_train call (under PT a replica keeps its weights and "
            "its hyperparameters follow history.hyperparams[name][:, replica])"
        )
    if isinstance(replica, bool) or not isinstance(replica, int | np.integer):
        raise TypeError(
            f"replica must be an int (a replica's index, e.g. "
            f"result.summary.best_replica), got {replica!r}"
        )
    if history.first_step != 0:
        raise ValueError(
            f"this history starts at step {history.first_step} (a continued "
            "pbt_train call); best_schedule needs the lineage from step 0: "
            "give it every call's history joined, tp.History.concatenate([first, "
            "..., last])"
        )
    num = (
        history.parent.shape[1]
        if history.parent.size
        else len(next(iter(history.initial_hyperparams.values())))
    )
    if not 0 <= replica < num:
        raise ValueError(f"replica must lie in [0, {num}), got {replica}")
    num_rounds = history.step.shape[0]
    names = list(history.initial_hyperparams)

    def values_during(segment: int, slot: int) -> dict[str, float]:
        if segment == 0:
            return {n: float(history.initial_hyperparams[n][slot]) for n in names}
        return {n: float(history.hyperparams[n][segment - 1, slot]) for n in names}

    slot = int(replica)
    pieces = [(num_rounds, slot, values_during(num_rounds, slot))]
    for r in range(num_rounds - 1, -1, -1):
        slot = int(history.parent[r, slot])
        source = int(history.restored_from[r, slot])  # restored before the move
        slot = source if source >= 0 else slot
        pieces.append((r, slot, values_during(r, slot)))
    pieces.reverse()
    starts = [history.burn_in] + [int(s) for s in history.step]
    if history.burn_in > 0:
        burn = {n: float(history.burn_in_hyperparams[n][slot]) for n in names}
        pieces.insert(0, (-1, slot, burn))
        starts.insert(0, 0)
    # merge consecutive pieces with equal values; the values a move set at the
    # call's last step (exploit_at_end) never trained
    out_starts: list[Any] = []
    out_values: list[Any] = []
    out_slots: list[Any] = []
    for start, (_, s, vals) in zip(starts, pieces, strict=True):
        if (out_values and out_values[-1] == vals) or start >= history.num_steps:
            continue
        out_starts.append(start)
        out_values.append(vals)
        out_slots.append(s)
    return Schedule(
        starts=np.asarray(out_starts, np.int64),
        values={n: np.asarray([v[n] for v in out_values], np.float32) for n in names},
        replicas=np.asarray(out_slots, np.int64),
        num_steps=history.num_steps,
    )


def _check_schedule(schedule: Schedule) -> tuple[list[int], list[int]]:
    """The pieces' starts and ends, or a ValueError/TypeError naming the field."""
    starts = np.asarray(schedule.starts)
    if starts.ndim != 1 or not np.issubdtype(starts.dtype, np.integer):
        raise TypeError(
            f"schedule.starts must be a 1-D array of ints (the first step of each "
            f"piece), got {schedule.starts!r}"
        )
    num_steps = check_int(schedule.num_steps, "schedule.num_steps", 1)
    begin = [int(s) for s in starts]
    ends = [*begin[1:], int(num_steps)]
    if (
        not begin
        or begin[0] != 0
        or any(e <= b for b, e in zip(begin, ends, strict=True))
    ):
        raise ValueError(
            "schedule must start at step 0 with increasing starts below num_steps, "
            f"got starts {begin} and num_steps {num_steps}"
        )
    if not isinstance(schedule.values, Mapping) or not schedule.values:
        raise ValueError(
            "schedule.values must map at least one hyperparameter name to its "
            f"value in each piece, got {schedule.values!r}"
        )
    for name, value in schedule.values.items():
        if np.shape(value)[:1] != (len(begin),):
            raise ValueError(
                f"schedule.values[{name!r}] must hold one value per piece, shape "
                f"({len(begin)},) for its {len(begin)} starts, got shape "
                f"{np.shape(value)}"
            )
    return begin, ends


class ReplayResult(NamedTuple):
    """What :func:`replay_schedule` returns.

    Attributes:
        state: the replicas after the last piece.
        step: shape ``(S,)``, SGD steps done at the end of each piece.
        val_loss: shape ``(S, M)``, validation loss at the end of each piece.
        val_metrics: name -> shape ``(S, M)``, likewise.
        test_loss: shape ``(S, M)``, the test loss at the end of each piece;
            None without ``test_data``.
        test_metrics: name -> shape ``(S, M)``, likewise; ``{}`` without.
    """

    state: ReplicaState
    step: np.ndarray  # shape=(S,), SGD steps done at the end of each piece
    val_loss: np.ndarray  # shape=(S, M), validation loss at the end of each piece
    val_metrics: dict[str, np.ndarray]  # name -> shape=(S, M)
    test_loss: np.ndarray | None = None  # shape=(S, M); None without test_data
    test_metrics: dict[str, np.ndarray] = {}  # noqa: RUF012 - never mutated

    @property
    def val_accuracy(self) -> np.ndarray:
        """``val_metrics["accuracy"]``, shape ``(S, M)``."""
        return metric_of(self.val_metrics, "accuracy", "val_metrics")


@struct.dataclass
class _NextPiece:
    """The move of a replay: every replica takes the next piece's values."""

    values: dict[str, jax.Array]  # name -> shape=(S,), float32

    def init(self, state: ReplicaState | None = None) -> None:
        """Nothing to carry: the piece follows from the round."""
        del state

    def step(self, key, state, move_state, scores, round_index):
        """Every replica takes the values of piece ``round_index + 1``."""
        del key, scores
        last = next(iter(self.values.values())).shape[0] - 1
        piece = jnp.minimum(round_index + 1, last)
        values = {n: v[piece] for n, v in self.values.items()}
        return set_hyperparams(state, **values), move_state, NoInfo()


def replay_schedule(
    state: ReplicaState,
    key: jax.Array,
    schedule: Schedule,
    *,
    train_data: Any,
    validation_data: Any,
    test_data: Any = None,
    **settings: Any,
) -> ReplayResult:
    """Trains fresh replicas with a fixed piecewise-constant schedule.

    Every replica of ``state`` follows ``schedule`` (all at the same values):
    :func:`tempering.train` with one round per piece, whose move sets the
    next piece's values. With the key of the PBT run the batch order is the
    same (with ``shared_batch=True``, the default: every replica's batches
    are then the run's), so a replay from the lineage's initial weights
    retraces the replica's steps when nothing else is random; dropout masks
    differ (a round's keys follow the round, and a replay's rounds are the
    schedule's pieces).

    Args:
        state: fresh replicas (any M), e.g. ``create_replicas(new_key, ...)``.
        key: PRNG key.
        schedule: from :func:`best_schedule`.
        train_data: the PBT run's training data.
        validation_data: evaluated at the end of every piece.
        test_data: optional held-out data, evaluated at the end of each piece
            (``ReplayResult.test_loss`` and ``test_metrics``).
        **settings: other :class:`tempering.RunConfig` fields (``batch_size``,
            ``vectorize``, ``callback``, ...); the schedule sets
            ``num_steps`` and the rounds. A schedule of ``batch_size`` values
            steps on batches of the largest (each piece trains on its first
            ``batch_size`` examples); pass ``batch_size=`` the PBT run's
            explored upper bound to retrace its batches.

    Returns:
        :class:`ReplayResult`.

    Raises:
        TypeError / ValueError: before anything compiles, for a schedule whose
            starts are no increasing ints from 0 below ``num_steps``, whose
            values do not hold one value per piece, or whose values are out
            of range or not finite (every piece's, not only the first's).
    """
    check_not_traced(state)
    if not isinstance(schedule, Schedule):
        raise TypeError("schedule must be a Schedule from tempering.best_schedule")
    fixed = sorted(set(settings) & {"num_steps", "interval", "burn_in"})
    if fixed:
        raise TypeError(
            f"replay_schedule sets {fixed} itself (one round per piece of the "
            "schedule, from step 0): drop them, or change schedule.starts and "
            "schedule.num_steps"
        )
    starts, ends = _check_schedule(schedule)
    require_validation(validation_data, "replay_schedule", "is recorded per piece")
    check_names(state, list(schedule.values), "schedule")
    for name, value in schedule.values.items():
        check_values(name, value, "the schedule")
    values = {n: jnp.asarray(v, jnp.float32) for n, v in schedule.values.items()}
    state = set_hyperparams(state, **{n: v[0] for n, v in schedule.values.items()})
    config = RunConfig(num_steps=ends[-1], interval=tuple(ends), **settings)
    if "batch_size" in schedule.values:  # every piece's batch, not the first's
        config = config.for_batch_sizes(schedule.values["batch_size"])
    data = RunData(train_data, validation_data, test_data)
    run = train(state, key, _NextPiece(values), data, config)
    history = run.history
    test = history.test
    return ReplayResult(
        run.state, history.step, history.validation.loss, history.validation.metrics,
        None if test is None else test.loss, {} if test is None else dict(test.metrics),
    )  # fmt: skip
