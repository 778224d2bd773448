"""The exchange contract, checked exactly and statistically."""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    INF,
    NAN,
    PROPERTY_SETTINGS,
    Case,
    T,
    V,
    bad_input_params,
    check_raises_before_compiling,
)
from hypothesis import given
from hypothesis import strategies as st

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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_diverged_replica_never_moves_colder(bad):
    """-inf is diverged too (as in best_index and PBT), not the best loss."""
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


@pytest.mark.parametrize("c", [1.0, 1e37, 3e38])
def test_equal_losses_always_swap_at_any_accepted_c(c):
    """C of 1e37 and more (finite in float32, accepted by check_c) made
    c * dbeta overflow: inf * 0 was NaN and equal losses always rejected."""
    betas = jnp.array([100.0, 1.0])
    new_rungs, info = batched_exchange(
        jnp.array([0, 1]), jnp.array([0.5, 0.5]), betas, c=c
    )
    assert np.all(np.asarray(new_rungs) == [1, 0])
    assert np.all(np.asarray(info.acceptance_prob) == 1.0)
    assert np.all(np.asarray(info.log_ratio) == 0.0)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_raw_keys_of_the_default_prng_are_taken(impl):
    """A raw jax.random.PRNGKey of an rbg default, (4,) uint32, was refused:
    only threefry's (2,) shape was."""
    before = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", impl)
    try:
        raw = jax.random.PRNGKey(3)
        new_rungs, info = tp.exchange(
            raw, np.arange(3), np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])
        )
        np.testing.assert_array_equal(np.sort(np.asarray(new_rungs)), [0, 1, 2])
        other = np.zeros(4 if raw.shape == (2,) else 2, np.uint32)  # another impl's
        with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
            tp.exchange(other, np.arange(3), np.ones(3), np.array([3.0, 2.0, 1.0]))
    finally:
        jax.config.update("jax_default_prng_impl", before)


def test_unknown_scheme_raises():
    with pytest.raises(ValueError, match="scheme must be one of"):
        tp.exchange(
            jax.random.key(0), jnp.arange(2), jnp.zeros(2), jnp.ones(2), scheme="all"
        )


def xchg(ctx: Any, /, **overrides: Any) -> Any:
    """``tp.exchange`` on concrete arguments, with ``overrides``."""
    kwargs = dict(
        key=ctx.key, rungs=ctx.rungs, losses=ctx.losses, betas=ctx.betas, c=1.0
    )
    kwargs.update(overrides)
    return tp.exchange(**kwargs)


# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- exchange -------------------------------------------------------------
    Case("exchange-c-0", lambda c: xchg(c, c=0.0), V, r"c must be finite and > 0"),
    Case("exchange-c-negative", lambda c: xchg(c, c=-1.0), V, r"c must be finite and > 0"),
    Case("exchange-c-nan", lambda c: xchg(c, c=NAN), V, r"c must be finite and > 0"),
    Case("exchange-c-inf", lambda c: xchg(c, c=INF), V, r"c must be finite and > 0"),
    Case("exchange-c-overflows-float32", lambda c: xchg(c, c=1e39), V, r"c must be .*finite in float32", fixed=True),
    Case("exchange-c-array", lambda c: xchg(c, c=np.array([1.0, 2.0])), V, r"c must be one number"),
    Case("exchange-c-string", lambda c: xchg(c, c="auto"), T, r"c must be a number", fixed=True),
    Case("exchange-betas-increasing", lambda c: xchg(c, betas=c.betas[::-1]), V, r"betas must be finite and strictly decreasing"),
    Case("exchange-betas-nan", lambda c: xchg(c, betas=jnp.array([4.0, NAN, 2.0, 1.0])), V, r"betas must be finite"),
    Case("exchange-two-betas", lambda c: xchg(c, betas=c.betas[:2]), V, r"betas must have one entry per replica"),
    Case("exchange-three-losses", lambda c: xchg(c, losses=c.losses[:3]), V, r"losses must have one entry per replica"),
    Case("exchange-five-losses", lambda c: xchg(c, losses=jnp.ones(5)), V, r"losses must have one entry per replica"),
    Case("exchange-rungs-not-permutation", lambda c: xchg(c, rungs=jnp.array([0, 0, 1, 2])), V, r"rungs must be a permutation"),
    Case("exchange-rungs-float", lambda c: xchg(c, rungs=jnp.array([0.0, 1.0, 2.0, 3.0])), T, r"rungs must be integers", fixed=True),
    Case("exchange-rungs-2d", lambda c: xchg(c, rungs=c.rungs[None]), V, r"rungs must be a permutation"),
    Case("exchange-scheme-unknown", lambda c: xchg(c, scheme="even-odd"), V, r"scheme must be one of"),
    Case("exchange-parity-2", lambda c: xchg(c, scheme="even_odd", parity=2), V, r"parity must be 0 or 1", fixed=True),
    Case("exchange-parity-float", lambda c: xchg(c, scheme="even_odd", parity=0.5), V, r"parity must be 0 or 1", fixed=True),
    Case("exchange-key-int", lambda c: xchg(c, key=3), T, r"key must be a JAX PRNG key", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


# --- properties (hypothesis, PROPERTY_SETTINGS in conftest.py): the exchange ----------

M = 6
# The settings are static, so exchange still validates them while traced.
jit_exchange = jax.jit(tp.exchange, static_argnames=("scheme", "parity"))

losses_st = st.lists(
    st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
    | st.sampled_from([math.inf, math.nan]),
    min_size=M,
    max_size=M,
)
temperatures_st = st.lists(
    st.floats(1e-3, 1e3), min_size=M, max_size=M, unique=True
).map(sorted)


def _betas(temperatures: list[float]) -> np.ndarray:
    betas = 1.0 / np.asarray(temperatures, np.float32)
    # float32 rounding may merge two close temperatures: skip those examples
    return betas if np.all(np.diff(betas) < 0) else None


@PROPERTY_SETTINGS
@given(
    rungs=st.permutations(range(M)),
    losses=losses_st,
    temperatures=temperatures_st,
    c=st.floats(1e-3, 1e3),
    scheme=st.sampled_from(["random_pair", "even_odd"]),
    parity=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**31 - 1),
)
def test_exchange_swaps_only_neighbours_and_keeps_a_permutation(
    rungs, losses, temperatures, c, scheme, parity, seed
):
    betas = _betas(temperatures)
    if betas is None:
        return
    old = np.asarray(rungs, np.int32)
    new, info = jit_exchange(
        jax.random.key(seed), old, np.asarray(losses, np.float32), betas,
        c=np.float32(c), scheme=scheme, parity=parity,
    )  # fmt: skip
    new = np.asarray(new)
    proposed, accepted = np.asarray(info.proposed), np.asarray(info.accepted)
    prob = np.asarray(info.acceptance_prob)

    assert sorted(new.tolist()) == list(range(M))  # a permutation stays one
    assert np.all(np.abs(new - old) <= 1)  # only adjacent rungs swap
    assert np.all(prob >= 0) and np.all(prob <= 1)
    assert not np.any(accepted & ~proposed)
    assert not np.any(proposed[:-1] & proposed[1:])  # proposed pairs never overlap
    if scheme == "random_pair":
        assert proposed.sum() == 1
    else:
        np.testing.assert_array_equal(proposed, np.arange(M - 1) % 2 == parity)
    # replica m moved up one rung exactly when the pair (rung, rung + 1) swapped
    for m in range(M):
        up = old[m] < M - 1 and accepted[old[m]]
        down = old[m] > 0 and accepted[old[m] - 1]
        assert new[m] == old[m] + int(up) - int(down)
    # a diverged replica never moves to a colder rung
    bad = ~np.isfinite(np.asarray(losses, np.float32))
    assert np.all(new[bad] >= old[bad])


