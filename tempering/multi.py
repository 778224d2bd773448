"""One ladder per hyperparameter: the exchanged ladder is drawn at random each round.

The authors' alternative to a single ladder over several hyperparameters (for
which :func:`tempering.make_ladder` multiplies the default temperatures): every
hyperparameter gets its own :class:`~tempering.Ladder` of M rungs, and every
replica holds one rung on each ladder at once. Each round one ladder ``k`` is
drawn uniformly, and the ordinary exchange (:func:`tempering.exchange_move`)
runs on it alone with that ladder's temperatures and C: an accepted swap
exchanges only ladder ``k``'s hyperparameters between the two replicas, whose
rungs on the other ladders stay as they are.

What the move carries between rounds lives in ``state.move_state`` as a
:class:`MultiExchangeState`: the rung of every replica on every ladder, and
each ladder's own exchange state (its adaptive C with ``c="auto"``, adapted
over the rounds in which that ladder was drawn). ``state.rungs`` holds the
rungs on ladder 0.

Example:
    >>> lr = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
    >>> q = tp.linear_ladder("dropout_rate", 0.1, 0.4, 4)
    >>> move = multi_exchange_move([lr, q], c=[30.0, "auto"])
    >>> result = tp.train(state, key, move, train_data=..., validation_data=...,
    ...                   num_steps=1000, interval=50)
    >>> result.history.move.ladder  # (R,) the ladder exchanged each round
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tempering.adaptation import AdaptationState
from tempering.ladder import Ladder
from tempering.moves import ExchangeMove, exchange_move
from tempering.replicas import ReplicaState, as_ladder, check_ladder, set_hyperparams

__all__ = [
    "MultiExchangeInfo",
    "MultiExchangeMove",
    "MultiExchangeState",
    "multi_exchange_move",
]


class MultiExchangeState(NamedTuple):
    """What :class:`MultiExchangeMove` carries between rounds (``state.move_state``)."""

    rungs: jax.Array  # shape=(K, M), int32; rung of replica m on ladder k
    # One entry per ladder: that exchange's move_state (None for a fixed C, an
    # AdaptationState for c="auto").
    sub_states: tuple[Any, ...]


class MultiExchangeInfo(NamedTuple):
    """One round: which ladder was exchanged, its exchange, and every ladder's C."""

    ladder: jax.Array  # shape=(), int32; k, the ladder exchanged this round
    proposed: jax.Array  # shape=(M - 1,), bool; pair (r, r + 1) of ladder k
    accepted: jax.Array  # shape=(M - 1,), bool
    acceptance_prob: jax.Array  # shape=(M - 1,), float32, 0 where undefined
    log_ratio: jax.Array  # shape=(M - 1,), float32, c_k * dbeta * dloss
    c: jax.Array  # shape=(K,), float32; C of every ladder this round
    rungs: jax.Array  # shape=(K, M), int32; rungs on every ladder after the round


