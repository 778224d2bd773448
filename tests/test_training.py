"""pt_train end to end: history, summary, determinism, compile-once, bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    CLASSES,
    ENGINE_PROGRAMS,
    INF,
    NAN,
    REPLICAS,
    Case,
    T,
    TinyMLP,
    V,
    bad_input_params,
    check_raises_before_compiling,
    pt,
)

import tempering as tp
from tempering import driver, loops, training
from tempering.data import Dataset, Split
from tempering.moves import ExchangeState

LADDER = tp.make_ladder(learning_rate=[0.02, 0.05, 0.1, 0.2])


@pytest.fixture
def state(tx, blobs):
    (x, _), _ = blobs
    return tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LADDER,
        hyperparams={"dropout_rate": 0.1},
    )  # fmt: skip


# Every program pt_train compiles, for either loop.
COMPILED = (
    loops._host_array_step,
    loops._host_add_chunk,
    loops._device_array_segment,
    loops._device_evaluate,
    driver._jitted_move,
)


def clear_compiled():
    for fn in COMPILED:
        fn.clear_cache()


def compiled_sizes():
    return [fn._cache_size() for fn in COMPILED]


def run(state, blobs, **kwargs):
    train, val = blobs
    settings = dict(
        train_data=train,
        validation_data=val,
        num_steps=50,
        exchange_interval=10,
        burn_in=5,
        c=0.1,
        batch_size=32,
    )
    settings.update(kwargs)
    return tp.pt_train(state, LADDER, jax.random.key(1), **settings)


def test_short_run_history_and_summary(state, blobs):
    result = run(state, blobs, scheme="even_odd")
    history, summary = result.history, result.summary
    rounds = (50 - 5) // 10
    np.testing.assert_array_equal(history.step, 5 + 10 * np.arange(1, rounds + 1))
    assert (
        history.val_loss.shape
        == history.val_accuracy.shape
        == history.rungs.shape
        == (rounds, 4)
    )
    assert history.proposed.shape == history.accepted.shape == (rounds, 3)
    assert int(result.state.step) == 50
    for row in history.rungs:
        assert sorted(row.tolist()) == [0, 1, 2, 3]
    # even-odd alternates parity: round 0 proposes pairs 0 and 2, round 1 pair 1
    np.testing.assert_array_equal(history.proposed[0], [True, False, True])
    np.testing.assert_array_equal(history.proposed[1], [False, True, False])
    assert history.accepted.sum() > 0
    assert summary.acceptance_rate.shape == (3,) and summary.round_trips.shape == (4,)
    assert 0 <= summary.best_replica < 4
    assert summary.best_val_loss == pytest.approx(summary.final_val_loss.min())
    # the final hyperparameters are those of the final rungs
    np.testing.assert_allclose(
        result.state.learning_rate, LADDER.values["learning_rate"][history.rungs[-1]]
    )
    assert np.isfinite(history.val_loss).all()


def test_exchanges_off_is_the_independent_grid(state, blobs):
    result = run(state, blobs, exchanges=False)
    assert not result.history.accepted.any() and not result.history.proposed.any()
    assert np.all(result.history.rungs == np.arange(4))
    assert np.all(np.isnan(result.summary.acceptance_rate))


def test_never_exchanged_replica_is_its_grid_twin(state, blobs):
    # Same key: the same initial weights, batches and dropout masks, so a PT
    # replica that never left its rung is bit-identical to its grid twin and
    # one that moved is not. Fig. 2's PT = grid ties are exactly these twins.
    pt = run(state, blobs, scheme="random_pair")
    grid = run(state, blobs, exchanges=False)
    stayed = np.all(pt.history.rungs == np.arange(4), axis=0)
    assert stayed.any() and not stayed.all(), pt.history.rungs
    pt_leaves = jax.tree.leaves(pt.state.params)
    grid_leaves = jax.tree.leaves(grid.state.params)
    for replica in range(4):
        identical = all(
            np.array_equal(a[replica], b[replica])
            for a, b in zip(pt_leaves, grid_leaves, strict=True)
        )
        assert identical == stayed[replica], replica


def test_same_key_same_run_and_caller_state_untouched(state, blobs):
    before = jax.tree.map(np.asarray, state.params)
    a = run(state, blobs)
    b = run(state, blobs)
    np.testing.assert_array_equal(a.history.rungs, b.history.rungs)
    np.testing.assert_array_equal(a.history.val_loss, b.history.val_loss)
    jax.tree.map(
        np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params)
    )


@pytest.mark.parametrize("loop", ["host", "device"])
def test_rounds_compile_once_for_burn_in_rounds_and_leftover(state, blobs, loop):
    clear_compiled()
    # 6 + 4 x 10 + 1: the leftover step starts a round the next call would end
    result = run(state, blobs, num_steps=47, burn_in=6, exchange_interval=10, loop=loop)
    assert int(result.state.step) == 47
    np.testing.assert_array_equal(result.history.step, [16, 26, 36, 46])
    host = 1 if loop == "host" else 0
    assert compiled_sizes() == [host, host, 1 - host, 1 - host, 1]


def test_host_and_device_loops_give_the_same_run(state, blobs):
    host = run(state, blobs, loop="host")
    device = run(state, blobs, loop="device")
    np.testing.assert_array_equal(host.history.rungs, device.history.rungs)
    np.testing.assert_allclose(
        host.history.val_loss, device.history.val_loss, rtol=1e-5
    )


def test_burn_in_hyperparams_then_ladder(state, blobs):
    result = run(state, blobs, burn_in_hyperparams={"learning_rate": 0.01})
    assert result.history.initial_rungs.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(
        result.state.learning_rate,
        LADDER.values["learning_rate"][result.history.rungs[-1]],
    )


def test_diverged_replica_is_pushed_to_the_hot_end(tx, blobs):
    (x, _), _ = blobs
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LADDER)
    poison = jnp.array([jnp.nan, 0.0, 0.0, 0.0])  # the coldest replica diverged
    state = state.replace(
        params=jax.tree.map(
            lambda p: p + poison.reshape((4,) + (1,) * (p.ndim - 1)), state.params
        )
    )
    result = run(
        state, blobs, num_steps=125, burn_in=5, exchange_interval=10, scheme="even_odd"
    )
    rungs = result.history.rungs[:, 0]
    assert np.all(np.diff(rungs) >= 0), (
        "a diverged replica never moves to a colder rung"
    )
    assert rungs[-1] == 3
    assert np.isinf(result.history.val_loss[:, 0]).all()
    assert np.isfinite(result.history.val_loss[:, 1:]).all()
    assert result.summary.best_replica != 0


def test_round_trip_counting():
    path = np.array([[0, 2], [1, 1], [2, 0], [1, 1], [0, 2], [2, 0], [0, 2]])
    np.testing.assert_array_equal(tp.diagnostics.count_round_trips(path, 3), [2, 1])


BAD = [
    (dict(num_steps=0), ValueError, "num_steps must be >= 1"),
    (dict(exchange_interval=0), ValueError, "exchange_interval must be >= 1"),
    (dict(exchange_interval=-3), ValueError, "exchange_interval must be >= 1"),
    (dict(exchange_interval=2.5), TypeError, "exchange_interval must be an int"),
    (dict(burn_in=-1), ValueError, "burn_in must be >= 0"),
    (dict(burn_in=True), TypeError, "burn_in must be an int"),
    (dict(num_steps=10.0), TypeError, "num_steps must be an int"),
    (dict(c=0.0), ValueError, "c must be finite and > 0"),
    (dict(c=-1.0), ValueError, "c must be finite and > 0"),
    (dict(c=float("nan")), ValueError, "c must be finite and > 0"),
    (dict(scheme="all_pairs"), ValueError, "scheme must be one of"),
    (dict(batch_size=1000), ValueError, "fewer than batch_size"),
    (
        dict(burn_in_hyperparams={"momentum": 0.5}),
        ValueError,
        r"unknown hyperparameter.*momentum",
    ),
    (dict(burn_in_hyperparams={"learning_rate": 0.0}), ValueError, "learning_rate"),
    (dict(exchanges="yes"), TypeError, "exchanges must be True or False"),
    (dict(loop="gpu"), ValueError, "loop must be one of"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD)
def test_invalid_settings_raise_before_compiling(state, blobs, kwargs, error, match):
    clear_compiled()
    with pytest.raises(error, match=match):
        run(state, blobs, **kwargs)
    assert compiled_sizes() == [0] * len(COMPILED)


def test_invalid_data_raise_before_compiling(state, blobs):
    (x, y), (xv, yv) = blobs
    clear_compiled()
    cases = [
        (
            dict(train_data=(x, np.where(y == 2, 3, y))),
            ValueError,
            r"labels must lie in \[0, 3\)",
        ),
        (
            dict(validation_data=(xv, yv - 1)),
            ValueError,
            r"labels must lie in \[0, 3\)",
        ),
        (dict(train_data=(x[:0], y[:0])), ValueError, "train_data is empty"),
        (
            dict(validation_data=(xv[:0], yv[:0])),
            ValueError,
            "validation_data is empty",
        ),
        (dict(train_data=(x, y[:-1])), ValueError, "must match"),
        (dict(train_data=(x, y.astype(np.float32))), TypeError, "must be integers"),
        (dict(train_data=x), TypeError, "train_data must be"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            run(state, blobs, **kwargs)
    assert compiled_sizes() == [0] * len(COMPILED)


def test_a_call_within_the_burn_in_takes_its_steps_without_rounds(state, blobs):
    # num_steps counts this call's steps; a burn-in longer than the call is
    # continued by the next call (it was an error when a call was a whole run)
    result = run(state, blobs, num_steps=12, burn_in=50)
    assert int(result.state.step) == 12
    assert result.history.step.shape == (0,)
    assert result.history.rungs.shape == result.history.val_loss.shape == (0, 4)
    assert result.history.proposed.shape == (0, 3)
    assert np.all(np.isnan(result.summary.acceptance_rate))
    np.testing.assert_array_equal(result.move_state.rungs, np.arange(4))
    assert np.isfinite(result.summary.final_val_loss).all()


def test_mismatched_ladder_and_state(state, blobs):
    train, val = blobs
    with pytest.raises(ValueError, match="ladder has 3 rungs but the state holds 4"):
        tp.pt_train(
            state,
            tp.make_ladder(learning_rate=[0.1, 0.2, 0.3]),
            jax.random.key(0),
            train_data=train,
            validation_data=val,
            num_steps=10,
            exchange_interval=5,
        )


def test_test_data_is_recorded_per_round_and_does_not_change_the_run(state, blobs):
    train, val = blobs
    plain = run(state, blobs)
    with_test = run(state, blobs, test_data=val)
    rounds = plain.history.step.shape[0]
    assert with_test.history.test_loss.shape == (rounds, 4)
    assert with_test.history.test_accuracy.shape == (rounds, 4)
    # the test split here is the validation split: the same numbers, same weights
    np.testing.assert_allclose(
        with_test.history.test_loss, with_test.history.val_loss, rtol=1e-6
    )
    np.testing.assert_allclose(
        with_test.history.test_accuracy, with_test.history.val_accuracy, rtol=1e-6
    )
    # the test data never influences training or exchanges
    np.testing.assert_array_equal(plain.history.rungs, with_test.history.rungs)
    np.testing.assert_allclose(plain.history.val_loss, with_test.history.val_loss)
    # without test_data the fields are NaN-filled with the same shape
    assert plain.history.test_loss.shape == (rounds, 4)
    assert np.isnan(plain.history.test_loss).all()
    assert np.isnan(plain.history.test_accuracy).all()


def test_progress_bar_reports_every_step(state, blobs, capsys):
    pytest.importorskip("tqdm")
    run(state, blobs, progress=True)
    err = capsys.readouterr().err
    assert "ExchangeMove" in err and "50/50" in err  # the bar names the move


def nan_at(array: np.ndarray, index: tuple, value: float = NAN) -> np.ndarray:
    """A copy of ``array`` with one entry replaced."""
    array = array.copy()
    array[index] = value
    return array


# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.


def whole_dataset(c):
    """A tempering.data.Dataset of the shared arrays (given where a split goes)."""
    split = Split(c.x, c.y)
    return Dataset(split, Split(c.xv, c.yv), split, 3, "shared")


# fmt: off
BAD_INPUTS = [
    # --- pt_train -------------------------------------------------------------
    Case("pt-train-data-one-array", lambda c: pt(c, train_data=(c.x,)), V, r"train_data must be an \(inputs, targets\) pair of arrays, got a tuple of 1", fixed=True),
    Case("pt-train-data-whole-dataset", lambda c: pt(c, train_data=whole_dataset(c)), V, r"train_data is a whole tempering.data.Dataset .*train_data=data.train", fixed=True),
    Case("pt-validation-whole-dataset", lambda c: pt(c, validation_data=whole_dataset(c)), V, r"validation_data is a whole tempering.data.Dataset", fixed=True),
    Case("pt-vectorize-none", lambda c: pt(c, vectorize=None), T, r"vectorize must be 'auto', a policy name", fixed=True),
    Case("pt-exchanges-string", lambda c: pt(c, exchanges="False"), T, r"exchanges must be True or False"),
    Case("pt-adapt-rounds-with-fixed-c", lambda c: pt(c, adapt_rounds=3), V, r"adapt_rounds=3 with a fixed c=1.0: nothing adapts"),
    Case("pt-burn-in-values-typo", lambda c: pt(c, burn_in=5, burn_in_hyperparams={"learnig_rate": 0.1}), V, r"burn_in_hyperparams: unknown hyperparameter\(s\) \['learnig_rate'\]"),
    Case("pt-nan-train-inputs", lambda c: pt(c, train_data=(nan_at(c.x, (3, 2)), c.y)), V, r"train_data inputs hold 1 non-finite"),
    Case("pt-nan-validation-inputs", lambda c: pt(c, validation_data=(nan_at(c.xv, (0, 0)), c.yv)), V, r"validation_data inputs hold 1 non-finite"),
    Case("pt-inf-test-inputs", lambda c: pt(c, test_data=(np.full_like(c.xv, INF), c.yv)), V, r"test_data inputs hold .* non-finite"),
    Case("pt-validation-shape-after-burn-in", lambda c: pt(c, burn_in=5, validation_data=(c.xv[:, :5], c.yv)), V, r"validation_data: the model cannot take inputs of shape \(5,\)"),
    Case("pt-train-shape", lambda c: pt(c, train_data=(c.x[:, :, None], c.y)), V, r"train_data: the model cannot take inputs"),
    Case("pt-labels-float", lambda c: pt(c, train_data=(c.x, c.y.astype(np.float32))), T, r"train_data labels must be integers"),
    Case("pt-labels-out-of-range", lambda c: pt(c, validation_data=(c.xv, c.yv + CLASSES)), V, r"validation_data labels must lie in \[0, 3\)"),
    Case("pt-labels-2d", lambda c: pt(c, train_data=(c.x, c.y[:, None])), V, r"train_data labels of shape \(\d+, 1\) have a trailing axis of 1: .*labels\[\.\.\., 0\]"),
    Case("pt-lengths-mismatch", lambda c: pt(c, train_data=(c.x, c.y[:-1])), V, r"train_data has 32 inputs but 31 targets"),
    Case("pt-train-data-string", lambda c: pt(c, train_data="mnist"), T, r"train_data must be"),
    Case("pt-validation-generator", lambda c: pt(c, validation_data=iter([(c.xv, c.yv)])), T, r"validation_data is a one-pass iterator"),
    Case("pt-no-validation", lambda c: pt(c, validation_data=None), T, r"pt_train needs validation_data"),
    Case("pt-c-0", lambda c: pt(c, c=0.0), V, r"c must be finite and > 0"),
    Case("pt-c-minus-1", lambda c: pt(c, c=-1.0), V, r"c must be finite and > 0"),
    Case("pt-c-array", lambda c: pt(c, c=np.array([1.0, 2.0])), T, r"c must be one number"),
    Case("pt-scheme-unknown", lambda c: pt(c, scheme="random"), V, r"scheme must be one of"),
    Case("pt-target-acceptance", lambda c: pt(c, c="auto", target_acceptance=1.0), V, r"target_acceptance must be a number in \(0, 1\)"),
    Case("pt-adapt-rounds-negative", lambda c: pt(c, c="auto", adapt_rounds=-3), V, r"adapt_rounds must be >= 1"),
    Case("pt-num-steps-0", lambda c: pt(c, num_steps=0), V, r"num_steps must be >= 1"),
    Case("pt-num-steps-negative", lambda c: pt(c, num_steps=-1), V, r"num_steps must be >= 1"),
    Case("pt-num-steps-float", lambda c: pt(c, num_steps=20.0), T, r"num_steps must be an int"),
    Case("pt-interval-0", lambda c: pt(c, exchange_interval=0), V, r"exchange_interval must be >= 1"),
    Case("pt-interval-float", lambda c: pt(c, exchange_interval=2.5), T, r"exchange_interval must be an int"),
    Case("pt-burn-in-negative", lambda c: pt(c, burn_in=-1), V, r"burn_in must be >= 0"),
    Case("pt-batch-size-0", lambda c: pt(c, batch_size=0), V, r"batch_size must be >= 1"),
    Case("pt-batch-size-negative", lambda c: pt(c, batch_size=-8), V, r"batch_size must be >= 1"),
    Case("pt-batch-size-too-big", lambda c: pt(c, batch_size=64), V, r"fewer than batch_size=64"),
    Case("pt-eval-batch-size-0", lambda c: pt(c, eval_batch_size=0), V, r"eval_batch_size must be >= 1"),
    Case("pt-burn-in-dropout-1", lambda c: pt(c, burn_in=5, burn_in_hyperparams={"dropout_rate": 1.0}), V, r"dropout_rate.*\[0, 1\)"),
    Case("pt-burn-in-lr-negative", lambda c: pt(c, burn_in=5, burn_in_hyperparams={"learning_rate": -0.1}), V, r"learning_rate.*\(0, "),
    Case("pt-burn-in-lr-huge", lambda c: pt(c, burn_in=5, burn_in_hyperparams={"learning_rate": 1e4}), V, r"learning_rate must be at most 10", fixed=True),
    Case("pt-burn-in-unknown", lambda c: pt(c, burn_in=5, burn_in_hyperparams={"lr": 0.1}), V, r"unknown hyperparameter.*'lr'"),
    Case("pt-key-int", lambda c: pt(c, key=0), T, r"key must be a JAX PRNG key"),
    Case("pt-key-float", lambda c: pt(c, key=0.5), T, r"key must be a JAX PRNG key"),
    Case("pt-state-not-state", lambda c: pt(c, state={"params": None}), T, r"takes a ReplicaState \(from tempering.create_replicas"),
    Case("pt-state-a-result", lambda c: pt(c, state=tp.RunResult(c.state, None, None, None, None)), T, r"a call's result; pass result.state \(and move_state=result.move_state", fixed=True),
    Case("pt-ladder-rungs-mismatch", lambda c: pt(c, ladder=tp.geometric_ladder("learning_rate", 0.01, 0.1, 3)), V, r"3 rungs but the state holds 4"),
    Case("pt-weight-decay-ladder-not-injected", lambda c: pt(c, ladder=tp.linear_ladder("weight_decay", 0.0, 0.1, REPLICAS, temperatures=[1.0, 2.0, 3.0, 4.0])), V, r"ladder: unknown hyperparameter.*weight_decay.*inject_hyperparams"),
    Case("pt-dropout-ladder-plain-model", lambda c: pt(c, state=c.plain, ladder=c.dropout), V, r"ladder: unknown hyperparameter.*dropout_rate.*model_inputs"),
    Case("pt-rungs-not-permutation", lambda c: pt(c, move_state=ExchangeState(jnp.array([0, 0, 1, 2], jnp.int32), None)), V, r"move_state.rungs must be a permutation"),
    Case("pt-num-steps-bool", lambda c: pt(c, num_steps=True), T, r"num_steps must be an int"),
    Case("pt-interval-bool", lambda c: pt(c, exchange_interval=True), T, r"exchange_interval must be an int"),
    Case("pt-labels-negative", lambda c: pt(c, train_data=(c.x, nan_at(c.y, (0,), -1))), V, r"train_data labels must lie in \[0, 3\)"),
    Case("pt-test-labels-out-of-range", lambda c: pt(c, test_data=(c.xv, c.yv * 5)), V, r"test_data labels must lie in \[0, 3\)"),
    Case("pt-test-shape", lambda c: pt(c, test_data=(c.xv[:, :3], c.yv)), V, r"test_data: the model cannot take inputs"),
    Case("pt-nan-validation-targets", lambda c: pt(c, validation_data=(c.xv, c.yv.astype(np.float32) * NAN)), V, r"validation_data targets hold 16 non-finite"),
    Case("pt-adapt-ladder-string", lambda c: pt(c, adapt_ladder="yes"), T, r"adapt_ladder must be True or False"),
    Case("pt-adapt-ladder-grid", lambda c: pt(c, exchanges=False, adapt_ladder=True), V, r"exchanges=False: the grid", fixed=True),
    Case("pt-ladder-dict", lambda c: pt(c, ladder={"learning_rate": [0.01, 0.1]}), T, r"ladder must be a tempering.Ladder"),
    Case("pt-loop-unknown", lambda c: pt(c, loop="gpu"), V, r"loop must be one of"),
    Case("pt-vectorize-unknown", lambda c: pt(c, vectorize="fast"), V, r"unknown vectorize policy 'fast'", fixed=True),
    Case("pt-shared-batch-string", lambda c: pt(c, shared_batch="no"), T, r"shared_batch must be True or False"),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


# Calls that would run, but to a result the caller did not ask for: a warning
# (an error under warnings-as-errors, raised before anything compiles).
WARNING_CASES = [
    Case("pt-exchange-interval-longer-than-run", lambda c: pt(c, exchange_interval=50), UserWarning, r"num_steps=20 ends before the first exchange.*exchange_interval=50"),
    Case("pt-burn-in-longer-than-run", lambda c: pt(c, burn_in=30), UserWarning, r"num_steps=20 ends before the first exchange \(burn_in=30"),
    Case("pt-burn-in-values-without-burn-in", lambda c: pt(c, burn_in_hyperparams={"dropout_rate": 0.0}), UserWarning, r"burn_in_hyperparams given with burn_in=0: no step trains at \['dropout_rate'\]"),
]  # fmt: skip


@pytest.mark.parametrize("case", bad_input_params(WARNING_CASES))
def test_suspicious_input_warns_before_anything_compiles(ctx, compiled, case):
    with warnings.catch_warnings():
        warnings.simplefilter("error", case.error)
        with pytest.raises(case.error, match=case.match):
            case.call(ctx)
    assert not set(compiled) & ENGINE_PROGRAMS


def test_a_summary_without_a_final_evaluation_reports_the_last_round(state, blobs):
    # A second Ctrl-C during the final evaluation leaves final None (test_driver):
    # the PT and PBT summaries then report the last round's validation.
    result = run(state, blobs)
    interrupted = driver.RunResult(
        result.state, result.history, None, None, np.zeros(4, bool), True,
        result.move_state,
    )  # fmt: skip
    summary = training.pt_summary(interrupted, tp.exchange_move(LADDER, c=0.1))
    np.testing.assert_array_equal(summary.final_val_loss, result.history.val_loss[-1])
    np.testing.assert_array_equal(summary.final_score, result.history.score[-1])
    assert summary.best_replica == int(np.argmin(result.history.score[-1]))
    assert summary.interrupted
    from tempering.pbt import pbt_summary

    (train, val), config = blobs, tp.pbt_config({"learning_rate": (0.01, 0.2)})
    pbt = tp.pbt_train(state, jax.random.key(3), config=config, train_data=train,
                       validation_data=val, num_steps=30, ready_interval=10)  # fmt: skip
    cut = pbt_summary(driver.RunResult(
        pbt.state, pbt.history, None, None, np.zeros(4, bool), True
    ))  # fmt: skip
    np.testing.assert_array_equal(cut.final_val_loss, pbt.history.val_loss[-1])


def test_values_that_differ_off_the_ladder_warn(state, blobs):
    """Replicas created with a learning-rate ladder trained on a dropout ladder
    kept their learning rates, never exchanged, without a word."""
    dropout = tp.make_ladder(dropout_rate=[0.0, 0.1, 0.2, 0.3])
    train, val = blobs
    settings = dict(train_data=train, validation_data=val, num_steps=20,
                    exchange_interval=10, c=0.1, batch_size=32)  # fmt: skip
    with pytest.warns(UserWarning, match=r"learning_rate differs between the replicas "
                      r"\(0.02 to 0.2\) but is not on the ladder \(dropout_rate\)"):  # fmt: skip
        tp.pt_train(state, dropout, jax.random.key(1), **settings)
    same_rate = tp.set_hyperparams(state, learning_rate=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tp.pt_train(same_rate, dropout, jax.random.key(1), **settings)


def test_evaluating_on_the_host_traces_the_model_once_per_call(tx, blobs):
    """The host loop's evaluation (a convolutional model's default on CPU, or
    a stream) traced the model again every round for the shape of its sums."""
    import flax.linen as nn

    traces = []

    class Counted(nn.Module):
        @nn.compact
        def __call__(self, x):
            traces.append(1)
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))

    (x, y), (xv, yv) = blobs
    state = tp.create_replicas(
        jax.random.key(0), Counted(), tx, x[:2], ladder=LADDER, train_kwarg=None
    )
    batches = [(xv[:32], yv[:32]), (xv[32:], yv[32:])]

    def traced_over(num_steps):
        del traces[:]
        tp.pt_train(state, LADDER, jax.random.key(1), train_data=(x, y),
                    validation_data=batches, num_steps=num_steps,
                    exchange_interval=5, batch_size=32, c=0.1, loop="host")  # fmt: skip
        return len(traces)

    traced_over(10)  # compiles
    assert traced_over(10) == traced_over(30)  # 2 rounds, 6 rounds


def test_a_pt_call_ending_at_its_first_exchange_names_pt_s_setting(state, blobs):
    """The warning told a pt_train user about PBT's exploit_at_end."""
    train, val = blobs
    with pytest.warns(UserWarning, match=r"only with RunConfig\(move_at_end=True\)"):
        tp.pt_train(state, LADDER, jax.random.key(1), train_data=train,
                    validation_data=val, c=0.1, run_config=tp.RunConfig(
                        num_steps=10, interval=10, move_at_end=False,
                        batch_size=32))  # fmt: skip
