"""``pt_train``: parallel tempering (and the independent grid) end to end.

Algorithm 1 of Pushkarov et al. (2019): ``burn_in`` SGD steps for every
replica, then rounds of ``exchange_interval`` fused SGD steps, a vectorised
validation of every replica and one exchange, until ``num_steps``. A round is
dispatched asynchronously with the state buffers donated: the segment (one
``lax.fori_loop`` program, or on CPU one compiled step per call; see
:func:`tempering.resolve_loop`), the validation and the exchange; the host only
collects the small per-round records. With ``exchanges=False`` the very same
programs run with every swap masked out: that is the independent grid, at
exactly the same cost.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tempering.data import Split
from tempering.exchange import SCHEMES, ExchangeInfo, exchange
from tempering.ladder import Ladder
from tempering.replicas import (
    EvalMetrics,
    ReplicaState,
    assign_rungs,
    run_evaluate,
    run_segment,
    set_hyperparams,
)

__all__ = ["PTHistory", "PTResult", "PTSummary", "count_round_trips", "pt_train"]


class RoundInfo(NamedTuple):
    """What one compiled round returns (device arrays)."""

    train_loss: jax.Array  # shape=(M,), mean training loss over the segment
    validation: EvalMetrics  # (M,) loss and accuracy before the exchange
    rungs: jax.Array  # shape=(M,), rungs after the exchange
    exchange: ExchangeInfo  # (M - 1,) per adjacent rung pair
    test: EvalMetrics | None = None  # (M,) on test_data, None when not given


class PTHistory(NamedTuple):
    """Per exchange round records (numpy), R rounds, M replicas."""

    step: np.ndarray  # shape=(R,), SGD steps done when the round was evaluated
    train_loss: np.ndarray  # shape=(R, M), mean training loss of the segment
    val_loss: np.ndarray  # shape=(R, M), validation loss of replica m
    val_accuracy: np.ndarray  # shape=(R, M)
    rungs: np.ndarray  # shape=(R, M), rung of replica m after the exchange
    proposed: np.ndarray  # shape=(R, M - 1), bool, pair (r, r + 1) proposed
    accepted: np.ndarray  # shape=(R, M - 1), bool
    acceptance_prob: np.ndarray  # shape=(R, M - 1)
    initial_rungs: np.ndarray  # shape=(M,), rungs before the first round
    test_loss: np.ndarray | None = None  # shape=(R, M), NaN without test_data
    test_accuracy: np.ndarray | None = None  # shape=(R, M), NaN without test_data


class PTSummary(NamedTuple):
    """Run summary."""

    acceptance_rate: np.ndarray  # shape=(M - 1,), accepted / proposed per pair
    round_trips: np.ndarray  # shape=(M,), coldest -> hottest -> coldest trips
    best_replica: int  # replica with the lowest final validation loss
    best_val_loss: float
    best_val_accuracy: float
    final_val_loss: np.ndarray  # shape=(M,)
    final_val_accuracy: np.ndarray  # shape=(M,)


class PTResult(NamedTuple):
    """What :func:`pt_train` returns."""

    state: ReplicaState
    history: PTHistory
    summary: PTSummary


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


def segment_and_validate(
    state: ReplicaState,
    segment_key: jax.Array,
    data_key: jax.Array,
    train_x: jax.Array,
    train_y: jax.Array,
    val_x: jax.Array,
    val_y: jax.Array,
    num_steps: int,
    *,
    batch_size: int,
    shared_batch: bool,
    augment: Callable | None,
    eval_batch_size: int,
) -> tuple[ReplicaState, jax.Array, EvalMetrics]:
    """One segment of fused steps, then every replica on the validation split.

    The common first half of a PT round and a PBT round. Runs from the host
    (:func:`run_segment`, :func:`run_evaluate`); ``state`` is donated.
    """
    state, train_loss = run_segment(
        state,
        segment_key,
        data_key,
        train_x,
        train_y,
        num_steps,
        batch_size=batch_size,
        shared_batch=shared_batch,
        augment=augment,
    )
    return (
        state,
        train_loss,
        run_evaluate(state, val_x, val_y, batch_size=eval_batch_size),
    )


@functools.partial(jax.jit, static_argnames=("scheme",), donate_argnames=("state",))
def _exchange_round(
    state: ReplicaState,
    key: jax.Array,
    losses: jax.Array,
    ladder: Ladder,
    exchange_enabled: jax.Array,
    parity: jax.Array,
    c: jax.Array,
    *,
    scheme: str,
) -> tuple[ReplicaState, jax.Array, ExchangeInfo]:
    """The exchange on validation losses, masked out for the grid and burn-in."""
    proposal, info = exchange(
        key, state.rungs, losses, ladder.betas, c=c, scheme=scheme, parity=parity
    )
    info = info._replace(
        proposed=info.proposed & exchange_enabled,
        accepted=info.accepted & exchange_enabled,
    )
    new_rungs = jnp.where(exchange_enabled, proposal, state.rungs)
    return assign_rungs(state, ladder, new_rungs), new_rungs, info


def _round(
    state: ReplicaState,
    key: jax.Array,
    data_key: jax.Array,
    train_x: jax.Array,
    train_y: jax.Array,
    val_x: jax.Array,
    val_y: jax.Array,
    ladder: Ladder,
    num_steps: int,
    exchange_enabled: jax.Array,
    parity: jax.Array,
    c: jax.Array,
    test_x: jax.Array | None = None,
    test_y: jax.Array | None = None,
    *,
    batch_size: int,
    shared_batch: bool,
    augment: Callable | None,
    scheme: str,
    eval_batch_size: int,
) -> tuple[ReplicaState, RoundInfo]:
    """Segment, validation (and test), exchange; all dispatched asynchronously."""
    segment_key, exchange_key = jax.random.split(key)
    state, train_loss, metrics = segment_and_validate(
        state,
        segment_key,
        data_key,
        train_x,
        train_y,
        val_x,
        val_y,
        num_steps,
        batch_size=batch_size,
        shared_batch=shared_batch,
        augment=augment,
        eval_batch_size=eval_batch_size,
    )
    test = None
    if test_x is not None:  # same weights as the validation, before the exchange
        test = run_evaluate(state, test_x, test_y, batch_size=eval_batch_size)
    state, new_rungs, info = _exchange_round(
        state, exchange_key, metrics.loss, ladder, exchange_enabled, parity, c,
        scheme=scheme,
    )  # fmt: skip
    return state, RoundInfo(train_loss, metrics, new_rungs, info, test)


def _as_split(data: Any, name: str) -> Split:
    if isinstance(data, Split):
        return data
    if isinstance(data, tuple | list) and len(data) == 2:
        return Split(*data)
    raise TypeError(
        f"{name} must be a tempering.data.Split or an (inputs, labels) pair"
    )


def _check_split(split: Split, name: str, num_classes: int, min_size: int) -> None:
    inputs, labels = split
    if np.ndim(labels) != 1:
        raise ValueError(
            f"{name} labels must be 1-D (N,), got shape {np.shape(labels)}"
        )
    if len(labels) == 0:
        raise ValueError(f"{name} is empty: it needs at least {min_size} examples")
    if len(labels) != len(inputs):
        raise ValueError(
            f"{name} has {len(inputs)} inputs but {len(labels)} labels; they must match"
        )
    if len(labels) < min_size:
        raise ValueError(
            f"{name} has {len(labels)} examples, fewer than batch_size={min_size}; "
            "lower batch_size or give more data"
        )
    if not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise TypeError(
            f"{name} labels must be integers, got {np.asarray(labels).dtype}"
        )
    low, high = int(np.min(labels)), int(np.max(labels))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name} labels must lie in [0, {num_classes}) (the model has "
            f"{num_classes} outputs), got values in [{low}, {high}]"
        )


def _num_classes(state: ReplicaState, inputs: np.ndarray) -> int:
    params0 = jax.tree.map(lambda x: x[0], state.params)
    stats0 = jax.tree.map(lambda x: x[0], state.batch_stats)

    def logits(x):
        variables = {"params": params0}
        if jax.tree.leaves(stats0):
            variables["batch_stats"] = stats0
        kwargs = {}
        if state.train_kwarg is not None:
            kwargs[state.train_kwarg] = False
        if state.dropout_kwarg is not None:
            kwargs[state.dropout_kwarg] = 0.0
        return state.model.apply(variables, x, **kwargs)

    sample = jax.ShapeDtypeStruct(
        (1, *np.shape(inputs)[1:]), jnp.asarray(inputs[:1]).dtype
    )
    return int(jax.eval_shape(logits, sample).shape[-1])


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc="pt_train", unit="step", file=sys.stderr)


def pt_train(
    state: ReplicaState,
    ladder: Ladder,
    key: jax.Array,
    *,
    train_data: Split | tuple,
    validation_data: Split | tuple,
    num_steps: int,
    exchange_interval: int,
    burn_in: int = 0,
    c: float = 1.0,
    scheme: str = "random_pair",
    exchanges: bool = True,
    batch_size: int = 128,
    shared_batch: bool = True,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    burn_in_hyperparams: dict[str, float] | None = None,
    eval_batch_size: int = 1000,
    progress: bool = False,
    test_data: Split | tuple | None = None,
) -> PTResult:
    """Trains M replicas by hyperparameter parallel tempering.

    Args:
        state: replicas from :func:`tempering.create_replicas`; replica m holds
            rung ``state.rungs[m]`` of ``ladder``.
        ladder: the :class:`tempering.Ladder`, one rung per replica.
        key: PRNG key; the run is a deterministic function of it.
        train_data: ``Split`` or ``(inputs, labels)`` pair, inputs ``(N, ...)``.
        validation_data: the split whose loss drives the exchanges.
        num_steps: total SGD steps T per replica, burn-in included.
        exchange_interval: SGD steps between exchanges (Delta N_e).
        burn_in: SGD steps before the first exchange (Delta N_i).
        c: normalisation constant C > 0 of the acceptance probability.
        scheme: ``"random_pair"`` (paper) or ``"even_odd"`` (DEO; the parity
            alternates between rounds).
        exchanges: False runs the identical program with every swap rejected:
            the independent grid baseline.
        batch_size: examples per step and replica (paper: 128).
        shared_batch: True (default) gives every replica the same batch at each
            step, so replicas differ only by hyperparameters and initial
            weights (common random numbers: less variance in the comparisons
            the exchanges make) and the batch is gathered once, not M times.
            False gives each replica its own batch order.
        augment: optional on-device ``augment(key, batch) -> batch``.
        burn_in_hyperparams: hyperparameters used by every replica during the
            burn-in, e.g. ``{"learning_rate": 0.1}`` (the paper's lr runs);
            the ladder takes over when the exchanges start.
        eval_batch_size: chunk size of the vectorised validation.
        progress: show a tqdm progress bar.
        test_data: optional held-out ``Split`` or ``(inputs, labels)`` pair,
            evaluated in the same compiled round as the validation (same
            weights, before the exchange) and recorded in
            ``history.test_loss`` / ``history.test_accuracy``; it never
            influences the exchanges. Without it those fields are NaN.

    Returns:
        :class:`PTResult` ``(state, history, summary)``.

    Raises:
        ValueError / TypeError: before anything compiles, for a ladder whose
            size differs from the number of replicas, non-positive intervals
            or ``num_steps``, ``c <= 0``, an unknown scheme, empty or
            mismatched data, or labels outside the model's classes.

    Example:
        >>> result = pt_train(state, ladder, jax.random.key(0),
        ...                   train_data=(x, y), validation_data=(xv, yv),
        ...                   num_steps=2000, exchange_interval=100, burn_in=500)
        >>> result.summary.acceptance_rate
    """
    if not isinstance(state, ReplicaState):
        raise TypeError("state must be a ReplicaState from tempering.create_replicas")
    if not isinstance(ladder, Ladder):
        raise TypeError("ladder must be a tempering.Ladder (see tempering.make_ladder)")
    num_replicas = state.num_replicas
    if ladder.num_rungs != num_replicas:
        raise ValueError(
            f"the ladder has {ladder.num_rungs} rungs but the state holds "
            f"{num_replicas} replicas; create the state with create_replicas(..., "
            "ladder=ladder)"
        )
    num_steps = _check_int(num_steps, "num_steps", 1)
    exchange_interval = _check_int(exchange_interval, "exchange_interval", 1)
    burn_in = _check_int(burn_in, "burn_in", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    eval_batch_size = _check_int(eval_batch_size, "eval_batch_size", 1)
    if burn_in >= num_steps:
        raise ValueError(
            f"burn_in={burn_in} must be smaller than num_steps={num_steps}"
        )
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"c must be finite and > 0, got {c}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if burn_in_hyperparams is not None:
        unknown = set(burn_in_hyperparams) - {"learning_rate", "dropout_rate"}
        if unknown:
            raise ValueError(f"burn_in_hyperparams has unknown names {sorted(unknown)}")
    train = _as_split(train_data, "train_data")
    validation = _as_split(validation_data, "validation_data")
    num_classes = _num_classes(state, train.inputs) if len(train.inputs) else 0
    _check_split(train, "train_data", num_classes, batch_size)
    _check_split(validation, "validation_data", num_classes, 1)
    test = None
    if test_data is not None:
        test = _as_split(test_data, "test_data")
        _check_split(test, "test_data", num_classes, 1)
    rungs0 = np.asarray(state.rungs)
    if sorted(rungs0.tolist()) != list(range(num_replicas)):
        raise ValueError(f"state.rungs must be a permutation of 0..M-1, got {rungs0}")

    train_x, train_y = jnp.asarray(train.inputs), jnp.asarray(train.labels, jnp.int32)
    val_x, val_y = (
        jnp.asarray(validation.inputs),
        jnp.asarray(validation.labels, jnp.int32),
    )
    test_x = test_y = None
    if test is not None:
        test_x = jnp.asarray(test.inputs)
        test_y = jnp.asarray(test.labels, jnp.int32)
    data_key, key = jax.random.split(key)
    run_round = functools.partial(
        _round,
        data_key=data_key,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        ladder=ladder,
        c=jnp.float32(c),
        test_x=test_x,
        test_y=test_y,
        batch_size=batch_size,
        shared_batch=shared_batch,
        augment=augment,
        scheme=scheme,
        eval_batch_size=eval_batch_size,
    )
    bar = _progress(num_steps, progress)

    def advance(state, round_key, steps, enabled, parity):
        state, info = run_round(
            state,
            round_key,
            num_steps=int(steps),
            exchange_enabled=jnp.bool_(enabled),
            parity=jnp.int32(parity),
        )
        if bar is not None:
            bar.update(steps)
        return state, info

    state = jax.tree.map(jnp.copy, state)  # the caller's buffers are never donated
    rounds = []
    if burn_in > 0:
        if burn_in_hyperparams:
            state = set_hyperparams(state, **burn_in_hyperparams)
        state, _ = advance(state, jax.random.fold_in(key, 0), burn_in, False, 0)
    state = assign_rungs(state, ladder, state.rungs)
    num_rounds, leftover = divmod(num_steps - burn_in, exchange_interval)
    initial_rungs = np.asarray(state.rungs)
    for r in range(num_rounds):
        state, info = advance(
            state, jax.random.fold_in(key, r + 1), exchange_interval, exchanges, r % 2
        )
        rounds.append(info)
    if leftover:
        state, _ = advance(
            state, jax.random.fold_in(key, num_rounds + 1), leftover, False, 0
        )
    if bar is not None:
        bar.close()
    final = run_evaluate(state, val_x, val_y, batch_size=eval_batch_size)
    history = _history(rounds, initial_rungs, burn_in, exchange_interval, num_replicas)
    summary = _summary(history, final, num_replicas)
    return PTResult(state, history, summary)


def _history(rounds, initial_rungs, burn_in, interval, num_replicas) -> PTHistory:
    num_rounds = len(rounds)
    nan_m = np.full((num_rounds, num_replicas), np.nan, np.float32)
    test_loss, test_accuracy = nan_m, nan_m.copy()
    if num_rounds:
        stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *rounds))
        if stacked.test is not None:
            test_loss = np.asarray(stacked.test.loss)
            test_accuracy = np.asarray(stacked.test.accuracy)
    else:
        empty_m = np.zeros((0, num_replicas), np.float32)
        empty_p = np.zeros((0, num_replicas - 1), bool)
        stacked = RoundInfo(
            empty_m,
            EvalMetrics(empty_m, empty_m),
            empty_m.astype(np.int32),
            ExchangeInfo(
                empty_p, empty_p, empty_p.astype(np.float32), empty_p.astype(np.float32)
            ),
        )
    return PTHistory(
        step=burn_in + interval * np.arange(1, num_rounds + 1),
        train_loss=np.asarray(stacked.train_loss),
        val_loss=np.asarray(stacked.validation.loss),
        val_accuracy=np.asarray(stacked.validation.accuracy),
        rungs=np.asarray(stacked.rungs),
        proposed=np.asarray(stacked.exchange.proposed),
        accepted=np.asarray(stacked.exchange.accepted),
        acceptance_prob=np.asarray(stacked.exchange.acceptance_prob),
        initial_rungs=initial_rungs,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
    )


def _summary(history: PTHistory, final: EvalMetrics, num_replicas: int) -> PTSummary:
    proposed = history.proposed.sum(0)
    accepted = history.accepted.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(proposed > 0, accepted / np.maximum(proposed, 1), np.nan)
    path = np.concatenate([history.initial_rungs[None], history.rungs])
    final_loss = np.asarray(final.loss)
    final_acc = np.asarray(final.accuracy)
    best = int(np.argmin(np.where(np.isfinite(final_loss), final_loss, np.inf)))
    return PTSummary(
        acceptance_rate=rate,
        round_trips=count_round_trips(path, num_replicas),
        best_replica=best,
        best_val_loss=float(final_loss[best]),
        best_val_accuracy=float(final_acc[best]),
        final_val_loss=final_loss,
        final_val_accuracy=final_acc,
    )
