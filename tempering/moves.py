"""Moves: what happens to the replicas between two training segments.

A move is a pure, jit-able function of the round's scores (lower is better;
by default the validation loss)::

    new_state, info = move(key, state, scores, round_index)

``round_index`` counts the rounds after the burn-in from 0 (the even-odd
scheme alternates on it). The driver (:func:`tempering.train`) jits the move
once, with the state's buffers donated, and records its ``info`` every round.

- :func:`exchange_move`: the parallel tempering exchange (Metropolis test on
  adjacent rungs, :func:`tempering.exchange`); only hyperparameters move.
- :func:`identity_move`: nothing moves (the independent grid).
- :func:`tempering.pbt.pbt_move`: PBT's exploit/explore; whole models move.
- :func:`as_move`: any function with the signature above.

Moves are pytrees (``flax.struct`` dataclasses): their arrays (a ladder, C)
are traced and their settings static, so a new ``exchange_move`` with the
same shapes and settings reuses the compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tempering.exchange import SCHEMES, ExchangeInfo, exchange
from tempering.ladder import Ladder
from tempering.replicas import ReplicaState, assign_rungs

__all__ = [
    "ExchangeMove",
    "FunctionMove",
    "IdentityMove",
    "Move",
    "NoInfo",
    "as_move",
    "exchange_move",
    "identity_move",
]


class Move(Protocol):
    """``move(key, state, scores, round_index) -> (new_state, info)``."""

    def __call__(
        self,
        key: jax.Array,
        state: ReplicaState,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, Any]:
        """Returns the new state and the move's diagnostics."""


@struct.dataclass
class ExchangeMove:
    """The PT exchange over a ladder (build it with :func:`exchange_move`)."""

    ladder: Ladder
    c: jax.Array  # shape=(), float32, the constant C of the acceptance probability
    scheme: str = struct.field(pytree_node=False, default="random_pair")
    # False: every proposal is rejected (the grid), with the same diagnostics.
    enabled: bool = struct.field(pytree_node=False, default=True)

    def __call__(
        self,
        key: jax.Array,
        state: ReplicaState,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, ExchangeInfo]:
        """Proposes swaps of adjacent rungs; accepted replicas swap hyperparameters."""
        proposal, info = exchange(
            key, state.rungs, scores, self.ladder.betas, c=self.c,
            scheme=self.scheme, parity=round_index % 2,
        )  # fmt: skip
        if not self.enabled:
            info = info._replace(
                proposed=jnp.zeros_like(info.proposed),
                accepted=jnp.zeros_like(info.accepted),
            )
            proposal = state.rungs
        return assign_rungs(state, self.ladder, proposal), info


def exchange_move(
    ladder: Ladder,
    *,
    c: float = 1.0,
    scheme: str = "random_pair",
    enabled: bool = True,
) -> ExchangeMove:
    """The parallel tempering exchange as a move, validated before anything compiles.

    Args:
        ladder: the :class:`tempering.Ladder`.
        c: the normalisation constant C > 0 of the acceptance probability.
        scheme: ``"random_pair"`` (paper) or ``"even_odd"`` (the parity
            alternates with the round).
        enabled: False rejects every proposal (the grid) while recording what
            the acceptance probabilities would have been.

    Returns:
        An :class:`ExchangeMove`.

    Example:
        >>> move = exchange_move(ladder, c=30.0, scheme="even_odd")
        >>> state, info = move(key, state, val_losses, jnp.int32(0))
    """
    if not isinstance(ladder, Ladder):
        raise TypeError("ladder must be a tempering.Ladder (see tempering.make_ladder)")
    if isinstance(c, bool) or np.ndim(c) != 0:
        raise TypeError(f"c must be one number, got {c!r}")
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"c must be finite and > 0, got {c}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if not isinstance(enabled, bool | np.bool_):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    return ExchangeMove(ladder, jnp.float32(c), scheme, bool(enabled))


class NoInfo(NamedTuple):
    """The info of a move that reports nothing."""


@struct.dataclass
class IdentityMove:
    """Leaves the replicas as they are: the independent grid."""

    def __call__(
        self,
        key: jax.Array,
        state: ReplicaState,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, NoInfo]:
        """Returns ``state`` unchanged."""
        del key, scores, round_index
        return state, NoInfo()


def identity_move() -> IdentityMove:
    """The move that changes nothing (the independent grid)."""
    return IdentityMove()


@struct.dataclass
class FunctionMove:
    """A user's move function, held static (its closure is part of the cache key)."""

    fn: Callable = struct.field(pytree_node=False)

    def __call__(
        self,
        key: jax.Array,
        state: ReplicaState,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, Any]:
        """Calls the function."""
        return self.fn(key, state, scores, round_index)


def as_move(move: Any) -> Any:
    """A move the driver can jit: moves pass through, functions are wrapped."""
    if isinstance(move, ExchangeMove | IdentityMove | FunctionMove):
        return move
    if dataclasses.is_dataclass(move) and hasattr(move, "replace") and callable(move):
        return move  # another flax.struct move (a pytree), e.g. PBTMove
    if callable(move):
        return FunctionMove(move)
    raise TypeError(
        "move must be callable as move(key, state, scores, round_index) -> "
        f"(state, info), got {type(move).__name__}"
    )
