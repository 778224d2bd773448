"""Moves: what happens to the replicas between two training segments.

A move is a pair of pure functions, in the optax / blackjax manner:

```python
move_state = move.init(state)
new_state, move_state, info = move.step(key, state, move_state, scores, round_index)
```

``init`` builds what the move carries from round to round (an exchange's
rungs, its adaptive C and ladder; None for a move that carries nothing) from
the replicas before the first round. ``step`` is jit-able:
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
  The grid baseline is the exchange with no swap
  (``exchange_move(ladder, enabled=False)``, ``pt_train(..., exchanges=False)``):
  PT's training and evaluation programs, nothing proposed, recording what the
  tests would have accepted.
- :func:`tempering.pbt.pbt_move`: PBT's exploit/explore; whole models move.
- :func:`as_move`: an object with ``init`` and ``step``, or a stateless function
  ``fn(key, state, scores, round_index) -> (state, info)``.

A move that keeps replicas on the rungs of a ladder says so with a ``rungs``
field in its state, shape ``(M,)`` int32, the rung each replica holds: the
driver records it every round (``history.rungs``, ``history.initial_rungs``;
:mod:`tempering.diagnostics` reads them) and restores a diverged replica from
the nearest rung (:mod:`tempering.divergence`). The replicas themselves hold
only their hyperparameter values.

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
    SCHEDULES,
    Adaptation,
    AdaptationState,
    adapt,
    init_adaptation,
)
from tempering.exchange import SCHEMES, check_c, exchange, pair_log_ratios
from tempering.hyperparams import dtype_of
from tempering.ladder import Ladder, as_ladder, assign_rungs, rungs_held
from tempering.sharding import to_host
from tempering.state import ReplicaState

__all__ = [
    "ExchangeMove",
    "ExchangeMoveInfo",
    "ExchangeState",
    "FunctionMove",
    "IdentityMove",
    "Move",
    "NoInfo",
    "StaticMove",
    "as_move",
    "exchange_move",
    "identity_move",
    "rungs_of",
]


class Move(Protocol):
    """The move protocol: ``init`` and a jit-able ``step``.

    Optional, read by :func:`tempering.train` where present:
    ``compares_scores`` (a property: False for a move that ignores the
    scores, so no validation data is needed) and ``largest_batch_size()``
    (the largest ``batch_size`` hyperparameter the move can set, or None:
    every step's batch holds it).
    """

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


def rungs_of(move_state: Any) -> np.ndarray | None:
    """The ``(M,)`` rungs a move state keeps (its ``rungs`` field) on the host, or None."""
    rungs = getattr(move_state, "rungs", None)
    return None if rungs is None else np.array(jax.device_get(rungs), np.int32)


class ExchangeState(NamedTuple):
    """What an exchange carries between rounds (its move state)."""

    rungs: jax.Array  # shape=(M,), int32; the rung replica m holds
    adaptation: AdaptationState | None  # C and the ladder with c="auto", else None


class ExchangeMoveInfo(NamedTuple):
    """One exchange round: :class:`tempering.exchange.ExchangeInfo` plus C and the ladder."""

    proposed: jax.Array  # shape=(M - 1,), dtype=bool
    accepted: jax.Array  # shape=(M - 1,), dtype=bool
    acceptance_prob: jax.Array  # shape=(M - 1,), float32, 0 where undefined
    log_ratio: jax.Array  # shape=(M - 1,), float32, c * dbeta * dloss
    c: jax.Array  # shape=(), float32, the C this round used
    temperatures: jax.Array  # shape=(M,), the ladder after the round

    def per_replica_fields(self) -> tuple[str, ...]:
        """What :mod:`tempering.loggers` writes per replica: nothing.

        The rungs are the record's; the other fields are per pair or per rung.
        """
        return ()

    def per_rung_fields(self) -> tuple[str, ...]:
        """What :mod:`tempering.loggers` writes per rung: the temperatures."""
        return ("temperatures",)


@struct.dataclass
class ExchangeMove:
    """The PT exchange over a ladder (build it with :func:`exchange_move`).

    Its state is an :class:`ExchangeState`: the rung each replica holds and,
    with ``adaptation`` set (``c="auto"``), an
    :class:`~tempering.adaptation.AdaptationState` holding C and the ladder,
    tuned during the first ``adapt_rounds`` rounds, then frozen.
    """

    ladder: Ladder
    c: jax.Array  # shape=(), float32, C (the starting C when adaptive)
    scheme: str = struct.field(pytree_node=False, default="even_odd")
    # False: every proposal is rejected (the grid), with the same diagnostics.
    enabled: bool = struct.field(pytree_node=False, default=True)
    adaptation: Adaptation | None = struct.field(pytree_node=False, default=None)
    adapt_rounds: int = struct.field(pytree_node=False, default=0)

    @property
    def compares_scores(self) -> bool:
        """Whether its decisions read the scores (not the grid's)."""
        return self.enabled

    def init(self, state: ReplicaState) -> ExchangeState:
        """The rungs the replicas hold (read off their values) and a fresh adaptation.

        Raises:
            ValueError: the replicas do not hold this ladder's rungs, each once
                (give them with ``create_replicas(..., ladder)`` or
                :func:`tempering.ladder.assign_rungs`).
        """
        # Over several processes the values are split between them: gathered
        # (a collective; every process initialises the move alike).
        held = state.replace(hyperparams=to_host(state.hyperparams))
        rungs = rungs_held(held, self.ladder)
        if rungs is None:
            raise ValueError(
                "the replicas' hyperparameters are not the rungs of this ladder, "
                "each held by one replica: create them with this ladder "
                "(create_replicas(..., ladder)) or give them its values with "
                "tempering.ladder.assign_rungs(state, ladder, range(M)); pt_train "
                "does this itself"
            )
        adaptation = None
        if self.adaptation is not None:
            adaptation = init_adaptation(self.ladder, self.adapt_rounds, float(self.c))
        return ExchangeState(jnp.asarray(rungs, jnp.int32), adaptation)

    def check_state(self, move_state: Any) -> None:
        """Raises ValueError unless ``move_state`` is a state of this exchange."""
        if not isinstance(move_state, ExchangeState):
            raise ValueError(
                "move_state must be the ExchangeState of an exchange (e.g. "
                f"result.move_state), got {type(move_state).__name__}"
            )
        rungs = np.asarray(move_state.rungs)
        if rungs.shape != (self.ladder.num_rungs,) or not np.issubdtype(
            rungs.dtype, np.integer
        ):
            raise ValueError(
                f"move_state.rungs must be integers, shape ({self.ladder.num_rungs},) "
                f"(result.move_state), got {rungs.dtype}{list(rungs.shape)}"
            )
        if sorted(rungs.tolist()) != list(range(self.ladder.num_rungs)):
            raise ValueError(
                f"move_state.rungs must be a permutation of 0..{self.ladder.num_rungs - 1} "
                f"(one rung per replica of this ladder), got {rungs.tolist()}"
            )
        adaptation = move_state.adaptation
        if self.adaptation is None:
            if adaptation is not None:
                raise ValueError(
                    "move_state: an exchange with a fixed C carries no adaptation "
                    "(move_state.adaptation is None), got "
                    f"{type(adaptation).__name__}"
                )
            return
        if not isinstance(adaptation, AdaptationState):
            raise ValueError(
                "move_state.adaptation must be the AdaptationState of an adaptive "
                "exchange (c='auto'), e.g. from result.move_state, got "
                f"{type(adaptation).__name__}"
            )
        if sorted(adaptation.values) != sorted(self.ladder.values) or np.shape(
            adaptation.temperatures
        ) != np.shape(self.ladder.temperatures):
            raise ValueError(
                "move_state belongs to another ladder (other names or number of "
                "rungs); pass None to adapt afresh"
            )
        ends = np.asarray(self.ladder.temperatures)[[0, -1]]
        if not np.allclose(np.asarray(adaptation.temperatures)[[0, -1]], ends):
            raise ValueError(
                "move_state belongs to a ladder with other ends; pass None to "
                "adapt afresh"
            )
        if np.shape(adaptation.log_ratios)[0] != self.adapt_rounds:
            raise ValueError(
                f"move_state adapts over {np.shape(adaptation.log_ratios)[0]} "
                f"rounds, this exchange over adapt_rounds={self.adapt_rounds}: "
                "give the adapt_rounds of the run being continued"
            )

    def check_held(self, state: ReplicaState, move_state: ExchangeState) -> None:
        """Raises ValueError unless each replica holds its rung's values.

        The rung ``move_state.rungs[m]`` of the ladder in use (an adapted one
        included): a state and a move state of one call, or of another run.
        """
        held = to_host(state.hyperparams)  # over several processes: gathered
        rungs = np.asarray(move_state.rungs)
        for name, values in self.current_ladder(move_state).values.items():
            expected = np.asarray(values, np.float32)[rungs]
            got = np.asarray(held.get(name, np.full_like(expected, np.nan)), np.float32)
            if got.shape != expected.shape or not np.array_equal(got, expected):
                raise ValueError(
                    f"the replicas do not hold the values of move_state's rungs "
                    f"({name}: {got.tolist()}, its rungs give {expected.tolist()}): "
                    "continue with the state and move_state of one call "
                    "(result.state, result.move_state), or pass move_state=None to "
                    "start the move afresh"
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
        return move_state.adaptation.ladder.replace(rule=rule)

    def current_c(self, move_state: Any) -> jax.Array:
        """C in use: the adapted one when adaptive, else ``self.c``."""
        return self.c if self.adaptation is None else move_state.adaptation.c

    def step(
        self,
        key: jax.Array,
        state: ReplicaState,
        move_state: ExchangeState,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, ExchangeState, ExchangeMoveInfo]:
        """Proposes swaps of adjacent rungs; accepted replicas swap hyperparameters.

        Raises:
            ValueError: ``scores`` not of shape ``(M,)`` or ``round_index`` not
                an integer scalar (checked under ``jax.jit`` too).
        """
        _check_scores_and_round(scores, round_index, self.ladder.num_rungs)
        rungs, adaptation = move_state
        ladder, c = self.ladder, self.c
        if self.adaptation is not None:
            assert adaptation is not None  # init's AdaptationState
            ratios = pair_log_ratios(rungs, scores, adaptation.ladder.betas)
            ladder = adaptation.ladder
            adaptation = adapt(self.adaptation, adaptation, ratios)
            c = adaptation.c
        proposal, exchanged = exchange(
            key, rungs, scores, ladder.betas, c=c,
            scheme=self.scheme, parity=round_index % 2,
        )  # fmt: skip
        if not self.enabled:
            exchanged = exchanged._replace(
                proposed=jnp.zeros_like(exchanged.proposed),
                accepted=jnp.zeros_like(exchanged.accepted),
            )
            proposal = rungs
        if adaptation is not None:
            ladder = adaptation.ladder  # re-spaced for the next round
        state = assign_rungs(state, ladder, proposal)
        info = ExchangeMoveInfo(*exchanged, c=c, temperatures=ladder.temperatures)
        return state, ExchangeState(proposal, adaptation), info


def _check_scores_and_round(scores: Any, round_index: Any, num: int) -> None:
    """Shapes and dtypes of a move's per-round arguments (known while tracing)."""
    if np.shape(scores) != (num,):
        raise ValueError(
            f"scores must hold one validation loss per replica, shape ({num},), got "
            f"shape {np.shape(scores)}"
        )
    if np.ndim(round_index) != 0 or not jnp.issubdtype(
        dtype_of(round_index), jnp.integer
    ):
        raise ValueError(
            "round_index must be an integer scalar (the round's number: even-odd "
            f"alternates its pairs with it), got {round_index!r}"
        )


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
    adapt_schedule: str = "freeze",
) -> ExchangeMove:
    """The parallel tempering exchange as a move, validated before anything compiles.

    Args:
        ladder: the :class:`tempering.Ladder`.
        c: the normalisation constant C > 0 of the acceptance probability, or
            ``"auto"``: tuned in the first ``adapt_rounds`` rounds so that the
            mean acceptance of proposed swaps is ``target_acceptance`` where
            the share of favourable swaps allows it, then frozen
            (:mod:`tempering.adaptation`).
        scheme: ``"even_odd"`` (default; the parity alternates with the
            round) or ``"random_pair"`` (the paper's Algorithm 1).
        enabled: False makes no swap (the grid): nothing is proposed
            (``history.proposed`` False, so the acceptance rates and the
            barrier read NaN), while ``acceptance_prob`` records what each
            pair's test would have given.
        target_acceptance: in (0, 1); used by ``c="auto"``.
        adapt_rounds: rounds of adaptation (>= 1) with ``c="auto"`` or
            ``adapt_ladder``.
        adapt_ladder: also re-space the inner rungs during the adaptation so
            that adjacent pairs reject equally often (ends and order kept);
            not with ``enabled=False`` (a grid keeps its ladder).
        adapt_schedule: ``"freeze"`` (default): C is frozen after
            ``adapt_rounds`` rounds; ``"decay"``: it keeps adapting with a
            decaying gain (:func:`tempering.adaptation.decay_step`; needs
            ``c="auto"``).

    Returns:
        An :class:`ExchangeMove`.

    Raises:
        TypeError: ``ladder`` not a :class:`Ladder` (or its fields), ``c``
            not a number or ``"auto"``, ``enabled`` or ``adapt_ladder`` not a
            bool.
        ValueError: ``c <= 0`` or another string, an unknown ``scheme``,
            ``target_acceptance`` outside (0, 1), ``adapt_rounds`` < 1, an
            unknown ``adapt_schedule`` or one that needs an adaptive C.

    Defaults differ from :func:`tempering.pt_train`'s: here C is fixed at 1.0
    unless given (``pt_train`` tunes it, ``c="auto"``), and ``adapt_rounds``
    is 10 (``pt_train``'s is a quarter of its rounds, rounded up).

    Example:
        >>> move = exchange_move(ladder, c=30.0, scheme="even_odd")
        >>> move_state = move.init(state)
        >>> state, move_state, info = move.step(
        ...     key, state, move_state, val_losses, jnp.int32(0))
    """
    ladder = as_ladder(ladder)  # checked; a hand-built one's lists made arrays
    auto = isinstance(c, str)
    if auto and c != AUTO:
        raise ValueError(f"c must be a number > 0 or 'auto', got {c!r}")
    if not auto:
        try:
            c = check_c(c)
        except TypeError:
            raise TypeError(f"c must be one number or 'auto', got {c!r}") from None
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
    if adapt_schedule not in SCHEDULES:
        raise ValueError(
            f"adapt_schedule must be one of {SCHEDULES}, got {adapt_schedule!r}"
        )
    if adapt_schedule == "decay" and not auto:
        raise ValueError(
            "adapt_schedule='decay' adapts C over the whole run: it needs c='auto', "
            f"got c={c!r}"
        )
    if adapt_ladder and not enabled:
        raise ValueError(
            "adapt_ladder=True re-spaces the rungs by how often swaps are accepted, "
            "but enabled=False (pt_train's exchanges=False: the grid) makes none: "
            "a grid keeps the ladder it is given; keep adapt_ladder=False"
        )
    if adapt_ladder and np.ptp(np.asarray(ladder.values.get("batch_size", 0))) > 0:
        raise ValueError(
            "adapt_ladder=True re-spaces the rungs continuously, but batch sizes are "
            "whole numbers: keep adapt_ladder=False with a batch_size ladder"
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
            schedule=adapt_schedule,
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
