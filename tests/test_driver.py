"""The one driver: any hyperparameter, any task, any data source, continuing runs.

Each of the bugs the "One engine" issue lists has a test here that failed
before the rewrite (marked ``# bug:``).
"""

import dataclasses
import functools
import inspect
import json
import os
import sys
import time
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    Case,
    T,
    TinyMLP,
    V,
    bad_input_params,
    check_raises_before_compiling,
    leaves_equal,
    run,
    train_step,
)
from flax import struct

import tempering as tp
from tempering import driver, loggers
from tempering.records import RoundRecord

LR_LADDER = tp.make_ladder(learning_rate=[0.02, 0.05, 0.1, 0.2])
SETTINGS = dict(num_steps=50, burn_in=5, batch_size=32)


def pt(state, blobs, ladder=LR_LADDER, **kwargs):
    train, val = blobs
    settings = dict(
        SETTINGS, train_data=train, validation_data=val, exchange_interval=10, c=0.1
    )
    settings.update(kwargs)
    return tp.pt_train(state, ladder, jax.random.key(1), **settings)


@pytest.fixture
def state(tx, blobs):
    (x, _), _ = blobs
    return tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LR_LADDER,
        hyperparams={"dropout_rate": 0.1},
    )  # fmt: skip


# --- runs that continue ---------------------------------------------------------


@pytest.mark.parametrize("exchanges", [True, False])
def test_two_calls_equal_one(state, blobs, exchanges):  # bug: calls did not compose
    one = pt(state, blobs, exchanges=exchanges, scheme="even_odd")
    first = pt(state, blobs, exchanges=exchanges, scheme="even_odd", num_steps=23)
    second = pt(
        first.state, blobs, exchanges=exchanges, scheme="even_odd", num_steps=27
    )
    assert int(second.state.step) == 50
    assert leaves_equal(one.state, second.state)
    np.testing.assert_array_equal(first.history.step, [15])
    np.testing.assert_array_equal(second.history.step, [25, 35, 45])
    np.testing.assert_array_equal(
        np.concatenate([first.history.rungs, second.history.rungs]), one.history.rungs
    )
    np.testing.assert_array_equal(
        np.concatenate([first.history.val_loss, second.history.val_loss]),
        one.history.val_loss,
    )


def test_continuing_inside_the_burn_in(state, blobs):
    one = pt(state, blobs, burn_in_hyperparams={"learning_rate": 0.3})
    first = pt(state, blobs, burn_in_hyperparams={"learning_rate": 0.3}, num_steps=3)
    np.testing.assert_array_equal(first.state.learning_rate, state.learning_rate)
    second = pt(first.state, blobs, burn_in_hyperparams={"learning_rate": 0.3},
                num_steps=47)  # fmt: skip
    assert leaves_equal(one.state, second.state)


def test_jit_around_the_driver_is_a_clear_error(state, blobs):  # bug: tracer error
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(lambda s: pt(s, blobs).state)(state)


def test_history_records_go_to_the_callback_and_can_stop(state, blobs):
    seen = []

    def callback(record):
        seen.append(record)
        chex.assert_shape(record.validation.loss, (4,))
        assert isinstance(record.validation.loss, np.ndarray)
        return record.round == 1

    result = pt(state, blobs, callback=callback)
    assert [r.round for r in seen] == [0, 1]
    assert [r.step for r in seen] == [15, 25]
    assert int(result.state.step) == 25
    np.testing.assert_array_equal(result.history.step, [15, 25])
    np.testing.assert_array_equal(result.history.rungs[-1], seen[-1].rungs)


def test_a_callbacks_error_carries_the_rounds_done(state, blobs):
    """Without checkpoint_dir a logger's error lost every round trained."""

    def full_disk(record):
        if record.round == 1:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full") as caught:
        pt(state, blobs, callback=full_disk)
    stopped = pt(state, blobs, callback=lambda record: record.round == 1)
    error = caught.value
    assert int(error.state.step) == 25 and error.history.step.tolist() == [15, 25]
    with pytest.raises(TypeError, match=r"callback must return None or a bool.*\(4,\)"):
        pt(state, blobs, callback=lambda record: record.score > 0)
    assert leaves_equal(error.state.params, stopped.state.params)
    assert leaves_equal(error.move_state, stopped.move_state)


def test_an_error_in_the_final_evaluation_carries_the_whole_call(state, blobs):
    """Before, validation data failing at the call's final evaluation (after
    every round) raised without the state: all the call trained was lost."""
    train, (xv, yv) = blobs
    failing = {"now": False}

    def validation():
        if failing["now"]:
            raise OSError("validation files went away")
        return iter([(xv, yv)])

    def callback(record):
        failing["now"] = int(record.step) == 45  # the last round: then the end

    with pytest.raises(OSError, match="went away") as caught:
        pt(state, blobs, validation_data=validation, callback=callback)
    error = caught.value
    failing["now"] = False
    done = pt(state, blobs, validation_data=validation)
    assert int(error.state.step) == SETTINGS["num_steps"]
    assert leaves_equal(error.state.params, done.state.params)
    assert error.history.step.tolist() == done.history.step.tolist()
    assert "before the final evaluation" in " ".join(error.__notes__)


def test_loggers_write_every_round(state, blobs, tmp_path):
    path = tmp_path / "log.jsonl"
    with loggers.JsonlLogger(path) as log:
        pt(state, blobs, callback=loggers.stop_when(lambda r: False, then=log))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [15, 25, 35, 45]
    assert len(lines[0]["validation"]["accuracy"]) == 4
    assert lines[0]["diverged"] == [False] * 4  # before, the log had neither
    assert lines[0]["restored_from"] == [-1] * 4
    pytest.importorskip("tensorboardX")
    with loggers.TensorBoardLogger(tmp_path / "tb") as log:
        pt(state, blobs, callback=log)
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000


class _Stop(BaseException):
    """A stop the driver does not catch: the process ends without saving."""


