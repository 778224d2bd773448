"""Diagnostics of a parallel tempering run: is the ladder exchanging, are replicas mixing?

Every function takes a :class:`~tempering.History` whose rounds moved rungs
(``result.history`` of :func:`tempering.pt_train`, or of :func:`tempering.train`
with an exchange; concatenated calls too) and is plain numpy;
:mod:`tempering.plots` draws the same quantities with matplotlib.

What each tells you:

- :func:`acceptance_over_time`: the fraction of proposed swaps each adjacent
  pair of rungs accepted over the last ``window`` rounds. Near 1, neighbouring
  rungs are nearly indistinguishable and replicas random-walk through the
  ladder without the exchange selecting anything (rungs too close, or C too
  small); near 0, the rungs are too far apart (or C too large) and the ladder
  splits into blocks that never communicate. A pair far below the others is a
  bottleneck: a rung should be inserted there (``adapt_ladder=True`` re-spaces
  the rungs towards equal acceptance).
- :func:`rung_occupancy`: the fraction of rounds each replica spent on each
  rung. Well-mixed replicas visit every rung (rows close to uniform); a
  diagonal matrix means no replica ever moved.
- :func:`round_trips` and :func:`round_trip_steps`: completed coldest ->
  hottest -> coldest trips of every replica, and when each ended. Round trips
  measure how well hyperparameters mix: a replica that comes back to the cold
  rung after a visit to the hot end has had the chance to escape what it
  learned under the cold hyperparameters. Zero trips in a long run means the
  ladder does not mix end to end.
- :func:`replica_schedule`: the values of one hyperparameter one replica had
  after every round, e.g. the learning-rate schedule that parallel tempering
  found for the best replica (a schedule to replay in a single run).
- :func:`c_over_time`: the Metropolis constant C of every round; with
  ``c="auto"`` it moves during the adaptation rounds and is constant after.
- :func:`barrier`: the communication barrier of the ladder (Syed et al.
  2021). The local barrier of a pair is its rejection rate; their sum Λ̂, the
  global barrier, says how hard the ladder is to cross end to end, and its
  running sum along the ladder, the profile, says where: a steep step is a
  bottleneck pair. From Λ̂ it gives the round trips per round that the theory
  allows (``1 / (2 + 2 Λ̂)`` with even-odd swaps) next to the measured ones,
  and the number of rungs it suggests (``ceil(2 Λ̂) + 1``). A measured rate far
  below the allowed one means that successive swaps are not independent:
  replicas keep their order (a good replica stays cold). All of it holds at
  the C the run used.

"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from tempering.records import History, check_history

__all__ = [
    "Barrier",
    "acceptance_over_time",
    "acceptance_rate",
    "barrier",
    "count_round_trips",
    "c_over_time",
    "even_odd_round_trip_rate",
    "independent_round_trip_rate",
    "replica_schedule",
    "round_trip_steps",
    "round_trips",
    "rung_occupancy",
    "rung_history",
]


# --------------------------------------------------------------------------
# numpy diagnostics
# --------------------------------------------------------------------------


def count_round_trips(rung_path: np.ndarray, num_rungs: int) -> np.ndarray:
    """Counts round trips (coldest rung to hottest and back) of every replica.

    Args:
        rung_path: ``(R, M)`` rung of every replica over time (include the
            initial rungs as the first row).
        num_rungs: M.

    Returns:
        ``(M,)`` int array: completed coldest -> hottest -> coldest trips.
    """
    rung_path = np.asarray(rung_path)
    if rung_path.ndim != 2 or not np.issubdtype(rung_path.dtype, np.integer):
        raise ValueError(
            "rung_path must be the (rounds, replicas) integer rungs of every "
            f"replica, got an array of shape {rung_path.shape} and dtype "
            f"{rung_path.dtype}"
        )
    if isinstance(num_rungs, bool) or not isinstance(num_rungs, int | np.integer):
        raise TypeError(f"num_rungs must be an int, got {num_rungs!r}")
    if num_rungs < 1:
        raise ValueError(f"num_rungs must be >= 1, got {num_rungs}")
    trips = np.zeros(rung_path.shape[1], np.int64)
    for m in range(rung_path.shape[1]):
        last_end = None  # which end of the ladder replica m touched last
        for rung in rung_path[:, m]:
            if rung == 0:
                if last_end == "hot":
                    trips[m] += 1
                last_end = "cold"
            elif rung == num_rungs - 1 and last_end == "cold":
                last_end = "hot"
    return trips


def _between_finite(history: History) -> np.ndarray:
    """``(R, M - 1)`` bool: both replicas of the pair were finite at the round's move.

    A replica flagged as diverged (and not restored) always loses its swap;
    its pair's rejections are the divergence's, not the ladder's.
    """
    rungs = _rung_path(history)[:-1]  # shape=(R, M): before each round's move
    flagged = np.asarray(history.diverged, bool) & (
        np.asarray(history.restored_from) < 0
    )
    at_rung = np.take_along_axis(flagged, np.argsort(rungs, axis=1), axis=1)  # (R, M)
    return ~(at_rung[:, :-1] | at_rung[:, 1:])


def _ladder_chosen(history: History) -> np.ndarray | None:
    """``(R,)``: the ladder a multi-exchange history exchanged each round; else None."""
    return getattr(history.move, "ladder", None)


def _exchanged_rounds(history: History) -> np.ndarray:
    """``(R,)`` bool: the rounds that exchanged the recorded rungs (ladder 0's)."""
    ladder = _ladder_chosen(history)
    if ladder is None:
        return np.ones(len(history.step), bool)
    return np.asarray(ladder) == 0


def _require_exchange(history: History, *fields: str) -> None:
    """A ValueError unless the history's move info has ``fields`` (an exchange's)."""
    have = getattr(history.move, "_fields", ())
    if not all(field in have for field in fields):
        raise ValueError(
            f"this history has no {' or '.join(fields)}: its move is no exchange "
            f"({type(history.move).__name__}: PBT, a replayed schedule, the "
            "identity move); the exchange diagnostics need an exchange's history "
            "(pt_train, tempering.exchange_move, multi_exchange_move)"
        )


def acceptance_rate(history: History) -> np.ndarray:
    """Accepted / proposed swaps of every adjacent pair over all the rounds.

    Returns:
        ``(M - 1,)`` float array; NaN for a pair never proposed (or no rounds).
        Ladder 0's for a :func:`tempering.multi_exchange_move` history, as
        :func:`acceptance_over_time`.

    Raises:
        ValueError: for a history whose move proposes no swaps.
    """
    check_history(history, "acceptance_rate")
    _require_exchange(history, "proposed", "accepted")
    num_pairs = np.shape(history.proposed)[-1]
    if not len(history.step):
        return np.full((num_pairs,), np.nan)
    return acceptance_over_time(history, window=len(history.step))[-1]


def acceptance_over_time(history: History, window: int = 10) -> np.ndarray:
    """Acceptance of every adjacent pair over a trailing window of rounds.

    Args:
        history: the history of :func:`tempering.pt_train`.
        window: rounds in the window; the value of round r pools rounds
            ``max(0, r - window + 1) .. r`` (fewer at the start of the run).

    Returns:
        ``(R, M - 1)`` float array: accepted / proposed swaps of pair
        ``(r, r + 1)`` over the window ending at each round; NaN where the pair
        was not proposed in the window. A :func:`tempering.multi_exchange_move`
        history gives ladder 0's (the rungs it records): the rounds that
        exchanged another ladder count as not proposed.

    Raises:
        ValueError: if ``window`` is not an integer >= 1, or the history's move
            proposes no swaps.
    """
    check_history(history, "acceptance_over_time")
    _require_exchange(history, "proposed", "accepted")
    if (
        isinstance(window, bool)
        or not isinstance(window, int | np.integer)
        or window < 1
    ):
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    proposed = np.asarray(history.proposed, np.int64)  # shape=(R, M - 1)
    proposed = proposed * _exchanged_rounds(history)[:, None]  # ladder 0's only
    accepted = np.asarray(history.accepted, np.int64) & proposed  # shape=(R, M - 1)
    num_rounds = proposed.shape[0]
    # Cumulative sums with a leading zero row: window sum = cs[r + 1] - cs[start].
    zero = np.zeros((1, proposed.shape[1]), np.int64)
    cum_proposed = np.concatenate([zero, np.cumsum(proposed, 0)])  # (R + 1, M - 1)
    cum_accepted = np.concatenate([zero, np.cumsum(accepted, 0)])  # (R + 1, M - 1)
    end = np.arange(1, num_rounds + 1)  # shape=(R,)
    start = np.maximum(end - int(window), 0)  # shape=(R,)
    num_proposed = cum_proposed[end] - cum_proposed[start]  # shape=(R, M - 1)
    num_accepted = cum_accepted[end] - cum_accepted[start]  # shape=(R, M - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            num_proposed > 0, num_accepted / np.maximum(num_proposed, 1), np.nan
        )


