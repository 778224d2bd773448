"""Per-replica hyperparameters: set_hyperparams and get_hyperparams."""

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
    V,
    bad_input_params,
    check_raises_before_compiling,
)

import tempering as tp

# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- set_hyperparams / get_hyperparams ------------------------------------
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
