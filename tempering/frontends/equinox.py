"""The Equinox frontend: a module partitioned into its arrays and the rest.

``eqx.partition(model, eqx.is_inexact_array)`` gives the replicas' params (the
floating-point arrays) and the static rest; a model with BatchNorm comes with
its ``eqx.nn.State`` (``eqx.nn.make_with_state(Model)(...)``), the replicas'
``stats``. Equinox modules are called on one example, so the engine vmaps the
call over the batch (``axis_name="batch"``, which ``eqx.nn.BatchNorm`` needs),
with one dropout key per example. Training runs ``eqx.nn.inference_mode(model,
False)``, every evaluation ``inference_mode(model, True)``; when the call takes
a train keyword (``train_kwarg``), it is passed too.

The call is ``model(x, *, key=..., **inputs)``, or ``model(x, state, *,
key=..., **inputs)`` with a state. A laddered dropout rate is traced:
``eqx.nn.Dropout`` fixes its rate at construction, so use :class:`Dropout`,
whose call takes the rate.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from tempering._caller import warn
from tempering.frontends._compared import ComparedByContent
from tempering.layers import dropout, is_static_zero

try:
    import equinox as eqx
except ImportError as error:
    raise ImportError(
        'tempering.frontends.equinox needs Equinox: pip install "tempering[equinox]"'
    ) from error

__all__ = ["Dropout", "Equinox"]


class Dropout(eqx.Module):
    """Dropout whose rate is a call argument (may be traced, per replica).

    ``eqx.nn.inference_mode`` switches it off, like ``eqx.nn.Dropout``.
    """

    inference: bool = False

    def __call__(
        self, x: jax.Array, rate: jax.Array | float, *, key: jax.Array | None = None,
        inference: bool | None = None,
    ) -> jax.Array:  # fmt: skip
        """Inverted dropout of ``x`` with drop probability ``rate`` in ``[0, 1)``.

        The Python number 0 returns ``x`` and needs no key.
        """
        off = inference if inference is not None else self.inference
        if off or is_static_zero(rate):
            return x
        if key is None:
            raise ValueError(
                "tempering.frontends.equinox.Dropout needs key= in training mode"
            )
        return dropout(key, x, rate)


def _parts(built: Any) -> tuple[Any, Any]:
    """``(model, state or None)`` of what a builder returned."""
    if isinstance(built, tuple):
        return built[0], built[1]
    return built, None


def _built_static(build: Callable, key: jax.Array) -> tuple[Any, Any, Any]:
    """``(model, state, static)`` of ``build(key)``: static, all but its float arrays."""
    model, state = _parts(build(key))
    return model, state, eqx.partition(model, eqx.is_inexact_array)[1]


def _check_static_arrays_keyless(build: Callable, static: Any, name: str) -> None:
    """A ValueError when the builder draws non-float arrays from its key.

    Only the float arrays are per replica (each replica's from its own key);
    the rest is taken once, from ``build(key(0))``, for every replica. A second
    build (only for a model that has such arrays) must give the same ones.
    """
    arrays = [leaf for leaf in jax.tree.leaves(static) if eqx.is_array(leaf)]
    if not arrays:
        return
    other = _built_static(build, jax.random.key(1))[2]
    others = [leaf for leaf in jax.tree.leaves(other) if eqx.is_array(leaf)]
    same = len(arrays) == len(others) and all(
        np.array_equal(a, b) for a, b in zip(arrays, others, strict=True)
    )
    if not same:
        raise ValueError(
            f"model: build(key) of {name} makes arrays other than floats (integer "
            "or boolean, e.g. a random permutation) that depend on its key; only "
            "float arrays are drawn per replica, the others would be build(key(0))'s "
            "in every replica. Derive them without the key, make them float "
            "arrays, or pass a built model instance (a common start)"
        )


def _check_state_given(model: Any, state: Any, name: str) -> None:
    """A TypeError for a builder of a module with state that returns no state."""

    def is_index(node: Any) -> bool:
        return isinstance(node, eqx.nn.StateIndex)

    holds = any(map(is_index, jax.tree.leaves(model, is_leaf=is_index)))
    if holds and state is None:
        raise TypeError(
            f"model: build(key) of {name} returns a module with state (an "
            "eqx.nn.BatchNorm or another eqx.nn.StateIndex) but no eqx.nn.State; "
            f"build it with eqx.nn.make_with_state, e.g. pass "
            f"eqx.nn.make_with_state({name}) as the model, or return "
            "(model, state) from the builder"
        )


def _shapes(tree: Any) -> tuple[tuple[tuple[int, ...], Any], ...]:
    """``(shape, dtype)`` of each leaf of ``tree``."""
    return tuple((tuple(leaf.shape), leaf.dtype) for leaf in jax.tree.leaves(tree))


def _into(template: Any, shapes: tuple, tree: Any, what: str, name: str) -> Any:
    """``tree``'s leaves in the template's structure (its static metadata).

    Each replica's build has static metadata of its own (a lambda held in a
    static field, the markers of an ``eqx.nn.State`` made by hand), which
    ``eqx.combine`` with the template's static part would refuse.
    """
    if _shapes(tree) != shapes:
        raise ValueError(
            f"model: build(key) of {name} builds {what} whose arrays (number, "
            "shapes or dtypes) depend on the key; every replica must have the "
            "same arrays. Derive the architecture without the key, or pass a "
            "built model instance (a common start)"
        )
    return jax.tree.unflatten(template, jax.tree.leaves(tree))


def _by_value(leaf: Any) -> Any:
    """A leaf as a hashable key: an array by its shape, dtype and bytes.

    An object that cannot be hashed counts by its identity (equal to no other).
    """
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key
    ):  # a typed key: its implementation (the dtype) and its data
        data = np.asarray(jax.random.key_data(leaf))
        return ("key", str(leaf.dtype), data.shape, data.tobytes())
    if isinstance(leaf, np.ndarray | jax.Array):
        array = np.asarray(leaf)
        return ("array", array.shape, str(array.dtype), array.tobytes())
    try:
        hash(leaf)
    except TypeError:
        return ("object", id(leaf))
    return leaf


def _warn_mixed_modes(model: Any) -> None:
    """Warns when some layers were built in inference mode and others not.

    A whole model in inference mode (``tp.replica``'s, ``eqx.nn.inference_mode``'s)
    is one to train again; a mix is a layer frozen on purpose (a BatchNorm for
    fine-tuning) beside training ones.

    Training runs ``eqx.nn.inference_mode(model, False)``: a layer built
    frozen (a BatchNorm with ``inference=True`` for fine-tuning) would train.
    """
    with_flag = jax.tree_util.tree_flatten_with_path(
        model, is_leaf=lambda leaf: hasattr(leaf, "inference")
    )[0]
    modes = {
        jax.tree_util.keystr(path): leaf.inference
        for path, leaf in with_flag
        if isinstance(getattr(leaf, "inference", None), bool)
    }
    frozen = sorted(path for path, inference in modes.items() if inference)
    if frozen and len(frozen) < len(modes):
        warn(
            f"{type(model).__name__} was built with layers {frozen[:4]} in "
            "inference mode and others not; training switches every layer to "
            "training mode "
            "(eqx.nn.inference_mode(model, False)), so those train too. To keep "
            "a layer frozen, call it as eqx.nn.inference_mode(self.layer)(...) "
            "inside __call__",
            UserWarning,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Equinox(ComparedByContent):
    """An Equinox module as the engine's model (:mod:`tempering.frontends`).

    Compared by identity while it builds the replicas, by what the engine's
    programs depend on once in their state (:class:`ComparedByContent`).
    """

    static: Any  # the module without its inexact arrays
    build: Callable[[jax.Array], Any] | None  # None: an instance's weights
    start: Any  # (params, stats) of an instance; None for a builder
    stateful: bool  # the call takes and returns an eqx.nn.State
    train_kwarg: str | None
    name: str
    # a builder's params and state structures from the one build, and their
    # leaves' (shape, dtype): every replica's build is put into them
    templates: tuple[Any, Any] = (None, None)
    shapes: tuple[tuple, tuple] = ((), ())
    forwards_train: bool = False  # a **kwargs call that reads the default train_kwarg
    shared: bool = False  # compared by content (the replicas' copy), not identity
    kind = "equinox"
    dropout_fix = (
        "eqx.nn.Dropout fixes its rate at construction; use "
        "tempering.frontends.equinox.Dropout()(x, rate, key=key)"
    )

    @functools.cached_property
    def _compared(self) -> tuple:
        """What the engine's programs depend on (not the weights or the builder).

        The static module: its structure, and its leaves by value.
        """
        leaves, structure = jax.tree.flatten(self.static)
        # a PyTreeDef compared with None raises: a template is tagged instead
        templates = tuple(() if t is None else ("tree", t) for t in self.templates)
        return (structure, tuple(map(_by_value, leaves)), self.stateful,
                self.train_kwarg, self.forwards_train, self.name, templates,
                self.shapes)  # fmt: skip

    @classmethod
    def from_module(cls, built: Any, train_kwarg: str | None) -> Equinox:
        """An instance (or ``(module, state)``): every replica starts from its weights."""
        model, state = _parts(built)
        _warn_mixed_modes(model)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        stats = {} if state is None else state
        return cls(static, None, (params, stats), state is not None, train_kwarg,
                   type(model).__name__)  # fmt: skip

    @classmethod
    def from_builder(
        cls, build: Callable[[jax.Array], Any], train_kwarg: str | None
    ) -> Equinox:
        """A builder ``build(key)``: every replica draws its own initial weights."""
        model, state, static = _built_static(build, jax.random.key(0))  # concrete
        name = type(model).__name__
        _warn_mixed_modes(model)
        _check_state_given(model, state, name)
        _check_static_arrays_keyless(build, static, name)
        params = eqx.partition(model, eqx.is_inexact_array)[0]
        stats = {} if state is None else state
        templates = (jax.tree.structure(params), jax.tree.structure(stats))
        return cls(static, build, None, state is not None, train_kwarg, name,
                   templates, (_shapes(params), _shapes(stats)))  # fmt: skip

    def keywords(self) -> tuple[set[str], bool, dict[str, Any]]:
        """Keywords of the module's ``__call__`` (besides the key)."""
        from tempering.frontends import call_keywords

        names, var_kw, defaults = call_keywords(type(self.static).__call__)
        return names - {"self", "key"}, var_kw, defaults

    def _takes_key(self) -> bool:
        from tempering.frontends import call_keywords

        names, var_kw, _ = call_keywords(type(self.static).__call__)
        return "key" in names or var_kw

    def init(self, key: jax.Array, sample_input: jax.Array, inputs: dict) -> Any:
        """``(params, stats)``: built from ``key``, or the instance's."""
        del sample_input, inputs
        if self.build is None:
            return self.start
        model, state = _parts(self.build(key))
        params = eqx.partition(model, eqx.is_inexact_array)[0]
        stats = {} if state is None else state
        return (
            _into(self.templates[0], self.shapes[0], params, "a module", self.name),
            _into(self.templates[1], self.shapes[1], stats, "a state", self.name),
        )

    def apply(
        self, params: Any, stats: Any, x: jax.Array, *, train: bool,
        key: jax.Array | None, inputs: dict,
    ) -> tuple[jax.Array, Any]:  # fmt: skip
        """``(outputs, new_stats)``: the call vmapped over the batch's examples."""
        from tempering.frontends import passes_train_kwarg

        model = eqx.nn.inference_mode(eqx.combine(params, self.static), not train)
        kwargs = dict(inputs)
        names, var_kw, _ = self.keywords()
        if passes_train_kwarg(self.train_kwarg, names, var_kw, self.forwards_train):
            kwargs[self.train_kwarg] = train
        takes_key = self._takes_key()
        keys = jax.random.split(jax.random.key(0) if key is None else key, x.shape[0])

        def one(example, example_key, state):
            # No key in inference, as Equinox's own calls: randomness a key
            # gates (noise, a dropout built in the call) is off.
            extra = {"key": example_key if train else None} if takes_key else {}
            if self.stateful:
                return model(example, state, **extra, **kwargs)
            return model(example, **extra, **kwargs), state

        outputs, new_stats = jax.vmap(
            one, in_axes=(0, 0, None), out_axes=(0, None), axis_name="batch"
        )(x, keys, stats)
        return outputs, (new_stats if train else stats)

    def export(self, params: Any, stats: Any, index: int = 0) -> Any:
        """One replica as an Equinox module in inference mode.

        ``(module, state)`` for a model with a state;
        ``eqx.nn.inference_mode(model, False)`` trains it again.
        """
        del index  # its randomness is the key each call is given
        model = eqx.nn.inference_mode(eqx.combine(params, self.static), True)
        return (model, stats) if self.stateful else model

    def describe(self) -> str:
        """The static rest of the module (its configuration) and the class's code."""
        from tempering.fingerprints import (
            code_of_class,
            describe_functions_held,
            describe_value,
            without_addresses,
        )

        # The leaves, and the static fields (``eqx.field(static=True)``: a
        # stride, a scale), which only the tree's structure holds; its repr
        # shows a static function (an activation) only by its address.
        config = describe_value(jax.tree.leaves(self.static), 0)
        fields = without_addresses(str(jax.tree.structure(self.static)))
        functions = describe_functions_held(self.static, _module_fields)
        return (
            f"equinox:{self.name}|{config}|{fields}|{code_of_class(type(self.static))}"
            f"|{functions}"
        )


def _module_fields(node: Any) -> dict[str, Any] | None:
    """An Equinox module's fields, static ones included; None for another value."""
    if not isinstance(node, eqx.Module):
        return None
    return {f.name: getattr(node, f.name, None) for f in dataclasses.fields(node)}
