"""Tests for tempering.zoo.models: parameter counts, shapes, train/eval behaviour."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tempering.zoo.models import (
    MLP,
    LeNet5,
    ResNet,
    lenet5_cifar10,
    lenet5_emnist,
    resnet20,
    resnet44,
    resnet_optimizer,
)

KEY = jax.random.key(0)


def _num_params(model, shape) -> int:
    variables = jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape)))
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def _images(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


# ----------------------------------------------------------------- param counts


def test_resnet_param_counts():
    n20 = _num_params(resnet20(), (2, 32, 32, 3))
    n44 = _num_params(resnet44(), (2, 32, 32, 3))
    assert 260_000 <= n20 <= 280_000, n20
    assert 650_000 <= n44 <= 670_000, n44
    # Option-A shortcuts are parameter-free: the count is exactly the convs,
    # BatchNorm scales/biases and the dense layer.
    assert n20 == 269_722
    assert n44 == 658_586


def _lenet_count(in_ch: int, num_classes: int) -> int:
    conv1 = 5 * 5 * in_ch * 6 + 6
    conv2 = 5 * 5 * 6 * 16 + 16
    fc1 = 5 * 5 * 16 * 120 + 120
    fc2 = 120 * 84 + 84
    out = 84 * num_classes + num_classes
    return conv1 + conv2 + fc1 + fc2 + out


def test_lenet_param_counts():
    assert _lenet_count(1, 26) == 63_066
    assert _lenet_count(3, 10) == 62_006
    assert _num_params(lenet5_emnist(), (2, 28, 28, 1)) == 63_066
    assert _num_params(LeNet5(), (2, 28, 28, 1)) == 63_066  # auto -> SAME
    assert _num_params(lenet5_cifar10(), (2, 32, 32, 3)) == 62_006
    assert _num_params(LeNet5(num_classes=10), (2, 32, 32, 3)) == 62_006


def test_mlp_param_count():
    expected = (40 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    assert _num_params(MLP(), (2, 40)) == expected


# ----------------------------------------------------------------------- shapes


def test_mlp_refuses_widths_that_are_not_positive_ints():
    """MLP(features=128) raised 'int' object is not iterable; (-5,) a JAX error."""
    for bad in (128, (-5,), (True,), "256"):
        with pytest.raises(TypeError, match="features must be a sequence of positive"):
            MLP(features=bad)
    with pytest.raises(TypeError, match="num_classes must be a positive int"):
        MLP((8,), num_classes=0)
    assert MLP(features=[np.int64(8)]).features == [8]


@pytest.mark.parametrize(
    ("model", "shape", "num_classes"),
    [
        (MLP(), (2, 40), 10),
        (MLP(features=(8,), num_classes=3), (2, 4, 5, 2), 3),
        (lenet5_emnist(), (2, 28, 28, 1), 26),
        (lenet5_emnist(), (2, 28, 28), 26),
        (lenet5_cifar10(), (2, 32, 32, 3), 10),
    ],
)
def test_output_shapes_no_bn(model, shape, num_classes):
    x = _images(shape)
    variables = model.init(KEY, x)
    assert set(variables) == {"params"}
    chex.assert_shape(model.apply(variables, x), (shape[0], num_classes))
    out = model.apply(variables, x, train=True, dropout_rate=0.3, rngs={"dropout": KEY})
    chex.assert_shape(out, (shape[0], num_classes))


def test_lenet_feature_map_sizes():
    x = _images((2, 28, 28, 1))
    model = lenet5_emnist()
    variables = model.init(KEY, x)
    _, inter = model.apply(variables, x, capture_intermediates=True)
    inter = inter["intermediates"]
    chex.assert_shape(inter["Conv_0"]["__call__"][0], (2, 28, 28, 6))
    chex.assert_shape(inter["Conv_1"]["__call__"][0], (2, 10, 10, 16))
    x = _images((2, 32, 32, 3))
    model = lenet5_cifar10()
    _, inter = model.apply(model.init(KEY, x), x, capture_intermediates=True)
    inter = inter["intermediates"]
    chex.assert_shape(inter["Conv_0"]["__call__"][0], (2, 28, 28, 6))
    chex.assert_shape(inter["Conv_1"]["__call__"][0], (2, 10, 10, 16))


def test_lenet_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        LeNet5(activation="sigmoid").init(KEY, jnp.zeros((1, 28, 28, 1)))


# ---------------------------------------------------------------------- dropout


@pytest.mark.parametrize(
    ("model", "shape"),
    [(MLP(), (2, 40)), (lenet5_emnist(), (2, 28, 28, 1))],
)
def test_dropout_train_vs_eval(model, shape):
    x = _images(shape)
    variables = model.init(KEY, x)
    eval_out = model.apply(variables, x)
    # Eval mode ignores the rate and needs no rng.
    np.testing.assert_array_equal(model.apply(variables, x, dropout_rate=0.5), eval_out)
    train0 = model.apply(
        variables, x, train=True, dropout_rate=0.0, rngs={"dropout": KEY}
    )
    np.testing.assert_allclose(train0, eval_out, rtol=1e-6, atol=1e-6)
    train5 = model.apply(
        variables, x, train=True, dropout_rate=0.5, rngs={"dropout": KEY}
    )
    assert not np.allclose(train5, eval_out)


def test_mlp_traced_rate_under_vmap():
    model = MLP(features=(64, 64))
    x = _images((2, 40))
    m = 3
    keys = jax.random.split(KEY, m)
    params = jax.vmap(lambda k: model.init(k, x))(keys)
    chex.assert_tree_shape_prefix(params, (m,))
    rates = jnp.array([0.0, 0.5, 0.5])

    @jax.jit
    def forward(params, rate, key):
        return model.apply(
            params, x, train=True, dropout_rate=rate, rngs={"dropout": key}
        )

    dkey = jax.random.key(7)
    out = jax.vmap(forward, in_axes=(0, 0, None))(params, rates, dkey)
    chex.assert_shape(out, (m, 2, 10))
    det = jax.vmap(lambda p: model.apply(p, x))(params)
    np.testing.assert_allclose(out[0], det[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out[1], det[1])
    # Same params and key, different rates -> different outputs.
    same = jax.tree.map(lambda p: jnp.stack([p[1], p[1]]), params)
    out2 = jax.vmap(forward, in_axes=(0, 0, None))(same, jnp.array([0.1, 0.6]), dkey)
    assert not np.allclose(out2[0], out2[1])


# --------------------------------------------------------------------- ResNet


@pytest.fixture(scope="module")
def small_resnet():
    # Same code path as resnet20, one block per stage to keep the test fast.
    model = ResNet(stage_sizes=(1, 1, 1), num_classes=10)
    x = _images((2, 16, 16, 3))
    return model, jax.jit(model.init)(KEY, x), x


def test_resnet_shapes_and_batch_stats(small_resnet):
    model, variables, x = small_resnet
    assert set(variables) == {"params", "batch_stats"}
    eval_out = model.apply(variables, x)
    chex.assert_shape(eval_out, (2, 10))
    # Eval mode: batch_stats unchanged (and immutable).
    _, state = model.apply(variables, x, mutable=["batch_stats"])
    chex.assert_trees_all_equal(state["batch_stats"], variables["batch_stats"])
    # Train mode: batch_stats updated.
    out, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_shape(out, (2, 10))
    chex.assert_trees_all_equal_shapes(state["batch_stats"], variables["batch_stats"])
    mean0 = variables["batch_stats"]["BatchNorm_0"]["mean"]
    mean1 = state["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(mean0, mean1)
    # Train mode without rate uses batch statistics, so it differs from eval.
    assert not np.allclose(out, eval_out)


def test_resnet_dropout_before_dense(small_resnet):
    model, variables, x = small_resnet

    def run(rate):
        out, _ = model.apply(
            variables,
            x,
            train=True,
            dropout_rate=rate,
            rngs={"dropout": KEY},
            mutable=["batch_stats"],
        )
        return out

    assert not np.allclose(run(0.0), run(0.5))
    np.testing.assert_array_equal(run(0.0), run(jnp.float32(0.0)))


def test_resnet20_forward_shapes():
    model = resnet20()
    x = _images((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(KEY, x))
    out = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables
    )
    chex.assert_shape(out[0], (2, 10))
    conv_kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
        if "Conv" in jax.tree_util.keystr(path)
    ]
    assert len(conv_kernels) == 1 + 2 * 9  # no shortcut convs (option A)


def test_resnet_conv_init_is_kaiming_fan_out(small_resnet):
    _, variables, _ = small_resnet
    kernel = variables["params"]["ResNetBlock_2"]["Conv_1"]["kernel"]  # 3x3x64x64
    expected_std = np.sqrt(2.0 / (3 * 3 * 64))
    assert abs(float(jnp.std(kernel)) / expected_std - 1.0) < 0.1


# ------------------------------------------------------------------ optimiser


def test_resnet_optimizer_vmap_init_and_update():
    model = MLP(features=(8,), num_classes=3)
    x = jnp.ones((2, 5))
    m = 3
    params = jax.vmap(lambda k: model.init(k, x))(jax.random.split(KEY, m))
    tx = resnet_optimizer()
    opt_state = jax.vmap(tx.init)(params)
    lr = opt_state.hyperparams["learning_rate"]
    assert lr.dtype == jnp.float32
    chex.assert_shape(lr, (m,))
    np.testing.assert_allclose(lr, 0.1)
    opt_state.hyperparams["learning_rate"] = jnp.array([0.0, 0.1, 0.2], jnp.float32)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, new_state = jax.vmap(tx.update)(grads, opt_state, params)
    assert new_state.hyperparams["learning_rate"].dtype == jnp.float32
    new_params = optax.apply_updates(params, updates)
    bias = params["params"]["Dense_1"]["bias"]
    new_bias = new_params["params"]["Dense_1"]["bias"]
    # Replica 0 has lr 0: unchanged. Others: p - lr * (1 + 1e-4 * p).
    np.testing.assert_allclose(new_bias[0], bias[0])
    np.testing.assert_allclose(
        new_bias[2], bias[2] - 0.2 * (1.0 + 1e-4 * bias[2]), rtol=1e-6
    )
