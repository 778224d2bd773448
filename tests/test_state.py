"""The stacked replica state and the fused vectorised step."""

import functools
import itertools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    BAD_INPUTS_DOC,
    ENGINE_PROGRAMS,
    FEATURES,
    INF,
    NAN,
    REPLICAS,
    Case,
    DropNet,
    PlainNet,
    T,
    TinyBNNet,
    TinyMLP,
    V,
    bad_input_params,
    bad_input_tables,
    check_raises_before_compiling,
    hand_ladder,
    leaves_equal,
    train_step,
)

import tempering as tp
from tempering import loops
from tempering.ladder import assign_rungs
from tempering.loops import SegmentSettings
from tempering.sources import ArraySource
from tempering.state import default_metrics
from tempering.step import replica_train_step
from tempering.zoo import models

M = 3


def make_state(tx, inputs, model=None, **kwargs):
    ladder = kwargs.pop("ladder", tp.make_ladder(learning_rate=[0.01, 0.05, 0.2]))
    if "dropout_rate" in kwargs:
        kwargs["hyperparams"] = {"dropout_rate": kwargs.pop("dropout_rate")}
    return tp.create_replicas(
        jax.random.key(0), model or TinyMLP(), tx, inputs[:4], ladder=ladder, **kwargs
    )


def replica(tree, m):
    return jax.tree.map(lambda x: x[m], tree)


def test_stacked_state_shapes(tx, blobs):
    (x, _), _ = blobs
    state = make_state(tx, x, dropout_rate=0.25)
    chex.assert_tree_shape_prefix(state.params, (M,))
    chex.assert_tree_shape_prefix(state.opt_state, (M,))
    chex.assert_shape([state.dropout_rate, state.learning_rate], (M,))
    assert not hasattr(state, "rungs")  # an exchange's state holds the rungs
    chex.assert_shape(state.step, ())
    assert state.learning_rate.dtype == jnp.float32
    np.testing.assert_allclose(state.learning_rate, [0.01, 0.05, 0.2], rtol=1e-6)
    np.testing.assert_allclose(state.dropout_rate, 0.25)
    kernels = state.params["Dense_0"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1]), (
        "replicas should start independently"
    )
    same = make_state(tx, x, same_init=True).params["Dense_0"]["kernel"]
    np.testing.assert_array_equal(same[0], same[1])


def test_replica_m_is_model_init_with_the_mth_split_key(tx, blobs):
    (x, _), _ = blobs
    state = make_state(tx, x, model=TinyBNNet())
    keys = jax.random.split(jax.random.key(0), M)
    for m in range(M):
        variables = TinyBNNet().init({"params": keys[m], "dropout": keys[m]}, x[:4])
        chex.assert_trees_all_equal(replica(state.params, m), variables["params"])
        chex.assert_trees_all_equal(
            replica(state.batch_stats, m), variables["batch_stats"]
        )


def test_create_replicas_compiles_one_program_for_all_replicas(tx):
    # What a notebook waits for: the M inits are one program (a loop over the
    # replicas), not M calls plus the compiles of splitting keys and stacking.
    compiles = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    x = np.zeros((2, 23), np.float32)  # a shape no other test compiles for
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 7)
    key = jax.random.key(5)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        state = tp.create_replicas(key, TinyMLP(), tx, x, ladder=ladder)
        jax.block_until_ready(state.params)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    chex.assert_shape(state.params["Dense_0"]["kernel"], (7, 23, 16))
    # the init, and at most the sample's transfer and two small conversions
    # (one-time compiles another test may have cached); 14 before
    assert 1 <= len(compiles) <= 4, len(compiles)


def test_a_cell_run_again_with_an_equal_optimiser_compiles_nothing(blobs):
    # A notebook cell run again builds a new tp.sgd(...): equal arguments give
    # the same optimiser, so the programs of the last run are found again.
    (x, y), (xv, yv) = blobs
    x = np.asarray(x)[:, :3]  # a shape no other test compiles for
    assert tp.sgd(0.05, momentum=0.9) is tp.sgd(0.05, momentum=0.9)
    assert tp.sgd(0.05, momentum=0.9) is not tp.sgd(0.05, momentum=0.5)
    assert tp.sgd(jnp.float32(0.05)) is not tp.sgd(jnp.float32(0.05))  # arrays

    def cell():
        ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 3)
        state = tp.create_replicas(
            jax.random.key(0), TinyMLP(), tp.sgd(0.05, momentum=0.9), x[:2],
            ladder=ladder,
        )  # fmt: skip
        return tp.pt_train(
            state, ladder, jax.random.key(1), train_data=(x, y),
            validation_data=(np.asarray(xv)[:, :3], yv), num_steps=20,
            exchange_interval=10, batch_size=16,
        )  # fmt: skip

    compiles = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    first = cell()
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        again = cell()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    chex.assert_trees_all_equal(again.state.params, first.state.params)