def rung_occupancy(history: History) -> np.ndarray:
    """Fraction of rounds every replica spent on every rung.

    A replica's rung in a round is its rung after that round's exchange
    (``history.rungs``), so each of the R rounds counts once.

    Args:
        history: the history of :func:`tempering.pt_train`.

    Returns:
        ``(M, M)`` float array, ``[m, r]``: fraction of rounds replica m spent
        on rung r; every row sums to 1 (all NaN for a history without rounds).

    Raises:
        ValueError: a history whose move keeps no rungs (PBT, a replay).
    """
    check_history(history, "rung_occupancy")
    rungs = rung_history(history)  # shape=(R, M)
    num_replicas = rungs.shape[1]
    if rungs.shape[0] == 0:
        return np.full((num_replicas, num_replicas), np.nan)
    one_hot = np.eye(num_replicas)[rungs]  # shape=(R, M, M), [round, replica, rung]
    return one_hot.mean(0)  # shape=(M, M)


def _rung_path(history: History) -> np.ndarray:
    """``(R + 1, M)``: the initial rungs, then the rungs after every round."""
    rungs = rung_history(history)  # shape=(R, M)
    return np.concatenate([np.asarray(history.initial_rungs)[None], rungs])


def rung_history(history: History) -> np.ndarray:
    """``history.rungs`` as ``(R, M)`` ints; a ValueError for a move without rungs."""
    check_history(history, "rung_history")
    if history.rungs is None or history.initial_rungs is None:
        raise ValueError(
            "this history has no rungs: its move keeps none (PBT, a replayed "
            "schedule, the identity move); the rung diagnostics need an exchange's "
            "history (pt_train, tempering.exchange_move, multi_exchange_move)"
        )
    rungs = np.asarray(history.rungs)
    return rungs.reshape(-1, np.shape(history.initial_rungs)[0])


