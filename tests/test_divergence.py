"""The divergence policy: flag (default), restore, every replica diverged."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TinyMLP, leaves_equal

import tempering as tp
from tempering import divergence, loggers
from tempering.pbt import select_parents

LADDER = tp.make_ladder(learning_rate=[0.02, 0.05, 0.1, 0.2])


def poisoned(state, which):
    """``state`` with NaN weights in the replicas where ``which`` is True."""
    poison = jnp.where(jnp.asarray(which), jnp.nan, 0.0)
    return state.replace(
        params=jax.tree.map(
            lambda p: p + poison.reshape((-1,) + (1,) * (p.ndim - 1)), state.params
        )
    )


@pytest.fixture
def state(tx, blobs):
    (x, _), _ = blobs
    return tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LADDER)


def run(state, blobs, **kwargs):
    train, val = blobs
    settings = dict(
        train_data=train, validation_data=val, num_steps=45, exchange_interval=10,
        burn_in=5, c=0.1, batch_size=32,
    )  # fmt: skip
    settings.update(kwargs)
    return tp.pt_train(state, LADDER, jax.random.key(1), **settings)


def test_restore_sources_pick_the_nearest_finite_colder_replica():
    rungs = np.array([2, 0, 3, 1, 4])  # replica -> rung
    diverged = np.array([True, False, True, True, False])
    # replica 0 (rung 2): colder finite rungs {0 (replica 1)}; replica 3 (rung 1)
    # likewise; replica 2 (rung 3): colder finite is rung 0 as well.
    np.testing.assert_array_equal(
        divergence.restore_sources(diverged, rungs), [1, -1, 1, 1, -1]
    )
    # The coldest diverged: its nearest finite hotter replica.
    np.testing.assert_array_equal(
        divergence.restore_sources(np.array([True, False, False]), [0, 2, 1]),
        [2, -1, -1],
    )


def test_flag_records_warns_once_and_is_never_best(state, blobs):
    bad = poisoned(state, [False, True, False, False])
    with pytest.warns(RuntimeWarning, match="replica 1 .* diverged") as caught:
        result = run(bad, blobs)
    assert sum("diverged" in str(w.message) for w in caught) == 1
    # The warning points at the line that called pt_train, not into the library.
    assert {w.filename for w in caught if "diverged" in str(w.message)} == {__file__}
    history = result.history
    assert history.diverged[:, 1].all() and not history.diverged[:, [0, 2, 3]].any()
    assert (history.restored_from == -1).all()
    assert result.summary.diverged.tolist() == [False, True, False, False]
    assert result.summary.best_replica != 1
    # The others never see the NaN: same weights as a run where replica 1 is fine
    # but scores as +inf (it is pushed to the hot end either way).
    assert np.isfinite(history.val_loss[:, [0, 2, 3]]).all()


def test_restore_copies_the_nearest_colder_replica_and_keeps_the_rung(state, blobs):
    bad = poisoned(state, [False, False, True, False])  # rung 2 diverged
    with pytest.warns(RuntimeWarning, match="restored from replica 1"):
        result = run(bad, blobs, on_diverge="restore", num_steps=15)
    history = result.history
    assert history.diverged[0].tolist() == [False, False, True, False]
    assert history.restored_from[0].tolist() == [-1, -1, 1, -1]
    assert not history.diverged[1:].any()
    assert np.isfinite(result.summary.final_val_loss).all()
    assert not result.summary.diverged.any()
    # Replica 2 kept its own learning rate (rung 2 before the exchange).
    lr = result.history.hyperparams["learning_rate"][0]
    rungs = result.history.rungs[0]
    np.testing.assert_allclose(lr, np.asarray(LADDER.temperatures)[rungs])


def test_restore_leaves_a_healthy_run_bit_for_bit(state, blobs):
    plain = run(state, blobs)
    restore = run(state, blobs, on_diverge="restore")
    for a, b in zip(
        jax.tree.leaves(plain.state.params),
        jax.tree.leaves(restore.state.params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain.history.rungs, restore.history.rungs)


def test_every_replica_diverged_is_an_error_naming_the_round(state, blobs):
    bad = poisoned(state, [True] * 4)
    with pytest.raises(divergence.DivergenceError, match="round 0, by step 15") as e:
        run(bad, blobs)
    assert e.value.history is not None and len(e.value.history.step) == 0


def test_bad_policy_is_refused_before_compiling(state, blobs):
    with pytest.raises(ValueError, match="on_diverge must be one of"):
        run(state, blobs, on_diverge="ignore")


def _error_rate(metrics):
    return 1.0 - metrics.metrics["accuracy"]


def _plain_accuracy(outputs, targets):  # a user's metric, blind to NaN outputs
    return {"accuracy": (jnp.argmax(outputs, -1) == targets).astype(jnp.float32)}


def test_a_diverged_replica_is_never_best_even_with_a_finite_score(tx, blobs):
    """NaN outputs argmax to class 0: on labels mostly 0 the diverged replica
    scores best by a user's error rate, yet it is never reported best, never
    the colder side of a swap and never PBT's donor."""
    (x, y), (xv, _) = blobs
    mostly_zero = np.zeros(len(xv), np.int32)
    mostly_zero[:4] = 1
    common = dict(
        train_data=(x, y), validation_data=(xv, mostly_zero), batch_size=32,
        score_fn=_error_rate, metrics_fn=_plain_accuracy,
    )  # fmt: skip
    bad = [False, False, False, True]
    pt_state = poisoned(
        tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LADDER), bad
    )
    pbt_state = poisoned(
        tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], num_replicas=4),
        bad,
    )
    config = tp.pbt_config({"learning_rate": (0.01, 0.2)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pt_result = tp.pt_train(
            pt_state, LADDER, jax.random.key(1), num_steps=40, exchange_interval=10,
            burn_in=0, c=0.1, **common,
        )  # fmt: skip
        one_round = tp.pbt_train(
            pbt_state,
            jax.random.key(1),
            config=config,
            num_steps=10,
            ready_interval=10,
            **common,
        )  # fmt: skip (PBT skips the last round's move: replica 3 stays diverged)
        two_rounds = tp.pbt_train(
            pbt_state, jax.random.key(1), config=config, num_steps=20,
            ready_interval=10, **common,
        )  # fmt: skip
    for summary in (pt_result.summary, one_round.summary):
        assert summary.diverged.tolist() == bad
        error_rate = 1.0 - summary.final_val_accuracy
        assert error_rate[3] == error_rate.min()  # the trap
        assert summary.best_replica != 3 and np.isfinite(summary.best_val_loss)
    # PT: the diverged replica went to the hottest rung, where it stays.
    assert pt_result.history.rungs[-1][3] == 3
    # PBT: the diverged replica copied a finite one; none copied it.
    assert two_rounds.history.parent[0][3] != 3
    assert 3 not in np.delete(two_rounds.history.parent[0], 3)
    assert not two_rounds.summary.diverged.any()


def test_pbt_flags_too(tx, blobs):
    (x, _), val = blobs
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], num_replicas=4)
    bad = poisoned(state, [True, False, False, False])
    config = tp.pbt_config({"learning_rate": (0.01, 0.2)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = tp.pbt_train(
            bad, jax.random.key(0), config=config, train_data=blobs[0],
            validation_data=val, num_steps=30, ready_interval=10, batch_size=32,
        )  # fmt: skip
    assert result.history.diverged[0].tolist() == [True, False, False, False]
    assert result.history.copied[0, 0]  # the worst (NaN) replica was exploited
    assert not result.summary.diverged.any()


@pytest.mark.parametrize("policy", ["flag", "restore"])
def test_pbt_replaces_a_diverged_replica_and_never_copies_it(tx, blobs, policy):
    """Restored, it held its source's weights and score, tied the best and was
    copied with the values it diverged with; it is now ranked last as flagged."""
    (x, _), val = blobs
    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4],
        ladder=tp.make_ladder(learning_rate=[0.02, 0.05, 0.1, 0.3]),
    )  # fmt: skip
    bad = poisoned(state, [False, True, False, False])
    config = tp.pbt_config({"learning_rate": (0.01, 0.5)}, fraction=0.25)
    with pytest.warns(
        RuntimeWarning, match=r"replica 1 \(.*learning_rate=0\.05\) diverged by step "
        r"10 .*replaced at this round's exploit by a copy of replica [023]",
    ):  # fmt: skip
        result = tp.pbt_train(
            bad, jax.random.key(0), config=config, train_data=blobs[0],
            validation_data=val, num_steps=20, ready_interval=10, batch_size=32,
            on_diverge=policy,
        )  # fmt: skip
    history = result.history
    assert history.diverged[0].tolist() == [False, True, False, False]
    assert history.copied[0].tolist() == [False, True, False, False]
    parent = int(history.parent[0, 1])
    assert parent != 1
    lr = history.hyperparams["learning_rate"][0]
    assert lr[1] != 0.05 and lr[parent] == state.learning_rate[parent]
    assert not result.summary.diverged.any()


