"""The fused vectorised training step and the vectorised evaluation of M replicas.

:func:`train_step` is one SGD step of every replica in one program (each
replica's own batch, dropout key and hyperparameters; the layers batched over
replicas by :func:`tempering.fast.replica_vmap`); :func:`evaluate` runs every
replica over a dataset in chunks. Both are pure and jit-able.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tempering import sharding
from tempering.batches import _is_array, check_labels
from tempering.fast import replica_vmap
from tempering.frontends import takes_batch_mask
from tempering.hyperparams import (
    write_injected,
)
from tempering.layers import is_static_zero
from tempering.state import (
    EvalMetrics,
    MetricsFn,
    PyTree,
    ReplicaState,
    StepInfo,
    check_key,
    check_state,
    cross_entropy,
    default_metrics,
    eval_outputs,
    model_hyperparams,
)

__all__ = [
    "Totals",
    "add_chunk",
    "check_model_takes",
    "chunked",
    "evaluate",
    "metrics_from_totals",
    "replica_outputs",
    "replica_train_step",
    "train_step",
    "zero_model_inputs",
    "zero_totals",
]


def _per_example(losses: jax.Array) -> jax.Array:
    """``(B, ...)`` losses averaged over all but the first axis."""
    return (
        losses.reshape(losses.shape[0], -1).mean(axis=1) if losses.ndim > 1 else losses
    )


def replica_train_step(
    state: ReplicaState,
    params: PyTree,
    batch_stats: PyTree,
    opt_state: PyTree,
    hyperparams: Mapping[str, jax.Array],
    key: jax.Array,
    inputs: jax.Array,
    targets: jax.Array,
    *,
    zero_inputs: tuple[str, ...] = (),
) -> tuple[PyTree, PyTree, PyTree, jax.Array]:
    """One step of a single replica (the function the fused step vmaps).

    With a ``batch_size`` hyperparameter the replica trains on the first
    ``batch_size`` examples of the batch only: the loss is their mean, and a
    model that takes ``batch_mask`` gets the mask (for BatchNorm statistics).
    The model inputs named in ``zero_inputs`` (:func:`zero_model_inputs`)
    reach the model as the Python number 0 instead of their traced value.
    """
    model_inputs = model_hyperparams(state, hyperparams)
    model_inputs.update(dict.fromkeys(zero_inputs, 0.0))
    weights = None
    if "batch_size" in hyperparams:
        size = jax.tree.leaves(targets)[0].shape[0]
        kept = jnp.arange(size, dtype=jnp.float32) < hyperparams["batch_size"]
        weights = kept.astype(jnp.float32)
        if takes_batch_mask(state.model):  # as create_replicas accepted it
            model_inputs = {**model_inputs, "batch_mask": kept}

    def loss_of(p):
        outputs, new_stats = state.model.apply(
            p, batch_stats, inputs, train=True, key=key, inputs=model_inputs
        )
        losses = _per_example(state.loss_fn(outputs, targets))
        if weights is None:
            return losses.mean(), new_stats
        kept = jnp.where(weights > 0, losses, 0.0)  # an inf beyond stays out
        return jnp.sum(kept) / jnp.sum(weights), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    opt_state = write_injected(opt_state, hyperparams)
    updates, opt_state = state.tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, new_stats, opt_state, loss.astype(jnp.float32)


def zero_model_inputs(state: ReplicaState) -> tuple[str, ...]:
    """The model inputs that every replica holds at 0, the model's own default.

    Such an input can reach the model as the Python number 0, the value its
    signature defaults to, so the model was written to take it, and a layer
    that tests for it is skipped (a dropout of rate 0 draws no mask: a
    learning-rate ladder on a model with a ``dropout_rate`` keyword pays
    nothing for it). The values are read to the host (gathered from every
    process), so the drivers call this once per segment, where a move or the
    burn-in may have changed them.

    Args:
        state: the stacked replicas.

    Returns:
        The sorted names, for :func:`train_step`'s ``zero_inputs``.
    """
    _, _, defaults = state.model.keywords()
    names = [name for name in state.model_inputs if is_static_zero(defaults.get(name))]
    if not names:
        return ()
    values = sharding.to_host({name: state.hyperparams[name] for name in names})
    return tuple(sorted(name for name in names if not np.any(values[name])))


def train_step(
    state: ReplicaState,
    key: jax.Array,
    inputs: jax.Array | np.ndarray,
    targets: jax.Array | np.ndarray,
    *,
    per_replica_batch: bool = False,
    vectorize: str = "auto",
    zero_inputs: tuple[str, ...] = (),
) -> tuple[ReplicaState, StepInfo]:
    """Advances all M replicas one step, vectorised over replicas (pure, jit-able).

    Args:
        state: the stacked replicas.
        key: PRNG key; split into one dropout key per replica.
        inputs: a batch shared by all replicas ``(B, ...)``, or with
            ``per_replica_batch`` one batch per replica ``(M, B, ...)``.
        targets: ``(B, ...)`` or ``(M, B, ...)``, matching ``inputs``.
        per_replica_batch: whether inputs and targets carry a replica axis.
        vectorize: how layers are batched over replicas
            (:func:`tempering.fast.replica_vmap`): ``"auto"``, ``"vmap"``,
            ``"unroll"``, ``"map"``, ``"patches"``, ``"sequential"`` or another
            policy of :data:`tempering.fast.POLICIES`.
        zero_inputs: model inputs (names, or one name) that every replica
            holds at 0, passed to the model as the Python number 0 (static
            under jit) so that the layers they drive are skipped: a dropout of
            rate 0 draws no mask. The training drivers find them
            (:func:`zero_model_inputs`); a name listed here replaces the
            replicas' values with 0.

    Returns:
        ``(new_state, info)``.

    Raises:
        TypeError: a key that is not a PRNG key, ``per_replica_batch`` not a
            bool.
        ValueError: inputs and targets of different lengths, a missing replica
            axis with ``per_replica_batch``, inputs the model cannot take, a
            name in ``zero_inputs`` that is not one of the model inputs, a
            ``batch_size`` hyperparameter above the batch's examples (read
            where concrete; under ``jax.jit`` such a size trains on the whole
            batch), an empty batch; for the default cross-entropy, labels
            given as numpy arrays that are no class indices of the model's
            outputs (as :func:`evaluate` checks them; device arrays are not
            read, nor traced ones: a label out of range gives a NaN loss).
    """
    check_state(state, "train_step")
    key = check_key(key, "key")
    batch_axis = _check_batch_axes(state, inputs, targets, per_replica_batch)
    _check_batch_sizes(state, targets, batch_axis)
    _check_concrete_labels(state, inputs, targets, batch_axis)
    if isinstance(zero_inputs, str):
        zero_inputs = (zero_inputs,)
    unknown = sorted(set(zero_inputs) - set(state.model_inputs))
    if unknown:
        raise ValueError(
            f"zero_inputs {unknown} are not model inputs of the state (it has "
            f"{list(state.model_inputs)}); pass names from state.model_inputs"
        )
    keys = jax.random.split(key, state.num_replicas)
    step_one = functools.partial(
        replica_train_step, state, zero_inputs=tuple(zero_inputs)
    )
    data_axis = 0 if per_replica_batch else None
    in_axes = (0, 0, 0, 0, 0, data_axis, data_axis)
    vmapped = replica_vmap(step_one, in_axes=in_axes, policy=vectorize)
    try:
        params, batch_stats, opt_state, loss = vmapped(
            state.params,
            state.batch_stats,
            state.opt_state,
            state.hyperparams,
            keys,
            inputs,
            targets,
        )
    except Exception:
        # Only on failure: say so when the model cannot take these inputs.
        check_model_takes(state, inputs, "inputs", batch_axis)
        raise
    new = state.replace(
        params=params, batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1
    )
    return new, StepInfo(loss=loss)


def _check_concrete_labels(
    state: ReplicaState, inputs: Any, targets: Any, axis: int
) -> None:
    """Labels checked as :func:`evaluate` checks them, where they are concrete.

    Under ``jax.jit`` (traced targets) nothing is read: out-of-range labels
    give a NaN loss there.
    """
    if inputs is None or targets is None:
        raise TypeError(
            f"inputs and targets must be arrays, got {type(inputs).__name__} and "
            f"{type(targets).__name__}"
        )
    shape = getattr(targets, "shape", None)
    if shape is None or isinstance(targets, jax.core.Tracer):
        return
    if shape[axis] == 0:
        raise ValueError(f"the batch holds no examples (targets of shape {shape})")
    # Host labels only: reading device ones would wait for the steps before.
    if state.loss_fn is cross_entropy and isinstance(targets, np.ndarray):
        outputs = _output_shape(state, inputs, axis)
        if outputs is not None:
            labels = np.reshape(targets, (-1, *shape[axis + 1 :]))
            check_labels(labels, outputs, "targets:")


# The model's output shape per (model, replica shapes, input shape): an eager
# train_step checks its labels without tracing the model a second time.
_OUTPUT_SHAPES: dict[Any, Any] = {}


def _output_shape(state: ReplicaState, inputs: Any, axis: int) -> Any:
    """:func:`check_model_takes`' result for concrete array ``inputs``, cached."""
    if not hasattr(inputs, "shape") or isinstance(inputs, jax.core.Tracer):
        return None
    leaves, structure = jax.tree.flatten(
        (state.params, state.batch_stats, state.hyperparams)
    )
    key = (
        state.model, state.model_inputs, structure,
        tuple((leaf.shape[1:], str(leaf.dtype)) for leaf in leaves),
        tuple(inputs.shape[axis + 1 :]), str(inputs.dtype),
    )  # fmt: skip
    if key not in _OUTPUT_SHAPES:
        if len(_OUTPUT_SHAPES) >= 64:
            _OUTPUT_SHAPES.clear()
        _OUTPUT_SHAPES[key] = check_model_takes(state, inputs, "inputs", axis)
    return _OUTPUT_SHAPES[key]


