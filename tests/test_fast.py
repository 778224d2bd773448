"""Every replica formulation of tempering.fast equals the plain vmap reference."""

import functools
import inspect
import itertools
import re
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import leaves_equal, train_step
from jax import lax

import tempering as tp
from tempering import fast, rewrite
from tempering.step import replica_train_step
from tempering.zoo import models

# A rewrite that silently fell back to plain vmap would pass every comparison.
pytestmark = pytest.mark.filterwarnings("error::tempering.fast.RewriteFallbackWarning")

M = 2
POLICIES = [
    "unroll",
    "map",
    "patches",
    "sequential",
    "broadcast",
]  # "auto" on CPU: "patches+reshape", "sequential" or "broadcast" (test_applied_rules_*)
# Two formulations of the same sums (a convolution as patches times kernels, a
# pooling as reshapes) round them in another order, and XLA fuses and contracts
# (FMA) each program its own way, differently on each instruction set. The
# models' sums have at most a few hundred well-conditioned terms (activations
# and weights O(1), no saturated tanh), so any order lands within ~300 ulp
# (2e-5 relative) of any other, on any instruction set (.ci/run runs this file
# with AVX-512 or AVX2 code and again under --xla_cpu_max_isa=AVX, no FMA).
# Bitwise equality is asserted only where one primitive computes both (the
# window reductions).
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
    elif name == "user_lenet":  # the user LeNet: ReLU, max-pool, SAME
        model = models.LeNet5(
            10, activation="relu", pooling="max", first_padding="SAME"
        )
        shape, classes = (4, 28, 28, 1), 10
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
    _check_forward_and_gradients(name, policy)


@pytest.mark.parametrize(
    "name, policy",
    [
        ("user_lenet", "patches+reshape"),  # max-pool and gradient as reshapes
        ("lenet", "patches+fold"),  # average pooling (reduce_window_sum) folded
    ],
)
def test_window_formulations_in_models_match_vmap(name, policy):
    # Whole models: float tolerance, since XLA fuses the two programs'
    # element-wise parts differently (the window primitives alone are bitwise
    # equal: test_window_reductions_bitwise_equal_to_vmap). A shared batch
    # only: per-replica batches change the convolutions, not the pooling.
    _check_forward_and_gradients(name, policy, x_axes=(None,))


def _grad_fn(name):
    state, _, y = _replicas(name)

    def loss(params, batch_stats, inputs):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        logits = state.model.module.apply(variables, inputs)
        return tp.state.cross_entropy(logits, y).mean(), logits

    return jax.value_and_grad(loss, has_aux=True)


def _grad_inputs(name, x_axis):
    state, x, _ = _replicas(name)
    inputs = x if x_axis is None else jnp.stack([x + 0.1 * m for m in range(M)])
    return state.params, state.batch_stats, inputs


@functools.cache
def _reference_grads(name, x_axis):
    """Plain vmap's forward and gradients, compiled once per model (CI time)."""
    fun = jax.vmap(_grad_fn(name), in_axes=(0, 0, x_axis))
    return jax.jit(fun)(*_grad_inputs(name, x_axis))


def _check_forward_and_gradients(name, policy, x_axes=(None, 0)):
    for x_axis in x_axes:
        fused = fast.replica_vmap(_grad_fn(name), in_axes=(0, 0, x_axis), policy=policy)
        got = jax.jit(fused)(*_grad_inputs(name, x_axis))
        chex.assert_tree_shape_prefix(got, (M,))
        _assert_trees_close(got, _reference_grads(name, x_axis))


@functools.cache
def _reference_step(name):
    """Plain vmap's step and its evaluation, compiled once per model (CI time)."""
    state, x, y = _replicas(name)
    ref, ref_info = train_step(state, jax.random.key(3), x, y, vectorize="vmap")
    return (ref, ref_info), tp.evaluate(ref, x, y, batch_size=4, vectorize="vmap")


