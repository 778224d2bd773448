"""Weight diffusion test (paper Fig. 1): shapes, hand checks, the physics."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    NAN,
    Case,
    T,
    TinyMLP,
    V,
    bad_input_params,
    check_raises_before_compiling,
)

import tempering as tp
from tempering import diffusion


@pytest.fixture(scope="module")
def l2_tx():
    return diffusion.l2_sgd(0.05)


def make_state(tx, x, num=3):
    return tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, x[:4], num_replicas=num, same_init=True
    )


def test_weight_norm_by_hand():
    params = {"a": jnp.array([[3.0, 4.0], [0.0, 1.0]]), "b": jnp.zeros((2, 3))}
    np.testing.assert_allclose(diffusion.weight_norm(params), [5.0, 1.0])


def test_weight_distance_by_hand():
    a = {"w": jnp.zeros((2, 3)), "b": jnp.zeros((2, 1))}
    b = {"w": jnp.array([[3.0, 0, 0], [0, 0, 0]]), "b": jnp.array([[4.0], [1.0]])}
    np.testing.assert_allclose(diffusion.weight_distance(a, b), [5.0, 1.0])


def test_record_schedule():
    steps = diffusion.record_schedule(1000, 10)
    assert steps[0] == 1 and steps[-1] == 1000 and np.all(np.diff(steps) > 0)
    np.testing.assert_array_equal(
        diffusion.record_schedule(100, 4, "linear"), [25, 50, 75, 100]
    )
    assert len(diffusion.record_schedule(3, 10)) == 3  # duplicates dropped


def test_l2_sgd_update_and_per_replica_weight_decay(l2_tx, blobs):
    params = {"w": jnp.array([2.0])}
    opt_state = l2_tx.init(params)
    updates, _ = l2_tx.update({"w": jnp.array([1.0])}, opt_state, params)
    # -lr * (grad + wd * w) with wd = 0
    np.testing.assert_allclose(updates["w"], [-0.05])
    (x, _), _ = blobs
    state = diffusion.set_weight_decay(make_state(l2_tx, x), jnp.array([0.0, 0.1, 1.0]))
    np.testing.assert_allclose(state.hyperparams["weight_decay"], [0.0, 0.1, 1.0])
    # the registry writes it into the optimiser state the update reads
    np.testing.assert_allclose(
        state.opt_state.hyperparams["weight_decay"], [0.0, 0.1, 1.0]
    )
    # an optimiser that does not inject weight_decay has no such hyperparameter
    with pytest.raises(ValueError, match=r"unknown hyperparameter.*weight_decay"):
        diffusion.set_weight_decay(make_state(tp.sgd(0.05), x), 0.1)


def test_diffusion_shapes_and_learning_rate_is_temperature_like(tx, blobs):
    (x, y), _ = blobs
    state = make_state(tx, x)
    result = diffusion.diffusion_test(
        state,
        jax.random.key(1),
        train_data=(x, y),
        hyperparameter="learning_rate",
        values=[1e-4, 0.01, 0.1],
        num_steps=40,
        num_records=5,
        batch_size=32,
    )
    assert isinstance(result, diffusion.DiffusionResult)
    num_records = len(result.steps)
    assert result.distance.shape == result.train_loss.shape == (num_records, 3)
    assert result.steps[-1] == 40
    # learning rates must be > 0, so a tiny one stands in for a frozen replica
    assert np.all(result.distance[:, 0] < 0.05 * result.distance[:, 1])
    assert result.distance[-1, 2] > result.distance[-1, 1] > result.distance[-1, 0] > 0
    # the caller's state is untouched (buffers copied, never donated)
    assert int(state.step) == 0


def test_a_callback_sees_the_recorded_rounds_only(tx, blobs):
    """With t0 > 0 the callback also got the t0 phase's record, which is not
    in the result: a logger wrote a row too many."""
    (x, y), _ = blobs
    seen = []
    result = diffusion.diffusion_test(
        make_state(tx, x), jax.random.key(1), train_data=(x, y),
        hyperparameter="learning_rate", values=[1e-4, 0.01, 0.1], num_steps=40,
        num_records=5, batch_size=32, t0=10, callback=lambda r: seen.append(r.step),
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(seen) - 10, result.steps)


def test_a_list_of_batches_after_t0_warns_of_no_continuing_call(tx, blobs):
    """The record phase is diffusion_test's own second call: the re-iterable
    warning named the user's line and told them to pass one iterator."""
    import warnings

    (x, y), _ = blobs
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diffusion.diffusion_test(
            make_state(tx, x), jax.random.key(1), train_data=batches,
            hyperparameter="learning_rate", values=[1e-4, 0.01, 0.1], num_steps=20,
            num_records=3, t0=8,
        )  # fmt: skip


