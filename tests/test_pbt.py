"""PBT: exploit/explore as pure vectorised steps, pbt_train, lineage, replay."""

import functools
import math
import warnings
from fractions import Fraction
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    PROPERTY_SETTINGS,
    REPLICAS,
    Case,
    T,
    TinyBNNet,
    TinyMLP,
    V,
    bad_input_params,
    check_raises_before_compiling,
    leaves_equal,
    train_step,
)
from hypothesis import given
from hypothesis import strategies as st

import tempering as tp
from tempering import driver, pbt
from tempering.pbt import pbt_step
from tempering.replay import Schedule

LADDER = tp.make_ladder(learning_rate=[0.02, 0.05, 0.1, 0.2, 0.3, 0.4])
M = LADDER.num_rungs
CONFIG = pbt.pbt_config(
    {"learning_rate": pbt.Prior(0.01, 0.5, log=True), "dropout_rate": (0.0, 0.5)},
    fraction=0.34,
)


@pytest.fixture(scope="module")
def state(tx, blobs):
    (x, _), _ = blobs
    return tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LADDER,
        hyperparams={"dropout_rate": 0.1},
    )  # fmt: skip


def replica(tree, m):
    return jax.tree.map(lambda x: x[m], tree)


def per_replica_state(state):
    return (state.params, state.batch_stats, state.opt_state, state.dropout_rate)


def test_truncation_selects_bottom_from_top():
    scores = jnp.array([0.5, 0.1, 0.9, 0.3, jnp.nan, 0.2])
    for seed in range(20):
        parent, copied = pbt.select_parents(jax.random.key(seed), scores, CONFIG)
        chex.assert_shape((parent, copied), (M,))
        # ceil(0.34 * 6) = 3 -> min(3, 3): the three worst (nan, 0.9, 0.5) copy
        np.testing.assert_array_equal(copied, [True, False, True, False, True, False])
        assert set(np.asarray(parent)[np.asarray(copied)]) <= {1, 5, 3}
        np.testing.assert_array_equal(parent[~copied], np.arange(M)[~copied])


def test_truncation_replaces_every_diverged_replica_from_finite_ones():
    # M = 6, n = 3, four diverged: more than the bottom n, and some in the top n
    scores = jnp.array([0.3, jnp.nan, jnp.inf, jnp.nan, 0.2, -jnp.inf])
    donors = set()
    for seed in range(40):
        parent, copied = pbt.select_parents(jax.random.key(seed), scores, CONFIG)
        parent, copied = np.asarray(parent), np.asarray(copied)
        np.testing.assert_array_equal(copied, ~np.isfinite(scores))
        donors |= set(parent[copied].tolist())
    assert donors == {0, 4}  # both finite replicas, and only they
    nothing_finite = jnp.full((M,), jnp.nan)
    parent, copied = pbt.select_parents(jax.random.key(0), nothing_finite, CONFIG)
    np.testing.assert_array_equal(parent, np.arange(M))
    assert not np.asarray(copied).any()


def test_truncation_breaks_ties_at_random():
    # M = 6, n = 3: replicas 1..4 tie at the cut, so two of them copy; each
    # with probability 1/2, not the two of higher index every time. The donors'
    # draw is independent of the tie break: a tied donor slot goes to each of
    # the tied replicas as often.
    scores = jnp.array([0.1, 0.5, 0.5, 0.5, 0.5, 0.9])
    trials = 2000
    keys = jax.random.split(jax.random.key(0), trials)
    pick = jax.jit(jax.vmap(lambda k: pbt.select_parents(k, scores, CONFIG)))
    parent, copied = (np.asarray(x) for x in pick(keys))
    np.testing.assert_array_equal(copied.sum(axis=1), 3)
    assert copied[:, 5].all() and not copied[:, 0].any()
    freq = copied[:, 1:5].mean(axis=0)
    stderr = math.sqrt(0.5 * 0.5 / trials)
    np.testing.assert_array_less(np.abs(freq - 0.5), 5 * stderr)
    # donors: the top 3 are replica 0 and two of the tied; a copy takes
    # replica 0 with probability 1/3, a tied one 2/3 split evenly over four
    donor_freq = np.bincount(parent[copied], minlength=M) / copied.sum()
    expected = np.array([1 / 3, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 0.0])
    # three correlated draws a trial: their mean varies at most as one draw
    stderr = np.sqrt(expected * (1 - expected) / trials)
    np.testing.assert_array_less(np.abs(donor_freq - expected), 5 * stderr + 1e-9)


def test_truncation_size():
    assert pbt.num_truncated(8, 0.2) == 2
    assert pbt.num_truncated(10, 0.2) == 2
    assert pbt.num_truncated(3, 0.5) == 1
    assert pbt.num_truncated(1, 0.5) == 0


def test_tournament_copies_only_better():
    config = CONFIG._replace(selection="tournament")
    scores = jnp.arange(M, dtype=jnp.float32)
    parents = []
    for seed in range(30):
        parent, copied = pbt.select_parents(jax.random.key(seed), scores, config)
        parent = np.asarray(parent)
        assert parent[0] == 0  # the best never copies
        assert np.all(scores[parent] <= scores)
        np.testing.assert_array_equal(copied, parent != np.arange(M))
        parents.append(parent)
    assert np.concatenate(parents).max() > 0


def test_exploit_copies_exactly_and_leaves_rest_bit_identical(state):
    scores = jnp.array([0.3, 0.1, 0.9, 0.2, 0.8, 0.7])
    new, info = pbt.pbt_step(jax.random.key(3), state, scores, CONFIG)
    parent, copied = np.asarray(info.parent), np.asarray(info.copied)
    np.testing.assert_array_equal(copied, [False, False, True, False, True, True])
    for m in range(M):
        old_m = replica(per_replica_state(state), m)
        new_m = replica((new.params, new.batch_stats, new.opt_state.inner_state), m)
        if copied[m]:
            src = replica(
                (state.params, state.batch_stats, state.opt_state.inner_state),
                parent[m],
            )
            assert leaves_equal(new_m, src)
        else:
            assert leaves_equal(replica(per_replica_state(new), m), old_m)
    assert int(new.step) == int(state.step)
    for name, values in info.hyperparams.items():
        chex.assert_shape(values, (M,))
        np.testing.assert_array_equal(tp.get_hyperparams(new, [name])[name], values)


