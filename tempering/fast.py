"""Fast formulations of layers over the replica axis: ``replica_vmap``.

``jax.vmap`` over per-replica weights turns every convolution into one grouped
convolution (``feature_group_count = M``). XLA:CPU runs grouped convolutions far
slower than M ordinary ones (jax-ml/jax#15339, #26568): on 2 CPU cores a vmapped
LeNet step costs twice a Python loop over the replicas. Dense layers,
element-wise ops and average pooling, on the other hand, gain from being
vectorised.

:func:`replica_vmap` is a drop-in ``jax.vmap`` that lets each primitive choose
its own batching rule. It traces the single-replica function to a jaxpr (after
``jax.grad``, so forward *and* backward convolutions are plain
``conv_general_dilated`` equations), wraps every equation of a chosen primitive
in :func:`jax.custom_batching.custom_vmap`, and vmaps the result. Everything
else is batched by JAX's own rules. The model stays a plain single-replica Flax
module; no layer needs to know about replicas, and gradients need no custom
rule because differentiation happens before the rewrite.

Formulations of a primitive whose operands carry the replica axis:

- ``"vmap"``: JAX's rule (a grouped convolution for a conv).
- ``"unroll"``: the primitive emitted once per replica inside the same
  compiled program, outputs stacked. Where only one operand is per replica,
  the replica axis is merged instead: a shared input and per-replica kernels
  become one convolution with M times the output channels; a per-replica
  input and a shared kernel become one convolution with M times the batch.
- ``"map"``: ``jax.lax.map`` over replicas (a loop inside the program), with
  the same merges for one-sided operands.
- ``"patches"``: a convolution whose input is shared by all replicas (the
  first layer with a shared batch, forward and kernel gradient) becomes one
  patch matrix, built once by slicing, times every replica's kernel: a single
  matrix product with M times the output features. The first layer has few
  input channels, which XLA:CPU's convolutions handle poorly. Other
  convolutions are treated as under ``"unroll"``.
- ``"fold"`` (window reductions only, :data:`WINDOW_PRIMITIVES`: max/min/sum
  pooling ``reduce_window_*`` and the max-pool derivatives
  ``select_and_scatter_add`` (gradient) and ``select_and_gather_add`` (JVP)):
  these layers have no weights, so the replica axis is folded into a dimension
  the window does not touch (the batch, for a pooling layer): ``(M, B, ...)``
  becomes ``(M * B, ...)``, the single-replica primitive runs once, and the
  result is unfolded. JAX's own rule adds a window dimension of size 1
  instead. A one-sided operand (a shared input) is broadcast to M first; a
  window that touches every dimension is emitted once per replica. The same
  element work as JAX's rule: on 2 CPU cores no faster (indicative timing on
  a loaded machine, not yet on a quiet one).
- ``"reshape"`` (max/min pooling and its derivatives): where the windows tile
  the input (stride = window, no padding, as LeNet's 2x2 pooling), pooling is
  a reshape and a max over each window, its gradient a one-hot of each
  window's first maximum (the element ``select_and_scatter_add`` picks) times
  the cotangent: no scatter, which XLA:CPU runs slowly on large arrays.
  Bitwise equal to JAX's rule (NaN aside). Other windows are folded.

One formulation applies to the whole function rather than to a primitive:

- ``"sequential"``: the single-replica function in a ``lax.map`` over the
  replicas: one program whose loop body is the single-replica program,
  compiled once, so each replica runs the kernels of a Python loop over
  replicas without its M dispatches, and one replica's activations live at a
  time.

A :class:`Policy` maps primitive names to formulations. ``"auto"`` picks, per
backend, what ``experiments/bench_zoo.py`` measured fastest against a user's
hand loop. On CPU: ``"patches+reshape"`` for a function with convolutions or
window reductions; for one without, ``"sequential"`` where it has batched
matrix products (attention: vmap makes them doubly batched, which XLA:CPU runs
far slower than M ordinary ones), on a single device only (a loop over a
replica axis sharded across devices would serialise it), and plain
``jax.vmap`` otherwise (an MLP: its products are ordinary GEMMs either way,
``experiments/profile_dense.py``). Elsewhere: plain ``jax.vmap``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap
from jax.extend import core as jex_core

from tempering._caller import warn

__all__ = [
    "FORMULATIONS",
    "POLICIES",
    "WINDOW_PRIMITIVES",
    "Policy",
    "RewriteFallbackWarning",
    "applied_rules",
    "resolve_policy",
    "replica_vmap",
]

FORMULATIONS = ("vmap", "unroll", "map", "patches", "fold", "reshape")
SEQUENTIAL = "sequential"
FOLD = "fold"
RESHAPE = "reshape"

Policy = Mapping[str, str]  # primitive name -> formulation

CONV = "conv_general_dilated"

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
_FOLD_ALL = dict.fromkeys(WINDOW_PRIMITIVES, FOLD)
# max/min pooling and its derivatives as reshapes (where the windows tile the
# input, else folded); sum pooling left to JAX's rule
_RESHAPE_ALL = {
    "reduce_window_max": RESHAPE,
    "reduce_window_min": RESHAPE,
    "select_and_scatter_add": RESHAPE,
    "select_and_gather_add": RESHAPE,
}

#: Named policies. ``"vmap"`` is JAX's plain vmap, the reference.
POLICIES: dict[str, dict[str, str]] = {
    "vmap": {},
    "unroll": {CONV: "unroll"},
    "map": {CONV: "map"},
    "patches": {CONV: "patches"},
    SEQUENTIAL: {"*": SEQUENTIAL},
    FOLD: dict(_FOLD_ALL),
    "unroll+fold": {CONV: "unroll", **_FOLD_ALL},
    "patches+fold": {CONV: "patches", **_FOLD_ALL},
    RESHAPE: dict(_RESHAPE_ALL),
    "patches+reshape": {CONV: "patches", **_RESHAPE_ALL},
}

# "auto" on CPU (2 cores, jax 0.10.2; experiments/bench_zoo.py, a user's hand
# loop as the reference): grouped convolutions and vmapped max-pooling are the
# cost of a vmapped CNN; convolutions with a shared input are fastest as patches
# times all kernels, the others unrolled, and max-pooling as reshapes. A
# function with none of these primitives but with batched matrix products (an
# attention block) runs fastest as the single-replica program in a loop,
# "sequential"; one without (an MLP) as plain vmap. On one device only: a
# lax.map over a replica axis sharded across devices would serialise it.
_AUTO = {"cpu": "patches+reshape"}
_AUTO_OTHERWISE = {"cpu": SEQUENTIAL}


def _auto_otherwise(backend: str | None = None) -> str | None:
    """``"auto"``'s policy for a function without the rewritten primitives."""
    if jax.device_count() > 1:
        return None
    return _AUTO_OTHERWISE.get(backend or jax.default_backend())


