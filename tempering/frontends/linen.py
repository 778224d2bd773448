"""The flax linen frontend: a ``flax.linen.Module`` and its train-mode keyword.

The model contract: ``__call__`` takes the batch, optionally a train-mode flag
(``train_kwarg``) and any per-replica inputs, draws dropout masks from the
``"dropout"`` RNG stream and keeps BatchNorm statistics in the
``"batch_stats"`` collection::

    outputs = module.apply(variables, x, train=True, dropout_rate=rate,
                           rngs={"dropout": key}, mutable=["batch_stats"])

A laddered dropout rate is traced: use :class:`tempering.Dropout`, not
``flax.linen.Dropout``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

import flax.linen as nn
import jax

__all__ = ["Linen", "model_kwargs", "model_variables"]


def model_kwargs(
    train_kwarg: str | None, train: bool, inputs: Mapping[str, Any]
) -> dict[str, Any]:
    """The keywords of one model call: the train flag (if any) and per-replica inputs."""
    kwargs = dict(inputs)
    if train_kwarg is not None:
        kwargs[train_kwarg] = train
    return kwargs


def model_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """Flax variables of one replica; ``batch_stats`` only when the model has some."""
    if jax.tree.leaves(batch_stats):
        return {"params": params, "batch_stats": batch_stats}
    return {"params": params}


@dataclasses.dataclass(frozen=True)
class Linen:
    """A linen module as the engine's model (:mod:`tempering.frontends`).

    ``export`` gives one replica's Flax variables, for ``module.apply``.
    """

    module: nn.Module
    train_kwarg: str | None = "train"
    kind = "linen"
    dropout_fix = (
        "flax.linen.Dropout decides in Python whether to drop; use "
        "tempering.Dropout()(x, rate, deterministic=not train)"
    )

    @property
    def name(self) -> str:
        """The module's class name."""
        return type(self.module).__name__

    def keywords(self) -> tuple[set[str], bool, dict[str, Any]]:
        """Keywords of the module's ``__call__``."""
        from tempering.frontends import call_keywords

        return call_keywords(self.module.__call__)

    def init(self, key: jax.Array, sample_input: jax.Array, inputs: dict) -> Any:
        """``(params, batch_stats)`` of one replica (``{}`` without BatchNorm)."""
        kwargs = model_kwargs(self.train_kwarg, False, inputs)
        variables = self.module.init(
            {"params": key, "dropout": key}, sample_input, **kwargs
        )
        return variables["params"], variables.get("batch_stats", {})

    def apply(
        self, params: Any, stats: Any, x: jax.Array, *, train: bool,
        key: jax.Array | None, inputs: dict,
    ) -> tuple[jax.Array, Any]:  # fmt: skip
        """``(outputs, new_batch_stats)``; in inference mode the statistics as given."""
        kwargs = model_kwargs(self.train_kwarg, train, inputs)
        variables = model_variables(params, stats)
        if not train:
            outputs: Any = self.module.apply(variables, x, **kwargs)
            return outputs, stats
        has_stats = bool(jax.tree.leaves(stats))
        out: Any = self.module.apply(
            variables, x, rngs={"dropout": cast(jax.Array, key)},
            mutable=["batch_stats"] if has_stats else False, **kwargs,
        )  # fmt: skip
        outputs, updates = out if has_stats else (out, {})
        return outputs, updates.get("batch_stats", stats)

    def export(self, params: Any, stats: Any, index: int = 0) -> dict[str, Any]:
        """One replica's Flax variables, ready for ``module.apply``."""
        del index
        return model_variables(params, stats)

    def describe(self) -> str:
        """The module's configuration (its repr) and the code of its methods.

        A set among the fields (a submodule's too) reads with its elements
        sorted: a set's repr follows an order that changes from one process
        to the next (``PYTHONHASHSEED``).
        """
        from tempering.fingerprints import code_of_class, without_addresses

        config = without_addresses(_sorted_sets(repr(self.module), self.module))
        text = f"linen:{self.name}|{config}|{self.train_kwarg}|{code_of_class(type(self.module))}"
        functions = _field_functions(self.module)  # a repr shows no lambda's code
        return f"{text}|{functions}" if functions else text


def _field_functions(module: nn.Module) -> str:
    """The functions a module's fields hold (an activation), by code and closure."""
    from tempering.fingerprints import describe_callable

    described = []
    for field in dataclasses.fields(module):
        value = getattr(module, field.name, None)
        if field.name in ("parent", "name") or isinstance(value, nn.Module | type):
            continue
        if callable(value):
            described.append(f"{field.name}={describe_callable(value)}")
    return ";".join(described)


def _sorted_sets(text: str, module: nn.Module) -> str:
    """``text`` (the module's repr) with each set of its fields' in sorted order."""
    from tempering.fingerprints import stable_repr

    sets = _field_sets(module, depth=0)
    for value in sorted(sets, key=lambda v: -len(repr(v))):  # outer sets first
        text = text.replace(repr(value), stable_repr(value))
    return text


def _field_sets(value: Any, depth: int) -> list[set | frozenset]:
    """The sets a module's repr shows: in its fields and children, nested too."""
    if depth > 16:
        return []
    if isinstance(value, set | frozenset):
        return [value]
    if isinstance(value, tuple | list):
        return [s for item in value for s in _field_sets(item, depth + 1)]
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
        return [s for item in items for s in _field_sets(item, depth + 1)]
    if not isinstance(value, nn.Module) or not dataclasses.is_dataclass(value):
        return []
    shown = [
        value.__dict__.get(field.name)
        for field in dataclasses.fields(value)
        if field.name not in ("parent", "name") and field.repr
    ]
    children = getattr(getattr(value, "_state", None), "children", {})
    shown += [child for child in children.values() if isinstance(child, nn.Module)]
    return [s for item in shown for s in _field_sets(item, depth + 1)]
