"""The batching rules of :func:`tempering.fast.replica_vmap`'s rewrite, per formulation.

For each primitive of a single-replica function that a :data:`Policy` names,
:func:`batched_primitive` gives the replica-batched version in the chosen
formulation: convolutions unrolled, mapped or as patches times kernels
(``"unroll"``, ``"map"``, ``"patches"``), window reductions folded into the
batch axis or computed as reshapes (``"fold"``, ``"reshape"``), anything else
by JAX's own batching rule. Every formulation computes what ``jax.vmap`` does
(tested against it in ``tests/test_fast.py``). Independently of the policy,
:func:`flat_random_bits` draws threefry random bits as one flat vector.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

__all__ = [
    "CONV",
    "FOLD",
    "FORMULATIONS",
    "RANDOM_BITS",
    "RESHAPE",
    "SEQUENTIAL",
    "WINDOW_PRIMITIVES",
    "batched_primitive",
    "flat_random_bits",
]

FORMULATIONS = ("vmap", "unroll", "map", "patches", "fold", "reshape", "broadcast")
SEQUENTIAL = "sequential"
FOLD = "fold"
RESHAPE = "reshape"
CONV = "conv_general_dilated"
DOT = "dot_general"
RANDOM_BITS = "random_bits"
BROADCAST = "broadcast"
#: Weight-free window reductions (pooling and the max-pool derivatives), the
#: primitives the ``"fold"`` formulation applies to.
WINDOW_PRIMITIVES = (
    "reduce_window_max",
    "reduce_window_min",
    "reduce_window_sum",
    "reduce_window",
    "select_and_scatter_add",
    "select_and_gather_add",
)


@functools.cache
def _threefry_key_dtype() -> Any:
    return jax.eval_shape(lambda: jax.random.key(0, impl="threefry2x32")).dtype


def flat_random_bits(eqn: Any, keys: jax.Array) -> jax.Array:
    """A ``random_bits`` equation drawn as one flat vector, then reshaped.

    The same bits: threefry's counters are the row-major index of each element
    (``iota(prod(shape)).reshape(shape)``, in JAX's partitionable and original
    implementations alike), so only the program changes. Drawn in N
    dimensions, the counters are built from one iota per dimension times its
    stride, in 64 bits as two 32-bit words, and XLA:CPU fuses that arithmetic
    into every threefry round: a dropout mask of ``(M, 128, 84)`` compiled in
    0.5 s against 0.2 s flat, and a ``(8, 128, 28, 28, 6)`` draw ran in 90
    against 52 ms. Keys of other implementations (``rbg``) are drawn as
    written.
    """
    shape = tuple(eqn.params["shape"])
    if len(shape) <= 1 or keys.dtype != _threefry_key_dtype():
        return eqn.primitive.bind(keys, **eqn.params)
    flat = eqn.primitive.bind(keys, **{**eqn.params, "shape": (math.prod(shape),)})
    return flat.reshape(keys.shape + shape)


def _canonical_layout(dn: lax.ConvDimensionNumbers) -> tuple:
    """Transposes into and out of the NHWC / HWIO layout, and its dimension numbers.

    Returns ``(lhs_perm, rhs_perm, out_perm, canonical)``: ``lhs_perm`` and
    ``rhs_perm`` put an operand's axes in canonical order, ``out_perm`` puts a
    canonical output's axes back in ``dn``'s order.
    """
    rank = len(dn.lhs_spec) - 2
    spatial = tuple(range(1, rank + 1))
    canonical = lax.ConvDimensionNumbers(
        lhs_spec=(0, rank + 1, *spatial),
        rhs_spec=(rank + 1, rank, *range(rank)),
        out_spec=(0, rank + 1, *spatial),
    )
    out_order = (dn.out_spec[0], *dn.out_spec[2:], dn.out_spec[1])
    return (
        (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]),
        (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]),
        tuple(sorted(range(rank + 2), key=out_order.__getitem__)),
        canonical,
    )


def _conv_per_replica(params, num, batched, args, formulation):
    """A convolution per replica (unrolled or in a ``lax.map``) in NHWC / HWIO.

    The same convolutions (any dimension numbers, groups, padding or
    dilation); only the physical order of the operands' axes changes, once
    for all replicas. XLA:CPU hands a convolution to its fast kernels only in
    this layout and transposes any other layout itself, per convolution: M
    transposes of each operand when unrolled (compile time), none inside a
    ``while`` body, where a kernel-gradient convolution then runs several
    times slower (LeNet's step in a ``lax.map``: 2.7x a Python loop).
    """
    lhs_perm, rhs_perm, out_perm, canonical = _canonical_layout(
        params["dimension_numbers"]
    )
    operands = [
        jnp.transpose(a, (0, *(d + 1 for d in perm)) if b else perm)
        for a, b, perm in zip(args, batched, (lhs_perm, rhs_perm), strict=True)
    ]
    out = _per_replica(
        lax.conv_general_dilated_p,
        {**params, "dimension_numbers": canonical},
        num,
        batched,
        operands,
        formulation,
    )
    return jnp.transpose(out, (0, *(d + 1 for d in out_perm)))


def canonical_conv(params, lhs, rhs):
    """One replica's ``conv_general_dilated`` in NHWC / HWIO (see above)."""
    lhs_perm, rhs_perm, out_perm, canonical = _canonical_layout(
        params["dimension_numbers"]
    )
    out = lax.conv_general_dilated_p.bind(
        jnp.transpose(lhs, lhs_perm),
        jnp.transpose(rhs, rhs_perm),
        **{**params, "dimension_numbers": canonical},
    )
    return jnp.transpose(out, out_perm)


def _per_replica(prim, params, num, batched, args, formulation):
    """Emits the primitive once per replica (unrolled) or in a ``lax.map``."""

    def one(sliced):
        it = iter(sliced)
        operands = [next(it) if b else a for a, b in zip(args, batched, strict=True)]
        return prim.bind(*operands, **params)

    sliced = [a for a, b in zip(args, batched, strict=True) if b]
    if formulation == "map":
        return lax.map(one, sliced)
    outs = [one([a[m] for a in sliced]) for m in range(num)]
    if prim.multiple_results:
        return [jnp.stack(o) for o in zip(*outs, strict=True)]
    return jnp.stack(outs)


def _conv_shared_input(params, num, lhs, rhs):
    """Shared input, per-replica kernels: one conv with M x output features."""
    dn = params["dimension_numbers"]
    out_feat, out_dim = dn.rhs_spec[0], dn.out_spec[1]
    kernel = jnp.moveaxis(rhs, 0, out_feat)  # (..., M, O, ...)
    shape = list(rhs.shape[1:])
    shape[out_feat] *= num
    out = lax.conv_general_dilated_p.bind(lhs, kernel.reshape(shape), **params)
    split = (
        *out.shape[:out_dim],
        num,
        out.shape[out_dim] // num,
        *out.shape[out_dim + 1 :],
    )  # fmt: skip (an empty output splits too)
    return jnp.moveaxis(out.reshape(split), out_dim, 0)


def _conv_shared_kernel(params, num, lhs, rhs):
    """Per-replica inputs, shared kernel: one conv with M x the batch."""
    dn = params["dimension_numbers"]
    in_batch, out_batch = dn.lhs_spec[0], dn.out_spec[0]
    inputs = jnp.moveaxis(lhs, 0, in_batch)
    shape = list(lhs.shape[1:])
    shape[in_batch] *= num
    out = lax.conv_general_dilated_p.bind(inputs.reshape(shape), rhs, **params)
    split = (*out.shape[:out_batch], num, out.shape[out_batch] // num,
             *out.shape[out_batch + 1 :])  # fmt: skip
    return jnp.moveaxis(out.reshape(split), out_batch, 0)


# Largest patch tensor (elements) the "patches" formulation builds.
_MAX_PATCH_ELEMENTS = 1 << 26
#: Largest patch tensor of one replica (elements) for which "patches" turns a
#: convolution with both operands per replica into patches times kernels, a
#: batched matrix product: small convolutions (a 1-D conv net's), whose
#: unrolled form costs compile time per replica and runs no faster. Larger ones
#: stay unrolled: their patches cost more than the convolutions (a LeNet's
#: second layer, 1.9M: 3x slower; the 1-D conv net's input gradient of its
#: last layer, 304K of mostly the zeros of a dilated input: 1.3x slower).
MAX_REPLICA_PATCH_ELEMENTS = 1 << 18
#: ... and of all replicas' together (6 MiB of float32): beyond it the gather's
#: copies cost more than the unrolled convolutions (the 1-D conv net's step:
#: as fast at M = 8, 1.15M elements, compiled in half the time; 1.3-1.4x
#: slower at M = 32 and 64, 2M and more; AMD EPYC Zen 4, 2 cores).
MAX_REPLICAS_PATCH_ELEMENTS = 3 << 19


def _out_spatial(params, spatial: Sequence[int], window: Sequence[int]) -> tuple:
    """Output spatial sizes of a convolution of an unpadded input."""
    return tuple(
        ((size - 1) * ld + 1 + lo + hi - (k - 1) * d - 1) // s + 1
        for size, ld, (lo, hi), k, d, s in zip(
            spatial,
            params["lhs_dilation"],
            params["padding"],
            window,
            params["rhs_dilation"],
            params["window_strides"],
            strict=True,
        )
    )


def _patches(params, lhs, window: tuple[int, ...]) -> jax.Array:
    """The patch tensor ``(N, C, *window, *out_spatial)`` of a convolution input.

    One gather with static indices: element ``(k, o)`` of each spatial
    dimension is the padded input at ``o * stride + k * dilation``. XLA
    compiles it as one fused loop; a strided slice per window offset (the
    same copy) compiled to one fusion per slice, about a second of compile
    time per convolution for LeNet's 5x5 windows on 2 CPU cores, and ran no
    faster.
    """
    dn = params["dimension_numbers"]
    x = jnp.transpose(lhs, dn.lhs_spec)  # (N, C, *spatial)
    out = _out_spatial(params, x.shape[2:], window)
    pads = [
        (lo, hi, d - 1)
        for (lo, hi), d in zip(params["padding"], params["lhs_dilation"], strict=True)
    ]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (0, 0, 0), *pads])
    rank = len(window)
    indices = []
    for d, (k, o, stride, dilation) in enumerate(
        zip(window, out, params["window_strides"], params["rhs_dilation"], strict=True)
    ):
        shape = [1] * (2 * rank)
        shape[d], shape[rank + d] = k, o
        position = np.arange(k)[:, None] * dilation + np.arange(o)[None, :] * stride
        indices.append(position.reshape(shape))
    index = (slice(None), slice(None), *indices)
    return x.at[index].get(mode="promise_in_bounds")


