"""Every model library through one interface: flax.nnx, Equinox, plain functions.

(flax linen is the golden outputs' frontend: tests/test_golden.py holds it bit
for bit.)
"""

import functools
import warnings
from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_blobs, train_step
from flax import nnx

import tempering as tp
from tempering.frontends import Functions

eqx = pytest.importorskip("equinox")

from tempering.frontends import equinox as tp_eqx  # noqa: E402
from tempering.frontends import nnx as tp_nnx  # noqa: E402

M = 3
LR = tp.geometric_ladder("learning_rate", 0.02, 0.2, M)
DROPOUT = tp.linear_ladder("dropout_rate", 0.0, 0.4, M, learning_rate=0.05)
TRAIN, VAL = make_blobs(192, dim=16, seed=0), make_blobs(64, dim=16, seed=1)
IMAGES = jnp.asarray(TRAIN[0]).reshape(-1, 4, 4, 1)
VAL_IMAGES = (jnp.asarray(VAL[0]).reshape(-1, 4, 4, 1), VAL[1])


class NnxCNN(nnx.Module):
    """An nnx CNN written the nnx way: modes switched by .train() / .eval()."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = tp_nnx.Dropout(rngs=rngs)
        self.out = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

    def __call__(self, x, dropout_rate=0.0):
        x = nnx.relu(self.bn(self.conv(x)))
        x = self.drop(x, dropout_rate)
        return self.out(x.reshape(x.shape[0], -1))


class EqxMLP(eqx.Module):
    """An Equinox MLP written the Equinox way: called on one example."""

    hidden: eqx.nn.Linear
    drop: tp_eqx.Dropout
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(16, 32, key=k1)
        self.drop = tp_eqx.Dropout()
        self.out = eqx.nn.Linear(32, 3, key=k2)

    def __call__(self, x, *, key=None, dropout_rate=0.0):
        return self.out(self.drop(jax.nn.relu(self.hidden(x)), dropout_rate, key=key))


def nnx_user_loss(module, x, y):
    """The user's own inference-mode evaluation of an nnx replica."""
    module.eval()
    return optax.softmax_cross_entropy_with_integer_labels(module(x), y).mean()


def eqx_user_loss(model, x, y):
    """The user's own inference-mode evaluation of an Equinox replica."""
    model = eqx.nn.inference_mode(model)
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def pt(state, ladder, train, val, **kwargs):
    settings = dict(
        num_steps=40, exchange_interval=10, burn_in=10, batch_size=32, c=1.0
    )
    settings.update(kwargs)
    return tp.pt_train(state, ladder, jax.random.key(4), train_data=train,
                       validation_data=val, **settings)  # fmt: skip


@pytest.mark.parametrize("ladder", [LR, DROPOUT], ids=["lr", "dropout"])
def test_an_nnx_cnn_with_batchnorm_and_dropout_trains_and_evaluates_in_eval_mode(
    ladder,
):
    state = tp.create_replicas(jax.random.key(0), NnxCNN, tp.sgd(0.05), IMAGES[:2],
                               ladder=ladder)  # fmt: skip
    assert state.model.kind == "nnx" and state.model_inputs == ("dropout_rate",)
    result = pt(state, ladder, (IMAGES, TRAIN[1]), VAL_IMAGES)
    assert np.isfinite(result.history.val_loss).all()
    assert result.history.rungs.shape == (3, M)
    best = result.summary.best_replica
    module = tp.replica(result.state, best)
    assert isinstance(module, NnxCNN)
    ours = tp.evaluate(result.state, *VAL_IMAGES).loss[best]
    np.testing.assert_allclose(ours, nnx_user_loss(module, *VAL_IMAGES), rtol=1e-5)
    # the statistics moved in training, and evaluation used them, not the batch's
    assert not np.allclose(module.bn.mean[...], 0.0)
    module.train()
    train_mode = optax.softmax_cross_entropy_with_integer_labels(
        module(VAL_IMAGES[0], dropout_rate=0.0), VAL_IMAGES[1]
    ).mean()
    assert abs(float(train_mode) - float(ours)) > 1e-4


@pytest.mark.parametrize("ladder", [LR, DROPOUT], ids=["lr", "dropout"])
def test_an_equinox_mlp_trains_and_evaluates_in_inference_mode(ladder):
    state = tp.create_replicas(jax.random.key(0), EqxMLP, tp.sgd(0.05), TRAIN[0][:2],
                               ladder=ladder)  # fmt: skip
    assert state.model.kind == "equinox"
    result = pt(state, ladder, TRAIN, VAL)
    assert np.isfinite(result.history.val_loss).all()
    best = result.summary.best_replica
    model = tp.replica(result.state, best)
    assert isinstance(model, EqxMLP)
    ours = tp.evaluate(result.state, *VAL).loss[best]
    np.testing.assert_allclose(ours, eqx_user_loss(model, *VAL), rtol=1e-5)


class EqxNoisy(eqx.Module):
    """Noise while training, gated on the key as Equinox models do."""

    linear: eqx.nn.Linear

    def __init__(self, key):
        self.linear = eqx.nn.Linear(TRAIN[0].shape[1], 3, key=key)

    def __call__(self, x, *, key=None):
        if key is not None:
            x = x + jax.random.normal(key, x.shape)
        return self.linear(x)


class EqxKeywordKey(eqx.Module):
    """The Equinox convention: the key is keyword-only."""

    linear: eqx.nn.Linear

    def __init__(self, din, dout, *, key):
        self.linear = eqx.nn.Linear(din, dout, key=key)

    def __call__(self, x):
        return self.linear(x)


def test_an_equinox_builder_taking_its_key_by_keyword_builds():
    """Before, functools.partial(Model, din, dout) was refused (nnx's took rngs)."""
    build = functools.partial(EqxKeywordKey, TRAIN[0].shape[1], 3)
    state = tp.create_replicas(jax.random.key(0), build, tp.sgd(0.1), TRAIN[0][:2],
                               num_replicas=2)  # fmt: skip
    kernels = state.params.linear.weight
    assert state.model.kind == "equinox" and not np.allclose(kernels[0], kernels[1])


def test_an_equinox_model_gets_no_key_in_evaluation():
    """Before, evaluation passed keys: key-gated noise stayed on."""
    state = tp.create_replicas(jax.random.key(0), EqxNoisy, tp.sgd(0.05),
                               TRAIN[0][:2], num_replicas=2)  # fmt: skip
    ours = tp.evaluate(state, *VAL).loss
    for m in range(2):
        model = tp.replica(state, m)
        np.testing.assert_allclose(ours[m], eqx_user_loss(model, *VAL), rtol=1e-6)


def test_a_builder_gives_independent_starts_and_an_instance_a_common_one():
    built = tp.create_replicas(jax.random.key(0), EqxMLP, tp.sgd(0.1), TRAIN[0][:2],
                               num_replicas=M)  # fmt: skip
    kernels = built.params.hidden.weight
    assert not np.allclose(kernels[0], kernels[1])
    instance = tp.create_replicas(jax.random.key(0), EqxMLP(jax.random.key(9)),
                                  tp.sgd(0.1), TRAIN[0][:2], num_replicas=M)  # fmt: skip
    kernels = instance.params.hidden.weight
    np.testing.assert_array_equal(kernels[0], kernels[2])
    cnn = NnxCNN(nnx.Rngs(3))
    cnn.eval()  # the user's module keeps its mode
    nnx_state = tp.create_replicas(jax.random.key(0), cnn, tp.sgd(0.1), IMAGES[:2],
                                   num_replicas=M)  # fmt: skip
    np.testing.assert_array_equal(nnx_state.params["conv"]["kernel"][...][1],
                                  cnn.conv.kernel[...])  # fmt: skip
    assert cnn.drop.deterministic