def test_exploit_copies_batch_stats(tx, blobs):
    (x, _), _ = blobs
    state = tp.create_replicas(jax.random.key(1), TinyBNNet(), tx, x[:4], ladder=LADDER)
    state, _ = train_step(
        state, jax.random.key(0), jnp.asarray(x[:8]), jnp.zeros(8, jnp.int32)
    )
    scores = jnp.arange(M, dtype=jnp.float32)
    step = jax.jit(pbt.pbt_step, static_argnames="config")  # not op by op
    new, info = step(jax.random.key(2), state, scores, config=CONFIG)
    for m in np.flatnonzero(info.copied):
        assert leaves_equal(
            replica(new.batch_stats, m), replica(state.batch_stats, info.parent[m])
        )


def test_explore_bounds_and_factors():
    config = pbt.pbt_config(
        {"learning_rate": pbt.Prior(0.01, 1.0, log=True)},
        bounds={"learning_rate": (0.005, 2.0)},
        resample_probability=0.0,
    )
    num = 2000
    value = jnp.full((num,), 0.1)
    copied = jnp.arange(num) % 2 == 0
    new, resampled = pbt.explore(
        jax.random.key(0), {"learning_rate": value}, copied, config
    )
    new = np.asarray(new["learning_rate"])
    ratio = new[::2] / 0.1
    assert set(np.round(ratio.astype(np.float64), 5).tolist()) == {0.8, 1.2}
    assert 0.4 < np.mean(np.isclose(ratio, 0.8)) < 0.6
    np.testing.assert_array_equal(new[1::2], np.float32(0.1))  # untouched
    assert not np.asarray(resampled["learning_rate"]).any()
    # clipping at the bounds
    at_edge = {"learning_rate": jnp.full((num,), 1.9)}
    clipped, _ = pbt.explore(jax.random.key(1), at_edge, jnp.ones(num, bool), config)
    assert np.asarray(clipped["learning_rate"]).max() == pytest.approx(2.0)


def test_explored_batch_size_stays_whole_and_moves():
    config = pbt.pbt_config(
        {"batch_size": pbt.Prior(2, 64)}, resample_probability=0.3,
        perturb_factors=(0.8, 1.2),
    )  # fmt: skip
    num = 600
    values = {"batch_size": jnp.asarray(np.tile([2.0, 3.0, 16.0, 64.0], num // 4))}
    new, resampled = pbt.explore(jax.random.key(0), values, jnp.ones(num, bool), config)
    new, resampled = np.asarray(new["batch_size"]), np.asarray(resampled["batch_size"])
    old = np.asarray(values["batch_size"])
    np.testing.assert_array_equal(new, np.round(new))
    assert new.min() >= 2 and new.max() <= 64
    perturbed = ~resampled & (new > 2) & (new < 64)
    assert np.all(new[perturbed] != old[perturbed])  # 2 or 3 x 1.2 still moves
    assert set(new[~resampled & (old == 16)].tolist()) == {12.0, 20.0}  # floor, ceil
    drawn = np.asarray(pbt.sample_prior(jax.random.key(1), config, 1000)["batch_size"])
    np.testing.assert_array_equal(drawn, np.round(drawn))
    assert drawn.min() >= 2 and drawn.max() <= 64 and len(set(drawn.tolist())) > 30


@pytest.mark.parametrize("factor", [0.8, 1.2, 1.25, 0.5])
def test_a_batch_size_whose_product_is_whole_is_that_product(factor):
    """In float32 25 * 1.2 is 30.000002: its ceil was 31."""
    config = pbt.pbt_config(
        {"batch_size": pbt.Prior(1, 1024)}, resample_probability=0.0,
        perturb_factors=(factor,),
    )  # fmt: skip
    old = np.arange(2, 400)
    new, _ = pbt.explore(
        jax.random.key(0), {"batch_size": jnp.asarray(old, jnp.float32)},
        jnp.ones(len(old), bool), config,
    )  # fmt: skip
    exact = [Fraction(int(b)) * Fraction(str(factor)) for b in old]
    away = [
        max(math.ceil(p), b + 1) if factor > 1 else min(math.floor(p), b - 1)
        for p, b in zip(exact, old.tolist(), strict=True)
    ]
    np.testing.assert_array_equal(np.asarray(new["batch_size"]), away)


def test_pbt_train_batch_holds_the_explored_batch_size(tx, blobs):
    (x, y), val = blobs
    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], num_replicas=4,
        hyperparams={"learning_rate": 0.05, "batch_size": 16},
    )  # fmt: skip
    config = pbt.pbt_config({"batch_size": pbt.Prior(8, 40)}, fraction=0.5)
    settings = pbt._batch_for_explored_sizes(
        tp.RunConfig(num_steps=8, interval=4), config, state
    )
    assert settings.batch_size == 40  # the bound, not the state's largest (16)
    with pytest.raises(ValueError, match=r"batch_size=16 is smaller than 40"):
        pbt.pbt_train(
            state, jax.random.key(1), config=config, train_data=(x, y),
            validation_data=val, num_steps=8, ready_interval=4, batch_size=16,
        )  # fmt: skip
    result = pbt.pbt_train(
        state, jax.random.key(1), config=config, train_data=(x, y),
        validation_data=val, num_steps=8, ready_interval=4, init_from_prior=True,
    )  # fmt: skip
    sizes = np.asarray(result.history.hyperparams["batch_size"])
    np.testing.assert_array_equal(sizes, np.round(sizes))
    assert sizes.min() >= 8 and sizes.max() <= 40


def test_train_with_a_pbt_move_sizes_batches_for_the_explored_batch_size(tx, blobs):
    """tp.train sized the batch from the state's sizes only: a replica
    explored to 30 trained on the first 16 examples, silently."""
    (x, y), val = blobs
    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], num_replicas=4,
        hyperparams={"learning_rate": 0.05, "batch_size": 16},
    )  # fmt: skip
    move = pbt.pbt_move(pbt.pbt_config({"batch_size": pbt.Prior(8, 32)}))
    assert move.largest_batch_size() == 32
    assert pbt.pbt_move(pbt.pbt_config({"learning_rate": pbt.Prior(0.01, 0.1)}))\
        .largest_batch_size() is None  # fmt: skip
    data = tp.RunData((x, y), val)
    with pytest.raises(ValueError, match=r"batch_size=16 is smaller than the largest"):
        tp.train(state, jax.random.key(1), move, data,
                 tp.RunConfig(num_steps=8, interval=4, batch_size=16))  # fmt: skip
    tp.train(
        state, jax.random.key(1), move, data, tp.RunConfig(num_steps=8, interval=4)
    )