@pytest.mark.parametrize(
    "name, policy",
    [
        ("lenet", "unroll"),
        ("lenet", "patches"),
        ("resnet", "unroll"),
        ("resnet", "patches"),
        ("mlp", "unroll"),
        ("mlp", "broadcast"),
        ("resnet", "sequential"),
    ],
)
def test_train_step_and_evaluate_match_vmap(name, policy):
    state, x, y = _replicas(name)
    key = jax.random.key(3)
    (ref, ref_info), ref_metrics = _reference_step(name)
    new, info = train_step(state, key, x, y, vectorize=policy)
    chex.assert_shape(info.loss, (M,))
    _assert_trees_close(info.loss, ref_info.loss)
    _assert_trees_close(
        (new.params, new.batch_stats, new.opt_state),
        (ref.params, ref.batch_stats, ref.opt_state),
    )
    chex.assert_trees_all_close(
        tp.evaluate(new, x, y, batch_size=4, vectorize=policy), ref_metrics, **TOL
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


@pytest.mark.parametrize(
    "strides, padding, lhs_dilation, rhs_dilation, layout",
    [
        ((2,), ((1, 1),), (1,), (1,), ("NWC", "WIO", "NWC")),
        ((1, 1), "SAME", (1, 1), (1, 1), ("NHWC", "HWIO", "NHWC")),
        ((1, 2), ((2, 0), (1, 3)), (1, 1), (2, 1), ("NCHW", "OIHW", "NCHW")),
        ((2, 1), ((1, 1), (0, 2)), (2, 1), (1, 2), ("NHWC", "OIHW", "NCHW")),
    ],
)
def test_small_per_replica_convolutions_as_patches_match_vmap(
    strides, padding, lhs_dilation, rhs_dilation, layout
):
    # Input and kernel both per replica (a second layer): its forward, kernel
    # gradient and input gradient become batched products of patches.
    rng = np.random.default_rng(4)
    rank = len(strides)
    lhs_shape = {"NWC": (3, 11, 2), "NHWC": (3, 9, 10, 2), "NCHW": (3, 2, 9, 10)}
    rhs_shape = {"WIO": (3, 2, 4), "HWIO": (3, 2, 2, 4), "OIHW": (4, 2, 3, 2)}
    x = jnp.asarray(rng.normal(size=(M, *lhs_shape[layout[0]])), jnp.float32)
    kernels = jnp.asarray(rng.normal(size=(M, *rhs_shape[layout[1]])), jnp.float32)

    def loss(kernel, inputs):
        out = lax.conv_general_dilated(
            inputs, kernel, strides, padding, lhs_dilation, rhs_dilation, layout
        )
        return jnp.sum(jnp.sin(out)), out

    grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    ref = jax.vmap(grad_fn)(kernels, x)
    patched = fast.replica_vmap(grad_fn, policy="patches")
    _assert_trees_close(jax.jit(patched)(kernels, x), ref)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(patched)(kernels, x))
    # a larger one (a LeNet's second layer: 1.9M) stays a convolution per replica
    spatial = (300,) if rank == 1 else (30, 30)
    big, big_kernels = jnp.zeros((M, 128, *spatial, 8)), jnp.zeros((M, 5, 5, 8, 16))
    spec = ("NHWC", "HWIO", "NHWC") if rank == 2 else ("NWC", "WIO", "NWC")
    big_kernels = big_kernels[:, 0] if rank == 1 else big_kernels

    def conv(inputs, kernel):
        return lax.conv_general_dilated(inputs, kernel, (1,) * rank, "VALID",
                                        dimension_numbers=spec)  # fmt: skip

    jaxpr = jax.make_jaxpr(fast.replica_vmap(conv, policy="patches"))
    assert str(jaxpr(big, big_kernels)).count("conv_general_dilated") == M


def _patch_cases(rank: int) -> list[tuple]:
    """(window, stride, dilation, input dilation, padding) per spatial dimension.

    In 1-D every combination; in 2-D a dozen drawn from them, the two
    dimensions' settings independent (each case compiles its own gather).
    """
    options = list(
        itertools.product((1, 3, 7), (1, 2), (1, 2), (1, 2), ((0, 0), (2, 1)))
    )
    if rank == 1:
        return [(o,) for o in options]
    rng = np.random.default_rng(0)
    return [
        tuple(options[i] for i in rng.choice(len(options), size=rank))
        for _ in range(12)
    ]


@pytest.mark.parametrize("rank", [1, 2])
def test_patches_are_the_input_elements_each_window_reads(rank):
    # Every stride, dilation, input dilation and padding; both orders the
    # kernel gradient and the forward convolution take (window <-> outputs).
    rng = np.random.default_rng(2)
    layout = ("NWC", "WIO", "NWC") if rank == 1 else ("NHWC", "HWIO", "NHWC")
    shape = (2, 9, 2) if rank == 1 else (2, 9, 8, 2)
    lhs = rng.normal(size=shape).astype(np.float32)
    for case in _patch_cases(rank):
        window, stride, dilation, lhs_dilation, pad = map(
            tuple, zip(*case, strict=True)
        )
        params = {
            "dimension_numbers": lax.conv_dimension_numbers(
                shape, (*window, 2, 4), layout
            ),
            "window_strides": stride,
            "rhs_dilation": dilation,
            "lhs_dilation": lhs_dilation,
            "padding": pad,
        }
        spatial = [(*p, d - 1) for p, d in zip(pad, lhs_dilation, strict=True)]
        padded = np.asarray(
            lax.pad(jnp.moveaxis(lhs, -1, 1), 0.0, [(0, 0, 0), (0, 0, 0), *spatial])
        )
        out = [
            (n - (k - 1) * d - 1) // s + 1
            for n, k, d, s in zip(
                padded.shape[2:], window, dilation, stride, strict=True
            )
        ]
        if min(out) < 1:
            continue
        want = np.empty((*padded.shape[:2], *window, *out), np.float32)
        for k in itertools.product(*map(range, window)):
            for o in itertools.product(*map(range, out)):
                at = [
                    oi * si + ki * di
                    for ki, oi, si, di in zip(k, o, stride, dilation, strict=True)
                ]
                want[(..., *k, *o)] = padded[(..., *at)]
        got = rewrite._patches(params, jnp.asarray(lhs), window)
        np.testing.assert_array_equal(got, want)


