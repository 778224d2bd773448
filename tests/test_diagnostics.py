"""Diagnostics of a PT history: hand-built histories with known answers, one real run."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")


import tempering as tp  # noqa: E402
from tempering import diagnostics as dg  # noqa: E402
from tempering.diagnostics import count_round_trips  # noqa: E402
from tempering.moves import ExchangeMoveInfo  # noqa: E402


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