def round_trips(history: History) -> np.ndarray:
    """Completed round trips (coldest rung -> hottest -> coldest) of every replica.

    :func:`count_round_trips` over the initial rungs and the
    rungs after every round (``summary.round_trips`` of the same call).

    Args:
        history: the history of :func:`tempering.pt_train`.

    Returns:
        ``(M,)`` int array.

    Raises:
        ValueError: a history whose move keeps no rungs (PBT, a replay).
    """
    check_history(history, "round_trips")
    path = _rung_path(history)  # shape=(R + 1, M)
    return count_round_trips(path, path.shape[1])


def round_trip_steps(history: History) -> list[np.ndarray]:
    """The global steps at which every replica completed a round trip.

    A trip is counted as in :func:`round_trips`: a return to the coldest rung
    after a visit to the hottest rung that followed a visit to the coldest. The
    differences of consecutive entries are round-trip times in SGD steps.

    Args:
        history: the history of :func:`tempering.pt_train`.

    Returns:
        M int arrays; entry m has shape ``(round_trips(history)[m],)``: the
        ``history.step`` of each round that ended a trip of replica m.

    Raises:
        ValueError: a history whose move keeps no rungs (PBT, a replay).
    """
    check_history(history, "round_trip_steps")
    path = _rung_path(history)  # shape=(R + 1, M)
    num_rungs = path.shape[1]
    steps = np.asarray(history.step)  # shape=(R,)
    trips = []
    for m in range(num_rungs):  # over replicas; the rounds are vectorised
        column = path[:, m]  # shape=(R + 1,)
        if num_rungs < 2:
            trips.append(steps[:0].astype(np.int64))
            continue
        ends = np.flatnonzero((column == 0) | (column == num_rungs - 1))  # (E,)
        cold = column[ends] == 0  # shape=(E,), True at the cold end
        if not cold.any():
            trips.append(steps[:0].astype(np.int64))
            continue
        # A hot visit counts only after a cold one; from the first cold visit
        # on, a trip ends at every cold visit whose previous end visit was hot.
        first = int(np.argmax(cold))
        ends, cold = ends[first:], cold[first:]
        done = ends[1:][cold[1:] & ~cold[:-1]]  # rows of path, all >= 1
        trips.append(steps[done - 1].astype(np.int64))
    return trips