def test_a_resumed_run_logs_each_round_once(state, blobs, tmp_path):
    """A resumed run repeats the rounds after its last checkpoint: JsonlLogger
    appended them again (rounds 0, 1, 2, 2, 3) and TensorBoard drew them twice."""
    path, folder = tmp_path / "log.jsonl", tmp_path / "run"

    def stop_after_round_2(record):
        log(record)
        if record.round == 2:
            raise _Stop

    log = loggers.JsonlLogger(path)
    with pytest.raises(_Stop):
        pt(state, blobs, checkpoint_dir=folder, checkpoint_every=2,
           callback=stop_after_round_2)  # fmt: skip
    log.close()
    with path.open("a") as file:
        file.write('{"round": 3, "st')  # a line the stop cut short
    stopped = path.read_text().splitlines()
    with (
        loggers.JsonlLogger(path) as log,
        pytest.warns(
            UserWarning,
            match=r"held 2 line\(s\) of round 2 or later.*log.jsonl.superseded",
        ),
    ):
        pt(state, blobs, checkpoint_dir=folder, callback=log)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2, 3]
    assert lines[:2] == [json.loads(line) for line in stopped[:2]]
    superseded = (tmp_path / "log.jsonl.superseded").read_text().splitlines()
    assert superseded == stopped[2:]  # moved, not deleted
    assert json.loads(superseded[0]) == lines[2]  # the resumed round, bit for bit
    with loggers.JsonlLogger(path) as log:  # a continued call appends, no warning
        log(RoundRecord(*[None] * len(RoundRecord._fields))._replace(
            round=4, step=55, train_loss=np.zeros(4), score=np.zeros(4),
            hyperparams={}, diverged=np.zeros(4, bool), restored_from=np.zeros(4),
        ))  # fmt: skip
    assert [json.loads(x)["round"] for x in path.read_text().splitlines()][-1] == 4


def test_one_logger_appends_every_call_and_leaves_a_pipe_alone(state, blobs, tmp_path):
    """Runs in a loop into one logger had the earlier run's lines moved out
    as a resume's; a path that is not a regular file (/dev/stdout piped) was
    opened for reading and hung."""
    path = tmp_path / "runs.jsonl"
    with loggers.JsonlLogger(path) as log:
        for _ in range(2):
            pt(state, blobs, num_steps=25, callback=log)
    rounds = [json.loads(line)["round"] for line in path.read_text().splitlines()]
    assert rounds == [0, 1, 0, 1] and not (tmp_path / "runs.jsonl.superseded").exists()
    with loggers.JsonlLogger(os.devnull) as log:  # not a regular file: appended to
        pt(state, blobs, num_steps=25, callback=log)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        b'{"round": 0, "note": "caf\xe9"}\n'
    )  # not UTF-8: it stopped runs
    with (
        loggers.JsonlLogger(latin) as log,
        pytest.warns(UserWarning, match="could not set aside"),
    ):
        pt(state, blobs, num_steps=25, callback=log)


def test_tensorboard_hides_the_events_a_resumed_run_repeats(tmp_path):
    """The writer is created with purge_step at the first record's step."""
    pytest.importorskip("tensorboardX")
    record = RoundRecord(*[None] * len(RoundRecord._fields))._replace(
        round=2, step=35, train_loss=np.zeros(2), score=np.zeros(2),
        hyperparams={}, diverged=np.zeros(2, bool), restored_from=np.zeros(2),
    )  # fmt: skip
    with loggers.TensorBoardLogger(tmp_path / "tb") as log:
        log(record)
        assert log._writer.purge_step == 35
    with loggers.TensorBoardLogger(tmp_path / "tb2", purge_step=5) as log:
        log(record)
        assert log._writer.purge_step == 5  # the user's own wins


def _event_count(folder) -> int:
    """Complete TFRecord records (events) in a folder's event files."""
    count = 0
    for path in folder.glob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            length = int.from_bytes(data[at : at + 8], "little")
            if at + 12 + length + 4 > len(data):
                break
            at, count = at + 16 + length, count + 1
    return count


def test_tensorboard_events_reach_the_file_while_the_run_goes_on(tmp_path):
    """tensorboardX's writer thread flushed every 120 s: a run killed then
    lost its last round's events, whatever the logger's flush() said."""
    pytest.importorskip("tensorboardX")
    make = functools.partial(
        RoundRecord(*[None] * len(RoundRecord._fields))._replace,
        train_loss=np.zeros(2), score=np.zeros(2), hyperparams={},
        diverged=np.zeros(2, bool), restored_from=np.zeros(2),
    )  # fmt: skip
    with loggers.TensorBoardLogger(tmp_path / "all") as log:
        log(make(round=0, step=10))
        log(make(round=1, step=20))
    everything = _event_count(tmp_path / "all")  # written at close
    log = loggers.TensorBoardLogger(tmp_path / "tb")
    log(make(round=0, step=10))
    log(make(round=1, step=20))
    deadline = time.monotonic() + 5 * loggers.FLUSH_SECONDS + 5
    while _event_count(tmp_path / "tb") < everything and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _event_count(tmp_path / "tb") == everything  # before close
    log.close()


def test_two_tensorboard_loggers_on_one_logdir_keep_both_files(tmp_path):
    """The default event file name (seconds, host) was the same for a second
    logger within the same second, whose writer truncated the first's events."""
    pytest.importorskip("tensorboardX")
    record = RoundRecord(*[None] * len(RoundRecord._fields))._replace(
        round=0, step=10, train_loss=np.zeros(2), score=np.zeros(2),
        hyperparams={}, diverged=np.zeros(2, bool), restored_from=np.zeros(2),
    )  # fmt: skip
    for step in (10, 20):  # a call, then a continuing call's fresh logger
        with loggers.TensorBoardLogger(tmp_path) as log:
            log(record._replace(step=step))
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and all(f.stat().st_size > 0 for f in files)
    with loggers.TensorBoardLogger(tmp_path / "own", filename_suffix=".mine") as log:
        log(record)
    assert [f.name.endswith(".mine") for f in (tmp_path / "own").iterdir()] == [True]


