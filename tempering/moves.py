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

from tempering.adaptation import (
    Adaptation,
    AdaptationState,
    adapt,
    init_adaptation,
)
from tempering.exchange import SCHEMES, exchange, pair_log_ratios
from tempering.ladder import (
    DROPOUT_TEMPERATURES,
    HYPERPARAMETERS,
    Ladder,
    default_temperature,
)
from tempering.replicas import ReplicaState, as_ladder, assign_rungs

__all__ = [
    "ExchangeMove",
    "ExchangeMoveInfo",
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


class ExchangeMoveInfo(NamedTuple):
    """One exchange round: :class:`tempering.exchange.ExchangeInfo` plus C and the ladder."""

    proposed: jax.Array  # shape=(M - 1,), dtype=bool
    accepted: jax.Array  # shape=(M - 1,), dtype=bool
    acceptance_prob: jax.Array  # shape=(M - 1,), float32, 0 where undefined
    log_ratio: jax.Array  # shape=(M - 1,), float32, c * dbeta * dloss
    c: jax.Array  # shape=(), float32, the C this round used
    temperatures: jax.Array  # shape=(M,), the ladder after the round


@struct.dataclass
class ExchangeMove:
    """The PT exchange over a ladder (build it with :func:`exchange_move`).

    With ``adaptation`` set (``c="auto"``), C and optionally the ladder live in
    ``state.move_state`` (an :class:`~tempering.adaptation.AdaptationState`
    that :meth:`init_state` creates) and are tuned during the first rounds.
    """

    ladder: Ladder
    c: jax.Array  # shape=(), float32, C (the starting C when adaptive)
    scheme: str = struct.field(pytree_node=False, default="even_odd")
    # False: every proposal is rejected (the grid), with the same diagnostics.
    enabled: bool = struct.field(pytree_node=False, default=True)
    adaptation: Adaptation | None = struct.field(pytree_node=False, default=None)
    adapt_rounds: int = struct.field(pytree_node=False, default=0)

    def init_state(self, state: ReplicaState) -> ReplicaState:
        """Gives an adaptive exchange its state; a compatible one is continued.

        The driver calls it once before the first round. A state that already
        holds an adaptation of this ladder (same names, rungs and ends, e.g.
        from an earlier call of the same run) keeps it, so a second call
        continues with the adapted (or frozen) C and ladder. Set
        ``state.replace(move_state=None)`` to adapt afresh.
        """
        if self.adaptation is None:
            return state
        if not self._continues(state.move_state):
            start = init_adaptation(self.ladder, self.adapt_rounds, float(self.c))
            state = state.replace(move_state=start)
        return state

    def _continues(self, current: Any) -> bool:
        if not isinstance(current, AdaptationState):
            return False
        if sorted(current.values) != sorted(self.ladder.values):
            return False
        if current.temperatures.shape != self.ladder.temperatures.shape:
            return False
        ends = np.asarray(self.ladder.temperatures)[[0, -1]]
        return bool(np.allclose(np.asarray(current.temperatures)[[0, -1]], ends))

    def current_ladder(self, state: ReplicaState) -> Ladder:
        """The ladder in use: the adapted one when adaptive, else ``self.ladder``."""
        if self.adaptation is None:
            return self.ladder
        return self.init_state(state).move_state.ladder

    def __call__(
        self,
        key: jax.Array,
        state: ReplicaState,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, ExchangeMoveInfo]:
        """Proposes swaps of adjacent rungs; accepted replicas swap hyperparameters."""
        ladder, c = self.ladder, self.c
        if self.adaptation is not None:
            adaptation = state.move_state
            if not isinstance(adaptation, AdaptationState):
                raise TypeError(
                    "an adaptive exchange (c='auto') needs state.move_state from "
                    "move.init_state(state); tempering.train calls it"
                )
            ratios = pair_log_ratios(state.rungs, scores, adaptation.ladder.betas)
            old_ladder = adaptation.ladder
            adaptation = adapt(self.adaptation, adaptation, ratios)
            state = state.replace(move_state=adaptation)
            ladder, c = old_ladder, adaptation.c
        proposal, info = exchange(
            key, state.rungs, scores, ladder.betas, c=c,
            scheme=self.scheme, parity=round_index % 2,
        )  # fmt: skip
        if not self.enabled:
            info = info._replace(
                proposed=jnp.zeros_like(info.proposed),
                accepted=jnp.zeros_like(info.accepted),
            )
            proposal = state.rungs
        if self.adaptation is not None:
            ladder = state.move_state.ladder  # re-spaced for the next round
        state = assign_rungs(state, ladder, proposal)
        return state, ExchangeMoveInfo(*info, c=c, temperatures=ladder.temperatures)


AUTO = "auto"


def exchange_move(
    ladder: Ladder,
    *,
    c: float | str = 1.0,
    scheme: str = "even_odd",
    enabled: bool = True,
    target_acceptance: float = 0.3,
    adapt_rounds: int = 10,
    adapt_ladder: bool = False,
) -> ExchangeMove:
    """The parallel tempering exchange as a move, validated before anything compiles.

    Args:
        ladder: the :class:`tempering.Ladder`.
        c: the normalisation constant C > 0 of the acceptance probability, or
            ``"auto"``: tuned in the first ``adapt_rounds`` rounds so that the
            mean acceptance of proposed swaps is ``target_acceptance``, then
            frozen (:mod:`tempering.adaptation`).
        scheme: ``"even_odd"`` (default; the parity alternates with the
            round) or ``"random_pair"`` (the paper's Algorithm 1).
        enabled: False rejects every proposal (the grid) while recording what
            the acceptance probabilities would have been.
        target_acceptance: in (0, 1); used by ``c="auto"``.
        adapt_rounds: rounds of adaptation (>= 1) with ``c="auto"`` or
            ``adapt_ladder``.
        adapt_ladder: also re-space the inner rungs during the adaptation so
            that adjacent pairs reject equally often (ends and order kept).

    Returns:
        An :class:`ExchangeMove`.

    Example:
        >>> move = exchange_move(ladder, c=30.0, scheme="even_odd")
        >>> state, info = move(key, state, val_losses, jnp.int32(0))
    """
    ladder = as_ladder(ladder)  # checked; a hand-built one's lists made arrays
    auto = isinstance(c, str)
    if auto and c != AUTO:
        raise ValueError(f"c must be a number > 0 or 'auto', got {c!r}")
    if not isinstance(c, str):
        if isinstance(c, bool) or np.ndim(c) != 0:
            raise TypeError(f"c must be one number or 'auto', got {c!r}")
        if not np.isfinite(c) or c <= 0:
            raise ValueError(f"c must be finite and > 0, got {c}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if not isinstance(enabled, bool | np.bool_):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    if not isinstance(adapt_ladder, bool | np.bool_):
        raise TypeError(f"adapt_ladder must be True or False, got {adapt_ladder!r}")
    if isinstance(target_acceptance, bool) or not isinstance(
        target_acceptance, int | float | np.floating
    ):
        raise TypeError(
            f"target_acceptance must be a number in (0, 1), got {target_acceptance!r}"
        )
    if not 0 < target_acceptance < 1:
        raise ValueError(
            f"target_acceptance must be a number in (0, 1), got {target_acceptance!r}"
        )
    adaptation = None
    if auto or adapt_ladder:
        if isinstance(adapt_rounds, bool) or not isinstance(
            adapt_rounds, int | np.integer
        ):
            raise TypeError(f"adapt_rounds must be an int, got {adapt_rounds!r}")
        if adapt_rounds < 1:
            raise ValueError(f"adapt_rounds must be >= 1, got {adapt_rounds}")
        rule, dropout_rule = _temperature_rule(ladder)
        adaptation = Adaptation(
            target=float(target_acceptance) if auto else None,
            ladder=bool(adapt_ladder),
            rule=rule,
            dropout_temperature=dropout_rule,
            log_names=tuple(
                name for name, v in ladder.values.items() if np.all(np.asarray(v) > 0)
            ),
        )
    start = 1.0 if auto else c
    return ExchangeMove(
        ladder, jnp.float32(start), scheme, bool(enabled), adaptation,
        int(adapt_rounds) if adaptation else 0,
    )  # fmt: skip


def _temperature_rule(ladder: Ladder) -> tuple[str | None, str]:
    """``(name, dropout rule)``: who sets the ladder's temperatures by its rule.

    The name is None when no single hyperparameter's default rule gives the
    temperatures; the dropout rule (``"library"`` or ``"authors"``) matters
    when the name is the dropout rate.
    """
    temps = np.asarray(ladder.temperatures, np.float64)
    for name, values in ladder.values.items():
        if name in HYPERPARAMETERS and np.ptp(np.asarray(values)) > 0:
            for dropout_rule in DROPOUT_TEMPERATURES:
                values64 = np.asarray(values, np.float64)
                if name == "dropout_rate" and dropout_rule == "authors":
                    if np.any(values64 <= 0):
                        continue
                rule = default_temperature(
                    name, values64, dropout_temperature=dropout_rule
                )
                if np.allclose(rule, temps, rtol=1e-5):
                    return name, dropout_rule
    return None, "library"


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
