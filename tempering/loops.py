"""Segments of fused steps and evaluations, looped on device or from the host.

A *segment* is a run of fused training steps. Step ``i`` of a round draws its
dropout and augmentation keys from ``fold_in(segment_key, i)``; the batch of
global step s on in-memory data comes from the epoch permutation that s falls
in. A segment may start part-way through a round (``start``), so a run split
across calls takes exactly the steps of one long run.

``loop="device"`` runs a segment as one ``lax.fori_loop`` program (and an
evaluation as one ``lax.scan``); ``loop="host"`` compiles one step (one
evaluation chunk) and calls it from Python, dispatched asynchronously with
nothing copied to the host. ``"auto"`` is ``"host"`` on CPU for models with
convolutions (XLA:CPU runs convolutions inside a loop body several times
slower than at the top level of a program, jax-ml/jax#12868) and ``"device"``
otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tempering._caller import warn
from tempering.fast import _contains
from tempering.sharding import (
    REPLICA_AXIS,
    crc32_of,
    keep_sharded,
    mesh_of,
    processes_differing,
    put_global,
)
from tempering.sources import ArraySource, BatchReader, IterableSource, batch_pair
from tempering.state import EvalMetrics, MetricsFn, ReplicaState
from tempering.step import (
    Totals,
    add_chunk,
    chunked,
    evaluate,
    metrics_from_totals,
    train_step,
    zero_totals,
)

__all__ = [
    "LOOPS",
    "SegmentSettings",
    "resolve_loop",
    "run_evaluate",
    "run_segment",
    "train_segment",
]

LOOPS = ("auto", "device", "host")
Augment = Callable[[jax.Array, jax.Array], jax.Array]


class SegmentSettings(NamedTuple):
    """How a segment batches and runs its steps (hashable: static under jit)."""

    batch_size: int = 128  # examples per step and replica
    shared_batch: bool = True  # every replica sees the same batch each step
    augment: Augment | None = None  # on-device augment(key, batch) -> batch
    vectorize: str = "auto"  # see tempering.fast.replica_vmap
    zero_inputs: tuple[str, ...] = ()  # passed as the number 0 (train_step)


_DEFAULT_SETTINGS = SegmentSettings()


def resolve_loop(
    loop: str, backend: str | None = None, *, has_convolution: bool = True
) -> str:
    """Where the loops over steps run: ``"device"`` or ``"host"`` (module doc).

    Raises:
        ValueError: for a name other than ``"auto"``, ``"device"``, ``"host"``.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop == "auto":
        on_cpu = (backend or jax.default_backend()) == "cpu"
        return "host" if on_cpu and has_convolution else "device"
    return loop


@functools.cache
def _convolves(model: Any, shape: tuple, dtype: Any, inputs: tuple) -> bool:
    sample = jax.ShapeDtypeStruct((1, *shape), dtype)

    def init(key, x):
        return model.init(key, x, dict(inputs))

    jaxpr = jax.make_jaxpr(init)(jax.random.key(0), sample)
    return _contains(jaxpr.jaxpr, frozenset({"conv_general_dilated"}))


def loop_for(state: ReplicaState, sample: Any, loop: str) -> str:
    """``loop`` with ``"auto"`` resolved for this model fed batches like ``sample``."""
    if loop != "auto":
        return resolve_loop(loop)
    inputs = tuple((name, 0.0) for name in sorted(state.model_inputs))
    shape, dtype = tuple(np.shape(sample)[1:]), jnp.result_type(sample)
    return resolve_loop(
        "auto", has_convolution=_convolves(state.model, shape, dtype, inputs)
    )


def _step_on_batch(
    state: ReplicaState, key: jax.Array, i: jax.Array, x: jax.Array, y: jax.Array,
    settings: SegmentSettings,
) -> tuple[ReplicaState, jax.Array]:  # fmt: skip
    """Step ``i`` of a round on one batch: dropout and augmentation keys from i."""
    dropout_key, augment_key = jax.random.split(jax.random.fold_in(key, i))
    if settings.augment is not None:
        if settings.shared_batch:
            x = settings.augment(augment_key, x)
        else:
            keys = jax.random.split(augment_key, state.num_replicas)
            x = jax.vmap(settings.augment)(keys, x)
    state, info = train_step(
        state, dropout_key, x, y,
        per_replica_batch=not settings.shared_batch, vectorize=settings.vectorize,
        zero_inputs=settings.zero_inputs,
    )  # fmt: skip
    return state, info.loss


# --- in-memory data: batches gathered on device -------------------------------


def _epoch_order(data_key, epoch, num_examples, num_replicas, shared_batch):
    epoch_key = jax.random.fold_in(data_key, epoch)
    if shared_batch:
        return jax.random.permutation(epoch_key, num_examples)[None]
    keys = jax.random.split(epoch_key, num_replicas)
    return jax.vmap(lambda k: jax.random.permutation(k, num_examples))(keys)