def test_every_replica_diverged_carries_and_saves_the_last_finite_state(
    tx, blobs, tmp_path
):
    """Targets of 1e30 from batch 25 on: every loss is inf in round 2."""
    (x, y), (xv, yv) = blobs
    targets = np.eye(3, dtype=np.float32)[y]

    def mse(outputs, targets):
        return jnp.mean((outputs - targets) ** 2, axis=-1)

    def stream(huge_from, start=0):
        for index in range(start, 100):
            i = 32 * (index % 8)
            scale = 1e30 if index >= huge_from else 1.0
            yield x[i : i + 32], targets[i : i + 32] * scale

    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LADDER, loss_fn=mse
    )
    common = dict(
        validation_data=(xv, np.eye(3, dtype=np.float32)[yv]), exchange_interval=10,
        burn_in=0, c=0.1, batch_size=32,
    )  # fmt: skip
    with pytest.raises(divergence.DivergenceError, match="round 2, by step 30") as e:
        tp.pt_train(state, LADDER, jax.random.key(1), train_data=stream(25),
                    num_steps=40, checkpoint_dir=tmp_path, checkpoint_every=100,
                    **common)  # fmt: skip
    clean = tp.pt_train(state, LADDER, jax.random.key(1), train_data=stream(100),
                        num_steps=20, **common)  # fmt: skip
    error = e.value
    assert int(error.state.step) == 20  # after round 1, the last that ended finite
    for a, b in zip(
        jax.tree.leaves((error.state.params, error.state.opt_state)),
        jax.tree.leaves((clean.state.params, clean.state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(error.move_state.rungs, clean.move_state.rungs)
    np.testing.assert_array_equal(error.history.step, clean.history.step)
    np.testing.assert_array_equal(error.history.val_loss, clean.history.val_loss)
    # No checkpoint was due, but the last finite round was saved before the error:
    # resumed there (the stream from batch 20, mended), the run ends as a clean one.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["20"]
    resumed = tp.pt_train(state, LADDER, jax.random.key(1), num_steps=40,
                          train_data=stream(100, start=20), checkpoint_dir=tmp_path,
                          **common)  # fmt: skip
    whole = tp.pt_train(state, LADDER, jax.random.key(1), train_data=stream(100),
                        num_steps=40, **common)  # fmt: skip
    assert leaves_equal(resumed.state.params, whole.state.params)
    np.testing.assert_array_equal(resumed.history.val_loss, whole.history.val_loss)


def test_the_warning_names_the_values_the_replica_diverged_with(tx, blobs):
    """A restored replica scores as its source and may swap rungs in the move."""
    ladder = tp.make_ladder(learning_rate=[0.01, 0.02, 0.05, 8.0])
    (x, _), _ = blobs
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=ladder)
    bad = poisoned(state, [False, False, False, True])
    with pytest.warns(RuntimeWarning, match="diverged") as caught:
        result = tp.pt_train(
            bad, ladder, jax.random.key(1), train_data=blobs[0],
            validation_data=blobs[1], num_steps=15, exchange_interval=10, burn_in=5,
            c=0.1, batch_size=32, on_diverge="restore",
        )  # fmt: skip
    # The move sent replica 3 to the colder rung (it scored as replica 2) ...
    assert result.history.hyperparams["learning_rate"][0, 3] == np.float32(0.05)
    # ... but it diverged with learning rate 8.
    (message,) = [str(w.message) for w in caught if "diverged" in str(w.message)]
    assert message.startswith("replica 3 (") and "learning_rate=8)" in message


def test_a_divergence_in_the_last_unevaluated_segment_checkpoints_the_last_round(
    tx, blobs, tmp_path
):
    """Every replica diverges after the last round (its segment ends no round):
    the checkpoint is the last finite round, so calling again repeats the call."""
    (x, y), (xv, yv) = blobs
    targets = np.eye(3, dtype=np.float32)[y]

    def mse(outputs, targets):
        return jnp.mean((outputs - targets) ** 2, axis=-1)

    def stream(start):
        for index in range(start, 100):
            i = 32 * (index % 8)
            yield x[i : i + 32], targets[i : i + 32] * (1e30 if index >= 33 else 1.0)

    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LADDER, loss_fn=mse
    )
    settings = dict(
        validation_data=(xv, np.eye(3, dtype=np.float32)[yv]), exchange_interval=10,
        burn_in=0, c=0.1, batch_size=32, num_steps=37, checkpoint_dir=tmp_path,
        checkpoint_every=100,
    )  # fmt: skip
    errors = []
    for start in (0, 30):  # the generator read on from where the call stopped
        with pytest.raises(divergence.DivergenceError, match="by step 37") as e:
            tp.pt_train(state, LADDER, jax.random.key(1), train_data=stream(start),
                        **settings)  # fmt: skip
        errors.append(e.value)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["30"]
    for error in errors:
        assert int(error.state.step) == 30
        assert all(
            np.isfinite(leaf).all() for leaf in jax.tree.leaves(error.state.params)
        )
    assert leaves_equal(errors[0].state.params, errors[1].state.params)


def test_a_replica_restored_at_the_last_step_is_never_reported_best(state, blobs):
    """Restored in the last round, replica 0 tied its source (replica 1) at the
    final evaluation and, the lower index, was reported best: with the values
    it diverged with."""
    bad = poisoned(state, [True, False, False, False])
    with pytest.warns(RuntimeWarning, match="restored from replica 1"):
        result = run(bad, blobs, on_diverge="restore", num_steps=15)
    summary = result.summary
    assert result.history.restored_from[-1].tolist() == [1, -1, -1, -1]
    assert summary.final_val_loss[0] == summary.final_val_loss[1]
    assert np.argmin(summary.final_val_loss) == 0  # the tie the old code reported
    assert summary.best_replica == 1  # the source, which earned the score


def test_pbt_never_reports_a_copy_made_at_its_last_step(tx, blobs):
    (x, _), val = blobs
    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4],
        ladder=tp.make_ladder(learning_rate=[0.3, 0.1, 0.05, 0.02]),
    )  # fmt: skip
    config = tp.pbt_config({"learning_rate": (0.01, 0.5)}, fraction=0.5)
    result = tp.pbt_train(
        state, jax.random.key(0), config=config, train_data=blobs[0],
        validation_data=val, num_steps=20, ready_interval=10, batch_size=32,
        exploit_at_end=True,
    )  # fmt: skip
    copied = result.history.copied[-1]
    assert copied.any()
    best = result.summary.best_replica
    assert not copied[best]
    assert result.summary.best_val_loss == result.summary.final_val_loss.min()


