"""A batch-size ladder: one fused step over a shared batch of the largest size.

Replica m trains on the first ``batch_size[m]`` examples of every batch (the
loss is their mean; BatchNorm statistics come from them only), so the fused
step must equal M single-replica runs, each on its own prefix of the batches.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import train_step

import tempering as tp
from tempering.zoo import models

SIZES = [16, 8, 4]  # coldest (largest batch) first, as make_ladder sorts them


def _data(shape, n=256, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    return x, rng.integers(0, classes, n).astype(np.int32)


def _single(state: tp.ReplicaState, m: int, model, sample) -> tp.ReplicaState:
    """Replica m alone (its weights, statistics, optimiser state), no batch_size."""
    one = tp.create_replicas(jax.random.key(0), model, state.tx, sample, num_replicas=1)
    pick = lambda tree: jax.tree.map(lambda a: a[m : m + 1], tree)  # noqa: E731
    return one.replace(
        params=pick(state.params),
        batch_stats=pick(state.batch_stats),
        opt_state=pick(state.opt_state),
    )


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (models.MLP((16,), 3), (10,)),
        (models.ResNet((1,), num_classes=3, stage_features=(4,)), (6, 6, 3)),
    ],
    ids=["mlp", "resnet_batchnorm"],
)
def test_fused_step_equals_single_runs_on_their_prefixes(model, shape) -> None:
    x, y = _data(shape)
    ladder = tp.make_ladder(batch_size=SIZES)
    tx = tp.sgd(0.1, momentum=0.9)
    state = tp.create_replicas(jax.random.key(0), model, tx, x[:1], ladder=ladder)
    np.testing.assert_array_equal(state.hyperparams["batch_size"], SIZES)
    singles = [_single(state, m, model, x[:1]) for m in range(len(SIZES))]
    fused = state
    for i in range(4):
        batch = slice(16 * i, 16 * i + 16)
        fused, info = train_step(fused, jax.random.key(i), x[batch], y[batch])
        for m, size in enumerate(SIZES):
            prefix = slice(16 * i, 16 * i + size)
            singles[m], single_info = train_step(
                singles[m], jax.random.key(i), x[prefix], y[prefix]
            )
            assert float(info.loss[m]) == pytest.approx(
                float(single_info.loss[0]), rel=1e-5
            )
    for m, single in enumerate(singles):
        for name in ("params", "batch_stats"):
            got = jax.tree.leaves(getattr(fused, name))
            want = jax.tree.leaves(getattr(single, name))
            assert len(got) == len(want)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a[m], b[0], rtol=2e-5, atol=2e-6)


def test_train_step_refuses_a_batch_below_the_sizes_where_it_can_read_them() -> None:
    """Replicas at sizes 16 and 8 given 4 examples trained on 4, silently."""
    x, y = _data((10,))
    ladder = tp.make_ladder(batch_size=SIZES)
    model = models.MLP((16,), 3)
    state = tp.create_replicas(
        jax.random.key(0), model, tp.sgd(0.1), x[:1], ladder=ladder
    )
    with pytest.raises(ValueError, match=r"batch_size hyperparameter reaches 16, but "
                       "the batch holds 4 examples"):  # fmt: skip
        tp.train_step(state, jax.random.key(0), x[:4], y[:4])  # eager: sizes read
    tp.train_step(state, jax.random.key(0), x[:16], y[:16])  # the largest: fine


def test_temperature_rule_is_one_over_the_batch_size() -> None:
    ladder = tp.make_ladder(batch_size=[32, 128, 64])
    np.testing.assert_allclose(ladder.values["batch_size"], [128, 64, 32])
    np.testing.assert_allclose(ladder.temperatures, [1 / 128, 1 / 64, 1 / 32])
    both = tp.make_ladder(learning_rate=[0.1, 0.1, 0.2], batch_size=[128, 64, 64])
    np.testing.assert_allclose(
        np.sort(both.temperatures), np.sort([0.1 / 128, 0.1 / 64, 0.2 / 64]), rtol=1e-6
    )


def test_pt_train_swaps_batch_sizes_with_the_largest_batch_by_default() -> None:
    x, y = _data((10,), n=512)
    ladder = tp.make_ladder(batch_size=SIZES)
    state = tp.create_replicas(
        jax.random.key(0), models.MLP((16,), 3), tp.sgd(0.1), x[:1], ladder=ladder
    )
    result = tp.pt_train(
        state, ladder, jax.random.key(1), train_data=(x, y),
        validation_data=(x[:64], y[:64]), num_steps=60, exchange_interval=5,
        c=1e3, progress=False,
    )  # fmt: skip
    sizes = result.history.hyperparams["batch_size"]
    assert sizes.shape == (12, 3)
    assert all(sorted(row) == sorted(SIZES) for row in sizes.tolist())
    assert result.history.move.accepted.any()  # the replicas swapped batch sizes
    with pytest.raises(ValueError, match="smaller than the largest per-replica"):
        tp.pt_train(
            state, ladder, jax.random.key(1), train_data=(x, y),
            validation_data=(x[:64], y[:64]), num_steps=10, exchange_interval=5,
            batch_size=8,
        )  # fmt: skip
    with pytest.raises(ValueError, match="batch sizes are whole numbers"):
        tp.pt_train(
            state, ladder, jax.random.key(1), train_data=(x, y),
            validation_data=(x[:64], y[:64]), num_steps=10, exchange_interval=5,
            adapt_ladder=True,
        )  # fmt: skip


class _NormNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
        return nn.Dense(3)(x)


@pytest.mark.parametrize(
    ("ladder", "model", "match"),
    [
        ({"batch_size": [8.5, 16]}, models.MLP((4,), 3), "must be whole numbers"),
        ({"batch_size": [0, 16]}, models.MLP((4,), 3), r"must lie in \[1, inf\)"),
        ({"batch_size": [8, 16]}, _NormNet(), "keyword batch_mask=None"),
    ],
)
def test_bad_batch_size_ladders(ladder, model, match) -> None:
    with pytest.raises(ValueError, match=match):
        built = tp.make_ladder(**ladder)
        tp.create_replicas(
            jax.random.key(0), model, tp.sgd(0.1), jnp.zeros((1, 10)), ladder=built
        )
