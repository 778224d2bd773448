"""Weight diffusion test (Pushkarov et al. 2019, Fig. 1).

A hyperparameter acts like a temperature when more of it makes the weights
wander faster: M replicas are trained, one per value of the hyperparameter,
with the vectorised engine (:func:`tempering.train` in chunks, one
compiled program for every chunk length), and the distance
``||W(t) - W(t0)||`` (all parameters flattened, L2 norm) is recorded against
time for every replica, beside the norm ``||W(t)||`` (a distance measured
while the norm still shrinks toward the equilibrium that weight decay imposes
records that shrinkage, not a diffusion; choose ``t0`` past it). Dropout rate
and learning rate diffuse faster when larger. The paper claims that L2 weight
decay confines the weights, so that its curves plateau, lower for a larger
coefficient. The library's measurement (``experiments/results/fig1_l2.md``:
Fashion-MNIST, LeNet-5, ``t0`` past equilibration, 3 seeds) finds no plateau:
with weight decay 0.01-0.1 the distance still grows by 39-42% over the second
half of the window (45% without decay), though a larger coefficient does end
lower (0.89, 0.65 and 0.37 against 1.61 without decay).

Any per-replica hyperparameter can be tested (:mod:`tempering.hyperparams`):
L2 weight decay becomes one with an optimiser that injects it, e.g.
:func:`l2_sgd`. The run is :func:`tempering.train` twice: ``t0`` steps, then
one round per record whose move measures the distance.

Example:
    >>> from tempering import diffusion
    >>> tx = diffusion.l2_sgd(0.05)
    >>> state = tp.create_replicas(key, model, tx, x[:1], num_replicas=4)
    >>> result = diffusion.diffusion_test(
    ...     state, key, train_data=(x, y), hyperparameter="weight_decay",
    ...     values=[0.0, 1e-3, 1e-2, 1e-1], num_steps=2000)
    >>> result.distance.shape  # (num_records, 4)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from tempering.config import RunConfig, RunData
from tempering.driver import check_not_traced, train
from tempering.hyperparams import set_hyperparams
from tempering.moves import identity_move
from tempering.state import ReplicaState, as_float_if_int

__all__ = [
    "DiffusionResult",
    "diffusion_test",
    "l2_sgd",
    "record_schedule",
    "set_weight_decay",
    "weight_distance",
    "weight_norm",
]


class _Record(NamedTuple):
    distance: jax.Array  # shape=(M,), ||W - W(t0)||
    norm: jax.Array  # shape=(M,), ||W||


@struct.dataclass
class _Distance:
    """A move that changes nothing and reports ``||W - W(t0)||`` and ``||W||``."""

    reference: Any  # leaves shape=(M, ...): the parameters at t0

    def init(self, state: Any = None) -> None:
        """Nothing to carry: the reference is the move's own."""
        del state

    def step(self, key, state, move_state, scores, round_index):
        """Leaves the replicas as they are; the distances are the info."""
        del key, scores, round_index
        distance = weight_distance(state.params, self.reference)
        return state, move_state, _Record(distance, weight_norm(state.params))


class DiffusionResult(NamedTuple):
    """Distances of M replicas from their weights at t0, T records."""

    steps: np.ndarray  # shape=(T,), SGD steps since t0 at each record
    distance: np.ndarray  # shape=(T, M), ||W(t) - W(t0)|| of replica m
    weight_norm: np.ndarray  # shape=(T, M), ||W(t)||: has it equilibrated?
    initial_norm: np.ndarray  # shape=(M,), ||W(t0)||
    train_loss: np.ndarray  # shape=(T, M), mean training loss of the chunk
    values: np.ndarray  # shape=(M,), hyperparameter value of replica m
    hyperparameter: str  # which hyperparameter the values set