def test_loggers_and_outputs_refuse_bad_arguments_when_made(tmp_path, monkeypatch):
    """Accepted when made, they failed at the first record (after compiling and
    training a round), or took a PTResult for its history with an AttributeError."""
    from tempering import diagnostics, plots

    with pytest.raises(ValueError, match="JsonlLogger's path .* is a folder"):
        loggers.JsonlLogger(tmp_path)
    with pytest.raises(ValueError, match="in a folder that does not exist .*makedirs"):
        loggers.JsonlLogger(tmp_path / "runs" / "log.jsonl")
    for make in (loggers.JsonlLogger, loggers.TensorBoardLogger):
        with pytest.raises(TypeError, match="must be a path"):
            make(None)
    with pytest.raises(TypeError, match="condition must be a function"):
        loggers.stop_when("loss < 0.1")
    with pytest.raises(TypeError, match="then must be a callback"):
        loggers.stop_when(lambda r: False, then="print")
    result = types.SimpleNamespace(history=None)  # a result, not its history
    for check in (diagnostics.acceptance_rate, diagnostics.barrier,
                  plots.plot_val_loss, tp.best_schedule):  # fmt: skip
        args = (result, 0) if check is tp.best_schedule else (result,)
        with pytest.raises(TypeError, match=r"takes a tempering.History \(a result's"):
            check(*args)
    monkeypatch.setitem(sys.modules, "tqdm.std", None)  # tqdm not installed
    with pytest.warns(UserWarning, match="progress=True needs tqdm"):
        assert driver._progress(10, True, "x") is None


def test_the_progress_bar_names_the_grid():
    """It said ExchangeMove for a grid run (exchanges=False) too."""
    assert driver._move_name(tp.exchange_move(LR_LADDER, enabled=False)) == "grid"
    assert driver._move_name(tp.exchange_move(LR_LADDER)) == "ExchangeMove"
    assert driver._move_name(tp.identity_move()) == "IdentityMove"


def test_a_failing_save_warns_and_keeps_what_trained(
    state, blobs, tmp_path, monkeypatch
):
    """A full disk at a checkpoint raised a bare OSError: the rounds since the
    last checkpoint, or at the last save the whole finished call, were lost."""
    from tempering.checkpoint import Checkpointer

    save = Checkpointer.save

    def full_disk_at(*steps):
        def failing(self, tree, extra, step):
            if step in steps:
                raise OSError(28, "No space left on device")
            return save(self, tree, extra, step)

        return failing

    plain = pt(state, blobs)
    monkeypatch.setattr(Checkpointer, "save", full_disk_at(25, 50))
    with pytest.warns(RuntimeWarning, match="was not saved.*No space") as caught:
        result = pt(state, blobs, checkpoint_dir=tmp_path / "run")
    messages = [str(w.message) for w in caught if "not saved" in str(w.message)]
    assert len(messages) == 2 and "step 25" in messages[0] and "step 50" in messages[1]
    assert "the next round tries again" in messages[0]
    assert "call again with the same checkpoint_dir" in messages[1]
    assert leaves_equal(result.state.params, plain.state.params)
    np.testing.assert_array_equal(result.history.rungs, plain.history.rungs)
    saved = sorted(
        int(p.name) for p in (tmp_path / "run").iterdir() if p.name.isdigit()
    )
    assert saved == [35, 45]  # the next rounds saved again (keep 2); the last failed
    monkeypatch.setattr(Checkpointer, "save", save)
    again = pt(state, blobs, checkpoint_dir=tmp_path / "run")  # resumes from 45
    assert leaves_equal(again.state.params, plain.state.params)


# --- any hyperparameter ---------------------------------------------------------


def test_weight_decay_ladder_through_a_chain(blobs):  # bug: chain was refused
    (x, _), _ = blobs
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adamw)(learning_rate=0.01, weight_decay=0.0),
    )
    ladder = tp.make_ladder(weight_decay=[0.0, 0.01, 0.1], temperatures=[1.0, 2.0, 3.0])
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=ladder)
    assert {"learning_rate", "weight_decay", "b1", "b2", "dropout_rate"} <= set(
        state.hyperparams
    )
    np.testing.assert_allclose(state.hyperparams["weight_decay"], [0.0, 0.01, 0.1])
    injected = state.opt_state[1].hyperparams["weight_decay"]
    np.testing.assert_allclose(injected, [0.0, 0.01, 0.1])
    result = pt(
        state, blobs, ladder=ladder, c=50.0, exchange_interval=5, scheme="random_pair"
    )
    history = result.history
    for r in range(len(history.step)):  # hyperparameters follow the rungs
        expected = np.asarray(ladder.values["weight_decay"])[history.rungs[r]]
        np.testing.assert_allclose(history.hyperparams["weight_decay"][r], expected)
    assert history.accepted.any()


def test_the_step_uses_the_laddered_value(blobs):
    """Replicas at a 10x larger b1 end elsewhere than at the same b1."""
    (x, y), _ = blobs
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.05)
    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], num_replicas=2, same_init=True
    )
    same, _ = train_step(state, jax.random.key(1), x[:32], y[:32])
    state = tp.set_hyperparams(state, b1=jnp.array([0.9, 0.09]))
    new, _ = train_step(state, jax.random.key(1), x[:32], y[:32])
    second = jax.tree.map(lambda a: a[1], (same.params, new.params))
    assert leaves_equal(*jax.tree.map(lambda a: a[0], (same.params, new.params)))
    assert not leaves_equal(second[0], second[1])
    new, _ = train_step(new, jax.random.key(2), x[:32], y[:32])
    np.testing.assert_allclose(new.opt_state.hyperparams["b1"], [0.9, 0.09])


class NoisyNet(nn.Module):
    """A model with its own per-replica input: additive input noise."""

    @nn.compact
    def __call__(self, x, *, train=False, noise_scale=0.0):
        if train:
            x = x + noise_scale * jax.random.normal(self.make_rng("dropout"), x.shape)
        return nn.Dense(3)(nn.tanh(nn.Dense(8)(x)))


def test_any_model_input_is_a_hyperparameter(blobs):
    (x, _), _ = blobs
    ladder = tp.make_ladder(noise_scale=[0.0, 0.5, 1.0], temperatures=[1.0, 1.5, 2.0])
    state = tp.create_replicas(
        jax.random.key(0), NoisyNet(), tp.sgd(0.05), x[:4], ladder=ladder,
        model_inputs=("noise_scale",),
    )  # fmt: skip
    assert state.model_inputs == ("noise_scale",)
    result = pt(state, blobs, ladder=ladder, c=10.0)
    assert np.isfinite(result.summary.final_val_loss).all()
    assert set(result.history.hyperparams) == {"learning_rate", "noise_scale"}