@struct.dataclass
class MultiExchangeMove:
    """Exchanges on one of K ladders per round (build it with :func:`multi_exchange_move`).

    Its sub-moves are pytrees (ladders and C traced, settings static), so a
    new move with the same shapes and settings reuses the compiled program.
    """

    moves: tuple[ExchangeMove, ...]  # one exchange per ladder, K >= 1

    @property
    def num_ladders(self) -> int:
        """Number of ladders K."""
        return len(self.moves)

    @property
    def ladders(self) -> tuple[Ladder, ...]:
        """The starting ladders, one per hyperparameter."""
        return tuple(move.ladder for move in self.moves)

    def init_state(self, state: ReplicaState) -> ReplicaState:
        """Gives the move its :class:`MultiExchangeState`; a compatible one is continued.

        The driver calls it once before the first round. A fresh state starts
        every ladder at ``state.rungs``; a ``state.move_state`` that already is
        a :class:`MultiExchangeState` of K ladders and M replicas whose ladder-0
        rungs equal ``state.rungs`` (e.g. from an earlier call of the same
        run) is kept, each adaptive sub-state continued as
        :meth:`tempering.moves.ExchangeMove.init_state` does. Either way every
        replica is then given the hyperparameters of its rung on every ladder,
        so that the replicas match the rungs from the first round on.

        Args:
            state: the replicas; they must hold every ladder's names.

        Returns:
            The state with ``move_state`` set and the ladders' values assigned.

        Raises:
            ValueError: a ladder whose rung count differs from the number of
                replicas, or names the state does not hold.
        """
        for ladder in self.ladders:
            check_ladder(state, ladder)
        current = state.move_state
        fresh = not self._continues(current, state)
        if fresh:
            rungs = jnp.tile(jnp.asarray(state.rungs, jnp.int32), (self.num_ladders, 1))
            previous = (None,) * self.num_ladders
        else:
            rungs, previous = jnp.asarray(current.rungs, jnp.int32), current.sub_states
        sub_states: list[Any] = []
        for move, before in zip(self.moves, previous, strict=True):
            if move.adaptation is None:
                sub_states.append(None)
            else:
                sub = move.init_state(state.replace(move_state=before))
                sub_states.append(sub.move_state)
        multi = MultiExchangeState(rungs, tuple(sub_states))
        state = state.replace(move_state=multi)
        values = {}
        for k, ladder in enumerate(self.current_ladders(state)):
            values.update({name: v[rungs[k]] for name, v in ladder.values.items()})
        state = set_hyperparams(state, **values)
        return state.replace(rungs=rungs[0])

    def _continues(self, current: Any, state: ReplicaState) -> bool:
        if not isinstance(current, MultiExchangeState):
            return False
        shape = (self.num_ladders, state.num_replicas)
        if np.shape(current.rungs) != shape or len(current.sub_states) != shape[0]:
            return False
        return bool(
            np.array_equal(np.asarray(current.rungs)[0], np.asarray(state.rungs))
        )

    def current_ladders(self, state: ReplicaState) -> tuple[Ladder, ...]:
        """The K ladders in use (an adaptive sub-move's ladder from its state).

        Args:
            state: replicas whose ``move_state`` this move set (else it is
                created first, as :meth:`init_state` would).

        Returns:
            One :class:`~tempering.Ladder` per hyperparameter, in order.
        """
        multi = state.move_state
        if not (
            isinstance(multi, MultiExchangeState)
            and len(multi.sub_states) == self.num_ladders
        ):
            multi = self.init_state(state).move_state
        return tuple(
            sub.ladder if isinstance(sub, AdaptationState) else move.ladder
            for move, sub in zip(self.moves, multi.sub_states, strict=True)
        )

    def __call__(
        self,
        key: jax.Array,
        state: ReplicaState,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, MultiExchangeInfo]:
        """Draws a ladder k uniformly and runs its exchange on the replicas' rungs on k.

        Args:
            key: PRNG key of the round (split: the choice, the exchange).
            state: replicas with ``move_state`` from :meth:`init_state`.
            scores: ``(M,)`` per replica, lower is better.
            round_index: ``()`` int32, passed on to the exchange (the parity of
                ``scheme="even_odd"``).

        Returns:
            ``(state, info)``: only ladder k's hyperparameters and rungs may
            have changed; ``state.rungs`` is the rung on ladder 0.
        """
        multi = state.move_state
        if not (
            isinstance(multi, MultiExchangeState)
            and len(multi.sub_states) == self.num_ladders
        ):
            raise TypeError(
                "a multi-ladder exchange needs state.move_state from "
                "move.init_state(state); tempering.train calls it"
            )
        choice_key, exchange_key = jax.random.split(key)
        chosen = jax.random.randint(choice_key, (), 0, self.num_ladders)

        def branch(k: int):
            move = self.moves[k]

            def run(state: ReplicaState):
                inner = state.replace(
                    rungs=multi.rungs[k], move_state=multi.sub_states[k]
                )
                inner, info = move(exchange_key, inner, scores, round_index)
                rungs = multi.rungs.at[k].set(inner.rungs)  # (K, M), row k changed
                subs = list(multi.sub_states)
                subs[k] = inner.move_state if move.adaptation is not None else None
                new = MultiExchangeState(rungs, tuple(subs))
                return inner.replace(move_state=new), info

            return run

        state, info = jax.lax.switch(
            chosen, [branch(k) for k in range(self.num_ladders)], state
        )
        multi = state.move_state
        state = state.replace(rungs=multi.rungs[0])
        # (K,): an adaptive C after this round is the C this round used.
        c_values = [
            move.c if move.adaptation is None else sub.c
            for move, sub in zip(self.moves, multi.sub_states, strict=True)
        ]
        cs = jnp.stack([jnp.asarray(c, jnp.float32) for c in c_values])
        return state, MultiExchangeInfo(
            ladder=chosen.astype(jnp.int32),
            proposed=info.proposed,
            accepted=info.accepted,
            acceptance_prob=info.acceptance_prob,
            log_ratio=info.log_ratio,
            c=cs,
            rungs=multi.rungs,
        )


