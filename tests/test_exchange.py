"""The exchange contract, checked exactly and statistically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempering as tp

NUM_KEYS = 4000


def metropolis(c, beta_cold, beta_hot, loss_cold, loss_hot):
    return min(1.0, float(np.exp(c * (beta_cold - beta_hot) * (loss_cold - loss_hot))))


def batched_exchange(rungs, losses, betas, **kwargs):
    keys = jax.random.split(jax.random.key(42), NUM_KEYS)
    run = jax.jit(jax.vmap(lambda k: tp.exchange(k, rungs, losses, betas, **kwargs)))
    return run(keys)


def assert_frequency(observed_hits, trials, prob):
    stderr = np.sqrt(max(prob * (1 - prob), 1e-12) / trials)
    freq = observed_hits / trials
    assert abs(freq - prob) <= 4 * stderr + 1e-9, (freq, prob, stderr)


@pytest.mark.parametrize("scheme", ["random_pair", "even_odd"])
@pytest.mark.parametrize(
    "loss_cold, loss_hot",
    [(1.0, 1.3), (1.3, 1.0), (1.0, 1.05), (2.0, 2.0)],
    ids=["cold-better", "cold-worse", "close", "equal"],
)
def test_acceptance_frequency_matches_metropolis(scheme, loss_cold, loss_hot):
    # Two rungs: the only pair is always proposed under both schemes (parity 0).
    betas = jnp.array([1 / 0.01, 1 / 0.02])
    c = 0.02
    rungs = jnp.array([1, 0])  # replica 1 is cold, replica 0 is hot
    losses = jnp.array([loss_hot, loss_cold])
    new_rungs, info = batched_exchange(rungs, losses, betas, c=c, scheme=scheme)
    prob = metropolis(c, 100.0, 50.0, loss_cold, loss_hot)
    assert np.all(np.asarray(info.proposed))
    np.testing.assert_allclose(info.acceptance_prob[:, 0], prob, rtol=1e-5)
    swapped = np.asarray(new_rungs[:, 0] == 0)  # replica 0 moved to the cold rung
    np.testing.assert_array_equal(swapped, np.asarray(info.accepted[:, 0]))
    assert_frequency(swapped.sum(), NUM_KEYS, prob)


def test_lower_loss_moves_to_colder_rung_always():
    betas = jnp.array([4.0, 2.0, 1.0])
    rungs = jnp.array([0, 1, 2])
    losses = jnp.array(
        [3.0, 1.0, 2.0]
    )  # replica 1 (rung 1) better than replica 0 (rung 0)
    new_rungs, info = batched_exchange(
        rungs, losses, betas, scheme="even_odd", parity=0
    )
    assert np.all(np.asarray(new_rungs) == np.array([1, 0, 2]))
    np.testing.assert_allclose(info.acceptance_prob[0], [1.0, np.exp(-1.0)], rtol=1e-6)


@pytest.mark.parametrize("scheme", ["random_pair", "even_odd"])
def test_acceptance_per_pair_in_a_longer_ladder(scheme):
    num = 6
    betas = 1.0 / jnp.linspace(0.5, 1.0, num)
    rng = np.random.default_rng(0)
    rungs = jnp.asarray(rng.permutation(num))
    losses = jnp.asarray(rng.normal(1.0, 0.3, size=num), jnp.float32)
    c = 3.0
    new_rungs, info = batched_exchange(
        rungs, losses, betas, c=c, scheme=scheme, parity=1
    )
    at_rung = np.argsort(np.asarray(rungs))
    b, loss = np.asarray(betas), np.asarray(losses)
    proposed = np.asarray(info.proposed)
    accepted = np.asarray(info.accepted)
    if scheme == "random_pair":
        assert np.all(proposed.sum(1) == 1)
        np.testing.assert_allclose(
            proposed.mean(0), 1 / (num - 1), atol=4 * np.sqrt(0.2 * 0.8 / NUM_KEYS)
        )
    else:
        np.testing.assert_array_equal(
            proposed, np.tile(np.arange(num - 1) % 2 == 1, (NUM_KEYS, 1))
        )
    for r in range(num - 1):
        prob = metropolis(c, b[r], b[r + 1], loss[at_rung[r]], loss[at_rung[r + 1]])
        hits = accepted[proposed[:, r], r]
        if scheme == "even_odd" and r % 2 == 0:
            assert len(hits) == 0
            continue
        assert_frequency(hits.sum(), len(hits), prob)
    assert not np.any(accepted & ~proposed)


@pytest.mark.parametrize("scheme", ["random_pair", "even_odd"])
def test_new_rungs_are_permutations_and_swaps_are_adjacent(scheme):
    num = 7
    rng = np.random.default_rng(1)
    rungs = jnp.asarray(rng.permutation(num))
    losses = jnp.asarray(rng.normal(size=num), jnp.float32)
    new_rungs, info = batched_exchange(
        rungs, losses, jnp.linspace(2.0, 1.0, num), c=1.0, scheme=scheme
    )
    new = np.asarray(new_rungs)
    assert np.all(np.sort(new, axis=1) == np.arange(num))
    moved = np.abs(new - np.asarray(rungs))
    assert moved.max() <= 1
    np.testing.assert_array_equal(
        (moved > 0).sum(1), 2 * np.asarray(info.accepted).sum(1)
    )


def test_same_key_same_result_and_jit_matches_eager():
    rungs, losses, betas = (
        jnp.array([2, 0, 1]),
        jnp.array([1.0, 1.2, 0.9]),
        jnp.array([3.0, 2.0, 1.0]),
    )
    key = jax.random.key(7)
    a = tp.exchange(key, rungs, losses, betas, c=2.0)
    b = tp.exchange(key, rungs, losses, betas, c=2.0)
    c = jax.jit(lambda k: tp.exchange(k, rungs, losses, betas, c=2.0))(key)
    for x, y, z in zip(
        jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c), strict=True
    ):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_parity_can_be_traced():
    run = jax.jit(
        lambda k, p: tp.exchange(
            k,
            jnp.arange(4),
            jnp.zeros(4),
            jnp.array([4.0, 3, 2, 1]),
            scheme="even_odd",
            parity=p,
        )
    )
    _, even = run(jax.random.key(0), 0)
    _, odd = run(jax.random.key(0), 1)
    np.testing.assert_array_equal(even.proposed, [True, False, True])
    np.testing.assert_array_equal(odd.proposed, [False, True, False])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_diverged_replica_never_moves_colder(bad):
    betas = jnp.array([2.0, 1.0])
    # hot replica (replica 1) diverged: it must stay hot whatever the cold loss.
    new_rungs, info = batched_exchange(
        jnp.array([0, 1]), jnp.array([5.0, bad]), betas, c=1.0
    )
    assert np.all(np.asarray(new_rungs) == [0, 1])
    assert np.all(np.asarray(info.acceptance_prob) == 0.0)
    # cold replica diverged: it always moves to the hotter rung.
    new_rungs, info = batched_exchange(
        jnp.array([0, 1]), jnp.array([bad, 5.0]), betas, c=1.0
    )
    assert np.all(np.asarray(new_rungs) == [1, 0])
    assert np.all(np.asarray(info.acceptance_prob) == 1.0)


@pytest.mark.parametrize("pair", [(np.inf, np.inf), (np.nan, np.nan), (np.nan, np.inf)])
def test_undefined_ratio_rejects(pair):
    new_rungs, info = batched_exchange(
        jnp.array([0, 1]), jnp.array(pair), jnp.array([2.0, 1.0]), c=1.0
    )
    assert np.all(np.asarray(new_rungs) == [0, 1])
    assert not np.any(np.asarray(info.accepted))


def test_unknown_scheme_raises():
    with pytest.raises(ValueError, match="scheme must be one of"):
        tp.exchange(
            jax.random.key(0), jnp.arange(2), jnp.zeros(2), jnp.ones(2), scheme="all"
        )