def test_explore_resample_from_prior():
    config = pbt.pbt_config(
        {"dropout_rate": (0.1, 0.3)}, resample_probability=1.0, perturb_factors=[1.0]
    )
    num = 1000
    new, resampled = pbt.explore(
        jax.random.key(0),
        {"dropout_rate": jnp.full((num,), 0.5)},
        jnp.ones(num, bool),
        config,
    )
    values = np.asarray(new["dropout_rate"])
    assert np.asarray(resampled["dropout_rate"]).all()
    assert values.min() >= 0.1 and values.max() <= 0.3 and values.std() > 0.04
    logs = pbt.sample_prior(
        jax.random.key(1), pbt.pbt_config({"learning_rate": (1e-4, 1e-1, True)}), 4000
    )["learning_rate"]
    # log-uniform: the median sits at the geometric mean
    assert np.median(np.log10(np.asarray(logs))) == pytest.approx(-2.5, abs=0.1)


def test_pbt_step_jit_determinism(state):
    scores = jnp.linspace(0.1, 1.0, M)
    step = jax.jit(pbt.pbt_step, static_argnames="config")
    a, info_a = step(jax.random.key(5), state, scores, config=CONFIG)
    b, info_b = step(jax.random.key(5), state, scores, config=CONFIG)
    c, info_c = pbt.pbt_step(jax.random.key(5), state, scores, CONFIG)
    assert leaves_equal(a, b) and leaves_equal(info_a, info_b)
    # eager and jitted agree (floats up to XLA fusion rounding)
    np.testing.assert_array_equal(info_a.parent, info_c.parent)
    np.testing.assert_allclose(
        info_a.hyperparams["learning_rate"],
        info_c.hyperparams["learning_rate"],
        rtol=1e-6,
    )
    assert leaves_equal(a.params, c.params)
    chex.assert_tree_shape_prefix(per_replica_state(a), (M,))


def run(state, blobs, **kwargs):
    train, val = blobs
    settings = dict(
        config=CONFIG,
        train_data=train,
        validation_data=val,
        num_steps=47,
        ready_interval=10,
        burn_in=5,
        batch_size=32,
    )
    settings.update(kwargs)
    return pbt.pbt_train(state, jax.random.key(1), **settings)


def test_pbt_train_history_lineage_and_determinism(state, blobs):
    result = run(state, blobs, burn_in_hyperparams={"learning_rate": 0.1})
    history, summary = result.history, result.summary
    # segments after burn-in: 10, 10, 10, 10, 2 -> exploit after the first 4
    rounds = 4
    np.testing.assert_array_equal(history.step, 5 + 10 * np.arange(1, rounds + 1))
    chex.assert_shape(
        [history.val_loss, history.parent, history.copied, history.train_loss],
        (rounds, M),
    )
    assert set(history.hyperparams) == {"learning_rate", "dropout_rate"}
    chex.assert_shape(list(history.hyperparams.values()), (rounds, M))
    assert int(result.state.step) == 47
    np.testing.assert_array_equal(history.copied, history.parent != np.arange(M))
    assert history.copied.sum(1).tolist() == [3] * rounds  # ceil(0.34 * 6)
    np.testing.assert_allclose(history.burn_in_hyperparams["learning_rate"], 0.1)
    np.testing.assert_allclose(
        history.initial_hyperparams["learning_rate"],
        np.asarray(LADDER.values["learning_rate"]),
    )
    # lineage: a replica that did not copy keeps its hyperparameters
    prev = history.initial_hyperparams["learning_rate"]
    for r in range(rounds):
        row = history.hyperparams["learning_rate"][r]
        kept = ~history.copied[r]
        np.testing.assert_array_equal(row[kept], prev[kept])
        # copied: perturbed parent value (or resampled), within bounds
        for m in np.flatnonzero(history.copied[r]):
            if not history.resampled["learning_rate"][r, m]:
                ratio = row[m] / prev[history.parent[r, m]]
                assert (
                    np.isclose(ratio, 0.8, atol=1e-5)
                    or np.isclose(ratio, 1.2, atol=1e-5)
                    or row[m] in (0.01, 0.5)
                )
            # the dropout rate came from the parent too (or was explored)
            assert 0.0 <= history.hyperparams["dropout_rate"][r, m] <= 0.5
        # the copied weights are validated next round; the best replica never copies
        assert not history.copied[r, np.argmin(history.val_loss[r])]
        prev = row
    np.testing.assert_allclose(
        summary.final_hyperparams["learning_rate"],
        history.hyperparams["learning_rate"][-1],
    )
    np.testing.assert_allclose(
        result.state.learning_rate, summary.final_hyperparams["learning_rate"]
    )
    assert summary.best_val_loss == pytest.approx(summary.final_val_loss.min())
    assert summary.num_copies == 3 * rounds
    # determinism, compile once, and the caller's state is not donated
    size = driver._jitted_move._cache_size()
    again = run(state, blobs, burn_in_hyperparams={"learning_rate": 0.1})
    assert driver._jitted_move._cache_size() == size
    assert leaves_equal(again.state.params, result.state.params)
    np.testing.assert_array_equal(again.history.parent, history.parent)
    assert int(state.step) == 0