def _conv_patches(params, num, lhs, rhs, lhs_batched: bool = False):
    """Per-replica kernels: patches of the input times all kernels at once.

    A shared input's patches are built once for every replica (one matrix
    product with M times the output features); per-replica inputs are folded
    into the batch to build theirs in one gather, and the product is batched
    over replicas.
    """
    dn = params["dimension_numbers"]
    kernels = jnp.transpose(rhs, (0, *(d + 1 for d in dn.rhs_spec)))  # (M, O, I, *K)
    rank = kernels.ndim - 3
    if lhs_batched:
        batch = dn.lhs_spec[0]
        inputs = jnp.moveaxis(lhs, 0, batch)  # (..., M, N, ...)
        shape = list(lhs.shape[1:])
        shape[batch] *= num
        patches = _patches(params, inputs.reshape(shape), kernels.shape[3:])
        patches = patches.reshape(num, -1, *patches.shape[1:])  # (M, N, C, ...)
    else:
        patches = _patches(params, lhs, kernels.shape[3:])  # (N, C, ...)
    # never n, c, m or o (the other operands' labels): a 3-D window once took
    # "c" and made einsum take a diagonal
    window, out = "abdefghi"[:rank], "pqrstuvw"[:rank]
    result = jnp.einsum(
        f"{'m' if lhs_batched else ''}nc{window}{out},moc{window}->mno{out}",
        patches,
        kernels,
        precision=params["precision"],
        preferred_element_type=params["preferred_element_type"],
    )  # (M, N, O, *out), canonical order
    to_out = sorted(range(len(dn.out_spec)), key=lambda j: dn.out_spec[j])
    return jnp.transpose(result, (0, *(j + 1 for j in to_out)))


