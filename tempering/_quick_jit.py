"""``quick_jit``: ``jax.jit`` for the programs that run once a call or a round.

Creating the replicas, the keys of a run and the exchange or PBT move run once
per call or per round, in microseconds to milliseconds, but each is compiled
in every new process, before the first step. XLA:CPU's fusion emitters (its
default, jax 0.10.2 when written) generate faster loops but compile about twice as slowly
as its older emitters; for these programs the compilation is all that counts.
:func:`quick_jit` compiles them with the older emitters
(``xla_cpu_use_fusion_emitters=False``), which gave bitwise the same values
for every program here (``tests/test_quick_jit.py`` checks it on the JAX it
runs with; jax 0.10.2 when written; measured with the MLP of
``experiments/bench_raytune.py``, fresh processes: the replicas' init
0.76-0.84 to 0.43-0.67 s, the PBT move 0.66-0.81 to 0.47-0.50 s). The
training segment, the fused step and the evaluation, which run many times,
keep XLA's defaults (the older emitters run the zoo's MLP step 10% slower).

Where the option does not apply (another backend as the default, a JAX whose
``jax.jit`` takes no ``compiler_options`` or whose XLA does not know the
option) the program is compiled as by plain ``jax.jit``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

QUICK_COMPILE_OPTIONS: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def quick_compile_options() -> dict[str, Any] | None:
    """The options, where this JAX and backend take them; else None.

    Decided at the first compilation (it needs the backend), with one probe
    compilation of an identity.
    """
    if jax.default_backend() != "cpu":
        return None
    if "compiler_options" not in inspect.signature(jax.jit).parameters:
        return None
    probe = jax.jit(lambda x: x, compiler_options=QUICK_COMPILE_OPTIONS)
    try:
        probe.lower(np.float32(0)).compile()
    except RuntimeError:  # an XLA without the option: INVALID_ARGUMENT
        return None
    return dict(QUICK_COMPILE_OPTIONS)


class quick_jit:  # noqa: N801  used like jax.jit
    """``jax.jit(fun, **jit_kwargs)``, compiled with :data:`QUICK_COMPILE_OPTIONS`.

    The jitted function is built at the first call (or attribute access:
    ``lower``, ``clear_cache``, ``_cache_size`` are the jitted function's), when
    the backend is known.
    """

    def __init__(self, fun: Callable, **jit_kwargs: Any) -> None:
        self._fun = fun
        self._jit_kwargs = jit_kwargs
        self._jitted: Any = None
        self._nested: Any = None
        functools.update_wrapper(self, fun)

    def _get(self) -> Any:
        if self._jitted is None:
            kwargs = dict(self._jit_kwargs)
            options = quick_compile_options()
            if options is not None:  # the caller's own options win
                kwargs["compiler_options"] = {
                    **options,
                    **(kwargs.get("compiler_options") or {}),
                }
            self._jitted = jax.jit(self._fun, **kwargs)
        return self._jitted

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not _traced(args, kwargs):
            try:
                return self._get()(*args, **kwargs)
            except ValueError as error:  # inside another trace with concrete
                if "compiler_options" not in str(error):  # arguments
                    raise
        # Inside a user's jax.jit or jax.eval_shape (a template of the
        # replicas, say): JAX takes compiler options at the top level only.
        if self._nested is None:
            self._nested = jax.jit(self._fun, **self._jit_kwargs)
        return self._nested(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._get(), name)


def _traced(args: Any, kwargs: Any) -> bool:
    """Whether any argument is a tracer (the call is inside another trace)."""
    return any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))
    )
