"""One model interface for every model library: flax linen, flax.nnx, Equinox, functions.

The engine sees any model as a *frontend*: a static object (part of the jit
cache key, never traced) with

- ``init(key, sample_input, inputs) -> (params, stats)``: one replica's
  trainable parameters and its non-trainable state (BatchNorm statistics; ``{}``
  for none), two pytrees of arrays;
- ``apply(params, stats, x, *, train, key, inputs) -> (outputs, new_stats)``:
  a pure forward pass on a batch ``x``, in training mode (dropout on, batch
  statistics, ``new_stats`` updated) or in inference mode (``train=False``:
  no dropout, running statistics, ``stats`` returned as given); ``key`` draws
  the dropout masks, ``inputs`` are the per-replica model inputs (a laddered
  dropout rate);
- ``keywords() -> (names, takes_var_keywords, defaults)`` of the model's call,
  to resolve ``model_inputs``; ``export(params, stats)``: one replica as its
  library's users hold it (:func:`tempering.replica`); ``describe()``: its
  definition as a string (the checkpoint fingerprint).

:func:`as_frontend` builds one from the model as its users hold it:

- a ``flax.linen.Module`` (:class:`~tempering.frontends.linen.Linen`);
- a ``flax.nnx.Module`` instance, or a function ``build(rngs: nnx.Rngs)``
  that builds one (:class:`~tempering.frontends.nnx.Nnx`);
- an Equinox module (with its ``eqx.nn.State`` as a pair ``(model, state)``
  when it has BatchNorm), or a function ``build(key)`` returning either
  (:class:`~tempering.frontends.equinox.Equinox`; ``pip install equinox``);
- a :class:`~tempering.frontends.functions.Functions` pair ``init(key, x)`` /
  ``apply(params, x, *, train, key, **inputs)``.

A model *instance* gives every replica its weights as the common start (as
``same_init=True``); a *builder* draws independent initial weights per replica.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Protocol

import jax

from tempering.frontends.functions import Functions
from tempering.frontends.linen import Linen

__all__ = ["Frontend", "Functions", "Linen", "as_frontend", "call_keywords"]

# The train-mode keyword when none is named: an nnx or Equinox call need not
# take it (their modules' own mode is set), a linen call must.
DEFAULT_TRAIN_KWARG = "train"


class Frontend(Protocol):
    """The interface every model reaches the engine through (module doc)."""

    kind: str  # "linen", "nnx", "equinox" or "functions"
    name: str  # the model's class name, for messages
    dropout_fix: str  # the traced dropout layer of this library, for messages

    def keywords(self) -> tuple[set[str], bool, dict[str, Any]]:
        """Keyword names of the model's call, whether it takes ``**kwargs``, defaults."""

    def init(self, key: jax.Array, sample_input: jax.Array, inputs: dict) -> Any:
        """``(params, stats)`` of one replica."""

    def apply(
        self, params: Any, stats: Any, x: jax.Array, *, train: bool,
        key: jax.Array | None, inputs: dict,
    ) -> tuple[jax.Array, Any]:  # fmt: skip
        """``(outputs, new_stats)`` of one replica on a batch."""

    def export(self, params: Any, stats: Any, index: int = 0) -> Any:
        """Replica ``index`` as its library's users hold it (its params, stats)."""

    def describe(self) -> str:
        """The model's definition (configuration and code) as a string."""