def _check_batch_sizes(state: ReplicaState, targets: Any, axis: int) -> None:
    """A ValueError where a replica's concrete ``batch_size`` exceeds the batch."""
    sizes = state.hyperparams.get("batch_size")
    shape = getattr(targets, "shape", None)
    if (
        sizes is None
        or shape is None
        or isinstance(sizes, jax.core.Tracer)
        or (isinstance(sizes, jax.Array) and not sizes.is_fully_addressable)
    ):
        return
    examples = shape[axis]
    largest = float(np.max(np.asarray(sizes)))
    if largest > examples:
        raise ValueError(
            f"the replicas' batch_size hyperparameter reaches {largest:g}, but the "
            f"batch holds {examples} examples: give batches of at least "
            f"{largest:g} examples (each replica trains on its first batch_size), "
            "or lower the sizes"
        )


def _check_batch_axes(
    state: ReplicaState, inputs: Any, targets: Any, per_replica_batch: bool
) -> int:
    """Checks a training batch's leading axes; returns its batch axis (0, or 1)."""
    if not isinstance(per_replica_batch, bool | np.bool_):
        raise TypeError(
            f"per_replica_batch must be True or False, got {per_replica_batch!r}"
        )
    axis = 1 if per_replica_batch else 0
    shapes: dict[str, Any] = {"inputs": getattr(inputs, "shape", None)}
    shapes["targets"] = getattr(targets, "shape", None)
    if None in shapes.values():
        return axis  # a pytree of inputs: the model and the loss check it
    for name, shape in shapes.items():
        if len(shape) <= axis:
            raise ValueError(
                f"{name} must have a batch axis, shape "
                f"{'(M, B, ...)' if axis else '(B, ...)'}, got shape {shape}"
            )
        if per_replica_batch and shape[0] != state.num_replicas:
            raise ValueError(
                f"with per_replica_batch=True, {name} must have one batch per "
                f"replica, shape ({state.num_replicas}, B, ...), got shape {shape}; "
                "pass per_replica_batch=False for a batch shared by every replica"
            )
    if shapes["inputs"][axis] != shapes["targets"][axis]:
        raise ValueError(
            f"inputs and targets must hold the same number of examples, got "
            f"inputs of shape {shapes['inputs']} and targets of shape "
            f"{shapes['targets']}"
        )
    return axis


