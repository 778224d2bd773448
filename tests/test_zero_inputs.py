"""Model inputs every replica holds at 0 reach the model as the number 0.

A learning-rate ladder on a model with a ``dropout_rate`` keyword used to draw
a dropout mask of rate 0 in every step (a third of an MLP's step on CPU). The
drivers now pass such an input as the Python number 0, the model's own
default, so the dropout layers skip: no mask, the same numbers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_blobs
from flax import nnx

import tempering as tp
from tempering import driver, fast
from tempering.frontends import equinox as tp_eqx
from tempering.frontends import nnx as tp_nnx
from tempering.layers import Dropout, dropout
from tempering.step import zero_model_inputs
from tempering.zoo.models import MLP

TRAIN, VAL = make_blobs(160, dim=8, seed=0), make_blobs(48, dim=8, seed=1)


class DefaultRateNet(nn.Module):
    """A model whose dropout rate defaults to 0.1, not 0."""

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.1):
        x = Dropout()(nn.Dense(8)(x), dropout_rate, deterministic=not train)
        return nn.Dense(3)(x)


def _replicas(ladder, model=None):
    model = MLP((16,), 3) if model is None else model
    return tp.create_replicas(
        jax.random.key(0), model, tp.sgd(0.05, momentum=0.9), TRAIN[0][:2],
        ladder=ladder,
    )  # fmt: skip


def test_zero_model_inputs_names_inputs_at_the_models_zero_default():
    lr_ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
    state = _replicas(lr_ladder)
    assert state.model_inputs == ("dropout_rate",)
    assert zero_model_inputs(state) == ("dropout_rate",)
    rates = jnp.array([0.0, 0.0, 0.1, 0.0])
    one_nonzero = tp.set_hyperparams(state, dropout_rate=rates)
    assert zero_model_inputs(one_nonzero) == ()
    nan_rates = jnp.array([0.0, jnp.nan, 0.0, 0.0])  # a diverged move's output
    nan = state.replace(hyperparams={**state.hyperparams, "dropout_rate": nan_rates})
    assert zero_model_inputs(nan) == ()
    drop_ladder = tp.linear_ladder("dropout_rate", 0.1, 0.4, 4, learning_rate=0.05)
    assert zero_model_inputs(_replicas(drop_ladder)) == ()
    # A model whose own default is not 0 is never handed a number it was not
    # written for, even when every replica holds 0.
    other = _replicas(lr_ladder, DefaultRateNet())
    other = tp.set_hyperparams(other, dropout_rate=0.0)
    assert zero_model_inputs(other) == ()


def test_train_step_with_zero_inputs_draws_no_mask_and_equals_the_traced_step():
    state = _replicas(tp.geometric_ladder("learning_rate", 0.01, 0.1, 4))
    key, (x, y) = jax.random.key(3), (TRAIN[0][:32], TRAIN[1][:32])

    def step(zero_inputs):
        return jax.jit(tp.train_step, static_argnames="zero_inputs")(
            state, key, x, y, zero_inputs=zero_inputs
        )

    traced = jax.make_jaxpr(lambda s: tp.train_step(s, key, x, y))(state)
    skipped = jax.make_jaxpr(
        lambda s: tp.train_step(s, key, x, y, zero_inputs=("dropout_rate",))
    )(state)
    assert fast._count(traced.jaxpr, "random_bits") > 0
    assert fast._count(skipped.jaxpr, "random_bits") == 0
    jax.tree.map(np.testing.assert_array_equal, step(()), step(("dropout_rate",)))
    one_name = jax.make_jaxpr(
        lambda s: tp.train_step(s, key, x, y, zero_inputs="dropout_rate")
    )(state)
    assert fast._count(one_name.jaxpr, "random_bits") == 0


def _record_zero_inputs(monkeypatch) -> list[tuple[str, ...]]:
    seen = []
    run_segment = driver.run_segment

    def recording(*args, settings, **kwargs):
        seen.append(settings.zero_inputs)
        return run_segment(*args, settings=settings, **kwargs)

    monkeypatch.setattr(driver, "run_segment", recording)
    return seen


def test_drivers_decide_per_segment_after_the_burn_in_and_every_move(monkeypatch):
    seen = _record_zero_inputs(monkeypatch)
    ladder = tp.linear_ladder("dropout_rate", 0.1, 0.4, 4, learning_rate=0.05)
    tp.pt_train(
        _replicas(ladder), ladder, jax.random.key(1), train_data=TRAIN,
        validation_data=VAL, num_steps=40, burn_in=20, exchange_interval=10,
        batch_size=16, burn_in_hyperparams={"dropout_rate": 0.0},
    )  # fmt: skip
    assert seen == [("dropout_rate",), (), ()]  # burn-in without dropout, then with

    seen.clear()

    def raise_dropout(key, state, scores, round_index):  # a move that sets it
        return tp.set_hyperparams(state, dropout_rate=0.2 * (round_index >= 1)), {}

    lr_ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
    config = tp.RunConfig(num_steps=40, interval=10, batch_size=16)
    result = tp.train(
        _replicas(lr_ladder), jax.random.key(1), raise_dropout,
        tp.RunData(TRAIN, validation=VAL), config,
    )  # fmt: skip
    assert seen == [("dropout_rate",)] * 2 + [()] * 2
    np.testing.assert_allclose(result.state.hyperparams["dropout_rate"], 0.2)


@pytest.mark.parametrize("method", ["pt", "pbt"])
def test_runs_are_bitwise_the_runs_that_draw_masks_of_rate_zero(monkeypatch, method):
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)

    def run():
        run_data = dict(train_data=TRAIN, validation_data=VAL, batch_size=16)
        if method == "pt":
            return tp.pt_train(
                _replicas(ladder), ladder, jax.random.key(2), num_steps=30,
                exchange_interval=10, **run_data,
            )  # fmt: skip
        config = tp.pbt_config({"learning_rate": tp.Prior(0.01, 0.1, log=True)})
        return tp.pbt_train(
            _replicas(ladder), jax.random.key(2), config=config, num_steps=30,
            ready_interval=10, **run_data,
        )  # fmt: skip

    seen = _record_zero_inputs(monkeypatch)
    skipped = run()
    assert set(seen) == {("dropout_rate",)}
    monkeypatch.setattr(driver, "zero_model_inputs", lambda state: ())
    seen.clear()
    traced = run()
    assert set(seen) == {()}
    jax.tree.map(
        np.testing.assert_array_equal,
        (skipped.state.params, skipped.state.opt_state, skipped.history.train_loss),
        (traced.state.params, traced.state.opt_state, traced.history.train_loss),
    )


def test_dropout_layers_skip_the_number_zero_and_need_no_key():
    x = jnp.arange(1.0, 7.0).reshape(2, 3)
    # linen: no "dropout" RNG needed in training mode
    assert Dropout().apply({}, x, 0.0, deterministic=False) is x
    with pytest.raises(Exception, match="dropout"):  # an array 0 still draws
        Dropout().apply({}, x, jnp.float32(0.0), deterministic=False)
    assert dropout(None, x, 0) is x
    # nnx: the layer's stream does not advance
    layer = tp_nnx.Dropout(rngs=nnx.Rngs(dropout=0))
    count = int(layer.rngs.count.value)
    assert layer(x, 0.0) is x
    assert int(layer.rngs.count.value) == count
    layer(x, jnp.float32(0.0))
    assert int(layer.rngs.count.value) == count + 1
    # Equinox: no key needed in training mode
    assert tp_eqx.Dropout()(x, 0.0) is x
    with pytest.raises(ValueError, match="needs key"):
        tp_eqx.Dropout()(x, jnp.float32(0.0))


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.2, float("nan")])
def test_a_concrete_rate_outside_zero_one_is_refused(rate):
    """Before, 1.5 zeroed everything and -0.2 scaled every element silently."""
    with pytest.raises(ValueError, match=r"rate must lie in \[0, 1\)"):
        dropout(jax.random.key(0), jnp.ones(4), rate)