def _patch_elements(params, lhs_shape: Sequence[int], rhs_shape: Sequence[int]) -> int:
    """Elements of one replica's patch tensor (single-replica operand shapes)."""
    dn = params["dimension_numbers"]
    window = [rhs_shape[d] for d in dn.rhs_spec[2:]]
    spatial = [lhs_shape[d] for d in dn.lhs_spec[2:]]
    out = _out_spatial(params, spatial, window)
    n, c = lhs_shape[dn.lhs_spec[0]], lhs_shape[dn.lhs_spec[1]]
    return n * c * math.prod(window) * math.prod(out)


def _conv_rule(prim, params, num, batched, args, formulation):
    lhs_b, rhs_b = batched
    lhs, rhs = args
    if params["batch_group_count"] == 1:
        ungrouped = params["feature_group_count"] == 1
        if not lhs_b and rhs_b and ungrouped:
            if (
                formulation == "patches"
                and _patch_elements(params, lhs.shape, rhs.shape[1:])
                <= _MAX_PATCH_ELEMENTS
            ):
                return _conv_patches(params, num, lhs, rhs)
            return _conv_shared_input(params, num, lhs, rhs)
        if lhs_b and not rhs_b:
            return _conv_shared_kernel(params, num, lhs, rhs)
        if (
            formulation == "patches"
            and lhs_b
            and ungrouped
            and (elements := _patch_elements(params, lhs.shape[1:], rhs.shape[1:]))
            <= MAX_REPLICA_PATCH_ELEMENTS
            and num * elements <= MAX_REPLICAS_PATCH_ELEMENTS
        ):
            return _conv_patches(params, num, lhs, rhs, lhs_batched=True)
    return _conv_per_replica(params, num, batched, args, formulation)


