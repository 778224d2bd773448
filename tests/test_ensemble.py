"""The cold chain's snapshot ensemble and the ensemble of a population."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempering as tp
from tempering.ensemble import (
    cold_chain_ensemble,
    mean_probabilities,
    replicas_probabilities,
)
from tempering.moves import exchange_move
from tempering.state import eval_outputs
from tempering.zoo import models

M = 4


def _setup():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.3, M)
    state = tp.create_replicas(
        jax.random.key(0), models.MLP((8,), 3), tp.sgd(0.1), x[:1], ladder=ladder
    )
    return x, y, ladder, state


def _softmax(state, replica, x):
    pick = functools.partial(jax.tree.map, lambda a: a[replica])
    params, stats, hyper = pick((state.params, state.batch_stats, state.hyperparams))
    return np.asarray(jax.nn.softmax(eval_outputs(state, params, stats, hyper, x)))


def test_snapshots_are_the_rung0_replicas_predictions_when_due():
    x, _, ladder, state = _setup()
    inputs = x[:50]
    move = cold_chain_ensemble(
        exchange_move(ladder, c=50.0), inputs, every=2, after=1, chunk_size=16
    )
    move_state = move.init(state)
    step = jax.jit(move.step)
    expected = []
    for r in range(6):
        # new weights every round, and scores that make swaps likely
        state = state.replace(params=jax.tree.map(lambda p: p * 1.1, state.params))
        scores = jnp.asarray(np.random.default_rng(r).normal(size=M), jnp.float32)
        cold = int(np.argmin(np.asarray(move_state.inner.rungs)))
        if r >= 1 and (r - 1) % 2 == 0:
            expected.append(_softmax(state, cold, inputs))
        state, move_state, info = step(
            jax.random.key(r), state, move_state, scores, jnp.int32(r)
        )
    assert int(move_state.snapshots) == 3
    np.testing.assert_allclose(
        mean_probabilities(move_state), np.mean(expected, axis=0), rtol=1e-5, atol=1e-6
    )
    assert np.asarray(info.accepted).shape == (M - 1,)  # the exchange's own info


def test_train_with_the_ensemble_and_the_populations_ensemble():
    x, y, ladder, state = _setup()
    move = cold_chain_ensemble(exchange_move(ladder, c="auto", adapt_rounds=2),
                               x[200:], every=1, after=2)  # fmt: skip
    result = tp.train(
        state, jax.random.key(1), move,
        tp.RunData((x[:200], y[:200]), validation=(x[200:250], y[200:250])),
        tp.RunConfig(num_steps=60, interval=10, batch_size=32, progress=False),
    )  # fmt: skip
    assert result.history.rungs.shape == (6, M)  # the driver still sees the rungs
    assert int(result.move_state.snapshots) == 4  # rounds 2 to 5
    probs = mean_probabilities(result.move_state)
    assert probs.shape == (100, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    population = replicas_probabilities(result.state, x[200:], chunk_size=30)
    by_hand = np.mean([_softmax(result.state, m, x[200:]) for m in range(M)], axis=0)
    np.testing.assert_allclose(population, by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, "every must be >= 1"),
        ({"after": -1}, ValueError, "after must be >= 0"),
        ({"every": 1.5}, TypeError, "every must be an int"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ],
)
def test_bad_ensemble_settings(kwargs, error, match):
    _, _, ladder, _ = _setup()
    with pytest.raises(error, match=match):
        cold_chain_ensemble(exchange_move(ladder), np.zeros((4, 6)), **kwargs)


def test_a_move_without_rungs_has_no_cold_chain():
    x, _, _, state = _setup()
    move = cold_chain_ensemble(tp.identity_move(), x[:4])
    with pytest.raises(ValueError, match="needs a move whose state keeps rungs"):
        move.init(state)


def _poisoned(state, replica):
    """``state`` with NaN weights in ``replica`` (a diverged one, as flag keeps it)."""
    nan = jnp.zeros(M).at[replica].set(jnp.nan)
    return state.replace(
        params=jax.tree.map(
            lambda p: p + nan.reshape((-1,) + (1,) * (p.ndim - 1)), state.params
        )
    )


def test_a_diverged_cold_replica_adds_no_snapshot():
    """Before, one NaN snapshot made the ensemble NaN for the rest of the run."""
    x, _, ladder, state = _setup()
    inputs = x[:20]
    move = cold_chain_ensemble(exchange_move(ladder, c=1.0), inputs)
    move_state = move.init(state)
    step = jax.jit(move.step)
    healthy, expected = state, []
    for r in range(4):
        cold = int(np.argmin(np.asarray(move_state.inner.rungs)))
        diverged = r == 0  # the cold replica's weights are NaN in round 0 only
        current = _poisoned(healthy, cold) if diverged else healthy
        scores = np.arange(M, dtype=np.float32)
        scores[cold] = np.inf if diverged else scores[cold]  # as the driver does
        if not diverged:
            expected.append(_softmax(current, cold, inputs))
        _, move_state, _ = step(
            jax.random.key(r), current, move_state, jnp.asarray(scores), jnp.int32(r)
        )
    assert int(move_state.snapshots) == 3 and int(move_state.skipped) == 1
    probs = mean_probabilities(move_state)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, np.mean(expected, axis=0), rtol=1e-5, atol=1e-6)


def test_the_populations_ensemble_leaves_out_a_diverged_replica():
    x, _, _, state = _setup()
    bad = _poisoned(state, 2)
    with pytest.warns(RuntimeWarning, match=r"replicas \[2\] predict non-finite"):
        probs = replicas_probabilities(bad, x[:50], chunk_size=16)
    by_hand = np.mean([_softmax(state, m, x[:50]) for m in (0, 1, 3)], axis=0)
    np.testing.assert_allclose(probs, by_hand, rtol=1e-5, atol=1e-6)
    # replica 2 overflows on one example only: left out of every chunk
    huge = state.replace(
        params=jax.tree.map(lambda p: p.at[2].multiply(1e5), state.params)
    )
    inputs = x[:50].copy()
    inputs[40] = 1e32
    with pytest.warns(RuntimeWarning, match=r"replicas \[2\] predict non-finite"):
        probs = replicas_probabilities(huge, inputs, chunk_size=16)
    by_hand = np.mean([_softmax(huge, m, inputs) for m in (0, 1, 3)], axis=0)
    np.testing.assert_allclose(probs, by_hand, rtol=1e-5, atol=1e-6)
    everyone = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
    with pytest.raises(ValueError, match="every replica's predictions are non-finite"):
        replicas_probabilities(everyone, x[:50])


@pytest.mark.parametrize(
    ("chunk_size", "error"), [(0, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_the_populations_ensemble_names_a_bad_chunk_size(chunk_size, error):
    x, _, _, state = _setup()
    with pytest.raises(error, match="chunk_size must be"):
        replicas_probabilities(state, x[:10], chunk_size=chunk_size)


class _Regression(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(1)(x)[..., 0]  # shape=(N,)


def test_the_ensembles_need_a_classifier():
    """A regression model's (N,) outputs were softmaxed over the examples."""
    x, _, ladder, _ = _setup()
    state = tp.create_replicas(
        jax.random.key(0), _Regression(), tp.sgd(0.1), x[:1], ladder=ladder,
        loss_fn=lambda outputs, targets: (outputs - targets) ** 2,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"shape \(1,\) for one example.*a classifier"):
        replicas_probabilities(state, x[:10])
    with pytest.raises(ValueError, match=r"shape \(1,\) for one example.*a classifier"):
        cold_chain_ensemble(exchange_move(ladder), x[:10]).init(state)
    head = tp.create_replicas(  # a Dense(1) head: every probability was 1
        jax.random.key(0), models.MLP((8,), 1), tp.sgd(0.1), x[:1], ladder=ladder,
        loss_fn=lambda outputs, targets: (outputs[..., 0] - targets) ** 2,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"shape \(1, 1\) for one example"):
        replicas_probabilities(head, x[:10])