CONV_CASES = [  # lhs, rhs and out layouts, groups, strides, dilations
    (("NHWC", "HWIO", "NHWC"), 1, 1, (1, 1), (1, 1)),
    (("NCHW", "OIHW", "NCHW"), 2, 1, (2, 1), (1, 2)),
    (("NHWC", "OIHW", "NCHW"), 1, 2, (1, 1), (2, 1)),
    (("CHWN", "IOHW", "HNWC"), 1, 1, (1, 2), (1, 1)),
]


@pytest.mark.parametrize("layout, groups, batch_groups, strides, dilation", CONV_CASES)
def test_a_convolution_in_canonical_layout_is_the_same_convolution(
    layout, groups, batch_groups, strides, dilation
):
    rng = np.random.default_rng(3)
    n, c, o = 4, 4, 4
    sizes = {"N": n, "C": c, "H": 7, "W": 6}
    lhs = rng.normal(size=[sizes[d] for d in layout[0]]).astype(np.float32)
    kernel = {"O": o, "I": c // groups, "H": 3, "W": 2}
    rhs = rng.normal(size=[kernel[d] for d in layout[1]]).astype(np.float32)

    def conv(lhs, rhs):
        return lax.conv_general_dilated(
            lhs, rhs, strides, ((1, 0), (0, 1)), rhs_dilation=dilation,
            dimension_numbers=layout, feature_group_count=groups,
            batch_group_count=batch_groups,
        )  # fmt: skip

    (eqn,) = jax.make_jaxpr(conv)(lhs, rhs).jaxpr.eqns  # the params JAX binds
    want = conv(lhs, rhs)
    got = rewrite.canonical_conv(eqn.params, jnp.asarray(lhs), jnp.asarray(rhs))
    chex.assert_shape(got, want.shape)
    _assert_trees_close(got, want)


@pytest.mark.parametrize("policy", ["map", "sequential"])
def test_convolutions_in_a_loop_are_written_in_the_layout_xla_runs_fast(policy):
    # Inside a while body XLA:CPU keeps a convolution's layout; a kernel
    # gradient in its own layout ran LeNet's step 2.7x slower than a loop.
    def loss(w, x):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        y = lax.conv_general_dilated(jnp.tanh(y), w[:, :, ::-1], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        return jnp.sum(y**2)

    w, x = jnp.full((M, 3, 3, 4, 4), 0.1), jnp.ones((2, 8, 8, 4))
    grad = jax.grad(loss)
    fused = jax.jit(fast.replica_vmap(grad, in_axes=(0, None), policy=policy))
    program = fused.lower(w, x).compile().as_text()
    labels = set(re.findall(r"dim_labels=([^,\s]+)", program))
    assert labels == {"b01f_01io->b01f"}, labels
    _assert_trees_close(fused(w, x), jax.vmap(grad, in_axes=(0, None))(w, x))


# (window, strides, padding, base dilation, window dilation) of NHWC pooling
# on 8x8 maps; JAX has no max-pool VJP with window dilation, so only the sum
# pool dilates. The first two windows tile the maps (the "reshape" cases).
WINDOWS = [
    ((1, 2, 2, 1), (1, 2, 2, 1), "SAME", None, None),  # LeNet pooling
    ((1, 2, 4, 1), (1, 2, 4, 1), "VALID", None, None),
    ((1, 3, 3, 1), (1, 2, 2, 1), "SAME", None, None),  # overlapping, padded
    ((1, 2, 3, 1), (1, 1, 2, 1), ((0, 0), (1, 0), (0, 2), (0, 0)), None, (1, 2, 1, 1)),
    ((1, 2, 2, 1), (1, 2, 1, 1), "VALID", (1, 2, 1, 1), None),  # base dilation
]


def test_window_reductions_bitwise_equal_to_vmap():
    # Max and sum (average) pooling with the strides, paddings and dilations
    # of WINDOWS and their gradients (select_and_scatter_add for the max), a
    # min pool, the max-pool JVP (select_and_gather_add), and a shared input
    # pooled before a per-replica weight, with ties (zeros) in the maxima.
    # Folding runs the very same primitive on (M*B, ...); reshaping takes the
    # max and the first argmax of each window, the element
    # select_and_scatter_add picks: both are bitwise equal to jax.vmap's.
    # Every output comes from one pooling alone: gradients summed over several
    # poolings round differently as XLA fuses the sums.
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 8, 8, 2)), jnp.float32)  # shared input
    x = x.at[:, :3].set(0.0)  # ties in the max, as after a ReLU
    n = 2 * len(WINDOWS) + 2
    w = jnp.asarray(rng.normal(size=(M, n, 2)), jnp.float32)  # per replica

    def pool(init, op, v, k, dilated=False):
        window, strides, padding, base, dilation = WINDOWS[k]
        dilation = dilation if dilated else None
        return lax.reduce_window(v, init, op, window, strides, padding, base, dilation)

    def terms(w, xs):
        out = []
        for k in range(len(WINDOWS)):
            max_in = nn.relu(xs[2 * k] * w[2 * k])
            sum_in = jnp.sin(xs[2 * k + 1] * w[2 * k + 1])
            out += [
                jnp.sum(pool(-jnp.inf, lax.max, max_in, k) ** 2),
                jnp.sum(pool(0.0, lax.add, sum_in, k, dilated=True)),
            ]
        min_pool = pool(jnp.inf, lax.min, xs[-2] * w[-2], 0)
        shared = pool(-jnp.inf, lax.max, xs[-1], 0)  # an unbatched operand
        return [*out, jnp.sum(jnp.cos(min_pool)), jnp.sum(shared * w[-1])]

    def fun(w, xs):
        # terms apart: each gradient row comes from one pooling alone
        grads = jax.grad(lambda w, xs: sum(terms(w, xs)), (0, 1))(w, xs)
        jvps = [
            jax.jvp(
                functools.partial(pool, -jnp.inf, lax.max, k=k),
                (xs[0] * w[k],),
                (jnp.sin(xs[k]),),
            )  # fmt: skip
            for k in (0, 2)  # tiling, overlapping
        ]
        return grads, jvps

    xs = jnp.stack([x] * n)
    ref = jax.jit(jax.vmap(fun, in_axes=(0, None)))(w, xs)
    for policy in ("fold", "reshape"):
        _check_window_policy(fun, policy, (w, xs), ref)


