"""Per-replica hyperparameters: set_hyperparams and get_hyperparams."""

import re

import jax
import numpy as np
import optax
import pytest
from conftest import (
    FEATURES,
    NAN,
    REPLICAS,
    Case,
    PlainNet,
    T,
    TinyMLP,
    V,
    bad_input_params,
    check_raises_before_compiling,
)

import tempering as tp
import tempering.diffusion

# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- set_hyperparams / get_hyperparams ------------------------------------
    Case("get-state-none", lambda c: tp.get_hyperparams(None), T, r"get_hyperparams takes a ReplicaState", fixed=True),
    Case("set-state-none", lambda c: tp.set_hyperparams(None, learning_rate=0.1), T, r"set_hyperparams takes a ReplicaState", fixed=True),
    Case("set-dropout-1", lambda c: tp.set_hyperparams(c.state, dropout_rate=1.0), V, r"dropout_rate.*\[0, 1\)"),
    Case("set-lr-negative", lambda c: tp.set_hyperparams(c.state, learning_rate=-0.01), V, r"learning_rate.*\(0, "),
    Case("set-lr-huge", lambda c: tp.set_hyperparams(c.state, learning_rate=1e9), V, r"learning_rate must be at most 10", fixed=True),
    Case("set-lr-nan-entry", lambda c: tp.set_hyperparams(c.state, learning_rate=[0.1, NAN, 0.1, 0.1]), V, r"learning_rate.*non-finite"),
    Case("set-wrong-length", lambda c: tp.set_hyperparams(c.state, learning_rate=[0.1, 0.2, 0.3]), V, r"learning_rate.*shape \(4,\)"),
    Case("set-2d", lambda c: tp.set_hyperparams(c.state, learning_rate=np.full((REPLICAS, 1), 0.1)), V, r"learning_rate.*shape \(4,\)"),
    Case("set-unknown-name", lambda c: tp.set_hyperparams(c.state, lr=0.1), V, r"set_hyperparams.*unknown.*'lr'"),
    Case("set-string", lambda c: tp.set_hyperparams(c.state, learning_rate="fast"), T, r"learning_rate.*numbers"),
    Case("set-bool", lambda c: tp.set_hyperparams(c.state, dropout_rate=False), T, r"dropout_rate must be numbers, not bools", fixed=True),
    Case("set-dropout-negative", lambda c: tp.set_hyperparams(c.state, dropout_rate=[0.1, -0.1, 0.2, 0.3]), V, r"dropout_rate must lie in \[0, 1\)"),
    Case("get-unknown-name", lambda c: tp.get_hyperparams(c.state, ["lr"]), V, r"get_hyperparams.*unknown.*'lr'"),
    Case("get-names-int", lambda c: tp.get_hyperparams(c.state, 5), V, r"replica must lie in \[-4, 4\)", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


def test_a_name_injected_twice_with_different_values_is_refused():
    """Before, multi_transform's second learning rate silently became the first's."""

    def two_groups(second):
        return optax.multi_transform(
            {"a": optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
             "b": optax.inject_hyperparams(optax.sgd)(learning_rate=second)},
            lambda params: jax.tree.map(lambda _: "a", params) | {"Dense_0": {
                "kernel": "a", "bias": "b"}},
        )  # fmt: skip

    x = np.zeros((1, FEATURES), np.float32)
    with pytest.raises(ValueError, match=r"tx injects learning_rate 2 times with "
                       r"different values \[0\.001.*, 0\.1.*\]"):  # fmt: skip
        tp.create_replicas(jax.random.key(0), PlainNet(), two_groups(0.001), x,
                           num_replicas=2)  # fmt: skip
    state = tp.create_replicas(jax.random.key(0), PlainNet(), two_groups(0.1), x,
                               num_replicas=2)  # fmt: skip
    np.testing.assert_allclose(state.hyperparams["learning_rate"], [0.1, 0.1])


@pytest.mark.parametrize(
    "name, value, error, match",
    [
        (
            "dropout_rate",
            0.99999999,
            ValueError,
            r"rounded to float32 .*\[0, 1\), got 1.0",
        ),
        ("b2", [0.999, 0.99999999], ValueError, r"rounded to float32 .*\[0, 1\)"),
        (
            "learning_rate",
            1e-46,
            ValueError,
            r"rounded to float32 .*\(0, inf\), got 0.0",
        ),
        ("learning_rate", "0.1", TypeError, "must be numbers"),
        ("learning_rate", [0.1, "0.2"], TypeError, "must be numbers"),
    ],
)
def test_values_are_checked_as_the_replicas_hold_them(name, value, error, match):
    # 0.99999999 passed in float64 and was stored as 1.0 in float32 (a NaN
    # step); a string parsed as a number
    with pytest.raises(error, match=match):
        tp.hyperparams.check_values(name, value)


def _labels(params):
    return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}