def test_weight_decay_confines_the_weights(l2_tx, blobs):
    (x, y), _ = blobs
    state = make_state(l2_tx, x)
    result = diffusion.diffusion_test(
        state,
        jax.random.key(1),
        train_data=(x, y),
        hyperparameter="weight_decay",
        values=[0.0, 0.3, 3.0],
        num_steps=200,
        num_records=4,
        spacing="linear",
        t0=5,
        batch_size=32,
    )
    assert result.hyperparameter == "weight_decay"
    np.testing.assert_array_equal(result.steps, [50, 100, 150, 200])
    assert np.all(np.isfinite(result.distance))
    # growth over the second half: free weights keep diffusing, strong L2 has
    # reached its plateau (the weights sit at a fixed distance from W(t0))
    growth = (result.distance[-1] - result.distance[1]) / result.distance[-1]
    assert growth[0] > 0.1
    assert abs(growth[2]) < 0.01
    assert growth[2] < growth[1] < growth[0]
    # The weight norm is recorded beside the distance: strong L2 has shrunk
    # the weights to an equilibrium norm, below the free replica's.
    assert result.weight_norm.shape == result.distance.shape
    assert result.initial_norm.shape == (3,)
    assert result.weight_norm[-1, 2] < 0.5 * result.initial_norm[2]
    assert result.weight_norm[-1, 2] < result.weight_norm[-1, 0]
    # equilibrated: over the second half the strong-L2 norm moves by less
    # than 1% of where it started (it only fluctuates near its small floor)
    drift = abs(result.weight_norm[-1, 2] - result.weight_norm[1, 2])
    assert drift < 0.01 * result.initial_norm[2]


def test_bad_arguments(tx, blobs):
    (x, y), _ = blobs
    state = make_state(tx, x)
    kwargs = dict(train_data=(x, y), num_steps=5, batch_size=32)
    with pytest.raises(ValueError, match="hyperparameter"):
        diffusion.diffusion_test(
            state, jax.random.key(0), hyperparameter="momentum", values=[1, 2, 3],
            **kwargs,
        )  # fmt: skip
    with pytest.raises(ValueError, match="one entry per replica"):
        diffusion.diffusion_test(
            state, jax.random.key(0), hyperparameter="dropout_rate", values=[0.1],
            **kwargs,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown hyperparameter.*weight_decay"):
        diffusion.diffusion_test(
            state, jax.random.key(0), hyperparameter="weight_decay",
            values=[0.0, 0.1, 0.2], **kwargs,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"learning_rate must lie in \(0, inf\)"):
        diffusion.diffusion_test(
            state, jax.random.key(0), hyperparameter="learning_rate",
            values=[0.0, 0.1, 0.2], **kwargs,
        )  # fmt: skip


def diff(ctx: Any, /, **overrides: Any) -> Any:
    """``diffusion_test`` on the shared state, with ``overrides``."""
    kwargs = dict(
        train_data=(ctx.x, ctx.y), hyperparameter="dropout_rate",
        values=[0.0, 0.1, 0.2, 0.3], num_steps=10, num_records=3, batch_size=8,
    )  # fmt: skip
    kwargs.update(overrides)
    return diffusion.diffusion_test(ctx.state, ctx.key, **kwargs)


# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- diffusion_test -------------------------------------------------------
    Case("diffusion-values-length", lambda c: diff(c, values=[0.0, 0.1]), V, r"values must have one entry per replica \(4\)"),
    Case("diffusion-values-dropout-1", lambda c: diff(c, values=[0.0, 0.1, 0.2, 1.0]), V, r"dropout_rate.*\[0, 1\)"),
    Case("diffusion-unknown-hyperparameter", lambda c: diff(c, hyperparameter="weight_decay"), V, r"unknown hyperparameter.*weight_decay"),
    Case("diffusion-hyperparameter-not-str", lambda c: diff(c, hyperparameter=5), T, r"hyperparameter must be", fixed=True),
    Case("diffusion-t0-negative", lambda c: diff(c, t0=-1), V, r"t0 must be an int >= 0"),
    Case("diffusion-num-steps-0", lambda c: diff(c, num_steps=0), V, r"num_steps"),
    Case("diffusion-num-steps-float", lambda c: diff(c, num_steps=2.5), T, r"num_steps must be an int", fixed=True),
    Case("diffusion-num-records-0", lambda c: diff(c, num_records=0), V, r"num_records"),
    Case("diffusion-num-records-float", lambda c: diff(c, num_records=2.5), T, r"num_records must be an int", fixed=True),
    Case("diffusion-spacing-unknown", lambda c: diff(c, spacing="cubic"), V, r"spacing must be 'log' or 'linear'"),
    Case("diffusion-values-nan", lambda c: diff(c, values=[0.0, NAN, 0.2, 0.3]), V, r"dropout_rate.*non-finite"),
    Case("diffusion-values-strings", lambda c: diff(c, values=["a", "b", "c", "d"]), T, r"values must be numbers", fixed=True),
    Case("diffusion-t0-float", lambda c: diff(c, t0=1.5), V, r"t0 must be an int >= 0"),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)