def _check_window_policy(fun, policy, args, ref):
    fused = fast.replica_vmap(fun, in_axes=(0, None), policy=policy)
    chex.assert_trees_all_equal(jax.jit(fused)(*args), ref)
    jaxpr = str(jax.make_jaxpr(fused)(*args))
    windowed = re.findall(
        r"f32\[([\d,]+)\] = (reduce_window_\w+|select_and_\w+)", jaxpr
    )
    # single-replica (4-D) primitives on (M*B, ...) where they remain (the
    # "reshape" policy leaves sum pooling to JAX's rule)
    folded = [(shape, op) for shape, op in windowed if op != "reduce_window_sum" or policy == "fold"]  # fmt: skip
    assert all(shape.count(",") == 3 for shape, _ in folded), folded  # no 5-D
    scatters = [op for _, op in windowed].count("select_and_scatter_add")
    if policy == "fold":
        assert {op for _, op in windowed} == {
            "reduce_window_max",
            "reduce_window_min",
            "reduce_window_sum",
            "select_and_scatter_add",
            "select_and_gather_add",
        }
        assert scatters == len(WINDOWS) + 2  # every max and the min pool
    else:  # the tiling windows reshaped: no scatter left for them
        assert "argmax" in jaxpr and "argmin" in jaxpr
        assert scatters == len(WINDOWS) - 2


def test_window_over_every_dimension_and_generic_reduce_window():
    # No dimension untouched by the window: emitted per replica. A generic
    # reduce_window (a product): folded, with its shared init value.
    w = jnp.asarray(np.random.default_rng(3).normal(size=(M, 6, 5)), jnp.float32)

    def f(w):
        every = lax.reduce_window(w, 0.0, lax.add, (2, 2), (1, 2), "SAME")
        prod = lax.reduce_window(w[None], 1.0, lax.mul, (1, 2, 1), (1, 1, 1), "VALID")
        return every, prod

    ref = jax.vmap(f)(w)
    got = jax.jit(fast.replica_vmap(f, policy="fold"))(w)
    chex.assert_trees_all_equal(got, ref)


def test_per_replica_batches_match_vmap():
    state, x, y = _replicas("lenet")
    xs, ys = jnp.stack([x, -x[::-1]]), jnp.stack([y, y[::-1]])
    key = jax.random.key(1)
    ref, _ = train_step(state, key, xs, ys, per_replica_batch=True, vectorize="vmap")
    new, _ = train_step(state, key, xs, ys, per_replica_batch=True, vectorize="unroll")
    _assert_trees_close(new.params, ref.params)


def test_replica_train_step_is_the_vmapped_function():
    state, x, y = _replicas("lenet")
    step = functools.partial(replica_train_step, state)
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


def _min_pool(x, window, strides):
    dims, steps = (1, *window, 1), (1, *strides, 1)
    return lax.reduce_window(x, jnp.inf, lax.min, dims, steps, "VALID")


@pytest.mark.parametrize("pool", [nn.max_pool, _min_pool])
def test_differentiating_through_tied_pooling_matches_vmap(pool):
    """Rewritten as reshapes, pooling's max took jnp.max's derivative, which
    splits a tangent among tied elements: d/dx [0.75] * 4 against vmap's
    [3, 0, 0, 0] (the first extreme's), jvp [1.5, 3] against [0, 0]."""
    x = jnp.ones((2, 4, 4, 1)).at[1, :2, :2].set(2.0)  # every window tied
    w = jnp.array([1.0, 2.0, -1.0])

    def f(w, x):
        return pool(x * w, (2, 2), (2, 2)).sum()

    for policy in ("reshape", "auto"):
        mapped = fast.replica_vmap(f, (0, None), policy=policy)
        reference = jax.vmap(f, (0, None))
        grads = [jax.grad(lambda w, x, g=g: g(w, x).sum(), (0, 1))(w, x)
                 for g in (mapped, reference)]  # fmt: skip
        assert leaves_equal(*grads)
        tangent = jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)
        jvps = [jax.jvp(lambda x, g=g: g(w, x), (x,), (tangent,))
                for g in (mapped, reference)]  # fmt: skip
        assert leaves_equal(*jvps)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_auto_draws_the_bits_of_vmap_with_any_keys(impl):
    """With rbg keys "auto" chose "sequential" for a batched product and drew
    other dropout masks than vmap (those of a loop), without a word."""

    def attention(key, p, x):  # batched products: "auto" runs it sequential
        q = jnp.einsum("btd,dk->btk", x, p)
        scores = jnp.einsum("btk,bsk->bts", q, q)
        return jnp.where(jax.random.bernoulli(key, 0.5, scores.shape), scores, 0.0)

    keys = jax.random.split(jax.random.key(0, impl=impl), M)
    p, x = jnp.stack([jnp.eye(3)] * M), jnp.ones((2, 4, 3))
    got = fast.replica_vmap(attention, (0, 0, None), policy="auto")(keys, p, x)
    assert leaves_equal(got, jax.vmap(attention, (0, 0, None))(keys, p, x))