def test_ladder_over_a_name_nobody_takes(state):
    ladder = tp.make_ladder(momentum=[0.5, 0.6, 0.7, 0.8], temperatures=[1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"unknown hyperparameter.*'momentum'"):
        pt(state, ((None, None), None), ladder=ladder)


def test_optax_schedule_for_a_laddered_name_is_an_error(blobs):  # bug: silent
    (x, _), _ = blobs
    schedule = optax.cosine_decay_schedule(0.05, 100)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    with pytest.raises(ValueError, match="optax schedule"):
        tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LR_LADDER)
    # A dropout ladder beside a scheduled lr is fine: the schedule runs.
    ladder = tp.linear_ladder("dropout_rate", 0.0, 0.3, 4)
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=ladder)
    assert "learning_rate" not in state.hyperparams
    result = pt(state, blobs, ladder=ladder)
    assert np.isfinite(result.summary.final_val_loss).all()


# --- any task -------------------------------------------------------------------


class Regressor(nn.Module):
    outputs: int = 2

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.tanh(nn.Dense(16)(x))
        x = tp.Dropout()(x, dropout_rate, deterministic=not train)
        return nn.Dense(self.outputs)(x)


def mse(outputs, targets):
    return jnp.mean((outputs - targets) ** 2, axis=-1)


def abs_error(outputs, targets):
    return {"mae": jnp.mean(jnp.abs(outputs - targets), axis=-1)}


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 2))
    x = rng.normal(size=(320, 5)).astype(np.float32)
    y = (np.tanh(x @ w) + 0.05 * rng.normal(size=(320, 2))).astype(np.float32)
    return (x[:256], y[:256]), (x[256:], y[256:])


@pytest.mark.parametrize("driver", ["pt", "grid", "pbt"])
def test_regression_with_float_multi_output_targets(regression, driver):
    train, val = regression
    ladder = tp.linear_ladder("dropout_rate", 0.0, 0.3, 4, learning_rate=0.05)
    state = tp.create_replicas(
        jax.random.key(0), Regressor(), tp.sgd(0.05), train[0][:4], ladder=ladder,
        loss_fn=mse,
    )  # fmt: skip
    common = dict(SETTINGS, train_data=train, validation_data=val,
                  metrics_fn=abs_error, score_fn=lambda m: m.metrics["mae"])  # fmt: skip
    if driver == "pbt":
        config = tp.pbt_config({"learning_rate": tp.Prior(0.01, 0.1, log=True)})
        result = tp.pbt_train(state, jax.random.key(1), config=config,
                              ready_interval=10, **common)  # fmt: skip
    else:
        result = tp.pt_train(state, ladder, jax.random.key(1), exchange_interval=10,
                             c=10.0, exchanges=driver == "pt", **common)  # fmt: skip
    summary = result.summary
    assert set(summary.final_val_metrics) == {"mae"}
    chex.assert_shape(result.history.val_metrics["mae"], (4, 4))
    first = result.history.val_loss[0]
    assert (summary.final_val_loss < first).all()  # it learns
    if driver != "pbt":
        np.testing.assert_array_equal(
            result.history.score, result.history.val_metrics["mae"]
        )
        assert summary.best_replica == np.argmin(summary.final_score)
    with pytest.raises(AttributeError, match="accuracy"):
        _ = summary.final_val_accuracy


def test_float_targets_with_the_classification_loss_say_how(blobs, state):
    (x, y), val = blobs
    with pytest.raises(TypeError, match="loss_fn="):
        pt(state, ((x, y.astype(np.float32)), val))


# --- any data source ------------------------------------------------------------


def batches(x, y, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(y))
        for i in range(0, len(y) - batch_size + 1, batch_size):
            yield x[order[i : i + batch_size]], y[order[i : i + batch_size]]


@pytest.mark.parametrize("loop", ["device", "host"])
def test_generator_as_train_data(state, blobs, loop):
    (x, y), (xv, yv) = blobs
    validation = [(xv[:32], yv[:32]), (xv[32:], yv[32:])]  # a re-iterable
    result = pt(state, blobs, train_data=batches(x, y, 32), validation_data=validation,
                loop=loop)  # fmt: skip
    assert int(result.state.step) == 50
    reference = tp.evaluate(result.state, xv, yv)
    np.testing.assert_allclose(result.summary.final_val_loss, reference.loss, rtol=1e-5)
    # The same batches as arrays give the same run, whatever the loop.
    again = pt(state, blobs, train_data=batches(x, y, 32), validation_data=validation,
               loop="device" if loop == "host" else "host")  # fmt: skip
    np.testing.assert_allclose(
        again.history.val_loss, result.history.val_loss, rtol=1e-5
    )


def test_dict_batches_and_their_errors(state, blobs):
    (x, y), (xv, yv) = blobs
    dicts = ({"image": bx, "label": by} for bx, by in batches(x, y, 32))
    result = pt(state, blobs, train_data=dicts, num_steps=20)
    assert int(result.state.step) == 20
    with pytest.raises(ValueError, match="ran out after 8 batches"):
        pt(state, blobs, train_data=iter([(x[:32], y[:32])] * 8), num_steps=20)
    with pytest.raises(TypeError, match="one-pass iterator"):
        pt(state, blobs, validation_data=((xv, yv) for _ in range(3)))
    with pytest.raises(ValueError, match="key pairs"):
        pt(state, blobs, train_data=iter([{"a": x[:32]}] * 30))


def test_grain_loader_as_train_data(state, blobs):
    grain = pytest.importorskip("grain")
    (x, y), _ = blobs
    source = [{"image": x[i], "label": y[i]} for i in range(len(y))]
    loader = (
        grain.MapDataset.source(source).shuffle(seed=0).repeat().batch(32)
        if hasattr(grain, "MapDataset")
        else None
    )
    if loader is None:
        pytest.skip("this grain has no MapDataset")
    result = pt(state, blobs, train_data=iter(loader), num_steps=20)
    assert int(result.state.step) == 20


# --- float64 --------------------------------------------------------------------