@PROPERTY_SETTINGS
@given(
    losses=st.lists(
        st.floats(-10, 10, width=32, allow_subnormal=False), min_size=M, max_size=M
    ),
    temperatures=temperatures_st,
    c=st.floats(1e-2, 10),
)
def test_exchange_acceptance_is_the_metropolis_probability(losses, temperatures, c):
    betas = _betas(temperatures)
    if betas is None:
        return
    rungs = np.arange(M, dtype=np.int32)
    _, info = jit_exchange(
        jax.random.key(0), rungs, np.asarray(losses, np.float32), betas,
        c=np.float32(c), scheme="even_odd", parity=0,
    )  # fmt: skip
    dbeta = (betas[:-1] - betas[1:]).astype(np.float64)  # float32, as exchange has it
    log_ratio = np.float32(c) * dbeta * -np.diff(losses)
    expected = np.exp(np.minimum(log_ratio, 0.0))
    np.testing.assert_allclose(info.acceptance_prob, expected, rtol=2e-3, atol=1e-6)


bad_c_st = st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf, -math.inf])


@PROPERTY_SETTINGS
@given(c=bad_c_st)
def test_exchange_refuses_every_c_that_is_not_finite_and_positive(c):
    with pytest.raises(ValueError, match="c must be finite and > 0"):
        tp.exchange(jax.random.key(0), np.arange(M), np.zeros(M), -np.arange(M), c=c)


@PROPERTY_SETTINGS
@given(rungs=st.lists(st.integers(-2, M + 1), min_size=M, max_size=M))
def test_exchange_refuses_rungs_that_are_not_a_permutation(rungs):
    if sorted(rungs) == list(range(M)):
        return
    with pytest.raises(ValueError, match="rungs must be a permutation"):
        tp.exchange(jax.random.key(0), np.asarray(rungs), np.zeros(M), -np.arange(M))


@PROPERTY_SETTINGS
@given(betas=st.lists(st.floats(-1e3, 1e3) | st.just(math.nan), min_size=M, max_size=M))
def test_exchange_refuses_betas_that_do_not_decrease_strictly(betas):
    betas = np.asarray(betas)
    if np.all(np.isfinite(betas)) and np.all(np.diff(betas) < 0):
        return
    with pytest.raises(ValueError, match="betas must be finite and strictly"):
        tp.exchange(jax.random.key(0), np.arange(M), np.zeros(M), betas)


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "losses, betas, parity, match",
    [
        (np.zeros(M - 1), -np.arange(M), 0, "losses must have one entry per replica"),
        (np.zeros(M), -np.arange(M + 1), 0, "betas must have one entry per replica"),
        (np.zeros((M, 1)), -np.arange(M), 0, "losses must have one entry per replica"),
        (np.zeros(M), -np.arange(M), 1.0, "parity must be 0 or 1"),
    ],
)
def test_exchange_checks_shapes_under_jit_too(wrap, losses, betas, parity, match):
    # Under jax.jit the gather of a short loss vector clamps its indices: the
    # test would compare the wrong replicas, silently.
    def run(losses, betas, parity):
        return tp.exchange(
            jax.random.key(0), jnp.arange(M), losses, betas,
            scheme="even_odd", parity=parity,
        )  # fmt: skip

    with pytest.raises(ValueError, match=match):
        wrap(run)(jnp.asarray(losses), jnp.asarray(betas, jnp.float32), parity)


def test_exchange_takes_rungs_as_a_list_and_names_them_when_they_are_floats():
    args = (np.zeros(M), -np.arange(M))
    rungs, _ = tp.exchange(jax.random.key(0), list(range(M)), *args)
    assert sorted(np.asarray(rungs).tolist()) == list(range(M))
    with pytest.raises(TypeError, match="rungs must be integers"):
        tp.exchange(jax.random.key(0), [float(r) for r in range(M)], *args)
