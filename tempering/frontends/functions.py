"""Plain functions as a model: ``init(key, x) -> params`` and a pure ``apply``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["Functions"]


@dataclasses.dataclass(frozen=True)
class Functions:
    """A model as a pair of pure functions (:mod:`tempering.frontends`).

    Args:
        init_fn: ``init_fn(key, x) -> params`` for a sample batch ``x``.
        apply_fn: ``apply_fn(params, x, *, train, key, **inputs) -> outputs``;
            ``train`` is True in training and False in evaluation (the keyword
            is ``create_replicas``' ``train_kwarg``: another name, or none
            with ``train_kwarg=None``), ``key`` draws dropout masks in training
            (None in inference), ``inputs`` are the per-replica model inputs
            (e.g. ``dropout_rate``).
        train_kwarg: the name of ``apply_fn``'s train-mode keyword, or None
            for none; set by ``create_replicas(..., train_kwarg=...)``.

    Example:
        >>> model = tp.frontends.Functions(init, apply)
        >>> state = tp.create_replicas(key, model, tp.sgd(0.1), x[:1], ladder=ladder)
    """

    init_fn: Callable[[jax.Array, jax.Array], Any]
    apply_fn: Callable[..., jax.Array]
    train_kwarg: str | None = "train"  # set from create_replicas' train_kwarg
    kind = "functions"
    dropout_fix = "make apply's dropout use the rate as data (tempering.layers.dropout)"

    @property
    def name(self) -> str:
        """The apply function's name."""
        return getattr(self.apply_fn, "__qualname__", "apply")

    def keywords(self) -> tuple[set[str], bool, dict[str, Any]]:
        """Keywords of ``apply`` besides the params and the batch."""
        from tempering.frontends import call_keywords

        names, var_kw, defaults = call_keywords(self.apply_fn)
        return names - {"key"}, var_kw, defaults

    def init(self, key: jax.Array, sample_input: jax.Array, inputs: dict) -> Any:
        """``(params, {})``."""
        del inputs
        return self.init_fn(key, sample_input), {}

    def apply(
        self, params: Any, stats: Any, x: jax.Array, *, train: bool,
        key: jax.Array | None, inputs: dict,
    ) -> tuple[jax.Array, Any]:  # fmt: skip
        """``(outputs, stats)``."""
        mode = {} if self.train_kwarg is None else {self.train_kwarg: train}
        return self.apply_fn(params, x, key=key, **mode, **inputs), stats

    def export(self, params: Any, stats: Any, index: int = 0) -> Any:
        """One replica's params."""
        del stats, index
        return params

    def describe(self) -> str:
        """The two functions' names and code."""
        from tempering.fingerprints import describe_callable

        mode = "" if self.train_kwarg == "train" else f"|{self.train_kwarg}"
        return (
            f"functions:{describe_callable(self.init_fn)}|"
            f"{describe_callable(self.apply_fn)}{mode}"
        )