def test_float64_inputs_under_x64(blobs, tx):  # bug: loop carry dtype mismatch
    (x, y), (xv, yv) = blobs
    # jax.enable_x64 in new JAX, jax.experimental.enable_x64 in old (0.4.30)
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:
        from jax.experimental import enable_x64
    # the same run without x64 first: nothing cached from it (an index's dtype,
    # 32 bits here) may leak into the x64 run
    plain = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LR_LADDER
    )
    for loop in ("device", "host"):
        pt(plain, ((x, y), (xv, yv)), loop=loop, num_steps=20)
    with enable_x64(True):
        state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx,
                                   x[:4].astype(np.float64), ladder=LR_LADDER)  # fmt: skip
        data = ((x.astype(np.float64), y), (xv.astype(np.float64), yv))
        for loop in ("device", "host"):
            result = pt(state, data, loop=loop, num_steps=20)
            assert np.isfinite(result.summary.final_val_loss).all()
        metrics = tp.evaluate(result.state, xv.astype(np.float64), yv)
        assert metrics.loss.dtype == jnp.float32


# --- the user's own move --------------------------------------------------------


def test_a_users_move_runs_in_the_one_driver(state, blobs):
    train, val = blobs

    def halve_the_worst(key, state, scores, round_index):
        worst = jnp.argmax(scores)
        lr = state.hyperparams["learning_rate"]
        lr = lr.at[worst].multiply(0.5)
        return tp.set_hyperparams(state, learning_rate=lr), {"worst": worst}

    data, config = tp.RunData(train, val), tp.RunConfig(interval=10, **SETTINGS)
    result = tp.train(state, jax.random.key(1), halve_the_worst, data, config)
    worst = result.history.move["worst"]
    chex.assert_shape(worst, (4,))
    lr = result.history.hyperparams["learning_rate"]
    for r in range(1, 4):
        assert lr[r, worst[r]] == pytest.approx(lr[r - 1, worst[r]] * 0.5)
    grid = tp.train(state, jax.random.key(1), tp.identity_move(), data, config)
    reference = pt(state, blobs, exchanges=False)
    assert leaves_equal(grid.state.params, reference.state.params)


@struct.dataclass
class HalveTheWorst:
    """docs/guides/engine.md's move: halve the lr after ``strikes`` worst rounds."""

    strikes: int = struct.field(pytree_node=False, default=2)

    def init(self, state):
        return jnp.zeros((state.num_replicas,), jnp.int32)  # strikes so far

    def step(self, key, state, move_state, scores, round_index):
        worst = jnp.arange(state.num_replicas) == jnp.argmax(scores)
        count = move_state + worst
        halve = count >= self.strikes
        lr = jnp.where(halve, 0.5, 1.0) * state.hyperparams["learning_rate"]
        state = tp.set_hyperparams(state, learning_rate=lr)
        return state, jnp.where(halve, 0, count), {"halved": halve, "worst": worst}


class PlainHalveTheWorst:
    """The same move as a plain object (not a pytree): held static by the driver."""

    def __init__(self):
        self.move = HalveTheWorst()

    def init(self, state):
        return self.move.init(state)

    def step(self, *args):
        return self.move.step(*args)


@pytest.mark.parametrize("make", [HalveTheWorst, PlainHalveTheWorst])
def test_a_users_move_with_state_continues_across_calls(state, blobs, make):
    train, val = blobs
    data = tp.RunData(train, val)
    config = tp.RunConfig(num_steps=45, interval=5, burn_in=5, batch_size=32)
    key = jax.random.key(2)
    whole = tp.train(state, key, make(), data, config)
    worst = whole.history.move["worst"].astype(int)  # (8, M)
    halved = whole.history.move["halved"]
    # The strikes the state carried: a replica is halved on its second worst
    # round since it was last halved, and its lr then is half the round before.
    count = np.zeros(state.num_replicas, int)
    lr = whole.history.hyperparams["learning_rate"]
    for r in range(len(worst)):
        count += worst[r]
        np.testing.assert_array_equal(halved[r], count >= 2)
        before = lr[r - 1] if r else whole.history.initial_hyperparams["learning_rate"]
        np.testing.assert_allclose(lr[r], np.where(halved[r], 0.5, 1.0) * before)
        count[halved[r]] = 0
    assert halved.any()
    np.testing.assert_array_equal(whole.move_state, count)
    # Two calls, the move state passed on: the same run, bit for bit.
    first = tp.train(state, key, make(), data, config.replace(num_steps=25))
    second = tp.train(
        first.state, key, make(), data, config.replace(num_steps=20),
        move_state=first.move_state,
    )  # fmt: skip
    np.testing.assert_array_equal(second.history.move["halved"], halved[4:])
    assert leaves_equal(second.state.params, whole.state.params)
    # A move state that is not this move's: refused before anything compiles.
    with pytest.raises(ValueError, match="move_state does not fit this move"):
        tp.train(state, key, make(), data, config, move_state=jnp.zeros(3))


def test_an_old_style_pytree_move_gets_a_migration_message(state, blobs):
    @struct.dataclass
    class OldMove:
        def __call__(self, key, state, scores, round_index):
            return state, {}

    with pytest.raises(TypeError, match=r"becomes step\(key, state, move_state"):
        tp.train(state, jax.random.key(0), OldMove(), tp.RunData(blobs[0]),
                 tp.RunConfig(num_steps=10, interval=5))  # fmt: skip


# --- errors that name the argument and the fix ----------------------------------


class FlaxDropoutNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.Dense(8)(x)
        return nn.Dropout(dropout_rate, deterministic=not train)(x)


class NoTrainFlag(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x)


def test_model_contract_errors_point_to_the_fix(blobs):
    (x, _), _ = blobs
    key, tx = jax.random.key(0), tp.sgd(0.1)
    with pytest.raises(TypeError, match="tempering.Dropout"):
        tp.create_replicas(key, FlaxDropoutNet(), tx, x[:4], num_replicas=2)
    with pytest.raises(ValueError, match="train_kwarg=None"):
        tp.create_replicas(key, NoTrainFlag(), tx, x[:4], num_replicas=2)
    state = tp.create_replicas(key, NoTrainFlag(), tx, x[:4], num_replicas=2,
                               train_kwarg=None)  # fmt: skip
    assert state.model_inputs == ()
    with pytest.raises(ValueError, match="model_inputs=()"):
        tp.create_replicas(key, TinyMLP(), tx, x[:4], num_replicas=2,
                           model_inputs=("rate",))  # fmt: skip


