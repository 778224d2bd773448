"""Diagnostics of a PT history: hand-built histories with known answers, one real run."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")


import tempering as tp  # noqa: E402
from tempering import diagnostics as dg  # noqa: E402
from tempering.diagnostics import count_round_trips  # noqa: E402
from tempering.exchange import exchange  # noqa: E402
from tempering.moves import ExchangeMoveInfo, NoInfo  # noqa: E402


def make_history(rungs, initial_rungs, *, proposed=None, accepted=None, step=None,
                 c=None, hyperparams=None, val_loss=None):  # fmt: skip
    """A History of PT rounds from a few arrays; the rest is filled plausibly."""
    rungs = np.asarray(rungs, np.int32)
    num_rounds, num_replicas = rungs.shape
    pairs = (num_rounds, num_replicas - 1)
    step = np.arange(1, num_rounds + 1) * 10 if step is None else np.asarray(step)
    proposed = np.ones(pairs, bool) if proposed is None else np.asarray(proposed, bool)
    accepted = np.zeros(pairs, bool) if accepted is None else np.asarray(accepted, bool)
    if hyperparams is None:
        lrs = np.geomspace(0.01, 1.0, num_replicas)
        hyperparams = {
            "dropout_rate": np.zeros(rungs.shape),
            "learning_rate": lrs[rungs],
        }
    zeros = np.zeros(rungs.shape)
    info = ExchangeMoveInfo(
        proposed=proposed,
        accepted=accepted,
        acceptance_prob=np.zeros(pairs),
        log_ratio=np.zeros(pairs),
        c=np.ones(num_rounds) if c is None else np.asarray(c, float),
        temperatures=np.tile(np.arange(1.0, num_replicas + 1), (num_rounds, 1)),
    )
    return tp.History(
        round=np.arange(num_rounds),
        step=step,
        train_loss=zeros,
        validation=tp.EvalMetrics(
            zeros if val_loss is None else np.asarray(val_loss, float), {}
        ),
        score=zeros,
        test=None,
        move=info,
        rungs=rungs,
        hyperparams=hyperparams,
        diverged=np.zeros(rungs.shape, bool),
        restored_from=np.full(rungs.shape, -1, np.int32),
        initial_rungs=np.asarray(initial_rungs, np.int32),
        initial_hyperparams={k: np.zeros(num_replicas) for k in hyperparams},
        burn_in_hyperparams={k: np.zeros(num_replicas) for k in hyperparams},
    )


# Replica 0 walks 0 -> 3 -> 0 -> 3 -> 0 (two trips), replica 3 the other way
# (3 -> 0 -> 3 -> 0 -> 3: its first hot visit precedes any cold one, so one
# trip); replica 1 stays in the middle, replica 2 never returns to the hot end.
#               r0 r1 r2 r3
WALK = np.array([[1, 2, 3, 0],   # step 10
                 [3, 2, 1, 0],   # step 20
                 [2, 1, 0, 3],   # step 30
                 [0, 1, 2, 3],   # step 40
                 [3, 1, 2, 0],   # step 50
                 [0, 2, 1, 3]])  # step 60  # fmt: skip
WALK_INITIAL = [0, 1, 2, 3]


def test_round_trips_known_walk() -> None:
    history = make_history(WALK, WALK_INITIAL)
    np.testing.assert_array_equal(dg.round_trips(history), [2, 0, 0, 1])
    steps = dg.round_trip_steps(history)
    np.testing.assert_array_equal(steps[0], [40, 60])
    assert steps[1].size == 0 and steps[2].size == 0
    np.testing.assert_array_equal(steps[3], [50])
    # The initial rungs count: without them replica 0 would start at rung 1.
    np.testing.assert_array_equal(
        dg.round_trips(make_history(WALK[1:], [1, 2, 3, 0])), [1, 0, 0, 1]
    )


def test_round_trip_steps_agree_with_count_round_trips() -> None:
    rng = np.random.default_rng(0)
    for num_replicas in (1, 2, 3, 5):
        rungs = np.stack([rng.permutation(num_replicas) for _ in range(40)])
        initial = rng.permutation(num_replicas)
        history = make_history(rungs, initial)
        path = np.concatenate([initial[None], rungs])
        expected = count_round_trips(path, num_replicas)
        np.testing.assert_array_equal(dg.round_trips(history), expected)
        counts = [len(s) for s in dg.round_trip_steps(history)]
        np.testing.assert_array_equal(counts, expected)
        for s in dg.round_trip_steps(history):
            assert np.all(np.diff(s) > 0) and np.isin(s, history.step).all()


def test_rung_occupancy_hand_count() -> None:
    occupancy = dg.rung_occupancy(make_history(WALK, WALK_INITIAL))
    assert occupancy.shape == (4, 4)
    np.testing.assert_allclose(occupancy.sum(1), 1.0)
    np.testing.assert_allclose(occupancy.sum(0), 1.0)  # a permutation every round
    # Replica 0 was on rungs 1, 3, 2, 0, 3, 0 (the initial rung does not count).
    np.testing.assert_allclose(occupancy[0], [2 / 6, 1 / 6, 1 / 6, 2 / 6])
    # Replica 1 was on rungs 2, 2, 1, 1, 1, 2.
    np.testing.assert_allclose(occupancy[1], [0, 3 / 6, 3 / 6, 0])
    # No exchange ever accepted: the identity, rung = replica.
    frozen = make_history(np.tile([2, 0, 1], (5, 1)), [2, 0, 1])
    np.testing.assert_array_equal(dg.rung_occupancy(frozen), np.eye(3)[[2, 0, 1]])


def test_acceptance_over_time_window() -> None:
    # One pair (M = 2); rounds: proposed / accepted.
    proposed = np.array([1, 1, 0, 1, 0, 0, 1], bool)[:, None]
    accepted = np.array([1, 0, 0, 1, 0, 0, 0], bool)[:, None]
    rungs = np.zeros((7, 2), int) + [0, 1]
    history = make_history(rungs, [0, 1], proposed=proposed, accepted=accepted)
    got = dg.acceptance_over_time(history, window=2)[:, 0]
    np.testing.assert_allclose(got, [1, 0.5, 0, 1, 1, np.nan, 0])
    got = dg.acceptance_over_time(history, window=3)[:, 0]
    np.testing.assert_allclose(got, [1, 0.5, 0.5, 0.5, 1, 1, 0])
    # window >= R: the running acceptance, ending at summary.acceptance_rate.
    got = dg.acceptance_over_time(history, window=100)[:, 0]
    np.testing.assert_allclose(got, [1, 0.5, 0.5, 2 / 3, 2 / 3, 2 / 3, 0.5])
    got = dg.acceptance_over_time(history, window=1)[:, 0]
    np.testing.assert_allclose(got, [1, 0, np.nan, 1, np.nan, np.nan, 0])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            dg.acceptance_over_time(history, window=bad)


def test_acceptance_over_time_several_pairs() -> None:
    # Even-odd: pair 0 proposed on even rounds, pair 1 on odd rounds.
    proposed = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], bool)
    accepted = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], bool)
    history = make_history(np.tile([0, 1, 2], (4, 1)), [0, 1, 2],
                           proposed=proposed, accepted=accepted)  # fmt: skip
    got = dg.acceptance_over_time(history, window=2)
    np.testing.assert_allclose(got, [[1, np.nan], [1, 0], [0, 0], [0, 1]])
    assert got.shape == (4, 2)


def test_schedule_and_c() -> None:
    c = [5.0, 3.0, 2.0, 2.0, 2.0, 2.0]
    history = make_history(WALK, WALK_INITIAL, c=c)
    steps, values = dg.replica_schedule(history, 0, "learning_rate")
    np.testing.assert_array_equal(steps, [10, 20, 30, 40, 50, 60])
    np.testing.assert_allclose(values, np.geomspace(0.01, 1.0, 4)[[1, 3, 2, 0, 3, 0]])
    steps, got_c = dg.c_over_time(history)
    np.testing.assert_array_equal(steps, history.step)
    np.testing.assert_allclose(got_c, c)
    with pytest.raises(ValueError, match="learning_rate"):
        dg.replica_schedule(history, 0, "momentum")
    with pytest.raises(ValueError, match="replica"):
        dg.replica_schedule(history, 4, "learning_rate")


def test_empty_history() -> None:
    history = make_history(np.zeros((0, 3), int), [0, 1, 2])
    assert dg.acceptance_over_time(history).shape == (0, 2)
    assert np.isnan(dg.rung_occupancy(history)).all()
    np.testing.assert_array_equal(dg.round_trips(history), [0, 0, 0])
    assert [len(s) for s in dg.round_trip_steps(history)] == [0, 0, 0]


def test_plot_diagnostics_of_a_real_run(pt_run) -> None:
    ladder, result = pt_run
    history, summary = result.history, result.summary
    num_rounds = len(history.step)
    assert num_rounds == 10
    np.testing.assert_array_equal(dg.round_trips(history), summary.round_trips)
    occupancy = dg.rung_occupancy(history)
    np.testing.assert_allclose(occupancy.sum(1), 1.0)
    acceptance = dg.acceptance_over_time(history, window=num_rounds)
    np.testing.assert_allclose(acceptance[-1], summary.acceptance_rate)
    steps, values = dg.replica_schedule(history, summary.best_replica, "learning_rate")
    assert steps.shape == values.shape == (num_rounds,)
    # The ladder is fixed (no adapt_ladder): the value is the rung's value.
    rung_values = np.asarray(ladder.values["learning_rate"])
    np.testing.assert_allclose(
        values, rung_values[history.rungs[:, summary.best_replica]], rtol=1e-6
    )


# --- the communication barrier (Syed et al. 2021) ------------------------------

# Even-odd proposals on 8 rounds of 4 rungs: pairs 0 and 2 on even rounds, pair
# 1 on odd ones, each proposed 4 times. Pair 0 accepts 2 of them (a = 1/2),
# pair 1 one (a = 1/4), pair 2 none (a = 0).
EVEN_ODD = np.array([[1, 0, 1], [0, 1, 0]] * 4, bool)
ACCEPTED = np.zeros((8, 3), bool)
ACCEPTED[[0, 4], 0] = ACCEPTED[3, 1] = True
# WALK (3 round trips) and then two rounds without a move.
LONG_WALK = np.concatenate([WALK, WALK[-1:], WALK[-1:]])


def test_barrier_of_known_acceptance() -> None:
    history = make_history(LONG_WALK, WALK_INITIAL, proposed=EVEN_ODD,
                           accepted=ACCEPTED)  # fmt: skip
    result = dg.barrier(history)
    np.testing.assert_array_equal(result.local, [0.5, 0.75, 1.0])
    assert result.global_barrier == 2.25  # sum of the rejection rates
    np.testing.assert_array_equal(result.profile, [0.0, 0.5, 1.25, 2.25])
    assert result.scheme == "even_odd"  # read from the proposals
    assert result.round_trip_rate == 3 / 8  # trips of all replicas per round
    assert result.round_trip_bound == pytest.approx(1 / (2 + 2 * 2.25))
    assert result.round_trip_expected == 0.0  # pair 2 never accepts
    assert result.suggested_rungs == 6  # ceil(2 * 2.25) + 1
    # One pair per round reads as the random-pair scheme. Pair 0 accepts 1 of
    # 3 proposals, pair 1 2 of 3, pair 2 none of 2.
    pairs = np.eye(3, dtype=bool)[[0, 1, 2, 0, 2, 1, 1, 0]]
    accepted = pairs & np.array([1, 1, 0, 0, 0, 1, 0, 0], bool)[:, None]
    result = dg.barrier(make_history(LONG_WALK, WALK_INITIAL, proposed=pairs,
                                     accepted=accepted))  # fmt: skip
    assert result.scheme == "random_pair"
    np.testing.assert_allclose(result.local, [2 / 3, 1 / 3, 1.0])
    assert result.global_barrier == pytest.approx(2.0)
    assert result.round_trip_bound == pytest.approx(1 / (3 * (3 + 2.0)))
    # The scheme given: the random-pair formulas, 1 / (N (N + barrier)).
    result = dg.barrier(history, scheme="random_pair")
    assert result.round_trip_bound == pytest.approx(1 / (3 * (3 + 2.25)))
    assert result.global_barrier == 2.25
    # Few rejections: at least 2 rungs; a barrier of 1.5 suggests 4.
    accept_all = make_history(LONG_WALK, WALK_INITIAL, proposed=EVEN_ODD,
                              accepted=EVEN_ODD)  # fmt: skip
    assert dg.barrier(accept_all).global_barrier == 0.0
    assert dg.barrier(accept_all).suggested_rungs == 2
    assert dg.barrier(accept_all).round_trip_bound == 0.5
    accepted = EVEN_ODD & np.array([True, False, True])  # pair 1 never accepts
    accepted[::4] = False  # pairs 0 and 2 accept half of their proposals
    half = dg.barrier(make_history(LONG_WALK, WALK_INITIAL, proposed=EVEN_ODD,
                                   accepted=accepted))  # fmt: skip
    np.testing.assert_array_equal(half.local, [0.5, 1.0, 0.5])
    assert half.suggested_rungs == 5  # ceil(2 * 2.0) + 1, not 6 by rounding


def test_barrier_of_a_pair_never_proposed() -> None:
    proposed = EVEN_ODD & np.array([True, False, True])  # pair 1 never
    history = make_history(LONG_WALK, WALK_INITIAL, proposed=proposed,
                           accepted=ACCEPTED & proposed)  # fmt: skip
    result = dg.barrier(history, scheme="even_odd")
    np.testing.assert_array_equal(result.local, [0.5, np.nan, 1.0])
    assert np.isnan(result.global_barrier) and np.isnan(result.round_trip_bound)
    np.testing.assert_array_equal(result.profile, [0.0, 0.5, np.nan, np.nan])
    assert result.suggested_rungs is None
    assert result.round_trip_rate == 3 / 8  # measured all the same
    empty = dg.barrier(make_history(np.zeros((0, 3), int), [0, 1, 2]))
    assert np.isnan(empty.global_barrier) and np.isnan(empty.round_trip_rate)
    assert empty.suggested_rungs is None and empty.local.shape == (2,)


def test_barrier_needs_an_exchange() -> None:
    history = make_history(WALK, WALK_INITIAL)
    with pytest.raises(ValueError, match="no proposed or accepted"):
        dg.barrier(history._replace(move=NoInfo()))  # the identity move
    with pytest.raises(ValueError, match="no rungs"):
        dg.barrier(history._replace(rungs=None, initial_rungs=None))
    with pytest.raises(ValueError, match="scheme"):
        dg.barrier(history, scheme="random")


@partial(jax.jit, static_argnames=("scheme", "rounds", "seeds"))
def simulate_exchange(losses, scheme, rounds, seeds):
    """``seeds`` runs of ``rounds`` exchanges where a replica's score is its rung's loss.

    The log acceptance ratio of pair (r, r + 1) is ``losses[r] - losses[r + 1]``
    (C = 1, betas one apart) whoever holds the rungs, so every proposed swap is
    accepted independently with a fixed probability: the "efficient local
    exploration" of Syed et al., under which their round trip rate is exact.
    """
    num_rungs = losses.shape[0]
    betas = jnp.arange(num_rungs, 0, -1, dtype=jnp.float32)

    def run(key):
        def one_round(rungs, inputs):
            round_key, index = inputs
            new, info = exchange(round_key, rungs, losses[rungs], betas, c=1.0,
                                 scheme=scheme, parity=index % 2)  # fmt: skip
            return new, (new, info.proposed, info.accepted)

        inputs = (jax.random.split(key, rounds), jnp.arange(rounds))
        start = jnp.arange(num_rungs, dtype=jnp.int32)
        return jax.lax.scan(one_round, start, inputs)[1]

    return jax.vmap(run)(jax.random.split(jax.random.key(0), seeds))


@pytest.mark.parametrize("scheme", ["even_odd", "random_pair"])
@pytest.mark.parametrize("acceptance", [[0.7] * 4, [0.9, 0.5, 0.7, 0.8]])
def test_round_trip_rate_agrees_with_the_theory(scheme, acceptance) -> None:
    # 16 independent runs of 10000 rounds, 5 rungs. With rejection rates r_i and
    # E = sum r_i / (1 - r_i), Syed et al. give the rate of round trips (all
    # replicas, per round) of even-odd swaps as 1 / (2 + 2 E); one random pair
    # per round offers a replica a swap 2 / N as often as their reversible
    # scheme (1 / (2 N + 2 E)), hence 1 / (N (N + E)).
    acceptance = np.asarray(acceptance)
    losses = np.concatenate([[0.0], np.cumsum(-np.log(acceptance))])
    seeds, rounds, pairs = 16, 10000, acceptance.size
    rungs, proposed, accepted = jax.device_get(simulate_exchange(
        jnp.asarray(losses, jnp.float32), scheme, rounds, seeds
    ))  # fmt: skip
    rejection = 1 - acceptance
    odds = np.sum(rejection / (1 - rejection))
    exact = 1 / (2 + 2 * odds) if scheme == "even_odd" else 1 / (pairs * (pairs + odds))
    results = [
        dg.barrier(make_history(rungs[s], np.arange(pairs + 1), proposed=proposed[s],
                                accepted=accepted[s]))
        for s in range(seeds)
    ]  # fmt: skip
    assert {r.scheme for r in results} == {scheme}  # read from the proposals
    rates = np.array([r.round_trip_rate for r in results])
    mean, error = rates.mean(), rates.std(ddof=1) / np.sqrt(seeds)
    assert abs(mean - exact) < 4 * error and abs(mean / exact - 1) < 0.03
    barriers = np.array([r.global_barrier for r in results])
    error = barriers.std(ddof=1) / np.sqrt(seeds)
    assert abs(barriers.mean() - rejection.sum()) < 4 * error
    for r in results:  # the estimate from each run's own rejections
        assert r.round_trip_expected == pytest.approx(exact, rel=0.08)
        assert r.round_trip_bound >= r.round_trip_expected
        np.testing.assert_allclose(r.profile[1:], np.cumsum(r.local))
        assert r.global_barrier == pytest.approx(r.local.sum())


def test_barrier_of_a_real_run(pt_run) -> None:
    _, result = pt_run
    history, summary = result.history, result.summary
    expected = dg.barrier(history, scheme="even_odd")
    assert dg.barrier(history).scheme == "even_odd"
    assert summary.barrier == pytest.approx(np.sum(1 - summary.acceptance_rate))
    assert summary.barrier == expected.global_barrier
    assert summary.round_trip_bound == expected.round_trip_bound
    assert summary.suggested_rungs == expected.suggested_rungs
    assert expected.round_trip_rate == summary.round_trips.sum() / len(history.step)


@partial(jax.jit, static_argnames=("scheme", "rounds", "seeds"))
def simulate_two_ladders(losses, scheme, rounds, seeds):
    """As :func:`simulate_exchange`, with one of two ladders drawn each round.

    Ladder 1 accepts every swap; ladder 0's rungs move only in its rounds.
    """
    num_rungs = losses.shape[0]
    betas = jnp.arange(num_rungs, 0, -1, dtype=jnp.float32)

    def run(key):
        def one_round(rungs, inputs):
            round_key, index = inputs
            choice_key, swap_key = jax.random.split(round_key)
            ladder = jax.random.randint(choice_key, (), 0, 2)
            flat = jnp.zeros_like(losses)  # ladder 1: every proposed swap accepted
            on = [exchange(swap_key, rungs[k], (losses, flat)[k][rungs[k]], betas,
                           c=1.0, scheme=scheme, parity=index % 2)
                  for k in range(2)]  # fmt: skip
            new = jnp.stack([jnp.where(ladder == k, on[k][0], rungs[k])
                             for k in range(2)])  # fmt: skip
            proposed = jnp.where(ladder == 0, on[0][1].proposed, on[1][1].proposed)
            accepted = jnp.where(ladder == 0, on[0][1].accepted, on[1][1].accepted)
            return new, (ladder, new, proposed, accepted)

        inputs = (jax.random.split(key, rounds), jnp.arange(rounds))
        start = jnp.tile(jnp.arange(num_rungs, dtype=jnp.int32), (2, 1))
        return jax.lax.scan(one_round, start, inputs)[1]

    return jax.vmap(run)(jax.random.split(jax.random.key(1), seeds))


@pytest.mark.parametrize("scheme", ["even_odd", "random_pair"])
def test_barrier_of_a_multi_exchange_history_is_ladder_0s(scheme) -> None:
    """Before, the rate counted every round (ladder 0 moves in half of them) and
    the acceptance pooled both ladders."""
    acceptance = np.asarray([0.8, 0.6, 0.7])
    losses = np.concatenate([[0.0], np.cumsum(-np.log(acceptance))])
    seeds, rounds, pairs = 12, 12000, acceptance.size
    ladder, rungs, proposed, accepted = jax.device_get(simulate_two_ladders(
        jnp.asarray(losses, jnp.float32), scheme, rounds, seeds
    ))  # fmt: skip
    odds = np.sum((1 - acceptance) / acceptance)
    # ladder 0's parity flips between its rounds with probability 2/3 (K = 2)
    exact = (dg.even_odd_round_trip_rate(acceptance, flip=2 / 3)
             if scheme == "even_odd" else 1 / (pairs * (pairs + odds)))  # fmt: skip
    results, r_info = [], []
    for s in range(seeds):
        history = make_history(rungs[s][:, 0], np.arange(pairs + 1),
                               proposed=proposed[s], accepted=accepted[s])  # fmt: skip
        info = tp.multi.MultiExchangeInfo(
            ladder=ladder[s], proposed=proposed[s], accepted=accepted[s],
            acceptance_prob=np.zeros(proposed[s].shape),
            log_ratio=np.zeros(proposed[s].shape), c=np.ones((rounds, 2)),
            rungs=rungs[s],
        )  # fmt: skip
        r_info.append(info)
        results.append(dg.barrier(history._replace(move=info)))
    assert {r.scheme for r in results} == {scheme}
    for s, r in enumerate(results):  # acceptance_rate pooled both ladders before
        history = make_history(rungs[s][:, 0], np.arange(pairs + 1),
                               proposed=proposed[s], accepted=accepted[s])  # fmt: skip
        rate = dg.acceptance_rate(history._replace(move=r_info[s]))
        np.testing.assert_allclose(rate, 1 - r.local, rtol=1e-12)
    rates = np.array([r.round_trip_rate for r in results])
    mean, error = rates.mean(), rates.std(ddof=1) / np.sqrt(seeds)
    assert abs(mean - exact) < 4 * error and abs(mean / exact - 1) < 0.04
    barriers = np.array([r.global_barrier for r in results])
    error = barriers.std(ddof=1) / np.sqrt(seeds)
    assert abs(barriers.mean() - (1 - acceptance).sum()) < 4 * error
    for r in results:
        assert r.round_trip_expected == pytest.approx(exact, rel=0.1)
    ax = tp.plots.plot_c(history._replace(move=info))
    assert [line.get_label() for line in ax.get_lines()] == ["ladder 0", "ladder 1"]


@pytest.mark.parametrize("acceptance", [[1.0, 1.0, 1.0], [0.8, 0.6, 0.7], [0.5]])
def test_the_even_odd_chain_gives_both_of_the_papers_rates(acceptance) -> None:
    acceptance = np.asarray(acceptance)
    odds, pairs = np.sum((1 - acceptance) / acceptance), acceptance.size
    deterministic = dg.even_odd_round_trip_rate(acceptance, flip=1.0)
    stochastic = dg.even_odd_round_trip_rate(acceptance, flip=0.5)
    assert deterministic == pytest.approx(1 / (2 + 2 * odds), rel=1e-9)
    assert stochastic == pytest.approx(1 / (2 * pairs + 2 * odds), rel=1e-9)
    between = dg.even_odd_round_trip_rate(acceptance, 2 / 3)
    assert stochastic - 1e-12 <= between <= deterministic + 1e-12
    assert dg.even_odd_round_trip_rate(np.array([0.5, 0.0]), 1.0) == 0.0


def test_the_barrier_leaves_out_the_swaps_of_a_diverged_replica() -> None:
    """A flagged replica always loses its swap: counted, its pair's rejection
    was 1 and the summary's barrier and suggested rungs the divergence's."""
    rounds = 8
    rungs = np.tile([0, 1, 2, 3], (rounds, 1))
    accepted = np.zeros((rounds, 3), bool)
    accepted[::2] = True  # every pair accepts half of its proposals...
    history = make_history(rungs, [0, 1, 2, 3], accepted=accepted)
    diverged = np.zeros((rounds, 4), bool)
    diverged[4:, 3] = True  # ...until replica 3, on the hottest rung, diverges
    accepted[4:, 2] = False
    flagged = history._replace(
        diverged=diverged, move=history.move._replace(accepted=accepted)
    )
    barrier = dg.barrier(flagged)
    np.testing.assert_allclose(barrier.local, [0.5, 0.5, 0.5])
    assert barrier.suggested_rungs == 4
    np.testing.assert_allclose(
        dg.acceptance_rate(flagged), [0.5, 0.5, 0.25]
    )  # as counted
    restored = flagged._replace(
        restored_from=np.where(diverged, 2, -1).astype(np.int32)
    )
    np.testing.assert_allclose(
        dg.barrier(restored).local, [0.5, 0.5, 0.75]
    )  # finite copies
    moved = flagged._replace(rungs=np.tile([3, 1, 2, 0], (rounds, 1)))
    moved = moved._replace(initial_rungs=np.array([3, 1, 2, 0], np.int32))
    # replica 3 now on the coldest rung: pair 0's proposals after round 4 are left out
    np.testing.assert_allclose(dg.barrier(moved).local, [0.5, 0.5, 0.75])


@pytest.mark.parametrize("scheme", ["even_odd", "random_pair"])
def test_two_rungs_exchange_every_round_under_both_schemes(scheme) -> None:
    """Even-odd proposed the one pair in even rounds only: half the round trips
    of random pair (0.249 against 0.498 at acceptance 0.5)."""
    acceptance = 0.5
    seeds, rounds = 12, 4000
    losses = jnp.asarray([0.0, -np.log(acceptance)], jnp.float32)
    rungs, proposed, accepted = jax.device_get(
        simulate_exchange(losses, scheme, rounds, seeds)
    )
    assert proposed.all()
    exact = 1 / (1 + (1 - acceptance) / acceptance)  # 1 / (1 + E): the acceptance
    results = [
        dg.barrier(
            make_history(rungs[s], [0, 1], proposed=proposed[s], accepted=accepted[s])
        )
        for s in range(seeds)
    ]
    rates = np.array([r.round_trip_rate for r in results])
    mean, error = rates.mean(), rates.std(ddof=1) / np.sqrt(seeds)
    assert abs(mean - exact) < 4 * error and abs(mean / exact - 1) < 0.03
    for r in results:
        assert r.round_trip_expected == pytest.approx(exact, rel=0.05)


def test_the_scheme_is_read_from_every_proposal_a_diverged_replicas_too() -> None:
    """Left out of the rates, a flagged replica's proposals were also left out
    of the guess: an even-odd history of three rungs read as random pair."""
    rounds = 8
    proposed = np.array([[r % 2 == 0, r % 2 == 1] for r in range(rounds)])
    history = make_history(
        np.tile([0, 1, 2], (rounds, 1)), [0, 1, 2], proposed=proposed
    )
    diverged = np.zeros((rounds, 3), bool)
    diverged[3:, 2] = True
    flagged = history._replace(diverged=diverged)
    assert dg.barrier(history).scheme == "even_odd"
    assert dg.barrier(flagged).scheme == "even_odd"


def test_the_scheme_the_run_recorded_wins_over_the_guess(pt_run) -> None:
    """A random-pair history of three rungs whose draws alternated read as
    even-odd: the barrier, its bound and the plotted title were the wrong
    scheme's, against the run's own summary (and two rungs read as random pair
    under even-odd)."""
    rounds = 4
    alternating = np.array([[r % 2 == 0, r % 2 == 1] for r in range(rounds)])
    history = make_history(
        np.tile([0, 1, 2], (rounds, 1)), [0, 1, 2], proposed=alternating,
        accepted=alternating,
    )  # fmt: skip
    assert dg.barrier(history).scheme == "even_odd"  # built by hand: guessed
    recorded = history._replace(scheme="random_pair")
    result = dg.barrier(recorded)
    assert result.scheme == "random_pair"
    assert (
        result.round_trip_bound == dg.barrier(history, "random_pair").round_trip_bound
    )
    assert result.round_trip_bound != dg.barrier(history).round_trip_bound
    assert dg.barrier(recorded, "even_odd").scheme == "even_odd"  # an argument wins
    ladder, run = pt_run
    assert run.history.scheme == "even_odd"
    assert dg.barrier(run.history).round_trip_bound == run.summary.round_trip_bound
    both = tp.History.concatenate([run.history, run.history._replace(
        first_step=run.history.num_steps, num_steps=2 * run.history.num_steps)])  # fmt: skip
    assert both.scheme == "even_odd"
    with pytest.raises(ValueError, match="schemes"):
        tp.History.concatenate([run.history, run.history._replace(
            first_step=run.history.num_steps, scheme="random_pair")])  # fmt: skip


def test_the_rate_helpers_refuse_what_is_no_rate():
    """A 1-D rung path raised an IndexError; a scheme "foo", rejections below 0
    and acceptances above 1 gave numbers."""
    from tempering import diagnostics as dg

    with pytest.raises(ValueError, match=r"rung_path must be the \(rounds, replicas\)"):
        dg.count_round_trips(np.array([0, 1, 2, 3]), 4)
    with pytest.raises(ValueError, match="num_rungs must be >= 1"):
        dg.count_round_trips(np.zeros((3, 2), int), 0)
    with pytest.raises(ValueError, match="scheme must be 'even_odd' or 'random_pair'"):
        dg.independent_round_trip_rate(np.array([0.5, 0.5]), "foo")
    with pytest.raises(ValueError, match=r"rejection must be one rate in \[0, 1\]"):
        dg.independent_round_trip_rate(np.array([-0.5, 0.5]), "even_odd")
    with pytest.raises(ValueError, match=r"acceptance must be one rate in \[0, 1\]"):
        dg.even_odd_round_trip_rate([2.0, 0.5], 0.5)
    with pytest.raises(ValueError, match=r"flip must be a probability"):
        dg.even_odd_round_trip_rate([0.5, 0.5], "x")
    assert dg.even_odd_round_trip_rate([0.5, 0.5], 1.0) > 0
