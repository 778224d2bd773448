"""What a run records: one :class:`RoundRecord` per round, one :class:`History` per call.

Every driver (``pt_train``, ``pbt_train``, ``replay_schedule``,
``diffusion_test``, ``tempering.train`` with any move) returns the same
:class:`History`: per round the training loss, the validation and test
metrics, the scores, the hyperparameters (and the rungs of a move that keeps
them, :func:`tempering.moves.rungs_of`) after the move, and the
move's own info (``history.move``: an exchange's proposals and acceptances,
PBT's parents and copies). The info's fields read as the history's own
(``history.accepted`` is ``history.move.accepted``), so PT and PBT histories
read as they always did. Histories of continued calls of one run join with
:func:`concatenate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from tempering._text import short_array
from tempering.state import EvalMetrics

__all__ = [
    "History",
    "RecordRows",
    "RoundRecord",
    "brief_repr",
    "concatenate",
    "final_or_last",
    "metric_of",
]


def metric_of(metrics: dict[str, np.ndarray], name: str, where: str) -> np.ndarray:
    """``metrics[name]``, or an AttributeError that says which metrics exist."""
    if name not in metrics:
        raise AttributeError(
            f"no {name} in {where}: the metrics function returned {sorted(metrics)}"
        )
    return metrics[name]


class RoundRecord(NamedTuple):
    """One round, on the host (numpy); M replicas."""

    round: int  # 0-based round after the burn-in (the move's round_index)
    step: int  # global SGD steps done when the round was evaluated
    train_loss: np.ndarray  # shape=(M,), mean training loss of the segment
    validation: EvalMetrics | None  # (M,) loss and metrics, before the move
    # shape=(M,), each replica's score (lower is better): what the move
    # compared, except that a diverged replica counted as +inf, or, restored
    # (on_diverge="restore"), as its source
    score: np.ndarray
    test: EvalMetrics | None  # (M,) on test_data, before the move; None without
    move: Any  # the move's info (e.g. ExchangeMoveInfo, PBTInfo)
    # shape=(M,), int32, after the move: the move state's rungs (None for a
    # move that keeps none, e.g. PBT)
    rungs: np.ndarray | None
    hyperparams: dict[str, np.ndarray]  # name -> shape=(M,), after the move
    diverged: np.ndarray  # shape=(M,), bool; non-finite loss or score this round
    restored_from: np.ndarray  # shape=(M,), int32; source replica, -1 if none


# The fields with a leading round axis (the rest describe the call).
PER_ROUND = RoundRecord._fields


class History(NamedTuple):
    """The records of one call stacked over its R rounds (leading axis R).

    Besides its fields, the fields of the move's info read as the history's
    own (``history.accepted`` for an exchange, ``history.parent`` for PBT),
    and ``val_loss``, ``val_metrics``, ``test_loss``, ``test_metrics`` (and
    their ``*_accuracy``) read the evaluations.
    """

    round: np.ndarray  # shape=(R,)
    step: np.ndarray  # shape=(R,), global SGD steps when the round was evaluated
    # shape=(R, M), mean training loss of the round's steps in this call (a
    # round split over two calls: the second call's steps only)
    train_loss: np.ndarray
    validation: EvalMetrics | None  # (R, M) loss and metrics, before the move
    score: np.ndarray  # shape=(R, M), each replica's score, as RoundRecord.score
    test: EvalMetrics | None  # (R, M); None without test_data
    move: Any  # the move's info, leaves (R, ...)
    rungs: np.ndarray | None  # shape=(R, M), after each move; None without rungs
    hyperparams: dict[str, np.ndarray]  # name -> shape=(R, M), after each move
    diverged: np.ndarray  # shape=(R, M), bool; non-finite loss or score
    restored_from: np.ndarray  # shape=(R, M), int32; source replica, -1 if none
    initial_rungs: np.ndarray | None  # shape=(M,), before this call's first round
    initial_hyperparams: dict[str, np.ndarray]  # name -> shape=(M,), likewise
    burn_in_hyperparams: dict[str, np.ndarray]  # name -> shape=(M,), in the burn-in
    first_step: int = 0  # global step at which this call started
    burn_in: int = 0  # global steps of the run's burn-in
    num_steps: int = 0  # global step at which this call ended
    # the exchange's scheme ("even_odd" or "random_pair"); None: a move without
    # one (PBT, a replay) or a history built by hand
    scheme: str | None = None

    @property
    def val_loss(self) -> np.ndarray:
        """``validation.loss``, shape ``(R, M)``."""
        return np.asarray(self._validation.loss)

    @property
    def val_metrics(self) -> dict[str, np.ndarray]:
        """``validation.metrics``: name -> shape ``(R, M)``."""
        return dict(self._validation.metrics.items())  # type: ignore[arg-type]

    @property
    def val_accuracy(self) -> np.ndarray:
        """``val_metrics["accuracy"]``, shape ``(R, M)``."""
        return metric_of(self.val_metrics, "accuracy", "val_metrics")

    @property
    def test_loss(self) -> np.ndarray:
        """``test.loss``, shape ``(R, M)``; NaN without test data."""
        if self.test is None:
            return np.full_like(np.asarray(self.train_loss, np.float32), np.nan)
        return np.asarray(self.test.loss)

    @property
    def test_metrics(self) -> dict[str, np.ndarray]:
        """``test.metrics``; ``{}`` without test data."""
        return {} if self.test is None else dict(self.test.metrics.items())  # type: ignore[arg-type]

    @property
    def test_accuracy(self) -> np.ndarray:
        """``test_metrics["accuracy"]``, shape ``(R, M)``; NaN without test data."""
        if self.test is None:
            return self.test_loss
        return metric_of(self.test_metrics, "accuracy", "test_metrics")

    @property
    def _validation(self) -> EvalMetrics:
        if self.validation is None:
            raise AttributeError("this run had no validation data: no val_* records")
        return self.validation

    def __repr__(self) -> str:
        """A summary: rounds, replicas, steps and the names of what was recorded.

        A notebook shows it for a history (and a result holding one); the
        arrays are its fields (``history.val_loss``, ``history.rungs``, ...).
        """
        rounds, replicas = np.shape(self.train_loss)[:2]
        steps = np.asarray(self.step)
        span = f"steps {int(steps[0])}..{int(steps[-1])}" if len(steps) else "no steps"
        move = type(self.move).__name__
        fields = getattr(self.move, "_fields", None)
        if fields:
            move += "(" + ", ".join(fields) + ")"

        def names(metrics: EvalMetrics | None) -> str:
            return "None" if metrics is None else str(["loss", *metrics.metrics])

        return (
            f"History({rounds} rounds x {replicas} replicas, {span}, move={move}, "
            f"validation={names(self.validation)}, test={names(self.test)}, "
            f"hyperparams={sorted(self.hyperparams)}, scheme={self.scheme!r})"
        )

    @classmethod
    def concatenate(cls, histories: Sequence[History]) -> History:
        """One history of consecutive calls of the same run (:func:`concatenate`)."""
        return concatenate(histories)

    def __getattr__(self, name: str) -> Any:
        """A field of the move's info (``history.accepted``: ``history.move.accepted``)."""
        attribute = getattr(type(self), name, None)
        if isinstance(attribute, property) and attribute.fget is not None:
            return attribute.fget(self)  # it raised AttributeError: its message
        if name.startswith("_"):
            raise AttributeError(name)
        info = self.move
        if isinstance(info, tuple) and name in getattr(info, "_fields", ()):
            return getattr(info, name)
        fields = getattr(info, "_fields", ())
        raise AttributeError(
            f"History has no {name!r}: its fields are {list(History._fields)}, and "
            f"its move's info ({type(info).__name__}) has {list(fields)}"
        )