ArrayCarry = tuple[ReplicaState, jax.Array, jax.Array]  # state, order, loss sum


@functools.cache
def _order_shape(
    num_examples: int, num_replicas: int, shared_batch: bool, index_dtype: Any
) -> jax.ShapeDtypeStruct:
    """The shape and dtype of an epoch's batch order (:func:`_epoch_order`).

    ``index_dtype``, JAX's integer type at the call (64 bits under x64), is
    only part of the cache's key: the order's dtype follows it.
    """

    def draw() -> jax.Array:
        key = jax.random.key(0)
        return _epoch_order(key, 0, num_examples, num_replicas, shared_batch)

    return jax.eval_shape(draw)


def _first_carry(
    state: ReplicaState, targets: jax.Array, settings: SegmentSettings, *,
    on_host: bool,
) -> ArrayCarry:  # fmt: skip
    """A segment's first carry: the state, zeros for the order and the loss sum.

    The segment's first step draws the order (``_array_step``'s ``start``).
    From the host the zeros are placed as the step returns its order and loss
    (replicated, and split over the replicas' mesh on a sharded state), so
    that the step compiles once, and nothing is compiled to make them.
    """
    order = _order_shape(
        targets.shape[0], state.num_replicas, settings.shared_batch,
        jax.dtypes.canonicalize_dtype(np.int64),
    )  # fmt: skip
    loss = jax.ShapeDtypeStruct((state.num_replicas,), np.float32)
    if not on_host:
        return (
            state,
            jnp.zeros(order.shape, order.dtype),
            jnp.zeros(loss.shape, loss.dtype),
        )
    zeros = (np.zeros(order.shape, order.dtype), np.zeros(loss.shape, loss.dtype))
    mesh = mesh_of(state)
    if mesh is None:
        return state, *jax.device_put(zeros)
    whole, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(REPLICA_AXIS))
    return state, put_global(zeros[0], whole), put_global(zeros[1], split)


def _array_step(
    i: jax.Array, carry: ArrayCarry, *, key: jax.Array, data_key: jax.Array,
    inputs: jax.Array, targets: jax.Array, settings: SegmentSettings,
    start: jax.Array,
) -> ArrayCarry:  # fmt: skip
    """Step ``i``: the batch of global step ``state.step``, one fused step.

    The batch order is drawn at an epoch's first step and at the segment's
    first step, ``start`` (where the carry holds placeholders).
    """
    state, order, loss_sum = carry
    num_examples, batch_size = targets.shape[0], settings.batch_size
    steps_per_epoch = num_examples // batch_size
    epoch, position = state.step // steps_per_epoch, state.step % steps_per_epoch
    order = jax.lax.cond(
        (position == 0) | (i == start),
        lambda: _epoch_order(
            data_key, epoch, num_examples, state.num_replicas, settings.shared_batch
        ),
        lambda: order,
    )
    idx = jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size, 1)
    idx = idx[0] if settings.shared_batch else idx
    state, loss = _step_on_batch(state, key, i, inputs[idx], targets[idx], settings)
    return state, order, loss_sum + loss


def train_segment(
    state: ReplicaState,
    key: jax.Array,
    data_key: jax.Array,
    inputs: jax.Array,
    targets: jax.Array,
    num_steps: jax.Array | int,
    *,
    settings: SegmentSettings = _DEFAULT_SETTINGS,
    start: jax.Array | int = 0,
) -> tuple[ReplicaState, jax.Array]:
    """Runs ``num_steps`` fused steps on device, batches gathered on device.

    Pure and jit-able. The batch of global step s is fixed by ``(data_key, s)``:
    epochs are seeded permutations of the training set (the last incomplete
    batch is dropped), so a run split into segments sees the same batches as
    one long run.

    Args:
        state: the stacked replicas.
        key: PRNG key of the round; step i uses ``fold_in(key, i)``.
        data_key: PRNG key of the batch order for the whole run.
        inputs: training inputs ``(N, ...)`` on device.
        targets: training targets ``(N, ...)``.
        num_steps: number of steps; may be traced.
        settings: :class:`SegmentSettings`.
        start: index within the round of the first step (keys continue).

    Returns:
        ``(new_state, mean_train_loss)``, the loss of shape ``(M,)``.

    Raises:
        ValueError: ``settings.batch_size`` exceeds the training examples.
    """
    inputs, targets = jax.tree.map(jnp.asarray, (inputs, targets))  # numpy too
    if settings.batch_size > targets.shape[0]:
        raise ValueError(
            f"settings.batch_size {settings.batch_size} exceeds the "
            f"{targets.shape[0]} training examples: give "
            f"SegmentSettings(batch_size=...) of at most {targets.shape[0]}"
        )
    start = jnp.asarray(start, jnp.int32)
    body = functools.partial(
        _array_step, key=key, data_key=data_key, inputs=inputs, targets=targets,
        settings=settings, start=start,
    )  # fmt: skip
    # The first step draws the batch order: the permutation is compiled once,
    # in the loop, not a second time before it.
    carry = _first_carry(state, targets, settings, on_host=False)
    state, _, loss_sum = jax.lax.fori_loop(start, start + num_steps, body, carry)
    return state, loss_sum / jnp.maximum(num_steps, 1).astype(loss_sum.dtype)