def test_pbt_without_exploit_equals_the_grid(state, blobs):
    # one segment only -> no exploit: the same program as pt_train's grid
    result = run(state, blobs, num_steps=25, ready_interval=20)
    assert result.history.step.size == 0
    train, val = blobs
    grid = tp.pt_train(
        state,
        LADDER,
        jax.random.key(1),
        train_data=train,
        validation_data=val,
        num_steps=25,
        exchange_interval=20,
        burn_in=5,
        exchanges=False,
        batch_size=32,
    )
    assert leaves_equal(result.state.params, grid.state.params)


def test_a_run_split_over_calls_is_one_run_with_exploit_at_end(state, blobs):
    whole = run(state, blobs)  # rounds end at 15, 25, 35, 45; 47 steps
    first = run(state, blobs, num_steps=25, exploit_at_end=True)
    assert first.history.step.tolist() == [15, 25]  # the exploit at 25 is made
    rest = run(first.state, blobs, num_steps=22)
    assert leaves_equal(rest.state, whole.state)
    for field in ("step", "val_loss", "parent", "copied"):
        joined = np.concatenate(
            [getattr(first.history, field), getattr(rest.history, field)]
        )
        np.testing.assert_array_equal(joined, getattr(whole.history, field))
    # by default a call ends on its last segment's population: the exploit at
    # 25 is not made, and the split run is another run
    cut = run(state, blobs, num_steps=25)
    assert cut.history.step.tolist() == [15]
    assert not leaves_equal(run(cut.state, blobs, num_steps=22).state, whole.state)
    with pytest.raises(TypeError, match="exploit_at_end"):
        run(state, blobs, exploit_at_end="yes")


def test_a_call_within_the_burn_in_has_no_rounds(state, blobs):
    # num_steps counts this call's steps: a longer burn-in is not an error, the
    # next call continues it
    result = run(state, blobs, num_steps=10, burn_in=47)
    assert int(result.state.step) == 10
    assert result.history.step.size == 0 and result.summary.num_copies == 0
    chex.assert_shape([result.history.parent, result.history.val_loss], (0, M))
    np.testing.assert_array_equal(result.state.learning_rate, state.learning_rate)


def test_best_schedule_follows_lineage(state, blobs):
    result = run(state, blobs)
    history = result.history
    best = result.summary.best_replica
    schedule = tp.best_schedule(history, best)
    # reference: walk the lineage by hand, one value per segment
    slot, values = best, []
    values.append(history.hyperparams["learning_rate"][-1, slot])
    for r in range(len(history.step) - 1, -1, -1):
        slot = history.parent[r, slot]
        values.append(
            history.hyperparams["learning_rate"][r - 1, slot]
            if r > 0
            else history.initial_hyperparams["learning_rate"][slot]
        )
    per_segment = values[::-1]
    starts = [0, 5, *history.step.tolist()]  # burn-in, then segments
    seg_values = [per_segment[0], *per_segment]
    expanded = np.empty(47, np.float32)
    for s, (start, v) in enumerate(zip(starts, seg_values, strict=True)):
        end = starts[s + 1] if s + 1 < len(starts) else 47
        expanded[start:end] = v
    got = np.empty(47, np.float32)
    ends = [*schedule.starts[1:].tolist(), schedule.num_steps]
    for start, end, v in zip(
        schedule.starts, ends, schedule.values["learning_rate"], strict=True
    ):
        got[start:end] = v
    np.testing.assert_array_equal(got, expanded)
    assert schedule.starts[0] == 0 and np.all(np.diff(schedule.starts) > 0)
    with pytest.raises(ValueError, match="replica"):
        tp.best_schedule(history, M)


def test_best_schedule_after_an_exploit_at_the_last_step(state, blobs, tx):
    """The values explored at the call's end never trained: not a piece."""
    result = run(state, blobs, num_steps=45, exploit_at_end=True)
    history = result.history
    assert history.step[-1] == 45 and history.copied[-1].any()
    for replica in range(M):
        schedule = tp.best_schedule(history, replica)
        assert schedule.starts[-1] < 45
        parent = int(history.parent[-1, replica])  # trained the last segment
        same = tp.best_schedule(history, parent)
        assert leaves_equal(schedule, same)
    (x, _), _ = blobs
    fresh = tp.create_replicas(jax.random.key(9), TinyMLP(), tx, x[:4], num_replicas=2)
    copied = int(np.flatnonzero(history.copied[-1])[0])
    replay = tp.replay_schedule(
        fresh, jax.random.key(1), tp.best_schedule(history, copied),
        train_data=blobs[0], validation_data=blobs[1], batch_size=32,
    )  # fmt: skip
    assert int(replay.state.step) == 45


def test_best_schedule_passes_through_a_restored_replicas_source():
    """A replica restored in a round holds its source's weights, trained at the
    source's values: the schedule names those, not the restored replica's own."""
    lr = np.asarray([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]], np.float32)  # after rounds 0, 1
    keep = np.arange(3, dtype=np.int32)
    info = pbt.PBTInfo(
        parent=np.stack([keep, keep]), copied=np.zeros((2, 3), bool),
        resampled={"learning_rate": np.zeros((2, 3), bool)},
        hyperparams={"learning_rate": lr},
    )  # fmt: skip
    restored_from = np.asarray([[-1, -1, -1], [-1, -1, 1]], np.int32)
    history = tp.History(
        round=np.arange(2), step=np.asarray([10, 20]), train_loss=np.zeros((2, 3)),
        validation=None, score=np.zeros((2, 3)), test=None, move=info, rungs=None,
        hyperparams={"learning_rate": lr}, diverged=restored_from >= 0,
        restored_from=restored_from, initial_rungs=None,
        initial_hyperparams={"learning_rate": lr[0]},
        burn_in_hyperparams={"learning_rate": lr[0]}, num_steps=25,
    )  # fmt: skip
    schedule = tp.best_schedule(history, 2)
    # segments [0, 10) and [10, 20) trained by replica 1 (0.2), copied into 2 at
    # step 20; [20, 25) by replica 2 at its own 0.3
    np.testing.assert_array_equal(schedule.starts, [0, 20])
    np.testing.assert_array_equal(schedule.replicas, [1, 2])
    np.testing.assert_allclose(schedule.values["learning_rate"], [0.2, 0.3])


