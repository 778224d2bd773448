"""``pt_train``: parallel tempering (and the independent grid) end to end.

Algorithm 1 of Pushkarov et al. (2019): ``burn_in`` SGD steps for every
replica, then rounds of ``exchange_interval`` fused SGD steps, a vectorised
validation of every replica and one exchange. It is :func:`tempering.train`
with the :func:`~tempering.moves.exchange_move`; with ``exchanges=False`` the
very same programs run with every swap rejected: the independent grid, at
exactly the same cost.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import numpy as np

from tempering.adaptation import AdaptationState
from tempering.driver import (
    History,
    best_index,
    check_bool,
    check_not_traced,
    metric_of,
    train,
)
from tempering.ladder import Ladder
from tempering.moves import exchange_move
from tempering.replicas import ReplicaState, assign_rungs, check_ladder

__all__ = ["PTHistory", "PTResult", "PTSummary", "count_round_trips", "pt_train"]


class PTHistory(NamedTuple):
    """Per exchange round records (numpy), R rounds, M replicas."""

    step: np.ndarray  # shape=(R,), global SGD steps when the round was evaluated
    train_loss: np.ndarray  # shape=(R, M), mean training loss of the segment
    val_loss: np.ndarray  # shape=(R, M), validation loss of replica m
    val_metrics: dict[str, np.ndarray]  # name -> shape=(R, M), e.g. "accuracy"
    score: np.ndarray  # shape=(R, M), what the exchange compared (lower is better)
    rungs: np.ndarray  # shape=(R, M), rung of replica m after the exchange
    hyperparams: dict[str, np.ndarray]  # name -> shape=(R, M), after the exchange
    proposed: np.ndarray  # shape=(R, M - 1), bool, pair (r, r + 1) proposed
    accepted: np.ndarray  # shape=(R, M - 1), bool
    acceptance_prob: np.ndarray  # shape=(R, M - 1)
    c: np.ndarray  # shape=(R,), the C each round's exchange used
    temperatures: np.ndarray  # shape=(R, M), the ladder after each round
    initial_rungs: np.ndarray  # shape=(M,), rungs before the first round
    test_loss: np.ndarray  # shape=(R, M), NaN without test_data
    test_metrics: dict[str, np.ndarray]  # name -> shape=(R, M), {} without test_data
    diverged: np.ndarray | None = None  # shape=(R, M), bool; non-finite loss
    restored_from: np.ndarray | None = None  # shape=(R, M), int; -1 if not restored

    @property
    def val_accuracy(self) -> np.ndarray:
        """``val_metrics["accuracy"]``, shape ``(R, M)``."""
        return metric_of(self.val_metrics, "accuracy", "val_metrics")

    @property
    def test_accuracy(self) -> np.ndarray:
        """``test_metrics["accuracy"]``, shape ``(R, M)``; NaN without test_data."""
        if not self.test_metrics:
            return np.full_like(self.test_loss, np.nan)
        return metric_of(self.test_metrics, "accuracy", "test_metrics")


class PTSummary(NamedTuple):
    """Run summary (of this call)."""

    acceptance_rate: np.ndarray  # shape=(M - 1,), accepted / proposed per pair
    round_trips: np.ndarray  # shape=(M,), coldest -> hottest -> coldest trips
    best_replica: int  # replica with the lowest final score (validation loss)
    best_val_loss: float
    final_val_loss: np.ndarray  # shape=(M,)
    final_val_metrics: dict[str, np.ndarray]  # name -> shape=(M,)
    final_score: np.ndarray  # shape=(M,)
    c: float  # C at the end of the call (frozen once the adaptation is over)
    ladder: Ladder  # the ladder at the end of the call (re-spaced if adapted)
    diverged: np.ndarray | None = None  # shape=(M,), bool; non-finite at the end
    interrupted: bool = False  # stopped early by Ctrl-C (after a whole round)
    # The exchange's state at the end of the call (an AdaptationState with
    # c="auto", else None): pt_train(..., move_state=...) continues from it.
    move_state: Any = None

    @property
    def final_val_accuracy(self) -> np.ndarray:
        """``final_val_metrics["accuracy"]``, shape ``(M,)``."""
        return metric_of(self.final_val_metrics, "accuracy", "final_val_metrics")

    @property
    def best_val_accuracy(self) -> float:
        """Validation accuracy of the best replica."""
        return float(self.final_val_accuracy[self.best_replica])


class PTResult(NamedTuple):
    """What :func:`pt_train` returns."""

    state: ReplicaState
    history: PTHistory
    summary: PTSummary

    @property
    def move_state(self) -> Any:
        """The exchange's state at the end of the call (``summary.move_state``).

        Pass it to the next call of the same run, ``pt_train(result.state,
        ladder, key, move_state=result.move_state, ...)``, to continue the
        adapted C and ladder instead of tuning them afresh.
        """
        return self.summary.move_state


def count_round_trips(rung_path: np.ndarray, num_rungs: int) -> np.ndarray:
    """Counts round trips (coldest rung to hottest and back) of every replica.

    Args:
        rung_path: ``(R, M)`` rung of every replica over time (include the
            initial rungs as the first row).
        num_rungs: M.

    Returns:
        ``(M,)`` int array: completed coldest -> hottest -> coldest trips.
    """
    rung_path = np.asarray(rung_path)
    trips = np.zeros(rung_path.shape[1], np.int64)
    for m in range(rung_path.shape[1]):
        last_end = None  # which end of the ladder replica m touched last
        for rung in rung_path[:, m]:
            if rung == 0:
                if last_end == "hot":
                    trips[m] += 1
                last_end = "cold"
            elif rung == num_rungs - 1 and last_end == "cold":
                last_end = "hot"
    return trips


def pt_train(
    state: ReplicaState,
    ladder: Ladder,
    key: jax.Array,
    *,
    exchange_interval: int,
    c: float | str = "auto",
    scheme: str = "even_odd",
    exchanges: bool = True,
    target_acceptance: float = 0.3,
    adapt_rounds: int | None = None,
    adapt_ladder: bool = False,
    move_state: Any = None,
    **kwargs: Any,
) -> PTResult:
    """Trains M replicas by hyperparameter parallel tempering (a host driver).

    Every ``exchange_interval`` steps after the burn-in, adjacent rungs propose
    to swap their hyperparameters and accept by the Metropolis test on the
    validation scores (:func:`tempering.exchange`). A second call with the
    same key continues the run (global steps, keys and parity).

    Args:
        state: replicas from :func:`tempering.create_replicas`; replica m holds
            rung ``state.rungs[m]`` of ``ladder``.
        ladder: the :class:`tempering.Ladder`, one rung per replica; its
            values are written into the replicas before the first step.
        key: PRNG key of the run; the run is a deterministic function of it.
        exchange_interval: SGD steps between exchanges (Delta N_e).
        c: ``"auto"`` (default): C is tuned during the first ``adapt_rounds``
            rounds so that the mean acceptance of proposed swaps is
            ``target_acceptance``, then frozen (:mod:`tempering.adaptation`;
            its values are ``history.c``). A number: the fixed constant C > 0
            of the acceptance probability.
        scheme: ``"even_odd"`` (default: deterministic even-odd, Syed et al.
            2019; more round trips for the same number of rounds, see the
            README's comparison) or ``"random_pair"`` (the paper's Algorithm 1).
        exchanges: False rejects every swap: the independent grid baseline.
        target_acceptance: the acceptance ``c="auto"`` aims at, in (0, 1).
        adapt_rounds: rounds of adaptation; default a quarter of the rounds
            this call completes (at least 1), or, continuing a run
            (``move_state``), the adaptation's own.
        adapt_ladder: also re-space the inner rungs during the adaptation so
            that adjacent pairs reject equally often (the ends stay; the final
            ladder is ``summary.ladder``, its history ``history.temperatures``).
        move_state: the exchange's state from an earlier call of the same run
            (``result.move_state``): the adapted (or frozen) C and ladder carry
            on. None: the exchange starts afresh (C tuned again with
            ``c="auto"``; a warning says so when ``state`` has trained).
        **kwargs: the run's data and settings, as for :func:`tempering.train`:
            ``train_data``, ``validation_data``, ``num_steps`` (this call's
            steps, burn-in included), ``burn_in``, ``test_data``,
            ``batch_size``, ``shared_batch``, ``augment``,
            ``burn_in_hyperparams``, ``eval_batch_size``, ``metrics_fn``,
            ``score_fn``, ``callback``, ``vectorize``, ``loop``, ``progress``,
            ``on_diverge`` (``"flag"`` or ``"restore"``), ``checkpoint_dir``,
            ``checkpoint_every``, ``keep_checkpoints`` (exact resume).

    Returns:
        :class:`PTResult` ``(state, history, summary)``.

    Raises:
        ValueError / TypeError: before anything compiles, for a ladder that
            does not fit the state, ``c <= 0``, an unknown scheme, bad
            intervals, data or settings.

    Example:
        >>> result = pt_train(state, ladder, jax.random.key(0),
        ...                   train_data=(x, y), validation_data=(xv, yv),
        ...                   num_steps=2000, exchange_interval=100, burn_in=500)
        >>> result.summary.acceptance_rate
    """
    if not isinstance(state, ReplicaState):
        raise TypeError("state must be a ReplicaState from tempering.create_replicas")
    check_not_traced(state)
    if not isinstance(ladder, Ladder):
        raise TypeError("ladder must be a tempering.Ladder (see tempering.make_ladder)")
    check_ladder(state, ladder)
    if kwargs.get("validation_data") is None:
        raise TypeError("pt_train needs validation_data: its loss drives the exchanges")
    _check_some_exchange(state, exchange_interval, kwargs)
    if adapt_rounds is None and isinstance(move_state, AdaptationState):
        adapt_rounds = move_state.adapt_rounds
    if adapt_rounds is None:
        adapt_rounds = _default_adapt_rounds(state, exchange_interval, kwargs)
    move = exchange_move(
        ladder, c=c, scheme=scheme, enabled=check_bool(exchanges, "exchanges"),
        target_acceptance=target_acceptance, adapt_rounds=adapt_rounds,
        adapt_ladder=adapt_ladder,
    )  # fmt: skip
    rungs = np.asarray(state.rungs)
    if sorted(rungs.tolist()) != list(range(state.num_replicas)):
        raise ValueError(f"state.rungs must be a permutation of 0..M-1, got {rungs}")
    if move_state is None:
        _warn_fresh_adaptation(state, move)
        move_state = move.init(state)
    else:
        move.check_state(move_state)
    state = assign_rungs(state, move.current_ladder(move_state), state.rungs)
    run = train(state, key, move, move_state=move_state, interval=exchange_interval,
                interval_name="exchange_interval", **kwargs)  # fmt: skip
    history = _pt_history(run.history)
    best = best_index(run.final_score)
    summary = PTSummary(
        acceptance_rate=_acceptance_rate(history),
        round_trips=count_round_trips(
            np.concatenate([history.initial_rungs[None], history.rungs]),
            state.num_replicas,
        ),
        best_replica=best,
        best_val_loss=float(run.final.loss[best]),
        final_val_loss=run.final.loss,
        final_val_metrics=run.final.metrics,
        final_score=run.final_score,
        c=float(history.c[-1])
        if len(history.c)
        else float(move.current_c(run.move_state)),
        ladder=move.current_ladder(run.move_state),
        diverged=run.diverged,
        interrupted=run.interrupted,
        move_state=run.move_state,
    )
    return PTResult(run.state, history, summary)


def _warn_fresh_adaptation(state: ReplicaState, move: Any) -> None:
    """Warns when trained replicas start an adaptive exchange without its state."""
    if move.adaptation is not None and int(state.step) > 0:
        warnings.warn(
            f"the replicas have trained {int(state.step)} steps but no move_state "
            "was given: C (and the ladder) are tuned afresh. To continue a run, "
            "pass move_state=result.move_state from its previous call",
            UserWarning,
            stacklevel=3,
        )


def _valid_schedule(interval: Any, kwargs: dict) -> tuple[int, int, int] | None:
    """``(num_steps, burn_in, interval)`` when valid ints, else None (train raises)."""
    num_steps, burn_in = kwargs.get("num_steps"), kwargs.get("burn_in", 0)
    values = (num_steps, burn_in, interval)
    if not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values
    ):
        return None
    if min(num_steps, interval) < 1 or burn_in < 0:
        return None
    return int(num_steps), int(burn_in), int(interval)


def _check_some_exchange(state: ReplicaState, interval: Any, kwargs: dict) -> None:
    """Warns when a fresh run's call ends before its first exchange.

    Its result is the grid's under PT's name (acceptance NaN), unless a later
    call continues the run (a run split within its burn-in).
    """
    schedule = _valid_schedule(interval, kwargs)
    if schedule is None:
        return  # train() names the bad argument
    num_steps, burn_in, interval = schedule
    if int(state.step) == 0 and num_steps < burn_in + interval:
        warnings.warn(
            f"num_steps={num_steps} ends before the first exchange (burn_in="
            f"{burn_in} + exchange_interval={interval}): this call tries no swap "
            "and its result is the grid's. Fine when a later call continues the "
            "run; otherwise give more steps or a shorter exchange_interval",
            UserWarning,
            stacklevel=3,
        )


def _default_adapt_rounds(state: ReplicaState, interval: Any, kwargs: dict) -> int:
    """A quarter of the rounds this call completes, at least 1."""
    schedule = _valid_schedule(interval, kwargs)
    if schedule is None:
        return 1  # train() names the bad argument
    num_steps, burn_in, interval = schedule
    start = int(state.step)

    def completed(step: int) -> int:
        return max(0, step - burn_in) // interval

    return max(1, -(-(completed(start + num_steps) - completed(start)) // 4))


def _pt_history(history: History) -> PTHistory:
    test = history.test
    return PTHistory(
        step=history.step,
        train_loss=history.train_loss,
        val_loss=history.validation.loss,
        val_metrics=history.validation.metrics,
        score=history.score,
        rungs=history.rungs,
        hyperparams=history.hyperparams,
        proposed=history.move.proposed,
        accepted=history.move.accepted,
        acceptance_prob=history.move.acceptance_prob,
        c=history.move.c,
        temperatures=history.move.temperatures,
        initial_rungs=history.initial_rungs,
        test_loss=(
            np.full_like(history.train_loss, np.nan) if test is None else test.loss
        ),
        test_metrics={} if test is None else test.metrics,
        diverged=history.diverged,
        restored_from=history.restored_from,
    )


def _acceptance_rate(history: PTHistory) -> np.ndarray:
    proposed = history.proposed.sum(0)
    accepted = history.accepted.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(proposed > 0, accepted / np.maximum(proposed, 1), np.nan)
