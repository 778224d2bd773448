"""Moves: what happens to the replicas between two training segments.

A move is a pair of pure functions, in the optax / blackjax manner::

    move_state = move.init(state)
    new_state, move_state, info = move.step(key, state, move_state, scores, round_index)

``init`` builds what the move carries from round to round (the adaptive
exchange's C and ladder, a multi-ladder exchange's rungs; None for a move that
carries nothing) from the replicas before the first round. ``step`` is jit-able:
it sees the round's scores (lower is better; by default the validation loss),
and returns the replicas, its new state and a diagnostic ``info`` pytree that
the driver records every round. ``round_index`` counts the rounds after the
burn-in from 0 (the even-odd scheme alternates on it). The driver
(:func:`tempering.train`) carries ``(replicas, move_state)``, jits ``step`` once
with the replicas' buffers donated, and returns the final move state beside the
replicas, so that a later call continues the run.

- :func:`exchange_move`: the parallel tempering exchange (Metropolis test on
  adjacent rungs, :func:`tempering.exchange`); only hyperparameters move.
- :func:`identity_move`: nothing moves (a run with no moves, e.g. a burn-in).
  The grid baseline is the exchange with every swap rejected
  (``exchange_move(ladder, enabled=False)``, ``pt_train(..., exchanges=False)``):
  the very programs of PT, recording what it would have accepted.
- :func:`tempering.pbt.pbt_move`: PBT's exploit/explore; whole models move.
- :func:`as_move`: an object with ``init`` and ``step``, or a stateless function
  ``fn(key, state, scores, round_index) -> (state, info)``.

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
    Ladder,
    as_ladder,
    assign_rungs,
)
from tempering.state import ReplicaState

__all__ = [
    "ExchangeMove",
    "ExchangeMoveInfo",
    "FunctionMove",
    "IdentityMove",
    "Move",
    "NoInfo",
    "StaticMove",
    "as_move",
    "exchange_move",
    "identity_move",
]


class Move(Protocol):
    """The move protocol: ``init`` and a jit-able ``step``."""

    def init(self, state: ReplicaState) -> Any:
        """What the move carries between rounds, for replicas before the first."""

    def step(
        self,
        key: jax.Array,
        state: ReplicaState,
        move_state: Any,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, Any, Any]:
        """Returns the new replicas, the new move state and the move's info."""


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

    Its state is None for a fixed C; with ``adaptation`` set (``c="auto"``) it
    is an :class:`~tempering.adaptation.AdaptationState` holding C and the
    ladder, tuned during the first ``adapt_rounds`` rounds, then frozen.
    """

    ladder: Ladder
    c: jax.Array  # shape=(), float32, C (the starting C when adaptive)
    scheme: str = struct.field(pytree_node=False, default="even_odd")
    # False: every proposal is rejected (the grid), with the same diagnostics.
    enabled: bool = struct.field(pytree_node=False, default=True)
    adaptation: Adaptation | None = struct.field(pytree_node=False, default=None)
    adapt_rounds: int = struct.field(pytree_node=False, default=0)

    def init(self, state: ReplicaState | None = None) -> AdaptationState | None:
        """The exchange's starting state: None for a fixed C, else the adaptation's."""
        del state  # the exchange starts from its ladder alone
        if self.adaptation is None:
            return None
        return init_adaptation(self.ladder, self.adapt_rounds, float(self.c))

    def check_state(self, move_state: Any) -> None:
        """Raises ValueError unless ``move_state`` is a state of this exchange."""
        if self.adaptation is None:
            if move_state is not None:
                raise ValueError(
                    "move_state: an exchange with a fixed C carries no state (None), "
                    f"got {type(move_state).__name__}"
                )
            return
        if not isinstance(move_state, AdaptationState):
            raise ValueError(
                "move_state must be the AdaptationState of an adaptive exchange "
                f"(c='auto'), e.g. result.move_state, got {type(move_state).__name__}"
            )
        if sorted(move_state.values) != sorted(self.ladder.values) or np.shape(
            move_state.temperatures
        ) != np.shape(self.ladder.temperatures):
            raise ValueError(
                "move_state belongs to another ladder (other names or number of "
                "rungs); pass None to adapt afresh"
            )
        ends = np.asarray(self.ladder.temperatures)[[0, -1]]
        if not np.allclose(np.asarray(move_state.temperatures)[[0, -1]], ends):
            raise ValueError(
                "move_state belongs to a ladder with other ends; pass None to "
                "adapt afresh"
            )
        if np.shape(move_state.log_ratios)[0] != self.adapt_rounds:
            raise ValueError(
                f"move_state adapts over {np.shape(move_state.log_ratios)[0]} "
                f"rounds, this exchange over adapt_rounds={self.adapt_rounds}: "
                "give the adapt_rounds of the run being continued"
            )

    def current_ladder(self, move_state: Any) -> Ladder:
        """The ladder in use: the adapted one when adaptive, else ``self.ladder``.

        A re-spaced ladder keeps the rule of its temperatures when one
        hyperparameter's rule sets them; otherwise they are explicit.
        """
        if self.adaptation is None:
            return self.ladder
        adaptation = self.adaptation
        kept = not adaptation.ladder or adaptation.rule is not None
        rule = self.ladder.rule if kept else None
        return move_state.ladder.replace(rule=rule)

    def current_c(self, move_state: Any) -> jax.Array:
        """C in use: the adapted one when adaptive, else ``self.c``."""
        return self.c if self.adaptation is None else move_state.c

    def step(
        self,
        key: jax.Array,
        state: ReplicaState,
        move_state: AdaptationState | None,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, AdaptationState | None, ExchangeMoveInfo]:
        """Proposes swaps of adjacent rungs; accepted replicas swap hyperparameters."""
        ladder, c = self.ladder, self.c
        if self.adaptation is not None:
            assert move_state is not None  # init's AdaptationState
            ratios = pair_log_ratios(state.rungs, scores, move_state.ladder.betas)
            ladder = move_state.ladder
            move_state = adapt(self.adaptation, move_state, ratios)
            c = move_state.c
        proposal, exchanged = exchange(
            key, state.rungs, scores, ladder.betas, c=c,
            scheme=self.scheme, parity=round_index % 2,
        )  # fmt: skip
        if not self.enabled:
            exchanged = exchanged._replace(
                proposed=jnp.zeros_like(exchanged.proposed),
                accepted=jnp.zeros_like(exchanged.accepted),
            )
            proposal = state.rungs
        if move_state is not None:
            ladder = move_state.ladder  # re-spaced for the next round
        state = assign_rungs(state, ladder, proposal)
        info = ExchangeMoveInfo(*exchanged, c=c, temperatures=ladder.temperatures)
        return state, move_state, info


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

    Read off :attr:`Ladder.rule`: the name is the one varying hyperparameter
    whose default rule gives the temperatures, None for explicit temperatures
    or several varying names (their product); the dropout rule matters when
    the name is the dropout rate.
    """
    if ladder.rule is None:
        return None, "library"
    varying = [n for n, v in ladder.values.items() if np.ptp(np.asarray(v)) > 0]
    return (varying[0] if len(varying) == 1 else None), ladder.rule