def _dot_rule(prim, params, num, batched, args, formulation):
    """Matrix products; ``"broadcast"``: a shared operand copied to every replica.

    JAX's rule for a product with one shared operand (a dense layer on the
    shared batch, and its kernel gradient) folds the replica axis into the
    other operand's free dimensions: one large product, but its per-replica
    operand and its output are transposed in memory around it (the whole
    first-layer kernel and its gradient, every step). Broadcasting the shared
    operand instead makes the replica axis a leading batch dimension of an
    ordinary batched product: no transposes, at the cost of one copy of the
    shared operand per replica.
    """
    if formulation == BROADCAST and not all(batched):
        operands = [
            a if b else jnp.broadcast_to(a, (num, *a.shape))
            for a, b in zip(args, batched, strict=True)
        ]
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params[
            "dimension_numbers"
        ]

        def shifted(dims):
            return tuple(d + 1 for d in dims)

        dimension_numbers = (
            (shifted(lhs_contract), shifted(rhs_contract)),
            ((0, *shifted(lhs_batch)), (0, *shifted(rhs_batch))),
        )
        return prim.bind(
            *operands, **{**params, "dimension_numbers": dimension_numbers}
        )
    if formulation in ("vmap", BROADCAST):  # BROADCAST: both operands per replica
        return _jax_rule(prim, params, num, batched, args)
    return _per_replica(prim, params, num, batched, args, formulation)


def _jax_rule(prim, params, num, batched, args):
    """JAX's own batching rule of the primitive."""

    def apply(*operands):
        return prim.bind(*operands, **params)

    axes = [0 if b else None for b in batched]
    return jax.vmap(apply, in_axes=axes, axis_size=num)(*args)