@functools.partial(jax.jit, static_argnums=0)
def _nnx_hand_step(graph, parts, x, y, lr):
    """One SGD step of one nnx model written by hand, the nnx way (jitted: one
    compile for every replica)."""
    module = nnx.merge(graph, *parts)
    module.train()

    def loss(m):
        out = m(x)
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    grads = nnx.grad(loss)(module)
    params = nnx.state(module, nnx.Param)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def test_the_fused_step_equals_hand_written_single_model_steps():
    # nnx (BatchNorm, no dropout: masks are the engine's own keys)
    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.out = nnx.Linear(64, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.bn(self.conv(x))).reshape(x.shape[0], -1))

    lrs = np.asarray(LR.values["learning_rate"])
    state = tp.create_replicas(
        jax.random.key(0), Net, tp.sgd(0.1), IMAGES[:2], ladder=LR
    )
    x, y = IMAGES[:32], jnp.asarray(TRAIN[1][:32])
    stepped, _ = train_step(state, jax.random.key(1), x, y, vectorize="vmap")
    for m in range(M):
        parts = (
            jax.tree.map(lambda a, i=m: a[i], state.params),
            state.model.rng_state,
            jax.tree.map(lambda a, i=m: a[i], state.batch_stats),
        )
        want = _nnx_hand_step(state.model.train_graph, parts, x, y, lrs[m])
        got = jax.tree.map(lambda a, i=m: a[i], stepped.params)
        chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-6)
    # Equinox
    state = tp.create_replicas(jax.random.key(0), EqxMLP, tp.sgd(0.1), TRAIN[0][:2],
                               ladder=LR, model_inputs=())  # fmt: skip
    x = jnp.asarray(TRAIN[0][:32])
    stepped, _ = train_step(state, jax.random.key(1), x, y, vectorize="vmap")

    @eqx.filter_jit  # one compile for every replica
    def hand_step(model, lr):
        def loss(model):
            model = eqx.nn.inference_mode(model, False)
            keys = jax.random.split(jax.random.key(0), 32)
            logits = jax.vmap(lambda e, k: model(e, key=k))(x, keys)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = eqx.filter_grad(loss)(model)
        return jax.tree.map(lambda p, g: p - lr * g,
                            eqx.filter(model, eqx.is_inexact_array),
                            eqx.filter(grads, eqx.is_inexact_array))  # fmt: skip

    for m in range(M):
        model = eqx.combine(jax.tree.map(lambda a, i=m: a[i], state.params),
                            state.model.static)  # fmt: skip
        want = hand_step(model, jnp.float32(lrs[m]))
        got = jax.tree.map(lambda a, i=m: a[i], stepped.params)
        chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-6)


class LinenTwin(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(3)(nn.relu(nn.Dense(32)(x)))


class NnxTwin(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 32, rngs=rngs)
        self.out = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def test_a_linen_model_and_its_nnx_twin_give_the_same_run():
    linen = tp.create_replicas(jax.random.key(0), LinenTwin(), tp.sgd(0.1),
                               TRAIN[0][:2], ladder=LR, same_init=True)  # fmt: skip
    twin = NnxTwin(nnx.Rngs(0))
    dense = jax.tree.map(lambda a: a[0], linen.params)
    # linen names its compact layers in construction order: Dense_0 is the output
    twin.hidden.kernel[...] = dense["Dense_1"]["kernel"]
    twin.hidden.bias[...] = dense["Dense_1"]["bias"]
    twin.out.kernel[...] = dense["Dense_0"]["kernel"]
    twin.out.bias[...] = dense["Dense_0"]["bias"]
    nnx_state = tp.create_replicas(jax.random.key(0), twin, tp.sgd(0.1), TRAIN[0][:2],
                                   ladder=LR)  # fmt: skip
    a = pt(linen, LR, TRAIN, VAL, num_steps=60)
    b = pt(nnx_state, LR, TRAIN, VAL, num_steps=60)
    np.testing.assert_allclose(a.history.val_loss, b.history.val_loss, rtol=1e-4)
    np.testing.assert_array_equal(a.history.rungs, b.history.rungs)


def test_plain_functions_are_a_model():
    def init(key, x):
        return {"w": 0.1 * jax.random.normal(key, (x.shape[-1], 3))}

    def apply(params, x, *, train, key, dropout_rate=0.0):
        h = x @ params["w"]
        if train:
            h = tp.layers.dropout(key, h, dropout_rate)
        return h

    model = Functions(init, apply)
    state = tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1), TRAIN[0][:2],
                               ladder=DROPOUT)  # fmt: skip
    assert state.model_inputs == ("dropout_rate",)
    result = pt(state, DROPOUT, TRAIN, VAL)
    params = tp.replica(result.state, 1)
    logits = apply(params, jnp.asarray(VAL[0]), train=False, key=None)
    want = optax.softmax_cross_entropy_with_integer_labels(logits, VAL[1]).mean()
    np.testing.assert_allclose(tp.evaluate(result.state, *VAL).loss[1], want, rtol=1e-5)


def test_plain_functions_take_their_mode_keyword_from_train_kwarg():
    """Functions passed train= whatever train_kwarg said: an apply whose own
    is_training=False default decided trained in inference mode, silently."""
    modes = []

    def init(key, x):
        return {"w": 0.1 * jax.random.normal(key, (x.shape[-1], 3))}

    def apply(params, x, *, key, is_training=False, **unused):
        modes.append((is_training, sorted(unused)))
        return x @ params["w"]

    sample = TRAIN[0][:2]
    with pytest.raises(ValueError, match="pass train_kwarg='is_training'"):
        tp.create_replicas(jax.random.key(0), Functions(init, apply), tp.sgd(0.1),
                           sample, num_replicas=2)  # fmt: skip
    state = tp.create_replicas(jax.random.key(0), Functions(init, apply),
                               tp.sgd(0.1), sample, num_replicas=2,
                               train_kwarg="is_training")  # fmt: skip
    modes.clear()
    tp.train_step(state, jax.random.key(1), *TRAIN)
    assert modes[-1] == (True, [])
    tp.evaluate(state, *VAL)
    assert modes[-1] == (False, [])

    def apply_without(params, x, *, key):  # no train mode at all
        return x @ params["w"]

    with pytest.raises(ValueError, match="takes no keyword 'train'"):
        tp.create_replicas(jax.random.key(0), Functions(init, apply_without),
                           tp.sgd(0.1), sample, num_replicas=2)  # fmt: skip
    tp.create_replicas(jax.random.key(0), Functions(init, apply_without),
                       tp.sgd(0.1), sample, num_replicas=2, train_kwarg=None)  # fmt: skip

    def apply_defaulted(params, x, *, key=None, train=False):
        return x @ params["w"]

    with pytest.raises(ValueError, match="train_kwarg=None passes no mode.*Pass "
                       "train_kwarg='train'"):  # fmt: skip
        tp.create_replicas(jax.random.key(0), Functions(init, apply_defaulted),
                           tp.sgd(0.1), sample, num_replicas=2, train_kwarg=None)  # fmt: skip