def replica_schedule(
    history: History, replica: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The values of one hyperparameter that one replica had, round by round.

    Args:
        history: the history of :func:`tempering.pt_train`.
        replica: index of the replica, in ``[0, M)`` (e.g.
            ``summary.best_replica``).
        name: a hyperparameter in ``history.hyperparams`` (e.g.
            ``"learning_rate"``).

    Returns:
        ``(steps, values)``, both of shape ``(R,)``: ``values[r]`` is the
        replica's value after the exchange of the round evaluated at global
        step ``steps[r]``, i.e. the value it trained with from then on.

    Raises:
        ValueError: for an unknown name or a replica out of range.
    """
    check_history(history, "replica_schedule")
    if name not in history.hyperparams:
        raise ValueError(
            f"no hyperparameter {name!r} in the history; it has "
            f"{sorted(history.hyperparams)}"
        )
    values = np.asarray(history.hyperparams[name])  # shape=(R, M)
    num_replicas = np.shape(history.train_loss)[1]
    if isinstance(replica, bool) or not isinstance(replica, int | np.integer):
        raise ValueError(f"replica must be an integer, got {replica!r}")
    if not 0 <= replica < num_replicas:
        raise ValueError(f"replica must be in [0, {num_replicas}), got {replica}")
    return np.asarray(history.step), values[:, int(replica)]


def c_over_time(history: History) -> tuple[np.ndarray, np.ndarray]:
    """The Metropolis constant C that every round's exchange used.

    Args:
        history: the history of :func:`tempering.pt_train`.

    Returns:
        ``(steps, c)``: shapes ``(R,)`` and ``(R,)``, or ``(R, K)`` for a
        ``multi_exchange_move`` (every ladder's C).

    Raises:
        ValueError: for a history whose move has no C (not an exchange).
    """
    check_history(history, "c_over_time")
    _require_exchange(history, "c")
    return np.asarray(history.step), np.asarray(history.c)


# --------------------------------------------------------------------------
# the communication barrier (Syed et al. 2021)
# --------------------------------------------------------------------------

_SCHEMES = ("even_odd", "random_pair")


class Barrier(NamedTuple):
    """The communication barrier of a ladder of M rungs (N = M - 1 pairs).

    :func:`barrier` says how each field is computed and where the formulas
    come from.
    """

    global_barrier: float  # Λ̂ = sum of local; NaN if a pair was never proposed
    local: np.ndarray  # shape=(M - 1,), rejection rate 1 - a_r of pair (r, r + 1)
    profile: np.ndarray  # shape=(M,), cumulative barrier: 0 at rung 0, Λ̂ at M - 1
    round_trip_rate: float  # measured: round trips of all replicas per round
    round_trip_bound: float  # the most the theory allows for Λ̂ (per round)
    round_trip_expected: float  # the theory's rate for these rejections
    suggested_rungs: int | None  # ceil(2 Λ̂) + 1, at least 2; None if Λ̂ is NaN
    scheme: str  # "even_odd" or "random_pair": which formulas were used


def barrier(history: History, scheme: str | None = None) -> Barrier:
    """The communication barrier of the ladder and the round trips it allows.

    From Syed, Bouchard-Côté, Deligiannidis and Doucet, *Non-reversible
    parallel tempering: a scalable highly parallel MCMC scheme* (J. R. Stat.
    Soc. B, 2021; arXiv:1905.02939), the diagnostics Pigeons.jl reports. With
    ``a_r`` the acceptance rate of pair (r, r + 1) (:func:`acceptance_rate`:
    accepted / proposed over all the rounds) and ``r_r = 1 - a_r`` its
    rejection rate:

    - ``local``: ``r_r``, the local barrier of every pair, over the
      proposals between two finite replicas: a replica flagged as diverged
      always loses its swap, and counting those would make its pair's
      rejection the divergence's, not the ladder's (as the adaptive ladder's
      :func:`tempering.adaptation.barrier` does).
    - ``global_barrier``: ``Λ̂ = Σ_r r_r``, their estimator of the global
      communication barrier Λ. It grows with the loss gaps between rungs and
      with C; it is the ladder's at the C the run used (pooled over the
      adaptation rounds too when ``c="auto"``).
    - ``profile``: ``[0, r_0, r_0 + r_1, ..., Λ̂]``, the barrier from the
      coldest rung up to each rung; a steep step is a bottleneck pair.
    - ``round_trip_rate``: completed coldest -> hottest -> coldest trips of
      all M replicas together (:func:`round_trips`, summed) per round; NaN
      without rounds. This is the paper's round trip rate τ (round trips per
      scan, all index processes together): at most 1/2, reached by even-odd
      swaps that are always accepted. A replica's own rate is τ / M.
    - ``round_trip_expected``: the paper's finite-ladder round trip rate for
      these rejections when every proposed swap is accepted independently
      with probability ``a_r`` (their "efficient local exploration"), with
      ``E = Σ_r r_r / (1 - r_r)``: ``1 / (2 + 2 E)`` for even-odd swaps, the
      paper's non-reversible scheme. For ``random_pair`` (one pair drawn
      uniformly per round) it is ``1 / (N (N + E))``: the paper's reversible
      rate ``1 / (2 N + 2 E)``, for a random choice of the even or the odd
      pairs each scan, times 2 / N, since a replica is offered a swap with
      probability 2 / N instead of 1 / 2 each round, the same moves otherwise
      (our derivation; the tests check both on simulated exchanges). With
      two rungs both schemes propose their one pair every round: ``1 / (1 + E)``.
    - ``round_trip_bound``: the same with ``Λ̂`` in place of ``E``:
      ``1 / (2 + 2 Λ̂)`` (even-odd), ``1 / (N (N + Λ̂))`` (random pair). As
      ``r / (1 - r) >= r`` it bounds ``round_trip_expected`` from above, and it
      is the paper's limit ``τ = 1 / (2 + 2 Λ)`` for even-odd swaps on a fine
      ladder (many rungs, small rejections); with rejections near 1 it is
      loose (at acceptance 0.3 it is about 3x ``round_trip_expected``).
    - ``suggested_rungs``: ``max(2, ceil(2 Λ̂) + 1)``. By the expression above,
      with the barrier split equally over N pairs (``r = Λ / N`` each), the round trips
      per replica and round, ``τ_N / (N + 1)`` with
      ``τ_N = 1 / (2 + 2 Λ N / (N - Λ))``, are largest at ``N = 2 Λ`` pairs,
      each rejecting half of its swaps: the "roughly 2Λ chains" that
      Pigeons.jl recommends from the same theory. None when Λ̂ is NaN. It
      assumes the ends of the ladder and C stay, and that the barrier stays
      when rungs are inserted (rejections that add up as a gap is split; with
      ``c="auto"`` a new ladder is tuned to the same acceptance instead).

    In hyperparameter PT swaps are not independent draws: a replica keeps its
    weights, so one with a low loss tends to stay cold. A measured rate far
    below ``round_trip_expected`` says so; it is not a fault of the ladder.

    A :func:`tempering.multi_exchange_move` history of K ladders gives ladder
    0's barrier (the rungs the history records): its pairs' acceptance and
    its round trips per round in which ladder 0 was exchanged (the other
    rounds leave its rungs as they are). With even-odd swaps the parity of
    ladder 0's successive rounds flips with probability ``K / (2K - 1)`` only
    (the rounds between belong to other ladders), between the paper's
    deterministic (1) and stochastic (1/2) even-odd schemes, which no closed
    form covers: ``round_trip_expected`` is then the exact rate of a replica's
    rung process under those flips (a Markov chain over rung, parity and the
    end visited last, solved numerically; it reproduces both of the paper's
    formulas), and ``round_trip_bound`` the deterministic scheme's.

    Args:
        history: the history of an exchange (:func:`tempering.pt_train`,
            :func:`tempering.exchange_move`,
            :func:`tempering.multi_exchange_move`).
        scheme: ``"even_odd"`` or ``"random_pair"``, the exchange's scheme;
            None (default): the history's own (``History.scheme``, which
            :func:`tempering.pt_train` records), else, for a history without
            one (built by hand), read from the proposals: even-odd when every
            round proposed exactly the pairs of the round's parity, random
            pair when every round proposed at most one pair, else even-odd
            (with three rungs, a short random-pair history whose draws
            alternated reads as even-odd).

    Returns:
        A :class:`Barrier`.

    Raises:
        ValueError: for a history whose move proposes no swaps (PBT, a
            replayed schedule, the identity move) or keeps no rungs, or an
            unknown scheme.
    """
    check_history(history, "barrier")
    _require_exchange(history, "proposed", "accepted")
    trips = round_trips(history)  # shape=(M,); a ValueError without rungs
    if scheme is not None and scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {_SCHEMES} or None, got {scheme!r}")
    exchanged = _exchanged_rounds(history)  # shape=(R,)
    raw = np.asarray(history.proposed, bool)[exchanged]  # shape=(R0, M - 1)
    if scheme is None:
        scheme = getattr(history, "scheme", None)
    if scheme is None:  # from every proposal: a diverged replica's too
        scheme = _scheme_of(raw, np.asarray(history.round)[exchanged])
    proposed = raw & _between_finite(history)[exchanged]
    accepted = np.asarray(history.accepted, bool)[exchanged] & proposed
    with np.errstate(invalid="ignore", divide="ignore"):
        local = 1.0 - accepted.sum(0) / proposed.sum(0)  # (M - 1,); NaN: unproposed
    num_pairs = local.shape[0]
    total = float(local.sum())  # NaN if any pair was never proposed
    profile = np.concatenate([[0.0], np.cumsum(local)])  # shape=(M,)
    num_rounds = int(exchanged.sum())
    rate = float(trips.sum()) / num_rounds if num_rounds else math.nan
    expected = independent_round_trip_rate(local, scheme)
    if not num_pairs:  # one rung: no trips to make
        bound = math.nan
    elif num_pairs == 1:  # two rungs: both schemes propose the pair every round
        bound = 1.0 / (1.0 + total)
    elif scheme == "even_odd" and _ladder_chosen(history) is not None:
        num_ladders = np.shape(history.move.rungs)[-2]  # (R, K, M)
        bound = 1.0 / (2.0 + 2.0 * total)
        expected = even_odd_round_trip_rate(
            1.0 - local, flip=num_ladders / (2 * num_ladders - 1)
        )
    elif scheme == "even_odd":
        bound = 1.0 / (2.0 + 2.0 * total)
    else:
        bound = 1.0 / (num_pairs * (num_pairs + total))
    suggested = (
        max(2, math.ceil(round(2.0 * total, 9)) + 1) if math.isfinite(total) else None
    )
    return Barrier(
        global_barrier=total,
        local=local,
        profile=profile,
        round_trip_rate=rate,
        round_trip_bound=bound,
        round_trip_expected=expected,
        suggested_rungs=suggested,
        scheme=scheme,
    )


def _pair_rates(values: Any, name: str) -> np.ndarray:
    """``(N,)`` rates of the adjacent pairs, each in [0, 1] or NaN, else a ValueError."""
    try:
        rates = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numbers, one per adjacent pair") from None
    if rates.ndim != 1 or np.any((rates < 0) | (rates > 1)):
        raise ValueError(
            f"{name} must be one rate in [0, 1] (or NaN) per adjacent pair, shape "
            f"(N,), got {rates!r}"
        )
    return rates


def independent_round_trip_rate(rejection: np.ndarray, scheme: str) -> float:
    """Round trips per round, all replicas, when every swap is independent.

    The paper's finite-ladder rate (:func:`barrier`'s ``round_trip_expected``)
    with ``E = Σ r / (1 - r)`` over the pairs' rejection rates r:
    ``1 / (2 + 2 E)`` for even-odd swaps, ``1 / (N (N + E))`` for one random
    pair of N, ``1 / (1 + E)`` for one pair (both schemes propose it every
    round).

    Args:
        rejection: ``(N,)`` rejection rate of every adjacent pair (NaN: a pair
            never proposed).
        scheme: ``"even_odd"`` or ``"random_pair"``.

    Returns:
        The rate: NaN without pairs or with a NaN rejection, 0 when a pair
        never accepts.
    """
    rejection = _pair_rates(rejection, "rejection")
    if scheme not in ("even_odd", "random_pair"):
        raise ValueError(f"scheme must be 'even_odd' or 'random_pair', got {scheme!r}")
    num_pairs = rejection.shape[0]
    if not num_pairs:  # one rung: no trips to make
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        # r / (1 - r): inf for a pair that never accepted (the rate is then 0).
        odds = float(np.sum(rejection / (1.0 - rejection)))
    if num_pairs == 1:
        return 1.0 / (1.0 + odds)
    if scheme == "even_odd":
        return 1.0 / (2.0 + 2.0 * odds)
    return 1.0 / (num_pairs * (num_pairs + odds))


def even_odd_round_trip_rate(acceptance: np.ndarray, flip: float) -> float:
    """Round trips per round of even-odd swaps whose parity flips at random.

    All replicas together, the parity flipping with probability ``flip`` each
    round. Every proposed swap of pair r accepted independently with probability
    ``acceptance[r]`` (Syed et al.'s efficient local exploration), each
    replica's rung follows a Markov chain over (rung, the round's parity, the
    end of the ladder it visited last); its stationary rate of returns to
    rung 0 after a visit to the top, times the M replicas, is the rate.
    ``flip=1`` is the deterministic scheme, ``1 / (2 + 2 E)``; ``flip=1/2``
    the stochastic one, ``1 / (2 N + 2 E)`` (``E = Σ r / (1 - r)``).

    Args:
        acceptance: ``(N,)`` acceptance of every adjacent pair.
        flip: the probability that a round's parity differs from the last's.

    Returns:
        The rate (NaN if an acceptance is NaN; 0 if one is 0).
    """
    acceptance = _pair_rates(acceptance, "acceptance")
    if isinstance(flip, bool | str) or not 0 <= float(flip) <= 1:
        raise ValueError(f"flip must be a probability in [0, 1], got {flip!r}")
    num_pairs = acceptance.shape[0]
    if not np.all(np.isfinite(acceptance)):
        return math.nan
    if num_pairs == 0 or np.any(acceptance <= 0):
        return 0.0 if num_pairs else math.nan
    top = num_pairs

    def index(rung: int, parity: int, hot: int) -> int:
        return (rung * 2 + parity) * 2 + hot

    size = (top + 1) * 4
    moves = np.zeros((size, size))  # row: state now, column: state next round
    trip = np.zeros(size)  # chance that the round ends a round trip
    for rung in range(top + 1):
        for parity in (0, 1):
            for hot in (0, 1):
                # the pair this round's parity offers the replica, if any
                pair = rung if rung % 2 == parity else rung - 1
                outcomes = [(rung, 1.0)]
                if 0 <= pair < top:
                    other = rung + 1 if pair == rung else rung - 1
                    outcomes = [(other, acceptance[pair]), (rung, 1 - acceptance[pair])]
                for new, chance in outcomes:
                    new_hot = 1 if new == top else 0 if new == 0 else hot
                    if new == 0 and hot:
                        trip[index(rung, parity, hot)] += chance
                    for next_parity, turn in ((1 - parity, flip), (parity, 1 - flip)):
                        to = index(new, next_parity, new_hot)
                        moves[index(rung, parity, hot), to] += chance * turn
    # stationary distribution: pi (P - I) = 0, sum(pi) = 1
    system = np.vstack([(moves - np.eye(size)).T, np.ones(size)])
    rhs = np.zeros(size + 1)
    rhs[-1] = 1.0
    stationary = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return float((top + 1) * stationary @ trip)


def _scheme_of(proposed: np.ndarray, rounds: np.ndarray) -> str:
    """The exchange scheme that ``(R, M - 1)`` proposals show (see :func:`barrier`)."""
    rounds = rounds.reshape(-1, 1)  # shape=(R, 1)
    parity = np.arange(proposed.shape[1]) % 2 == rounds % 2  # shape=(R, M - 1)
    if proposed.any() and (
        np.array_equal(proposed, parity) or np.array_equal(proposed, ~parity)
    ):
        return "even_odd"
    per_round = proposed.sum(1)  # shape=(R,)
    if per_round.any() and np.all(per_round <= 1):
        return "random_pair"
    return "even_odd"