def test_an_optimiser_injecting_a_name_as_float_and_as_int_is_refused():
    # the laddered momentum was truncated to 0 in the int32 copy, silently
    tx = optax.multi_transform(
        {
            "Dense_0": optax.inject_hyperparams(optax.sgd)(
                learning_rate=0.1, momentum=0.0
            ),
            "Dense_1": optax.inject_hyperparams(optax.sgd)(
                learning_rate=0.1, momentum=0
            ),
        },
        _labels,
    )
    with pytest.raises(
        ValueError, match=r"momentum 2 times with dtypes \['float32', 'int32'\]"
    ):
        tp.create_replicas(jax.random.key(0), TinyMLP(), tx, np.zeros((1, 5), np.float32),
                           num_replicas=2)  # fmt: skip


def test_an_array_valued_injected_hyperparameter_is_refused():
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=np.array([0.1, 0.1]))
    with pytest.raises(
        ValueError, match=r"injects learning_rate as an array of shape \(2,\)"
    ):
        tp.create_replicas(jax.random.key(0), TinyMLP(), tx, np.zeros((1, 5), np.float32),
                           num_replicas=2)  # fmt: skip


def test_integer_arguments_of_the_library_optimisers_inject_floats():
    # tp.sgd(1) injected an int32 learning rate (no float to ladder), and the
    # cache then returned it for tp.sgd(1.0)
    params = {"w": np.zeros(2, np.float32)}
    assert tp.sgd(1).init(params).hyperparams["learning_rate"].dtype == np.float32
    assert tp.sgd(1.0).init(params).hyperparams["learning_rate"].dtype == np.float32
    decay = tp.diffusion.l2_sgd(0.1, 0).init(params).hyperparams["weight_decay"]
    assert decay.dtype == np.float32


def test_get_hyperparams_takes_the_names_of_dict_keys():
    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tp.sgd(0.1), np.zeros((1, 5), np.float32),
        num_replicas=2,
    )  # fmt: skip
    got = tp.get_hyperparams(state, state.hyperparams.keys())
    assert sorted(got) == sorted(state.hyperparams)


def test_hyperparams_take_a_0d_index_and_traced_values_of_the_right_shape():
    """get_hyperparams(state, jnp.argmin(loss)) raised 'iteration over a 0-d
    array'; set_hyperparams under jit broadcast a (1,) value silently and left
    other shapes to a broadcasting error."""
    import jax.numpy as jnp

    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tp.sgd(0.1), np.zeros((1, 5), np.float32),
        num_replicas=4,
    )  # fmt: skip
    state = tp.set_hyperparams(state, learning_rate=[0.1, 0.2, 0.3, 0.4])
    best = jnp.argmin(jnp.array([3.0, 1.0, 2.0, 4.0]))
    expected = float(np.float32(0.2))
    assert tp.get_hyperparams(state, best)["learning_rate"] == expected
    assert tp.get_hyperparams(state, replica=np.array(1))["learning_rate"] == expected
    with pytest.raises(TypeError, match="replica must be an int index"):
        tp.get_hyperparams(state, replica=jnp.array(1.0))

    def set_lr(state, value):
        return tp.set_hyperparams(state, learning_rate=value).hyperparams

    np.testing.assert_allclose(
        jax.jit(set_lr)(state, jnp.full(4, 0.5))["learning_rate"], 0.5
    )
    for shape in [(1,), (3,), (4, 1)]:
        with pytest.raises(
            ValueError,
            match=re.escape(f"(4,) (one value per replica), got shape {shape}"),
        ):
            jax.jit(set_lr)(state, jnp.full(shape, 0.5))
