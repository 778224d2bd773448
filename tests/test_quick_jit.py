"""quick_jit: the run-once programs, compiled by XLA:CPU's older emitters, give the same bits."""

from __future__ import annotations

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempering as tp
from tempering import divergence, driver, state
from tempering._quick_jit import QUICK_COMPILE_OPTIONS, quick_compile_options, quick_jit
from tempering.zoo import models

TAKES_OPTIONS = "compiler_options" in inspect.signature(jax.jit).parameters
# Every program the library compiles with quick_jit.
QUICK = (
    (state, "_init_replicas"),
    (driver, "_copy"),
    (driver, "_split_off_data_key"),
    (driver, "_round_keys"),
    (driver, "_jitted_move"),
    (divergence, "copy_replicas"),
)


@pytest.fixture
def optimised():
    """XLA's optimisations on (the suite runs without): bits as users get them."""
    # The setting is read when a program compiles, and is no part of the
    # in-memory cache's key: programs compiled by earlier tests are dropped.
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    jax.clear_caches()
    yield
    jax.config.update("jax_disable_most_optimizations", before)
    jax.clear_caches()


@pytest.fixture
def plain(monkeypatch):
    """Replaces every quick_jit program by plain ``jax.jit`` of the same function."""

    def apply():
        for module, name in QUICK:
            fn = getattr(module, name)
            assert isinstance(fn, quick_jit), name
            monkeypatch.setattr(module, name, jax.jit(fn.__wrapped__, **fn._jit_kwargs))

    return apply


@pytest.mark.skipif(
    not TAKES_OPTIONS or jax.default_backend() != "cpu",
    reason="the options are for XLA:CPU, through jax.jit's compiler_options",
)
def test_the_run_once_programs_are_compiled_with_the_quick_options():
    assert quick_compile_options() == QUICK_COMPILE_OPTIONS

    def options_of(fn, *args):
        return dict(getattr(fn.lower(*args)._lowering, "_compiler_options_kvs", ()))

    key = jax.random.key(0)
    assert options_of(driver._round_keys, key, jnp.int32(3)) == QUICK_COMPILE_OPTIONS
    assert options_of(jax.jit(jax.random.key_data), key) == {}  # plain jit untouched
    own = {"xla_cpu_enable_fast_math": False}
    mine = quick_jit(jax.random.key_data, compiler_options=own)
    assert options_of(mine, key) == {**QUICK_COMPILE_OPTIONS, **own}  # kept


def test_quick_jit_is_jit_with_its_attributes():
    def add(x, y, *, twice):
        return 2 * (x + y) if twice else x + y

    fn = quick_jit(add, static_argnames="twice")
    assert fn.__wrapped__ is add and fn.__name__ == "add"
    assert float(fn(1.0, 2.0, twice=True)) == 6.0
    fn(3.0, 4.0, twice=True)
    assert fn._cache_size() == 1  # compiled once
    fn.clear_cache()
    assert fn._cache_size() == 0

    with pytest.raises(AttributeError):
        fn.__no_such_attribute__  # noqa: B018


def _replicas(model, sample):
    return tp.create_replicas(
        jax.random.key(3), model, tp.sgd(0.1, momentum=0.9), sample, num_replicas=3,
        hyperparams={"dropout_rate": 0.1},
    )  # fmt: skip


def test_replicas_are_bitwise_those_of_plain_jit(optimised, plain):
    # truncated-normal and uniform initialisers, BatchNorm statistics, momentum
    cases = [
        (models.lenet5_emnist(), np.zeros((2, 28, 28, 1), np.float32)),
        (models.ResNet((1, 1, 1)), np.zeros((2, 16, 16, 3), np.float32)),
        (models.MLP((16, 16)), np.zeros((2, 40), np.float32)),
    ]
    quick = [_replicas(*case) for case in cases]
    plain()
    for case, got in zip(cases, quick, strict=True):
        want = _replicas(*case)
        chex.assert_trees_all_equal(
            (got.params, got.batch_stats, got.opt_state),
            (want.params, want.batch_stats, want.opt_state),
        )


def _runs(blobs):
    (x, y), val = blobs
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.5, 4)
    replicas = tp.create_replicas(
        jax.random.key(0), models.MLP((8,), 3), tp.sgd(0.05, momentum=0.9), x[:2],
        ladder=ladder,
    )  # fmt: skip
    common = {"train_data": (x, y), "validation_data": val, "num_steps": 40}
    pt = tp.pt_train(
        replicas, ladder, jax.random.key(1), exchange_interval=5, burn_in=10, **common
    )
    config = tp.pbt_config({"learning_rate": tp.Prior(0.01, 0.5, log=True)})
    pbt = tp.pbt_train(
        replicas, jax.random.key(2), config=config, ready_interval=5, **common
    )
    gather = jnp.asarray([3, 0, 0, 1], jnp.int32)
    copied = divergence.copy_replicas(pt.state, gather)
    return [
        (r.state.params, r.state.opt_state, r.state.hyperparams, r.history.hyperparams)
        for r in (pt, pbt)
    ] + [copied.params]


def test_pt_and_pbt_runs_are_bitwise_those_of_plain_jit(optimised, plain, blobs):
    # the keys, the exchange's Metropolis test, PBT's exploit and explore
    quick = _runs(blobs)
    plain()
    chex.assert_trees_all_equal(quick, _runs(blobs))


def test_replicas_made_inside_a_users_trace():
    """Before, create_replicas under jax.eval_shape (a template of the replicas,
    as a restore takes) or jax.jit raised: JAX takes compiler options at the
    top level only."""
    x = np.zeros((2, 6), np.float32)
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)

    def make(key):
        return tp.create_replicas(
            key, models.MLP((8,), 3), tp.sgd(0.05), x, ladder=ladder
        )

    eager = make(jax.random.key(0))
    template = jax.eval_shape(make, jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(template.params, eager.params)
    traced = jax.jit(make)(jax.random.key(0))
    chex.assert_trees_all_close(traced.params, eager.params)
    chex.assert_trees_all_close(traced.opt_state, eager.opt_state)