class NoInfo(NamedTuple):
    """The info of a move that reports nothing."""


@struct.dataclass
class IdentityMove:
    """Leaves the replicas as they are: the independent grid."""

    def init(self, state: ReplicaState | None = None) -> None:
        """Nothing to carry."""
        del state

    def step(
        self,
        key: jax.Array,
        state: ReplicaState,
        move_state: None,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, None, NoInfo]:
        """Returns ``state`` unchanged."""
        del key, scores, round_index
        return state, move_state, NoInfo()


def identity_move() -> IdentityMove:
    """The move that changes nothing: segments and evaluations only.

    Not the grid baseline: that is ``pt_train(..., exchanges=False)``, the same
    programs as PT with every swap rejected (and the acceptance it would
    have had recorded).
    """
    return IdentityMove()


@struct.dataclass
class FunctionMove:
    """A stateless move function, held static (its closure is part of the cache key).

    ``fn(key, state, scores, round_index) -> (state, info)``.
    """

    fn: Callable = struct.field(pytree_node=False)

    def init(self, state: ReplicaState | None = None) -> None:
        """Nothing to carry."""
        del state

    def step(
        self,
        key: jax.Array,
        state: ReplicaState,
        move_state: None,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, None, Any]:
        """Calls the function."""
        state, info = self.fn(key, state, scores, round_index)
        return state, move_state, info


@struct.dataclass
class StaticMove:
    """A user's move object that is not a pytree, held static (hashed by identity)."""

    move: Any = struct.field(pytree_node=False)

    def init(self, state: ReplicaState) -> Any:
        """The wrapped move's ``init``."""
        return self.move.init(state)

    def step(
        self,
        key: jax.Array,
        state: ReplicaState,
        move_state: Any,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, Any, Any]:
        """The wrapped move's ``step``."""
        return self.move.step(key, state, move_state, scores, round_index)


def _is_pytree_dataclass(move: Any) -> bool:
    return dataclasses.is_dataclass(move) and hasattr(move, "replace")


def as_move(move: Any) -> Any:
    """A move the driver can jit.

    Objects with ``init`` and ``step`` pass through (wrapped in
    :class:`StaticMove` unless they are ``flax.struct`` pytrees); a plain
    function ``fn(key, state, scores, round_index) -> (state, info)`` becomes a
    stateless :class:`FunctionMove`.

    Raises:
        TypeError: anything else, or an object with the old single-call form.
    """
    if callable(getattr(move, "init", None)) and callable(getattr(move, "step", None)):
        return move if _is_pytree_dataclass(move) else StaticMove(move)
    if _is_pytree_dataclass(move):
        raise TypeError(
            f"move: {type(move).__name__} is a pytree but has no init(state) and "
            "step(key, state, move_state, scores, round_index) methods; a move "
            "written as __call__(key, state, scores, round_index) becomes step(key, "
            "state, move_state, scores, round_index) -> (state, move_state, info) "
            "with init(state) -> None"
        )
    if callable(move) and not isinstance(move, type):
        return FunctionMove(move)
    raise TypeError(
        "move must have init(state) -> move_state and step(key, state, move_state, "
        "scores, round_index) -> (state, move_state, info) (tempering.moves.Move), "
        f"or be a function fn(key, state, scores, round_index) -> (state, info); got "
        f"{type(move).__name__}"
    )