def check_model_takes(state: ReplicaState, inputs: Any, name: str, axis: int) -> Any:
    """The model's output shape for one example of ``inputs``, else a ValueError.

    Axis ``axis`` of ``inputs`` is the batch; the error says how to fix it.
    """
    one_replica = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype),
        (state.params, state.batch_stats, state.hyperparams),
    )
    example = tuple(np.shape(inputs)[axis + 1 :])
    try:
        dtype = jnp.result_type(inputs)
    except TypeError:
        raise TypeError(
            f"{name} must be numeric arrays, got inputs of dtype "
            f"{np.asarray(inputs).dtype}"
        ) from None
    x = jax.ShapeDtypeStruct((1, *example), dtype)
    try:
        return jax.eval_shape(functools.partial(eval_outputs, state), *one_replica, x)
    except Exception as error:  # noqa: BLE001 - re-raised with the fix
        raise ValueError(
            f"{name}: the model cannot take inputs of shape {example} per example "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); give "
            "inputs shaped like the sample_input of create_replicas, or, if they "
            "are the shape you meant, create the replicas from a sample_input "
            "with its leading batch axis (x[:2], not x[0]: the model was built "
            "for other inputs)"
        ) from error


def per_example_shapes(
    state: ReplicaState, outputs: Any, targets: Any, metrics_fn: Any
) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
    """The shapes ``loss_fn`` and ``metrics_fn`` give for two examples.

    Traced on two (on one, a mean would pass for a per-example value); any
    error of the user's functions propagates.

    Args:
        state: the replicas (their ``loss_fn``).
        outputs: the model's output for one example, shape ``(1, ...)``.
        targets: one example's targets, shape ``(1, ...)`` (shapes and dtypes
            only).
        metrics_fn: the run's ``metrics_fn``, or None.

    Returns:
        The loss's shape and each metric's.
    """
    two = [
        jax.ShapeDtypeStruct((2, *np.shape(a)[1:]), a.dtype) for a in (outputs, targets)
    ]
    loss = jax.eval_shape(state.loss_fn, *two)
    metrics = {} if metrics_fn is None else dict(jax.eval_shape(metrics_fn, *two))
    return tuple(np.shape(loss)), {k: tuple(np.shape(v)) for k, v in metrics.items()}