def concatenate(histories: Sequence[History]) -> History:
    """One history of consecutive calls of the same run.

    Args:
        histories: each call's history, in order; each must start where the
            previous one ended (``first_step`` equal to its ``num_steps``).

    Returns:
        A :class:`History` of all their rounds, starting where the first did.

    Raises:
        ValueError: no history, a gap between calls, or histories of different
            runs (other evaluations, moves, hyperparameters or schemes).
    """
    histories = list(histories)
    if not histories:
        raise ValueError("histories must hold at least one History")
    for before, after in zip(histories, histories[1:], strict=False):
        if after.first_step != before.num_steps:
            raise ValueError(
                f"histories must be consecutive calls of one run: one ends at step "
                f"{before.num_steps}, the next starts at {after.first_step}"
            )
    try:
        rounds = {
            name: jax.tree.map(
                lambda *xs: np.concatenate([np.asarray(x) for x in xs]),
                *(getattr(h, name) for h in histories),
            )
            for name in PER_ROUND
        }
    except (ValueError, TypeError) as error:
        raise ValueError(
            "histories must come from one run (the same evaluations, move and "
            f"hyperparameters): {error}"
        ) from error
    schemes = {h.scheme for h in histories if h.scheme is not None}
    if len(schemes) > 1:
        raise ValueError(
            "histories must come from one run: their exchanges used the schemes "
            f"{sorted(schemes)}"
        )
    first, last = histories[0], histories[-1]
    return first._replace(
        **rounds, num_steps=last.num_steps, scheme=next(iter(schemes), None)
    )