def test_resolve_policy():
    assert fast.resolve_policy("vmap") == {}
    assert fast.resolve_policy("auto", backend="cpu") == fast.POLICIES[
        "patches+reshape"
    ]  # fmt: skip
    assert fast.resolve_policy("auto", backend="gpu") == {}
    assert fast.resolve_policy({"dot_general": "map"}) == {"dot_general": "map"}
    both = fast.resolve_policy("patches+fold")
    assert both["conv_general_dilated"] == "patches"
    assert {both[name] for name in fast.WINDOW_PRIMITIVES} == {"fold"}
    assert "select_and_scatter_add" in both and "reduce_window_max" in both
    for formulation in ("fold", "reshape"):
        with pytest.raises(ValueError, match="is for weight-free window"):
            fast.resolve_policy({"conv_general_dilated": formulation})
    with pytest.raises(ValueError, match="is for matrix products"):
        fast.resolve_policy({"conv_general_dilated": "broadcast"})
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


def _attention_loss(w, x):
    q = x @ w
    scores = jnp.einsum("bqd,bkd->bqk", q, q)  # a batched product (batch dim b)
    return jnp.sum(jax.nn.softmax(scores) @ q)


def _dense_loss(w, x):
    return jnp.sum(jnp.tanh(x.reshape(-1, x.shape[-1]) @ w))


def _loops(fn, *args):
    text = str(jax.make_jaxpr(fn)(*args))
    return "while[" in text or "scan[" in text


def test_auto_runs_batched_products_as_a_loop_on_one_cpu(monkeypatch):
    # "auto" on one CPU device: no conv or pooling but batched products
    # (attention) -> a lax.map over replicas; ordinary GEMMs (an MLP) -> no loop.
    # Equal to vmap either way; on several devices always vmap.
    w = jax.random.normal(jax.random.key(0), (M, 4, 4))
    x = jax.random.normal(jax.random.key(1), (3, 5, 4))
    for loss, loops in ((_attention_loss, True), (_dense_loss, False)):
        grad = jax.grad(loss)
        auto = fast.replica_vmap(grad, (0, None), policy="auto")
        assert _loops(auto, w, x) is loops, loss.__name__
        _assert_trees_close(jax.jit(auto)(w, x), jax.vmap(grad, (0, None))(w, x))
    assert fast._auto_otherwise("cpu") == "sequential"
    monkeypatch.setattr(jax, "device_count", lambda *a: 2)
    assert fast._auto_otherwise("cpu") is None
    auto = fast.replica_vmap(jax.grad(_attention_loss), (0, None), policy="auto")
    assert not _loops(auto, w, x)
    assert fast._auto_otherwise("gpu") is None


def _conv_stack_loss(kernels, x, depth):
    for i in range(depth):
        x = jnp.tanh(lax.conv_general_dilated(x, kernels[i], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))  # fmt: skip
    return jnp.sum(x**2)


def test_auto_runs_a_deep_conv_net_as_a_loop_on_one_cpu(monkeypatch):
    # A step with DEEP_CONVOLUTIONS convolutions or more (forward and backward)
    # runs "sequential"; a shallower one is rewritten per primitive.
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
    shallow_depth = 4  # 4 forward + 4 kernel + 3 input gradients = 11
    deep_depth = (fast.DEEP_CONVOLUTIONS + 1) // 3 + 1
    for depth, loops in ((shallow_depth, False), (deep_depth, True)):
        kernels = 0.3 * jax.random.normal(jax.random.key(0), (M, depth, 3, 3, 3, 3))
        grad = jax.grad(functools.partial(_conv_stack_loss, depth=depth))
        jaxpr = jax.make_jaxpr(grad)(kernels[0], x).jaxpr
        assert (
            fast._count(jaxpr, "conv_general_dilated") >= fast.DEEP_CONVOLUTIONS
        ) is loops
        auto = fast.replica_vmap(grad, (0, None), policy="auto")
        assert _loops(auto, kernels, x) is loops, depth
        _assert_trees_close(
            jax.jit(auto)(kernels, x), jax.vmap(grad, (0, None))(kernels, x)
        )
    monkeypatch.setattr(jax, "device_count", lambda *a: 2)
    assert fast.applied_rules("auto", jaxpr, "cpu") == {
        "conv_general_dilated": "patches"
    }
    assert fast.applied_rules("auto", jaxpr, "gpu") == {}