_device_array_segment = jax.jit(
    train_segment, static_argnames=("settings",), donate_argnames=("state",)
)
_host_array_step = jax.jit(
    _array_step, static_argnames=("settings",), donate_argnames=("carry",)
)


# --- streamed data: a segment's batches stacked and sent at once --------------


def _stream_segment(state, key, start, xs, ys, num_steps, *, settings):
    """``num_steps`` steps on stacked batches ``xs[j]``, ``ys[j]`` (padded)."""

    def body(j, carry):
        state, loss_sum = carry
        state, loss = _step_on_batch(state, key, start + j, xs[j], ys[j], settings)
        return state, loss_sum + loss

    zeros = jnp.zeros((state.num_replicas,), jnp.float32)
    state, loss_sum = jax.lax.fori_loop(0, num_steps, body, (state, zeros))
    return state, loss_sum / jnp.maximum(num_steps, 1).astype(loss_sum.dtype)


def _stream_step(state, loss_sum, key, i, x, y, *, settings):
    state, loss = _step_on_batch(state, key, i, x, y, settings)
    return state, loss_sum + loss


_device_stream_segment = jax.jit(
    _stream_segment, static_argnames=("settings",), donate_argnames=("state",)
)
_host_stream_step = jax.jit(
    _stream_step, static_argnames=("settings",), donate_argnames=("state", "loss_sum")
)

# Streamed batches go to the device this many steps at a time (padded), so one
# program serves every segment length.
STREAM_CHUNK = 32


def _stacked(batches: list, size: int) -> tuple[np.ndarray, np.ndarray]:
    xs = np.stack([b[0] for b in batches])
    ys = np.stack([b[1] for b in batches])
    pad = size - len(batches)
    if pad:
        xs = np.concatenate([xs, np.zeros((pad, *xs.shape[1:]), xs.dtype)])
        ys = np.concatenate([ys, np.zeros((pad, *ys.shape[1:]), ys.dtype)])
    return xs, ys


def run_segment(
    state: ReplicaState,
    key: jax.Array,
    source: ArraySource | BatchReader,
    num_steps: int,
    *,
    data_key: jax.Array,
    settings: SegmentSettings,
    loop: str,
    start: int = 0,
) -> tuple[ReplicaState, jax.Array]:
    """A segment from the host, on in-memory data or on a batch reader.

    ``state``'s buffers are donated. Not traceable: the drivers call it.

    Args:
        state: the stacked replicas (donated).
        key: PRNG key of the round.
        source: in-memory data on device, or a :class:`BatchReader`.
        num_steps: number of steps, a Python int.
        data_key: PRNG key of the batch order (in-memory data).
        settings: :class:`SegmentSettings`.
        loop: ``"device"`` or ``"host"`` (resolved).
        start: index within the round of the first step.

    Returns:
        ``(new_state, mean_train_loss)``, the loss of shape ``(M,)``.
    """
    state = keep_sharded(state)  # a move may have gathered replicas onto all devices
    if isinstance(source, BatchReader):
        return _run_stream_segment(state, key, source, num_steps, settings, loop, start)
    inputs, targets = source
    if loop == "device":
        return _device_array_segment(
            state, key, data_key, inputs, targets, jnp.int32(num_steps),
            settings=settings, start=jnp.int32(start),
        )  # fmt: skip
    # The first step draws the batch order (no program of its own to compile).
    carry = _first_carry(state, targets, settings, on_host=True)
    first = jnp.int32(start)
    for i in range(start, start + num_steps):
        carry = _host_array_step(
            jnp.int32(i), carry, key=key, data_key=data_key, inputs=inputs,
            targets=targets, settings=settings, start=first,
        )  # fmt: skip
    state, _, loss_sum = carry
    return state, loss_sum / max(num_steps, 1)