def l2_sgd(
    learning_rate: float = 0.01,
    weight_decay: float = 0.0,
    momentum: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD with L2 weight decay whose coefficient is a per-replica hyperparameter.

    The update is ``-lr * (grad + weight_decay * params)``: the gradient of the
    loss plus ``weight_decay / 2 * ||W||^2``. Both ``learning_rate`` and
    ``weight_decay`` are injected (float32 arrays in
    ``opt_state.hyperparams``), so the engine's exchanges and
    :func:`set_weight_decay` can set them per replica without recompiling.

    Args:
        learning_rate: initial learning rate.
        weight_decay: initial L2 coefficient.
        momentum: momentum coefficient, or None for plain SGD.

    Returns:
        An ``optax.inject_hyperparams`` transformation.
    """

    def factory(learning_rate, weight_decay):
        return optax.chain(
            optax.add_decayed_weights(weight_decay),
            optax.sgd(learning_rate, momentum=momentum),
        )

    return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(
        learning_rate=as_float_if_int(learning_rate),
        weight_decay=as_float_if_int(weight_decay),  # an int would be injected int32
    )


def set_weight_decay(state: ReplicaState, weight_decay: Any) -> ReplicaState:
    """Writes a per-replica L2 coefficient: ``set_hyperparams(state, weight_decay=...)``."""
    return set_hyperparams(state, weight_decay=weight_decay)


def weight_distance(params: Any, reference: Any) -> jax.Array:
    """``||W - W_ref||`` per replica over all parameter leaves.

    Args:
        params: stacked parameters, leaves ``(M, ...)``.
        reference: the same structure and shapes.

    Returns:
        ``(M,)`` float32 L2 distances.
    """
    squares = jax.tree.map(
        lambda a, b: jnp.sum(
            jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)).reshape(
                a.shape[0], -1
            ),
            axis=1,
        ),
        params,
        reference,
    )
    return jnp.sqrt(sum(jax.tree.leaves(squares)))


def weight_norm(params: Any) -> jax.Array:
    """``||W||`` per replica over all parameter leaves, ``(M,)`` float32."""
    return weight_distance(params, jax.tree.map(jnp.zeros_like, params))


def record_schedule(
    num_steps: int, num_records: int, spacing: str = "log"
) -> np.ndarray:
    """Increasing record times in ``[1, num_steps]``, ending at ``num_steps``.

    Args:
        num_steps: last record time.
        num_records: at most this many records (duplicates of a log grid on
            small step counts are dropped).
        spacing: ``"log"`` (diffusion is a power law in time) or ``"linear"``.

    Returns:
        ``(T,)`` int64 array, ``T <= num_records``.

    Raises:
        TypeError: counts that are not ints.
        ValueError: counts below 1, an unknown spacing.
    """
    for name, value in (("num_steps", num_steps), ("num_records", num_records)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(
                f"{name} must be an int >= 1, got {type(value).__name__} {value!r}"
            )
        if value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value}")
    if spacing == "log":
        grid = np.geomspace(1, num_steps, num_records)
    elif spacing == "linear":
        grid = np.linspace(num_steps / num_records, num_steps, num_records)
    else:
        raise ValueError(f"spacing must be 'log' or 'linear', got {spacing!r}")
    steps = np.unique(np.clip(np.round(grid).astype(np.int64), 1, num_steps))
    return steps


def diffusion_test(
    state: ReplicaState,
    key: jax.Array,
    *,
    train_data: Any,
    hyperparameter: str,
    values: Sequence[float] | np.ndarray,
    num_steps: int,
    num_records: int = 20,
    spacing: str = "log",
    t0: int = 0,
    **settings: Any,
) -> DiffusionResult:
    """Trains replica m at ``values[m]`` and records ``||W(t) - W(t0)||``.

    All M replicas train together (vmapped, one fused program per round);
    replica m uses ``values[m]`` of ``hyperparameter`` for the whole run,
    the other hyperparameters as they are in ``state``. With
    ``create_replicas(..., same_init=True)`` every replica starts from the
    same weights, so the curves differ by the hyperparameter alone.

    Args:
        state: M replicas (:func:`tempering.create_replicas`) at step 0; for
            ``"weight_decay"`` the optimiser must inject it (:func:`l2_sgd`).
        key: PRNG key (dropout noise and batch order).
        train_data: ``Split``, ``(inputs, targets)`` or an iterable of batches.
        hyperparameter: any hyperparameter the replicas hold.
        values: M values, one per replica.
        num_steps: SGD steps after t0.
        num_records: number of record times (see :func:`record_schedule`).
        spacing: ``"log"`` or ``"linear"`` record times.
        t0: SGD steps trained (at the same values) before the reference
            weights ``W(t0)`` are taken, to skip the initial transient.
        **settings: other :class:`tempering.RunConfig` fields (``batch_size``,
            ``shared_batch``, ``augment``, ``vectorize``, ``loop``,
            ``callback``); the record times set ``num_steps`` and the rounds.
            A callback sees one record per record time (with ``t0`` > 0 their
            rounds count from 1: round 0 is the t0 phase, not recorded). A
            re-iterable ``train_data`` (a list of batches) starts again at its
            first batch after the t0 phase; arrays continue their batch order.

    Returns:
        :class:`DiffusionResult`.

    Raises:
        ValueError: a hyperparameter the state does not hold, wrong number of
            values, bad counts.
        TypeError: a hyperparameter that is not a name, counts that are not ints.
    """
    check_not_traced(state)
    if not isinstance(hyperparameter, str):
        raise TypeError(
            "hyperparameter must be the name of a hyperparameter the replicas hold "
            f"(one of {sorted(state.hyperparams)}), got {hyperparameter!r}"
        )
    if int(state.step) != 0:
        raise ValueError(
            f"diffusion_test needs replicas at step 0 (t0 counts from there), got "
            f"state.step={int(state.step)}; create fresh ones with create_replicas"
        )
    try:
        values = np.asarray(values, np.float32)
    except (TypeError, ValueError):
        raise TypeError(
            f"values must be numbers, one per replica, got {values!r}"
        ) from None
    if values.shape != (state.num_replicas,):
        raise ValueError(
            f"values must have one entry per replica ({state.num_replicas}), "
            f"got shape {values.shape}"
        )
    if isinstance(t0, bool) or not isinstance(t0, int | np.integer) or t0 < 0:
        raise ValueError(f"t0 must be an int >= 0, got {t0!r}")
    record_steps = record_schedule(num_steps, num_records, spacing)
    state = set_hyperparams(state, **{hyperparameter: values})
    data = RunData(train_data)
    if t0 > 0:  # the t0 phase: no record of the result, so none for a callback
        quiet = {k: v for k, v in settings.items() if k != "callback"}
        burn = RunConfig(num_steps=int(t0), interval=(int(t0),), **quiet)
        state = train(state, key, identity_move(), data, burn).state
    # the burn-in's round end (global steps), then the records'
    ends = (*((int(t0),) if t0 else ()), *(int(t0) + record_steps).tolist())
    initial_norm = np.asarray(weight_norm(state.params))
    config = RunConfig(num_steps=int(record_steps[-1]), interval=ends, **settings)
    distance = _Distance(jax.tree.map(jnp.copy, state.params))
    with warnings.catch_warnings():  # the t0 phase is no call of the user's
        warnings.filterwarnings("ignore", "train_data is a re-iterable")
        result = train(state, key, distance, data, config)
    return DiffusionResult(
        steps=result.history.step - int(t0),  # a callback may stop the run early
        distance=result.history.move.distance,
        weight_norm=result.history.move.norm,
        initial_norm=initial_norm,
        train_loss=result.history.train_loss,
        values=values,
        hyperparameter=hyperparameter,
    )
