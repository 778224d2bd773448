"""RunConfig: the settings of one tp.train call."""

import pytest
from conftest import Case, T, V, bad_input_params, check_raises_before_compiling, run

import tempering as tp

# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- train ----------------------------------------------------------------
    Case("train-num-steps-past-int32", lambda c: run(c, num_steps=2**32, interval=2**31), V, r"num_steps must be at most 2\*\*31 - 1", fixed=True),
    Case("train-interval-empty", lambda c: run(c, interval=[]), V, r"interval must be increasing round ends"),
    Case("train-interval-decreasing", lambda c: run(c, interval=[10, 5]), V, r"interval must be increasing round ends"),
    Case("train-interval-end-zero", lambda c: run(c, interval=[0, 5, 10]), V, r"interval's round ends must be >= 1, got \(0, 5, 10\): a round trains", fixed=True),
    Case("train-ends-with-burn-in", lambda c: run(c, interval=[5, 10, 20], burn_in=5), V, r"burn_in must be 0 with explicit round ends"),
    Case("train-callback-not-callable", lambda c: run(c, callback="print"), T, r"callback must be callable", fixed=True),
    Case("train-score-fn-not-callable", lambda c: run(c, score_fn="loss"), T, r"score_fn must be callable", fixed=True),
    Case("train-metrics-fn-not-callable", lambda c: run(c, metrics_fn="accuracy"), T, r"metrics_fn must be callable"),
    Case("train-augment-not-callable", lambda c: run(c, augment="flip"), T, r"augment must be callable", fixed=True),
    # traced on the data before the first segment compiles (they failed after it trained)
    Case("train-metrics-fn-mean", lambda c: run(c, metrics_fn=lambda o, t: {"acc": (o.argmax(-1) == t).mean()}), V, r"metrics_fn must return one value per example .*'acc': \(\)"),
    Case("train-metrics-fn-per-class", lambda c: run(c, metrics_fn=lambda o, t: {"p": o}), V, r"metrics_fn must return one value per example .*'p': \(2, 3\)"),
    Case("train-metrics-fn-named-loss", lambda c: run(c, metrics_fn=lambda o, t: {"loss": (o.argmax(-1) != t).astype(float)}), V, r"metrics_fn returns a metric named 'loss'.*name it otherwise", fixed=True),
    Case("evaluate-metrics-fn-named-loss", lambda c: tp.evaluate(c.state, c.xv, c.yv, metrics_fn=lambda o, t: {"loss": o[:, 0]}), V, r"metrics_fn returns a metric named 'loss'", fixed=True),
    Case("train-score-fn-scalar", lambda c: run(c, score_fn=lambda m: m.loss.mean()), V, r"score_fn must return one score per replica, shape \(4,\), got shape \(\)"),
    Case("train-score-fn-unknown-metric", lambda c: run(c, score_fn=lambda m: m.metrics["acc"]), V, r"score_fn fails on the validation metrics \(KeyError: 'acc'\).*\['accuracy'\]"),
    Case("train-augment-takes-the-pair", lambda c: run(c, augment=lambda batch: batch), V, r"augment fails on a batch of inputs \(8, 8\).*augment\(key, inputs\)"),
    Case("train-augment-changes-the-shape", lambda c: run(c, augment=lambda k, x: x[:, :2]), V, r"augment must return inputs of the shape it takes, \(8, 8\), got \(8, 2\)"),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


@pytest.mark.parametrize(
    "setting",
    [{"checkpoint_every": 3}, {"keep_checkpoints": 5}, {"resume_allowing": ("model",)}],
)
def test_checkpoint_settings_without_a_checkpoint_dir_are_refused(setting):
    # They were ignored: the run saved nothing while its caller believed it
    # protected.
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"{name} given without checkpoint_dir"):
        tp.RunConfig(num_steps=10, interval=5, **setting)
    tp.RunConfig(num_steps=10, interval=5, checkpoint_dir="ck", **setting)  # fine
    tp.RunConfig(num_steps=10, interval=5, checkpoint_every=1, keep_checkpoints=2)


@pytest.mark.parametrize("devices", ["cpu", 3, [0, 1]])
def test_devices_are_checked_when_the_config_is_built(devices):
    # accepted until train() ran, against "built once and validated then"
    with pytest.raises(TypeError, match="devices must"):
        tp.RunConfig(num_steps=10, interval=5, devices=devices)