def test_replay_schedule(state, blobs, tx):
    result = run(state, blobs)
    schedule = tp.best_schedule(result.history, result.summary.best_replica)
    (x, _), _ = blobs
    fresh = tp.create_replicas(jax.random.key(9), TinyMLP(), tx, x[:4], num_replicas=2)
    train, val = blobs
    replay = tp.replay_schedule(
        fresh,
        jax.random.key(1),
        schedule,
        train_data=train,
        validation_data=val,
        batch_size=32,
    )
    assert int(replay.state.step) == 47
    chex.assert_shape(replay.val_loss, (len(schedule.starts), 2))
    np.testing.assert_allclose(
        replay.state.learning_rate, schedule.values["learning_rate"][-1]
    )
    assert np.all(np.isfinite(replay.val_loss))
    assert replay.test_loss is None and replay.test_metrics == {}
    # test data was evaluated every piece and dropped from the result
    tested = tp.replay_schedule(fresh, jax.random.key(1), schedule, train_data=train,
                                validation_data=val, test_data=val, batch_size=32)  # fmt: skip
    np.testing.assert_array_equal(tested.test_loss, tested.val_loss)
    np.testing.assert_array_equal(
        tested.test_metrics["accuracy"], tested.val_metrics["accuracy"]
    )


def test_a_replayed_batch_size_schedule_trains_every_piece_at_its_size(tx, blobs):
    """Each step's batch held the first piece's size: a later, larger
    batch_size was cut to it, silently."""
    (x, y), val = blobs
    fresh = tp.create_replicas(
        jax.random.key(9), TinyMLP(), tx, x[:4], num_replicas=2,
        hyperparams={"batch_size": 4.0},
    )  # fmt: skip

    def replay(sizes):
        schedule = Schedule(
            starts=np.array([0, 5]), replicas=np.array([0, 0]), num_steps=10,
            values={"batch_size": np.asarray(sizes, np.float32)},
        )  # fmt: skip
        return tp.replay_schedule(
            fresh, jax.random.key(1), schedule, train_data=(x, y), validation_data=val
        ).state.params

    at_4, at_64 = replay([4.0, 4.0]), replay([4.0, 64.0])
    assert not leaves_equal(at_4, at_64)
    with pytest.raises(ValueError, match="batch_size=16 is smaller than .* 64"):
        schedule = Schedule(
            starts=np.array([0, 5]), replicas=np.array([0, 0]), num_steps=10,
            values={"batch_size": np.asarray([4.0, 64.0], np.float32)},
        )  # fmt: skip
        tp.replay_schedule(fresh, jax.random.key(1), schedule, train_data=(x, y),
                           validation_data=val, batch_size=16)  # fmt: skip


def test_a_pbt_call_ending_before_its_first_exploit_warns(state, blobs):
    with pytest.warns(
        UserWarning, match="ends before the first exploit .*ready_interval"
    ):
        run(state, blobs, num_steps=10, burn_in=20)
    # ending at the first round's end, whose exploit a call's last round skips
    # unless exploit_at_end: no exploit either, and it said nothing
    with pytest.warns(UserWarning, match=r"ends at the first exploit .*exploit_at_end"):
        result = run(state, blobs, num_steps=15, burn_in=5)
    assert result.summary.num_copies == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(state, blobs, num_steps=15, burn_in=5, exploit_at_end=True)


def test_init_from_prior_draws_within_the_bounds(state, blobs):
    """The draw was not clipped: replicas started (and, never copied, stayed)
    outside the bounds that every later redraw is clipped to."""
    config = pbt.pbt_config(
        {"learning_rate": pbt.Prior(1e-3, 1e-1, log=True)},
        bounds={"learning_rate": (1e-3, 1e-2)},
    )
    result = run(state, blobs, config=config, init_from_prior=True, num_steps=5,
                 burn_in=0, ready_interval=10)  # fmt: skip
    start = result.history.initial_hyperparams["learning_rate"]
    assert np.all(start <= np.float32(1e-2)) and np.any(start == np.float32(1e-2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(prior={}), "prior is empty"),
        (
            dict(prior={"momentum": (0.1, 1.0)}),
            r"momentum in the prior must lie in \[0, 1\)",
        ),
        (dict(prior={"weight_decay": (-1.0, 0.1)}), "weight_decay in the prior"),
        (dict(prior={"learning_rate": (0.1, 0.01)}), "bounds reversed"),
        (
            dict(
                prior={"learning_rate": (0.01, 0.1)},
                bounds={"learning_rate": (0.2, 0.1)},
            ),
            "bounds reversed",
        ),
        (dict(prior={"learning_rate": (0.0, 0.1, True)}), "low > 0"),
        (dict(prior={"dropout_rate": (0.1, 1.0)}), r"\[0, 1\)"),
        (dict(prior={"learning_rate": (0.01, 0.1)}, fraction=0.0), r"\(0, 0.5\]"),
        (dict(prior={"learning_rate": (0.01, 0.1)}, fraction=0.6), r"\(0, 0.5\]"),
        (
            dict(prior={"learning_rate": (0.01, 0.1)}, resample_probability=1.5),
            r"\[0, 1\]",
        ),
        (
            dict(prior={"learning_rate": (0.01, 0.1)}, perturb_factors=[]),
            "perturb_factors",
        ),
        (dict(prior={"learning_rate": (0.01, 0.1)}, selection="greedy"), "selection"),
        (
            dict(
                prior={"learning_rate": (0.01, 0.1)}, bounds={"dropout_rate": (0, 0.5)}
            ),
            "no prior",
        ),
    ],
)
def test_invalid_config(kwargs, match):
    prior = kwargs.pop("prior")
    with pytest.raises(ValueError, match=match):
        pbt.pbt_config(prior, **kwargs)


