"""One ladder per hyperparameter: the exchanged ladder is drawn at random each round.

The authors' alternative to a single ladder over several hyperparameters (for
which :func:`tempering.make_ladder` multiplies the default temperatures): every
hyperparameter gets its own :class:`~tempering.Ladder` of M rungs, and every
replica holds one rung on each ladder at once. Each round one ladder ``k`` is
drawn uniformly, and the ordinary exchange (:func:`tempering.exchange_move`)
runs on it alone with that ladder's temperatures and C: an accepted swap
exchanges only ladder ``k``'s hyperparameters between the two replicas, whose
rungs on the other ladders stay as they are.

What the move carries between rounds is a :class:`MultiExchangeState` (the
driver's move state): each ladder's own exchange state (the rung every replica
holds on that ladder; its adaptive C with ``c="auto"``, adapted over the rounds
in which that ladder was drawn). Its ``rungs`` are the rungs on ladder 0 (what
the history records). :meth:`MultiExchangeMove.init` reads every replica's
rungs off the values it holds, so give the replicas the ladders' values first
(:meth:`MultiExchangeMove.assign`).

Example:
    >>> lr = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
    >>> q = tp.linear_ladder("dropout_rate", 0.1, 0.4, 4)
    >>> move = multi_exchange_move([lr, q], c=[30.0, "auto"])
    >>> state = move.assign(state)  # replica m on rung m of both
    >>> config = tp.RunConfig(num_steps=1000, interval=50)
    >>> result = tp.train(state, key, move, tp.RunData(train, validation), config)
    >>> result.history.move.ladder  # (R,) the ladder exchanged each round
    >>> more = tp.train(result.state, key, move, tp.RunData(train, validation),
    ...                 config, move_state=result.move_state)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tempering.ladder import Ladder, as_ladder, assign_rungs, check_ladder
from tempering.moves import ExchangeMove, ExchangeState, exchange_move
from tempering.state import ReplicaState

__all__ = [
    "MultiExchangeInfo",
    "MultiExchangeMove",
    "MultiExchangeState",
    "multi_exchange_move",
]


class MultiExchangeState(NamedTuple):
    """What :class:`MultiExchangeMove` carries between rounds (its move state)."""

    # One ExchangeState per ladder: the rungs on it and its adaptation.
    sub_states: tuple[ExchangeState, ...]

    @property
    def rungs(self) -> jax.Array:
        """``(M,)`` int32: the rung of every replica on ladder 0."""
        return self.sub_states[0].rungs

    @property
    def ladder_rungs(self) -> jax.Array:
        """``(K, M)`` int32: the rung of replica m on ladder k."""
        return jnp.stack([sub.rungs for sub in self.sub_states])


class MultiExchangeInfo(NamedTuple):
    """One round: which ladder was exchanged, its exchange, and every ladder's C."""

    ladder: jax.Array  # shape=(), int32; k, the ladder exchanged this round
    proposed: jax.Array  # shape=(M - 1,), bool; pair (r, r + 1) of ladder k
    accepted: jax.Array  # shape=(M - 1,), bool
    acceptance_prob: jax.Array  # shape=(M - 1,), float32, 0 where undefined
    log_ratio: jax.Array  # shape=(M - 1,), float32, c_k * dbeta * dloss
    c: jax.Array  # shape=(K,), float32; C of every ladder this round
    rungs: jax.Array  # shape=(K, M), int32; rungs on every ladder after the round

    def per_replica_fields(self) -> tuple[str, ...]:
        """What :mod:`tempering.loggers` writes per replica: nothing.

        Its fields are per pair or per ladder (``c`` has K entries, not M).
        """
        return ()