def check_per_example(
    shapes: tuple[tuple[int, ...], dict[str, tuple[int, ...]]], name: str
) -> None:
    """A ValueError unless :func:`per_example_shapes` are one value per example.

    Args:
        shapes: what :func:`per_example_shapes` returned.
        name: the data they were traced on, for the message.
    """
    loss, metrics = shapes
    if not loss or loss[0] != 2:
        raise ValueError(
            f"{name}: loss_fn must return one loss per example, shape (B,) (or "
            f"(B, ...), averaged per example), got shape {loss} for B = 2 "
            "examples: return the losses before their mean, e.g. "
            "optax.softmax_cross_entropy_with_integer_labels(outputs, targets) "
            "without .mean()"
        )
    if "loss" in metrics:
        raise ValueError(
            f"{name}: metrics_fn returns a metric named 'loss', the name of "
            "loss_fn's loss in the records and logs, which it would shadow: "
            "name it otherwise (e.g. 'zero_one_loss')"
        )
    wrong = {k: v for k, v in metrics.items() if v != (2,)}
    if wrong:
        raise ValueError(
            f"{name}: metrics_fn must return one value per example for every "
            f"metric, shape (B,), got shapes {wrong} for B = 2 examples: return "
            "per-example values (e.g. outputs.argmax(-1) == targets, without "
            ".mean()); the library averages them over the dataset"
        )