def _untouched_dim(params) -> int | None:
    """The first dimension a window reduction maps element for element.

    Window 1, stride 1, no padding and no dilation there: the batch dimension
    of a pooling layer. None if the window touches every dimension.
    """
    rank = len(params["window_dimensions"])
    trivial = {
        "window_dimensions": 1,
        "window_strides": 1,
        "base_dilation": 1,
        "window_dilation": 1,
    }
    for d in range(rank):
        if all(
            name not in params or params[name][d] == value
            for name, value in trivial.items()
        ) and tuple(params["padding"][d]) == (0, 0):
            return d
    return None


def _fold(x, num: int, dim: int, batched: bool) -> jax.Array:
    """``(M, ..., n_dim, ...)`` -> ``(..., M * n_dim, ...)`` (replica-major)."""
    if not batched:
        x = jnp.broadcast_to(x, (num, *x.shape))
    x = jnp.moveaxis(x, 0, dim)
    return x.reshape(*x.shape[:dim], num * x.shape[dim + 1], *x.shape[dim + 2 :])


def _unfold(x, num: int, dim: int) -> jax.Array:
    """Inverse of :func:`_fold`: the replica axis back in front."""
    x = x.reshape(*x.shape[:dim], num, x.shape[dim] // num, *x.shape[dim + 1 :])
    return jnp.moveaxis(x, dim, 0)


# Chooser windows the "reshape" formulation takes: max or min pooling and the
# max/min-pool derivatives whose selection keeps the first extreme (ge / le).
_CHOOSERS = {
    "reduce_window_max": jnp.max,
    "reduce_window_min": jnp.min,
}
_SELECTS = {"ge": jnp.argmax, "le": jnp.argmin}


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _window_extreme(windows: jax.Array, name: str) -> jax.Array:
    """Each window's max (min) over the last axis, derived as pooling is.

    ``jnp.max``'s own derivative splits a tangent among tied elements; the
    pooling primitives' goes to the first extreme alone (``select_prim=ge``),
    which a function differentiated through :func:`replica_vmap` must match.
    """
    return _CHOOSERS[name](windows, axis=-1)


@_window_extreme.defjvp
def _window_extreme_jvp(name: str, primals: tuple, tangents: tuple) -> tuple:
    (windows,), (tangent,) = primals, tangents
    select = _SELECTS["ge" if name == "reduce_window_max" else "le"]
    first = select(windows, axis=-1)[..., None]
    value = _window_extreme(windows, name)
    return value, jnp.take_along_axis(tangent, first, axis=-1)[..., 0]


def _tiles(params, shape: Sequence[int]) -> bool:
    """Whether the window tiles the operand: no overlap, padding or dilation."""
    return all(
        s == k and tuple(pad) == (0, 0) and size % k == 0
        for s, k, pad, size in zip(
            params["window_strides"],
            params["window_dimensions"],
            params["padding"],
            shape,
            strict=True,
        )
    ) and all(
        d == 1
        for name in ("base_dilation", "window_dilation")
        for d in params.get(name, ())
    )


def _windows(x, window: Sequence[int]) -> jax.Array:
    """``(*(n_d * k_d))`` -> ``(*n, prod(k))``: each window's elements last."""
    rank = len(window)
    counts = [size // k for size, k in zip(x.shape, window, strict=True)]
    x = x.reshape([v for pair in zip(counts, window, strict=True) for v in pair])
    x = x.transpose([*range(0, 2 * rank, 2), *range(1, 2 * rank, 2)])
    return x.reshape(*counts, -1)


def _unwindows(x, window: Sequence[int], shape: Sequence[int]) -> jax.Array:
    """Inverse of :func:`_windows`."""
    rank = len(window)
    x = x.reshape(*x.shape[:rank], *window)
    return x.transpose([i for d in range(rank) for i in (d, rank + d)]).reshape(shape)


def _window_reshape(prim, params, num, batched, args):
    """Max/min pooling and its derivatives as reshapes, or None where they don't tile.

    Where the windows tile the input (stride = window, no padding, as in
    LeNet's 2x2 pooling), pooling is a reshape and a max over each window; the
    gradient (``select_and_scatter_add``) puts the cotangent at each window's
    first maximum (``argmax``, the element ``select_prim=ge`` keeps) and zeros
    elsewhere; the JVP (``select_and_gather_add``) gathers the tangent there.
    Element for element the values ``jax.vmap``'s primitives give (NaN aside),
    with no scatter, which XLA:CPU runs slowly on large arrays. Sum pooling,
    other selections (``gt``, ``lt``) and windows that overlap, pad, dilate or
    leave a remainder give None (the caller folds them).
    """
    name = prim.name
    select = _SELECTS.get(str(params.get("select_prim")))
    if name not in _CHOOSERS and select is None:
        return None
    at = 0 if name in _CHOOSERS else 1  # the pooled operand
    if not _tiles(params, args[at].shape[1:] if batched[at] else args[at].shape):
        return None
    args = [
        a if b else jnp.broadcast_to(a, (num, *a.shape))
        for a, b in zip(args, batched, strict=True)
    ]
    operand = args[at]
    window = (1, *params["window_dimensions"])  # the replica axis: window 1
    if name in _CHOOSERS:
        return _window_extreme(_windows(operand, window), name)
    first = select(_windows(operand, window), axis=-1)[..., None]
    if name == "select_and_gather_add":
        tangents = _windows(args[0], window)
        return jnp.take_along_axis(tangents, first, axis=-1)[..., 0]
    source = args[0]  # select_and_scatter_add: one cotangent per window
    hot = first == jnp.arange(math.prod(window))
    scattered = jnp.where(hot, source[..., None], jnp.zeros((), source.dtype))
    return _unwindows(scattered, window, operand.shape)


def _window_rule(prim, params, num, batched, args, formulation):
    """Window reductions: reshaped, folded into the batch, per replica, or JAX's."""
    if formulation == "vmap":
        return _jax_rule(prim, params, num, batched, args)
    if formulation == RESHAPE:
        out = _window_reshape(prim, params, num, batched, args)
        if out is not None:
            return out
        formulation = FOLD  # overlapping or padded windows, sum pooling
    if formulation != FOLD:
        return _per_replica(prim, params, num, batched, args, formulation)
    dim = _untouched_dim(params)
    # the generic reduce_window takes operands then their init values; the
    # init values must be shared (a per-replica init cannot be folded)
    folded = len(args) // 2 if prim.name == "reduce_window" else len(args)
    if dim is None or any(batched[folded:]):
        return _per_replica(prim, params, num, batched, args, "unroll")
    operands = [
        _fold(a, num, dim, b)
        for a, b in zip(args[:folded], batched[:folded], strict=True)
    ]
    out = prim.bind(*operands, *args[folded:], **params)
    if prim.multiple_results:
        return [_unfold(o, num, dim) for o in out]
    return _unfold(out, num, dim)


_RULES: dict[str, Callable] = {
    CONV: _conv_rule,
    DOT: _dot_rule,
    **dict.fromkeys(WINDOW_PRIMITIVES, _window_rule),
}


def batched_primitive(eqn: Any, formulation: str) -> Callable:
    """The equation's primitive as a function with a custom batching rule."""
    prim, params = eqn.primitive, eqn.params
    rule = _RULES.get(prim.name, _per_replica)

    def apply(*args):
        return prim.bind(*args, **params)

    batched_apply = custom_vmap(apply)

    @batched_apply.def_vmap
    def _vmap_rule(axis_size, in_batched, *args):
        if not any(in_batched):
            out = apply(*args)
            return out, [False] * len(out) if prim.multiple_results else False
        out = rule(prim, params, axis_size, list(in_batched), list(args), formulation)
        out_batched = [True] * len(out) if prim.multiple_results else True
        return out, out_batched

    return batched_apply