LR = {"learning_rate": (0.01, 0.1)}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(bounds={"learning_rate": 0.1}), TypeError, r"bounds\['learning_rate'\] "
         r"must be a \(low, high\) pair"),
        (dict(bounds={"learning_rate": (0.01, 0.05, 0.1)}), TypeError, "pair"),
        (dict(bounds={"learning_rate": ("a", 0.1)}), TypeError,
         r"bounds\['learning_rate'\]'s low must be a number"),
        (dict(prior={"learning_rate": ("a", 0.1)}), TypeError,
         r"prior\['learning_rate'\]'s low must be a number"),
        (dict(prior={"learning_rate": (1e-3, 0.1, "False")}), TypeError,
         r"log must be True .* or False"),
        (dict(bounds={"learning_rate": (0.5, 0.9)}), ValueError,
         r"miss its prior's range \[0.01, 0.1\]: every value drawn from the prior "
         r"would be clipped to 0.5"),
    ],
)  # fmt: skip
def test_malformed_config_entries_are_named(kwargs, error, match):
    """Before: bare unpacking errors, a string log read as True, disjoint bounds."""
    with pytest.raises(error, match=match):
        pbt.pbt_config(kwargs.pop("prior", LR), **kwargs)


def test_best_schedule_refuses_what_is_not_a_pbt_lineage(state, blobs):
    result = run(state, blobs, num_steps=25)
    for replica in (1.5, True, np.float32(1)):
        with pytest.raises(TypeError, match="replica must be an int"):
            tp.best_schedule(result.history, replica)
    assert tp.best_schedule(result.history, np.int64(1)).num_steps == 25
    train, val = blobs
    pt = tp.pt_train(
        state, LADDER, jax.random.key(0), train_data=train, validation_data=val, num_steps=20,
        exchange_interval=10, burn_in=0, batch_size=32,
    )  # fmt: skip
    with pytest.raises(TypeError, match="give the history of a pbt_train call"):
        tp.best_schedule(pt.history, 0)


def test_config_takes_any_hyperparameter_name():
    # the names a state holds are checked by pbt_train (test_pbt_train_invalid);
    # the config orders the two common names first, then the others sorted
    config = pbt.pbt_config(
        {
            "weight_decay": (0.0, 1e-2),
            "b1": (0.8, 0.99),
            "learning_rate": (1e-3, 1e-1, True),
        }
    )
    assert config.names == ("learning_rate", "b1", "weight_decay")
    assert config.bounds[1] == (0.8, 0.99)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(ready_interval=0), ValueError, "ready_interval"),
        (dict(num_steps=0), ValueError, "num_steps"),
        (dict(burn_in=-1), ValueError, "burn_in"),
        (dict(config={"learning_rate": (0.1, 1)}), TypeError, "PBTConfig"),
        (
            dict(config=pbt.pbt_config({"momentum": (0.1, 0.9)})),
            ValueError,
            r"config: unknown hyperparameter.*momentum",
        ),
        (dict(burn_in_hyperparams={"momentum": 0.9}), ValueError, "unknown"),
        (dict(validation_data=None), TypeError, "needs validation_data"),
        (dict(batch_size=10_000), ValueError, "batch_size"),
    ],
)
def test_pbt_train_invalid(state, blobs, kwargs, error, match):
    with pytest.raises(error, match=match):
        run(state, blobs, **kwargs)


def pbt_run(ctx: Any, /, **overrides: Any) -> Any:
    """``pbt_train`` on the shared state and data, with ``overrides``."""
    kwargs = dict(
        train_data=(ctx.x, ctx.y), validation_data=(ctx.xv, ctx.yv), num_steps=20,
        ready_interval=5, batch_size=8, config=ctx.config,
    )  # fmt: skip
    kwargs.update(overrides)
    key = kwargs.pop("key", ctx.key)
    return tp.pbt_train(kwargs.pop("state", ctx.state), key, **kwargs)


def first_replica(state: Any) -> Any:
    """The state of replica 0 alone (M = 1), sliced on the host (nothing compiles)."""
    return jax.tree.map(lambda a: np.asarray(a)[:1] if np.ndim(a) else a, state)


def pbt_cfg(**overrides: Any) -> Any:
    """``pbt_config`` of a learning-rate prior, with ``overrides``."""
    prior = overrides.pop("prior", {"learning_rate": (0.01, 0.1)})
    return tp.pbt_config(prior, **overrides)


# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.


def replay(
    ctx: Any, /, starts: Any, values: Any, num_steps: Any = 20, **settings: Any
) -> Any:
    """``replay_schedule`` of a hand-built schedule on the shared state and data."""
    schedule = tp.replay.Schedule(np.asarray(starts), values, np.zeros(0), num_steps)
    return tp.replay_schedule(ctx.state, ctx.key, schedule, train_data=(ctx.x, ctx.y),
                              validation_data=(ctx.xv, ctx.yv), batch_size=8,
                              **settings)  # fmt: skip