def test_learning_rate_stays_float32_with_bfloat16_params(blobs):
    (x, _), _ = blobs
    tx = tp.sgd(0.1, momentum=0.9)
    state = make_state(tx, x)
    params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), state.params)
    opt16 = jax.vmap(tx.init)(params16)
    assert opt16.hyperparams["learning_rate"].dtype == jnp.float32


def test_optimizer_without_injected_learning_rate_is_rejected(blobs):
    (x, _), _ = blobs
    # a learning-rate ladder needs an optimiser that injects the learning rate
    with pytest.raises(
        ValueError, match=r"unknown hyperparameter.*learning_rate.*inject_hyperparams"
    ):
        make_state(optax.sgd(0.1), x)
    # without a ladder such an optimiser is fine; its lr is just not per replica
    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), optax.sgd(0.1), x[:4], num_replicas=M
    )
    assert set(state.hyperparams) == {"dropout_rate"}
    with pytest.raises(ValueError, match=r"unknown hyperparameter.*learning_rate"):
        tp.set_hyperparams(state, learning_rate=0.1)


def test_vmapped_step_equals_per_replica_loop(tx, blobs):
    (x, y), _ = blobs
    state = make_state(tx, x, dropout_rate=0.3)
    state = tp.set_hyperparams(state, dropout_rate=jnp.array([0.0, 0.3, 0.6]))
    batch_x, batch_y, key = jnp.asarray(x[:32]), jnp.asarray(y[:32]), jax.random.key(3)
    new, info = train_step(state, key, batch_x, batch_y)
    keys = jax.random.split(key, M)
    single = jax.jit(functools.partial(replica_train_step, state))
    for m in range(M):
        params, _, opt_state, loss = single(
            replica(state.params, m),
            {},
            replica(state.opt_state, m),
            replica(state.hyperparams, m),
            keys[m],
            batch_x,
            batch_y,
        )
        chex.assert_trees_all_close(
            params, replica(new.params, m), rtol=1e-5, atol=1e-6
        )
        chex.assert_trees_all_close(
            opt_state, replica(new.opt_state, m), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(loss, info.loss[m], rtol=1e-5)
    assert int(new.step) == 1


def test_per_replica_learning_rate_scales_the_update(blobs):
    (x, y), _ = blobs
    tx = tp.sgd(0.1)  # plain SGD: the update is exactly -lr * grad
    ladder = tp.make_ladder(learning_rate=[0.01, 0.02, 0.04])
    state = make_state(tx, x, ladder=ladder, same_init=True)
    new, _ = train_step(
        state, jax.random.key(0), jnp.asarray(x[:32]), jnp.asarray(y[:32])
    )
    delta = jax.tree.map(lambda a, b: a - b, new.params, state.params)
    d = delta["Dense_0"]["kernel"]
    # params - old params rounds at ~1e-7; the updates themselves are ~1e-3
    np.testing.assert_allclose(d[1], 2 * d[0], rtol=1e-3, atol=5e-7)
    np.testing.assert_allclose(d[2], 4 * d[0], rtol=1e-3, atol=5e-7)
    assert np.abs(d[0]).max() > 1e-4


def test_per_replica_dropout_rate_changes_the_update(blobs):
    (x, y), _ = blobs
    tx = tp.sgd(0.1)
    state = make_state(
        tx, x, ladder=tp.make_ladder(learning_rate=[0.1, 0.2, 0.3]), same_init=True
    )
    state = tp.set_hyperparams(
        state, learning_rate=0.1, dropout_rate=jnp.array([0.0, 0.0, 0.5])
    )
    new, _ = train_step(
        state, jax.random.key(0), jnp.asarray(x[:32]), jnp.asarray(y[:32])
    )
    k = new.params["Dense_1"]["kernel"]
    # replicas 0 and 1: same weights, lr, batch, no dropout -> identical updates
    np.testing.assert_allclose(k[0], k[1], rtol=1e-6)
    assert not np.allclose(k[0], k[2], rtol=1e-3)


def test_batchnorm_statistics_are_per_replica(blobs):
    (x, y), _ = blobs
    tx = tp.sgd(0.05)
    state = make_state(tx, x, model=TinyBNNet())
    chex.assert_tree_shape_prefix(state.batch_stats, (M,))
    new, _ = train_step(
        state, jax.random.key(0), jnp.asarray(x[:32]), jnp.asarray(y[:32])
    )
    mean = new.batch_stats["BatchNorm_0"]["mean"]
    assert not np.allclose(
        mean[0], mean[1]
    )  # each replica its own weights -> own stats
    assert not np.allclose(mean[0], state.batch_stats["BatchNorm_0"]["mean"][0])


def test_assign_rungs_moves_only_hyperparameters(tx, blobs):
    (x, _), _ = blobs
    ladder = tp.make_ladder(
        learning_rate=[0.01, 0.02, 0.04],
        dropout_rate=[0.1, 0.2, 0.3],
        temperatures=[1, 2, 3],
    )
    state = make_state(tx, x, ladder=ladder)
    moved = assign_rungs(state, ladder, jnp.array([2, 0, 1]))
    np.testing.assert_allclose(moved.learning_rate, [0.04, 0.01, 0.02], rtol=1e-6)
    np.testing.assert_allclose(moved.dropout_rate, [0.3, 0.1, 0.2], rtol=1e-6)
    chex.assert_trees_all_equal(moved.params, state.params)


def test_segment_compiles_once_for_any_length(tx, blobs):
    (x, y), _ = blobs
    state = make_state(tx, x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def segment(state, key, steps):
        return loops.train_segment(
            state,
            key,
            jax.random.key(1),
            jnp.asarray(x),
            jnp.asarray(y),
            steps,
            settings=SegmentSettings(batch_size=32),
        )

    for steps in (1, 3, 7):
        state, loss = segment(state, jax.random.key(steps), steps)
    assert int(state.step) == 11
    chex.assert_shape(loss, (M,))


@pytest.mark.parametrize("shared_batch", [True, False])
def test_segment_compiles_the_batch_order_once(tx, blobs, shared_batch):
    # The segment's first step draws the order inside the loop; a draw before
    # the loop as well would compile the permutation (its sorts) twice.
    (x, y), _ = blobs
    state = make_state(tx, x)
    data_key = jax.random.key(1)
    settings = SegmentSettings(batch_size=32, shared_batch=shared_batch)
    segment = jax.jit(loops.train_segment, static_argnames="settings")
    text = segment.lower(
        state, jax.random.key(0), data_key, jnp.asarray(x), jnp.asarray(y), 5,
        settings=settings, start=2,
    ).as_text()  # fmt: skip
    order = jax.jit(loops._epoch_order, static_argnums=(2, 3, 4))
    one_draw = order.lower(data_key, 0, len(y), M, shared_batch).as_text()
    assert one_draw.count("stablehlo.sort") >= 1
    assert text.count("stablehlo.sort") == one_draw.count("stablehlo.sort")


def test_segments_see_the_same_batches_as_one_long_run(tx, blobs):
    (x, y), _ = blobs
    state = make_state(tx, x)
    data = (jax.random.key(1), jnp.asarray(x), jnp.asarray(y))
    seg = jax.jit(
        lambda s, n, start=0: loops.train_segment(
            s,
            jax.random.key(5),
            *data,
            n,
            settings=SegmentSettings(batch_size=32),
            start=start,
        )
    )
    # dropout is off, so only the batch order matters: 6 steps = 2 + 4 steps
    one, _ = seg(state, 6)
    two, _ = seg(seg(state, 2)[0], 4)
    chex.assert_trees_all_close(one.params, two.params, rtol=1e-5, atol=1e-6)
    # 12 steps, across the epoch's end at step 8 (256 examples, batches of 32),
    # as 3 + 6 + 3 steps, the later segments starting part-way through a round
    whole, _ = seg(state, 12)
    parts = seg(seg(seg(state, 3)[0], 6, 3)[0], 3, 9)[0]
    chex.assert_trees_all_close(whole.params, parts.params, rtol=1e-5, atol=1e-6)


def test_a_segment_takes_numpy_data_and_refuses_a_batch_above_it(tx, blobs):
    """numpy arrays raised a TracerArrayConversionError (numpy indexing with a
    traced index), a batch larger than the data an internal slice TypeError."""
    (x, y), _ = blobs
    state = make_state(tx, x)
    keys = (jax.random.key(5), jax.random.key(1))
    settings = SegmentSettings(batch_size=32)
    on_device = loops.train_segment(
        state, *keys, jnp.asarray(x), jnp.asarray(y), 3, settings=settings
    )
    from_numpy = loops.train_segment(state, *keys, x, y, 3, settings=settings)
    chex.assert_trees_all_equal(from_numpy, on_device)
    with pytest.raises(ValueError, match=r"settings.batch_size 300 exceeds the 256"):
        loops.train_segment(
            state, *keys, x, y, 3, settings=SegmentSettings(batch_size=300)
        )


def test_per_replica_batches_differ_from_shared(tx, blobs):
    (x, y), _ = blobs
    state = make_state(tx, x, same_init=True)
    state = tp.set_hyperparams(state, learning_rate=0.05)
    args = (jax.random.key(5), jax.random.key(1), jnp.asarray(x), jnp.asarray(y), 3)
    shared, _ = loops.train_segment(
        state, *args, settings=SegmentSettings(batch_size=32, shared_batch=True)
    )
    own, _ = loops.train_segment(
        state, *args, settings=SegmentSettings(batch_size=32, shared_batch=False)
    )
    k_shared, k_own = (
        shared.params["Dense_0"]["kernel"],
        own.params["Dense_0"]["kernel"],
    )
    np.testing.assert_allclose(
        k_shared[0], k_shared[1], rtol=1e-6
    )  # same init, lr, batches
    assert not np.allclose(k_own[0], k_own[1])


def test_evaluate_matches_direct_computation(tx, blobs):
    (x, y), (xv, yv) = blobs
    state = make_state(tx, x)
    metrics = tp.evaluate(
        state, jnp.asarray(xv), jnp.asarray(yv), batch_size=24
    )  # 64 = 24+24+16
    for m in range(M):
        logits = TinyMLP().apply({"params": replica(state.params, m)}, jnp.asarray(xv))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yv).mean()
        acc = (logits.argmax(-1) == yv).mean()
        np.testing.assert_allclose(metrics.loss[m], loss, rtol=1e-5)
        np.testing.assert_allclose(metrics.accuracy[m], acc, rtol=1e-6)


def test_evaluate_checks_class_indices_and_takes_lists(tx, blobs):
    """Labels outside the outputs scored a loss of inf and some accuracy,
    silently; lists failed with an AttributeError or "inputs must be numeric
    arrays, got inputs of dtype float64"."""
    (x, _), (xv, yv) = blobs
    state = make_state(tx, x)
    with pytest.raises(ValueError, match=r"targets: labels must lie in \[0, 3\)"):
        tp.evaluate(state, xv, yv + 1)
    with pytest.raises(ValueError, match=r"trailing axis of 1.*labels\[\.\.\., 0\]"):
        tp.evaluate(state, xv, yv[:, None])
    listed = tp.evaluate(state, xv.tolist(), yv.tolist())
    assert leaves_equal(listed, tp.evaluate(state, xv, yv))
    traced = jax.jit(tp.evaluate)(state, xv, yv)  # traced labels: not checked
    np.testing.assert_allclose(traced.loss, listed.loss, rtol=1e-6)


def test_evaluate_called_again_compiles_nothing_and_matches_under_jit(tx, blobs):
    # A notebook evaluates after every run: called op by op, its scan was
    # compiled again at every call (0.3 s each for an MLP on MNIST-1D).
    (x, _), (xv, yv) = blobs
    state = make_state(tx, x)
    xv, yv = np.asarray(xv)[:29], np.asarray(yv)[:29]  # shapes no other test uses
    first = tp.evaluate(state, xv, yv, batch_size=11)
    compiles = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        again = tp.evaluate(state, xv, yv, batch_size=11)
        jax.block_until_ready(again.loss)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    chex.assert_trees_all_equal(again, first)
    jitted = jax.jit(tp.evaluate, static_argnames="batch_size")
    chex.assert_trees_all_equal(jitted(state, xv, yv, batch_size=11), first)


class _UnhashableAccuracy:
    __hash__ = None  # type: ignore[assignment]

    def __call__(self, outputs, targets):
        return {"accuracy": outputs.argmax(-1) == targets}


def test_evaluate_takes_an_unhashable_metrics_fn(tx, blobs):
    (x, _), (xv, yv) = blobs
    state = make_state(tx, x)
    metrics = tp.evaluate(state, xv, yv, metrics_fn=_UnhashableAccuracy())
    chex.assert_trees_all_close(metrics, tp.evaluate(state, xv, yv))


@pytest.mark.parametrize(
    "metrics_fn, loss_fn, match",
    [
        (lambda o, y: {"acc": (o.argmax(-1) == y).mean()}, None, r"metrics_fn .*'acc': \(\)"),
        (lambda o, y: {"p": jax.nn.softmax(o)}, None, r"metrics_fn .*'p': \(2, 3\)"),
        (None, lambda o, y: optax.softmax_cross_entropy_with_integer_labels(o, y).mean(),
         r"loss_fn must return one loss per example, shape \(B,\).* got shape \(\)"),
    ],
)  # fmt: skip
def test_evaluate_refuses_values_that_are_not_per_example(
    tx, blobs, metrics_fn, loss_fn, match
):
    # A (B, K) metric with K the chunk size was summed over the wrong axis,
    # silently; a mean failed with a message about the targets.
    (x, _), (xv, yv) = blobs
    state = make_state(tx, x)
    if loss_fn is not None:
        state = state.replace(loss_fn=loss_fn)
    with pytest.raises(ValueError, match=match):
        tp.evaluate(state, xv, yv, batch_size=3, metrics_fn=metrics_fn)


def test_diverged_replica_does_not_poison_the_others(tx, blobs):
    (x, y), _ = blobs
    state = make_state(tx, x)
    poison = jnp.array([0.0, jnp.nan, 0.0])
    blown = state.replace(
        params=jax.tree.map(
            lambda p: p + poison.reshape((M,) + (1,) * (p.ndim - 1)), state.params
        )
    )
    args = (jax.random.key(5), jax.random.key(1), jnp.asarray(x), jnp.asarray(y), 5)
    settings = SegmentSettings(batch_size=32)
    ref, _ = loops.train_segment(state, *args, settings=settings)
    bad, loss = loops.train_segment(blown, *args, settings=settings)
    assert not np.all(np.isfinite(np.asarray(bad.params["Dense_0"]["kernel"][1])))
    for m in (0, 2):
        chex.assert_trees_all_equal(replica(bad.params, m), replica(ref.params, m))
    metrics = tp.evaluate(bad, jnp.asarray(x), jnp.asarray(y))
    loss = np.asarray(metrics.loss)
    assert np.isinf(loss[1]) and np.all(np.isfinite(loss[[0, 2]]))


class OtherNamesNet(nn.Module):
    """A third-party style model: other argument names, flax-style rng use."""

    @nn.compact
    def __call__(self, x, training: bool, drop):
        x = nn.relu(nn.Dense(8)(x))
        x = tp.Dropout()(x, drop, deterministic=not training)
        return nn.Dense(3)(x)


def test_any_flax_model_with_named_train_and_rate_arguments(tx, blobs):
    (x, y), _ = blobs
    state = make_state(
        tx, x, model=OtherNamesNet(), train_kwarg="training", model_inputs=("drop",),
        hyperparams={"drop": 0.1},
    )  # fmt: skip
    assert state.model_inputs == ("drop",)
    assert set(state.hyperparams) == {"learning_rate", "drop"}
    np.testing.assert_allclose(state.hyperparams["drop"], 0.1)
    state = tp.set_hyperparams(state, drop=jnp.array([0.0, 0.5, 0.9]))
    new, info = train_step(
        state, jax.random.key(0), jnp.asarray(x[:32]), jnp.asarray(y[:32])
    )
    chex.assert_shape(info.loss, (M,))
    assert np.all(np.isfinite(np.asarray(info.loss)))
    metrics = tp.evaluate(new, jnp.asarray(x), jnp.asarray(y))
    chex.assert_shape(metrics.accuracy, (M,))


@pytest.mark.parametrize("shared_batch", [True, False])
def test_host_and_device_loops_give_the_same_segment(tx, blobs, shared_batch):
    (x, y), (xv, yv) = blobs
    state = tp.set_hyperparams(make_state(tx, x), dropout_rate=0.3)
    # 11 steps of 32 from 256 examples cross an epoch boundary (8 steps/epoch)
    key, data_key = jax.random.key(5), jax.random.key(1)
    inputs, targets = jnp.asarray(x), jnp.asarray(y)
    settings = SegmentSettings(batch_size=32, shared_batch=shared_batch)
    ref, ref_loss = jax.jit(loops.train_segment, static_argnames="settings")(
        state, key, data_key, inputs, targets, 11, settings=settings
    )
    val = ArraySource(jnp.asarray(xv), jnp.asarray(yv))
    for loop in ("host", "device"):
        start = jax.tree.map(jnp.copy, state)  # run_segment donates its state
        new, loss = loops.run_segment(
            start, key, ArraySource(inputs, targets), 11, data_key=data_key,
            settings=settings, loop=loop,
        )  # fmt: skip
        assert int(new.step) == 11
        chex.assert_trees_all_close(new.params, ref.params, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(loss, ref_loss, rtol=1e-5)
        metrics = loops.run_evaluate(
            new, val, batch_size=24, metrics_fn=default_metrics, loop=loop
        )
        chex.assert_trees_all_close(metrics, tp.evaluate(new, *val), rtol=1e-5)


def test_resolve_loop(blobs):
    resolve_loop = loops.resolve_loop
    assert resolve_loop("auto", backend="cpu") == "host"
    assert resolve_loop("auto", backend="cpu", has_convolution=False) == "device"
    mlp = make_state(tp.sgd(), np.zeros((4, 5), np.float32))
    assert loops.loop_for(mlp, jnp.zeros((4, 5)), "auto") == "device"
    assert loops.loop_for(mlp, jnp.zeros((4, 5)), "host") == "host"
    conv = tp.create_replicas(
        jax.random.key(0), models.lenet5_emnist(), tp.sgd(), np.zeros((2, 28, 28)),
        num_replicas=2,
    )  # fmt: skip
    assert loops.loop_for(conv, jnp.zeros((2, 28, 28)), "auto") == resolve_loop("auto")
    assert resolve_loop("auto", backend="gpu") == "device"
    assert resolve_loop("device") == "device"
    with pytest.raises(ValueError, match="loop must be one of"):
        resolve_loop("python")
    # the loop is a setting of the run, checked before anything runs
    with pytest.raises(ValueError, match="loop must be one of"):
        tp.RunConfig(num_steps=2, interval=1, batch_size=32, loop="gpu")


_TAGS = itertools.count(1)


class HalfNet(nn.Module):
    """PlainNet in bfloat16 params."""

    tag: int = 0

    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(3, param_dtype=jnp.bfloat16)(x)


def create(ctx: Any, /, **overrides: Any) -> Any:
    """``create_replicas`` of a fresh one-layer net, with ``overrides``."""
    kwargs = dict(
        key=ctx.key, model=DropNet(tag=next(_TAGS)), tx=ctx.tx, sample_input=ctx.x[:1],
        num_replicas=REPLICAS,
    )  # fmt: skip
    kwargs.update(overrides)
    return tp.create_replicas(**kwargs)


# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- create_replicas ------------------------------------------------------
    Case("sgd-lr-string", lambda c: tp.sgd("0.1"), T, r"learning_rate must be a number, got '0.1'", fixed=True),
    Case("sgd-lr-none", lambda c: tp.sgd(None), T, r"learning_rate must be a number, got None", fixed=True),
    Case("sgd-lr-negative", lambda c: tp.sgd(-0.1), V, r"learning_rate must be finite and > 0", fixed=True),
    Case("sgd-momentum-2", lambda c: tp.sgd(0.1, momentum=2.0), V, r"momentum must lie in \[0, 1\)", fixed=True),
    Case("sgd-weight-decay-negative", lambda c: tp.sgd(0.1, weight_decay=-1), V, r"weight_decay must be finite and >= 0", fixed=True),
    Case("sgd-nesterov-string", lambda c: tp.sgd(0.1, 0.9, nesterov="no"), T, r"nesterov must be True or False", fixed=True),
    Case("replica-index-string", lambda c: tp.replica(c.state, "0"), T, r"index must be an int, got '0'", fixed=True),
    Case("replica-index-bool", lambda c: tp.replica(c.state, True), T, r"index must be an int, got True", fixed=True),
    Case("replica-state-none", lambda c: tp.replica(None, 0), T, r"replica takes a ReplicaState", fixed=True),
    Case("create-dropout-1", lambda c: create(c, hyperparams={"dropout_rate": 1.0}), V, r"dropout_rate.*\[0, 1\)"),
    Case("create-dropout-nan", lambda c: create(c, hyperparams={"dropout_rate": NAN}), V, r"dropout_rate.*non-finite"),
    Case("create-lr-negative", lambda c: create(c, hyperparams={"learning_rate": -0.1}), V, r"learning_rate.*\(0, ", fixed=True),
    Case("create-lr-zero", lambda c: create(c, hyperparams={"learning_rate": 0.0}), V, r"learning_rate.*\(0, ", fixed=True),
    Case("create-lr-huge", lambda c: create(c, hyperparams={"learning_rate": 1e9}), V, r"learning_rate in hyperparams must be at most 10", fixed=True),
    Case("create-lr-inf", lambda c: create(c, hyperparams={"learning_rate": INF}), V, r"learning_rate.*non-finite", fixed=True),
    Case("create-lr-string", lambda c: create(c, hyperparams={"learning_rate": "fast"}), T, r"learning_rate.*numbers", fixed=True),
    Case("create-unknown-hyperparam", lambda c: create(c, hyperparams={"lr": 0.1}), V, r"unknown hyperparameter.*'lr'", fixed=True),
    Case("create-hyperparams-not-mapping", lambda c: create(c, hyperparams=[("learning_rate", 0.1)]), T, r"hyperparams must be a mapping", fixed=True),
    Case("create-key-int", lambda c: create(c, key=0), T, r"key must be a JAX PRNG key"),
    Case("create-key-float", lambda c: create(c, key=1.5), T, r"key must be a JAX PRNG key"),
    Case("create-key-batch", lambda c: create(c, key=jax.random.split(c.key, 2)), V, r"key must be a single PRNG key"),
    Case("create-num-replicas-0", lambda c: create(c, num_replicas=0), V, r"num_replicas"),
    Case("create-num-replicas-negative", lambda c: create(c, num_replicas=-2), V, r"num_replicas"),
    Case("create-num-replicas-float", lambda c: create(c, num_replicas=2.5), T, r"num_replicas must be an int", fixed=True),
    Case("create-num-replicas-missing", lambda c: create(c, num_replicas=None), V, r"num_replicas"),
    Case("create-num-replicas-vs-ladder", lambda c: create(c, ladder=c.ladder, num_replicas=3), V, r"num_replicas=3.*4 rungs"),
    Case("create-ladder-not-ladder", lambda c: create(c, ladder={"learning_rate": [0.1, 0.2]}), T, r"ladder must be a tempering.Ladder"),
    Case("create-dropout-ladder-plain-model", lambda c: create(c, model=PlainNet(tag=next(_TAGS)), ladder=tp.linear_ladder("dropout_rate", 0.0, 0.5, REPLICAS), num_replicas=None), V, r"dropout_rate.*model_inputs", fixed=True),
    Case("create-hand-ladder-decreasing", lambda c: create(c, ladder=hand_ladder([0.4, 0.3, 0.2, 0.1]), num_replicas=None), V, r"temperatures must increase", fixed=True),
    Case("create-hand-ladder-fewer-values", lambda c: create(c, ladder=hand_ladder([0.1, 0.2, 0.3, 0.4], lr=[0.1, 0.2]), num_replicas=None), V, r"values\['learning_rate'\] must have one value per rung", fixed=True),
    Case("create-hand-ladder-values-list", lambda c: create(c, ladder=tp.Ladder([0.1, 0.2], jnp.array([0.1, 0.2])), num_replicas=None), T, r"ladder.values must be a mapping", fixed=True),
    Case("create-weight-decay-ladder-not-injected", lambda c: create(c, ladder=tp.linear_ladder("weight_decay", 0.0, 0.1, REPLICAS, temperatures=[1.0, 2.0, 3.0, 4.0]), num_replicas=None), V, r"ladder: unknown hyperparameter.*weight_decay.*inject_hyperparams\(optax.sgd\).*l2_sgd injects weight_decay", fixed=True),
    Case("create-lr-wrong-length", lambda c: create(c, hyperparams={"learning_rate": [0.1, 0.2]}), V, r"learning_rate in hyperparams must be one value or one per replica, shape \(4,\)", fixed=True),
    Case("create-int-injected-momentum", lambda c: create(c, tx=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0), hyperparams={"momentum": 0.5}), V, r"injects \['momentum'\] as integers .*momentum=0\.0", fixed=True),
    Case("create-bf16-injected", lambda c: create(c, model=HalfNet(tag=next(_TAGS)), tx=optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)), V, r"tx injects \['b1', 'b2', 'eps', 'eps_root', 'learning_rate'\] as bfloat16 .*hyperparam_dtype=jnp.float32", fixed=True),
    Case("create-ladder-and-hyperparams-overlap", lambda c: create(c, ladder=c.ladder, num_replicas=None, hyperparams={"learning_rate": 0.1}), V, r"\['learning_rate'\] given both by the ladder and in hyperparams", fixed=True),
    Case("create-lr-bool", lambda c: create(c, hyperparams={"learning_rate": True}), T, r"learning_rate in hyperparams must be numbers, not bools", fixed=True),
    Case("create-model-inputs-unknown", lambda c: create(c, model_inputs=("temperature",)), V, r"model_inputs.*temperature"),
    Case("create-train-kwarg-unknown", lambda c: create(c, train_kwarg="training"), V, r"train_kwarg"),
    Case("create-model-not-module", lambda c: create(c, model=lambda x: x), T, r"model must be a flax.linen.Module", fixed=True),
    Case("create-tx-not-optax", lambda c: create(c, tx=0.1), T, r"tx must be an optax", fixed=True),
    Case("create-sample-input-scalar", lambda c: create(c, sample_input=np.float32(1.0)), V, r"sample_input", fixed=True),
    Case("create-sample-input-dict", lambda c: create(c, sample_input={"x": c.x[:1]}), T, r"sample_input must be a numeric array.*got dict", fixed=True),
    Case("create-sample-input-strings", lambda c: create(c, sample_input=np.array([["a"] * FEATURES])), T, r"sample_input", fixed=True),
    Case("create-loss-fn-not-callable", lambda c: create(c, loss_fn="mse"), T, r"loss_fn must be callable", fixed=True),
    Case("create-same-init-string", lambda c: create(c, same_init="yes"), T, r"same_init must be True or False", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


def test_compile_probe_sees_a_compile(compiled):
    jax.jit(tp.state.cross_entropy)(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32))
    assert "cross_entropy" in compiled and "cross_entropy" in ENGINE_PROGRAMS