def evaluate(
    state: ReplicaState,
    inputs: Any,
    targets: jax.Array | np.ndarray | None = None,
    *,
    batch_size: int = 1000,
    metrics_fn: MetricsFn | None = default_metrics,
    vectorize: str = "auto",
) -> EvalMetrics:
    """Mean loss and metrics of every replica on a dataset (pure, jit-able).

    Runs in eval mode (no dropout, BatchNorm running averages), over chunks of
    ``batch_size`` examples with a mask for the last partial chunk. One
    program, compiled at the first call for these shapes and settings (a
    ``metrics_fn`` that cannot be hashed is run op by op instead).

    Args:
        state: the stacked replicas.
        inputs: ``(N, ...)``; or, without ``targets``, an ``(inputs,
            targets)`` pair such as a :class:`tempering.data.Split`
            (``evaluate(state, data.test)``).
        targets: ``(N, ...)``.
        batch_size: examples per chunk (bounds memory).
        metrics_fn: ``metrics_fn(outputs, targets) -> {name: (B,)}`` per-example
            metrics, averaged over the dataset; default accuracy for
            classification (:func:`default_metrics`), None for none.
        vectorize: see :func:`train_step`.

    Returns:
        :class:`EvalMetrics` with ``(M,)`` loss (non-finite mapped to +inf) and
        metrics.

    Raises:
        TypeError: no ``targets`` and ``inputs`` no ``(inputs, targets)``
            pair, a batch size that is not an int, targets the loss or the
            metrics cannot take (e.g. float labels for cross entropy).
        ValueError: no examples, a batch size < 1, inputs and targets of
            different lengths, inputs the model cannot take, class indices
            outside the model's outputs for the default cross-entropy (checked
            where the targets are not traced).
    """
    check_state(state, "evaluate")
    inputs, targets = _inputs_and_targets(inputs, targets)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(
            f"batch_size must be an int >= 1, got {type(batch_size).__name__} "
            f"{batch_size!r}"
        )
    inputs, targets = (x if _is_array(x) else np.asarray(x) for x in (inputs, targets))
    _check_batch_axes(state, inputs, targets, False)
    _check_chunks(targets.shape[0], batch_size)
    outputs = check_model_takes(state, inputs, "inputs", 0)
    if state.loss_fn is cross_entropy and not isinstance(targets, jax.core.Tracer):
        check_labels(targets, outputs, "targets:")
    one = jax.ShapeDtypeStruct((1, *np.shape(targets)[1:]), jnp.result_type(targets))
    try:
        shapes = per_example_shapes(state, outputs, one, metrics_fn)
    except Exception as error:  # noqa: BLE001 - re-raised with the fix
        kind = TypeError if isinstance(error, TypeError) else ValueError
        raise kind(
            f"targets: loss_fn or metrics_fn cannot take targets of shape "
            f"{tuple(np.shape(targets)[1:])} and dtype {jnp.result_type(targets)} "
            f"per example ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); integer labels for the default "
            "cross-entropy, or pass loss_fn= to create_replicas"
        ) from error
    check_per_example(shapes, "evaluate")
    run: Any = _jitted_evaluate_arrays
    try:
        hash(metrics_fn)
    except TypeError:  # static arguments of a jit are hashed: evaluated op by op
        run = _evaluate_arrays
    return run(
        state, inputs, targets,
        batch_size=int(batch_size), metrics_fn=metrics_fn, vectorize=vectorize,
    )  # fmt: skip


def _evaluate_arrays(
    state: ReplicaState,
    inputs: jax.Array | np.ndarray,
    targets: jax.Array | np.ndarray,
    *,
    batch_size: int,
    metrics_fn: MetricsFn | None,
    vectorize: str,
) -> EvalMetrics:
    """:func:`evaluate` past its checks: one program, compiled once per shapes."""
    totals = zero_totals(state, inputs, targets, metrics_fn)
    xs, ys, mask = chunked(inputs, targets, batch_size)

    def chunk(totals, batch):
        return add_chunk(
            state, totals, *batch, metrics_fn=metrics_fn, vectorize=vectorize
        ), None

    totals, _ = jax.lax.scan(chunk, totals, (xs, ys, mask))
    return metrics_from_totals(totals, targets.shape[0])


# Called op by op, the scan would be compiled again at every call (its body is
# traced anew).
_jitted_evaluate_arrays = jax.jit(
    _evaluate_arrays, static_argnames=("batch_size", "metrics_fn", "vectorize")
)


def _inputs_and_targets(inputs: Any, targets: Any) -> tuple[Any, Any]:
    """``evaluate``'s data: both given, or an ``(inputs, targets)`` pair as ``inputs``."""
    if targets is not None:
        return inputs, targets
    if isinstance(inputs, tuple) and len(inputs) == 2:  # a Split, or (x, y)
        return inputs
    raise TypeError(
        "evaluate needs targets: evaluate(state, inputs, targets), or an "
        "(inputs, targets) pair such as a tempering.data.Split: "
        "evaluate(state, data.test)"
    )


def _check_chunks(num_examples: int, batch_size: int) -> None:
    if num_examples == 0 or batch_size < 1:
        raise ValueError(
            f"evaluate needs examples and batch_size >= 1, got {num_examples} "
            f"examples and batch_size={batch_size}"
        )


