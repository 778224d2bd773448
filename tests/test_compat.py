"""The default path on every supported version: a LeNet through pt_train, pbt_train.

CI runs this file, with a few tests of the fused step, against the oldest
versions ``pyproject.toml`` accepts as well as the newest (``.ci/run``). On a
supported version the jaxpr rewrite of ``tempering.fast`` must work: its
fallback to plain vmap would hide a rewrite broken by that version, so the
fallback warning is an error here.
"""

import jax
import numpy as np
import pytest

import tempering as tp
from tempering import fast, loops, pbt
from tempering.zoo import models

pytestmark = pytest.mark.filterwarnings("error::tempering.fast.RewriteFallbackWarning")

LADDER = tp.make_ladder(learning_rate=[0.01, 0.03, 0.1])
SETTINGS = dict(num_steps=12, burn_in=4, batch_size=8)


@pytest.fixture(scope="module")
def cifar_like():
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
        return x, rng.integers(0, 10, size=n).astype(np.int32)

    return split(32), split(16)


@pytest.fixture(scope="module")
def lenet(cifar_like):
    (x, _), _ = cifar_like
    model = models.lenet5_cifar10()
    return tp.create_replicas(
        jax.random.key(0), model, tp.sgd(momentum=0.9), x[:2], ladder=LADDER
    )


def test_the_default_path_is_the_rewrite(lenet, cifar_like):
    (x, _), _ = cifar_like
    if jax.default_backend() == "cpu":
        assert fast.resolve_policy("auto") == fast.POLICIES["patches+reshape"]
        assert loops.loop_for(lenet, x[:2], "auto") == "host"


def test_lenet_pt_train_on_the_default_path(lenet, cifar_like):
    train, val = cifar_like
    result = tp.pt_train(
        lenet, LADDER, jax.random.key(1), train_data=train, validation_data=val,
        exchange_interval=4, c=10.0, **SETTINGS,
    )  # fmt: skip
    assert int(result.state.step) == SETTINGS["num_steps"]
    assert np.isfinite(result.summary.final_val_loss).all()
    assert result.history.rungs.shape == (2, LADDER.num_rungs)
    metrics = tp.evaluate(result.state, *val)
    assert np.isfinite(metrics.loss).all()


def test_lenet_pbt_train_on_the_default_path(lenet, cifar_like):
    train, val = cifar_like
    config = pbt.pbt_config({"learning_rate": pbt.Prior(0.01, 0.1, log=True)})
    result = tp.pbt_train(
        lenet, jax.random.key(2), config=config, train_data=train,
        validation_data=val, ready_interval=4, **SETTINGS,
    )  # fmt: skip
    assert int(result.state.step) == SETTINGS["num_steps"]
    assert np.isfinite(result.summary.final_val_loss).all()
    assert result.history.copied.shape == (1, LADDER.num_rungs)