def test_table_ids_are_unique_and_counted():
    """The bad-input tables of all files (``BAD_INPUT_FILES``) against their doc."""
    cases, warning_cases = bad_input_tables()
    ids = [case.id for case in cases + warning_cases]
    assert len(ids) == len(set(ids))
    assert len(cases) >= 60
    assert all(case.error in (ValueError, TypeError) for case in cases)
    fixed = sum(case.fixed for case in cases)
    pending = sum(case.pending is not None for case in cases)
    doc = " ".join(BAD_INPUTS_DOC.split())
    assert f"{len(cases)} bad inputs" in doc
    assert f"{fixed} of them needed a library fix" in doc
    assert f"{pending} still wait" in doc or f"{pending} still waits" in doc


def test_the_optimisers_own_values_are_range_checked(ctx):
    """Before, tp.sgd(20.0) trained (every replica diverged in round 0), while a
    ladder or hyperparams of 20 was refused as a typo."""
    with pytest.raises(ValueError, match=r"learning_rate in tx must be at most 10"):
        create(ctx, tx=tp.sgd(20.0))
    with pytest.raises(ValueError, match=r"momentum in tx must lie in \[0, 1\)"):
        create(ctx, tx=optax.inject_hyperparams(optax.sgd)(0.1, momentum=1.5))
    assert create(ctx, tx=tp.sgd(20.0), hyperparams={"learning_rate": 0.1})