def chunked(
    inputs: jax.Array | np.ndarray, targets: jax.Array | np.ndarray, batch_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pads to whole chunks: ``(C, b, ...)`` inputs and targets, ``(C, b)`` mask."""
    num_examples = targets.shape[0]
    _check_chunks(num_examples, batch_size)
    batch_size = min(batch_size, num_examples)
    num_chunks = -(-num_examples // batch_size)
    pad = num_chunks * batch_size - num_examples

    def padded(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(num_chunks, batch_size, *a.shape[1:])

    mask = jnp.arange(num_chunks * batch_size) < num_examples
    return padded(inputs), padded(targets), mask.reshape(num_chunks, batch_size)


Totals = tuple[jax.Array, dict[str, jax.Array]]  # (M,) loss sum, name -> (M,) sums


def _eval_chunk(
    state: ReplicaState,
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array,
    metrics_fn: MetricsFn | None,
    vectorize: str,
) -> Totals:
    """Per-replica sums of the loss and of every metric over one chunk."""
    outputs = replica_outputs(state, x, vectorize)
    losses = jax.vmap(lambda o: _per_example(state.loss_fn(o, y)))(outputs)
    # summed in float32 whatever the model's dtype (a bf16 sum would round
    # every chunk's total: the loss would depend on the chunk size)
    losses = losses.astype(jnp.float32)
    loss_sum = jnp.sum(jnp.where(mask, losses, 0.0), axis=1)
    metrics = {}
    if metrics_fn is not None:
        per_example = jax.vmap(lambda o: dict(metrics_fn(o, y)))(outputs)
        metrics = {
            name: jnp.sum(jnp.where(mask, v.astype(jnp.float32), 0.0), axis=1)
            for name, v in per_example.items()
        }
    return loss_sum, metrics


def replica_outputs(state: ReplicaState, x: jax.Array, vectorize: str = "auto"):
    """Every replica's outputs on one batch ``x`` in eval mode: ``(M, B, ...)``."""
    outputs_one = functools.partial(eval_outputs, state)
    return replica_vmap(outputs_one, in_axes=(0, 0, 0, None), policy=vectorize)(
        state.params, state.batch_stats, state.hyperparams, x
    )


def zero_totals(
    state: ReplicaState,
    inputs: jax.Array | np.ndarray,
    targets: jax.Array | np.ndarray,
    metrics_fn: MetricsFn | None,
) -> Totals:
    """Zero sums with the structure one chunk of these inputs produces.

    The structure is traced once per state layout, inputs and ``metrics_fn``
    (an evaluation on the host's loop asks every round).
    """
    x = jax.ShapeDtypeStruct((1, *inputs.shape[1:]), inputs.dtype)
    y = jax.ShapeDtypeStruct((1, *targets.shape[1:]), targets.dtype)
    leaves, structure = jax.tree.flatten(state)
    layout = tuple(jax.ShapeDtypeStruct(np.shape(v), v.dtype) for v in leaves)
    try:
        shapes = _total_shapes(structure, layout, x, y, metrics_fn)
    except TypeError:  # a metrics_fn (or a static field) that cannot be hashed
        shapes = _total_shapes.__wrapped__(structure, layout, x, y, metrics_fn)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.lru_cache(maxsize=64)
def _total_shapes(structure, layout, x, y, metrics_fn) -> Totals:
    state = jax.tree.unflatten(structure, layout)
    mask = jax.ShapeDtypeStruct((1,), jnp.bool_)
    chunk = functools.partial(_eval_chunk, metrics_fn=metrics_fn, vectorize="vmap")
    return jax.eval_shape(chunk, state, x, y, mask)


def add_chunk(
    state: ReplicaState,
    totals: Totals,
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array,
    *,
    metrics_fn: MetricsFn | None,
    vectorize: str,
) -> Totals:
    """``totals`` plus one chunk's per-replica sums."""
    sums = _eval_chunk(state, x, y, mask, metrics_fn, vectorize)
    return jax.tree.map(jnp.add, totals, sums)


def metrics_from_totals(totals: Totals, num: int) -> EvalMetrics:
    """Means over ``num`` examples; a non-finite loss becomes +inf."""
    loss_sum, sums = totals
    loss = loss_sum / num
    loss = jnp.where(jnp.isfinite(loss), loss, jnp.inf)
    return EvalMetrics(loss=loss, metrics={k: v / num for k, v in sums.items()})
