"""The flax.nnx frontend: an ``nnx.Module`` split into a graph and its state.

A module is split once (``nnx.split``) into its graph definition and its state:
trainable ``nnx.Param`` s (the replicas' params), random-number state
(``nnx.RngState``: replaced on every call by keys the engine draws, so a run is
a function of its key) and everything else (``nnx.BatchStat`` s and other
variables: the replicas' ``stats``). The graph is split twice, once after
``module.train()`` and once after ``module.eval()``: the fused step runs the
training graph and every evaluation the inference graph (no dropout, running
BatchNorm averages), however the model switches modes. When the model's
``__call__`` also takes a train keyword (``train_kwarg``), it is passed.

A laddered dropout rate is traced: ``nnx.Dropout`` stores its rate as a
static attribute, so use :class:`Dropout` here, whose call takes the rate::

    class CNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
            self.drop = tempering.frontends.nnx.Dropout(rngs=rngs)
            self.out = nnx.Linear(8 * 28 * 28, 10, rngs=rngs)

        def __call__(self, x, dropout_rate=0.0):
            x = self.drop(nnx.relu(self.conv(x)), dropout_rate)
            return self.out(x.reshape(x.shape[0], -1))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from tempering.frontends._compared import ComparedByContent
from tempering.layers import dropout, is_static_zero

# The flax.nnx this frontend is written for (tested with flax 0.12): older ones
# lack some of these, and fail deep inside a call.
NEEDS = "flax >= 0.12 (nnx.data, nnx.RngStream.fork)"
try:
    from flax import nnx
except ImportError as error:  # a flax before nnx
    raise ImportError(
        f"tempering's flax.nnx frontend needs {NEEDS}: pip install -U flax"
    ) from error
if not (hasattr(nnx, "data") and hasattr(nnx.RngStream, "fork")):
    raise ImportError(
        f"tempering's flax.nnx frontend needs {NEEDS}; this is flax "
        f"{getattr(__import__('flax'), '__version__', '?')}: pip install -U flax"
    )

__all__ = ["Dropout", "Nnx"]


class Dropout(nnx.Module):
    """Dropout whose rate is a call argument (may be traced, per replica).

    Switched off by ``module.eval()`` (``deterministic=True``) like
    ``nnx.Dropout``; draws its masks from the ``"dropout"`` stream of the
    ``rngs`` it was built with, or from ``rngs`` given at call time.
    """

    def __init__(
        self,
        *,
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ):
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, nnx.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, nnx.RngStream):
            self.rngs = rngs.fork()
        else:
            self.rngs = nnx.data(None)

    def __call__(
        self,
        x: jax.Array,
        rate: jax.Array | float,
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ) -> jax.Array:
        """Inverted dropout of ``x`` with drop probability ``rate`` in ``[0, 1)``.

        The Python number 0 returns ``x`` and draws no key.
        """
        off = deterministic if deterministic is not None else self.deterministic
        if off or is_static_zero(rate):
            return x
        source = rngs if rngs is not None else self.rngs
        if isinstance(source, nnx.Rngs):
            key = source[self.rng_collection]()
        elif isinstance(source, nnx.RngStream):
            key = source()
        elif source is None:
            raise ValueError(
                "tempering.frontends.nnx.Dropout needs rngs: build it with "
                "Dropout(rngs=rngs) or pass rngs= when calling it"
            )
        else:
            key = source
        return dropout(key, x, rate)

    def set_view(self, deterministic: bool | None = None, **kwargs: Any) -> dict:
        """``module.eval()`` / ``train()`` / ``nnx.view`` set ``deterministic``."""
        if deterministic is not None:
            self.deterministic = deterministic
        return kwargs


# Variables a call sows (``self.sow``, ``nnx.Intermediate``) or perturbs: new at
# every call, never the replica's state.
_SOWN = (nnx.Intermediate, getattr(nnx, "Perturbation", nnx.Intermediate))


def _split(module: nnx.Module) -> tuple[Any, Any, Any, Any]:
    """``(graph, params, rng_state, stats)`` of a module."""
    parts: Any = nnx.split(module, nnx.Param, nnx.RngState, ...)
    return parts[0], parts[1], parts[2], parts[3]


def _without_sown(module: nnx.Module) -> nnx.Module:
    """A copy without what earlier calls sowed (the user's module left as it is).

    Sown values are no state to carry: a trial call of the user's would make
    them per-replica state, which every training call then drops.
    """
    copy = nnx.merge(*nnx.split(module))
    nnx.pop(copy, _SOWN)
    return copy


def _mode_graphs(module: nnx.Module) -> tuple[Any, Any]:
    """The graph in training mode and in inference mode (``module`` left as it is)."""
    copy = nnx.merge(*nnx.split(module))  # a new graph over the same arrays
    copy.train()
    train_graph = _split(copy)[0]
    copy.eval()
    return train_graph, _split(copy)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Nnx(ComparedByContent):
    """An nnx module as the engine's model (:mod:`tempering.frontends`).

    Compared by identity while it builds the replicas, by what the engine's
    programs depend on once in their state (:class:`ComparedByContent`).
    """

    train_graph: Any
    eval_graph: Any
    rng_state: Any  # the module's RngState (template: structure, key types)
    build: Callable[[jax.Array], nnx.Module] | None  # None: an instance's weights
    start: Any  # (params, stats) of an instance, the common start; None for a builder
    module_type: type  # the module's class
    train_kwarg: str | None
    name: str
    built_leaves: frozenset[str] = frozenset()  # a builder's state, built eagerly
    functions: str = ""  # the functions its modules hold (an activation), by code
    forwards_train: bool = False  # a **kwargs call that reads the default train_kwarg
    shared: bool = False  # compared by content (the replicas' copy), not identity
    kind = "nnx"
    dropout_fix = (
        "nnx.Dropout stores its rate as a static attribute; use "
        "tempering.frontends.nnx.Dropout(rngs=rngs)(x, rate)"
    )

    @functools.cached_property
    def _compared(self) -> tuple:
        """What the engine's programs depend on (not the weights or the builder)."""
        leaves = jax.tree.leaves(self.rng_state)
        rng = (jax.tree.structure(self.rng_state),
               tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves))  # fmt: skip
        return (self.train_graph, self.eval_graph, self.module_type,
                self.train_kwarg, self.forwards_train, self.name, self.built_leaves,
                self.functions, rng)  # fmt: skip

    @classmethod
    def from_module(cls, module: nnx.Module, train_kwarg: str | None) -> Nnx:
        """An instance: every replica starts from its weights."""
        module = _without_sown(module)
        train_graph, eval_graph = _mode_graphs(module)
        _, params, rng_state, stats = _split(module)
        return cls(
            train_graph, eval_graph, rng_state, None, (params, stats),
            type(module), train_kwarg, type(module).__name__,
            functions=_functions_held(module),
        )  # fmt: skip

    @classmethod
    def from_builder(
        cls, build: Callable[..., nnx.Module], train_kwarg: str | None
    ) -> Nnx:
        """A builder ``build(rngs)``: every replica draws its own initial weights."""
        from tempering.frontends import by_keyword

        build = by_keyword(build)
        module = build(nnx.Rngs(0))
        if not isinstance(module, nnx.Module):
            raise TypeError(
                f"model: build(rngs) must return an nnx.Module, got {type(module).__name__}"
            )
        module = _without_sown(module)
        train_graph, eval_graph = _mode_graphs(module)
        _, params, rng_state, stats = _split(module)
        return cls(
            train_graph, eval_graph, rng_state, lambda key: build(nnx.Rngs(key)), None,
            type(module), train_kwarg, type(module).__name__,
            _leaf_names(params, stats), _functions_held(module),
        )  # fmt: skip

    def keywords(self) -> tuple[set[str], bool, dict[str, Any]]:
        """Keywords of the module class's ``__call__``."""
        from tempering.frontends import call_keywords

        names, var_kw, defaults = call_keywords(self.module_type.__call__)
        return names - {"self"}, var_kw, defaults

    def init(self, key: jax.Array, sample_input: jax.Array, inputs: dict) -> Any:
        """``(params, stats)``: built from ``key``, or the instance's."""
        del sample_input, inputs
        if self.build is None:
            return self.start
        _, params, _, stats = _split(self.build(key))
        lost = sorted(self.built_leaves - _leaf_names(params, stats))
        if lost:  # nnx keeps a traced plain-array attribute as static
            raise TypeError(
                f"model: {self.name} holds plain arrays at {lost}, which nnx keeps "
                "as state when the module is built eagerly but not when it is "
                "built under a trace, as each replica is here (inside one "
                "program). Wrap each in nnx.data(...) or an nnx.Variable (e.g. "
                "nnx.BatchStat, or nnx.Param to train it), or pass a built "
                "instance (every replica then starts from its weights)"
            )
        return params, stats

    def _rngs(self, key: jax.Array | None) -> Any:
        """Fresh random-number state: every stream's key drawn from ``key``."""
        leaves, treedef = jax.tree.flatten(self.rng_state)
        if not leaves:
            return self.rng_state
        keys = jax.random.split(jax.random.key(0) if key is None else key, len(leaves))
        fresh = [
            _keys_like(keys[i], leaf)
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
            else jnp.zeros_like(leaf)
            for i, leaf in enumerate(leaves)
        ]  # fmt: skip
        return jax.tree.unflatten(treedef, fresh)

    def _kwargs(self, train: bool, inputs: dict) -> dict:
        from tempering.frontends import passes_train_kwarg

        kwargs = dict(inputs)
        names, var_kw, _ = self.keywords()
        if passes_train_kwarg(self.train_kwarg, names, var_kw, self.forwards_train):
            kwargs[self.train_kwarg] = train
        return kwargs

    def apply(
        self, params: Any, stats: Any, x: jax.Array, *, train: bool,
        key: jax.Array | None, inputs: dict,
    ) -> tuple[jax.Array, Any]:  # fmt: skip
        """``(outputs, new_stats)`` through the training or the inference graph."""
        graph = self.train_graph if train else self.eval_graph
        module = nnx.merge(graph, params, self._rngs(key), stats, copy=True)
        outputs = module(x, **self._kwargs(train, inputs))
        if not train:
            return outputs, stats
        nnx.pop(module, _SOWN)  # what the call sowed is not state to carry
        return outputs, _split(module)[3]

    def export(self, params: Any, stats: Any, index: int = 0) -> nnx.Module:
        """Replica ``index`` as an ``nnx.Module`` in inference mode.

        ``.train()`` trains it; its random streams are its own (drawn from
        ``index``), so exported replicas draw different dropout masks.
        """
        # fresh arrays: exported modules share no Variable (an RNG count) with
        # each other or with the module the replicas were made from
        rngs = self._rngs(jax.random.fold_in(jax.random.key(0), index))
        return nnx.merge(self.eval_graph, params, rngs, stats, copy=True)

    def describe(self) -> str:
        """The graph (structure and static attributes) and the class's code."""
        from tempering.fingerprints import code_of_class

        graph = _graph_text(self.train_graph)
        text = f"nnx:{self.name}|{graph}|{code_of_class(self.module_type)}"
        return f"{text}|{self.functions}" if self.functions else text