def final_or_last(
    final: EvalMetrics | None, final_score: Any, history: History, num: int
) -> tuple[EvalMetrics, np.ndarray]:
    """The call's final evaluation and scores; the last round's when there is none.

    A second Ctrl-C during the final evaluation leaves ``final`` None: the
    summaries then report the last round's validation (NaN without rounds).
    """
    if final is not None:
        return final, np.asarray(final_score)
    if history.validation is not None and len(history.step):
        last = jax.tree.map(lambda x: np.asarray(x)[-1], history.validation)
        return last, np.asarray(history.score)[-1]
    nan: Any = np.full((num,), np.nan, np.float32)
    return EvalMetrics(nan, {}), nan


class RecordRows:
    """Round records written, as they arrive, into preallocated ``(R, ...)`` arrays."""

    def __init__(self, capacity: int):
        self.capacity, self.count, self.arrays = capacity, 0, None

    def add(self, record: RoundRecord) -> None:
        """Copies one record into row ``count``."""
        if self.arrays is None:
            self.arrays = jax.tree.map(
                lambda x: np.empty((self.capacity, *np.shape(x)), np.asarray(x).dtype),
                record,
            )
        jax.tree.map(
            lambda rows, x: rows.__setitem__(self.count, x), self.arrays, record
        )
        self.count += 1

    def extend(self, rows: RoundRecord, count: int) -> None:
        """Adds the first ``count`` of stacked ``rows`` (a resumed call's records)."""
        for index in range(count):
            self.add(jax.tree.map(lambda x, i=index: x[i], rows))

    def so_far(self) -> RecordRows:
        """The rows written so far, as they stay (later ones do not show).

        Shared, not copied: rows are only appended.
        """
        rows = RecordRows(self.capacity)
        rows.count, rows.arrays = self.count, self.arrays
        return rows

    def stacked(self) -> RoundRecord | None:
        """The rows written so far (copied when the run stopped early); None if none."""
        if self.arrays is None or self.count == self.capacity:
            return self.arrays
        return jax.tree.map(lambda rows: rows[: self.count].copy(), self.arrays)

    def history(self, empty: Callable[[], RoundRecord], **call: Any) -> History:
        """The :class:`History` of the rows, ``call`` its per-call fields.

        Args:
            empty: builds a record with zero rounds (leading axis 0), whose
                trailing shapes an empty history keeps; called only when no
                round was recorded.
            **call: ``initial_rungs``, ``initial_hyperparams``,
                ``burn_in_hyperparams``, ``first_step``, ``burn_in``,
                ``num_steps``.
        """
        rows = self.stacked() if self.count else empty()
        assert rows is not None
        return History(
            **dict(
                rows._asdict(), round=np.asarray(rows.round), step=np.asarray(rows.step)
            ),
            **call,
        )


def check_history(history: Any, caller: str) -> None:
    """A TypeError unless ``history`` is a :class:`History` (named by ``caller``)."""
    if not isinstance(history, History):
        hint = " (a result's .history)" if hasattr(history, "history") else ""
        raise TypeError(
            f"{caller} takes a tempering.History{hint}, got {type(history).__name__}"
        )


def brief_repr(result: Any, opaque: Sequence[str] = ("move_state",)) -> str:
    """A result's repr a notebook can show: arrays shortened, ``opaque`` fields by type.

    Args:
        result: a NamedTuple of a call's results (a summary).
        opaque: fields shown by their type's name only (a move's state holds
            every adaptation round's ratios).

    Returns:
        ``Name(field=value, ...)`` with arrays of more than 8 entries elided
        and floats to 4 significant digits.
    """
    parts = []
    for name, value in zip(result._fields, result, strict=True):
        if name in opaque and value is not None:
            parts.append(f"{name}={type(value).__name__}(...)")
        else:
            parts.append(f"{name}={_brief(value)}")
    return f"{type(result).__name__}({', '.join(parts)})"


def _plain_named_tuple(value: Any) -> bool:
    """A NamedTuple with the repr ``collections.namedtuple`` gives it."""
    return (
        isinstance(value, tuple)
        and hasattr(value, "_fields")
        and type(value).__repr__.__module__ == "collections"
    )


def _brief(value: Any) -> str:
    """``value`` for :func:`brief_repr`: containers recursed into, arrays elided."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_brief(v)}" for k, v in value.items()) + "}"
    if _plain_named_tuple(value):  # one with a repr of its own (History) keeps it
        fields = zip(value._fields, value, strict=True)
        return f"{type(value).__name__}({', '.join(f'{k}={_brief(v)}' for k, v in fields)})"
    if isinstance(value, np.ndarray | jax.Array | np.generic):
        if np.ndim(value):
            return short_array(value, f"Array{tuple(np.shape(value))}")
        value = value.item()
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".enai") else text + ".0"
    return repr(value)