def test_bad_data_fails_before_compiling(state, blobs):
    (x, y), (xv, yv) = blobs
    with pytest.raises(ValueError, match=r"validation_data: the model cannot take"):
        pt(state, ((x, y), (xv[:, :3], yv)))
    with pytest.raises(TypeError, match="PRNG key"):
        tp.pt_train(state, LR_LADDER, 0, train_data=(x, y), validation_data=(xv, yv),
                    num_steps=10, exchange_interval=5)  # fmt: skip
    with pytest.raises(TypeError, match="exchanges must be True or False"):
        pt(state, blobs, exchanges="False")
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        tp.set_hyperparams(state, learning_rate=[0.1, 0.2])


def test_replica_helper_returns_plain_flax_variables(state, blobs):
    (x, _), _ = blobs
    variables = tp.replica(state, 2)
    single = state.model.module.apply(variables, x[:8], train=False, dropout_rate=0.0)
    stacked = tp.evaluate(state, x[:8], np.zeros(8, np.int32))
    expected = tp.state.cross_entropy(single, jnp.zeros(8, jnp.int32)).mean()
    np.testing.assert_allclose(stacked.loss[2], expected, rtol=1e-5)


# --- review fixes ---------------------------------------------------------------


def test_more_bad_input_is_caught_before_training(state, blobs):
    (x, y), (xv, yv) = blobs
    with pytest.raises(TypeError, match="needs validation_data"):
        pt(state, blobs, validation_data=None)
    with pytest.raises(ValueError, match=r"score_fn must return one score per replica"):
        pt(state, blobs, score_fn=lambda m: m.loss.mean())
    with pytest.raises(ValueError, match="dropout_rate in hyperparams"):
        tp.create_replicas(jax.random.key(0), TinyMLP(), tp.sgd(0.1), x[:4],
                           num_replicas=2, hyperparams={"dropout_rate": 1.5})  # fmt: skip
    with pytest.raises(ValueError, match="get_hyperparams: unknown"):
        tp.get_hyperparams(state, "lr")
    assert set(tp.get_hyperparams(state, "learning_rate")) == {"learning_rate"}
    with pytest.raises(TypeError, match="ReplicaState"):
        tp.train({"params": 1}, jax.random.key(0), tp.identity_move(),
                 tp.RunData((x, y)), tp.RunConfig(num_steps=5, interval=5))  # fmt: skip
    with pytest.raises(TypeError, match="interval must be an int"):
        tp.RunConfig(num_steps=5, interval=[1.5, 5])
    with pytest.raises(TypeError, match=r"data must be a tempering.RunData"):
        tp.train(state, jax.random.key(0), tp.identity_move(), (x, y),
                 tp.RunConfig(num_steps=5, interval=5))  # fmt: skip
    with pytest.raises(TypeError, match=r"config must be a tempering.RunConfig"):
        tp.train(state, jax.random.key(0), tp.identity_move(), tp.RunData((x, y)),
                 {"num_steps": 5, "interval": 5})  # fmt: skip


def test_a_stream_without_validation_data(state, blobs):
    (x, y), _ = blobs
    config = tp.RunConfig(num_steps=20, interval=10)
    result = tp.train(state, jax.random.key(0), tp.identity_move(),
                      tp.RunData(batches(x, y, 32)), config)  # fmt: skip
    assert int(result.state.step) == 20 and result.final is None
    with pytest.raises(ValueError, match="train_data: the model cannot take"):
        tp.train(state, jax.random.key(0), tp.identity_move(),
                 tp.RunData(batches(x[:, :2], y, 32)), config)  # fmt: skip


def test_best_schedule_refuses_a_continued_history(state, blobs):
    train, val = blobs
    config = tp.pbt_config({"learning_rate": tp.Prior(0.01, 0.2, log=True)})
    kwargs = dict(config=config, train_data=train, validation_data=val,
                  ready_interval=10, batch_size=32)  # fmt: skip
    first = tp.pbt_train(state, jax.random.key(2), num_steps=20, **kwargs)
    tp.best_schedule(first.history, 0)
    second = tp.pbt_train(first.state, jax.random.key(2), num_steps=20, **kwargs)
    assert second.history.first_step == 20
    with pytest.raises(ValueError, match="starts at step 20"):
        tp.best_schedule(second.history, 0)


def test_diffusion_needs_step_zero_and_reports_the_steps_it_ran(state, blobs):
    from tempering import diffusion

    train, _ = blobs
    common = dict(train_data=train, hyperparameter="learning_rate",
                  values=[0.01, 0.02, 0.03, 0.04], num_steps=8, num_records=4,
                  batch_size=32)  # fmt: skip
    result = diffusion.diffusion_test(state, jax.random.key(0), **common)
    np.testing.assert_array_equal(result.steps, diffusion.record_schedule(8, 4))
    stopped = diffusion.diffusion_test(
        state, jax.random.key(0), callback=lambda r: True, **common
    )
    assert stopped.steps.shape == (1,) and stopped.distance.shape == (1, 4)
    moved = tp.train(state, jax.random.key(0), tp.identity_move(), tp.RunData(train),
                     tp.RunConfig(num_steps=3, interval=3, batch_size=32)).state  # fmt: skip
    with pytest.raises(ValueError, match="at step 0"):
        diffusion.diffusion_test(moved, jax.random.key(0), **common)


@pytest.mark.parametrize("split", ["train_data", "validation_data", "test_data"])
def test_non_finite_data_is_refused_up_front(state, blobs, split):
    """One NaN in the inputs would make every replica NaN (or no swap accepted)."""
    train, val = blobs
    x, y = train if split == "train_data" else val
    x = np.array(x, copy=True)
    x[3, 1] = np.nan if split != "test_data" else np.inf
    with pytest.raises(ValueError, match=f"{split} inputs hold 1 non-finite"):
        pt(state, blobs, **{split: (x, y)})