def multi_exchange_move(
    ladders: Sequence[Ladder],
    *,
    c: float | str | Sequence[float | str] = 1.0,
    scheme: str = "random_pair",
    enabled: bool = True,
    target_acceptance: float = 0.3,
    adapt_rounds: int = 10,
) -> MultiExchangeMove:
    """The exchange over several ladders, one drawn at random each round, validated.

    Args:
        ladders: K >= 1 ladders with the same number of rungs M (the number of
            replicas) and disjoint hyperparameter names: build each over its
            own hyperparameter only, and give the shared ones to
            :func:`tempering.create_replicas` (``hyperparams=``).
        c: the constant C > 0 of every ladder, ``"auto"`` (each ladder tunes
            its own C in the first ``adapt_rounds`` rounds *in which it is
            drawn*, then freezes it), or a sequence with one C (or ``"auto"``)
            per ladder.
        scheme: ``"random_pair"`` or ``"even_odd"`` (the parity follows the
            round index, whichever ladder is drawn).
        enabled: False rejects every proposal (the grid), diagnostics kept.
        target_acceptance: in (0, 1); used by ``c="auto"``.
        adapt_rounds: own rounds of adaptation (>= 1) of each ``"auto"`` ladder.

    Returns:
        A :class:`MultiExchangeMove`.

    Raises:
        TypeError: ``ladders`` is not a sequence of :class:`~tempering.Ladder`.
        ValueError: no ladder, ladders with different rung counts or shared
            names, a ``c`` sequence of the wrong length, or any setting
            :func:`tempering.exchange_move` rejects.

    Example:
        >>> move = multi_exchange_move([lr_ladder, dropout_ladder], c=[30.0, 2000.0])
        >>> state = move.init_state(state)
        >>> state, info = move(key, state, val_losses, jnp.int32(0))
    """
    if isinstance(ladders, Ladder) or not isinstance(ladders, Sequence):
        raise TypeError(
            "ladders must be a sequence of tempering.Ladder, one per hyperparameter, "
            f"got {type(ladders).__name__}"
        )
    ladders = tuple(ladders)
    if not ladders:
        raise ValueError("ladders must hold at least one tempering.Ladder")
    for index, ladder in enumerate(ladders):
        if not isinstance(ladder, Ladder):
            raise TypeError(
                f"ladders[{index}] must be a tempering.Ladder (see "
                f"tempering.make_ladder), got {type(ladder).__name__}"
            )
    ladders = tuple(as_ladder(ladder) for ladder in ladders)
    counts = [ladder.num_rungs for ladder in ladders]
    if len(set(counts)) > 1:
        raise ValueError(
            f"ladders must all have the same number of rungs (one per replica), "
            f"got {counts}"
        )
    seen: dict[str, int] = {}
    for index, ladder in enumerate(ladders):
        for name in ladder.values:
            if name in seen:
                raise ValueError(
                    f"ladders must have disjoint hyperparameter names: {name!r} is "
                    f"in ladders[{seen[name]}] and ladders[{index}]; build each "
                    "ladder over its own hyperparameter only (e.g. drop a shared "
                    "learning_rate=... from a dropout ladder) and set shared values "
                    "with create_replicas(..., hyperparams=...)"
                )
            seen[name] = index
    per_ladder: list[Any]
    if isinstance(c, str) or np.ndim(c) == 0:
        per_ladder = [c] * len(ladders)
    else:
        per_ladder = list(cast(Sequence[Any], c))
        if len(per_ladder) != len(ladders):
            raise ValueError(
                f"c must be one number, 'auto', or one C per ladder: got "
                f"{len(per_ladder)} values for {len(ladders)} ladders"
            )
    moves = tuple(
        exchange_move(
            ladder,
            c=c_k,
            scheme=scheme,
            enabled=enabled,
            target_acceptance=target_acceptance,
            adapt_rounds=adapt_rounds,
        )
        for ladder, c_k in zip(ladders, per_ladder, strict=True)
    )
    return MultiExchangeMove(moves)
