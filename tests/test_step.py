"""The vectorised step and evaluation: train_step and evaluate."""

import numpy as np
import pytest
from conftest import (
    FEATURES,
    Case,
    T,
    V,
    bad_input_params,
    check_raises_before_compiling,
)

import tempering as tp
from tempering.data import Split

# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- evaluate / train_step ------------------------------------------------
    Case("evaluate-state-none", lambda c: tp.evaluate(None, c.xv, c.yv), T, r"evaluate takes a ReplicaState", fixed=True),
    Case("evaluate-a-result", lambda c: tp.evaluate(tp.RunResult(c.state, None, None, None, None), c.xv, c.yv), T, r"a call's result; pass result\.state$", fixed=True),
    Case("evaluate-no-targets", lambda c: tp.evaluate(c.state, c.xv), T, r"evaluate needs targets: .*evaluate\(state, data.test\)", fixed=True),
    Case("evaluate-vectorize-none", lambda c: tp.evaluate(c.state, c.xv, c.yv, vectorize=None), T, r"vectorize must be 'auto', a policy name", fixed=True),
    Case("step-state-none", lambda c: tp.train_step(None, c.key, c.x, c.y), T, r"train_step takes a ReplicaState", fixed=True),
    Case("step-vectorize-none", lambda c: tp.train_step(c.state, c.key, c.x, c.y, vectorize=None), T, r"vectorize must be 'auto', a policy name", fixed=True),
    Case("step-labels-float", lambda c: tp.train_step(c.state, c.key, c.x, c.y.astype(np.float32)), T, r"targets: labels must be integers", fixed=True),
    Case("step-labels-out-of-range", lambda c: tp.train_step(c.state, c.key, c.x, c.y + 10), V, r"targets: labels must lie in \[0, ", fixed=True),
    Case("step-empty-batch", lambda c: tp.train_step(c.state, c.key, c.x[:0], c.y[:0]), V, r"the batch holds no examples", fixed=True),
    Case("step-targets-none", lambda c: tp.train_step(c.state, c.key, c.x, None), T, r"inputs and targets must be arrays", fixed=True),
    Case("evaluate-batch-size-0", lambda c: tp.evaluate(c.state, c.xv, c.yv, batch_size=0), V, r"batch_size >= 1"),
    Case("evaluate-metrics-fn-not-callable", lambda c: tp.evaluate(c.state, c.xv, c.yv, metrics_fn="accuracy"), T, r"loss_fn or metrics_fn cannot take", fixed=True),
    Case("evaluate-batch-size-float", lambda c: tp.evaluate(c.state, c.xv, c.yv, batch_size=2.5), T, r"batch_size must be an int", fixed=True),
    Case("evaluate-lengths-mismatch", lambda c: tp.evaluate(c.state, c.xv, c.yv[:-2]), V, r"inputs.*targets", fixed=True),
    Case("evaluate-inputs-shape", lambda c: tp.evaluate(c.state, c.xv[:, :5], c.yv), V, r"inputs.*shape", fixed=True),
    Case("evaluate-labels-float", lambda c: tp.evaluate(c.state, c.xv, c.yv.astype(np.float32)), T, r"targets: labels must be integers \(class indices\) .* got float32", fixed=True),
    Case("step-inputs-shape", lambda c: tp.train_step(c.state, c.key, c.x[:, :5], c.y), V, r"inputs.*shape", fixed=True),
    Case("step-lengths-mismatch", lambda c: tp.train_step(c.state, c.key, c.x, c.y[:-1]), V, r"inputs.*targets", fixed=True),
    Case("step-per-replica-axis", lambda c: tp.train_step(c.state, c.key, c.x[:6].reshape(3, 2, FEATURES), c.y[:6].reshape(3, 2), per_replica_batch=True), V, r"per_replica_batch", fixed=True),
    Case("step-key-int", lambda c: tp.train_step(c.state, 0, c.x, c.y), T, r"key must be a JAX PRNG key", fixed=True),
    Case("step-scalar-targets", lambda c: tp.train_step(c.state, c.key, c.x, c.y[0]), V, r"targets must have a batch axis", fixed=True),
    Case("step-vectorize-unknown", lambda c: tp.train_step(c.state, c.key, c.x, c.y, vectorize="fast"), V, r"vectorize"),
    Case("step-zero-inputs-unknown", lambda c: tp.train_step(c.state, c.key, c.x, c.y, zero_inputs=("noise_std",)), V, r"zero_inputs \['noise_std'\] are not model inputs", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


def test_evaluate_takes_a_split(ctx):
    """``evaluate(state, data.test)``: a Split or an (inputs, targets) pair."""
    by_arrays = tp.evaluate(ctx.state, ctx.xv, ctx.yv)
    for pair in (Split(ctx.xv, ctx.yv), (ctx.xv, ctx.yv)):
        np.testing.assert_array_equal(tp.evaluate(ctx.state, pair).loss, by_arrays.loss)