def test_a_divergence_after_the_last_round_is_warned_about(tx, blobs):
    """No round recorded it (PBT's last segment has no exploit by default): it
    was in summary.diverged, and no warning said so."""
    (x, _), val = blobs
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], num_replicas=4)
    bad = poisoned(state, [False, False, True, False])
    config = tp.pbt_config({"learning_rate": (0.01, 0.2)})
    with pytest.warns(RuntimeWarning, match=r"replica 2 .*final evaluation") as caught:
        result = tp.pbt_train(
            bad, jax.random.key(0), config=config, train_data=blobs[0],
            validation_data=val, num_steps=10, ready_interval=10, batch_size=32,
        )  # fmt: skip
    assert len(result.history.step) == 0
    assert result.summary.diverged.tolist() == [False, False, True, False]
    assert sum("diverged" in str(w.message) for w in caught) == 1
    assert {w.filename for w in caught if "diverged" in str(w.message)} == {__file__}
    with pytest.warns(RuntimeWarning) as flagged:  # flagged in a round: warned once
        run(bad, blobs, num_steps=20)
    assert sum("diverged" in str(w.message) for w in flagged) == 1


def test_tournament_always_replaces_a_diverged_replica():
    """Drawing another diverged replica, it kept its NaN weights for the round."""
    config = tp.pbt_config({"learning_rate": (0.01, 0.2)}, selection="tournament")
    scores = jnp.array([jnp.inf, jnp.nan, 0.1, 0.2, jnp.inf, 0.3])
    for seed in range(50):
        parent, copied = select_parents(jax.random.key(seed), scores, config)
        parent = np.asarray(parent)
        assert np.asarray(copied)[[0, 1, 4]].all(), seed
        assert np.isfinite(np.asarray(scores)[parent[[0, 1, 4]]]).all(), seed
    finite = jnp.array([0.3, 0.1, 0.2, 0.4])  # no divergence: the same draws as before
    parent, _ = select_parents(jax.random.key(3), finite, config)
    other = (
        np.arange(4) + np.asarray(jax.random.randint(jax.random.key(3), (4,), 1, 4))
    ) % 4
    expected = np.where(
        np.asarray(finite)[other] < np.asarray(finite), other, np.arange(4)
    )
    np.testing.assert_array_equal(parent, expected)


def test_the_jsonl_log_of_a_diverged_replica_is_standard_json(state, blobs, tmp_path):
    """Python wrote NaN and Infinity, which jq and JSON.parse reject."""
    path = tmp_path / "log.jsonl"
    bad = poisoned(state, [False, True, False, False])

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    with warnings.catch_warnings(), loggers.JsonlLogger(path) as log:
        warnings.simplefilter("ignore", RuntimeWarning)
        run(bad, blobs, num_steps=25, callback=log)
    lines = [
        json.loads(line, parse_constant=refuse)
        for line in path.read_text().splitlines()
    ]
    assert len(lines) == 2
    assert lines[0]["diverged"] == [False, True, False, False]
    assert lines[0]["validation"]["loss"][1] is None
    assert lines[0]["train_loss"][1] is None and lines[0]["score"][1] is None
    assert all(isinstance(v, float) for v in lines[0]["validation"]["loss"][::2])