def resolve_policy(policy: str | Policy, backend: str | None = None) -> dict[str, str]:
    """Turns a policy name (or mapping) into a primitive -> formulation dict.

    Args:
        policy: ``"auto"``, a key of :data:`POLICIES`, or a mapping from
            primitive names (e.g. ``"conv_general_dilated"``) to formulations.
        backend: backend for ``"auto"``; the default backend if None.

    Returns:
        The mapping; an empty one means plain ``jax.vmap``.

    Raises:
        ValueError: for an unknown policy name or formulation, or ``"fold"``
            or ``"reshape"`` for a primitive outside :data:`WINDOW_PRIMITIVES`.
    """
    if isinstance(policy, str):
        if policy == "auto":
            policy = _AUTO.get(backend or jax.default_backend(), "vmap")
        if policy not in POLICIES:
            raise ValueError(
                f"unknown vectorize policy {policy!r}; choose 'auto' or one of "
                f"{sorted(POLICIES)}"
            )
        return dict(POLICIES[policy])
    rules = dict(policy)
    for name, formulation in rules.items():
        if formulation not in FORMULATIONS:
            raise ValueError(
                f"unknown formulation {formulation!r} for {name!r}; choose one of "
                f"{FORMULATIONS}"
            )
        if formulation in (FOLD, RESHAPE) and name not in WINDOW_PRIMITIVES:
            raise ValueError(
                f"formulation {formulation!r} is for weight-free window "
                f"reductions {WINDOW_PRIMITIVES}, not {name!r}"
            )
    return rules


