"""The library under the JAX settings careful users turn on in their own code.

``jax_enable_x64`` (float64 research code) must not change what the library
draws or computes for the same key: its exchanges, PBT draws and step counts
are float32 and int32 by choice, not by JAX's default dtypes (before, the
exchange's uniforms and PBT's draws became 64-bit, so the same key made other
decisions, and a checkpoint resumed across the switch matched neither run).
``jax_numpy_dtype_promotion="strict"`` (set in test suites) must not break the
library's own arithmetic (before, every driver failed on an int32 / float32
division).
"""

import contextlib
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempering as tp
from tempering.pbt import select_parents
from tempering.zoo.datasets import augment_crop_flip
from tempering.zoo.models import MLP

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 6)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32)
IMAGES = np.random.default_rng(1).normal(size=(8, 6, 6, 3)).astype(np.float32)


@contextlib.contextmanager
def jax_settings(x64: bool, strict: bool):
    """``jax_enable_x64`` and strict dtype promotion for the block, then as before."""
    before = jax.config.jax_enable_x64, jax.config.jax_numpy_dtype_promotion
    jax.config.update("jax_enable_x64", x64)
    jax.config.update("jax_numpy_dtype_promotion", "strict" if strict else "standard")
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before[0])
        jax.config.update("jax_numpy_dtype_promotion", before[1])


def _digest(tree) -> str:
    leaves = [np.asarray(leaf, np.float32).tobytes() for leaf in jax.tree.leaves(tree)]
    return hashlib.sha256(b"".join(leaves)).hexdigest()


def _runs() -> dict[str, str]:
    """What the drivers and the step make from fixed keys, as digests."""
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
    out = {}
    for c, scheme in ((1.0, "random_pair"), ("auto", "even_odd")):
        state = tp.create_replicas(
            jax.random.key(0), MLP((8,), 3), tp.sgd(0.05), X[:1], ladder=ladder
        )
        result = tp.pt_train(
            state, ladder, jax.random.key(1), train_data=(X, Y),
            validation_data=(X, Y), num_steps=20, exchange_interval=5,
            batch_size=16, c=c, scheme=scheme, progress=False,
        )  # fmt: skip
        assert result.summary.final_score.dtype == np.float32
        out[f"pt {scheme}"] = _digest((result.state.params, result.summary.c))
    state = tp.create_replicas(
        jax.random.key(0), MLP((8,), 3), tp.sgd(0.05), X[:1], num_replicas=4,
        hyperparams={"learning_rate": 0.05},
    )  # fmt: skip
    for selection in ("truncation", "tournament"):
        config = tp.pbt_config({"learning_rate": (0.01, 0.1)}, selection=selection)
        result = tp.pbt_train(
            state, jax.random.key(2), config=config, train_data=(X, Y),
            validation_data=(X, Y), num_steps=20, ready_interval=5,
            batch_size=16, progress=False,
        )  # fmt: skip
        out[f"pbt {selection}"] = _digest(result.state.params)
    ladder = tp.make_ladder(
        batch_size=[8, 16], learning_rate=[0.05, 0.05], temperatures=[1.0, 2.0]
    )
    state = tp.create_replicas(
        jax.random.key(0), MLP((8,), 3), tp.sgd(0.05), X[:1], ladder=ladder
    )
    stepped, _ = tp.train_step(state, jax.random.key(1), X[:16], Y[:16])
    out["batch-size ladder step"] = _digest(stepped.params)
    out["augment"] = _digest(augment_crop_flip(jax.random.key(3), IMAGES, padding=2))
    scores = jnp.array(
        [1.0, jnp.nan, 0.5, jnp.inf, 2.0, jnp.nan, 0.7, 3.0], jnp.float32
    )
    keys = jax.random.split(jax.random.key(4), 32)
    for selection in ("truncation", "tournament"):
        config = tp.pbt_config({"learning_rate": (0.01, 0.1)}, selection=selection)
        parents = jax.vmap(lambda k, c=config: select_parents(k, scores, c))(keys)
        out[f"parents {selection}, diverged"] = _digest(parents)
    return out


def test_x64_and_strict_promotion_change_nothing_the_library_computes():
    with jax_settings(x64=False, strict=False):
        reference = _runs()
    for x64, strict in ((True, False), (False, True), (True, True)):
        with jax_settings(x64=x64, strict=strict):
            assert _runs() == reference, f"x64={x64}, strict={strict}"


def test_the_exchange_keeps_float32_under_x64():
    """A float64 C under x64 made the exchange's info float64."""
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
    with jax_settings(x64=True, strict=False):
        _, info = jax.jit(
            lambda c: tp.exchange(
                jax.random.key(5),
                jnp.arange(4, dtype=jnp.int32),
                jnp.array([1.0, 1.2, 0.9, 1.5]),
                ladder.betas,
                c=c,
            )  # fmt: skip
        )(jnp.float64(3.0))
    assert info.log_ratio.dtype == info.acceptance_prob.dtype == jnp.float32


@pytest.mark.parametrize("scheme", ["random_pair", "even_odd"])
def test_the_exchange_draws_alike_with_and_without_x64(scheme):
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
    losses = jnp.array([1.0, 1.2, 0.9, 1.5], jnp.float32)

    def draw():
        rungs = jnp.arange(4, dtype=jnp.int32)
        keys = jax.random.split(jax.random.key(5), 64)
        run = jax.vmap(lambda k: tp.exchange(k, rungs, losses, ladder.betas,
                                             scheme=scheme)[0])  # fmt: skip
        return np.asarray(run(keys))

    with jax_settings(x64=False, strict=False):
        reference = draw()
    with jax_settings(x64=True, strict=True):
        np.testing.assert_array_equal(draw(), reference)
