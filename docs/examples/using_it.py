"""The README's "Using it" example: PT on a dropout ladder, MNIST-1D, an MLP.

Shown on the getting-started page and type-checked against the public API in CI
(mypy, ``[tool.mypy]`` in pyproject.toml). Needs the ``experiments`` extra
(``mnist1d``). About a minute on 2 CPU cores.
"""

import jax
import numpy as np

import tempering as tp
from tempering.zoo.datasets import load_mnist1d
from tempering.zoo.models import MLP

data = load_mnist1d()
ladder = tp.linear_ladder("dropout_rate", 0.0, 0.7, 8)
state = tp.create_replicas(
    jax.random.key(0),
    MLP(features=(128, 128)),
    tp.sgd(0.05, momentum=0.9),  # every replica's lr: the ladder sets dropout only
    data.train.inputs[:1],
    ladder=ladder,
)
state, history, summary = tp.pt_train(
    state,
    ladder,
    jax.random.key(1),
    train_data=data.train,
    validation_data=data.validation,
    num_steps=4000,
    burn_in=500,
    exchange_interval=100,
)  # C is tuned to the losses it sees (c="auto"), then frozen: summary.c
print("acceptance per adjacent pair:", summary.acceptance_rate)  # (M - 1,)
print(
    "rungs of every replica, per round:", np.shape(np.asarray(history.rungs))
)  # (rounds, M)
test = tp.evaluate(state, data.test.inputs, data.test.labels)
print("test accuracy of the best replica:", test.accuracy[summary.best_replica])
best = tp.replica(state, summary.best_replica)  # plain Flax variables