def _dot_batch_dims(fn, *args) -> list:
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (_, _), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
                found.append((tuple(lhs_batch), tuple(rhs_batch)))
            for sub in fast._subjaxprs(eqn.params):
                visit(sub)

    visit(jaxpr)
    return found


@pytest.mark.parametrize("loss", [_dense_loss, _attention_loss])
def test_broadcast_products_put_the_replica_axis_first(loss):
    # A product with one shared operand (a dense layer on the shared batch, its
    # kernel gradient) becomes a batched product over the replica axis, the
    # shared operand copied to every replica; plain vmap folds the replicas
    # into the other operand's free dimensions instead. Equal values.
    w = jax.random.normal(jax.random.key(0), (M, 4, 4))
    x = jax.random.normal(jax.random.key(1), (3, 5, 4))
    grad = jax.value_and_grad(loss)
    broadcast = fast.replica_vmap(grad, (0, None), policy="broadcast")
    _assert_trees_close(jax.jit(broadcast)(w, x), jax.vmap(grad, (0, None))(w, x))
    dims = _dot_batch_dims(broadcast, w, x)
    assert dims and all(lhs[:1] == rhs[:1] == (0,) for lhs, rhs in dims), dims
    plain = _dot_batch_dims(jax.vmap(grad, (0, None)), w, x)
    assert any(lhs[:1] != (0,) for lhs, _ in plain), plain


def test_applied_rules_name_the_program_replica_vmap_compiles(monkeypatch):
    # The one decision the library and the zoo benchmark share: conv models get
    # their rewrites, attention a loop on one CPU, an MLP broadcast products;
    # elsewhere plain vmap.
    w = jax.random.normal(jax.random.key(0), (4, 4))
    x = jax.random.normal(jax.random.key(1), (3, 5, 4))
    attention = jax.make_jaxpr(jax.grad(_attention_loss))(w, x).jaxpr
    dense = jax.make_jaxpr(jax.grad(_dense_loss))(w, x).jaxpr
    model, images, _ = _setup("user_lenet")  # convolutions and max-pooling
    variables = model.init(jax.random.key(0), images)
    conv = jax.make_jaxpr(lambda v: model.apply(v, images))(variables).jaxpr
    assert fast.applied_rules("auto", attention, "cpu") == {"*": "sequential"}
    assert fast.applied_rules("auto", dense, "cpu") == {"dot_general": "broadcast"}
    assert fast.applied_rules("auto", dense, "gpu") == {}
    assert fast.applied_rules("vmap", dense, "cpu") == {}
    assert fast.applied_rules("patches", attention, "cpu") == {}
    assert fast.applied_rules("auto", conv, "cpu") == {
        "conv_general_dilated": "patches", "reduce_window_max": "reshape"
    }  # fmt: skip
    assert fast.applied_rules("auto", conv, "gpu") == {}
    monkeypatch.setattr(jax, "device_count", lambda *a: 2)
    assert fast.applied_rules("auto", attention, "cpu") == {}
    assert fast.applied_rules("auto", dense, "cpu") == {"dot_general": "broadcast"}


def test_auto_train_step_of_an_mlp_uses_broadcast_products():
    # On CPU an MLP's fused step is the "broadcast" program, not plain vmap's.
    state, x, y = _replicas("mlp")
    key = jax.random.key(2)
    auto, broadcast, vmap = (
        str(jax.make_jaxpr(lambda s, v=v: tp.train_step(s, key, x, y, vectorize=v))(state))
        for v in ("auto", "broadcast", "vmap")
    )  # fmt: skip
    assert auto == broadcast != vmap


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
    # The fallback (plain vmap, compiled) against vmap run op by op: the same
    # sums rounded in another order (XLA fuses and contracts the compiled one).
    # Small weights keep tanh off saturation, where 1 - tanh(y)**2 cancels and
    # would turn a last-bit difference of y into a 1e-4 relative one of the
    # gradient (measured with unit weights on AVX-512). Unsaturated, each
    # gradient entry is a sum of 5*8*8 = 320 well-conditioned products: at most
    # 320 ulp (1.9e-5) apart whatever the order, inside TOL.
    w = 0.1 * jax.random.normal(jax.random.key(0), (M, 3, 3, 2, 4))
    with pytest.warns(fast.RewriteFallbackWarning, match="plain jax.vmap") as record:
        for x in (jnp.ones((5, 8, 8, 2)), jnp.ones((3, 6, 6, 2))):  # two traces
            ref = jax.vmap(grad, (0, None))(w, x)
            _assert_trees_close(fused(w, x), ref)
    messages = _fallback_messages(record)
    assert len(messages) == 1, messages  # once per function and policy
    assert ".f for policy {'conv_general_dilated': 'unroll'}" in messages[0]
    assert "TypeError: argument after ** must be a mapping" in messages[0]


def test_a_sequential_loop_whose_layout_rewrite_fails_runs_as_written(monkeypatch):
    _break_the_rewrite(monkeypatch, "_eval")

    def f(w, x):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        return jnp.sum(jnp.tanh(y) ** 2)

    grad = jax.grad(f)
    w, x = (
        0.1 * jax.random.normal(jax.random.key(0), (M, 3, 3, 2, 4)),
        jnp.ones((3, 6, 6, 2)),
    )
    with pytest.warns(fast.RewriteFallbackWarning) as record:
        got = jax.jit(fast.replica_vmap(grad, (0, None), policy="sequential"))(w, x)
    (message,) = _fallback_messages(record)
    assert "tempering.fast.single_replica_rewrite could not rewrite" in message
    assert "using the function as written instead" in message
    _assert_trees_close(got, jax.vmap(grad, (0, None))(w, x))


