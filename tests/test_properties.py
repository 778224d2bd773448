"""Property-based tests (hypothesis) of the exchange, the ladders and PBT's operators.

Shapes are fixed (M = 6 replicas) and the functions jitted with their settings
static, so the examples reuse a handful of compiled programs. Few examples,
no deadline and no example database: the file stays fast and writes nothing.
No subnormal floats: XLA on CPU flushes them to zero, NumPy does not.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tempering as tp
from tempering import pbt
from tempering.hyperparams import LIMITS

M = 6
SETTINGS = settings(max_examples=30, deadline=None, database=None)

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


@SETTINGS
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


@SETTINGS
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


@SETTINGS
@given(c=bad_c_st)
def test_exchange_refuses_every_c_that_is_not_finite_and_positive(c):
    with pytest.raises(ValueError, match="c must be finite and > 0"):
        tp.exchange(jax.random.key(0), np.arange(M), np.zeros(M), -np.arange(M), c=c)


@SETTINGS
@given(rungs=st.lists(st.integers(-2, M + 1), min_size=M, max_size=M))
def test_exchange_refuses_rungs_that_are_not_a_permutation(rungs):
    if sorted(rungs) == list(range(M)):
        return
    with pytest.raises(ValueError, match="rungs must be a permutation"):
        tp.exchange(jax.random.key(0), np.asarray(rungs), np.zeros(M), -np.arange(M))


@SETTINGS
@given(betas=st.lists(st.floats(-1e3, 1e3) | st.just(math.nan), min_size=M, max_size=M))
def test_exchange_refuses_betas_that_do_not_decrease_strictly(betas):
    betas = np.asarray(betas)
    if np.all(np.isfinite(betas)) and np.all(np.diff(betas) < 0):
        return
    with pytest.raises(ValueError, match="betas must be finite and strictly"):
        tp.exchange(jax.random.key(0), np.arange(M), np.zeros(M), betas)


lr_st = st.floats(1e-4, LIMITS["learning_rate"])
dropout_st = st.floats(0.0, 0.95)


@SETTINGS
@given(
    name_values=st.one_of(
        st.tuples(
            st.just("learning_rate"),
            st.lists(lr_st, min_size=2, max_size=M, unique=True),
        ),
        st.tuples(
            st.just("dropout_rate"),
            st.lists(dropout_st, min_size=2, max_size=M, unique=True),
        ),
    )
)
def test_make_ladder_sorts_valid_values_into_strictly_increasing_temperatures(
    name_values,
):
    name, values = name_values
    temps64 = (
        np.asarray(values) if name == "learning_rate" else 1 / (1 - np.asarray(values))
    )
    if np.any(np.diff(np.sort(temps64.astype(np.float32))) <= 0):
        return  # float32 merges two values: make_ladder's duplicate check owns that
    ladder = tp.make_ladder({name: values})
    temps = np.asarray(ladder.temperatures)
    assert ladder.num_rungs == len(values)
    assert np.all(np.diff(temps) > 0)
    assert np.all(np.diff(np.asarray(ladder.betas)) < 0)
    np.testing.assert_allclose(
        np.asarray(ladder.values[name]), np.sort(values), rtol=1e-6, atol=1e-7
    )


def _with_one(values: list[float], bad: float, index: int) -> list[float]:
    values = list(values)
    values[index % len(values)] = bad
    return values


@SETTINGS
@given(
    values=st.lists(lr_st, min_size=2, max_size=M, unique=True),
    bad=st.floats(max_value=0.0)
    | st.floats(min_value=LIMITS["learning_rate"], exclude_min=True)
    | st.sampled_from([math.nan, math.inf]),
    index=st.integers(0, M),
)
def test_make_ladder_refuses_any_bad_learning_rate(values, bad, index):
    with pytest.raises(ValueError, match="learning_rate"):
        tp.make_ladder(learning_rate=_with_one(values, bad, index))


@SETTINGS
@given(
    values=st.lists(dropout_st, min_size=2, max_size=M, unique=True),
    bad=st.floats(max_value=-1e-6)
    | st.floats(min_value=1.0)
    | st.sampled_from([math.nan, -math.inf]),
    index=st.integers(0, M),
)
def test_make_ladder_refuses_any_bad_dropout_rate(values, bad, index):
    with pytest.raises(ValueError, match="dropout_rate"):
        tp.make_ladder(dropout_rate=_with_one(values, bad, index))


# --- PBT: exploit and explore -----------------------------------------------------------

CONFIGS = {
    (selection, fraction): pbt.pbt_config(
        {"learning_rate": (1e-3, 1.0, True), "dropout_rate": (0.0, 0.5)},
        selection=selection,
        fraction=fraction,
        resample_probability=0.3,
    )
    for selection, fraction in [
        ("truncation", 0.2),
        ("truncation", 0.5),
        ("tournament", 0.2),
    ]
}
select_parents = jax.jit(pbt.select_parents, static_argnums=2)
explore = jax.jit(pbt.explore, static_argnums=3)
scores_st = st.lists(
    st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
    | st.sampled_from([math.inf, math.nan]),
    min_size=M,
    max_size=M,
)


@SETTINGS
@given(
    scores=scores_st,
    setting=st.sampled_from(sorted(CONFIGS)),
    seed=st.integers(0, 2**31 - 1),
)
def test_exploit_copies_only_from_better_replicas(scores, setting, seed):
    config = CONFIGS[setting]
    parent, copied = select_parents(
        jax.random.key(seed), np.asarray(scores, np.float32), config
    )
    parent, copied = np.asarray(parent), np.asarray(copied)
    own = np.arange(M)
    assert np.all((0 <= parent) & (parent < M))
    np.testing.assert_array_equal(copied, parent != own)
    ranked = np.where(np.isfinite(scores), np.asarray(scores, np.float32), np.inf)
    if config.selection == "truncation":
        n = pbt.num_truncated(M, config.fraction)
        ordered = np.sort(ranked)
        assert copied.sum() == n  # exactly the bottom n copy
        assert np.all(ranked[copied] >= ordered[M - n])
        assert np.all(ranked[parent[copied]] <= ordered[n - 1])  # each from the top n
    else:
        assert np.all(ranked[parent[copied]] < ranked[copied])  # strictly better


@SETTINGS
@given(
    lr=st.lists(st.floats(1e-3, 1.0), min_size=M, max_size=M),
    rate=st.lists(st.just(0.0) | st.floats(1e-6, 0.5), min_size=M, max_size=M),
    copied=st.lists(st.booleans(), min_size=M, max_size=M),
    seed=st.integers(0, 2**31 - 1),
)
def test_explore_stays_in_bounds_and_changes_only_copies(lr, rate, copied, seed):
    config = CONFIGS[("truncation", 0.2)]
    values = {
        "learning_rate": np.asarray(lr, np.float32),
        "dropout_rate": np.asarray(rate, np.float32),
    }
    copied = np.asarray(copied)
    new, resampled = explore(jax.random.key(seed), values, copied, config)
    for name, (low, high) in zip(config.names, config.bounds, strict=True):
        out = np.asarray(new[name])
        assert np.all((out >= np.float32(low)) & (out <= np.float32(high)))
        np.testing.assert_array_equal(out[~copied], values[name][~copied])
        assert not np.any(np.asarray(resampled[name]) & ~copied)
        # a perturbed (not resampled, not clipped) value moved by one of the factors
        moved = copied & ~np.asarray(resampled[name]) & (out > low) & (out < high)
        ratios = out[moved] / values[name][moved]
        factors = np.asarray(config.perturb_factors, np.float32)
        assert np.all(np.min(np.abs(ratios[:, None] - factors), axis=1) < 1e-4)


def test_resample_and_copy_frequencies_within_bounds():
    config = CONFIGS[("tournament", 0.2)]  # resample_probability 0.3
    trials = 1000
    keys = jax.random.split(jax.random.key(3), trials)
    values = {"learning_rate": jnp.full((M,), 0.1), "dropout_rate": jnp.zeros(M)}
    explore_all = functools.partial(pbt.explore, config=config)
    run = jax.jit(jax.vmap(explore_all, (0, None, None)))
    _, resampled = run(keys, values, jnp.ones((M,), bool))
    for name in config.names:
        freq = float(np.mean(resampled[name]))
        stderr = math.sqrt(0.3 * 0.7 / (trials * M))
        assert abs(freq - 0.3) < 5 * stderr
    # binary tournament on distinct scores: replica of rank k (0 best) copies
    # with probability k / (M - 1)
    scores = jnp.arange(M, dtype=jnp.float32)
    pick = jax.jit(jax.vmap(lambda k: pbt.select_parents(k, scores, config)[1]))
    freq = np.asarray(pick(keys)).mean(axis=0)
    expected = np.arange(M) / (M - 1)
    stderr = np.sqrt(expected * (1 - expected) / trials)
    assert np.all(np.abs(freq - expected) <= 5 * stderr + 1e-9)