def _functions_held(module: nnx.Module) -> str:
    """The functions ``module``'s modules hold; the graph's repr shows addresses."""
    from tempering.fingerprints import describe_functions_held

    def attributes(node: Any) -> dict[str, Any] | None:
        if not isinstance(node, nnx.Module):
            return None
        held = {
            name: value
            for name, value in vars(node).items()
            if not isinstance(value, nnx.Variable | nnx.Rngs | nnx.RngStream)
        }
        if isinstance(node, Sequence):  # nnx.List
            held.update((str(index), value) for index, value in enumerate(node))
        return held

    return describe_functions_held(module, attributes)


def _keys_like(key: jax.Array, leaf: jax.Array) -> jax.Array:
    """Keys of ``leaf``'s shape drawn from ``key``: ``key`` itself for a scalar.

    Streams stacked by ``nnx.split_rngs`` (a scanned stack of layers, one key
    per layer) or ``Rngs.fork(split=n)`` hold a key array; each of its keys
    must be its own, or every layer would draw the same masks.
    """
    if leaf.ndim == 0:
        return key
    return jax.random.split(key, math.prod(leaf.shape)).reshape(leaf.shape)


def _leaf_names(params: Any, stats: Any) -> frozenset[str]:
    """The attribute paths of a module's state leaves, e.g. ``"lin.kernel"``."""

    def name(path: Any) -> str:
        return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)

    return frozenset(
        name(path)
        for tree in (params, stats)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    )


def _graph_text(graph: Any) -> str:
    from tempering.fingerprints import without_addresses

    return without_addresses(repr(graph))
