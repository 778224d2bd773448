"""Population based training (Jaderberg et al. 2017) in the replica engine.

PBT runs on the same stacked :class:`~tempering.state.ReplicaState` as
parallel tempering: M replicas train with the fused vectorised step, and every
``ready_interval`` SGD steps one pure step ``pbt_step(key, state, scores, config)``

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
  each copy a uniformly drawn member of the top ``ceil(fraction * M)``; every
  diverged replica copies one too, and only finite replicas are copied.
  Equal scores rank in a random order: two replicas that copied one donor
  with the same factor train alike and tie until one of them is replaced;
- ``"tournament"``: binary tournament, every replica draws one other replica
  uniformly and copies it when its score is strictly better; a diverged
  replica that drew another diverged one copies a uniformly drawn finite one.

Where PT moves only O(M) hyperparameters between replicas, PBT moves whole
models: the difference between nonlocal paths and greedy selection.

``pbt_train`` mirrors :func:`tempering.pt_train` (rounds of segment,
validation and exploit/explore, dispatched asynchronously with the state
buffers donated) and records the lineage,
so :func:`tempering.best_schedule` reads out the piecewise-constant hyperparameter
schedule of any final replica and :func:`tempering.replay_schedule` retrains fresh
replicas with it through the same engine.

References:
    Jaderberg et al., "Population Based Training of Neural Networks",
    arXiv:1711.09846 (2017).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tempering import sharding
from tempering.config import (
    Callback,
    RunConfig,
    RunData,
    ScoreFn,
    check_bool,
    config_from,
    require_validation,
)
from tempering.driver import RunResult, best_index, check_not_traced, ranked_last, train
from tempering.hyperparams import (
    INTEGER_HYPERPARAMETERS,
    check_names,
    get_hyperparams,
    set_hyperparams,
)
from tempering.pbt_settings import SELECTIONS, PBTConfig, Prior, pbt_config
from tempering.records import History, brief_repr, final_or_last, metric_of
from tempering.sources import prepare_sources
from tempering.state import MetricsFn, ReplicaState, check_key, default_metrics
from tempering.training import warn_no_move

__all__ = [
    "SELECTIONS",
    "PBTConfig",
    "PBTInfo",
    "PBTMove",
    "PBTResult",
    "PBTSummary",
    "Prior",
    "explore",
    "pbt_config",
    "pbt_move",
    "pbt_step",
    "pbt_summary",
    "pbt_train",
    "sample_prior",
    "select_parents",
]


class PBTInfo(NamedTuple):
    """What one :func:`pbt_step` did."""

    parent: (
        jax.Array
    )  # shape=(M,), dtype=int32; replica m now holds a copy of parent[m]
    copied: jax.Array  # shape=(M,), dtype=bool; parent[m] != m
    # name -> shape=(M,), bool; drawn from the prior (every hyperparameter of
    # the replicas: False for those the config does not explore)
    resampled: dict[str, jax.Array]
    hyperparams: dict[str, jax.Array]  # name -> shape=(M,), float32; after explore

    def per_replica_fields(self) -> tuple[str, ...]:
        """What :mod:`tempering.loggers` writes per replica.

        The hyperparameters after explore are the record's own.
        """
        return ("parent", "copied", "resampled")


def num_truncated(num_replicas: int, fraction: float) -> int:
    """Replicas replaced by truncation selection: ``min(ceil(q M), M // 2)``."""
    return min(math.ceil(fraction * num_replicas - 1e-9), num_replicas // 2)


def select_parents(
    key: jax.Array, scores: jax.Array, config: PBTConfig
) -> tuple[jax.Array, jax.Array]:
    """Exploit: which replica each replica copies (lower score is better).

    Args:
        key: PRNG key.
        scores: ``(M,)`` validation losses; NaN and inf are the worst,
            equal scores rank in a random order.
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
        # Equal scores (an error rate on a small validation set, say) rank in
        # a random order, not by replica index. The tie key is folded from
        # ``key`` so the donors' draw below keeps its bits.
        tie_break = jax.random.permutation(jax.random.fold_in(key, 1), num)
        order = jnp.lexsort((tie_break, scores)).astype(jnp.int32)  # best first
        rank = jnp.argsort(order).astype(jnp.int32)  # rank[m] of replica m
        finite = jnp.isfinite(scores)
        # Donors are finite (of the top n, the finite ones), and every diverged
        # replica copies one, even beyond the bottom n; with none finite, none.
        donors = jnp.clip(jnp.minimum(n, jnp.sum(finite)), 1, n)
        donor = order[jax.random.randint(key, (num,), 0, donors, jnp.int32)]
        bottom = ((rank >= num - n) | ~finite) & jnp.any(finite)
        parent = jnp.where(bottom, donor, own)
    else:
        if num < 2:
            return own, jnp.zeros((num,), bool)
        # a uniform other replica: shift by 1..M-1
        other = (own + jax.random.randint(key, (num,), 1, num, jnp.int32)) % num
        parent = jnp.where(scores[other] < scores, other, own).astype(jnp.int32)
        # A diverged replica that drew another copies a uniform finite one: it
        # is always replaced, as under truncation.
        finite = jnp.isfinite(scores)
        logits = jnp.where(finite, 0.0, -jnp.inf).astype(jnp.float32)
        any_finite = jax.random.categorical(
            jax.random.fold_in(key, 1), logits, shape=(num,)
        )
        stuck = ~finite & ~finite[other] & jnp.any(finite)
        parent = jnp.where(stuck, any_finite.astype(jnp.int32), parent)
    return parent, parent != own


def sample_prior(key: jax.Array, config: PBTConfig, num: int) -> dict[str, jax.Array]:
    """Draws ``num`` values of every hyperparameter from its prior.

    Returns:
        name -> float32 ``(num,)``; whole numbers for ``batch_size`` (the
        nearest to the draw).
    """
    values = {}
    for i, (name, prior) in enumerate(zip(config.names, config.priors, strict=True)):
        u = jax.random.uniform(jax.random.fold_in(key, i), (num,), jnp.float32)
        if prior.log:
            lo, hi = math.log(prior.low), math.log(prior.high)
            value = jnp.exp(lo + u * (hi - lo))
        else:
            value = prior.low + u * (prior.high - prior.low)
        if name in INTEGER_HYPERPARAMETERS:
            value = jnp.clip(jnp.round(value), prior.low, prior.high)
        values[name] = value
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
        A ``batch_size`` stays a whole number: a perturbation rounds away from
        the value (up for a factor above 1, down below), so it moves by at
        least one example.
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
            jax.random.fold_in(factor_key, i), (num,), 0, len(factors), jnp.int32
        )
        coin = jax.random.uniform(jax.random.fold_in(coin_key, i), (num,), jnp.float32)
        redraw = coin < config.resample_probability
        perturbed = value * factors[pick]
        if name in INTEGER_HYPERPARAMETERS:
            perturbed = _whole_away(value, perturbed, factors[pick])
        proposal = jnp.where(redraw, prior_values[name], perturbed)
        proposal = jnp.clip(proposal, low, high)
        new[name] = jnp.where(copied, proposal, value)
        resampled[name] = copied & redraw
    return new, resampled


def _whole_away(value: jax.Array, perturbed: jax.Array, factor: jax.Array):
    """``perturbed`` as a whole number away from ``value`` (ceil up, floor down).

    A product that is a whole number up to float32's rounding is that number
    (``25 * 1.2`` is 30.000002 in float32, whose ceil would be 31), and a
    factor other than 1 moves the value by at least one.
    """
    nearest = jnp.round(perturbed)
    close = jnp.abs(perturbed - nearest) <= 1e-6 * jnp.abs(perturbed)
    perturbed = jnp.where(close, nearest, perturbed)
    up = jnp.maximum(jnp.ceil(perturbed), value + 1)
    down = jnp.minimum(jnp.floor(perturbed), value - 1)
    return jnp.where(factor > 1, up, jnp.where(factor < 1, down, value))


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
        parameters, optimiser state, BatchNorm statistics and hyperparameters
        of ``info.parent[m]``, the explored ones perturbed; the others are
        unchanged, bit for bit. ``step`` is not touched.

    Raises:
        TypeError: a config that is not a :class:`PBTConfig`, a key that is
            not a PRNG key.
        ValueError: scores of the wrong shape, names the state does not hold.
    """
    if not isinstance(config, PBTConfig):
        raise TypeError(
            "config must be a PBTConfig; build it with tempering.pbt_config"
        )
    key = check_key(key, "key")
    if np.shape(scores) != (state.num_replicas,):
        raise ValueError(
            f"scores must have one entry per replica, shape ({state.num_replicas},), "
            f"got shape {np.shape(scores)}"
        )
    check_names(state, config.names, "config")
    select_key, explore_key = jax.random.split(key)
    parent, copied = select_parents(select_key, scores, config)

    def gather(tree):
        return jax.tree.map(lambda x: x[parent], tree)

    state = state.replace(
        params=gather(state.params),
        batch_stats=gather(state.batch_stats),
        opt_state=gather(state.opt_state),
        hyperparams=gather(state.hyperparams),
    )
    values, resampled = explore(
        explore_key, get_hyperparams(state, config.names), copied, config
    )
    state = set_hyperparams(state, **values)
    unexplored = jnp.zeros_like(copied)
    resampled = {n: resampled.get(n, unexplored) for n in state.hyperparams}
    return state, PBTInfo(parent, copied, resampled, values)


@struct.dataclass
class PBTMove:
    """PBT's exploit/explore as a move (build it with :func:`pbt_move`)."""

    config: PBTConfig = struct.field(pytree_node=False)

    @property
    def compares_scores(self) -> bool:
        """Its exploit ranks the replicas by their scores."""
        return True

    def largest_batch_size(self) -> int | None:
        """The upper bound of an explored ``batch_size``, None if not explored.

        :func:`tempering.train` sizes every step's batch to hold it: each
        replica trains on the first ``batch_size`` examples of the batch.
        """
        return _explored_batch_bound(self.config)

    def init(self, state: ReplicaState | None = None) -> None:
        """PBT carries nothing between rounds: the population is the state."""
        del state

    def step(
        self,
        key: jax.Array,
        state: ReplicaState,
        move_state: None,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, None, PBTInfo]:
        """One :func:`pbt_step`."""
        del round_index
        state, info = pbt_step(key, state, scores, self.config)
        return state, move_state, info


def pbt_move(config: PBTConfig) -> PBTMove:
    """PBT's exploit/explore as a move for :func:`tempering.train`."""
    if not isinstance(config, PBTConfig):
        raise TypeError(
            "config must be a PBTConfig; build it with tempering.pbt_config"
        )
    return PBTMove(config)


class PBTSummary(NamedTuple):
    """What one :func:`pbt_train` call found, read on the host.

    Attributes:
        num_copies: exploit copies over the call.
        best_replica: the replica with the lowest final score (validation
            loss by default); never a diverged one.
        best_val_loss: its validation loss.
        final_val_loss: ``(M,)`` validation losses at the end of the call.
        final_val_metrics: name -> ``(M,)`` validation metrics at the end.
        final_hyperparams: name -> ``(M,)`` hyperparameters at the end.
        diverged: ``(M,)`` bool, replicas non-finite at the end.
        interrupted: stopped early by Ctrl-C (after a whole round).
    """

    num_copies: int  # exploit copies over the run
    best_replica: int  # replica with the lowest final score (validation loss)
    best_val_loss: float
    final_val_loss: np.ndarray  # shape=(M,)
    final_val_metrics: dict[str, np.ndarray]  # name -> shape=(M,)
    final_hyperparams: dict[str, np.ndarray]  # name -> shape=(M,)
    diverged: np.ndarray | None = None  # shape=(M,), bool; non-finite at the end
    interrupted: bool = False  # stopped early by Ctrl-C (after a whole round)

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


class PBTResult(NamedTuple):
    """What :func:`pbt_train` returns.

    Attributes:
        state: the replicas at the end of the call.
        history: one record per round (:class:`tempering.History`); its
            ``move`` holds PBT's info: parent, copied, resampled.
        summary: a :class:`PBTSummary`.
    """

    state: ReplicaState
    history: History  # its move info: parent, copied, resampled (PBTInfo)
    summary: PBTSummary


def pbt_train(
    state: ReplicaState,
    key: jax.Array,
    *,
    config: PBTConfig,
    train_data: Any,
    validation_data: Any,
    num_steps: int | None = None,
    ready_interval: int | None = None,
    burn_in: int = 0,
    test_data: Any = None,
    init_from_prior: bool = False,
    exploit_at_end: bool = False,
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
) -> PBTResult:
    """Trains M replicas by population based training in the PT engine.

    :func:`tempering.train` with :func:`pbt_move`: ``burn_in`` steps, then
    segments of ``ready_interval`` fused steps, each followed by a vectorised
    validation and one exploit/explore (not after the last segment of the
    call, unless ``exploit_at_end``).

    Args:
        state: replicas from :func:`tempering.create_replicas`; their current
            hyperparameters (e.g. a ladder's) are the starting population.
        key: PRNG key; the run is a deterministic function of it. The batch
            order is derived from it as in ``pt_train`` (same key, same batches).
        config: :class:`PBTConfig` from :func:`pbt_config`.
        train_data: in-memory ``(inputs, targets)`` or an iterable of batches.
        validation_data: arrays or a re-iterable of batches; its loss is the
            PBT score.
        num_steps: SGD steps this call takes per replica, burn-in included.
        ready_interval: SGD steps between exploit/explore steps.
        burn_in: global steps before the first exploit.
        test_data: optional held-out data evaluated every round (never scored).
        init_from_prior: at step 0, draw the starting hyperparameters in
            ``config.names`` from the prior instead of keeping the state's,
            clipped to the bounds as explore's redraws are.
        exploit_at_end: also exploit/explore when the call's last segment
            ends a round, as a longer run would. Pass True to every call of a
            run split over calls but the last: the split run is then the one
            long run, bit for bit. False (default): the call's final
            population is the one its last segment trained.
        batch_size: examples per step and replica of in-memory data (None:
            128); a stream's batches keep their size (another is an error).
        shared_batch: every replica sees the same batch each step.
        augment: optional on-device ``augment(key, batch) -> batch``.
        burn_in_hyperparams: values every replica uses during the burn-in.
        eval_batch_size: chunk size of the vectorised evaluation.
        metrics_fn: per-example metrics; default accuracy for classification.
        score_fn: ``score_fn(validation: EvalMetrics) -> (M,)``, what the
            exploit ranks (lower is better); default the validation loss.
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
            ``num_steps``, ``interval`` (this function's ``ready_interval``),
            ``burn_in``, ``burn_in_hyperparams``, ``batch_size``,
            ``shared_batch``, ``augment``, ``eval_batch_size``,
            ``metrics_fn``, ``score_fn``, ``vectorize``, ``loop``,
            ``devices``, ``progress``, ``callback``, ``checkpoint_dir``,
            ``checkpoint_every``, ``keep_checkpoints``, ``resume_allowing``
            and ``on_diverge``; its ``move_at_end`` is replaced by
            ``exploit_at_end``, which stays a keyword. The data
            (``train_data``, ``validation_data``, ``test_data``) and PBT's
            settings (``config``, ``init_from_prior``) are not in it: they
            stay keywords.

    Returns:
        :class:`PBTResult` ``(state, history, summary)``.

    Raises:
        ValueError / TypeError: before any training or evaluation program compiles,
            for fewer than 2 replicas, a config that is not a :class:`PBTConfig` or
            names hyperparameters the state does not hold, bad intervals, data or
            settings.

    Example:
        >>> config = pbt_config({"learning_rate": Prior(1e-3, 0.3, log=True)})
        >>> result = pbt_train(state, jax.random.key(0), config=config,
        ...                    train_data=(x, y), validation_data=(xv, yv),
        ...                    num_steps=2000, ready_interval=100)
        >>> schedule = tempering.best_schedule(result.history, result.summary.best_replica)
    """
    check_not_traced(state)
    move = pbt_move(config)
    if state.num_replicas < 2:
        raise ValueError(
            f"pbt_train needs at least 2 replicas, got M = {state.num_replicas}: PBT "
            "copies the weights of better replicas into worse ones, so one replica "
            "has nothing to exploit. Create more (create_replicas(..., "
            "num_replicas=M) with M >= 2), or train one replica with tempering.train "
            "and identity_move()"
        )
    check_names(state, config.names, "config")
    require_validation(validation_data, "pbt_train", "is the PBT score")
    settings = config_from(
        run_config, "pbt_train", "ready_interval", num_steps, ready_interval,
        burn_in=burn_in, batch_size=batch_size, shared_batch=shared_batch,
        augment=augment, burn_in_hyperparams=burn_in_hyperparams,
        eval_batch_size=eval_batch_size, metrics_fn=metrics_fn, score_fn=score_fn,
        callback=callback, vectorize=vectorize, loop=loop, progress=progress,
        devices=devices, on_diverge=on_diverge, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
        resume_allowing=resume_allowing,
    )  # fmt: skip
    settings = settings.replace(
        move_at_end=check_bool(exploit_at_end, "exploit_at_end")
    )
    data = RunData(train_data, validation_data, test_data)
    if check_bool(init_from_prior, "init_from_prior") and int(state.step) == 0:
        # The draw compiles: the key and data are checked first, as train would.
        key = check_key(key, "key")
        prepare_sources(state, data, settings)
        # A stream of its own: train's round keys are fold_in(key', r), r < 2**30.
        prior_key = jax.random.fold_in(jax.random.split(key)[1], 2**30)
        values = sample_prior(prior_key, config, state.num_replicas)
        state = set_hyperparams(state, **{
            name: jnp.clip(values[name], low, high)
            for name, (low, high) in zip(config.names, config.bounds, strict=True)
        })  # fmt: skip
    settings = _batch_for_explored_sizes(settings, config, state)
    warn_no_move(
        state, settings, "exploit", "ready_interval", "independent training",
        at_end="exploit_at_end=True",
    )  # fmt: skip
    run = train(state, key, move, data, settings)
    return PBTResult(run.state, run.history, pbt_summary(run))


def _explored_batch_bound(config: PBTConfig) -> int | None:
    """The upper bound of ``batch_size`` in ``config``, None if it is not explored."""
    if "batch_size" not in config.names:
        return None
    return int(config.bounds[config.names.index("batch_size")][1])


def _batch_for_explored_sizes(
    settings: RunConfig, config: PBTConfig, state: ReplicaState
) -> RunConfig:
    """Every step's batch holds the largest ``batch_size`` explore can reach.

    Each replica trains on the first ``batch_size`` examples of the step's
    batch, so the batch must hold the upper bound of an explored
    ``batch_size`` (and the state's largest), or larger sizes would be cut
    to it unseen.
    """
    high = _explored_batch_bound(config)
    if high is None:
        return settings
    sizes = np.append(sharding.to_host(state.hyperparams["batch_size"]), high)
    if settings.batch_size is not None and settings.batch_size < high:
        raise ValueError(
            f"batch_size={settings.batch_size} is smaller than {high}, the upper "
            "bound of the batch_size that config explores: every step's batch "
            "holds the largest size a replica can reach. Give "
            f"batch_size={int(np.max(sizes))} (or None, which means it), or "
            f"explore below it: pbt_config(..., bounds={{'batch_size': (low, "
            f"{settings.batch_size})}})"
        )
    return settings.for_batch_sizes(sizes)


def pbt_summary(run: RunResult) -> PBTSummary:
    """The summary of a PBT call, from its :class:`~tempering.driver.RunResult`."""
    final, final_score = final_or_last(
        run.final, run.final_score, run.history, run.state.num_replicas
    )
    best = best_index(final_score, ranked_last(run))
    return PBTSummary(
        num_copies=int(run.history.copied.sum()),
        best_replica=best,
        best_val_loss=float(final.loss[best]),
        final_val_loss=final.loss,
        final_val_metrics=final.metrics,
        final_hyperparams=sharding.to_host(get_hyperparams(run.state)),
        diverged=run.diverged,
        interrupted=run.interrupted,
    )
