"""The replica-exchange move: a pure Metropolis test on validation losses.

Convention. ``betas[r] = 1 / T_r`` is the inverse temperature of rung ``r``;
rung ``r + 1`` is hotter, so ``betas[r] > betas[r + 1]``. The replicas ``i`` at
rung ``r`` and ``j`` at rung ``r + 1`` swap rungs with probability

    min(1, exp(c * (betas[r] - betas[r + 1]) * (losses[i] - losses[j])))

so a replica with lower validation loss always moves to the colder rung, and
the reverse move is accepted with probability ``exp(-|...|)``. This is the
textbook direction (and the authors' code, with ``beta = 1 / lr``). Only the
rung assignment changes: weights and optimiser state stay with their replica.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tempering.hyperparams import check_number, dtype_of
from tempering.state import check_key

__all__ = [
    "SCHEMES",
    "ExchangeInfo",
    "exchange",
    "pair_log_ratios",
    "replicas_by_rung",
]

SCHEMES = ("random_pair", "even_odd")


class ExchangeInfo(NamedTuple):
    """Diagnostics of one exchange round; entry ``r`` is the pair (r, r + 1)."""

    proposed: jax.Array  # shape=(M - 1,), dtype=bool
    accepted: jax.Array  # shape=(M - 1,), dtype=bool
    acceptance_prob: jax.Array  # shape=(M - 1,), dtype=float32, 0 where undefined
    log_ratio: jax.Array  # shape=(M - 1,), dtype=float32, c * dbeta * dloss


def replicas_by_rung(rungs: jax.Array) -> jax.Array:
    """Inverse permutation: ``replicas_by_rung(rungs)[r]`` is the replica at rung r."""
    return jnp.argsort(rungs)


def pair_log_ratios(rungs: jax.Array, losses: jax.Array, betas: jax.Array) -> jax.Array:
    """``(betas[r] - betas[r + 1]) * (L_cold - L_hot)`` of every adjacent pair, C = 1.

    Args:
        rungs: int ``(M,)``, the rung of every replica.
        losses: float ``(M,)``, per replica; NaN and ``-inf`` (diverged, as
            everywhere in the library) count as ``+inf``.
        betas: float ``(M,)``, decreasing.

    Returns:
        ``(M - 1,)`` float32: entry r for the replicas at rungs r and r + 1; the
        log acceptance ratio is C times it (NaN where undefined, inf - inf).
    """
    losses = jnp.asarray(losses, jnp.float32)
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    betas = jnp.asarray(betas, jnp.float32)
    at_rung = replicas_by_rung(jnp.asarray(rungs))
    return (betas[:-1] - betas[1:]) * (losses[at_rung[:-1]] - losses[at_rung[1:]])


def _check_concrete(rungs: Any, losses: Any, betas: Any, c: Any, parity: Any) -> None:
    """Validates the arguments.

    Shapes and dtypes always (they are known while tracing), values where the
    arguments are concrete.
    """

    def concrete(x: Any) -> bool:
        return not isinstance(x, jax.core.Tracer)

    rungs_dtype = dtype_of(rungs)
    if not jnp.issubdtype(rungs_dtype, jnp.integer):
        raise TypeError(
            "rungs must be integers (the rung of every replica, a permutation of "
            f"0..M-1), got dtype {rungs_dtype}"
        )
    if np.ndim(rungs) != 1:
        raise ValueError(
            f"rungs must be a permutation of 0..M-1, shape (M,), got shape "
            f"{np.shape(rungs)}"
        )
    num = np.shape(rungs)[0]
    for name, value in (("losses", losses), ("betas", betas)):
        if np.shape(value) != (num,):
            raise ValueError(
                f"{name} must have one entry per replica, shape ({num},), got "
                f"shape {np.shape(value)}"
            )
    if np.ndim(c) != 0 and not isinstance(c, str):
        raise ValueError(f"c must be one number, got shape {np.shape(c)}")
    parity_dtype = dtype_of(parity)
    if (
        np.ndim(parity) != 0
        or not jnp.issubdtype(parity_dtype, jnp.integer)
        or (concrete(parity) and int(parity) not in (0, 1))
    ):
        raise ValueError(
            f"parity must be 0 or 1 (an int; alternate it between rounds), got "
            f"{parity!r}"
        )
    if concrete(rungs):
        array = np.asarray(rungs)
        if sorted(array.tolist()) != list(range(array.size)):
            raise ValueError(
                f"rungs must be a permutation of 0..M-1, got {array.tolist()}"
            )
    if concrete(betas):
        values = np.asarray(betas, np.float64)
        if not np.all(np.isfinite(values)) or np.any(np.diff(values) >= 0):
            raise ValueError(
                "betas must be finite and strictly decreasing (rung 0 the coldest, "
                f"betas = 1 / temperatures), got {values.tolist()}"
            )
    if concrete(c):
        if isinstance(c, str):
            raise TypeError(
                f"c must be a number > 0, got {c!r} (c='auto' belongs to "
                "tempering.exchange_move and pt_train, which tune it)"
            )
        check_c(c)


def check_c(c: Any) -> float:
    """``c`` as a float: one real number, finite and > 0 in float32.

    The exchange computes in float32: a C that overflows it (above 3.4e38)
    makes every ratio infinite or undefined.
    """
    value = check_number(c, "c")
    with np.errstate(over="ignore"):
        single = np.float32(value)
    if not (np.isfinite(value) and np.isfinite(single) and single > 0):
        raise ValueError(
            f"c must be finite and > 0, and finite in float32 (the exchange's "
            f"precision, at most 3.4e38), got {value}"
        )
    return value


def exchange(
    key: jax.Array,
    rungs: jax.Array,
    losses: jax.Array,
    betas: jax.Array,
    *,
    c: float | jax.Array = 1.0,
    scheme: str = "random_pair",
    parity: int | jax.Array = 0,
) -> tuple[jax.Array, ExchangeInfo]:
    """Proposes swaps of adjacent rungs and accepts them by Metropolis.

    Args:
        key: PRNG key.
        rungs: int array ``(M,)``; ``rungs[m]`` is the rung replica m holds, a
            permutation of ``0..M-1``.
        losses: float array ``(M,)``; validation loss of replica m. NaN and
            ``-inf`` (diverged, as everywhere in the library) count as ``+inf``.
        betas: float array ``(M,)``; ``betas[r] = 1 / T_r``, decreasing in r.
        c: the normalisation constant C > 0 of the paper.
        scheme: ``"random_pair"`` proposes one adjacent pair drawn uniformly
            (the paper's Algorithm 1); ``"even_odd"`` proposes every pair
            ``(r, r + 1)`` with ``r % 2 == parity`` (deterministic even-odd,
            Syed et al. 2019; the caller alternates ``parity``). With two
            rungs both propose their one pair every round (an odd round of
            even-odd would propose nothing and halve the exchanges).
        parity: 0 or 1, used by ``"even_odd"``; may be traced.

    Returns:
        ``(new_rungs, info)``: the rung of every replica after the exchange and
        an :class:`ExchangeInfo`. A replica with a non-finite loss is never moved
        to a colder rung; an undefined ratio (``inf`` against ``inf``) rejects.

    Raises:
        ValueError: rungs, losses or betas not of shape ``(M,)``, ``c`` or
            ``parity`` not a scalar, a parity that is not an integer (checked
            under ``jax.jit`` too: shapes are known while tracing); and for
            concrete (not traced) arguments, rungs that are not a permutation,
            betas that do not decrease strictly, ``c`` not finite and > 0, or
            a parity other than 0 or 1; an unknown ``scheme``.
        TypeError: a key that is not a PRNG key, rungs that are not integers,
            or a ``c`` that is not a number.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    key = check_key(key, "key")
    if isinstance(rungs, list | tuple):  # a list of tracers under jax.jit
        rungs = jnp.asarray(rungs)
    _check_concrete(rungs, losses, betas, c, parity)
    rungs = jnp.asarray(rungs)
    num_rungs = rungs.shape[0]
    losses = jnp.asarray(losses, jnp.float32)
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    betas = jnp.asarray(betas, jnp.float32)
    c = jnp.asarray(c, jnp.float32)
    pair_key, accept_key = jax.random.split(key)
    pairs = jnp.arange(num_rungs - 1, dtype=jnp.int32)

    if scheme == "random_pair":
        proposed = pairs == jax.random.randint(
            pair_key, (), 0, num_rungs - 1, jnp.int32
        )
    elif num_rungs == 2:  # one pair: an odd round would propose nothing
        proposed = jnp.ones((1,), bool)
    else:
        proposed = pairs % 2 == jnp.asarray(parity).astype(jnp.int32) % 2

    at_rung = replicas_by_rung(rungs)
    cold_loss = losses[at_rung[:-1]]  # replica i at rung r
    hot_loss = losses[at_rung[1:]]  # replica j at rung r + 1
    loss_gap = cold_loss - hot_loss
    # Equal losses: ratio 1 at any C (c * dbeta may overflow, and inf * 0 is NaN).
    log_ratio = jnp.where(loss_gap == 0, 0.0, c * (betas[:-1] - betas[1:]) * loss_gap)
    defined = ~jnp.isnan(log_ratio)  # inf - inf is undefined: reject
    acceptance_prob = jnp.where(defined, jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)
    uniforms = jax.random.uniform(accept_key, (num_rungs - 1,), jnp.float32)
    accepted = proposed & (uniforms < acceptance_prob) & jnp.isfinite(hot_loss)

    # Proposed pairs never overlap, so each accepted pair is an independent swap.
    up = jnp.pad(accepted, (0, 1)).astype(rungs.dtype)  # rung r moves to r + 1
    down = jnp.pad(accepted, (1, 0)).astype(rungs.dtype)  # rung r + 1 moves to r
    new_rungs = rungs + (up - down)[rungs]
    info = ExchangeInfo(proposed, accepted, acceptance_prob, log_ratio)
    return new_rungs, info