# --------------------------------------------------------------------------
# Batching rules. Each takes the primitive, its params, the replica count, the
# batched flags and the operands (replica axis first where batched) and
# returns the batched output(s), replica axis first.


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
    split = out.shape[:out_dim] + (num, -1) + out.shape[out_dim + 1 :]
    return jnp.moveaxis(out.reshape(split), out_dim, 0)


def _conv_shared_kernel(params, num, lhs, rhs):
    """Per-replica inputs, shared kernel: one conv with M x the batch."""
    dn = params["dimension_numbers"]
    in_batch, out_batch = dn.lhs_spec[0], dn.out_spec[0]
    inputs = jnp.moveaxis(lhs, 0, in_batch)
    shape = list(lhs.shape[1:])
    shape[in_batch] *= num
    out = lax.conv_general_dilated_p.bind(inputs.reshape(shape), rhs, **params)
    split = out.shape[:out_batch] + (num, -1) + out.shape[out_batch + 1 :]
    return jnp.moveaxis(out.reshape(split), out_batch, 0)


# Largest patch tensor (elements) the "patches" formulation builds.
_MAX_PATCH_ELEMENTS = 1 << 26


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

    Built from one strided slice per window offset or per output position,
    whichever is fewer (the kernel-gradient convolution has a large window and
    few output positions).
    """
    dn = params["dimension_numbers"]
    x = jnp.transpose(lhs, dn.lhs_spec)  # (N, C, *spatial)
    out = _out_spatial(params, x.shape[2:], window)
    pads = [
        (lo, hi, d - 1)
        for (lo, hi), d in zip(params["padding"], params["lhs_dilation"], strict=True)
    ]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (0, 0, 0), *pads])
    strides, dilation = params["window_strides"], params["rhs_dilation"]
    n, c, rank = x.shape[0], x.shape[1], len(window)
    by_offset = math.prod(window) <= math.prod(out)
    # slice over window offsets (each slice spans all outputs) or the reverse
    outer, inner = (window, out) if by_offset else (out, window)
    outer_step, inner_step = (dilation, strides) if by_offset else (strides, dilation)
    slices = []
    for index in itertools.product(*map(range, outer)):
        start = [0, 0, *(i * st for i, st in zip(index, outer_step, strict=True))]
        limit = [
            n,
            c,
            *(
                b + (m - 1) * st + 1
                for b, m, st in zip(start[2:], inner, inner_step, strict=True)
            ),
        ]
        slices.append(lax.slice(x, start, limit, (1, 1, *inner_step)))
    patches = jnp.stack(slices, axis=2).reshape(n, c, *outer, *inner)
    if not by_offset:  # (N, C, *out, *window) -> (N, C, *window, *out)
        patches = jnp.moveaxis(
            patches, tuple(range(2, 2 + rank)), tuple(range(2 + rank, 2 + 2 * rank))
        )
    return patches


def _conv_patches(params, num, lhs, rhs):
    """Shared input, per-replica kernels: patches times all kernels at once."""
    dn = params["dimension_numbers"]
    kernels = jnp.transpose(rhs, (0, *(d + 1 for d in dn.rhs_spec)))  # (M, O, I, *K)
    rank = kernels.ndim - 3
    patches = _patches(params, lhs, kernels.shape[3:])
    window, out = "abcdefgh"[:rank], "pqrstuvw"[:rank]
    result = jnp.einsum(
        f"nc{window}{out},moc{window}->mno{out}",
        patches,
        kernels,
        precision=params["precision"],
        preferred_element_type=params["preferred_element_type"],
    )  # (M, N, O, *out), canonical order
    to_out = sorted(range(len(dn.out_spec)), key=lambda j: dn.out_spec[j])
    return jnp.transpose(result, (0, *(j + 1 for j in to_out)))


def _patch_elements(params, lhs, rhs) -> int:
    """Elements of the patch tensor ``_conv_patches`` would build."""
    dn = params["dimension_numbers"]
    window = [rhs.shape[1 + d] for d in dn.rhs_spec[2:]]
    spatial = [lhs.shape[d] for d in dn.lhs_spec[2:]]
    out = _out_spatial(params, spatial, window)
    n, c = lhs.shape[dn.lhs_spec[0]], lhs.shape[dn.lhs_spec[1]]
    return n * c * math.prod(window) * math.prod(out)


def _conv_rule(prim, params, num, batched, args, formulation):
    lhs_b, rhs_b = batched
    lhs, rhs = args
    if params["batch_group_count"] == 1:
        if not lhs_b and rhs_b and params["feature_group_count"] == 1:
            if (
                formulation == "patches"
                and _patch_elements(params, lhs, rhs) <= _MAX_PATCH_ELEMENTS
            ):
                return _conv_patches(params, num, lhs, rhs)
            return _conv_shared_input(params, num, lhs, rhs)
        if lhs_b and not rhs_b:
            return _conv_shared_kernel(params, num, lhs, rhs)
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
        return _CHOOSERS[name](_windows(operand, window), axis=-1)
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
    **dict.fromkeys(WINDOW_PRIMITIVES, _window_rule),
}


def _batched_primitive(eqn: Any, formulation: str) -> Callable:
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


# --------------------------------------------------------------------------
# The jaxpr rewrite.


def _subjaxprs(params: Mapping[str, Any]) -> list[jex_core.Jaxpr]:
    found = []
    for value in params.values():
        values = value if isinstance(value, tuple | list) else (value,)
        for v in values:
            if isinstance(v, jex_core.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jex_core.Jaxpr):
                found.append(v)
    return found


def _contains(jaxpr: jex_core.Jaxpr, names: frozenset[str]) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names:
            return True
        if any(_contains(sub, names) for sub in _subjaxprs(eqn.params)):
            return True
    return False


# Call-like primitives whose body can be inlined without changing semantics.
_INLINE = frozenset({"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint"})


def _bind(eqn: Any, invals: Sequence) -> Any:
    """Binds an equation's primitive to new operands, as ``jax.core.eval_jaxpr``.

    ``Primitive.get_bind_params`` returns the bind parameters in new JAX and a
    pair ``(subfuns, params)`` in older JAX (0.4.30, 0.6.2 and 0.8.3 were
    measured; not 0.9.2), where the sub-functions (a call primitive's body)
    come before the operands.
    """
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(bind_params, tuple | list):
        subfuns, bind_params = bind_params
        return eqn.primitive.bind(*subfuns, *invals, **bind_params)
    return eqn.primitive.bind(*invals, **bind_params)


def _eval(jaxpr: jex_core.Jaxpr, consts: Sequence, args: Sequence, rules) -> list:
    """Evaluates ``jaxpr`` with chosen primitives routed through custom_vmap."""
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    names = frozenset(rules)
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in rules:
            outs = _batched_primitive(eqn, rules[name])(*invals)
        elif name in _INLINE and _contains(_subjaxprs(eqn.params)[0], names):
            closed = eqn.params["jaxpr"]
            sub = closed.jaxpr if isinstance(closed, jex_core.ClosedJaxpr) else closed
            sub_consts = (
                closed.consts if isinstance(closed, jex_core.ClosedJaxpr) else []
            )
            outs = _eval(sub, sub_consts, invals, rules)
        else:
            outs = _bind(eqn, invals)
        if eqn.primitive.multiple_results:
            for v, x in zip(eqn.outvars, outs, strict=True):
                env[v] = x
        else:
            env[eqn.outvars[0]] = outs
    return [read(v) for v in jaxpr.outvars]


def _has_batched_product(jaxpr: jex_core.Jaxpr) -> bool:
    """Whether a ``dot_general`` with batch dimensions (attention's) is used.

    vmap adds the replica axis as one more batch dimension, and XLA:CPU runs
    such products far slower than M of the single-replica ones.
    """
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (_, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
            if lhs_batch:
                return True
        if any(_has_batched_product(sub) for sub in _subjaxprs(eqn.params)):
            return True
    return False


def applied_rules(
    policy: str | Policy, jaxpr: jex_core.Jaxpr, backend: str | None = None
) -> dict[str, str]:
    """The formulations :func:`replica_vmap` applies to a function, by its jaxpr.

    Args:
        policy: as for :func:`replica_vmap`.
        jaxpr: the single-replica function's jaxpr (``jax.make_jaxpr(f)(...).jaxpr``).
        backend: backend for ``"auto"``; the default backend if None.

    Returns:
        ``{}`` for plain ``jax.vmap``; ``{"*": "sequential"}`` for the
        single-replica program in a loop over replicas; otherwise the
        policy's formulations of the primitives the jaxpr uses. Two policies
        with equal results compile the same program for this function.
    """
    rules = resolve_policy(policy, backend)
    if rules == POLICIES[SEQUENTIAL]:
        return rules
    applied = {
        name: formulation
        for name, formulation in rules.items()
        if _contains(jaxpr, frozenset({name}))
    }
    if (
        not applied
        and policy == "auto"
        and _auto_otherwise(backend) == SEQUENTIAL
        and _has_batched_product(jaxpr)
    ):
        # Nothing to reformulate but batched matrix products (attention): on
        # one CPU the single-replica program in a loop is faster than vmap.
        return dict(POLICIES[SEQUENTIAL])
    return applied


def _normalised_axes(in_axes: Any, args: tuple) -> tuple:
    axes = in_axes if isinstance(in_axes, tuple | list) else (in_axes,) * len(args)
    if any(a not in (0, None) for a in axes):
        raise ValueError("replica_vmap takes in_axes of 0 or None per argument")
    return tuple(axes)


def _sequential(fun: Callable, in_axes: Any) -> Callable:
    """``fun`` over the replicas one after another: a ``lax.map`` in one program.

    The loop body is the single-replica program, compiled once, so each
    replica runs the kernels a Python loop over replicas would, without its M
    dispatches, and one replica's activations live at a time.
    """

    @functools.wraps(fun)
    def mapped(*args):
        axes = _normalised_axes(in_axes, args)
        if not any(
            jax.tree.leaves(a) for a, axis in zip(args, axes, strict=True) if axis == 0
        ):
            raise ValueError("replica_vmap needs at least one argument with axis 0")
        per_replica = [
            a if axis == 0 else None for a, axis in zip(args, axes, strict=True)
        ]
        shared = [None if axis == 0 else a for a, axis in zip(args, axes, strict=True)]

        def one(sliced):
            return fun(*(
                mine if axis == 0 else common
                for mine, common, axis in zip(sliced, shared, axes, strict=True)
            ))  # fmt: skip

        return lax.map(one, per_replica)

    return mapped


class RewriteFallbackWarning(RuntimeWarning):
    """:func:`replica_vmap` fell back to plain ``jax.vmap`` (slower on CPU)."""


_warned: set = set()


def _warn_fallback(fun: Callable, rules: Mapping[str, str], error: Exception) -> None:
    """Warns once per function name and policy that the rewrite fell back."""
    while isinstance(fun, functools.partial):
        fun = fun.func
    name = getattr(fun, "__qualname__", None) or type(fun).__qualname__
    key = (name, tuple(sorted(rules.items())))
    if key in _warned:
        return
    _warned.add(key)
    warn(
        f"tempering.fast.replica_vmap could not rewrite {name} for policy "
        f"{dict(rules)} under jax {jax.__version__} "
        f"({type(error).__name__}: {error}); using plain jax.vmap instead: the "
        "same results, possibly slower (set vectorize='vmap' to silence this).",
        RewriteFallbackWarning,
    )


def replica_vmap(
    fun: Callable,
    in_axes: Any = 0,
    *,
    policy: str | Policy = "auto",
) -> Callable:
    """``jax.vmap(fun, in_axes)`` with the per-primitive formulations of ``policy``.

    The mapped axis is the replica axis; it must be axis 0 (or None) and the
    outputs carry it at axis 0, as everywhere in this library.

    Args:
        fun: the single-replica function (may contain ``jax.grad``).
        in_axes: 0 or None per argument (a prefix pytree, as for ``jax.vmap``).
        policy: ``"auto"`` (fastest measured for the backend, see the module
            docstring), ``"vmap"`` (plain
            ``jax.vmap``), ``"unroll"``, ``"map"``, ``"patches"``,
            ``"sequential"``, ``"fold"``, ``"unroll+fold"``,
            ``"patches+fold"``, ``"reshape"``, ``"patches+reshape"``, or a
            mapping from primitive name to formulation.

    Returns:
        The vectorised function; numerically equal to ``jax.vmap(fun, in_axes)``
        up to float reassociation. Where the jaxpr rewrite fails while tracing
        (JAX internals it does not know, a primitive it cannot re-bind), the
        function is plain ``jax.vmap(fun, in_axes)`` and a
        :class:`RewriteFallbackWarning` is issued once per function and policy.

    Example:
        >>> step = replica_vmap(single_step, in_axes=(0, 0, None), policy="unroll")
    """
    rules = resolve_policy(policy)
    if not rules:
        return jax.vmap(fun, in_axes=in_axes)
    if rules == POLICIES[SEQUENTIAL]:
        return _sequential(fun, in_axes)

    @functools.wraps(fun)
    def vectorised(*args):
        axes = _normalised_axes(in_axes, args)
        try:
            return rewritten_vmap(axes, args)
        except Exception as error:
            # The rewrite relies on JAX internals (jaxpr equations, bind params,
            # custom_vmap); where it meets ones it does not know, or a primitive
            # it cannot re-bind, plain jax.vmap computes the same function. An
            # error of ``fun`` itself is raised again by jax.vmap, unwarned.
            outs = jax.vmap(fun, in_axes=in_axes)(*args)
            _warn_fallback(fun, rules, error)
            return outs

    def rewritten_vmap(axes, args):
        flat_axes = [
            axis
            for arg, axis in zip(args, axes, strict=True)
            for _ in jax.tree.leaves(arg)
        ]
        flat_args, in_tree = jax.tree.flatten(args)
        single = [
            jax.ShapeDtypeStruct(x.shape[1:] if a == 0 else x.shape, x.dtype)
            for x, a in zip(flat_args, flat_axes, strict=True)
        ]

        def flat_fun(*flat):
            return fun(*jax.tree.unflatten(in_tree, flat))

        closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*single)
        applied = applied_rules(policy, closed.jaxpr)
        if not applied:
            return jax.vmap(fun, in_axes=in_axes)(*args)
        if applied == POLICIES[SEQUENTIAL]:
            return _sequential(fun, in_axes)(*args)
        out_tree = jax.tree.structure(out_shape)

        def rewritten(*flat):
            return _eval(closed.jaxpr, closed.consts, flat, applied)

        outs = jax.vmap(rewritten, in_axes=flat_axes)(*flat_args)
        return jax.tree.unflatten(out_tree, outs)

    return vectorised
