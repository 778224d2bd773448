"""M replicas as one stacked pytree, and the fused vectorised training step.

Every per-replica leaf has leading axis M. The learning rate of replica m lives
in ``opt_state.hyperparams["learning_rate"][m]`` (``optax.inject_hyperparams``),
its dropout rate in ``dropout_rate[m]``: hyperparameters live in exactly one
place per replica, and an exchange writes them there from the ladder.

Model contract. Any Flax linen module works whose ``__call__`` takes the batch,
a ``train`` flag and a dropout rate (names configurable), draws dropout masks
from the ``"dropout"`` RNG stream and, optionally, keeps BatchNorm statistics in
the ``"batch_stats"`` collection::

    logits = model.apply(variables, x, train=True, dropout_rate=rate,
                         rngs={"dropout": key}, mutable=["batch_stats"])

The dropout rate may be traced (use :class:`tempering.layers.Dropout`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from tempering.fast import _contains, replica_vmap, resolve_policy
from tempering.ladder import Ladder

__all__ = [
    "EvalMetrics",
    "ReplicaState",
    "StepInfo",
    "assign_rungs",
    "create_replicas",
    "evaluate",
    "replica_train_step",
    "resolve_loop",
    "run_evaluate",
    "run_segment",
    "set_hyperparams",
    "sgd",
    "train_segment",
    "train_step",
]

PyTree = Any
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@struct.dataclass
class ReplicaState:
    """The stacked state of M replicas (a pytree; model and optimiser are static).

    Like ``flax.training.train_state.TrainState``, the model and the optimiser
    are static fields so that ``pt_train(state, ladder, key)`` needs nothing
    else; they are part of the jit cache key, never traced.
    """

    params: PyTree  # leaves shape=(M, ...)
    batch_stats: PyTree  # leaves shape=(M, ...); {} for models without BatchNorm
    opt_state: PyTree  # leaves shape=(M, ...); hyperparams["learning_rate"] (M,) f32
    dropout_rate: jax.Array  # shape=(M,), dtype=float32
    rungs: jax.Array  # shape=(M,), dtype=int32; ladder rung replica m holds
    step: jax.Array  # shape=(), dtype=int32; SGD steps taken
    model: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    train_kwarg: str | None = struct.field(pytree_node=False, default="train")
    dropout_kwarg: str | None = struct.field(pytree_node=False, default="dropout_rate")
    loss_fn: LossFn = struct.field(pytree_node=False, default=cross_entropy)
    # How layers are batched over replicas: "auto" (fastest measured for the
    # backend), "vmap" (plain jax.vmap), "unroll", "map", "patches" or
    # "sequential"; see tempering.fast.
    vectorize: str = struct.field(pytree_node=False, default="auto")
    # Where the loop over steps (and evaluation chunks) runs: "device" (one
    # lax.fori_loop program per segment), "host" (one compiled step per call,
    # dispatched asynchronously) or "auto"; see resolve_loop.
    loop: str = struct.field(pytree_node=False, default="auto")

    @property
    def num_replicas(self) -> int:
        """Number of replicas M."""
        return int(self.rungs.shape[0])

    @property
    def learning_rate(self) -> jax.Array:
        """Per-replica learning rate, shape ``(M,)``."""
        return self.opt_state.hyperparams["learning_rate"]


class StepInfo(NamedTuple):
    """Training metrics of one fused step."""

    loss: jax.Array  # shape=(M,), mean training loss of the batch


class EvalMetrics(NamedTuple):
    """Per-replica evaluation metrics."""

    loss: jax.Array  # shape=(M,), mean loss; +inf where not finite
    accuracy: jax.Array  # shape=(M,), fraction correct


def sgd(
    learning_rate: float = 0.01,
    momentum: float | None = None,
    *,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """SGD (optionally momentum and L2 weight decay) with an injectable lr.

    Args:
        learning_rate: initial learning rate (a ladder overwrites it per replica).
        momentum: momentum coefficient, or None for plain SGD.
        nesterov: use Nesterov momentum.
        weight_decay: L2 coefficient added to the gradient (``wd * params``).

    Returns:
        An ``optax.inject_hyperparams`` transformation whose
        ``hyperparams["learning_rate"]`` is float32.
    """

    def factory(learning_rate):
        parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
        parts.append(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))
        return optax.chain(*parts)

    return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(
        learning_rate=learning_rate
    )


def _model_kwargs(state: ReplicaState, train: bool, rate: jax.Array) -> dict:
    kwargs = {}
    if state.train_kwarg is not None:
        kwargs[state.train_kwarg] = train
    if state.dropout_kwarg is not None:
        kwargs[state.dropout_kwarg] = rate
    return kwargs


def _check_optimizer_state(opt_state: PyTree) -> None:
    hyperparams = getattr(opt_state, "hyperparams", None)
    if not isinstance(hyperparams, dict) or "learning_rate" not in hyperparams:
        raise TypeError(
            "tx must be built with optax.inject_hyperparams and take a "
            "learning_rate, e.g. tempering.sgd(0.01, momentum=0.9) or "
            "optax.inject_hyperparams(optax.sgd, hyperparam_dtype=jnp.float32)"
            "(learning_rate=0.01)"
        )


@functools.partial(
    jax.jit, static_argnames=("model", "tx", "train_kwarg", "dropout_kwarg")
)
def _init_replica(key, sample_input, *, model, tx, train_kwarg, dropout_kwarg):
    """``(params, batch_stats, opt_state)`` of one replica."""
    kwargs = {train_kwarg: False} if train_kwarg is not None else {}
    if dropout_kwarg is not None:
        kwargs[dropout_kwarg] = 0.0
    variables = model.init({"params": key, "dropout": key}, sample_input, **kwargs)
    params = variables["params"]
    return params, variables.get("batch_stats", {}), tx.init(params)


@jax.jit
def _stack(trees: list[PyTree]) -> PyTree:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def create_replicas(
    key: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    sample_input: jax.Array | np.ndarray,
    *,
    ladder: Ladder | None = None,
    num_replicas: int | None = None,
    dropout_rate: float = 0.0,
    same_init: bool = False,
    train_kwarg: str | None = "train",
    dropout_kwarg: str | None = "dropout_rate",
    loss_fn: LossFn = cross_entropy,
    vectorize: str = "auto",
    loop: str = "auto",
) -> ReplicaState:
    """Initialises M replicas by vmapping ``model.init`` and ``tx.init``.

    Args:
        key: PRNG key for the initial weights.
        model: a Flax linen module following the model contract (module doc).
        tx: optimiser from ``optax.inject_hyperparams`` with a ``learning_rate``
            (see :func:`sgd`).
        sample_input: one batch of inputs, shape ``(B, ...)``; only its shape and
            dtype are used.
        ladder: if given, M is its number of rungs and replica m starts on rung m
            with that rung's hyperparameters.
        num_replicas: M when no ladder is given.
        dropout_rate: dropout rate of every replica unless the ladder sets one.
        same_init: if True every replica starts from the same weights; by
            default each draws its own (independent chains).
        train_kwarg: name of the model's train-mode argument, or None.
        dropout_kwarg: name of the model's dropout-rate argument, or None.
        loss_fn: per-example loss ``loss_fn(logits, labels) -> (B,)``.
        vectorize: how the fused step batches layers over replicas (see
            :func:`tempering.fast.replica_vmap`): ``"auto"`` (default; on CPU
            ``"patches"``: convolutions are emitted once per replica instead of
            as one grouped convolution, and those on the shared input batch
            become one patch tensor times all replicas' kernels), ``"vmap"`` (force plain ``jax.vmap``), ``"unroll"``,
            ``"map"``, ``"patches"`` or ``"sequential"``.
        loop: where the drivers (:func:`run_segment`, :func:`run_evaluate`,
            ``pt_train``, ``pbt_train``) loop over steps: ``"device"``,
            ``"host"`` or ``"auto"`` (see :func:`resolve_loop`).

    Returns:
        The stacked :class:`ReplicaState`, step 0.
    """
    if ladder is not None:
        if num_replicas is not None and num_replicas != ladder.num_rungs:
            raise ValueError(
                f"num_replicas={num_replicas} but the ladder has {ladder.num_rungs} "
                "rungs; drop num_replicas or make them equal"
            )
        num_replicas = ladder.num_rungs
    if num_replicas is None or num_replicas < 1:
        raise ValueError("give a ladder or num_replicas >= 1")
    resolve_policy(vectorize)  # fail early on an unknown name
    resolve_loop(loop)
    sample_input = jnp.asarray(sample_input)
    keys = jax.random.split(key, num_replicas)
    if same_init:
        keys = jnp.broadcast_to(keys[:1], keys.shape)
    init = functools.partial(
        _init_replica,
        model=model,
        tx=tx,
        train_kwarg=train_kwarg,
        dropout_kwarg=dropout_kwarg,
    )
    _check_optimizer_state(jax.eval_shape(init, keys[0], sample_input)[2])
    # One replica at a time, not vmapped: init runs once, and XLA compiles the
    # single-replica init (random initialisers) several times faster.
    params, batch_stats, opt_state = _stack([init(k, sample_input) for k in keys])
    state = ReplicaState(
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        dropout_rate=jnp.full((num_replicas,), dropout_rate, jnp.float32),
        rungs=jnp.arange(num_replicas, dtype=jnp.int32),
        step=jnp.zeros((), jnp.int32),
        model=model,
        tx=tx,
        train_kwarg=train_kwarg,
        dropout_kwarg=dropout_kwarg,
        loss_fn=loss_fn,
        vectorize=vectorize,
        loop=loop,
    )
    if ladder is not None:
        state = assign_rungs(state, ladder, state.rungs)
    return state


def set_hyperparams(
    state: ReplicaState,
    *,
    learning_rate: jax.Array | None = None,
    dropout_rate: jax.Array | None = None,
) -> ReplicaState:
    """Writes per-replica hyperparameters (each ``(M,)`` or a scalar) into the state."""
    num = state.num_replicas
    if learning_rate is not None:
        hyperparams = dict(state.opt_state.hyperparams)
        hyperparams["learning_rate"] = jnp.broadcast_to(
            jnp.asarray(learning_rate, jnp.float32), (num,)
        )
        state = state.replace(
            opt_state=state.opt_state._replace(hyperparams=hyperparams)
        )
    if dropout_rate is not None:
        rate = jnp.broadcast_to(jnp.asarray(dropout_rate, jnp.float32), (num,))
        state = state.replace(dropout_rate=rate)
    return state


def assign_rungs(state: ReplicaState, ladder: Ladder, rungs: jax.Array) -> ReplicaState:
    """Gives replica m the hyperparameters of ladder rung ``rungs[m]``.

    Only hyperparameters move; weights, optimiser moments and BatchNorm
    statistics stay with their replica.
    """
    values = {name: v[rungs] for name, v in ladder.values.items()}
    state = set_hyperparams(state, **values)
    return state.replace(rungs=jnp.asarray(rungs, jnp.int32))


def replica_train_step(
    state: ReplicaState,
    params: PyTree,
    batch_stats: PyTree,
    opt_state: PyTree,
    dropout_rate: jax.Array,
    key: jax.Array,
    inputs: jax.Array,
    labels: jax.Array,
) -> tuple[PyTree, PyTree, PyTree, jax.Array]:
    """One SGD step of a single replica (the function the fused step vmaps).

    ``state`` supplies only the static model, optimiser and loss.

    Returns:
        ``(params, batch_stats, opt_state, loss)`` after the step.
    """
    has_batch_stats = bool(jax.tree.leaves(batch_stats))

    def loss_of(p):
        variables = {"params": p}
        if has_batch_stats:
            variables["batch_stats"] = batch_stats
        out = state.model.apply(
            variables,
            inputs,
            rngs={"dropout": key},
            mutable=["batch_stats"] if has_batch_stats else False,
            **_model_kwargs(state, True, dropout_rate),
        )
        logits, updates = out if has_batch_stats else (out, {})
        new_stats = updates.get("batch_stats", batch_stats)
        return state.loss_fn(logits, labels).mean(), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, opt_state = state.tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, new_stats, opt_state, loss


def train_step(
    state: ReplicaState, key: jax.Array, inputs: jax.Array, labels: jax.Array
) -> tuple[ReplicaState, StepInfo]:
    """Advances all M replicas one SGD step, vectorised over replicas.

    Batched with :func:`tempering.fast.replica_vmap` under the state's
    ``vectorize`` policy (plain ``jax.vmap`` when it is ``"vmap"``).

    Args:
        state: the stacked replicas.
        key: PRNG key; split into one dropout key per replica.
        inputs: a batch shared by all replicas ``(B, ...)``, or one batch per
            replica ``(M, B, ...)``.
        labels: ``(B,)`` or ``(M, B)``, matching ``inputs``.

    Returns:
        ``(new_state, info)``.
    """
    shared = labels.ndim == 1
    keys = jax.random.split(key, state.num_replicas)
    step_one = functools.partial(replica_train_step, state)
    in_axes = (0, 0, 0, 0, 0, None if shared else 0, None if shared else 0)
    vmapped = replica_vmap(step_one, in_axes=in_axes, policy=state.vectorize)
    params, batch_stats, opt_state, loss = vmapped(
        state.params,
        state.batch_stats,
        state.opt_state,
        state.dropout_rate,
        keys,
        inputs,
        labels,
    )
    new = state.replace(
        params=params, batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1
    )
    return new, StepInfo(loss=loss)


def _epoch_order(data_key, epoch, num_examples, num_replicas, shared_batch):
    epoch_key = jax.random.fold_in(data_key, epoch)
    if shared_batch:
        return jax.random.permutation(epoch_key, num_examples)[None]
    keys = jax.random.split(epoch_key, num_replicas)
    return jax.vmap(lambda k: jax.random.permutation(k, num_examples))(keys)


def train_segment(
    state: ReplicaState,
    key: jax.Array,
    data_key: jax.Array,
    inputs: jax.Array,
    labels: jax.Array,
    num_steps: jax.Array | int,
    *,
    batch_size: int,
    shared_batch: bool = True,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> tuple[ReplicaState, jax.Array]:
    """Runs ``num_steps`` fused steps on device, batches gathered on device.

    The batch of global step s is fixed by ``(data_key, s)``: epochs are seeded
    permutations of the training set (the last incomplete batch is dropped), so
    a run split into segments sees the same batches as one long run.

    Args:
        state: the stacked replicas.
        key: PRNG key for dropout and augmentation in this segment.
        data_key: PRNG key of the batch order for the whole run.
        inputs: training inputs ``(N, ...)`` on device.
        labels: training labels ``(N,)``.
        num_steps: number of steps; may be traced (one compiled program serves
            every segment length).
        batch_size: examples per step and replica.
        shared_batch: if True all replicas see the same batch each step.
        augment: optional ``augment(key, batch) -> batch``, e.g. crop and flip.

    Returns:
        ``(new_state, mean_train_loss)`` with the per-replica training loss
        averaged over the segment, shape ``(M,)``.
    """
    step_fn = functools.partial(
        _segment_step,
        key=key,
        data_key=data_key,
        inputs=inputs,
        labels=labels,
        batch_size=batch_size,
        shared_batch=shared_batch,
        augment=augment,
    )
    order, zeros = _segment_start(
        state.step, data_key, labels.shape[0], state.num_replicas, batch_size,
        shared_batch,
    )  # fmt: skip
    state, _, loss_sum = jax.lax.fori_loop(0, num_steps, step_fn, (state, order, zeros))
    return state, loss_sum / jnp.maximum(num_steps, 1)


SegmentCarry = tuple[ReplicaState, jax.Array, jax.Array]  # state, order, loss sum


def _segment_start(
    step: jax.Array,
    data_key: jax.Array,
    num_examples: int,
    num_replicas: int,
    batch_size: int,
    shared_batch: bool,
) -> tuple[jax.Array, jax.Array]:
    """The loop carry besides the state before a segment's first step.

    Returns the batch order of the epoch that global step ``step`` falls in and
    a zero per-replica loss sum.
    """
    epoch = step // (num_examples // batch_size)
    order = _epoch_order(data_key, epoch, num_examples, num_replicas, shared_batch)
    return order, jnp.zeros((num_replicas,), jnp.float32)


def _segment_step(
    i: jax.Array,
    carry: SegmentCarry,
    *,
    key: jax.Array,
    data_key: jax.Array,
    inputs: jax.Array,
    labels: jax.Array,
    batch_size: int,
    shared_batch: bool,
    augment: Callable | None,
) -> SegmentCarry:
    """Step ``i`` of a segment: the batch of global step ``state.step``, one step."""
    state, order, loss_sum = carry
    num_examples = labels.shape[0]
    steps_per_epoch = num_examples // batch_size
    epoch, position = state.step // steps_per_epoch, state.step % steps_per_epoch
    order = jax.lax.cond(
        position == 0,
        lambda: _epoch_order(
            data_key, epoch, num_examples, state.num_replicas, shared_batch
        ),
        lambda: order,
    )
    idx = jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size, 1)
    dropout_key, augment_key = jax.random.split(jax.random.fold_in(key, i))
    idx = idx[0] if shared_batch else idx
    batch_x, batch_y = inputs[idx], labels[idx]
    if augment is not None:
        batch_x = (
            augment(augment_key, batch_x)
            if shared_batch
            else jax.vmap(augment)(
                jax.random.split(augment_key, state.num_replicas), batch_x
            )
        )
    state, info = train_step(state, dropout_key, batch_x, batch_y)
    return state, order, loss_sum + info.loss


LOOPS = ("auto", "device", "host")


def resolve_loop(
    loop: str, backend: str | None = None, *, has_convolution: bool = True
) -> str:
    """Where the drivers loop over steps: ``"device"`` or ``"host"``.

    ``"device"`` runs a whole segment as one ``lax.fori_loop`` program (and the
    evaluation chunks as one ``lax.scan``). ``"host"`` compiles one step (one
    chunk) and calls it from Python; the calls are dispatched asynchronously and
    nothing is copied to the host, so the device never waits on Python. ``"auto"``
    is ``"host"`` on CPU for models with convolutions and ``"device"``
    otherwise: XLA:CPU runs convolutions inside a loop body several times slower
    than the same convolutions at the top level of a program (jax-ml/jax#12868;
    measured in ``experiments/benchmark.py``), while for convolution-free models
    the loop program saves the per-step dispatch.

    Args:
        loop: ``"auto"``, ``"device"`` or ``"host"``.
        backend: backend for ``"auto"``; the default backend if None.
        has_convolution: whether the model convolves (for ``"auto"``).

    Returns:
        ``"device"`` or ``"host"``.

    Raises:
        ValueError: for any other value.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop == "auto":
        on_cpu = (backend or jax.default_backend()) == "cpu"
        return "host" if on_cpu and has_convolution else "device"
    return loop


@functools.cache
def _convolves(model: nn.Module, shape: tuple, dtype: Any, kwargs: tuple) -> bool:
    sample = jax.ShapeDtypeStruct((1, *shape), dtype)
    init = functools.partial(model.init, **dict(kwargs))
    jaxpr = jax.make_jaxpr(init)(jax.random.key(0), sample)
    return _contains(jaxpr.jaxpr, frozenset({"conv_general_dilated"}))


def _loop(state: ReplicaState, inputs: jax.Array) -> str:
    """The state's loop for a model fed ``inputs`` (``"auto"`` resolved)."""
    if state.loop != "auto":
        return resolve_loop(state.loop)
    kwargs = tuple(_model_kwargs(state, False, 0.0).items())
    convolves = _convolves(state.model, inputs.shape[1:], inputs.dtype, kwargs)
    return resolve_loop("auto", has_convolution=convolves)


_SEGMENT_STATIC = ("batch_size", "shared_batch", "augment")


@functools.partial(jax.jit, static_argnames=_SEGMENT_STATIC, donate_argnames=("state",))
def _device_segment(state, key, data_key, inputs, labels, num_steps, **static):
    return train_segment(state, key, data_key, inputs, labels, num_steps, **static)


_host_segment_start = jax.jit(_segment_start, static_argnums=(2, 3, 4, 5))
_host_step = jax.jit(
    _segment_step, static_argnames=_SEGMENT_STATIC, donate_argnames=("carry",)
)


def run_segment(
    state: ReplicaState,
    key: jax.Array,
    data_key: jax.Array,
    inputs: jax.Array,
    labels: jax.Array,
    num_steps: int,
    *,
    batch_size: int,
    shared_batch: bool = True,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> tuple[ReplicaState, jax.Array]:
    """:func:`train_segment` from the host, looping where ``state.loop`` says.

    Same batches, dropout keys and result as :func:`train_segment` (up to
    float reassociation); ``state``'s buffers are donated. Not traceable:
    call it from Python, as ``pt_train`` does.

    Args:
        state: the stacked replicas (donated).
        key: PRNG key for dropout and augmentation in this segment.
        data_key: PRNG key of the batch order for the whole run.
        inputs: training inputs ``(N, ...)`` on device.
        labels: training labels ``(N,)``.
        num_steps: number of steps, a Python int.
        batch_size: examples per step and replica.
        shared_batch: if True all replicas see the same batch each step.
        augment: optional ``augment(key, batch) -> batch``.

    Returns:
        ``(new_state, mean_train_loss)``, the loss of shape ``(M,)``.
    """
    static = dict(batch_size=batch_size, shared_batch=shared_batch, augment=augment)
    if _loop(state, inputs) == "device":
        return _device_segment(
            state, key, data_key, inputs, labels, jnp.int32(num_steps), **static
        )
    order, zeros = _host_segment_start(
        state.step, data_key, labels.shape[0], state.num_replicas, batch_size,
        shared_batch,
    )  # fmt: skip
    carry = (state, order, zeros)
    for i in range(num_steps):
        carry = _host_step(
            jnp.int32(i), carry, key=key, data_key=data_key, inputs=inputs,
            labels=labels, **static,
        )  # fmt: skip
    state, _, loss_sum = carry
    return state, loss_sum / max(num_steps, 1)


def evaluate(
    state: ReplicaState,
    inputs: jax.Array,
    labels: jax.Array,
    *,
    batch_size: int = 1000,
) -> EvalMetrics:
    """Mean loss and accuracy of every replica on a dataset, vmapped.

    Runs in eval mode (no dropout, BatchNorm running averages), over chunks of
    ``batch_size`` examples with a mask for the last partial chunk.

    Args:
        state: the stacked replicas.
        inputs: ``(N, ...)``.
        labels: ``(N,)``.
        batch_size: examples per chunk (bounds memory).

    Returns:
        :class:`EvalMetrics` with ``(M,)`` loss (non-finite mapped to +inf) and
        accuracy.
    """
    xs, ys, mask = _chunked(inputs, labels, batch_size)
    zeros = jnp.zeros((state.num_replicas,), jnp.float32)

    def chunk(totals, batch):
        return _add_chunk(state, totals, *batch), None

    (loss_sum, correct_sum), _ = jax.lax.scan(chunk, (zeros, zeros), (xs, ys, mask))
    return _metrics(loss_sum, correct_sum, labels.shape[0])


def _chunked(
    inputs: jax.Array, labels: jax.Array, batch_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pads to whole chunks: ``(C, b, ...)`` inputs, ``(C, b)`` labels and mask."""
    num_examples = labels.shape[0]
    batch_size = min(batch_size, num_examples)
    num_chunks = -(-num_examples // batch_size)
    pad = num_chunks * batch_size - num_examples
    xs = jnp.pad(inputs, [(0, pad)] + [(0, 0)] * (inputs.ndim - 1))
    ys = jnp.pad(labels, (0, pad))
    mask = jnp.arange(num_chunks * batch_size) < num_examples
    xs = xs.reshape(num_chunks, batch_size, *inputs.shape[1:])
    return xs, ys.reshape(num_chunks, batch_size), mask.reshape(num_chunks, batch_size)


def _eval_chunk(
    state: ReplicaState, x: jax.Array, y: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-replica sums of loss and of correct predictions over one chunk."""

    def logits_one(params, batch_stats, x):
        variables = {"params": params}
        if jax.tree.leaves(batch_stats):
            variables["batch_stats"] = batch_stats
        return state.model.apply(variables, x, **_model_kwargs(state, False, 0.0))

    logits = replica_vmap(logits_one, in_axes=(0, 0, None), policy=state.vectorize)(
        state.params, state.batch_stats, x
    )
    losses = jax.vmap(state.loss_fn, in_axes=(0, None))(logits, y)
    correct = jnp.argmax(logits, -1) == y
    loss_sum = jnp.sum(jnp.where(mask, losses, 0.0), axis=1)
    return loss_sum, jnp.sum(mask & correct, axis=1).astype(jnp.float32)


def _metrics(loss_sum: jax.Array, correct_sum: jax.Array, num: int) -> EvalMetrics:
    loss = loss_sum / num
    loss = jnp.where(jnp.isfinite(loss), loss, jnp.inf)
    return EvalMetrics(loss=loss, accuracy=correct_sum / num)


_device_evaluate = jax.jit(evaluate, static_argnames=("batch_size",))
_host_chunked = jax.jit(_chunked, static_argnums=2)


def _add_chunk(state, totals, x, y, mask):
    """``totals`` (loss sum, correct sum) plus one chunk's per-replica sums."""
    sums = _eval_chunk(state, x, y, mask)
    return totals[0] + sums[0], totals[1] + sums[1]


_host_add_chunk = jax.jit(_add_chunk)


def run_evaluate(
    state: ReplicaState,
    inputs: jax.Array,
    labels: jax.Array,
    *,
    batch_size: int = 1000,
) -> EvalMetrics:
    """:func:`evaluate` from the host, looping over chunks where ``state.loop`` says.

    Args:
        state: the stacked replicas (not donated).
        inputs: ``(N, ...)``.
        labels: ``(N,)``.
        batch_size: examples per chunk.

    Returns:
        :class:`EvalMetrics`, as :func:`evaluate`.
    """
    if _loop(state, inputs) == "device":
        return _device_evaluate(state, inputs, labels, batch_size=batch_size)
    xs, ys, mask = _host_chunked(inputs, labels, batch_size)
    zeros = jnp.zeros((state.num_replicas,), jnp.float32)
    totals = (zeros, zeros)
    for index in range(xs.shape[0]):  # one program for every chunk count
        totals = _host_add_chunk(state, totals, xs[index], ys[index], mask[index])
    return _metrics(*totals, labels.shape[0])
