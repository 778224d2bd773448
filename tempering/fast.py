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
  the same merges for one-sided operands. Convolutions inside a loop (here
  and under ``"sequential"``) are written in the NHWC / HWIO layout: XLA:CPU
  runs any other layout there several times slower.
- ``"patches"``: a convolution whose input is shared by all replicas (the
  first layer with a shared batch, forward and kernel gradient) becomes one
  patch matrix, built once by one gather, times every replica's kernel: a single
  matrix product with M times the output features. The first layer has few
  input channels, which XLA:CPU's convolutions handle poorly. A small
  convolution with both operands per replica (at most
  :data:`~tempering.rewrite.MAX_REPLICA_PATCH_ELEMENTS` patch elements a
  replica: a 1-D conv net's layers) becomes patches of every replica's input,
  built by one gather, times its kernels: one batched matrix product, compiled
  once instead of once per replica. Other convolutions are treated as under
  ``"unroll"``.
- ``"broadcast"`` (matrix products, ``dot_general``): a product with one
  operand shared by all replicas (a dense layer on the shared batch, and its
  kernel gradient) copies that operand to every replica and becomes a
  batched product with the replica axis first. JAX's rule folds the replica
  axis into the other operand's free dimensions instead, one large product
  whose per-replica operand and output are transposed in memory around it.
  Products with both operands per replica keep JAX's rule.
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

Every program the rewrite builds, whatever its formulations (and the
single-replica body of ``"sequential"``), draws threefry random bits (dropout
masks) as one flat vector, reshaped: the same bits, since threefry's counters
are each element's row-major index, in a program XLA:CPU compiles two to three
times faster and runs faster (:func:`~tempering.rewrite.flat_random_bits`).
Where :func:`replica_vmap` is plain ``jax.vmap`` (``"vmap"``, ``"auto"`` off
CPU, or a policy naming none of the function's primitives) the bits are drawn
as written. :func:`tempering.create_replicas` draws the initialisers flat on
every backend.

One formulation applies to the whole function rather than to a primitive:

- ``"sequential"``: the single-replica function in a ``lax.map`` over the
  replicas: one program whose loop body is the single-replica program,
  compiled once, so each replica runs the kernels of a Python loop over
  replicas without its M dispatches, and one replica's activations live at a
  time.

A :class:`Policy` maps primitive names to formulations. ``"auto"`` picks, per
backend, what ``experiments/bench_zoo.py`` measured fastest against a user's
hand loop. On CPU: ``"sequential"`` for a deep convolutional network (at
least :data:`DEEP_CONVOLUTIONS` convolutions in its step, as ResNet-20) on a
single device; ``"patches+reshape"`` for another function with convolutions or
window reductions; for one without, ``"sequential"`` where it has batched
matrix products (attention: vmap makes them doubly batched, which XLA:CPU runs
far slower than M ordinary ones), on a single device only (a loop over a
replica axis sharded across devices would serialise it), and ``"broadcast"``
products otherwise (an MLP: plain vmap transposes its first-layer kernel and
gradient around one large product every step, ``experiments/results/bench_zoo.md``).
Elsewhere: plain ``jax.vmap``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

from tempering._caller import warn
from tempering.rewrite import (
    BROADCAST,
    CONV,
    DOT,
    FOLD,
    FORMULATIONS,
    RANDOM_BITS,
    RESHAPE,
    SEQUENTIAL,
    WINDOW_PRIMITIVES,
    batched_primitive,
    canonical_conv,
    flat_random_bits,
)

__all__ = [
    "DEEP_CONVOLUTIONS",
    "FORMULATIONS",
    "POLICIES",
    "WINDOW_PRIMITIVES",
    "Policy",
    "RewriteFallbackWarning",
    "applied_rules",
    "resolve_policy",
    "replica_vmap",
    "single_replica_rewrite",
]


Policy = Mapping[str, str]  # primitive name -> formulation


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
    BROADCAST: {DOT: BROADCAST},
}

# "auto" on CPU (2 cores, jax 0.10.2; experiments/bench_zoo.py, a user's hand
# loop as the reference): grouped convolutions and vmapped max-pooling are the
# cost of a vmapped CNN; convolutions with a shared input are fastest as patches
# times all kernels, the others unrolled, and max-pooling as reshapes. A
# function with none of these primitives but with batched matrix products (an
# attention block) runs fastest as the single-replica program in a loop,
# "sequential", on one device only (a lax.map over a replica axis sharded
# across devices would serialise it); one with only ordinary products (an MLP)
# with the replica axis as the products' batch axis, "broadcast". A deep
# convolutional network (ResNet-20: 62 convolutions in its step) runs fastest
# "sequential" too, once its convolutions are written in the layout XLA:CPU runs
# fast in a loop (5.7 s a step against 7.1 s unrolled and 6.7 s for the hand
# loop, AMD EPYC Zen 4), and compiles once for all replicas (5.6 s against
# 14.7 s): unrolled, each of its convolutions is compiled M times; a LeNet's
# five gain from patches and unrolling (151 against 357 ms in a loop).
_AUTO = {"cpu": "patches+reshape"}
#: Convolutions (forward and backward, in the single-replica step's jaxpr)
#: from which "auto" on one CPU runs the replicas as a loop ("sequential").
DEEP_CONVOLUTIONS = 24
_AUTO_OTHERWISE = {"cpu": SEQUENTIAL}
_AUTO_PRODUCTS = {"cpu": BROADCAST}


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
        ValueError: for an unknown policy name or formulation, ``"fold"``
            or ``"reshape"`` for a primitive outside :data:`WINDOW_PRIMITIVES`,
            or ``"broadcast"`` for another primitive than ``dot_general``.
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
    if not isinstance(policy, Mapping):
        raise TypeError(
            f"vectorize must be 'auto', a policy name of {sorted(POLICIES)} or a "
            f"mapping primitive -> formulation, got {policy!r}"
        )
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
        if formulation == BROADCAST and name != DOT:
            raise ValueError(
                f"formulation {formulation!r} is for matrix products ({DOT!r}), "
                f"not {name!r}"
            )
    return rules


# --------------------------------------------------------------------------
# Batching rules. Each takes the primitive, its params, the replica count, the
# batched flags and the operands (replica axis first where batched) and
# returns the batched output(s), replica axis first.


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


def _equations(jaxpr: jex_core.Jaxpr) -> Iterator[Any]:
    """Every equation of ``jaxpr`` and of its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in _subjaxprs(eqn.params):
            yield from _equations(sub)


def _contains(jaxpr: jex_core.Jaxpr, names: frozenset[str]) -> bool:
    return any(eqn.primitive.name in names for eqn in _equations(jaxpr))


def _draws_with_other_keys(jaxpr: jex_core.Jaxpr) -> bool:
    """Whether ``jaxpr`` draws random bits with keys other than threefry's.

    Drawn in a loop, ``rbg`` / ``unsafe_rbg`` keys give other bits than drawn
    batched: ``"auto"`` does not choose ``"sequential"`` for such a function.
    """
    return any(
        eqn.primitive.name == RANDOM_BITS
        and str(eqn.invars[0].aval.dtype) != "key<fry>"
        for eqn in _equations(jaxpr)
    )


def _count(jaxpr: jex_core.Jaxpr, name: str) -> int:
    """Equations of primitive ``name`` in ``jaxpr`` and its sub-jaxprs."""
    return sum(eqn.primitive.name == name for eqn in _equations(jaxpr))


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


def _eval(
    jaxpr: jex_core.Jaxpr,
    consts: Sequence,
    args: Sequence,
    rules: Mapping[str, str],
    replace: Callable[[Any, str], Callable] = batched_primitive,
) -> list:
    """Evaluates ``jaxpr`` with the primitives ``rules`` names replaced.

    By default each is routed through custom_vmap in its formulation
    (:func:`~tempering.rewrite.batched_primitive`); ``replace(eqn,
    formulation)`` gives another replacement. Random bits are drawn flat
    (:func:`~tempering.rewrite.flat_random_bits`: the same bits, a smaller
    program) whatever the rules.
    """
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    names = frozenset(rules) | {RANDOM_BITS}
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in rules:
            outs = replace(eqn, rules[name])(*invals)
        elif name == RANDOM_BITS:
            outs = flat_random_bits(eqn, *invals)
        elif name in _INLINE and _contains(_subjaxprs(eqn.params)[0], names):
            closed = eqn.params["jaxpr"]
            sub = closed.jaxpr if isinstance(closed, jex_core.ClosedJaxpr) else closed
            sub_consts = (
                closed.consts if isinstance(closed, jex_core.ClosedJaxpr) else []
            )
            outs = _eval(sub, sub_consts, invals, rules, replace)
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
    if (
        policy == "auto"
        and _auto_otherwise(backend) == SEQUENTIAL
        and _count(jaxpr, CONV) >= DEEP_CONVOLUTIONS
    ):
        return dict(POLICIES[SEQUENTIAL])
    applied = {
        name: formulation
        for name, formulation in rules.items()
        if _contains(jaxpr, frozenset({name}))
    }
    if applied or policy != "auto":
        return applied
    if _has_batched_product(jaxpr):
        # Nothing to reformulate but batched matrix products (attention): on
        # one CPU the single-replica program in a loop is faster than vmap.
        if _auto_otherwise(backend) == SEQUENTIAL:
            return dict(POLICIES[SEQUENTIAL])
        return {}
    products = _AUTO_PRODUCTS.get(backend or jax.default_backend())
    if products is None or not _contains(jaxpr, frozenset({DOT})):
        return {}
    return {DOT: products}


def _normalised_axes(in_axes: Any, args: tuple) -> tuple:
    axes = in_axes if isinstance(in_axes, tuple | list) else (in_axes,) * len(args)
    if any(a not in (0, None) for a in axes):
        raise ValueError("replica_vmap takes in_axes of 0 or None per argument")
    return tuple(axes)


def _one_replica(x: Any, axis: int | None) -> jax.ShapeDtypeStruct:
    """One replica's slice of argument ``x`` as traced (its weak type kept).

    A Python scalar or a weakly typed array (``jnp.asarray(0.1)``) stays
    weak, so ``bfloat16 * 0.1`` stays bfloat16, as under ``jax.vmap``.
    """
    shape = np.shape(x)
    shape, dtype = (shape[1:] if axis == 0 else shape), jnp.result_type(x)
    if not _WEAK_TYPED_STRUCTS:  # an older JAX: traced strongly typed
        return jax.ShapeDtypeStruct(shape, dtype)
    weak = bool(getattr(x, "weak_type", isinstance(x, int | float | complex)))
    return jax.ShapeDtypeStruct(shape, dtype, weak_type=weak)


_WEAK_TYPED_STRUCTS = "weak_type" in inspect.signature(jax.ShapeDtypeStruct).parameters


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
            return single(*(
                mine if axis == 0 else common
                for mine, common, axis in zip(sliced, shared, axes, strict=True)
            ))  # fmt: skip

        return lax.map(one, per_replica)

    single = single_replica_rewrite(fun)
    return mapped


def _canonical_conv(eqn: Any, formulation: str) -> Callable:
    del formulation
    return functools.partial(canonical_conv, eqn.params)


def single_replica_rewrite(fun: Callable, convolutions: bool = True) -> Callable:
    """``fun`` (one replica's function) as it runs fastest inside a loop.

    Random bits drawn flat (:func:`~tempering.rewrite.flat_random_bits`),
    and, with ``convolutions``, every convolution in the layout XLA:CPU runs
    fast in a loop: inside a ``while`` body XLA:CPU leaves a convolution in
    the layout it is written in, and runs the kernel-gradient convolutions of
    a step several times slower than the same step outside a loop
    (:func:`~tempering.rewrite.canonical_conv`). The same values. Where the
    rewrite fails, the function as it is, with a
    :class:`RewriteFallbackWarning`.
    """
    rules = {CONV: SEQUENTIAL} if convolutions else {}

    @functools.wraps(fun)
    def rewritten(*args):
        flat_args, in_tree = jax.tree.flatten(args)

        def flat_fun(*flat):
            return fun(*jax.tree.unflatten(in_tree, flat))

        try:
            closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*flat_args)
            if not _contains(closed.jaxpr, frozenset({*rules, RANDOM_BITS})):
                return fun(*args)
            outs = _eval(
                closed.jaxpr, closed.consts, flat_args, rules, replace=_canonical_conv
            )
        except Exception as error:
            outs = fun(*args)
            _warn_fallback(
                fun, rules, error, "the function as written",
                rewriter="single_replica_rewrite",
                silence="filter tempering.fast.RewriteFallbackWarning",
            )  # fmt: skip
            return outs
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return rewritten


class RewriteFallbackWarning(RuntimeWarning):
    """A jaxpr rewrite fell back to the function as written (possibly slower).

    :func:`replica_vmap` falls back to plain ``jax.vmap``,
    :func:`single_replica_rewrite` (the sequential loop's body, the replicas'
    init) to the function as it is; the values are the same.
    """


_warned: set = set()


def _warn_fallback(
    fun: Callable,
    rules: Mapping[str, str],
    error: Exception,
    instead: str = "plain jax.vmap",
    *,
    rewriter: str = "replica_vmap",
    silence: str = "set vectorize='vmap'",
) -> None:
    """Warns once per function name and policy that the rewrite fell back.

    ``rewriter`` names the function of this module that tried, ``silence``
    says how to silence the warning.
    """
    while isinstance(fun, functools.partial):
        fun = fun.func
    name = getattr(fun, "__qualname__", None) or type(fun).__qualname__
    key = (rewriter, name, tuple(sorted(rules.items())))
    if key in _warned:
        return
    _warned.add(key)
    warn(
        f"tempering.fast.{rewriter} could not rewrite {name} for policy "
        f"{dict(rules)} under jax {jax.__version__} "
        f"({type(error).__name__}: {error}); using {instead} instead: the "
        f"same results, possibly slower ({silence} to silence this).",
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
        in_axes: 0 or None: one for every argument, or a tuple of one per
            argument (each applies to the argument's whole pytree).
        policy: ``"auto"`` (fastest measured for the backend, see the module
            docstring), ``"vmap"`` (plain
            ``jax.vmap``), ``"unroll"``, ``"map"``, ``"patches"``,
            ``"sequential"``, ``"fold"``, ``"unroll+fold"``,
            ``"patches+fold"``, ``"reshape"``, ``"patches+reshape"``,
            ``"broadcast"``, or a
            mapping from primitive name to formulation.

    Returns:
        The vectorised function; numerically equal to ``jax.vmap(fun, in_axes)``
        up to float reassociation. Random bits are the same bits, except
        under ``"sequential"`` with ``rbg`` / ``unsafe_rbg`` keys, whose draws
        in a loop (those of a Python loop over the replicas) are not their
        batched draws; threefry keys (JAX's default) draw alike, and
        ``"auto"`` does not choose ``"sequential"`` for a function that draws
        with other keys (it runs it as plain vmap). Where the
        jaxpr rewrite fails while tracing
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
        single = [_one_replica(x, a) for x, a in zip(flat_args, flat_axes, strict=True)]

        def flat_fun(*flat):
            return fun(*jax.tree.unflatten(in_tree, flat))

        closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*single)
        applied = applied_rules(policy, closed.jaxpr)
        if not applied:
            return jax.vmap(fun, in_axes=in_axes)(*args)
        if applied == POLICIES[SEQUENTIAL]:
            if policy == "auto" and _draws_with_other_keys(closed.jaxpr):
                return jax.vmap(fun, in_axes=in_axes)(*args)  # vmap's bits
            return _sequential(fun, in_axes)(*args)
        out_tree = jax.tree.structure(out_shape)

        def rewritten(*flat):
            return _eval(closed.jaxpr, closed.consts, flat, applied)

        outs = jax.vmap(rewritten, in_axes=flat_axes)(*flat_args)
        return jax.tree.unflatten(out_tree, outs)

    return vectorised
