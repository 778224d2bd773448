"""A model zoo for the benchmark, written as users write them.

Plain Flax linen modules with the engine's model contract: ``__call__(x, *,
train=False)`` (a ``dropout_rate`` keyword is optional; the library's models
have one). Each :class:`ZooEntry` names a model, the shape of one input
example, the number of classes and the fixed keyword values a user would pass
(``dropout_rate`` for the library's models, none for the others).

The hand-written baseline, :func:`hand_step`, is what a user writes without
this library: a jitted flax + optax SGD step of one model, called in a Python
loop over the M replicas (one jit, compiled once for all M);
:func:`hand_vmap_step` is what an expert writes: ``jax.vmap`` of that step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import optax

from tempering.zoo import models

LEARNING_RATE = 0.01
MOMENTUM = 0.9


class UserLeNet(nn.Module):
    """LeNet-5 as users write it for 28x28x1: ReLU, max-pool, SAME first conv."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.relu(nn.Conv(6, (5, 5), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


class SmallBNCNN(nn.Module):
    """Two conv -> BatchNorm -> ReLU -> max-pool blocks and a dense head."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        for features in (16, 32):
            x = nn.Conv(features, (3, 3), padding="SAME", use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(self.num_classes)(x)


class Conv1DNet(nn.Module):
    """A 1-D conv net for MNIST-1D (40 features): three strided convs, dense."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = x[..., None]  # (B, 40) -> (B, 40, 1)
        for _ in range(3):
            x = nn.relu(nn.Conv(25, (5,), strides=(2,), padding=((1, 1),))(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


class AttentionBlock(nn.Module):
    """One pre-norm transformer layer on short sequences, mean-pooled, dense."""

    num_classes: int = 10
    num_heads: int = 4
    mlp_dim: int = 64

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        dim = x.shape[-1]
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(y, y)
        y = nn.LayerNorm()(x)
        y = nn.Dense(dim)(nn.gelu(nn.Dense(self.mlp_dim)(y)))
        x = x + y
        return nn.Dense(self.num_classes)(x.mean(axis=1))


@dataclass(frozen=True)
class ZooEntry:
    """One benchmark model: how to build it and what it eats."""

    name: str
    description: str
    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    # fixed call keywords of the user's step (the engine's per-replica inputs)
    call_kwargs: dict[str, Any] = field(default_factory=dict)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "mlp",
            "MLP 256-256, ReLU, dropout 0.1 (tempering.zoo.models.MLP), 28x28x1",
            lambda: models.MLP((256, 256), num_classes=10),
            (28, 28, 1),
            10,
            {"dropout_rate": 0.1},
        ),
        ZooEntry(
            "lenet_emnist",
            "library LeNet-5: tanh, avg-pool, SAME, dropout 0.1, 28x28x1",
            models.lenet5_emnist,
            (28, 28, 1),
            26,
            {"dropout_rate": 0.1},
        ),
        ZooEntry(
            "lenet_cifar10",
            "library LeNet-5: ReLU, max-pool, VALID, dropout 0.1, 32x32x3",
            models.lenet5_cifar10,
            (32, 32, 3),
            10,
            {"dropout_rate": 0.1},
        ),
        ZooEntry(
            "lenet_user",
            "a user's LeNet-5: ReLU, max-pool, SAME first conv, 28x28x1",
            UserLeNet,
            (28, 28, 1),
            10,
        ),
        ZooEntry(
            "cnn_bn",
            "small CNN: 2 x (conv 3x3, BatchNorm, ReLU, max-pool), 16/32 ch, 32x32x3",
            SmallBNCNN,
            (32, 32, 3),
            10,
        ),
        ZooEntry(
            "conv1d_mnist1d",
            "1-D conv net for MNIST-1D: 3 x conv(25, 5, stride 2), 40 features",
            Conv1DNet,
            (40,),
            10,
        ),
        ZooEntry(
            "resnet20",
            "ResNet-20 (tempering.zoo.models.resnet20), BatchNorm, 32x32x3",
            models.resnet20,
            (32, 32, 3),
            10,
        ),
        ZooEntry(
            "attention",
            "one transformer layer (4 heads, MLP 64), 16 tokens x 32 dims",
            AttentionBlock,
            (16, 32),
            10,
        ),
    )
}


def has_batch_stats(variables: dict) -> bool:
    """Whether a model's variables hold BatchNorm statistics."""
    return bool(jax.tree.leaves(variables.get("batch_stats", {})))


def _user_step(entry: ZooEntry) -> tuple[Callable, Callable]:
    """``(init, step)`` of :func:`hand_step`, the step not jitted."""
    model = entry.make()
    tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    kwargs = dict(entry.call_kwargs)

    def init(key, x):
        variables = model.init(key, x, train=False, **kwargs)
        return variables, tx.init(variables["params"])

    def step(variables, opt_state, key, x, y):
        def loss_fn(params):
            if has_batch_stats(variables):
                logits, updates = model.apply(
                    {**variables, "params": params},
                    x,
                    train=True,
                    rngs={"dropout": key},
                    mutable=["batch_stats"],
                    **kwargs,
                )
            else:
                logits = model.apply(
                    {**variables, "params": params},
                    x,
                    train=True,
                    rngs={"dropout": key},
                    **kwargs,
                )
                updates = {}
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"]
        )
        changes, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], changes)
        return {**variables, **updates, "params": params}, opt_state, loss

    return init, step


def hand_step(entry: ZooEntry, donate: bool = False) -> tuple[Callable, Callable]:
    """A user's flax + optax SGD step of one model, and its initialiser.

    Args:
        entry: the zoo model.
        donate: whether the step donates its variables and optimizer state
            (``donate_argnums``), as a careful user's training loop does: the
            new state is written into the old one's buffers.

    Returns:
        ``(init, step)``: ``init(key, x) -> (variables, opt_state)`` and the
        jitted ``step(variables, opt_state, key, x, y) -> (variables,
        opt_state, loss)``: train mode, dropout key, BatchNorm statistics
        updated, SGD with momentum.
    """
    init, step = _user_step(entry)
    return init, jax.jit(step, donate_argnums=(0, 1) if donate else ())


def hand_vmap_step(entry: ZooEntry, donate: bool = False) -> tuple[Callable, Callable]:
    """What an expert writes for M replicas: ``jax.vmap`` of :func:`hand_step`'s step.

    Returns:
        ``(init, step)``: ``init(keys, x)`` builds M replicas from M keys, and
        the jitted ``step(variables, opt_state, keys, x, y)`` advances them all
        on the shared batch ``x, y`` (one dropout key per replica).
    """
    init, step = _user_step(entry)
    return (
        jax.vmap(init, in_axes=(0, None)),
        jax.jit(
            jax.vmap(step, in_axes=(0, 0, 0, None, None)),
            donate_argnums=(0, 1) if donate else (),
        ),
    )
