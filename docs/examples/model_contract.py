"""A model with its own keyword names, on the model contract's three knobs.

Shown on the model-contract guide and type-checked against the public API in CI.
Runs in a few seconds on a CPU (random data, a few steps).
"""

import flax.linen as nn
import jax
import numpy as np

import tempering as tp


class Net(nn.Module):
    """Train flag named ``training``, dropout rate named ``drop``."""

    @nn.compact
    def __call__(self, x, *, training: bool = False, drop=0.0):
        """Logits of a batch ``x``; dropout at rate ``drop`` when ``training``."""
        x = nn.relu(nn.Dense(64)(x))
        # tp.Dropout takes the rate as a (traced, per-replica) call argument;
        # flax.linen.Dropout would be a TypeError at create_replicas.
        x = tp.Dropout()(x, rate=drop, deterministic=not training)
        return nn.Dense(10)(x)


rng = np.random.default_rng(0)
x = rng.normal(size=(512, 20)).astype(np.float32)
y = rng.integers(0, 10, size=512)
key = jax.random.key(0)

# 1. Rename: the train flag is `training`, the per-replica input is `drop`. A
#    name other than dropout_rate has no default temperature: give them.
q = np.array([0.0, 0.2, 0.4, 0.6])
ladder = tp.make_ladder(drop=q, temperatures=1 / (1 - q))
state = tp.create_replicas(
    key, Net(), tp.sgd(0.05), x[:1], ladder=ladder,
    train_kwarg="training", model_inputs=("drop",),
)  # fmt: skip
print(sorted(state.hyperparams))  # ['drop', 'learning_rate']

# 2. Disable: no per-replica input (the model's default drop=0.0 is used) and
#    a learning-rate ladder instead.
lr_ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
state = tp.create_replicas(
    key, Net(), tp.sgd(0.05), x[:1], ladder=lr_ladder,
    train_kwarg="training", model_inputs=(),
)  # fmt: skip
print(sorted(state.hyperparams))  # ['learning_rate']

# 3. A model without a train mode at all: train_kwarg=None.
plain = nn.Dense(10)
state = tp.create_replicas(key, plain, tp.sgd(0.05), x[:1], ladder=lr_ladder,
                           train_kwarg=None)  # fmt: skip
result = tp.pt_train(state, lr_ladder, key, train_data=(x, y),
                     validation_data=(x[:128], y[:128]), num_steps=40,
                     exchange_interval=10, batch_size=32)  # fmt: skip
print(result.summary.acceptance_rate)