def call_keywords(fn: Any) -> tuple[set[str], bool, dict[str, Any]]:
    """Keyword names of ``fn``, whether it takes ``**kwargs``, and their defaults."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return set(), True, {}
    params = signature.parameters.values()
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind is not p.VAR_KEYWORD}
    defaults = {p.name: p.default for p in params if p.default is not p.empty}
    return names, var_kw, defaults


def passes_train_kwarg(
    train_kwarg: str | None, names: set[str], var_kw: bool, forwarded: bool = False
) -> bool:
    """Whether an nnx or Equinox call gets ``train_kwarg`` (its keywords given).

    The default name goes to a call that takes it, and to one that takes
    ``**kwargs`` where ``create_replicas`` found that the call reads it
    (``forwarded``: a wrapper handing its keywords to a module); another
    name the user gave also to any call that takes ``**kwargs`` (a call
    taking neither is refused by ``create_replicas``).
    """
    if train_kwarg is None:
        return False
    if train_kwarg in names:
        return True
    return var_kw and (forwarded or train_kwarg != DEFAULT_TRAIN_KWARG)


def takes_batch_mask(model: Any) -> bool:
    """Whether the model's call gets ``batch_mask`` under a per-replica batch size.

    A call that names it or takes ``**kwargs`` (``tempering.step`` passes it
    there; ``create_replicas`` checks that the call can take it).
    """
    names, var_kw, _ = model.keywords()
    return "batch_mask" in names or var_kw


def _nnx() -> Any:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax without nnx
        return None
    return nnx


def _is_nnx_module(model: Any) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(model, nnx.Module)


def _is_equinox_model(model: Any) -> bool:
    eqx = _equinox()
    if eqx is None:
        return False
    if isinstance(model, tuple) and len(model) == 2:
        return isinstance(model[0], eqx.Module) and isinstance(model[1], eqx.nn.State)
    return isinstance(model, eqx.Module)


def _equinox() -> Any:
    try:
        import equinox
    except ImportError:
        return None
    return equinox


def builder_parameters(build: Any) -> list[inspect.Parameter]:
    """The parameters a builder still takes (a class's ``__init__``'s, a partial's rest).

    An nnx module class reports ``(*args, **kwargs)`` (its metaclass's call), so
    a class and a ``functools.partial`` of one are read from ``__init__``. As
    in Python's own calls, a partial that gives a parameter by keyword leaves
    the parameters after it keyword-only.
    """
    if isinstance(build, functools.partial):
        inner = builder_parameters(build.func)
        positional = [p for p in inner if p.kind in (_POSITIONAL, _EITHER)]
        given = {p.name for p in positional[: len(build.args)]}
        rest: list[inspect.Parameter] = []
        by_name = False
        for p in inner:
            by_name = by_name or p.name in build.keywords
            if p.name in given or p.name in build.keywords:
                continue
            rest.append(
                p.replace(kind=_KEYWORD) if by_name and p.kind is _EITHER else p
            )
        return rest
    if isinstance(build, type):
        init = getattr(build, "__init__")  # noqa: B009  (mypy refuses cls.__init__)
        return list(inspect.signature(init).parameters.values())[1:]
    return list(inspect.signature(build).parameters.values())


_POSITIONAL = inspect.Parameter.POSITIONAL_ONLY
_EITHER = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _key_parameter(params: list[inspect.Parameter]) -> inspect.Parameter | None:
    """The parameter a builder takes its key or Rngs by (named or annotated so)."""
    for p in params:
        if p.kind not in _VARIADIC and (
            p.name in ("key", "rngs") or "Rngs" in str(p.annotation)
        ):
            return p
    return None


def _module_class(build: Any) -> type | None:
    """The class a builder is, or is a ``functools.partial`` of; else None."""
    while isinstance(build, functools.partial):
        build = build.func
    return build if isinstance(build, type) else None


def _is_nnx_class(cls: type) -> bool:
    nnx = _nnx()
    return nnx is not None and issubclass(cls, nnx.Module)


def _is_module_class(cls: type) -> bool:
    """Whether ``cls`` is an nnx or an Equinox module class."""
    eqx = _equinox()
    return _is_nnx_class(cls) or (eqx is not None and issubclass(cls, eqx.Module))


def _takes_rngs(build: Any) -> bool:
    """Whether ``build`` is an nnx builder: an nnx class, or takes Rngs."""
    cls = _module_class(build)
    if cls is not None and _is_module_class(cls):
        return _is_nnx_class(cls)
    try:
        params = builder_parameters(build)
    except (TypeError, ValueError):
        return False
    found = _key_parameter(params)
    return found is not None and (
        found.name == "rngs" or "Rngs" in str(found.annotation)
    )


def _check_only_the_key_required(
    build: Any, params: list[inspect.Parameter], key: inspect.Parameter | None
) -> None:
    """A TypeError for a module class that needs more than its key to be built."""
    cls = _module_class(build)
    if cls is None or not _is_module_class(cls):
        return  # a function: its own call names what it misses
    named = [p for p in params if p.kind not in _VARIADIC]
    receiver = key if key is not None else (named[0] if named else None)
    required = [p.name for p in named if p is not receiver and p.default is p.empty]
    if required:
        name = cls.__name__
        given = ", ".join(f"{n}=..." for n in required)
        if isinstance(build, functools.partial):
            given = f"..., {given}"
        raise TypeError(
            f"model: {name} needs {', '.join(required)} to be built, but each "
            "replica is built by calling the model with its key alone (nnx.Rngs "
            "for an nnx module, a jax key for an Equinox module); give the rest "
            f"with functools.partial({name}, {given}), or pass a built instance "
            "(every replica then starts from its weights)"
        )


def as_frontend(model: Any, train_kwarg: str | None = "train") -> Any:
    """The frontend of ``model`` as its users hold it (module doc).

    Args:
        model: a linen module, an nnx module or builder, an Equinox module (or
            ``(module, state)``) or builder, or a frontend.
        train_kwarg: the model call's train-mode keyword (linen: required
            unless None; nnx, Equinox: passed when the call takes it, the
            library's own train/inference switch is always set).

    Raises:
        TypeError: anything else, naming what each library's model should be.
    """
    import flax.linen as nn

    if isinstance(model, Functions):
        return dataclasses.replace(model, train_kwarg=train_kwarg)
    if isinstance(model, Linen) or getattr(model, "kind", None) in (
        "nnx",
        "equinox",
    ):
        return model
    if isinstance(model, nn.Module):
        return Linen(model, train_kwarg)
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise TypeError(
            f"model must be a flax.linen.Module instance: got the class "
            f"{model.__name__}, call it ({model.__name__}(...))"
        )
    if _is_nnx_module(model):
        from tempering.frontends.nnx import Nnx

        return Nnx.from_module(model, train_kwarg)
    if _is_equinox_model(model):
        from tempering.frontends.equinox import Equinox

        return Equinox.from_module(model, train_kwarg)
    if callable(model):  # a builder: a function, or the module class itself
        return _from_builder(model, train_kwarg)
    raise TypeError(
        "model must be a flax.linen.Module instance (e.g. MLP(features=(128,))), a "
        "flax.nnx.Module or a function build(rngs: nnx.Rngs) returning one, an "
        "Equinox module (or (module, state) from eqx.nn.make_with_state) or a "
        "function build(key) returning one, or tempering.frontends.Functions(init, "
        f"apply); got {type(model).__name__}"
    )


def by_keyword(build: Any) -> Any:
    """``build(arg)`` passing ``arg`` by keyword where it cannot go first by position.

    The builder's key (or Rngs) is its parameter named ``key`` or ``rngs``
    (or annotated ``Rngs``), else its first. ``functools.partial(MLP, 16, 3)``
    of ``MLP(din, dout, *, key)`` (or ``*, rngs``), the usual Equinox and nnx
    signatures, takes it by keyword only; ``Model(hidden=16, rngs=None)``
    takes it after parameters that have defaults.

    Raises:
        TypeError: an nnx or Equinox module class (or a partial of one) that
            requires parameters besides its key, naming the
            ``functools.partial`` that gives them.
    """
    try:
        params = builder_parameters(build)
    except (TypeError, ValueError):
        return build
    key = _key_parameter(params)
    _check_only_the_key_required(build, params, key)
    if key is None and params and params[0].kind is _KEYWORD:
        key = params[0]  # a keyword-only first parameter of another name
    if key is None or key.kind is _POSITIONAL:
        return build
    before = params[: params.index(key)]
    if key.kind is _KEYWORD or (
        before and all(p.default is not p.empty for p in before)
    ):
        return functools.partial(_call_by_keyword, build, key.name)
    return build


def _call_by_keyword(build: Any, name: str, key: Any) -> Any:
    return build(**{name: key})


def _from_builder(build: Any, train_kwarg: str | None) -> Any:
    """The frontend of a function that builds a model (nnx from Rngs, Equinox from a key)."""
    if _takes_rngs(build):
        from tempering.frontends.nnx import Nnx

        return Nnx.from_builder(build, train_kwarg)
    eqx = _equinox()
    error = None
    build = by_keyword(build)
    if eqx is not None:
        try:
            built = eqx.filter_eval_shape(build, jax.random.key(0))
        except Exception as failure:  # not a builder of a key: name what is expected
            built, error = None, failure
        if _is_equinox_model(built):
            from tempering.frontends.equinox import Equinox

            return Equinox.from_builder(build, train_kwarg)
    raise TypeError(
        "model must be a flax.linen.Module instance, an nnx or Equinox module, or a "
        f"builder of one; the function {getattr(build, '__qualname__', build)!r} is "
        "no model builder tempering knows: an nnx builder takes rngs (build(rngs: "
        "nnx.Rngs) -> nnx.Module), an Equinox builder a key (build(key) -> "
        "eqx.Module or (eqx.Module, eqx.nn.State)); for plain functions use "
        "tempering.frontends.Functions(init, apply)"
        + ("" if error is None else f" (called with a key it raised {error!r})")
    ) from error
