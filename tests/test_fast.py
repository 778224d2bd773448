"""Every replica formulation of tempering.fast equals the plain vmap reference."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import tempering as tp
from tempering import fast, models
from tempering.replicas import _replica_train_step

# A rewrite that silently fell back to plain vmap would pass every comparison.
pytestmark = pytest.mark.filterwarnings("error::tempering.fast.RewriteFallbackWarning")

M = 2
POLICIES = [
    "unroll",
    "map",
    "patches",
    "sequential",
]  # "auto" is "patches" on CPU (test_resolve_policy)
TOL = {"atol": 2e-5, "rtol": 2e-5}


class GroupedConvNet(nn.Module):
    """Grouped (feature_group_count=2) and strided convs: batch_group_count in grads."""

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.relu(nn.Conv(4, (3, 3), strides=2, feature_group_count=2)(x))
        x = jax.jit(jnp.tanh)(x.mean(axis=(1, 2)))  # a nested jit
        return nn.Dense(3)(x)


def _setup(name):
    rng = np.random.default_rng(0)
    if name == "lenet":
        model, shape, classes = models.lenet5_emnist(), (4, 28, 28, 1), 26
    elif name == "resnet":
        model, shape, classes = models.ResNet((1, 1, 1)), (4, 16, 16, 3), 10
    elif name == "grouped":
        model, shape, classes = GroupedConvNet(), (4, 9, 9, 2), 3
    else:
        model, shape, classes = models.MLP((16, 16)), (4, 40), 10
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    y = jnp.asarray(rng.integers(0, classes, size=(shape[0],)), jnp.int32)
    return model, x, y


def _assert_trees_close(a, b):
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b)
    chex.assert_trees_all_close(a, b, **TOL)


@functools.cache
def _replicas(name):
    model, x, y = _setup(name)
    state = tp.create_replicas(
        jax.random.key(0),
        model,
        tp.sgd(0.05, momentum=0.9),
        x,
        num_replicas=M,
        hyperparams={"dropout_rate": 0.2},
    )
    state = tp.set_hyperparams(state, learning_rate=jnp.array([0.01, 0.1]))
    return state, x, y


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", ["lenet", "mlp", "grouped"])
def test_forward_and_gradients_match_vmap(name, policy):
    state, x, y = _replicas(name)
    per_replica_x = jnp.stack([x + 0.1 * m for m in range(M)])

    def loss(params, batch_stats, inputs):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        logits = state.model.apply(variables, inputs)
        return tp.replicas.cross_entropy(logits, y).mean(), logits

    grad_fn = jax.value_and_grad(loss, has_aux=True)
    for x_axis, inputs in [(None, x), (0, per_replica_x)]:
        axes = (0, 0, x_axis)
        ref = jax.jit(jax.vmap(grad_fn, in_axes=axes))(
            state.params, state.batch_stats, inputs
        )
        got = jax.jit(fast.replica_vmap(grad_fn, in_axes=axes, policy=policy))(
            state.params, state.batch_stats, inputs
        )
        chex.assert_tree_shape_prefix(got, (M,))
        _assert_trees_close(got, ref)


@pytest.mark.parametrize(
    "name, policy",
    [
        ("lenet", "unroll"),
        ("lenet", "patches"),
        ("resnet", "unroll"),
        ("resnet", "patches"),
        ("mlp", "unroll"),
        ("resnet", "sequential"),
    ],
)
def test_train_step_and_evaluate_match_vmap(name, policy):
    state, x, y = _replicas(name)
    key = jax.random.key(3)
    step = jax.jit(tp.train_step, static_argnames="vectorize")
    ref, ref_info = step(state, key, x, y, vectorize="vmap")
    new, info = step(state, key, x, y, vectorize=policy)
    chex.assert_shape(info.loss, (M,))
    _assert_trees_close(info.loss, ref_info.loss)
    _assert_trees_close(
        (new.params, new.batch_stats, new.opt_state),
        (ref.params, ref.batch_stats, ref.opt_state),
    )
    chex.assert_trees_all_close(
        tp.evaluate(new, x, y, batch_size=4, vectorize=policy),
        tp.evaluate(ref, x, y, batch_size=4, vectorize="vmap"),
        **TOL,
    )


@pytest.mark.parametrize(
    "strides, padding, lhs_dilation, rhs_dilation, layout",
    [
        ((1, 1), "VALID", (1, 1), (1, 1), ("NHWC", "HWIO", "NHWC")),
        ((2, 1), "SAME", (1, 1), (1, 1), ("NHWC", "HWIO", "NHWC")),
        ((1, 2), ((2, 0), (1, 3)), (1, 1), (2, 1), ("NCHW", "OIHW", "NCHW")),
        ((1, 1), ((1, 1), (0, 2)), (2, 1), (1, 2), ("NHWC", "OIHW", "NCHW")),
    ],
)
def test_patches_conv_and_kernel_gradient_match_vmap(
    strides, padding, lhs_dilation, rhs_dilation, layout
):
    rng = np.random.default_rng(1)
    lhs_shape = {"NHWC": (3, 9, 10, 2), "NCHW": (3, 2, 9, 10)}[layout[0]]
    rhs_shape = {"HWIO": (3, 2, 2, 4), "OIHW": (4, 2, 3, 2)}[layout[1]]
    x = jnp.asarray(rng.normal(size=lhs_shape), jnp.float32)  # shared input
    kernels = jnp.asarray(rng.normal(size=(M, *rhs_shape)), jnp.float32)

    def loss(kernel, inputs):
        out = lax.conv_general_dilated(
            inputs, kernel, strides, padding, lhs_dilation, rhs_dilation, layout
        )
        return jnp.sum(jnp.sin(out)), out

    grad_fn = jax.value_and_grad(loss, has_aux=True)
    ref = jax.vmap(grad_fn, in_axes=(0, None))(kernels, x)
    patched = fast.replica_vmap(grad_fn, in_axes=(0, None), policy="patches")
    _assert_trees_close(jax.jit(patched)(kernels, x), ref)
    # forward and kernel gradient are both matrix products: no convolution left
    assert "conv_general_dilated" not in str(jax.make_jaxpr(patched)(kernels, x))


def test_per_replica_batches_match_vmap():
    state, x, y = _replicas("lenet")
    xs, ys = jnp.stack([x, -x[::-1]]), jnp.stack([y, y[::-1]])
    key = jax.random.key(1)
    step = jax.jit(tp.train_step, static_argnames=("per_replica_batch", "vectorize"))
    ref, _ = step(state, key, xs, ys, per_replica_batch=True, vectorize="vmap")
    new, _ = step(state, key, xs, ys, per_replica_batch=True, vectorize="unroll")
    _assert_trees_close(new.params, ref.params)


def test_replica_train_step_is_the_vmapped_function():
    state, x, y = _replicas("lenet")
    step = functools.partial(_replica_train_step, state)
    keys = jax.random.split(jax.random.key(0), M)
    args = (state.params, state.batch_stats, state.opt_state, state.hyperparams)
    fused = fast.replica_vmap(step, (0, 0, 0, 0, 0, None, None), policy="unroll")
    out = jax.jit(fused)(*args, keys, x, y)
    for m in range(M):
        one = jax.jit(step)(*jax.tree.map(lambda a, m=m: a[m], args), keys[m], x, y)
        _assert_trees_close(jax.tree.map(lambda a, m=m: a[m], out), one)


def test_differentiating_through_replica_vmap():
    w = jax.random.normal(jax.random.key(0), (M, 3, 3, 2, 4))
    x = jax.random.normal(jax.random.key(1), (5, 8, 8, 2))

    def f(w, x):
        y = lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(jnp.tanh(y) ** 2)

    def total(w, policy):
        return fast.replica_vmap(f, (0, None), policy=policy)(w, x).sum()

    ref = jax.grad(total)(w, "vmap")
    got = jax.jit(jax.grad(total), static_argnums=1)(w, "unroll")
    _assert_trees_close(got, ref)


def test_resolve_policy():
    assert fast.resolve_policy("vmap") == {}
    assert fast.resolve_policy("auto", backend="cpu") == fast.POLICIES["patches"]
    assert fast.resolve_policy("auto", backend="gpu") == {}
    assert fast.resolve_policy({"dot_general": "map"}) == {"dot_general": "map"}
    with pytest.raises(ValueError, match="unknown vectorize policy"):
        fast.resolve_policy("fastest")
    with pytest.raises(ValueError, match="unknown formulation"):
        fast.resolve_policy({"conv_general_dilated": "grouped"})
    model, x, y = _setup("mlp")
    state = tp.create_replicas(jax.random.key(0), model, tp.sgd(), x, num_replicas=2)
    with pytest.raises(ValueError, match="unknown vectorize policy"):
        tp.train_step(state, jax.random.key(0), x, y, vectorize="nope")
    with pytest.raises(ValueError, match="unknown vectorize policy"):
        tp.evaluate(state, x, y, vectorize="nope")


def test_fused_step_traces_once():
    state, x, y = _replicas("lenet")

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, key):
        return tp.train_step(state, key, x, y, vectorize="unroll")

    for i in range(3):
        state, _ = step(state, jax.random.key(i))


def _break_the_rewrite(monkeypatch, where):
    # The crash of old JAX (get_bind_params returned (subfuns, params)) or any
    # other failure inside the rewrite.
    def fail(*args, **kwargs):
        raise TypeError("argument after ** must be a mapping, not tuple")

    monkeypatch.setattr(fast, where, fail)
    monkeypatch.setattr(fast, "_warned", set())


def _fallback_messages(record):
    return [str(w.message) for w in record if w.category is fast.RewriteFallbackWarning]


@pytest.mark.parametrize("where", ["_bind", "_eval"])
def test_rewrite_failure_falls_back_to_vmap_with_one_warning(monkeypatch, where):
    _break_the_rewrite(monkeypatch, where)

    def f(w, x):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        return jnp.sum(jnp.tanh(y) ** 2)

    grad = jax.grad(f)
    fused = jax.jit(fast.replica_vmap(grad, (0, None), policy="unroll"))
    w = jax.random.normal(jax.random.key(0), (M, 3, 3, 2, 4))
    with pytest.warns(fast.RewriteFallbackWarning, match="plain jax.vmap") as record:
        for x in (jnp.ones((5, 8, 8, 2)), jnp.ones((3, 6, 6, 2))):  # two traces
            ref = jax.vmap(grad, (0, None))(w, x)
            _assert_trees_close(fused(w, x), ref)
    messages = _fallback_messages(record)
    assert len(messages) == 1, messages  # once per function and policy
    assert ".f for policy {'conv_general_dilated': 'unroll'}" in messages[0]
    assert "TypeError: argument after ** must be a mapping" in messages[0]


def test_a_broken_rewrite_trains_as_plain_vmap(monkeypatch):
    _break_the_rewrite(monkeypatch, "_bind")
    state, x, y = _replicas("lenet")
    key = jax.random.key(1)

    def fresh_step(*args, **kwargs):  # a new function: no trace cached by jit
        return tp.train_step(*args, **kwargs)

    step = jax.jit(fresh_step, static_argnames="vectorize")
    ref, ref_metrics = step(state, key, x, y, vectorize="vmap")
    with pytest.warns(fast.RewriteFallbackWarning) as record:
        new, metrics = step(state, key, x, y, vectorize="unroll")
    assert len(_fallback_messages(record)) == 1
    _assert_trees_close((new.params, metrics), (ref.params, ref_metrics))


def test_errors_of_the_function_itself_are_not_a_fallback(monkeypatch):
    monkeypatch.setattr(fast, "_warned", set())
    w = jnp.ones((M, 3, 3, 2, 4))

    def f(w, x):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        return y @ jnp.ones((5, 5))  # wrong shape: the user's error

    # no RewriteFallbackWarning (an error in this module): the user's error
    with pytest.raises(TypeError, match="dot_general"):
        fast.replica_vmap(f, (0, None), policy="unroll")(w, jnp.ones((5, 8, 8, 2)))