def test_a_run_without_any_exchange_warns(state, blobs):
    with pytest.warns(UserWarning, match="ends before the first exchange"):
        result = pt(state, blobs, num_steps=25, burn_in=20, exchange_interval=10)
    assert len(result.history.step) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"c": 0.0}, "c must be finite and > 0"),
        ({"c": -1.0}, "c must be finite and > 0"),
        ({"c": float("nan")}, "c must be finite and > 0"),
        ({"c": float("inf")}, "c must be finite and > 0"),
        ({"betas": jnp.array([1.0, 2.0, 3.0, 4.0])}, "strictly decreasing"),
        ({"betas": jnp.array([4.0, 3.0])}, "betas must have one entry per replica"),
        ({"losses": jnp.zeros(3)}, "losses must have one entry per replica"),
        ({"losses": jnp.zeros(5)}, "losses must have one entry per replica"),
        ({"rungs": jnp.array([0, 0, 1, 2])}, "permutation"),
    ],
)
def test_exchange_refuses_bad_concrete_arguments(kwargs, match):
    args = dict(
        rungs=jnp.arange(4), losses=jnp.zeros(4), betas=jnp.array([4.0, 3.0, 2.0, 1.0])
    )
    c = kwargs.pop("c", 1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tp.exchange(jax.random.key(0), **args, c=c)


# --- one run configuration --------------------------------------------------------


def test_run_config_is_validated_when_built_and_replaced_one_field():
    config = tp.RunConfig(num_steps=20, interval=5, batch_size=32)
    assert config.replace(batch_size=64).batch_size == 64
    assert config.batch_size == 32  # frozen: replace makes a copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 64  # type: ignore[misc]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        config.replace(batch_size=0)
    with pytest.raises(ValueError, match="on_diverge must be one of"):
        config.replace(on_diverge="ignore")
    with pytest.raises(ValueError, match="vectorize"):
        config.replace(vectorize="pmap")
    assert tp.RunConfig(num_steps=9, interval=[1, 4, 9]).rounds.ends == (1, 4, 9)


def test_pt_train_takes_a_run_config_or_keywords_not_both(state, blobs):
    train, val = blobs
    keywords = dict(num_steps=30, exchange_interval=10, burn_in=5, batch_size=32)
    by_keywords = pt(state, blobs, **keywords)
    config = tp.RunConfig(num_steps=30, interval=10, burn_in=5, batch_size=32)
    by_config = tp.pt_train(
        state, LR_LADDER, jax.random.key(1), train_data=train, validation_data=val,
        c=0.1, run_config=config,
    )  # fmt: skip
    assert leaves_equal(by_config.state.params, by_keywords.state.params)
    np.testing.assert_array_equal(by_config.history.rungs, by_keywords.history.rungs)
    with pytest.raises(ValueError, match=r"not both \(also given: batch_size\)"):
        tp.pt_train(state, LR_LADDER, jax.random.key(1), train_data=train,
                    validation_data=val, run_config=config, batch_size=64)  # fmt: skip
    with pytest.raises(TypeError, match="pt_train needs exchange_interval="):
        tp.pt_train(state, LR_LADDER, jax.random.key(1), train_data=train,
                    validation_data=val, num_steps=30)  # fmt: skip
    with pytest.raises(TypeError, match="exchange_interval must be an int"):
        pt(state, blobs, exchange_interval=2.5)
    ends = config.replace(burn_in=0, interval=(10, 20, 30))  # it named the keyword
    with pytest.raises(TypeError, match=r"run_config.interval must be an int .*"
                       r"got round ends \(10, 20, 30\)"):  # fmt: skip
        tp.pt_train(state, LR_LADDER, jax.random.key(1), train_data=train,
                    validation_data=val, run_config=ends)  # fmt: skip


def test_signatures_show_every_setting():
    for wrapper, interval in ((tp.pt_train, "exchange_interval"),
                              (tp.pbt_train, "ready_interval")):  # fmt: skip
        parameters = inspect.signature(wrapper).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        settings = {f.name for f in dataclasses.fields(tp.RunConfig)}
        settings -= {"interval", "move_at_end"}
        assert settings | {interval, "train_data", "validation_data"} <= set(parameters)
    parameters = inspect.signature(tp.train).parameters
    assert list(parameters) == ["state", "key", "move", "data", "config", "move_state"]


def test_a_warning_points_at_the_users_line(state, blobs):
    with pytest.warns(UserWarning, match="ends before the first exchange") as record:
        pt(state, blobs, num_steps=8, burn_in=5)
    assert record[0].filename == __file__


# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.


def continued(ctx, ladder, rungs=None):
    """``tp.train`` with an exchange on ``ladder`` and a move state of the ctx's."""
    move_state = tp.exchange_move(ctx.ladder).init(ctx.state)
    if rungs is not None:
        move_state = move_state._replace(rungs=rungs)
    return run(ctx, move=tp.exchange_move(ladder), move_state=move_state)


# fmt: off
BAD_INPUTS = [
    # --- train ----------------------------------------------------------------
    Case("train-move-not-callable", lambda c: run(c, move=5), T, r"move must have init\(state\)"),
    Case("train-past-last-end", lambda c: run(c, interval=[5, 10]), V, r"runs past the last round end 10"),
    Case("train-move-state-of-another-ladder", lambda c: continued(c, tp.geometric_ladder("learning_rate", 0.001, 0.01, 4)), V, r"the replicas do not hold the values of move_state's rungs \(learning_rate", fixed=True),
    Case("train-move-state-float-rungs", lambda c: continued(c, c.ladder, rungs=np.arange(4.0, dtype=np.float32)), V, r"move_state.rungs must be integers, shape \(4,\)", fixed=True),
    Case("train-exchange-without-validation", lambda c: run(c, move=tp.exchange_move(c.ladder), validation_data=None), T, r"ExchangeMove compares the replicas' validation scores.*RunData\(train, validation=", fixed=True),
    Case("train-pbt-without-validation", lambda c: run(c, move=tp.pbt_move(tp.pbt_config({"learning_rate": (0.01, 0.1)})), validation_data=None), T, r"PBTMove compares .*validation=", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


# --- Ctrl-C during the final evaluation ----------------------------------------


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_the_final_evaluation_keeps_the_run(state, blobs, presses):
    import os
    import signal
    import time

    (x, y), (xv, yv) = blobs
    armed = []

    def validation():  # read at every round's end and at the call's end
        if armed and not armed[0]:
            armed[0] = True
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs once per press
        return iter([(xv, yv)])

    def arm_at_the_last_round(record):
        if record.round == 1:
            armed.append(False)

    config = tp.RunConfig(num_steps=20, interval=10, callback=arm_at_the_last_round)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.warns(RuntimeWarning, match="interrupted") as caught:
            result = tp.train(state, jax.random.key(0), tp.identity_move(),
                              tp.RunData((x, y), validation=validation), config)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    assert armed == [True] and result.interrupted
    assert len(result.history.step) == 2 and int(result.state.step) == 20
    plain = tp.train(state, jax.random.key(0), tp.identity_move(),
                     tp.RunData((x, y), validation=(xv, yv)),
                     config.replace(callback=None))  # fmt: skip
    assert leaves_equal(result.state.params, plain.state.params)
    if presses == 1:  # the evaluation finished
        np.testing.assert_allclose(result.final.loss, plain.final.loss, rtol=1e-6)
    else:  # the second press stopped it: the rounds are kept, final is None
        assert result.final is None and result.final_score is None
        assert any("final is None" in str(w.message) for w in caught)


# --- progress bars: on in a notebook, off elsewhere, never "IProgress not found" ---


def test_progress_is_off_by_default_outside_a_notebook(state, blobs, capsys):
    assert tp.RunConfig(num_steps=10, interval=5).progress is None  # "auto"
    assert inspect.signature(tp.pt_train).parameters["progress"].default is None
    assert inspect.signature(tp.pbt_train).parameters["progress"].default is None
    pt(state, blobs, num_steps=20)  # under pytest: no kernel, no bar
    assert "ExchangeMove" not in capsys.readouterr().err


@pytest.fixture
def fake_kernel(monkeypatch):
    """A Jupyter kernel as tqdm.auto and tempering see one, without ipywidgets."""
    import sys
    import types

    notebook = pytest.importorskip("tqdm.notebook")  # imported with the real IPython
    monkeypatch.setattr(notebook, "IProgress", None)  # ipywidgets not installed

    class ZMQInteractiveShell:
        kernel = object()
        config = {"IPKernelApp": {}}

    shell = ZMQInteractiveShell()
    ipython = types.SimpleNamespace(get_ipython=lambda: shell)
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("zmq"))
    for name in ("tqdm.auto", "tqdm.autonotebook"):  # chosen afresh
        monkeypatch.delitem(sys.modules, name, raising=False)
    return shell


@pytest.mark.parametrize("progress", [None, True])
def test_progress_in_a_notebook_without_ipywidgets_warns_nothing(
    state, blobs, capsys, fake_kernel, progress
):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pt(state, blobs, progress=progress)
    assert not [str(w.message) for w in caught if "IProgress" in str(w.message)]
    err = capsys.readouterr().err
    assert "ExchangeMove" in err and "50/50" in err  # tqdm's text bar
    assert "IProgress" not in err


def _record(move, num=3):
    return RoundRecord(
        round=0, step=10, train_loss=np.ones(num, np.float32), validation=None,
        score=np.ones(num, np.float32), test=None, move=move, rungs=None,
        hyperparams={}, diverged=np.zeros(num, bool),
        restored_from=-np.ones(num, np.int32),
    )  # fmt: skip


@struct.dataclass
class _DataclassInfo:
    halved: np.ndarray


def test_loggers_take_a_moves_info_of_any_kind(tmp_path):
    # A dict info (the engine guide's HalveTheWorst) was dropped from
    # TensorBoard, a dataclass info stopped the run in JsonlLogger.
    halved = np.array([True, False, False])
    for info in ({"halved": halved}, _DataclassInfo(halved)):
        tags = {tag for tag, _, _ in loggers.record_scalars(_record(info))}
        assert "move/halved" in tags
        path = tmp_path / f"{type(info).__name__}.jsonl"
        with loggers.JsonlLogger(path) as log:
            log(_record(info))
        assert json.loads(path.read_text())["move"] == {"halved": [True, False, False]}


def test_loggers_label_an_exchanges_temperatures_by_rung():
    # Its temperatures are per rung: they were written as replica_m.
    info = tp.moves.ExchangeMoveInfo(
        np.ones(2, bool), np.ones(2, bool), np.ones(2, np.float32),
        np.ones(2, np.float32), np.float32(1.0), np.array([0.01, 0.1, 1.0], np.float32),
    )  # fmt: skip
    tags = {tag for tag, _, _ in loggers.record_scalars(_record(info))}
    assert not any(tag.startswith("move/") for tag in tags)
    rungs = list(loggers.record_rung_scalars(_record(info)))
    assert [(tag, r) for tag, r, _ in rungs] == [
        ("move/temperatures", r) for r in range(3)
    ]
    assert [v for _, _, v in rungs] == pytest.approx([0.01, 0.1, 1.0])
    pbt_info = tp.pbt.PBTInfo(
        np.array([0, 0, 2], np.int32),
        np.array([False, True, False]),
        {"learning_rate": np.array([False, True, False])},
        {"learning_rate": np.ones(3, np.float32)},
    )
    tags = {tag for tag, _, _ in loggers.record_scalars(_record(pbt_info))}
    assert {"move/parent", "move/copied", "move/resampled/learning_rate"} <= tags


def test_loggers_create_no_file_before_their_first_record(tmp_path):
    # Over several processes only process 0 gets records: the others left
    # empty files (and TensorBoard event files) beside its logs.
    loggers.JsonlLogger(tmp_path / "run.jsonl").close()
    assert not (tmp_path / "run.jsonl").exists()
    pytest.importorskip("tensorboardX")
    loggers.TensorBoardLogger(tmp_path / "tb").close()
    assert not (tmp_path / "tb").exists()


def test_a_score_fn_that_needs_values_runs_and_is_checked_when_called(state, blobs):
    # The driver calls score_fn on the metrics' values: the check before the
    # first segment traces it, and refused numpy (or a branch on a value).
    scored = pt(state, blobs, score_fn=lambda m: np.asarray(m.loss) * 2.0)
    np.testing.assert_allclose(scored.history.score, 2.0 * scored.history.val_loss)
    with pytest.raises(ValueError, match=r"one score per replica, shape \(4,\), got"):
        pt(state, blobs, score_fn=lambda m: np.asarray(m.loss)[:2])