def test_an_init_whose_rewrite_fails_says_which_rewrite_failed(monkeypatch):
    _break_the_rewrite(monkeypatch, "_eval")
    model = models.MLP((8,), 3)  # a new model: no init traced before
    with pytest.warns(fast.RewriteFallbackWarning) as record:
        state = tp.create_replicas(
            jax.random.key(0), model, tp.sgd(0.1), jnp.ones((2, 5)), num_replicas=M
        )
    (message,) = _fallback_messages(record)
    assert "tempering.fast.single_replica_rewrite could not rewrite" in message
    assert "replica_vmap" not in message and "vectorize" not in message
    assert "filter tempering.fast.RewriteFallbackWarning to silence this" in message
    assert state.num_replicas == M


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


# jax < 0.4.34 has no vmap_method (it would be passed to the callback as an
# argument); its default there, vectorized=False, is the same sequential map.
_SEQUENTIAL_CALLBACK = (
    {"vmap_method": "sequential"}
    if "vmap_method" in inspect.signature(jax.pure_callback).parameters
    else {}
)


class UnusualNet(nn.Module):
    """A conv net with primitives the rewrite has no rule for."""

    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = jnp.cumsum(x, axis=1)  # cumsum
        x = jnp.sort(x, axis=-1)  # sort
        x = lax.top_k(x, 3)[0]  # top_k
        x = _soft_sign(x)  # custom_jvp
        x = x + jax.pure_callback(  # a host callback
            _host_sin,
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            lax.stop_gradient(x),
            **_SEQUENTIAL_CALLBACK,
        )
        x = lax.fori_loop(0, 2, lambda i, c: 0.5 * c + jnp.tanh(c), x)  # while
        return nn.Dense(3)(x.reshape((x.shape[0], -1)))


@jax.custom_jvp
def _soft_sign(x):
    return x / (1 + jnp.abs(x))


@_soft_sign.defjvp
def _soft_sign_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _soft_sign(x), t / (1 + jnp.abs(x)) ** 2


def _host_sin(x):
    return np.sin(np.asarray(x)).astype(x.dtype)


def test_unusual_primitives_are_rewritten_or_fall_back_never_an_error(monkeypatch):
    # cumsum, sort, top_k, a custom_jvp function, a pure_callback and a while
    # loop: the rewrite binds them as they are (no warning). A policy that
    # routes a call-like primitive (custom_jvp_call: ReLU) through a
    # formulation cannot be rewritten: it falls back to plain vmap with a
    # warning. Either way the results equal plain vmap's, forward and
    # gradients.
    monkeypatch.setattr(fast, "_warned", set())
    model = UnusualNet()
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 1)), jnp.float32)
    y = jnp.asarray([0, 2], jnp.int32)
    keys = jax.random.split(jax.random.key(0), M)
    params = jax.jit(jax.vmap(lambda k: model.init(k, x)["params"]))(keys)

    def loss(params, x):
        logits = model.apply({"params": params}, x, train=True)
        return tp.state.cross_entropy(logits, y).mean(), logits

    grad_fn = jax.value_and_grad(loss, has_aux=True)  # the logits: forward
    routed = {"conv_general_dilated": "unroll", "custom_jvp_call": "unroll"}
    ref = jax.jit(jax.vmap(grad_fn, in_axes=(0, None)))(params, x)
    for policy in ("patches+reshape", routed):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            fused = fast.replica_vmap(grad_fn, in_axes=(0, None), policy=policy)
            got = jax.jit(fused)(params, x)
        messages = _fallback_messages(record)
        assert len(messages) == int(policy is routed), messages
        if policy is routed:
            assert "custom_jvp_call" in messages[0] and "plain jax.vmap" in messages[0]
        _assert_trees_close(got, ref)


# --- random bits drawn flat -------------------------------------------------


def _random_bits_shapes(jaxpr) -> list[tuple]:
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "random_bits":
            shapes.append(tuple(eqn.params["shape"]))
        for sub in fast._subjaxprs(eqn.params):
            shapes += _random_bits_shapes(sub)
    return shapes


def _draws(key, keys):
    # Dropout's mask (bernoulli, inside its own jit), a normal initialiser and
    # raw bits of every width but 64 (which needs jax_enable_x64), all N-D.
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return (
        jax.random.bernoulli(k1, 0.9, (5, 3, 7)),
        jax.random.truncated_normal(k2, -2.0, 2.0, (2, 3, 4, 5)),
        jax.random.bits(k3, (6, 5), jnp.uint8),
        jax.random.bits(k4, (4, 1, 3), jnp.uint16),
        jax.random.uniform(keys[0], (9, 2)),  # a key passed in
    )