@struct.dataclass
class MultiExchangeMove:
    """Exchanges on one of K ladders per round (build it with :func:`multi_exchange_move`).

    Its sub-moves are pytrees (ladders and C traced, settings static), so a
    new move with the same shapes and settings reuses the compiled program.
    """

    moves: tuple[ExchangeMove, ...]  # one exchange per ladder, K >= 1

    @property
    def compares_scores(self) -> bool:
        """Whether its decisions read the scores (some ladder exchanges)."""
        return any(move.enabled for move in self.moves)

    @property
    def scheme(self) -> str:
        """The exchange scheme of every ladder (``"even_odd"``, ``"random_pair"``)."""
        return self.moves[0].scheme

    @property
    def num_ladders(self) -> int:
        """Number of ladders K."""
        return len(self.moves)

    @property
    def ladders(self) -> tuple[Ladder, ...]:
        """The starting ladders, one per hyperparameter."""
        return tuple(move.ladder for move in self.moves)

    def assign(self, state: ReplicaState, rungs: Any = None) -> ReplicaState:
        """Replica m takes rung ``rungs[m]`` of every ladder: its values.

        Args:
            state: the replicas; they must hold every ladder's names.
            rungs: ``(M,)`` the rung of each replica on every ladder; default
                replica m on rung m.

        Returns:
            The state with every ladder's hyperparameters set.

        Raises:
            ValueError: a ladder whose rung count differs from the number of
                replicas, or names the state does not hold.
        """
        for ladder in self.ladders:
            check_ladder(state, ladder)
        if rungs is None:
            rungs = np.arange(state.num_replicas)
        for ladder in self.ladders:
            state = assign_rungs(state, ladder, rungs)
        return state

    def init(self, state: ReplicaState) -> MultiExchangeState:
        """Every replica's rung on every ladder, read off the values it holds.

        Args:
            state: replicas holding, for every ladder, the values of one of its
                rungs (:meth:`assign` gives them).

        Returns:
            The :class:`MultiExchangeState` of a fresh start (adaptive ladders
            at their starting C).

        Raises:
            ValueError: a ladder that does not fit the replicas, or replicas
                whose values are not its rungs (call :meth:`assign`).
        """
        for ladder in self.ladders:
            check_ladder(state, ladder)
        subs = []
        for k, move in enumerate(self.moves):
            try:
                subs.append(move.init(state))
            except ValueError as error:
                raise ValueError(
                    f"the replicas do not hold the rungs of ladders[{k}], each "
                    "once: call state = move.assign(state) before training"
                ) from error
        return MultiExchangeState(tuple(subs))

    def check_state(self, move_state: Any) -> None:
        """Raises ValueError unless ``move_state`` is a state of this move."""
        if not (
            isinstance(move_state, MultiExchangeState)
            and isinstance(move_state.sub_states, tuple)
            and len(move_state.sub_states) == self.num_ladders
        ):
            raise ValueError(
                f"move_state must be a MultiExchangeState of {self.num_ladders} "
                f"ladders (result.move_state), got {type(move_state).__name__}"
            )
        for move, sub in zip(self.moves, move_state.sub_states, strict=True):
            move.check_state(sub)

    def check_held(self, state: ReplicaState, move_state: MultiExchangeState) -> None:
        """Raises ValueError unless each replica holds its rungs' values on every ladder."""
        for move, sub in zip(self.moves, move_state.sub_states, strict=True):
            move.check_held(state, sub)

    def current_ladders(self, move_state: MultiExchangeState) -> tuple[Ladder, ...]:
        """The K ladders in use (an adaptive sub-move's ladder from its state)."""
        return tuple(
            move.current_ladder(sub)
            for move, sub in zip(self.moves, move_state.sub_states, strict=True)
        )

    def step(
        self,
        key: jax.Array,
        state: ReplicaState,
        move_state: MultiExchangeState,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, MultiExchangeState, MultiExchangeInfo]:
        """Draws a ladder k uniformly and runs its exchange on the replicas' rungs on k.

        Args:
            key: PRNG key of the round (split: the choice, the exchange).
            state: the replicas.
            move_state: from :meth:`init` or the previous round.
            scores: ``(M,)`` per replica, lower is better.
            round_index: ``()`` int32, passed on to the exchange (the parity of
                ``scheme="even_odd"``).

        Returns:
            ``(state, move_state, info)``: only ladder k's hyperparameters and
            rungs may have changed.
        """
        choice_key, exchange_key = jax.random.split(key)
        chosen = jax.random.randint(choice_key, (), 0, self.num_ladders, jnp.int32)

        def branch(k: int):
            def run(state: ReplicaState):
                subs = list(move_state.sub_states)
                state, subs[k], info = self.moves[k].step(
                    exchange_key, state, subs[k], scores, round_index
                )
                return state, MultiExchangeState(tuple(subs)), info

            return run

        state, multi, info = jax.lax.switch(
            chosen, [branch(k) for k in range(self.num_ladders)], state
        )
        # (K,): an adaptive C after this round is the C this round used.
        cs = jnp.stack(
            [
                jnp.asarray(move.current_c(sub), jnp.float32)
                for move, sub in zip(self.moves, multi.sub_states, strict=True)
            ]
        )
        return (
            state,
            multi,
            MultiExchangeInfo(
                ladder=chosen.astype(jnp.int32),
                proposed=info.proposed,
                accepted=info.accepted,
                acceptance_prob=info.acceptance_prob,
                log_ratio=info.log_ratio,
                c=cs,
                rungs=multi.ladder_rungs,
            ),
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
        enabled: False makes no swap (the grid): nothing proposed, the
            acceptance probabilities kept.
        target_acceptance: in (0, 1); used by ``c="auto"``.
        adapt_rounds: own rounds of adaptation (>= 1) of each ``"auto"`` ladder.

    Returns:
        A :class:`MultiExchangeMove`.

    Raises:
        TypeError: ``ladders`` is not a sequence of :class:`~tempering.Ladder`,
            or a setting of the wrong type :func:`tempering.exchange_move`
            refuses (``enabled=1``).
        ValueError: no ladder, ladders with different rung counts or shared
            names, a ``c`` sequence of the wrong length, or any value
            :func:`tempering.exchange_move` rejects.

    Example:
        >>> move = multi_exchange_move([lr_ladder, dropout_ladder], c=[30.0, 2000.0])
        >>> state = move.assign(state)
        >>> move_state = move.init(state)
        >>> state, move_state, info = move.step(
        ...     key, state, move_state, val_losses, jnp.int32(0))
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