# fmt: off
BAD_INPUTS = [
    # --- pbt ------------------------------------------------------------------
    Case("pbt-prior-empty", lambda c: tp.pbt_config({}), V, r"prior is empty"),
    Case("pbt-prior-name-mixed", lambda c: tp.pbt_config({1: (0.1, 1), "b1": (0.5, 0.9)}), T, r"prior names hyperparameters by str .* got 1", fixed=True),
    Case("pbt-bounds-name-int", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, bounds={0: (0.0, 1.0)}), T, r"bounds names hyperparameters by str .* got 0", fixed=True),
    Case("pbt-prior-reversed", lambda c: tp.pbt_config({"learning_rate": (0.1, 0.01)}), V, r"low=0.1 >= high=0.01"),
    Case("pbt-prior-lr-negative", lambda c: tp.pbt_config({"learning_rate": (-0.1, 0.1)}), V, r"learning_rate in the prior"),
    Case("pbt-prior-dropout-1", lambda c: tp.pbt_config({"dropout_rate": (0.0, 1.0)}), V, r"dropout_rate in the prior.*\[0, 1\)"),
    Case("pbt-prior-log-zero", lambda c: tp.pbt_config({"weight_decay": (0.0, 0.1, True)}), V, r"log-uniform prior\['weight_decay'\] needs low > 0"),
    Case("pbt-prior-not-tuple", lambda c: tp.pbt_config({"learning_rate": 0.1}), T, r"prior\['learning_rate'\] must be a Prior"),
    Case("pbt-prior-not-mapping", lambda c: tp.pbt_config(["learning_rate"]), T, r"prior must be a mapping", fixed=True),
    Case("pbt-bounds-without-prior", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, bounds={"dropout_rate": (0.0, 0.5)}), V, r"bounds given for \['dropout_rate'\]"),
    Case("pbt-bounds-reversed", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, bounds={"learning_rate": (0.1, 0.01)}), V, r"bounds\['learning_rate'\]"),
    Case("pbt-selection-unknown", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, selection="best"), V, r"selection must be one of"),
    Case("pbt-fraction-0", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, fraction=0.0), V, r"fraction q must lie in \(0, 0.5\]"),
    Case("pbt-fraction-0.6", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, fraction=0.6), V, r"fraction q must lie in \(0, 0.5\]"),
    Case("pbt-resample-1.5", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, resample_probability=1.5), V, r"resample_probability must lie in \[0, 1\]"),
    Case("pbt-factors-empty", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, perturb_factors=()), V, r"perturb_factors must be a non-empty"),
    Case("pbt-factors-negative", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, perturb_factors=(-0.8, 1.2)), V, r"perturb_factors must be a non-empty"),
    Case("pbt-factors-scalar", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, perturb_factors=0.8), T, r"perturb_factors must be a sequence", fixed=True),
    Case("pbt-prior-lr-huge", lambda c: tp.pbt_config({"learning_rate": (0.01, 100.0)}), V, r"learning_rate in the prior must be at most 10", fixed=True),
    Case("pbt-fraction-string", lambda c: pbt_cfg(fraction="a fifth"), T, r"fraction must be a number", fixed=True),
    Case("pbt-bounds-not-mapping", lambda c: pbt_cfg(bounds=[(0.01, 0.1)]), T, r"bounds must be a mapping", fixed=True),
    Case("pbt-step-key-int", lambda c: pbt_step(7, c.state, c.losses, c.config), T, r"key must be a JAX PRNG key", fixed=True),
    Case("pbt-train-config-dict", lambda c: pbt_run(c, config={"learning_rate": (0.01, 0.1)}), T, r"config must be a PBTConfig"),
    Case("pbt-train-config-unknown-name", lambda c: pbt_run(c, config=tp.pbt_config({"weight_decay": (0.0, 0.1)})), V, r"config.*unknown.*weight_decay"),
    Case("pbt-train-ready-interval-0", lambda c: pbt_run(c, ready_interval=0), V, r"ready_interval must be >= 1"),
    Case("pbt-train-no-validation", lambda c: pbt_run(c, validation_data=None), T, r"pbt_train needs validation_data"),
    Case("pbt-train-exploit-at-end-str", lambda c: pbt_run(c, exploit_at_end="yes"), T, r"exploit_at_end must be True or False"),
    Case("pbt-step-scores-length", lambda c: pbt_step(c.key, c.state, jnp.ones(3), c.config), V, r"scores must have one entry per replica", fixed=True),
    Case("pbt-train-one-replica", lambda c: pbt_run(c, state=first_replica(c.state)), V, r"pbt_train needs at least 2 replicas, got M = 1", fixed=True),
    Case("pbt-train-prior-int-key", lambda c: pbt_run(c, key=0, init_from_prior=True), T, r"key must be a JAX PRNG key", fixed=True),
    Case("pbt-train-prior-unpaired-data", lambda c: pbt_run(c, train_data=(c.x, c.y[:5]), init_from_prior=True), V, r"train_data has \d+ inputs but 5 targets", fixed=True),
    Case("replay-values-too-short", lambda c: replay(c, [0, 10, 15], {"learning_rate": [0.1, 0.2]}), V, r"schedule.values\['learning_rate'\] must hold one value per piece, shape \(3,\)", fixed=True),
    Case("replay-values-too-long", lambda c: replay(c, [0, 10], {"learning_rate": [0.1, 0.2, 0.3, 0.4]}), V, r"one value per piece, shape \(2,\)", fixed=True),
    Case("replay-no-values", lambda c: replay(c, [0, 10], {}), V, r"schedule.values must map at least one", fixed=True),
    Case("replay-later-nan", lambda c: replay(c, [0, 10], {"learning_rate": [0.1, np.nan]}), V, r"learning_rate in the schedule has non-finite", fixed=True),
    Case("replay-later-dropout-1.5", lambda c: replay(c, [0, 10], {"dropout_rate": [0.1, 1.5]}), V, r"dropout_rate in the schedule", fixed=True),
    Case("replay-float-starts", lambda c: replay(c, [0.0, 10.7], {"learning_rate": [0.1, 0.2]}), T, r"schedule.starts must be a 1-D array of ints", fixed=True),
    Case("replay-num-steps-setting", lambda c: replay(c, [0, 10], {"learning_rate": [0.1, 0.2]}, num_steps=20, interval=5), T, r"replay_schedule sets \['interval'\] itself", fixed=True),
    Case("replay-float-num-steps", lambda c: replay(c, [0, 10], {"learning_rate": [0.1, 0.2]}, num_steps=20.9), T, r"schedule.num_steps must be an int", fixed=True),
    Case("pbt-step-config-dict", lambda c: pbt_step(c.key, c.state, jnp.ones(REPLICAS), {"learning_rate": (0.01, 0.1)}), T, r"config must be a PBTConfig", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


# --- properties (hypothesis, PROPERTY_SETTINGS in conftest.py): exploit and explore ---

CONFIGS = {
    (selection, fraction): pbt.pbt_config(
        {"learning_rate": (1e-3, 1.0, True), "dropout_rate": (0.0, 0.5)},
        selection=selection,
        fraction=fraction,
        resample_probability=0.3,
    )
    for selection, fraction in [
        ("truncation", 0.2),
        ("truncation", 0.5),
        ("tournament", 0.2),
    ]
}
select_parents = jax.jit(pbt.select_parents, static_argnums=2)
explore = jax.jit(pbt.explore, static_argnums=3)
scores_st = st.lists(
    st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
    | st.sampled_from([math.inf, math.nan]),
    min_size=M,
    max_size=M,
)


@PROPERTY_SETTINGS
@given(
    scores=scores_st,
    setting=st.sampled_from(sorted(CONFIGS)),
    seed=st.integers(0, 2**31 - 1),
)
def test_exploit_copies_only_from_better_replicas(scores, setting, seed):
    config = CONFIGS[setting]
    parent, copied = select_parents(
        jax.random.key(seed), np.asarray(scores, np.float32), config
    )
    parent, copied = np.asarray(parent), np.asarray(copied)
    own = np.arange(M)
    assert np.all((0 <= parent) & (parent < M))
    np.testing.assert_array_equal(copied, parent != own)
    ranked = np.where(np.isfinite(scores), np.asarray(scores, np.float32), np.inf)
    if config.selection == "truncation":
        n = pbt.num_truncated(M, config.fraction)
        ordered = np.sort(ranked)
        finite = np.isfinite(ranked)
        if not finite.any():
            assert not copied.any()  # nothing finite to copy
            return
        # the bottom n copy, and every diverged replica beyond them
        assert copied.sum() == max(n, int((~finite).sum()))
        assert np.all((ranked[copied] >= ordered[M - n]) | ~finite[copied])
        assert np.all(finite[parent[copied]])  # only finite replicas are copied
        assert np.all(ranked[parent[copied]] <= ordered[n - 1])  # each from the top n
    else:
        assert np.all(ranked[parent[copied]] < ranked[copied])  # strictly better


@PROPERTY_SETTINGS
@given(
    lr=st.lists(st.floats(1e-3, 1.0), min_size=M, max_size=M),
    rate=st.lists(st.just(0.0) | st.floats(1e-6, 0.5), min_size=M, max_size=M),
    copied=st.lists(st.booleans(), min_size=M, max_size=M),
    seed=st.integers(0, 2**31 - 1),
)
def test_explore_stays_in_bounds_and_changes_only_copies(lr, rate, copied, seed):
    config = CONFIGS[("truncation", 0.2)]
    values = {
        "learning_rate": np.asarray(lr, np.float32),
        "dropout_rate": np.asarray(rate, np.float32),
    }
    copied = np.asarray(copied)
    new, resampled = explore(jax.random.key(seed), values, copied, config)
    for name, (low, high) in zip(config.names, config.bounds, strict=True):
        out = np.asarray(new[name])
        assert np.all((out >= np.float32(low)) & (out <= np.float32(high)))
        np.testing.assert_array_equal(out[~copied], values[name][~copied])
        assert not np.any(np.asarray(resampled[name]) & ~copied)
        # a perturbed (not resampled, not clipped) value moved by one of the factors
        moved = copied & ~np.asarray(resampled[name]) & (out > low) & (out < high)
        ratios = out[moved] / values[name][moved]
        factors = np.asarray(config.perturb_factors, np.float32)
        assert np.all(np.min(np.abs(ratios[:, None] - factors), axis=1) < 1e-4)


def test_resample_and_copy_frequencies_within_bounds():
    config = CONFIGS[("tournament", 0.2)]  # resample_probability 0.3
    trials = 1000
    keys = jax.random.split(jax.random.key(3), trials)
    values = {"learning_rate": jnp.full((M,), 0.1), "dropout_rate": jnp.zeros(M)}
    explore_all = functools.partial(pbt.explore, config=config)
    run = jax.jit(jax.vmap(explore_all, (0, None, None)))
    _, resampled = run(keys, values, jnp.ones((M,), bool))
    for name in config.names:
        freq = float(np.mean(resampled[name]))
        stderr = math.sqrt(0.3 * 0.7 / (trials * M))
        assert abs(freq - 0.3) < 5 * stderr
    # binary tournament on distinct scores: replica of rank k (0 best) copies
    # with probability k / (M - 1)
    scores = jnp.arange(M, dtype=jnp.float32)
    pick = jax.jit(jax.vmap(lambda k: pbt.select_parents(k, scores, config)[1]))
    freq = np.asarray(pick(keys)).mean(axis=0)
    expected = np.arange(M) / (M - 1)
    stderr = np.sqrt(expected * (1 - expected) / trials)
    assert np.all(np.abs(freq - expected) <= 5 * stderr + 1e-9)


def test_ready_interval_is_an_int_named_as_such(state, blobs):
    """A sequence ran as explicit round ends (10, 20, 60 -> rounds at 10, 20)
    and its errors named "interval", which pbt_train has no keyword for."""
    with pytest.raises(TypeError, match=r"ready_interval must be an int .*RunConfig"):
        run(state, blobs, ready_interval=(10, 20, 60), burn_in=0)
    with pytest.raises(TypeError, match=r"exchange_interval must be an int"):
        tp.pt_train(state, LADDER, jax.random.key(1), train_data=blobs[0],
                    validation_data=blobs[1], num_steps=20,
                    exchange_interval=[10, 20])  # fmt: skip