@pytest.mark.parametrize("partitionable", [True, False])
def test_random_bits_drawn_flat_are_the_same_bits(partitionable):
    previous = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", partitionable)
    try:
        keys = jax.random.split(jax.random.key(3), M)
        extra = jax.random.split(jax.random.key(4), (M, 1))
        flat = fast.single_replica_rewrite(_draws)
        jaxpr = jax.make_jaxpr(flat)(keys[0], extra[0]).jaxpr
        assert _random_bits_shapes(jaxpr), "nothing drawn"
        assert all(len(s) == 1 for s in _random_bits_shapes(jaxpr))
        assert any(
            len(s) > 1
            for s in _random_bits_shapes(
                jax.make_jaxpr(_draws)(keys[0], extra[0]).jaxpr
            )
        )
        chex.assert_trees_all_equal(
            jax.jit(flat)(keys[0], extra[0]), jax.jit(_draws)(keys[0], extra[0])
        )
        chex.assert_trees_all_equal(
            jax.jit(jax.vmap(flat))(keys, extra), jax.jit(jax.vmap(_draws))(keys, extra)
        )
        # the vectorised step's rewrite draws them flat too, whatever its policy
        policy = fast.replica_vmap(_draws, policy={"dot_general": "broadcast"})
        chex.assert_trees_all_equal(
            jax.jit(policy)(keys, extra), jax.jit(jax.vmap(_draws))(keys, extra)
        )
    finally:
        jax.config.update("jax_threefry_partitionable", previous)


def test_random_bits_of_other_key_implementations_are_drawn_as_written():
    def draw(key):
        return jax.random.bits(key, (4, 3))

    key = jax.random.key(0, impl="rbg")
    flat = fast.single_replica_rewrite(draw)
    assert _random_bits_shapes(jax.make_jaxpr(flat)(key).jaxpr) == [(4, 3)]
    chex.assert_trees_all_equal(jax.jit(flat)(key), jax.jit(draw)(key))


def test_dropout_steps_and_the_init_draw_flat_bits_the_same_values():
    # The LeNet has dropout: its masks and its initialisers are drawn flat in
    # the programs the library compiles, with the values of the model as
    # written (the init: test_state's replica-m test; the step: plain vmap).
    state, x, y = _replicas("lenet")
    key = jax.random.key(7)
    init = functools.partial(
        tp.state._init_replicas.__wrapped__, model=state.model, tx=state.tx,
        num_replicas=M, same_init=False,
    )  # fmt: skip
    init_shapes = _random_bits_shapes(jax.make_jaxpr(init)(key, x[:1], {}).jaxpr)
    assert len(init_shapes) >= 5 and all(len(s) == 1 for s in init_shapes)
    for policy in ("auto", "sequential"):
        step = functools.partial(tp.train_step, vectorize=policy)
        shapes = _random_bits_shapes(jax.make_jaxpr(step)(state, key, x, y).jaxpr)
        assert shapes and all(len(s) == 1 for s in shapes)
        got, _ = train_step(state, key, x, y, vectorize=policy)
        want, _ = train_step(state, key, x, y, vectorize="vmap")
        _assert_trees_close(got.params, want.params)


# --- edges found by review: no silent error, no needless fallback -----------------


def _conv3d(w, x):
    return lax.conv_general_dilated(
        x, w, (1, 1, 1), "VALID", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )


def _scaled_product(w, x, s):
    return (x @ w) * s


def _conv_empty(w, x):  # the kernel outgrows the unpadded input
    return lax.conv_general_dilated(x, w, (1, 1), "VALID")


def _edge_case(name):
    rng = np.random.default_rng(0)
    if name == "3d_patches":  # window label "c" once met the channels' "c"
        w = jnp.asarray(rng.normal(size=(2, 3, 3, 2, 2, 4)), jnp.float32)
        x = jnp.asarray(rng.normal(size=(2, 5, 5, 5, 2)), jnp.float32)
        return _conv3d, (0, None), "patches", (w, x)
    if name == "weak_scalar":  # bfloat16 * a weakly typed scalar stays bfloat16
        w = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.bfloat16)
        x = jnp.asarray(rng.normal(size=(5, 4)), jnp.bfloat16)
        return _scaled_product, (0, None, None), "broadcast", (w, x, jnp.asarray(0.1))
    if name == "python_scalar":
        w = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
        x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
        return _scaled_product, (0, None, None), "broadcast", (w, x, 0.5)
    w = jnp.asarray(rng.normal(size=(2, 4, 3, 6, 6)), jnp.float32)  # (M, O, I, kh, kw)
    x = jnp.asarray(rng.normal(size=(2, 3, 5, 5)), jnp.float32)
    return _conv_empty, (0, None), "unroll", (w, x)


@pytest.mark.parametrize(
    "name", ["3d_patches", "weak_scalar", "python_scalar", "empty_output"]
)
def test_rewrite_edges_equal_vmap_without_falling_back(name):
    if name == "weak_scalar" and not fast._WEAK_TYPED_STRUCTS:
        pytest.skip("this JAX traces no weakly typed ShapeDtypeStruct")
    fun, in_axes, policy, args = _edge_case(name)
    expected = jax.vmap(fun, in_axes=in_axes)(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fast.RewriteFallbackWarning)
        got = fast.replica_vmap(fun, in_axes=in_axes, policy=policy)(*args)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=1e-5,
        atol=1e-5,
    )  # fmt: skip
