"""Population based training (Jaderberg et al. 2017) in the replica engine.

PBT runs on the same stacked :class:`~tempering.replicas.ReplicaState` as
parallel tempering: M replicas train with the fused vectorised step, and every
``ready_interval`` SGD steps one pure step ``pbt_step(key, state, scores)``

- *exploits*: a replica chosen for replacement copies the parameters,
  optimiser state (moments and the learning rate in
  ``opt_state.hyperparams``), BatchNorm statistics and dropout rate of a better
  replica. The copy is one index gather along the replica axis,
  ``jax.tree.map(lambda x: x[parent], ...)``: replicas that do not copy have
  ``parent[m] == m`` and stay bit-identical;
- *explores*: each hyperparameter of a replica that copied (which it now holds
  from its parent) is multiplied by a factor drawn uniformly from
  ``perturb_factors`` (default 0.8 or 1.2) or, with probability
  ``resample_probability``, redrawn from its prior; the result is clipped to
  the hyperparameter's bounds.

Scores are validation losses: lower is better, and a non-finite score is the
worst. Two selection rules (the paper's section 4.1):

- ``"truncation"``: the bottom ``ceil(fraction * M)`` replicas (at most M // 2)
  each copy a uniformly drawn member of the top ``ceil(fraction * M)``;
- ``"tournament"``: binary tournament, every replica draws one other replica
  uniformly and copies it when its score is strictly better.

Where PT moves only O(M) hyperparameters between replicas, PBT moves whole
models: the difference between nonlocal paths and greedy selection.

``pbt_train`` mirrors :func:`tempering.pt_train` (rounds of segment,
validation and exploit/explore, dispatched asynchronously with the state
buffers donated) and records the lineage,
so :func:`best_schedule` reads out the piecewise-constant hyperparameter
schedule of any final replica and :func:`replay_schedule` retrains fresh
replicas with it through the same engine.

References:
    Jaderberg et al., "Population Based Training of Neural Networks",
    arXiv:1711.09846 (2017).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tempering.data import Split
from tempering.ladder import HYPERPARAMETERS
from tempering.replicas import (
    EvalMetrics,
    ReplicaState,
    run_evaluate,
    set_hyperparams,
)
from tempering.training import (
    _as_split,
    _check_int,
    _check_split,
    _num_classes,
    _progress,
    segment_and_validate,
)

__all__ = [
    "SELECTIONS",
    "PBTConfig",
    "PBTHistory",
    "PBTInfo",
    "PBTResult",
    "PBTSummary",
    "Prior",
    "ReplayResult",
    "Schedule",
    "best_schedule",
    "explore",
    "get_hyperparams",
    "pbt_config",
    "pbt_step",
    "pbt_train",
    "replay_schedule",
    "sample_prior",
    "select_parents",
]

SELECTIONS = ("truncation", "tournament")


class Prior(NamedTuple):
    """Prior of one hyperparameter: uniform on ``[low, high]``, or log-uniform."""

    low: float
    high: float
    log: bool = False


class PBTConfig(NamedTuple):
    """Validated PBT settings (hashable: a static argument of the jitted round).

    Build it with :func:`pbt_config`; entry ``i`` of every per-hyperparameter
    tuple belongs to ``names[i]``.
    """

    names: tuple[str, ...]  # hyperparameters explored, e.g. ("learning_rate",)
    priors: tuple[Prior, ...]  # resampling prior of each
    bounds: tuple[tuple[float, float], ...]  # (low, high) clip range of each
    selection: str  # "truncation" or "tournament"
    fraction: float  # q in (0, 0.5]: bottom / top fraction for truncation
    resample_probability: float  # p in [0, 1]: redraw from the prior
    perturb_factors: tuple[float, ...]  # factors drawn uniformly, e.g. (0.8, 1.2)


class PBTInfo(NamedTuple):
    """What one :func:`pbt_step` did."""

    parent: (
        jax.Array
    )  # shape=(M,), dtype=int32; replica m now holds a copy of parent[m]
    copied: jax.Array  # shape=(M,), dtype=bool; parent[m] != m
    resampled: dict[str, jax.Array]  # name -> shape=(M,), bool; drawn from the prior
    hyperparams: dict[str, jax.Array]  # name -> shape=(M,), float32; after explore


def _check_prior(name: str, prior: Any) -> Prior:
    if isinstance(prior, Prior):
        low, high, log = prior
    elif isinstance(prior, tuple | list) and len(prior) in (2, 3):
        low, high, log = (*prior, False) if len(prior) == 2 else prior
    else:
        raise TypeError(
            f"prior[{name!r}] must be a Prior(low, high, log) or a (low, high[, log]) "
            f"tuple, got {prior!r}"
        )
    low, high, log = float(low), float(high), bool(log)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"prior[{name!r}] must be finite, got ({low}, {high})")
    if low >= high:
        raise ValueError(
            f"prior[{name!r}] has low={low} >= high={high}; bounds reversed or empty"
        )
    if log and low <= 0:
        raise ValueError(f"log-uniform prior[{name!r}] needs low > 0, got {low}")
    return Prior(low, high, log)


def _check_range(name: str, low: float, high: float, what: str) -> None:
    if name == "learning_rate" and low <= 0:
        raise ValueError(f"{what} of learning_rate must be > 0, got low={low}")
    if name == "dropout_rate" and (low < 0 or high >= 1):
        raise ValueError(
            f"{what} of dropout_rate must lie in [0, 1), got ({low}, {high})"
        )


def pbt_config(
    prior: Mapping[str, Prior | tuple],
    *,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    selection: str = "truncation",
    fraction: float = 0.2,
    resample_probability: float = 0.25,
    perturb_factors: Sequence[float] = (0.8, 1.2),
) -> PBTConfig:
    """Validates PBT settings, before anything compiles.

    Args:
        prior: hyperparameter name (``"learning_rate"`` and/or
            ``"dropout_rate"``) -> :class:`Prior` or ``(low, high[, log])``.
            Only these hyperparameters are explored; the others are copied
            from the parent unchanged.
        bounds: name -> ``(low, high)`` clip range after explore; defaults to
            the prior's range.
        selection: ``"truncation"`` or ``"tournament"``.
        fraction: q in (0, 0.5], the bottom / top fraction of truncation.
        resample_probability: p in [0, 1], chance to redraw a hyperparameter
            from its prior instead of perturbing it.
        perturb_factors: non-empty, positive; one is drawn uniformly per
            hyperparameter and replica.

    Returns:
        A :class:`PBTConfig`.

    Raises:
        ValueError: empty prior, unknown names, reversed or invalid bounds
            (``low >= high``, lr <= 0, dropout outside [0, 1)), q outside
            (0, 0.5], p outside [0, 1], empty or non-positive factors, or an
            unknown selection rule.

    Example:
        >>> config = pbt_config({"learning_rate": Prior(1e-3, 1e-1, log=True)})
    """
    if not prior:
        raise ValueError(
            "prior is empty: give at least one hyperparameter to explore, e.g. "
            "{'learning_rate': Prior(1e-3, 1e-1, log=True)}"
        )
    unknown = sorted(set(prior) - set(HYPERPARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} in prior; PBT explores {HYPERPARAMETERS}"
        )
    bounds = dict(bounds or {})
    extra = sorted(set(bounds) - set(prior))
    if extra:
        raise ValueError(f"bounds given for {extra}, which have no prior")
    names = tuple(name for name in HYPERPARAMETERS if name in prior)
    priors, clips = [], []
    for name in names:
        p = _check_prior(name, prior[name])
        _check_range(name, p.low, p.high, "the prior")
        low, high = bounds.get(name, (p.low, p.high))
        low, high = float(low), float(high)
        if not (np.isfinite(low) and np.isfinite(high)) or low >= high:
            raise ValueError(
                f"bounds[{name!r}] = ({low}, {high}) must be finite with low < high "
                "(bounds reversed?)"
            )
        _check_range(name, low, high, "the bounds")
        priors.append(p)
        clips.append((low, high))
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    fraction = float(fraction)
    if not 0.0 < fraction <= 0.5:
        raise ValueError(
            f"fraction q must lie in (0, 0.5] (bottom q copy the top q), got {fraction}"
        )
    resample_probability = float(resample_probability)
    if not 0.0 <= resample_probability <= 1.0:
        raise ValueError(
            f"resample_probability must lie in [0, 1], got {resample_probability}"
        )
    factors = tuple(float(f) for f in perturb_factors)
    if not factors or not all(np.isfinite(f) and f > 0 for f in factors):
        raise ValueError(
            f"perturb_factors must be a non-empty list of positive numbers, got {factors}"
        )
    return PBTConfig(
        names=names,
        priors=tuple(priors),
        bounds=tuple(clips),
        selection=selection,
        fraction=fraction,
        resample_probability=resample_probability,
        perturb_factors=factors,
    )


def get_hyperparams(state: ReplicaState, names: Sequence[str]) -> dict[str, jax.Array]:
    """The per-replica values ``(M,)`` of the named hyperparameters."""
    where = {"learning_rate": state.learning_rate, "dropout_rate": state.dropout_rate}
    return {name: where[name] for name in names}


def num_truncated(num_replicas: int, fraction: float) -> int:
    """Replicas replaced by truncation selection: ``min(ceil(q M), M // 2)``."""
    return min(math.ceil(fraction * num_replicas - 1e-9), num_replicas // 2)


def select_parents(
    key: jax.Array, scores: jax.Array, config: PBTConfig
) -> tuple[jax.Array, jax.Array]:
    """Exploit: which replica each replica copies (lower score is better).

    Args:
        key: PRNG key.
        scores: ``(M,)`` validation losses; NaN and inf are the worst.
        config: :class:`PBTConfig`.

    Returns:
        ``(parent, copied)``: int32 ``(M,)`` with ``parent[m] == m`` where
        replica m keeps its own state, and bool ``(M,)`` ``parent != arange``.
    """
    scores = jnp.asarray(scores, jnp.float32)
    scores = jnp.where(jnp.isfinite(scores), scores, jnp.inf)
    num = scores.shape[0]
    own = jnp.arange(num, dtype=jnp.int32)
    if config.selection == "truncation":
        n = num_truncated(num, config.fraction)
        if n == 0:
            return own, jnp.zeros((num,), bool)
        order = jnp.argsort(scores, stable=True).astype(jnp.int32)  # best first
        rank = jnp.argsort(order).astype(jnp.int32)  # rank[m] of replica m
        donor = order[jax.random.randint(key, (num,), 0, n)]  # a top-n replica
        bottom = rank >= num - n
        parent = jnp.where(bottom, donor, own)
    else:
        if num < 2:
            return own, jnp.zeros((num,), bool)
        # a uniform other replica: shift by 1..M-1
        other = (own + jax.random.randint(key, (num,), 1, num)) % num
        parent = jnp.where(scores[other] < scores, other, own).astype(jnp.int32)
    return parent, parent != own


def sample_prior(key: jax.Array, config: PBTConfig, num: int) -> dict[str, jax.Array]:
    """Draws ``num`` values of every hyperparameter from its prior.

    Returns:
        name -> float32 ``(num,)``.
    """
    values = {}
    for i, (name, prior) in enumerate(zip(config.names, config.priors, strict=True)):
        u = jax.random.uniform(jax.random.fold_in(key, i), (num,), jnp.float32)
        if prior.log:
            lo, hi = math.log(prior.low), math.log(prior.high)
            values[name] = jnp.exp(lo + u * (hi - lo))
        else:
            values[name] = prior.low + u * (prior.high - prior.low)
    return values


def explore(
    key: jax.Array,
    hyperparams: Mapping[str, jax.Array],
    copied: jax.Array,
    config: PBTConfig,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Explore: perturbs or resamples the hyperparameters of replicas that copied.

    Args:
        key: PRNG key.
        hyperparams: name -> ``(M,)`` current values (already the parent's).
        copied: bool ``(M,)``; only these replicas change.
        config: :class:`PBTConfig`.

    Returns:
        ``(new_hyperparams, resampled)``: name -> float32 ``(M,)`` values,
        clipped to the bounds, and name -> bool ``(M,)`` (drawn from the prior).
    """
    num = copied.shape[0]
    factor_key, coin_key, prior_key = jax.random.split(key, 3)
    prior_values = sample_prior(prior_key, config, num)
    factors = jnp.asarray(config.perturb_factors, jnp.float32)
    new, resampled = {}, {}
    for i, (name, (low, high)) in enumerate(
        zip(config.names, config.bounds, strict=True)
    ):
        value = jnp.asarray(hyperparams[name], jnp.float32)
        pick = jax.random.randint(
            jax.random.fold_in(factor_key, i), (num,), 0, len(factors)
        )
        coin = jax.random.uniform(jax.random.fold_in(coin_key, i), (num,))
        redraw = coin < config.resample_probability
        proposal = jnp.where(redraw, prior_values[name], value * factors[pick])
        proposal = jnp.clip(proposal, low, high)
        new[name] = jnp.where(copied, proposal, value)
        resampled[name] = copied & redraw
    return new, resampled


def pbt_step(
    key: jax.Array, state: ReplicaState, scores: jax.Array, config: PBTConfig
) -> tuple[ReplicaState, PBTInfo]:
    """One exploit + explore step on the stacked replicas (pure, jittable).

    Args:
        key: PRNG key.
        state: the stacked replicas.
        scores: ``(M,)`` validation losses (lower is better).
        config: :class:`PBTConfig` from :func:`pbt_config`.

    Returns:
        ``(new_state, info)``. Replicas with ``info.copied[m]`` hold the
        parameters, optimiser state, BatchNorm statistics and dropout rate of
        ``info.parent[m]`` with explored hyperparameters; the others are
        unchanged, bit for bit. ``rungs`` and ``step`` are not touched.
    """
    select_key, explore_key = jax.random.split(key)
    parent, copied = select_parents(select_key, scores, config)

    def gather(tree):
        return jax.tree.map(lambda x: x[parent], tree)

    state = state.replace(
        params=gather(state.params),
        batch_stats=gather(state.batch_stats),
        opt_state=gather(state.opt_state),
        dropout_rate=gather(state.dropout_rate),
    )
    values, resampled = explore(
        explore_key, get_hyperparams(state, config.names), copied, config
    )
    state = set_hyperparams(state, **values)
    return state, PBTInfo(parent, copied, resampled, values)


# ----------------------------------------------------------------------------
# The training driver.
# ----------------------------------------------------------------------------


class PBTRoundInfo(NamedTuple):
    """What one compiled round returns (device arrays)."""

    train_loss: jax.Array  # shape=(M,), mean training loss over the segment
    validation: EvalMetrics  # (M,) loss and accuracy before exploit
    pbt: PBTInfo


class PBTHistory(NamedTuple):
    """Per ready round records (numpy), R rounds, M replicas.

    Segments: the burn-in ``[0, burn_in)`` runs with ``burn_in_hyperparams``;
    segment ``r`` (``r = 0..R``) covers ``[starts[r], starts[r + 1])`` with
    ``starts = (burn_in, step[0], ..., step[R - 1])`` and the last one ending at
    ``num_steps``. Segment 0 runs with ``initial_hyperparams``, segment
    ``r + 1`` with ``hyperparams[·][r]``. Exploit/explore happens after every
    segment except the last.
    """

    step: np.ndarray  # shape=(R,), SGD steps done at the exploit of round r
    train_loss: np.ndarray  # shape=(R, M), mean training loss of the segment
    val_loss: np.ndarray  # shape=(R, M), validation loss before exploit
    val_accuracy: np.ndarray  # shape=(R, M)
    parent: np.ndarray  # shape=(R, M), int; replica m copied parent[r, m]
    copied: np.ndarray  # shape=(R, M), bool
    hyperparams: dict[str, np.ndarray]  # name -> shape=(R, M), after explore
    resampled: dict[str, np.ndarray]  # name -> shape=(R, M), bool
    initial_hyperparams: dict[str, np.ndarray]  # name -> shape=(M,), segment 0
    burn_in_hyperparams: dict[str, np.ndarray]  # name -> shape=(M,), burn-in
    burn_in: int
    num_steps: int


class PBTSummary(NamedTuple):
    """Run summary."""

    num_copies: int  # exploit copies over the run
    best_replica: int  # replica with the lowest final validation loss
    best_val_loss: float
    best_val_accuracy: float
    final_val_loss: np.ndarray  # shape=(M,)
    final_val_accuracy: np.ndarray  # shape=(M,)
    final_hyperparams: dict[str, np.ndarray]  # name -> shape=(M,)


class PBTResult(NamedTuple):
    """What :func:`pbt_train` returns."""

    state: ReplicaState
    history: PBTHistory
    summary: PBTSummary


def _round(
    state: ReplicaState,
    key: jax.Array,
    data_key: jax.Array,
    train_x: jax.Array,
    train_y: jax.Array,
    val_x: jax.Array,
    val_y: jax.Array,
    num_steps: int,
    exploit_enabled: jax.Array,
    *,
    config: PBTConfig,
    batch_size: int,
    shared_batch: bool,
    augment: Callable | None,
    eval_batch_size: int,
) -> tuple[ReplicaState, PBTRoundInfo]:
    segment_key, pbt_key = jax.random.split(key)
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
    state, info = _exploit_explore(
        pbt_key, state, metrics.loss, exploit_enabled, config
    )
    return state, PBTRoundInfo(train_loss, metrics, info)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def _exploit_explore(
    key: jax.Array,
    state: ReplicaState,
    losses: jax.Array,
    exploit_enabled: jax.Array,
    config: PBTConfig,
) -> tuple[ReplicaState, PBTInfo]:
    new_state, info = pbt_step(key, state, losses, config)
    # The identical program serves rounds without exploit (the last segment,
    # the burn-in, replays): every copy is masked out.
    state = jax.tree.map(
        lambda new, old: jnp.where(exploit_enabled, new, old), new_state, state
    )
    own = jnp.arange(state.num_replicas, dtype=jnp.int32)
    info = PBTInfo(
        parent=jnp.where(exploit_enabled, info.parent, own),
        copied=info.copied & exploit_enabled,
        resampled={k: v & exploit_enabled for k, v in info.resampled.items()},
        hyperparams=get_hyperparams(state, config.names),
    )
    return state, info


def _segments(num_steps: int, burn_in: int, interval: int) -> list[int]:
    """Lengths of the segments after the burn-in (the last may be shorter)."""
    full, leftover = divmod(num_steps - burn_in, interval)
    return [interval] * full + ([leftover] if leftover else [])


def _validated_data(state, train_data, validation_data, batch_size):
    train = _as_split(train_data, "train_data")
    validation = _as_split(validation_data, "validation_data")
    num_classes = _num_classes(state, train.inputs) if len(train.inputs) else 0
    _check_split(train, "train_data", num_classes, batch_size)
    _check_split(validation, "validation_data", num_classes, 1)
    return (
        jnp.asarray(train.inputs),
        jnp.asarray(train.labels, jnp.int32),
        jnp.asarray(validation.inputs),
        jnp.asarray(validation.labels, jnp.int32),
    )


def _check_hyperparam_dict(values: Mapping | None, what: str) -> None:
    if values is not None:
        unknown = set(values) - set(HYPERPARAMETERS)
        if unknown:
            raise ValueError(f"{what} has unknown names {sorted(unknown)}")


def pbt_train(
    state: ReplicaState,
    key: jax.Array,
    *,
    config: PBTConfig,
    train_data: Split | tuple,
    validation_data: Split | tuple,
    num_steps: int,
    ready_interval: int,
    burn_in: int = 0,
    batch_size: int = 128,
    shared_batch: bool = True,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    burn_in_hyperparams: dict[str, float] | None = None,
    init_from_prior: bool = False,
    eval_batch_size: int = 1000,
    progress: bool = False,
) -> PBTResult:
    """Trains M replicas by population based training in the PT engine.

    The run is the same program as :func:`tempering.pt_train` with the
    exchange replaced by :func:`pbt_step`: ``burn_in`` steps, then segments of
    ``ready_interval`` fused steps, each followed by a vectorised validation
    and one exploit/explore (not after the last segment), until ``num_steps``.

    Args:
        state: replicas from :func:`tempering.create_replicas`; their current
            hyperparameters (e.g. a ladder's) are the starting population.
        key: PRNG key; the run is a deterministic function of it. The batch
            order is derived from it as in ``pt_train`` (same key, same batches).
        config: :class:`PBTConfig` from :func:`pbt_config`.
        train_data: ``Split`` or ``(inputs, labels)``.
        validation_data: the split whose loss is the PBT score.
        num_steps: total SGD steps per replica, burn-in included.
        ready_interval: SGD steps between exploit/explore steps.
        burn_in: SGD steps before the first segment.
        batch_size: examples per step and replica.
        shared_batch: every replica sees the same batch at each step.
        augment: optional on-device ``augment(key, batch) -> batch``.
        burn_in_hyperparams: hyperparameters of every replica during the
            burn-in, e.g. ``{"learning_rate": 0.1}``.
        init_from_prior: draw the starting hyperparameters in ``config.names``
            from the prior instead of keeping the state's.
        eval_batch_size: chunk size of the vectorised validation.
        progress: show a tqdm progress bar.

    Returns:
        :class:`PBTResult` ``(state, history, summary)``.

    Raises:
        ValueError / TypeError: before anything compiles, for a config that is
            not a :class:`PBTConfig`, non-positive ``ready_interval`` or
            ``num_steps``, ``burn_in >= num_steps``, bad hyperparameter names,
            empty or mismatched data, or labels outside the model's classes.

    Example:
        >>> config = pbt_config({"learning_rate": Prior(1e-3, 0.3, log=True)})
        >>> result = pbt_train(state, jax.random.key(0), config=config,
        ...                    train_data=(x, y), validation_data=(xv, yv),
        ...                    num_steps=2000, ready_interval=100)
        >>> schedule = best_schedule(result.history, result.summary.best_replica)
    """
    if not isinstance(state, ReplicaState):
        raise TypeError("state must be a ReplicaState from tempering.create_replicas")
    if not isinstance(config, PBTConfig):
        raise TypeError(
            "config must be a PBTConfig; build it with tempering.pbt_config"
        )
    num_steps = _check_int(num_steps, "num_steps", 1)
    ready_interval = _check_int(ready_interval, "ready_interval", 1)
    burn_in = _check_int(burn_in, "burn_in", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    eval_batch_size = _check_int(eval_batch_size, "eval_batch_size", 1)
    if burn_in >= num_steps:
        raise ValueError(
            f"burn_in={burn_in} must be smaller than num_steps={num_steps}"
        )
    _check_hyperparam_dict(burn_in_hyperparams, "burn_in_hyperparams")
    train_x, train_y, val_x, val_y = _validated_data(
        state, train_data, validation_data, batch_size
    )
    num_replicas = state.num_replicas
    names = HYPERPARAMETERS

    data_key, key = jax.random.split(key)  # as in pt_train: same key, same batches
    prior_key = jax.random.fold_in(key, 2**30)
    run_round = functools.partial(
        _round,
        data_key=data_key,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        config=config,
        batch_size=batch_size,
        shared_batch=shared_batch,
        augment=augment,
        eval_batch_size=eval_batch_size,
    )
    bar = _progress(num_steps, progress)

    def advance(state, round_key, steps, enabled):
        state, info = run_round(
            state,
            round_key,
            num_steps=int(steps),
            exploit_enabled=jnp.bool_(enabled),
        )
        if bar is not None:
            bar.update(steps)
        return state, info

    state = jax.tree.map(jnp.copy, state)  # the caller's buffers are never donated
    if init_from_prior:
        state = set_hyperparams(state, **sample_prior(prior_key, config, num_replicas))
    start_values = _host(get_hyperparams(state, names))
    burn_values = start_values
    if burn_in > 0:
        if burn_in_hyperparams:
            state = set_hyperparams(state, **burn_in_hyperparams)
            burn_values = _host(get_hyperparams(state, names))
        state, _ = advance(state, jax.random.fold_in(key, 0), burn_in, False)
        state = set_hyperparams(state, **start_values)
    segments = _segments(num_steps, burn_in, ready_interval)
    rounds = []
    for r, steps in enumerate(segments):
        last = r == len(segments) - 1
        state, info = advance(state, jax.random.fold_in(key, r + 1), steps, not last)
        if not last:
            rounds.append(info)
    if bar is not None:
        bar.close()
    final = run_evaluate(state, val_x, val_y, batch_size=eval_batch_size)
    history = _history(
        rounds, start_values, burn_values, burn_in, num_steps, ready_interval, state
    )
    final_loss, final_acc = np.asarray(final.loss), np.asarray(final.accuracy)
    best = int(np.argmin(np.where(np.isfinite(final_loss), final_loss, np.inf)))
    summary = PBTSummary(
        num_copies=int(history.copied.sum()),
        best_replica=best,
        best_val_loss=float(final_loss[best]),
        best_val_accuracy=float(final_acc[best]),
        final_val_loss=final_loss,
        final_val_accuracy=final_acc,
        final_hyperparams=_host(get_hyperparams(state, names)),
    )
    return PBTResult(state, history, summary)


def _host(values: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    return {k: np.asarray(jax.device_get(v)) for k, v in values.items()}


def _history(
    rounds, start_values, burn_values, burn_in, num_steps, interval, state
) -> PBTHistory:
    num_rounds, num = len(rounds), state.num_replicas
    if num_rounds:
        stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *rounds))
        train_loss = np.asarray(stacked.train_loss)
        val_loss = np.asarray(stacked.validation.loss)
        val_acc = np.asarray(stacked.validation.accuracy)
        parent = np.asarray(stacked.pbt.parent)
        copied = np.asarray(stacked.pbt.copied)
        resampled = {k: np.asarray(v) for k, v in stacked.pbt.resampled.items()}
        explored = {k: np.asarray(v) for k, v in stacked.pbt.hyperparams.items()}
    else:
        train_loss = val_loss = val_acc = np.zeros((0, num), np.float32)
        parent = np.zeros((0, num), np.int32)
        copied = np.zeros((0, num), bool)
        resampled, explored = {}, {}
    # Every hyperparameter, explored or not, per round: unexplored ones are
    # copied from the parent along with the weights.
    hyperparams = {}
    for name, start in start_values.items():
        if name in explored:
            hyperparams[name] = explored[name]
            continue
        rows, current = [], start
        for r in range(num_rounds):
            current = current[parent[r]]
            rows.append(current)
        hyperparams[name] = np.stack(rows) if rows else np.zeros((0, num), np.float32)
        resampled[name] = np.zeros((num_rounds, num), bool)
    return PBTHistory(
        step=burn_in + interval * np.arange(1, num_rounds + 1),
        train_loss=train_loss,
        val_loss=val_loss,
        val_accuracy=val_acc,
        parent=parent,
        copied=copied,
        hyperparams=hyperparams,
        resampled=resampled,
        initial_hyperparams=dict(start_values),
        burn_in_hyperparams=dict(burn_values),
        burn_in=int(burn_in),
        num_steps=int(num_steps),
    )


class Schedule(NamedTuple):
    """A piecewise-constant hyperparameter schedule, S pieces.

    Piece ``s`` covers steps ``[starts[s], starts[s + 1])``, the last piece
    ending at ``num_steps``.
    """

    starts: np.ndarray  # shape=(S,), int; first SGD step of each piece
    values: dict[str, np.ndarray]  # name -> shape=(S,), value during each piece
    replicas: np.ndarray  # shape=(S,), int; the ancestor slot that trained it
    num_steps: int


def best_schedule(history: PBTHistory, replica: int) -> Schedule:
    """The hyperparameter schedule that produced final replica ``replica``.

    Follows the lineage backwards: the weights of ``replica`` after round r
    came from ``history.parent[r, replica]``, which trained the segment before
    with its own hyperparameters, and so on back to step 0.

    Args:
        history: a :class:`PBTHistory` from :func:`pbt_train`.
        replica: final replica index, e.g. ``result.summary.best_replica``.

    Returns:
        The :class:`Schedule` (burn-in piece first when ``burn_in > 0``).
    """
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
        pieces.append((r, slot, values_during(r, slot)))
    pieces.reverse()
    starts = [history.burn_in] + [int(s) for s in history.step]
    if history.burn_in > 0:
        burn = {n: float(history.burn_in_hyperparams[n][slot]) for n in names}
        pieces.insert(0, (-1, slot, burn))
        starts.insert(0, 0)
    # merge consecutive pieces with equal values
    out_starts, out_values, out_slots = [], [], []
    for start, (_, s, vals) in zip(starts, pieces, strict=True):
        if out_values and out_values[-1] == vals:
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


class ReplayResult(NamedTuple):
    """What :func:`replay_schedule` returns."""

    state: ReplicaState
    step: np.ndarray  # shape=(S,), SGD steps done at the end of each piece
    val_loss: np.ndarray  # shape=(S, M), validation loss at the end of each piece
    val_accuracy: np.ndarray  # shape=(S, M)


def replay_schedule(
    state: ReplicaState,
    key: jax.Array,
    schedule: Schedule,
    *,
    train_data: Split | tuple,
    validation_data: Split | tuple,
    batch_size: int = 128,
    shared_batch: bool = True,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    eval_batch_size: int = 1000,
) -> ReplayResult:
    """Trains fresh replicas with a fixed piecewise-constant schedule.

    Every replica of ``state`` follows ``schedule`` (all at the same values),
    through the same compiled round as :func:`pbt_train` with exploit masked
    out. With the key of the PBT run the batch order is the same.

    Args:
        state: fresh replicas (any M), e.g. ``create_replicas(new_key, ...)``.
        key: PRNG key.
        schedule: from :func:`best_schedule`.
        train_data: ``Split`` or ``(inputs, labels)``.
        validation_data: evaluated at the end of every piece.
        batch_size: examples per step and replica.
        shared_batch: every replica sees the same batch at each step.
        augment: optional on-device ``augment(key, batch) -> batch``.
        eval_batch_size: chunk size of the vectorised validation.

    Returns:
        :class:`ReplayResult`.
    """
    if not isinstance(state, ReplicaState):
        raise TypeError("state must be a ReplicaState from tempering.create_replicas")
    batch_size = _check_int(batch_size, "batch_size", 1)
    ends = [*schedule.starts[1:].tolist(), schedule.num_steps]
    lengths = [int(e - s) for s, e in zip(schedule.starts.tolist(), ends, strict=True)]
    if not lengths or min(lengths) < 1 or int(schedule.starts[0]) != 0:
        raise ValueError(
            "schedule must start at step 0 with increasing starts below num_steps"
        )
    train_x, train_y, val_x, val_y = _validated_data(
        state, train_data, validation_data, batch_size
    )
    # A config is needed only to build the (masked) program.
    config = pbt_config({"dropout_rate": Prior(0.0, 0.5)})
    data_key, key = jax.random.split(key)
    state = jax.tree.map(jnp.copy, state)
    steps, losses, accs = [], [], []
    for s, length in enumerate(lengths):
        state = set_hyperparams(state, **{n: v[s] for n, v in schedule.values.items()})
        state, info = _round(
            state,
            jax.random.fold_in(key, s),
            data_key,
            train_x,
            train_y,
            val_x,
            val_y,
            length,
            jnp.bool_(False),
            config=config,
            batch_size=batch_size,
            shared_batch=shared_batch,
            augment=augment,
            eval_batch_size=eval_batch_size,
        )
        steps.append(int(state.step))
        losses.append(np.asarray(info.validation.loss))
        accs.append(np.asarray(info.validation.accuracy))
    return ReplayResult(state, np.asarray(steps), np.stack(losses), np.stack(accs))