class EqxFrozenNorm(eqx.Module):
    """A BatchNorm built frozen (fine-tuning) beside a training dropout,
    optionally kept frozen in the call."""

    linear: eqx.nn.Linear
    drop: eqx.nn.Dropout
    norm: eqx.nn.BatchNorm
    keep_frozen: bool = eqx.field(static=True)

    def __init__(self, key, keep_frozen=False):
        self.linear = eqx.nn.Linear(16, 3, key=key)
        self.drop = eqx.nn.Dropout(0.1)
        self.norm = eqx.nn.BatchNorm(3, "batch", mode="batch", inference=True)
        self.keep_frozen = keep_frozen

    def __call__(self, x, state, *, key=None):
        norm = eqx.nn.inference_mode(self.norm) if self.keep_frozen else self.norm
        return norm(self.drop(self.linear(x), key=key), state)


def test_an_equinox_layer_built_frozen_is_named_and_the_fix_keeps_it():
    """inference_mode(model, False) unfroze a BatchNorm built with
    inference=True, silently; the warning names it and the fix works."""

    def running_mean_after_a_step(keep_frozen):
        built = eqx.nn.make_with_state(EqxFrozenNorm)(jax.random.key(0), keep_frozen)
        with pytest.warns(
            UserWarning, match=r"layers \['.norm'\] in inference mode and"
        ):
            state = tp.create_replicas(jax.random.key(0), built, tp.sgd(0.1),
                                       TRAIN[0][:2], num_replicas=2)  # fmt: skip
        state, _ = train_step(state, jax.random.key(1), *TRAIN)
        module, norm_state = tp.replica(state, 0)
        return np.abs(norm_state.get(module.norm.batch_state_index)[0]).max()

    assert running_mean_after_a_step(False) > 0  # trained, as the warning says
    assert running_mean_after_a_step(True) == 0  # kept frozen inside __call__
    # a whole model in inference mode (an exported replica) is one to train again
    exported = tp.replica(
        tp.create_replicas(jax.random.key(0), EqxMLP, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2), 0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tp.create_replicas(jax.random.key(0), exported, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip


def test_one_replicas_hyperparameters_by_index():
    state = tp.create_replicas(jax.random.key(0), EqxMLP, tp.sgd(0.1), TRAIN[0][:2],
                               ladder=DROPOUT)  # fmt: skip
    assert tp.get_hyperparams(state, 2) == pytest.approx(
        {"dropout_rate": 0.4, "learning_rate": 0.05}
    )
    assert tp.get_hyperparams(state, replica=-1) == tp.get_hyperparams(state, 2)
    with pytest.raises(ValueError, match="replica must lie in"):
        tp.get_hyperparams(state, 3)


def test_the_best_replica_saved_and_loaded_for_inference(tmp_path):
    import orbax.checkpoint as ocp

    state = tp.create_replicas(jax.random.key(0), NnxCNN, tp.sgd(0.05), IMAGES[:2],
                               ladder=LR)  # fmt: skip
    module = tp.replica(state, 1)
    with ocp.StandardCheckpointer() as saver:
        saver.save(tmp_path / "nnx", nnx.state(module))
    fresh = nnx.eval_shape(lambda: NnxCNN(nnx.Rngs(0)))
    graph, abstract = nnx.split(fresh)
    with ocp.StandardCheckpointer() as saver:
        loaded = nnx.merge(graph, saver.restore(tmp_path / "nnx", abstract))
    loaded.eval()
    np.testing.assert_allclose(loaded(VAL_IMAGES[0]), module(VAL_IMAGES[0]), rtol=1e-6)

    eqx_state = tp.create_replicas(jax.random.key(0), EqxMLP, tp.sgd(0.05),
                                   TRAIN[0][:2], ladder=LR)  # fmt: skip
    model = tp.replica(eqx_state, 2)
    eqx.tree_serialise_leaves(tmp_path / "mlp.eqx", model)
    like = eqx.nn.inference_mode(EqxMLP(jax.random.key(5)))
    loaded = eqx.tree_deserialise_leaves(tmp_path / "mlp.eqx", like)
    np.testing.assert_allclose(jax.vmap(loaded)(VAL[0]), jax.vmap(model)(VAL[0]))


def test_a_stock_dropout_given_a_laddered_rate_names_the_frontends_layer():
    class StockNnx(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.lin = nnx.Linear(16, 3, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.lin(x))

    with pytest.raises(ValueError, match=r"tempering\.frontends\.nnx\.Dropout"):
        tp.create_replicas(jax.random.key(0), StockNnx, tp.sgd(0.1), TRAIN[0][:2],
                           ladder=DROPOUT)  # fmt: skip

    class StockEqx(eqx.Module):
        lin: eqx.nn.Linear
        drop: eqx.nn.Dropout

        def __init__(self, key):
            self.lin, self.drop = eqx.nn.Linear(16, 3, key=key), eqx.nn.Dropout(0.1)

        def __call__(self, x, *, key=None):
            return self.drop(self.lin(x), key=key)

    with pytest.raises(ValueError, match=r"tempering\.frontends\.equinox\.Dropout"):
        tp.create_replicas(jax.random.key(0), StockEqx, tp.sgd(0.1), TRAIN[0][:2],
                           ladder=DROPOUT)  # fmt: skip


def test_a_model_of_no_library_names_every_frontend():
    with pytest.raises(TypeError, match="nnx.*Equinox.*Functions"):
        tp.create_replicas(jax.random.key(0), object(), tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip


def test_a_checkpoint_refuses_another_nnx_model(tmp_path):
    class Other(NnxTwin):
        def __call__(self, x):
            return self.out(nnx.tanh(self.hidden(x)))

    def run(model, **kwargs):
        state = tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1),
                                   TRAIN[0][:2], ladder=LR)  # fmt: skip
        return pt(state, LR, TRAIN, VAL, checkpoint_dir=tmp_path, **kwargs)

    run(NnxTwin, num_steps=20)
    with pytest.raises(ValueError, match="differ in: .*model"):
        run(Other, num_steps=20)


def test_an_equinox_model_with_batchnorm_state_and_a_stock_nnx_dropout():
    class Normed(eqx.Module):
        hidden: eqx.nn.Linear
        norm: eqx.nn.BatchNorm
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.hidden = eqx.nn.Linear(16, 32, key=k1)
            self.norm = eqx.nn.BatchNorm(32, axis_name="batch", mode="batch")
            self.out = eqx.nn.Linear(32, 3, key=k2)

        def __call__(self, x, state, *, key=None):
            h, state = self.norm(self.hidden(x), state)
            return self.out(jax.nn.relu(h)), state

    def build(key):
        return eqx.nn.make_with_state(Normed)(key)

    state = tp.create_replicas(jax.random.key(0), build, tp.sgd(0.05), TRAIN[0][:2],
                               ladder=LR)  # fmt: skip
    assert state.model.stateful
    result = pt(state, LR, TRAIN, VAL)
    best = result.summary.best_replica
    model, norm_state = tp.replica(result.state, best)  # (module, state)
    logits, _ = jax.vmap(model, axis_name="batch", in_axes=(0, None),
                         out_axes=(0, None))(jnp.asarray(VAL[0]), norm_state)  # fmt: skip
    want = optax.softmax_cross_entropy_with_integer_labels(logits, VAL[1]).mean()
    np.testing.assert_allclose(result.summary.best_val_loss, want, rtol=1e-5)

    class Stock(nnx.Module):  # a fixed-rate nnx.Dropout trains on an lr ladder
        def __init__(self, rngs: nnx.Rngs):
            self.hidden = nnx.Linear(16, 32, rngs=rngs)
            self.drop = nnx.Dropout(0.2, rngs=rngs)
            self.out = nnx.Linear(32, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(self.drop(nnx.relu(self.hidden(x))))

    state = tp.create_replicas(jax.random.key(0), Stock, tp.sgd(0.05), TRAIN[0][:2],
                               ladder=LR)  # fmt: skip
    result = pt(state, LR, TRAIN, VAL)
    module = tp.replica(result.state, 0)  # eval mode: no dropout
    want = optax.softmax_cross_entropy_with_integer_labels(module(VAL[0]), VAL[1])
    np.testing.assert_allclose(result.summary.final_val_loss[0], want.mean(), rtol=1e-5)


class NnxOwnSwitch(nnx.Module):
    """Dropout switched by a call keyword with a default of its own."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x, deterministic: bool = False):
        return self.drop(self.hidden(x), deterministic=deterministic)


class EqxOwnSwitch(eqx.Module):
    """Dropout switched by a call keyword with a default of its own."""

    hidden: eqx.nn.Linear
    drop: eqx.nn.Dropout

    def __init__(self, key):
        self.hidden = eqx.nn.Linear(16, 3, key=key)
        self.drop = eqx.nn.Dropout(0.5)

    def __call__(self, x, *, key=None, inference: bool = False):
        return self.drop(self.hidden(x), key=key, inference=inference)


@pytest.mark.parametrize(
    ("model", "keyword"),
    [(NnxOwnSwitch, "deterministic=False"), (EqxOwnSwitch, "inference=False")],
    ids=["nnx", "equinox"],
)
def test_a_call_whose_own_mode_switch_would_win_is_refused(model, keyword):
    # Its default would keep dropout on in evaluation (the library sets the
    # module's mode and passes only train_kwarg): refused, not mis-evaluated.
    with pytest.raises(ValueError, match=f"takes {keyword}, a mode switch"):
        tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip


class LinenDeterministic(nn.Module):
    """Dropout switched by flax's usual ``deterministic`` keyword, no ``train``."""

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return nn.Dense(3)(nn.Dropout(0.9, deterministic=deterministic)(x))


class LinenTrainDefault(nn.Module):
    """Dropout switched by ``train``, with a default of its own."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3)(nn.Dropout(0.9, deterministic=not train)(x))


def test_a_linen_mode_switch_the_library_cannot_set_is_refused():
    """Before, train_kwarg=None (what the first refusal offered) trained a
    linen model with deterministic=True or train=False: no dropout, silently."""
    create = functools.partial(
        tp.create_replicas, jax.random.key(0), tx=tp.sgd(0.1),
        sample_input=TRAIN[0][:2], num_replicas=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match="no keyword 'train' but takes deterministic"):
        create(model=LinenDeterministic())
    with pytest.raises(ValueError, match=r"takes deterministic=True, a mode switch.*"
                       r"passing deterministic=not train"):  # fmt: skip
        create(model=LinenDeterministic(), train_kwarg=None)
    with pytest.raises(ValueError, match="takes train=False.*Pass train_kwarg='train'"):
        create(model=LinenTrainDefault(), train_kwarg=None)
    create(model=LinenTrainDefault())  # the library passes train: fine


class LinenAnyKeywords(nn.Module):
    """BatchNorm over the masked examples, the mask reaching it through **kwargs."""

    @nn.compact
    def __call__(self, x, train=False, **kwargs):
        mask = kwargs.get("batch_mask")
        mask = None if mask is None else mask[:, None]
        x = nn.BatchNorm(use_running_average=not train)(x, mask=mask)
        return nn.Dense(3)(x)


def test_a_model_taking_any_keyword_gets_the_batch_mask():
    state = tp.create_replicas(
        jax.random.key(0), LinenAnyKeywords(), tp.sgd(0.1), TRAIN[0][:2],
        num_replicas=2, hyperparams={"batch_size": 16},
    )  # fmt: skip
    x = jnp.asarray(TRAIN[0][:32])
    y = jnp.asarray(TRAIN[1][:32])
    masked, _ = train_step(state, jax.random.key(1), x, y)
    first, _ = train_step(
        tp.set_hyperparams(state, batch_size=32), jax.random.key(1), x[:16], y[:16]
    )
    np.testing.assert_allclose(
        masked.batch_stats["BatchNorm_0"]["mean"],
        first.batch_stats["BatchNorm_0"]["mean"],
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


class EqxScaled(eqx.Module):
    """A configuration held in a static field."""

    linear: eqx.nn.Linear
    scale: float = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        return self.scale * self.linear(x)


def test_an_equinox_models_static_fields_are_in_its_description():
    linear = eqx.nn.Linear(16, 3, key=jax.random.key(0))
    one = tp.frontends.as_frontend(EqxScaled(linear, 1.0))
    hundred = tp.frontends.as_frontend(EqxScaled(linear, 100.0))
    assert one.describe() != hundred.describe()
    assert one.describe() == tp.frontends.as_frontend(EqxScaled(linear, 1.0)).describe()


class EqxBN(eqx.Module):
    """An Equinox model with state: BatchNorm."""

    linear: eqx.nn.Linear
    norm: eqx.nn.BatchNorm

    def __init__(self, key):
        self.linear = eqx.nn.Linear(16, 3, key=key)
        self.norm = eqx.nn.BatchNorm(3, axis_name="batch", mode="batch")

    def __call__(self, x, state, *, key=None):
        return self.norm(self.linear(x), state)


def test_an_equinox_model_with_state_refuses_a_per_replica_batch_size():
    model = eqx.nn.make_with_state(EqxBN)(jax.random.key(0))
    with pytest.raises(ValueError, match="eqx.nn.BatchNorm cannot leave examples"):
        tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2, hyperparams={"batch_size": 16})  # fmt: skip


class NnxSows(nnx.Module):
    """Records an intermediate with ``sow`` at every call."""

    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        y = self.linear(x)
        self.sow(nnx.Intermediate, "logits", y)
        return y


def test_an_nnx_model_that_sows_trains_step_after_step():
    state = tp.create_replicas(jax.random.key(0), NnxSows, tp.sgd(0.1),
                               TRAIN[0][:2], num_replicas=2)  # fmt: skip
    x, y = jnp.asarray(TRAIN[0][:32]), jnp.asarray(TRAIN[1][:32])
    for step in range(3):
        state, info = train_step(state, jax.random.key(step), x, y)
    assert not jax.tree.leaves(state.batch_stats)  # the sown values are not kept
    assert np.all(np.isfinite(info.loss))


def test_an_nnx_instance_called_before_keeps_no_sown_values_as_state():
    """Before, a trial call's sown values became per-replica state, and the
    first step failed blaming the inputs."""
    module = NnxSows(nnx.Rngs(0))
    module(jnp.asarray(TRAIN[0][:5]))  # the user tries the model once
    state = tp.create_replicas(jax.random.key(0), module, tp.sgd(0.1),
                               TRAIN[0][:2], num_replicas=2)  # fmt: skip
    assert not jax.tree.leaves(state.batch_stats)
    state, _ = train_step(state, jax.random.key(1), *TRAIN)
    assert np.isfinite(tp.evaluate(state, *VAL).loss).all()
    assert "logits" in nnx.state(module, nnx.Intermediate)  # the user's, untouched


class LinenRated(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = tp.Dropout()(
            nn.relu(nn.Dense(32)(x)), dropout_rate, deterministic=not train
        )
        return nn.Dense(3)(x)


class NnxRated(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 32, rngs=rngs)
        self.drop = tp_nnx.Dropout(rngs=rngs)
        self.out = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x, dropout_rate=0.0):
        return self.out(self.drop(nnx.relu(self.hidden(x)), dropout_rate))


@pytest.mark.parametrize("model", [NnxRated, LinenRated()], ids=["nnx", "linen"])
def test_a_model_input_given_per_replica(model):
    rates = [0.0, 0.2, 0.4]
    state = tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1), TRAIN[0][:2],
                               num_replicas=3, hyperparams={"dropout_rate": rates})  # fmt: skip
    np.testing.assert_array_equal(state.hyperparams["dropout_rate"], np.float32(rates))
    state, info = train_step(
        state, jax.random.key(1), jnp.asarray(TRAIN[0][:32]), jnp.asarray(TRAIN[1][:32])
    )
    chex.assert_shape(info.loss, (3,))


class NnxKeywordRngs(nnx.Module):
    """The usual nnx signature: settings first, ``rngs`` by keyword only."""

    def __init__(self, din, dout, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(din, dout, rngs=rngs)

    def __call__(self, x):
        return self.linear(x)


def test_a_partial_of_an_nnx_class_is_a_builder():
    build = functools.partial(NnxKeywordRngs, 16, 3)
    state = tp.create_replicas(jax.random.key(0), build, tp.sgd(0.1), TRAIN[0][:2],
                               num_replicas=2)  # fmt: skip
    kernels = np.asarray(state.params["linear"]["kernel"].value)
    assert kernels.shape == (2, 16, 3) and not np.array_equal(kernels[0], kernels[1])


def test_a_builder_of_no_known_kind_is_a_type_error_naming_its_failure():
    def build(rngs):  # an nnx builder, but its parameter is not named rngs
        return NnxKeywordRngs(16, 3, rngs=rngs)

    renamed = lambda r: build(r)  # noqa: E731
    with pytest.raises(TypeError, match="no model builder tempering knows.*raised"):
        tp.create_replicas(jax.random.key(0), renamed, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip


class EqxIndexed(eqx.Module):
    """Holds an integer array: the same for every key, or drawn from it."""

    order: jax.Array
    linear: eqx.nn.Linear

    def __init__(self, key, random_order=False):
        first, second = jax.random.split(key)
        self.order = (
            jax.random.permutation(first, 16) if random_order else jnp.arange(16)[::-1]
        )
        self.linear = eqx.nn.Linear(16, 3, key=second)

    def __call__(self, x, *, key=None):
        return self.linear(x[self.order])


def test_an_equinox_builder_drawing_integer_arrays_from_its_key_is_refused():
    state = tp.create_replicas(jax.random.key(0), EqxIndexed, tp.sgd(0.1),
                               TRAIN[0][:2], num_replicas=2)  # fmt: skip
    np.testing.assert_array_equal(tp.replica(state, 1).order, np.arange(16)[::-1])
    drawn = functools.partial(EqxIndexed, random_order=True)
    with pytest.raises(ValueError, match="depend on its key"):
        tp.create_replicas(jax.random.key(0), drawn, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip


class NnxBuffer(nnx.Module):
    """A fixed table held as a plain array (or, ``wrapped``, as nnx data)."""

    def __init__(self, rngs: nnx.Rngs, wrapped: bool = False):
        table = jnp.sin(jnp.arange(16.0))
        self.table = nnx.data(table) if wrapped else table
        self.linear = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.linear(x + self.table)


def test_an_nnx_builder_with_a_plain_array_attribute_is_refused_with_the_fix():
    """nnx keeps a plain array as state when built eagerly, as static under a
    trace (where each replica is built): the replicas would lose it."""
    with pytest.raises(TypeError, match=r"plain arrays at \['table'\].*nnx\.data"):
        tp.create_replicas(jax.random.key(0), NnxBuffer, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip
    for model in (functools.partial(NnxBuffer, wrapped=True), NnxBuffer(nnx.Rngs(0))):
        state = tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1),
                                   TRAIN[0][:2], num_replicas=2)  # fmt: skip
        state, _ = train_step(state, jax.random.key(1), *TRAIN)
        chex.assert_shape(tp.evaluate(state, *VAL).loss, (2,))
        np.testing.assert_allclose(
            tp.replica(state, 1).table, jnp.sin(jnp.arange(16.0))
        )


class NnxStockDropout(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(16, 3, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.linear(x))


def test_exported_nnx_replicas_share_no_variable_with_each_other_or_the_user():
    user = NnxStockDropout(nnx.Rngs(0))
    state = tp.create_replicas(jax.random.key(0), user, tp.sgd(0.1), TRAIN[0][:2],
                               num_replicas=2)  # fmt: skip
    first, second = tp.replica(state, 0), tp.replica(state, 1)
    first.train()
    for _ in range(3):  # draws advance the dropout stream's count
        first(VAL[0])
    assert int(user.drop.rngs.count[...]) == 0
    assert int(second.drop.rngs.count[...]) == 0
    assert int(first.drop.rngs.count[...]) == 3


def test_exported_nnx_replicas_draw_their_own_dropout_masks():
    """Every exported replica merged the same RNG state: the same masks."""
    state = tp.create_replicas(jax.random.key(0), NnxStockDropout, tp.sgd(0.1),
                               TRAIN[0][:2], num_replicas=3)  # fmt: skip
    masks = []
    for index in range(3):
        module = tp.replica(state, index)
        module.linear.kernel[...] = jnp.ones_like(module.linear.kernel[...])
        module.train()
        masks.append(np.asarray(module(VAL[0]) == 0))
    assert not np.array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[1], masks[2])
    again = tp.replica(state, 1)  # the same replica draws the same stream
    again.linear.kernel[...] = jnp.ones_like(again.linear.kernel[...])
    again.train()
    np.testing.assert_array_equal(np.asarray(again(VAL[0]) == 0), masks[1])


class LinenInverted(nn.Module):
    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        x = nn.BatchNorm(use_running_average=deterministic)(nn.Dense(8)(x))
        return nn.Dense(3)(x)


class NnxInverted(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(16, 3, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x, deterministic: bool | None = None):
        return self.drop(self.linear(x), deterministic=deterministic)


@pytest.mark.parametrize("model", [LinenInverted(), NnxInverted], ids=["linen", "nnx"])
def test_a_train_kwarg_that_is_true_in_inference_is_refused(model):
    with pytest.raises(ValueError, match="train_kwarg='deterministic' names a switch"):
        tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2, train_kwarg="deterministic")  # fmt: skip


class NnxRequiredSwitch(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x, deterministic: bool):
        return self.linear(x)


class LinenOwnCollection(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        calls = self.variable("counter", "calls", lambda: jnp.zeros((), jnp.int32))
        if train:
            calls.value += 1
        return nn.Dense(3)(x)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (NnxRequiredSwitch, "missing 1 required positional argument: 'deterministic'"),
        (lambda: eqx.nn.make_with_state(EqxBN)(jax.random.key(0))[0], "'state'"),
        (lambda: LinenOwnCollection(), 'collection "counter"'),
    ],
    ids=["nnx-required-switch", "equinox-without-its-state", "linen-own-collection"],
)
def test_a_model_the_library_cannot_call_is_refused_by_create_replicas(
    model, match, compiled
):
    """Named by the model's own failure, not later as an input-shape error."""
    from conftest import ENGINE_PROGRAMS

    model = model() if not isinstance(model, type) else model
    with pytest.raises((TypeError, ValueError), match=rf"fails when the library calls it in "
                       rf"training mode on sample_input .*{match}"):  # fmt: skip
        tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip
    assert not set(compiled) & ENGINE_PROGRAMS


class EqxKeyAlways(eqx.Module):
    linear: eqx.nn.Linear

    def __init__(self, key):
        self.linear = eqx.nn.Linear(16, 3, key=key)

    def __call__(self, x, *, key):
        noise = jax.random.normal(jax.random.split(key)[0], x.shape)
        return self.linear(x + noise)


def test_an_equinox_call_that_needs_its_key_in_inference_is_told_why():
    """The refusal said only "unexpected PRNG key type NoneType"."""
    with pytest.raises(TypeError, match=r"inference mode.*gets key=None in "
                       r"inference.*if key is not None"):  # fmt: skip
        tp.create_replicas(jax.random.key(0), EqxKeyAlways, tp.sgd(0.1),
                           TRAIN[0][:2], num_replicas=2)  # fmt: skip


class NnxScannedBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(16, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.linear(x)), self.drop(jnp.ones_like(x))


class NnxScanned(nnx.Module):
    """nnx's "scan over layers": three blocks, one dropout key each, shape (3,)."""

    def __init__(self, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def blocks(rngs):
            return NnxScannedBlock(rngs)

        self.blocks = blocks(rngs)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x, return_masks: bool = False):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))
        def forward(block, h):
            return block(h)

        h, masks = forward(self.blocks, x)
        return masks if return_masks else self.out(h)


def test_an_nnx_scan_over_layers_with_stacked_dropout_keys_trains():
    """Before, every key leaf was replaced by one key: the (3,) stack of the
    scanned blocks' dropout keys failed the call (IndexError)."""
    state = tp.create_replicas(jax.random.key(0), NnxScanned, tp.sgd(0.1),
                               TRAIN[0][:2], num_replicas=2)  # fmt: skip
    x, y = jnp.asarray(TRAIN[0][:32]), jnp.asarray(TRAIN[1][:32])
    stepped, info = train_step(state, jax.random.key(1), x, y)
    assert np.isfinite(info.loss).all()
    assert np.isfinite(tp.evaluate(stepped, *VAL).loss).all()
    one = jax.tree.map(lambda a: a[0], (state.params, state.batch_stats))
    masks, _ = state.model.apply(*one, x, train=True, key=jax.random.key(2),
                                 inputs={"return_masks": True})  # fmt: skip
    chex.assert_shape(masks, (3, 32, 16))
    for a, b in ((0, 1), (1, 2), (0, 2)):  # each layer its own masks
        assert not np.array_equal(masks[a], masks[b])


class NnxIsTrain(nnx.Module):
    """BatchNorm and dropout switched by a call keyword not named train."""

    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(16, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x, is_train: bool = False):
        h = self.norm(self.linear(x), use_running_average=not is_train)
        return self.out(self.drop(nnx.relu(h), deterministic=not is_train))


def test_a_mode_keyword_of_another_name_is_refused_or_passed_by_train_kwarg():
    """Before, is_train=False was accepted: training ran in inference mode
    (BatchNorm statistics never moved, dropout off)."""
    with pytest.raises(
        ValueError, match="takes is_train=False.*train_kwarg='is_train'"
    ):
        tp.create_replicas(jax.random.key(0), NnxIsTrain, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip
    state = tp.create_replicas(jax.random.key(0), NnxIsTrain, tp.sgd(0.1),
                               TRAIN[0][:2], num_replicas=2,
                               train_kwarg="is_train")  # fmt: skip
    x, y = jnp.asarray(TRAIN[0][:32]), jnp.asarray(TRAIN[1][:32])
    first, info = train_step(state, jax.random.key(1), x, y)
    _, other = train_step(state, jax.random.key(2), x, y)
    assert not np.allclose(first.batch_stats["norm"]["mean"][...], 0.0)
    assert not np.allclose(info.loss, other.loss)  # dropout on: the key counts


class EqxTrainMode(eqx.Module):
    """Dropout switched by ``train_mode``; features returned on request."""

    linear: eqx.nn.Linear
    drop: eqx.nn.Dropout

    def __init__(self, key):
        self.linear = eqx.nn.Linear(16, 3, key=key)
        self.drop = eqx.nn.Dropout(0.5)

    def __call__(self, x, *, key=None, train_mode: bool | None = False,
                 return_features: bool = False):  # fmt: skip
        h = self.linear(x)
        if return_features:
            return h
        inference = None if train_mode is None else not train_mode
        return self.drop(h, key=key, inference=inference)


class EqxFlagged(EqxTrainMode):
    """The same with train_mode=None: the module's own mode decides."""

    def __call__(self, x, *, key=None, train_mode: bool | None = None,
                 return_features: bool = False):  # fmt: skip
        return super().__call__(x, key=key, train_mode=train_mode,
                                return_features=return_features)  # fmt: skip


def test_an_equinox_mode_keyword_of_another_name_is_refused_not_other_flags():
    """Before, train_mode=False was accepted: training ran without dropout."""
    with pytest.raises(ValueError, match="takes train_mode=False, a mode switch"):
        tp.create_replicas(jax.random.key(0), EqxTrainMode, tp.sgd(0.1),
                           TRAIN[0][:2], num_replicas=2)  # fmt: skip
    state = tp.create_replicas(jax.random.key(0), EqxFlagged, tp.sgd(0.1),
                               TRAIN[0][:2], num_replicas=2)  # fmt: skip
    x, y = jnp.asarray(TRAIN[0][:32]), jnp.asarray(TRAIN[1][:32])
    stepped, info = train_step(state, jax.random.key(1), x, y)
    _, other = train_step(state, jax.random.key(2), x, y)
    assert not np.allclose(info.loss, other.loss)  # dropout on in training
    ours = tp.evaluate(stepped, *VAL).loss
    np.testing.assert_allclose(ours[1], eqx_user_loss(tp.replica(stepped, 1), *VAL),
                               rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize("model", [NnxRated, EqxMLP], ids=["nnx", "equinox"])
def test_a_train_kwarg_the_call_does_not_take_is_refused(model):
    """Before, an nnx or Equinox call without the train_kwarg named got
    nothing: the call's own default decided the mode."""
    with pytest.raises(ValueError, match="train_kwarg='is_train', but .* takes no"):
        tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2, train_kwarg="is_train")  # fmt: skip


class NnxAnyKeywords(nnx.Module):
    """Its mode reaches the dropout through ``**kwargs``."""

    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(16, 3, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x, **kwargs):
        return self.drop(self.linear(x), deterministic=not kwargs["is_train"])


def test_a_train_kwarg_given_by_name_reaches_a_call_taking_any_keyword():
    """Before, an nnx or Equinox call got it only when it named it."""
    state = tp.create_replicas(jax.random.key(0), NnxAnyKeywords, tp.sgd(0.1),
                               TRAIN[0][:2], num_replicas=2,
                               train_kwarg="is_train")  # fmt: skip
    x, y = jnp.asarray(TRAIN[0][:32]), jnp.asarray(TRAIN[1][:32])
    stepped, info = train_step(state, jax.random.key(1), x, y)
    _, other = train_step(state, jax.random.key(2), x, y)
    assert not np.allclose(info.loss, other.loss)  # dropout on in training
    module = tp.replica(stepped, 0)
    want = optax.softmax_cross_entropy_with_integer_labels(
        module(VAL[0], is_train=False), VAL[1]
    ).mean()
    np.testing.assert_allclose(tp.evaluate(stepped, *VAL).loss[0], want, rtol=1e-6)


class EqxNormed(eqx.Module):
    """BatchNorm (state) and a static field holding a function made per build."""

    hidden: eqx.nn.Linear
    norm: eqx.nn.BatchNorm
    out: eqx.nn.Linear
    activation: Callable = eqx.field(static=True)

    def __init__(self, key, slope=0.1):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(16, 8, key=k1)
        self.norm = eqx.nn.BatchNorm(8, axis_name="batch", mode="batch")
        self.out = eqx.nn.Linear(8, 3, key=k2)
        self.activation = lambda h: jax.nn.leaky_relu(h, slope)

    def __call__(self, x, state, *, key=None):
        h, state = self.norm(self.hidden(x), state)
        return self.out(self.activation(h)), state


def build_state_by_hand(key):
    """The pattern of eqx.nn.delete_init_state's docstring."""
    model = EqxNormed(key)
    state = eqx.nn.State(model)
    return eqx.nn.delete_init_state(model), state


def test_equinox_builds_whose_static_parts_differ_train_as_make_with_state():
    """Before, each replica's build (its own lambda, its own State markers) was
    combined with another build's static part: a pytree metadata error."""
    losses = []
    for build in (build_state_by_hand, eqx.nn.make_with_state(EqxNormed)):
        state = tp.create_replicas(jax.random.key(0), build, tp.sgd(0.1),
                                   TRAIN[0][:2], num_replicas=2)  # fmt: skip
        state, info = train_step(state, jax.random.key(1), *TRAIN)
        losses.append((info.loss, tp.evaluate(state, *VAL).loss))
    chex.assert_trees_all_equal(losses[0], losses[1])


def test_an_equinox_builder_of_batchnorm_without_its_state_names_make_with_state():
    with pytest.raises(TypeError, match=r"no eqx\.nn\.State.*make_with_state"):
        tp.create_replicas(jax.random.key(0), EqxNormed, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip


class NnxDefaulted(nnx.Module):
    """Settings with defaults first, rngs keyword-only."""

    def __init__(self, hidden: int = 8, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def eqx_linear(din, key):
    return eqx.nn.Linear(din, 3, key=key)


def eqx_seeded(*, seed):  # a keyword-only key of another name
    return eqx.nn.Linear(16, 3, key=seed)


@pytest.mark.parametrize(
    "build",
    [
        NnxDefaulted,
        functools.partial(nnx.Linear, 16, 3),
        functools.partial(eqx.nn.MLP, 16, 3, 8, 1),
        functools.partial(eqx.nn.Linear, 16, 3),
        functools.partial(eqx_linear, din=16),
        eqx_seeded,
    ],
    ids=["nnx-class", "nnx-partial", "eqx-mlp-partial", "eqx-partial", "by-keyword",
         "keyword-only"],
)  # fmt: skip
def test_a_builder_taking_its_key_after_defaults_or_by_keyword_builds(build):
    """Before, only a first parameter was looked at: refused."""
    state = tp.create_replicas(jax.random.key(0), build, tp.sgd(0.1), TRAIN[0][:2],
                               num_replicas=2)  # fmt: skip
    leaves = jax.tree.leaves(state.params)
    assert not all(np.array_equal(a[0], a[1]) for a in leaves)  # keys of their own
    state, _ = train_step(state, jax.random.key(1), *TRAIN)
    assert np.isfinite(tp.evaluate(state, *VAL).loss).all()


@pytest.mark.parametrize(
    "build",
    [NnxKeywordRngs, EqxKeywordKey, functools.partial(EqxKeywordKey, 16)],
    ids=["nnx", "equinox", "partial"],
)
def test_a_module_class_needing_more_than_its_key_names_the_partial(build):
    with pytest.raises(TypeError, match=r"model: .* needs .*functools\.partial\("):
        tp.create_replicas(jax.random.key(0), build, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip


@pytest.mark.parametrize("kind", ["nnx builder", "nnx instance", "equinox builder",
                                  "equinox instance"])  # fmt: skip
def test_replicas_made_again_compile_nothing_again(kind):
    """Each create_replicas made a frontend hashed by identity, a static field
    of the state: every engine program compiled again for a new key or a rerun
    notebook cell (7 compiles of each program over 3 seeds)."""
    from tempering import loops, step

    x, y = TRAIN
    builders = {
        "nnx builder": lambda seed: lambda rngs: NnxCNN(rngs),
        "nnx instance": lambda seed: NnxCNN(nnx.Rngs(seed)),
        "equinox builder": lambda seed: EqxMLP,
        "equinox instance": lambda seed: EqxMLP(jax.random.key(seed)),
    }
    inputs = IMAGES if kind.startswith("nnx") else jnp.asarray(x)
    programs = (step._jitted_evaluate_arrays, loops._device_array_segment)

    def run(seed):
        model = builders[kind](seed)
        state = tp.create_replicas(jax.random.key(seed), model, tp.sgd(0.05),
                                   inputs[:2], ladder=LR)  # fmt: skip
        result = tp.pt_train(state, LR, jax.random.key(1), train_data=(inputs, y),
                             validation_data=(inputs[:64], y[:64]), num_steps=20,
                             exchange_interval=10, batch_size=32, c=1.0,
                             loop="device")  # fmt: skip
        tp.evaluate(state, inputs[:64], y[:64])
        return state, result

    first, _ = run(0)
    sizes = [program._cache_size() for program in programs]
    second, _ = run(1)
    assert first.model == second.model and hash(first.model) == hash(second.model)
    assert [program._cache_size() for program in programs] == sizes
    # the weights are each build's own, never the first's from a cached program
    assert not all(jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(jnp.array_equal(a, b)), first.params, second.params)))  # fmt: skip


def test_a_model_holding_a_list_or_a_key_still_trains():
    """Compared by content, a frontend hashed its static values: an nnx list
    attribute or an Equinox typed key made pt_train raise TypeError."""

    class Sized(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.sizes = [16, 3]  # a plain list: static, unhashable
            self.out = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(x)

    class Keyed(eqx.Module):
        out: eqx.nn.Linear
        noise_key: jax.Array

        def __init__(self, key):
            self.out = eqx.nn.Linear(16, 3, key=key)
            self.noise_key = jax.random.key(7)  # not inexact: static part

        def __call__(self, x):
            return self.out(x)

    x, y = TRAIN
    for model in (Sized(nnx.Rngs(0)), Keyed(jax.random.key(0))):
        state = tp.create_replicas(jax.random.key(0), model, tp.sgd(0.05), x[:2],
                                   ladder=LR, train_kwarg=None)  # fmt: skip
        hash(state.model)
        result = tp.pt_train(state, LR, jax.random.key(1), train_data=(x, y),
                             validation_data=VAL, num_steps=10, exchange_interval=5,
                             batch_size=32, c=1.0)  # fmt: skip
        assert np.all(np.isfinite(result.summary.final_val_loss))


class _NnxBackbone(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 32, rngs=rngs)
        self.norm = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x, train: bool = False):
        h = nnx.relu(self.norm(self.hidden(x), use_running_average=not train))
        return self.out(self.drop(h, deterministic=not train))


class _NnxWrapper(nnx.Module):
    """Hands its keywords on: ``train`` reaches the backbone only through **kwargs."""

    def __init__(self, rngs: nnx.Rngs, inner=_NnxBackbone):
        self.inner = inner(rngs)

    def __call__(self, x, **kwargs):
        return self.inner(x, **kwargs)


class _EqxBackbone(eqx.Module):
    hidden: eqx.nn.Linear
    drop: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(16, 32, key=k1)
        self.drop = eqx.nn.Dropout(0.5)
        self.out = eqx.nn.Linear(32, 3, key=k2)

    def __call__(self, x, train: bool = False, *, key=None):
        h = self.drop(jax.nn.relu(self.hidden(x)), inference=not train, key=key)
        return self.out(h)


class _EqxWrapper(eqx.Module):
    inner: _EqxBackbone

    def __init__(self, key):
        self.inner = _EqxBackbone(key)

    def __call__(self, x, *, key=None, **kwargs):
        return self.inner(x, key=key, **kwargs)


@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("kind", ["nnx", "equinox"])
def test_a_wrapper_passing_kwargs_on_trains_in_training_mode(kind, given):
    """``train`` went only to a call that names it: a wrapper's layers (dropout,
    BatchNorm) ran in inference mode while training, even with
    ``train_kwarg="train"`` given, and nothing said so."""
    x, y = TRAIN
    model = (
        _NnxWrapper(nnx.Rngs(0)) if kind == "nnx" else _EqxWrapper(jax.random.key(0))
    )
    kwargs = {"train_kwarg": "train"} if given else {}
    state = tp.create_replicas(
        jax.random.key(0), model, tp.sgd(1e-9), x[:4], num_replicas=2, **kwargs
    )
    losses = [
        np.asarray(tp.train_step(state, jax.random.key(k), x[:64], y[:64])[1].loss)
        for k in range(2)
    ]
    assert not np.allclose(losses[0], losses[1])  # dropout masks differ per step
    evaluated = np.asarray(tp.evaluate(state, x[:64], y[:64]).loss)
    assert not np.allclose(losses[0], evaluated)
    if kind == "nnx":
        new, _ = tp.train_step(state, jax.random.key(0), x[:64], y[:64])
        moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                             new.batch_stats, state.batch_stats)  # fmt: skip
        assert any(jax.tree.leaves(moved))  # BatchNorm's statistics update


def test_a_wrapper_whose_callee_refuses_train_does_not_get_it():
    """The default name is not forced on a **kwargs call that cannot take it."""

    class Plain(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.out = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(x)

    x, y = TRAIN
    model = _NnxWrapper(nnx.Rngs(0), inner=Plain)
    state = tp.create_replicas(jax.random.key(0), model, tp.sgd(0.1), x[:4],
                               num_replicas=2)  # fmt: skip
    assert not state.model.forwards_train
    tp.train_step(state, jax.random.key(0), x[:32], y[:32])


def test_a_laddered_input_the_model_never_reads_is_refused():
    """A dropout ladder on a model whose rate keyword reaches no layer (a fixed
    nnx.Dropout(0.3)) trained as if it worked: the exchanges ran on noise."""

    class Fixed(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.hidden = nnx.Linear(16, 8, rngs=rngs)
            self.drop = nnx.Dropout(0.3, rngs=rngs)
            self.out = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x, dropout_rate=0.0):
            return self.out(self.drop(self.hidden(x)))

    x, _ = TRAIN
    with pytest.raises(ValueError, match=r"never reads \['dropout_rate'\]"):
        tp.create_replicas(jax.random.key(0), Fixed(nnx.Rngs(0)), tp.sgd(0.1),
                           x[:2], ladder=DROPOUT)  # fmt: skip
    # one value for every replica (a script setting it for every model): warned
    with pytest.warns(UserWarning, match="never reads"):
        tp.create_replicas(jax.random.key(0), Fixed(nnx.Rngs(0)), tp.sgd(0.1),
                           x[:2], num_replicas=2, hyperparams={"dropout_rate": 0.2})  # fmt: skip
    # not set by the call: its default is no one's request
    tp.create_replicas(jax.random.key(0), Fixed(nnx.Rngs(0)), tp.sgd(0.1), x[:2],
                       ladder=LR)  # fmt: skip


def test_per_replica_batch_sizes_as_a_list_and_a_call_refusing_batch_mask():
    x, y = TRAIN
    state = tp.create_replicas(jax.random.key(0), NnxTwin, tp.sgd(0.1), x[:2],
                               num_replicas=2, hyperparams={"batch_size": [16, 32]})  # fmt: skip
    np.testing.assert_array_equal(state.hyperparams["batch_size"], [16, 32])

    class Inner(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.out = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(x)

    # a **kwargs call gets batch_mask: refused before compiling, with the fix
    with pytest.raises(TypeError, match="batch_mask=None"):
        tp.create_replicas(
            jax.random.key(0), functools.partial(_NnxWrapper, inner=Inner),
            tp.sgd(0.1), x[:2], num_replicas=2, hyperparams={"batch_size": 16.0},
        )  # fmt: skip


@pytest.mark.parametrize(
    ("hide", "module", "says"),
    [
        (
            "import equinox; sys.modules['equinox'] = None",
            "equinox",
            'needs Equinox: pip install "tempering[equinox]"',
        ),
        (
            "from flax import nnx; del nnx.RngStream.fork",
            "nnx",
            "needs flax >= 0.12 (nnx.data, nnx.RngStream.fork); this is flax",
        ),
    ],
    ids=["no-equinox", "old-flax"],
)
def test_a_frontend_without_its_library_says_what_to_install(hide, module, says):
    """A bare ModuleNotFoundError (equinox), or an AttributeError deep in a
    call (an older flax.nnx without RngStream.fork)."""
    import subprocess
    import sys

    code = f"import sys; {hide}; import tempering.frontends.{module}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and says in done.stderr


class EqxBatched(eqx.Module):
    """Written for a batch (vmaps itself): the library calls it per example."""

    linear: eqx.nn.Linear

    def __init__(self, key):
        self.linear = eqx.nn.Linear(16, 3, key=key)

    def __call__(self, x, *, key=None):
        return jax.vmap(self.linear)(x)


def test_an_equinox_model_written_for_a_batch_is_told_it_gets_one_example():
    """The refusal named the batch's shape (2, 16), not the (16,) it is called on."""
    with pytest.raises(ValueError, match=r"called on one example at a time \(shape "
                       r"\(16,\)\).*write it for a single example"):  # fmt: skip
        tp.create_replicas(jax.random.key(0), EqxBatched, tp.sgd(0.1), TRAIN[0][:2],
                           num_replicas=2)  # fmt: skip