def _run_stream_segment(state, key, reader, num_steps, settings, loop, start):
    loss_sum = jnp.zeros((state.num_replicas,), jnp.float32)
    done = 0
    while done < num_steps:
        count = min(STREAM_CHUNK, num_steps - done)
        try:
            batches = reader.take(count)
        except Exception as error:
            if jax.process_count() > 1:
                _raise_on_every_process(reader, error)
            raise
        if loop == "device":
            xs, ys = _stacked(batches, STREAM_CHUNK)
            state, mean = _device_stream_segment(
                state, key, jnp.int32(start + done), xs, ys, jnp.int32(count),
                settings=settings,
            )  # fmt: skip
            loss_sum = loss_sum + mean * count
        else:
            xs, ys = jax.device_put(_stacked(batches, count))
            for j in range(count):
                state, loss_sum = _host_stream_step(
                    state, loss_sum, key, jnp.int32(start + done + j), xs[j], ys[j],
                    settings=settings,
                )  # fmt: skip
        done += count
    reader.check_same_on_processes()
    return state, loss_sum / max(num_steps, 1)


def _raise_on_every_process(reader: BatchReader, error: Exception) -> None:
    """A batch refused on some processes ends the segment on every process.

    The processes that refused it skip the rest of the segment to its check
    of the stream, a collective: there the others, which read other batches,
    fail naming the first process that differs (they would otherwise wait
    for it in the round's collectives until a timeout), and these raise
    their own error. A batch refused on every process raises there alike.
    """
    try:
        reader.check_same_on_processes()
    except ValueError:
        raise error from None
    raise error


# --- evaluation ---------------------------------------------------------------

_EVAL_STATIC = ("batch_size", "metrics_fn", "vectorize")
_device_evaluate = jax.jit(evaluate, static_argnames=_EVAL_STATIC)
_host_chunked = jax.jit(chunked, static_argnums=2)
_host_add_chunk = jax.jit(add_chunk, static_argnames=("metrics_fn", "vectorize"))


def _padded_batch(x: np.ndarray, y: np.ndarray, size: int):
    pad = size - len(y)
    mask = np.arange(size) < len(y)
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
    return x, y, mask


# Examples of one evaluation pass of a stream after which it may be endless.
_LONG_PASS = 1_000_000


def run_evaluate(
    state: ReplicaState,
    source: ArraySource | IterableSource,
    *,
    batch_size: int = 1000,
    metrics_fn: MetricsFn | None,
    vectorize: str = "auto",
    loop: str = "device",
    name: str = "validation_data",
) -> EvalMetrics:
    """:func:`tempering.evaluate` from the host, on arrays or an iterable of batches.

    Batches of an iterable are cut into chunks of ``batch_size`` examples (or
    of the first batch's size, if smaller), the last chunk of each padded
    (with a mask), so one program serves them all.
    """
    static = dict(metrics_fn=metrics_fn, vectorize=vectorize)
    if isinstance(source, IterableSource):
        totals: Totals | None = None
        count, chunk, digest = 0, None, 0
        several = jax.process_count() > 1
        for element in source.make_iterator():
            x, y = batch_pair(element, name)
            if len(y) == 0:
                raise ValueError(f"{name} yielded an empty batch")
            if several:  # each process scores its replicas on the batches it reads
                digest = crc32_of(y, crc32_of(x, digest))
            chunk = chunk or min(len(y), batch_size)
            if totals is None:
                totals = zero_totals(state, x, y, metrics_fn)
            for start in range(0, len(y), chunk):
                piece = _padded_batch(
                    x[start : start + chunk], y[start : start + chunk], chunk
                )
                totals = _host_add_chunk(state, totals, *piece, **static)
            count += len(y)
            if count >= _LONG_PASS > count - len(y):
                warn(
                    f"{name} has yielded {count} examples in one evaluation pass and "
                    "not ended: every round evaluates a whole pass of it, so one "
                    "that never ends (a `while True` generator) hangs the run; give "
                    "one pass of the data"
                )
        if totals is None:
            raise ValueError(f"{name} yielded no batches")
        if several:
            differing = processes_differing(np.array([digest, count], np.uint32))
            if differing:
                raise ValueError(
                    f"{name} differs between processes: the batches process "
                    f"{differing[0]} read are not those of process 0. Every process "
                    "reads the whole evaluation data and scores its own replicas on "
                    "it: it must yield the same batches on every process (same "
                    "files and order)"
                )
        return metrics_from_totals(totals, count)
    inputs, targets = source
    if loop == "device":
        return _device_evaluate(state, inputs, targets, batch_size=batch_size, **static)
    xs, ys, mask = _host_chunked(inputs, targets, batch_size)
    totals = zero_totals(state, inputs, targets, metrics_fn)
    for index in range(xs.shape[0]):  # one program for every chunk count
        totals = _host_add_chunk(
            state, totals, xs[index], ys[index], mask[index], **static
        )
    return metrics_from_totals(totals, targets.shape[0])
