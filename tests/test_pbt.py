"""PBT: exploit/explore as pure vectorised steps, pbt_train, lineage, replay."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TinyBNNet, TinyMLP

import tempering as tp
from tempering import driver, pbt

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


def leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


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
    assert leaves_equal(new.rungs, state.rungs) and int(new.step) == int(state.step)
    for name, values in info.hyperparams.items():
        chex.assert_shape(values, (M,))
        np.testing.assert_array_equal(tp.get_hyperparams(new, [name])[name], values)


def test_exploit_copies_batch_stats(tx, blobs):
    (x, _), _ = blobs
    state = tp.create_replicas(jax.random.key(1), TinyBNNet(), tx, x[:4], ladder=LADDER)
    state, _ = tp.train_step(
        state, jax.random.key(0), jnp.asarray(x[:8]), jnp.zeros(8, jnp.int32)
    )
    scores = jnp.arange(M, dtype=jnp.float32)
    new, info = pbt.pbt_step(jax.random.key(2), state, scores, CONFIG)
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
