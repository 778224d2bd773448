"""``pt_train``: parallel tempering (and the independent grid) end to end.

Algorithm 1 of Pushkarov et al. (2019): ``burn_in`` SGD steps for every
replica, then rounds of ``exchange_interval`` fused SGD steps, a vectorised
validation of every replica and one exchange. It is :func:`tempering.train`
with the :func:`~tempering.moves.exchange_move`; with ``exchanges=False`` the
very same programs run with every swap rejected: the independent grid, at
exactly the same cost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from tempering import sharding
from tempering._caller import warn
from tempering.adaptation import AdaptationState
from tempering.config import (
    Callback,
    RunConfig,
    RunData,
    ScoreFn,
    check_bool,
    config_from,
    require_validation,
)
from tempering.diagnostics import acceptance_rate, barrier, round_trips
from tempering.driver import RunResult, best_index, check_not_traced, ranked_last, train
from tempering.ladder import Ladder, assign_rungs, check_ladder, rungs_held
from tempering.moves import ExchangeMove, exchange_move
from tempering.records import History, brief_repr, final_or_last, metric_of
from tempering.state import MetricsFn, ReplicaState, default_metrics

__all__ = ["PTResult", "PTSummary", "pt_summary", "pt_train"]


class PTSummary(NamedTuple):
    """What one :func:`pt_train` call found, read on the host.

    Attributes:
        acceptance_rate: ``(M - 1,)`` accepted / proposed swaps per adjacent
            pair of rungs (NaN for a pair never proposed).
        round_trips: ``(M,)`` coldest -> hottest -> coldest trips per replica.
        best_replica: the replica with the lowest final score (validation
            loss by default); never a diverged one.
        best_val_loss: its validation loss.
        final_val_loss: ``(M,)`` validation losses at the end of the call.
        final_val_metrics: name -> ``(M,)`` validation metrics at the end.
        final_score: ``(M,)`` the scores the exchange compared at the end.
        c: C at the end of the call (frozen once the adaptation is over);
            ``c=summary.c`` reruns with it fixed. With ``c="auto"`` it is 1.0
            until a round has ended (the call warns when none did), and for
            the grid (``exchanges=False``) the C the exchange would have
            used on the grid's losses: nothing was proposed with it.
        ladder: the ladder at the end of the call (re-spaced if adapted).
        diverged: ``(M,)`` bool, replicas non-finite at the end.
        interrupted: stopped early by Ctrl-C (after a whole round).
        move_state: the exchange's state at the end (rungs, and C and the
            ladder with ``c="auto"``): ``pt_train(..., move_state=...)``
            continues from it.
        barrier: the communication barrier, the sum of the pairs' rejection
            rates (:func:`tempering.diagnostics.barrier`; NaN if a pair was
            never proposed).
        round_trip_bound: the round trips of all replicas per round that
            barrier allows.
        suggested_rungs: the rungs it suggests (None with a NaN barrier).
    """

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
    # The exchange's state at the end of the call (an ExchangeState: the rungs,
    # and C and the ladder with c="auto"): pt_train(..., move_state=...)
    # continues from it.
    move_state: Any = None
    # The communication barrier (tempering.diagnostics.barrier, Syed et al.
    # 2021): the sum of the pairs' rejection rates (NaN if a pair was never
    # proposed), the round trips of all replicas per round it allows, and the
    # rungs it suggests (None with a NaN barrier).
    barrier: float = float("nan")
    round_trip_bound: float = float("nan")
    suggested_rungs: int | None = None

    @property
    def final_val_accuracy(self) -> np.ndarray:
        """``final_val_metrics["accuracy"]``, shape ``(M,)``."""
        return metric_of(self.final_val_metrics, "accuracy", "final_val_metrics")

    @property
    def best_val_accuracy(self) -> float:
        """Validation accuracy of the best replica."""
        return float(self.final_val_accuracy[self.best_replica])

    def __repr__(self) -> str:
        return brief_repr(self)


class PTResult(NamedTuple):
    """What :func:`pt_train` returns.

    Attributes:
        state: the replicas at the end of the call.
        history: one record per round (:class:`tempering.History`); its
            ``move`` holds the exchange's info: proposed, accepted,
            acceptance_prob, c, ...
        summary: a :class:`PTSummary`.
    """

    state: ReplicaState
    history: History  # its move info: proposed, accepted, acceptance_prob, c, ...
    summary: PTSummary

    @property
    def move_state(self) -> Any:
        """The exchange's state at the end of the call (``summary.move_state``).

        Pass it to the next call of the same run, ``pt_train(result.state,
        ladder, key, move_state=result.move_state, ...)``, to continue the
        rungs and the adapted C and ladder instead of tuning them afresh.
        """
        return self.summary.move_state


def pt_train(
    state: ReplicaState,
    ladder: Ladder,
    key: jax.Array,
    *,
    train_data: Any,
    validation_data: Any,
    num_steps: int | None = None,
    exchange_interval: int | None = None,
    burn_in: int = 0,
    test_data: Any = None,
    c: float | str = "auto",
    scheme: str = "even_odd",
    exchanges: bool = True,
    target_acceptance: float = 0.3,
    adapt_rounds: int | None = None,
    adapt_ladder: bool = False,
    adapt_schedule: str = "freeze",
    move_state: Any = None,
    batch_size: int | None = None,
    shared_batch: bool = True,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    burn_in_hyperparams: Mapping[str, float] | None = None,
    eval_batch_size: int = 1000,
    metrics_fn: MetricsFn | None = default_metrics,
    score_fn: ScoreFn | None = None,
    callback: Callback | None = None,
    vectorize: str = "auto",
    loop: str = "auto",
    progress: bool | None = None,
    devices: Sequence[jax.Device] | None = None,
    on_diverge: str = "flag",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    keep_checkpoints: int = 2,
    resume_allowing: Sequence[str] = (),
    run_config: RunConfig | None = None,
) -> PTResult:
    """Trains M replicas by hyperparameter parallel tempering (a host driver).

    Every ``exchange_interval`` steps after the burn-in, adjacent rungs propose
    to swap their hyperparameters and accept by the Metropolis test on the
    validation scores (:func:`tempering.exchange`). A second call with the
    same key (and the first's ``move_state``) continues the run (global steps,
    keys and parity). It is :func:`tempering.train` with
    :func:`tempering.exchange_move`.

    Args:
        state: replicas from :func:`tempering.create_replicas`.
        ladder: the :class:`tempering.Ladder`, one rung per replica; its
            values are written into the replicas before the first step:
            replica m takes rung m, or keeps the rung whose values it holds
            when the replicas hold the ladder's rungs (a state a fixed-C call
            left), or ``move_state.rungs`` when given.
        key: PRNG key of the run; the run is a deterministic function of it.
        train_data: in-memory ``(inputs, targets)`` or an iterable of batches
            (:mod:`tempering.sources`).
        validation_data: arrays or a re-iterable of batches; its loss drives
            the exchanges.
        num_steps: SGD steps this call takes per replica, burn-in included.
        exchange_interval: SGD steps between exchanges (Delta N_e).
        burn_in: global steps before the first exchange.
        test_data: optional held-out data evaluated every round (never scored).
        c: ``"auto"`` (default): C is tuned during the first ``adapt_rounds``
            rounds so that the mean acceptance of proposed swaps is
            ``target_acceptance`` where the losses allow it (when many swaps
            are favourable, hence always accepted, C aims the unfavourable
            ones' acceptance instead and the mean is higher), then frozen
            (:mod:`tempering.adaptation`; its values are ``history.c``). A number: the fixed constant C > 0
            of the acceptance probability.
        scheme: ``"even_odd"`` (default: deterministic even-odd, Syed et al.
            2019) or ``"random_pair"`` (the paper's Algorithm 1).
        exchanges: False makes no swap: the independent grid baseline
            (nothing proposed, so its acceptance and barrier read NaN).
        target_acceptance: the acceptance ``c="auto"`` aims at, in (0, 1).
        adapt_rounds: rounds of adaptation; default a quarter of the rounds
            this call completes (at least 1), or, continuing a run
            (``move_state``), the adaptation's own. Only with ``c="auto"`` or
            ``adapt_ladder=True`` (with a fixed C and ladder, a ValueError).
        adapt_ladder: also re-space the inner rungs during the adaptation so
            that adjacent pairs reject equally often (the ends stay; the final
            ladder is ``summary.ladder``, its history ``history.temperatures``);
            not with ``exchanges=False`` (a grid keeps its ladder).
        adapt_schedule: what C does after the ``adapt_rounds`` rounds:
            ``"freeze"`` (default), or ``"decay"``: it keeps adapting, one
            Robbins-Monro step per round towards ``target_acceptance`` with a
            gain decaying as ``k ** -0.6`` (:func:`tempering.adaptation.decay_step`;
            needs ``c="auto"``). The ladder freezes either way.
        move_state: the exchange's state from an earlier call of the same run
            (``result.move_state``): the rungs and the adapted (or frozen) C and
            ladder carry on. None: the exchange starts afresh (C tuned again with
            ``c="auto"``; a warning says so when ``state`` has trained).
        batch_size: examples per step and replica of in-memory data (None:
            128); a stream's batches keep their size (another is an error).
        shared_batch: every replica sees the same batch each step.
        augment: optional on-device ``augment(key, batch) -> batch``.
        burn_in_hyperparams: values every replica uses during the burn-in,
            e.g. ``{"learning_rate": 0.1}``.
        eval_batch_size: chunk size of the vectorised evaluation.
        metrics_fn: per-example metrics; default accuracy for classification.
        score_fn: ``score_fn(validation: EvalMetrics) -> (M,)``, what the
            exchange compares (lower is better); default the validation loss.
        callback: ``callback(record)`` after every round; truthy stops.
        vectorize: how layers are batched over replicas (``tempering.fast``).
        loop: ``"auto"``, ``"device"`` or ``"host"`` (:mod:`tempering.loops`).
        progress: a tqdm progress bar: True, False, or None (the default): on
            in a notebook (a Jupyter or IPython kernel), off elsewhere (scripts, CI).
        devices: split the replicas over these devices; None: every local
            device when M is a multiple of their number; ``jax.local_devices()[:1]``:
            one device.
        on_diverge: ``"flag"`` or ``"restore"`` (:mod:`tempering.divergence`).
        checkpoint_dir: save checkpoints here and resume from the latest.
        checkpoint_every: rounds between checkpoints.
        keep_checkpoints: how many of the latest checkpoints to keep.
        resume_allowing: fingerprint entries that may differ on resume
            (:class:`tempering.RunConfig`).
        run_config: the run settings as one :class:`tempering.RunConfig`
            instead of their keywords (giving both is an error): its fields
            ``num_steps``, ``interval`` (this function's
            ``exchange_interval``), ``burn_in``, ``burn_in_hyperparams``,
            ``move_at_end`` (no keyword here; default True), ``batch_size``,
            ``shared_batch``, ``augment``, ``eval_batch_size``,
            ``metrics_fn``, ``score_fn``, ``vectorize``, ``loop``,
            ``devices``, ``progress``, ``callback``, ``checkpoint_dir``,
            ``checkpoint_every``, ``keep_checkpoints``, ``resume_allowing``
            and ``on_diverge``. The data (``train_data``,
            ``validation_data``, ``test_data``) and the exchange's settings
            (``c``, ``scheme``, ``exchanges``, ``target_acceptance``,
            ``adapt_rounds``, ``adapt_ladder``, ``adapt_schedule``,
            ``move_state``) are not in it: they stay keywords.

    Returns:
        :class:`PTResult` ``(state, history, summary)``; ``result.move_state``
        continues the run.

    Raises:
        ValueError / TypeError: before any training or evaluation program compiles,
            for a ladder that does not fit the state, ``c <= 0``, an unknown scheme,
            bad intervals, data or settings.

    Example:
        >>> result = pt_train(state, ladder, jax.random.key(0),
        ...                   train_data=(x, y), validation_data=(xv, yv),
        ...                   num_steps=2000, exchange_interval=100, burn_in=500)
        >>> result.summary.acceptance_rate
    """
    check_not_traced(state)
    if not isinstance(ladder, Ladder):
        raise TypeError("ladder must be a tempering.Ladder (see tempering.make_ladder)")
    check_ladder(state, ladder)
    require_validation(validation_data, "pt_train", "drives the exchanges")
    config = config_from(
        run_config, "pt_train", "exchange_interval", num_steps, exchange_interval,
        burn_in=burn_in, batch_size=batch_size, shared_batch=shared_batch,
        augment=augment, burn_in_hyperparams=burn_in_hyperparams,
        eval_batch_size=eval_batch_size, metrics_fn=metrics_fn, score_fn=score_fn,
        callback=callback, vectorize=vectorize, loop=loop, progress=progress,
        devices=devices, on_diverge=on_diverge, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
        resume_allowing=resume_allowing,
    )  # fmt: skip
    if isinstance(config.interval, tuple):
        where = "exchange_interval" if run_config is None else "run_config.interval"
        raise TypeError(
            f"{where} must be an int (steps between exchanges), got round ends "
            f"{config.interval}: explicit round ends are tempering.train's "
            "(with tempering.exchange_move)"
        )
    warn_no_move(state, config, "exchange", "exchange_interval", "the grid's")
    if adapt_rounds is not None and not (isinstance(c, str) or adapt_ladder):
        raise ValueError(
            f"adapt_rounds={adapt_rounds!r} with a fixed c={c!r}: nothing adapts, "
            "so it would be ignored. Give c='auto' (or adapt_ladder=True) to "
            "adapt over adapt_rounds rounds, or drop adapt_rounds"
        )
    adaptation = getattr(move_state, "adaptation", None)
    adapting = isinstance(adaptation, AdaptationState)
    # An adaptation that has seen no round yet (a call that ended in the
    # burn-in) fixes nothing: this call chooses, as one call over both would.
    unadapted = adapting and not int(adaptation.rounds_done)
    if adapt_rounds is None and adapting and not unadapted:
        adapt_rounds = adaptation.adapt_rounds
    if adapt_rounds is None:
        adapt_rounds = _default_adapt_rounds(state, config)
    move = exchange_move(
        ladder, c=c, scheme=scheme, enabled=check_bool(exchanges, "exchanges"),
        target_acceptance=target_acceptance, adapt_rounds=adapt_rounds,
        adapt_ladder=adapt_ladder, adapt_schedule=adapt_schedule,
    )  # fmt: skip
    if move_state is None:
        _warn_fresh_adaptation(state, move)
        # read once, from every process (a state split over several)
        held = state.replace(hyperparams=sharding.to_host(state.hyperparams))
        _warn_values_off_the_ladder(held, ladder)
        state = assign_rungs(state, ladder, _starting_rungs(held, ladder))
        move_state = move.init(state)
    else:
        if unadapted and move.adaptation is not None:
            fresh = move.init(state).adaptation  # as one call would have begun
            move_state = move_state._replace(adaptation=fresh)
        move.check_state(move_state)
        state = assign_rungs(state, move.current_ladder(move_state), move_state.rungs)
    data = RunData(train_data, validation_data, test_data)
    run = train(state, key, move, data, config, move_state=move_state)
    return PTResult(run.state, run.history, pt_summary(run, move))


def _warn_values_off_the_ladder(state: ReplicaState, ladder: Ladder) -> None:
    """Warns of hyperparameters that differ between replicas but are not exchanged.

    A state created with one ladder (learning rates) and trained on another
    (dropout rates) keeps the first's values per replica, never exchanged: a
    second, silent dimension in the comparison.
    """
    for name, value in sorted(state.hyperparams.items()):
        values = np.asarray(value)
        if name in ladder.values or not values.size or values.min() == values.max():
            continue
        warn(
            f"{name} differs between the replicas ({values.min():.4g} to "
            f"{values.max():.4g}) but is not on the ladder "
            f"({', '.join(sorted(ladder.values))}): each replica keeps its own, "
            "never exchanged. Give the replicas one value "
            f"(tp.set_hyperparams(state, {name}=...)) or put it on the ladder",
            UserWarning,
        )


def _starting_rungs(state: ReplicaState, ladder: Ladder) -> np.ndarray:
    """The rungs replicas hold when their values are the ladder's, else replica m on m.

    A state a fixed-C call left continues on its rungs; fresh replicas (or
    ones holding other values) start in order.
    """
    rungs = rungs_held(state, ladder)
    return np.arange(state.num_replicas) if rungs is None else rungs


def pt_summary(run: RunResult, move: ExchangeMove) -> PTSummary:
    """The summary of a PT call, from its :class:`~tempering.driver.RunResult`.

    Args:
        run: what :func:`tempering.train` returned for ``move``.
        move: the exchange the call ran (for C and the ladder in use).
    """
    history = run.history
    final, final_score = final_or_last(
        run.final, run.final_score, history, run.state.num_replicas
    )
    best = best_index(final_score, ranked_last(run))
    communication = barrier(history, move.scheme)
    return PTSummary(
        acceptance_rate=acceptance_rate(history),
        round_trips=round_trips(history),
        best_replica=best,
        best_val_loss=float(final.loss[best]),
        final_val_loss=final.loss,
        final_val_metrics=final.metrics,
        final_score=final_score,
        c=float(history.c[-1])
        if len(history.c)
        else float(move.current_c(run.move_state)),
        ladder=move.current_ladder(run.move_state),
        diverged=run.diverged,
        interrupted=run.interrupted,
        move_state=run.move_state,
        barrier=communication.global_barrier,
        round_trip_bound=communication.round_trip_bound,
        suggested_rungs=communication.suggested_rungs,
    )


def _warn_fresh_adaptation(state: ReplicaState, move: Any) -> None:
    """Warns when trained replicas start an adaptive exchange without its state."""
    if move.adaptation is not None and int(state.step) > 0:
        warn(
            f"the replicas have trained {int(state.step)} steps but no move_state "
            "was given: C (and the ladder) are tuned afresh. To continue a run, "
            "pass move_state=result.move_state from its previous call",
            UserWarning,
        )


def warn_no_move(
    state: ReplicaState,
    config: RunConfig,
    move: str,
    interval_name: str,
    result: str,
    at_end: str = "RunConfig(move_at_end=True)",
) -> None:
    """Warns when a fresh run's call ends before its first move.

    Its result is ``result`` (the grid's, under PT's name: acceptance NaN),
    unless a later call continues the run (a run split within its burn-in).

    Args:
        state: the replicas the call starts from.
        config: the call's settings.
        move: what the rounds end with (``"exchange"``, ``"exploit"``).
        interval_name: the caller's name of the interval.
        result: what the call's result then is.
        at_end: the caller's setting that makes a call's last round move.
    """
    num_steps, interval, burn_in = (
        config.num_steps,
        config.rounds.interval,
        config.burn_in,
    )
    first = burn_in + interval
    # a call's last round makes its move only with move_at_end (exploit_at_end)
    if int(state.step) == 0 and num_steps < first + (not config.move_at_end):
        where = "before" if num_steps < first else "at"
        skipped = "" if num_steps < first else (
            f", which a call's last round makes only with {at_end}"
        )  # fmt: skip
        warn(
            f"num_steps={num_steps} ends {where} the first {move} (burn_in="
            f"{burn_in} + {interval_name}={interval}{skipped}): this call makes "
            f"no {move} and its result is {result}. Fine when a later call "
            f"continues the run; otherwise give more steps or a shorter "
            f"{interval_name}",
            UserWarning,
        )


def _default_adapt_rounds(state: ReplicaState, config: RunConfig) -> int:
    """A quarter of the rounds this call completes, at least 1."""
    interval, burn_in = config.rounds.interval, config.burn_in
    start = int(state.step)

    def completed(step: int) -> int:
        return max(0, step - burn_in) // interval

    done = completed(start + config.num_steps) - completed(start)
    return max(1, -(-done // 4))
