"""Flax linen models used by the experiments.

Every model follows one calling convention, which the tempering engine relies on::

    logits = model.apply(variables, x, train=train, dropout_rate=rate, ...)

``__call__(self, x, *, train=False, dropout_rate=0.0)`` maps a batch ``x`` of
shape ``(B, ...)`` for a single replica to logits of shape ``(B, num_classes)``.
The dropout rate is a call argument, not a module attribute, so it may be a
traced scalar that differs per replica under ``jax.vmap``; dropout is therefore
done with :class:`tempering.layers.Dropout` (RNG stream ``"dropout"``), never
with ``flax.linen.Dropout``. In training mode an array rate needs a
``"dropout"`` RNG (``rngs={"dropout": key}``); only a rate that is the Python
number 0 skips the layer and needs none. Models with batch normalisation keep running
statistics in the ``"batch_stats"`` collection (``use_running_average=not
train``, momentum 0.9, epsilon 1e-5); in training mode pass
``mutable=["batch_stats"]`` to ``apply``.

Optimiser settings (SGD momentum, weight decay) are not model settings; see
:func:`resnet_optimizer` for the ones of He et al. (2016).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tempering.layers import Dropout

__all__ = [
    "MLP",
    "LeNet5",
    "ResNet",
    "ResNetBlock",
    "lenet5_cifar10",
    "lenet5_emnist",
    "resnet20",
    "resnet44",
    "resnet_optimizer",
]

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
}


class MLP(nn.Module):
    """Multi-layer perceptron with dropout after every hidden layer.

    Each hidden layer is ``Dense -> ReLU -> Dropout(dropout_rate)``; the output
    layer is a plain ``Dense(num_classes)``. Inputs of any shape ``(B, ...)`` are
    flattened to ``(B, -1)`` first.

    Attributes:
        features: widths of the hidden layers.
        num_classes: number of output logits.
    """

    features: Sequence[int] = (256, 256)
    num_classes: int = 10

    def __post_init__(self) -> None:
        """Refuses widths that are not positive ints, naming the attribute."""
        widths = self.features
        if not isinstance(widths, Sequence) or not all(
            isinstance(w, int | np.integer) and not isinstance(w, bool) and w > 0
            for w in widths
        ):
            raise TypeError(
                "features must be a sequence of positive ints (the hidden layers' "
                f"widths), e.g. (256, 256) or (128,), got {widths!r}"
            )
        if isinstance(self.num_classes, bool) or not (
            isinstance(self.num_classes, int) and self.num_classes > 0
        ):
            raise TypeError(
                f"num_classes must be a positive int, got {self.num_classes!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        dropout_rate: jax.Array | float = 0.0,
    ) -> jax.Array:
        """Computes logits.

        Args:
            x: inputs of shape ``(B, ...)``.
            train: if True, dropout is active.
            dropout_rate: drop probability after each hidden layer; may be traced.

        Returns:
            Logits of shape ``(B, num_classes)``.
        """
        x = jnp.asarray(x, jnp.float32).reshape((x.shape[0], -1))
        for width in self.features:
            x = nn.relu(nn.Dense(width)(x))
            x = Dropout()(x, dropout_rate, deterministic=not train)
        return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with a dense softmax output layer.

    Architecture: ``Conv 5x5, 6 -> pool 2 -> Conv 5x5, 16 (VALID) -> pool 2 ->
    Dense 120 -> Dense 84 -> Dense num_classes``. The activation follows every
    convolution and every hidden dense layer. The original radial-basis-function
    (RBF) output layer is replaced by a dense layer whose logits feed a softmax
    cross-entropy, as in the paper's Tables 1 and 2.

    Dropout: ``Dropout(dropout_rate)`` is applied after each of the two hidden
    dense layers (120 and 84 units, after the activation); the convolutional
    part has none. With ``dropout_rate = 0`` the network is the plain LeNet-5.

    Padding of the first convolution: the classic network sees 32x32 inputs with
    a VALID 5x5 convolution, giving 28x28 maps. For 28x28 inputs (MNIST/EMNIST),
    ``"SAME"`` padding keeps the maps at 28x28, so both input sizes lead to
    ``28 -> 14 -> 10 -> 5`` and a 400-dimensional flattened feature vector. With
    ``first_padding="auto"`` (the default), SAME is used when the input's
    spatial size is below 32 and VALID otherwise.

    Colour: the model uses whatever channel count arrives. ``lenet5_cifar10``
    is meant for 3-channel colour CIFAR-10 images (no grey-scale conversion);
    inputs of shape ``(B, H, W)`` are treated as single-channel.

    Attributes:
        num_classes: number of output logits.
        activation: ``"tanh"`` or ``"relu"``.
        pooling: ``"avg"`` (average) or ``"max"`` pooling, window and stride 2.
        first_padding: ``"auto"``, ``"SAME"`` or ``"VALID"`` for the first conv.
    """

    num_classes: int = 26
    activation: Literal["tanh", "relu"] = "tanh"
    pooling: Literal["avg", "max"] = "avg"
    first_padding: Literal["auto", "SAME", "VALID"] = "auto"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        dropout_rate: jax.Array | float = 0.0,
    ) -> jax.Array:
        """Computes logits.

        Args:
            x: images of shape ``(B, H, W, C)`` or ``(B, H, W)``.
            train: if True, dropout is active.
            dropout_rate: drop probability after the dense hidden layers; may be
                traced.

        Returns:
            Logits of shape ``(B, num_classes)``.

        Raises:
            ValueError: for an unknown activation, pooling or padding.
        """
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.pooling not in ("avg", "max"):
            raise ValueError(f"unknown pooling {self.pooling!r}")
        act = _ACTIVATIONS[self.activation]
        pool = nn.avg_pool if self.pooling == "avg" else nn.max_pool

        x = jnp.asarray(x, jnp.float32)
        if x.ndim == 3:
            x = x[..., None]
        padding = self.first_padding
        if padding == "auto":
            padding = "SAME" if min(x.shape[1:3]) < 32 else "VALID"
        elif padding not in ("SAME", "VALID"):
            raise ValueError(f"unknown padding {self.first_padding!r}")

        x = act(nn.Conv(6, (5, 5), padding=padding)(x))
        x = pool(x, (2, 2), strides=(2, 2))
        x = act(nn.Conv(16, (5, 5), padding="VALID")(x))
        x = pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for width in (120, 84):
            x = act(nn.Dense(width)(x))
            x = Dropout()(x, dropout_rate, deterministic=not train)
        return nn.Dense(self.num_classes)(x)


def lenet5_emnist(num_classes: int = 26) -> LeNet5:
    """LeNet-5 for EMNIST-letters (28x28x1): tanh, average pooling, SAME conv1.

    Args:
        num_classes: number of output logits (26 letters).

    Returns:
        The configured module.
    """
    return LeNet5(
        num_classes=num_classes, activation="tanh", pooling="avg", first_padding="SAME"
    )


def lenet5_cifar10(num_classes: int = 10) -> LeNet5:
    """LeNet-5 for CIFAR-10 colour images (32x32x3): ReLU, max pooling, VALID.

    Args:
        num_classes: number of output logits.

    Returns:
        The configured module.
    """
    return LeNet5(
        num_classes=num_classes,
        activation="relu",
        pooling="max",
        first_padding="VALID",
    )


# Kaiming/He normal initialisation (He et al., 2015), fan-out mode as in
# torchvision's ResNets: std = sqrt(2 / (kh * kw * out_channels)).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _shortcut_a(x: jax.Array, features: int, stride: int) -> jax.Array:
    """Parameter-free option-A shortcut: subsample, then zero-pad channels.

    Args:
        x: block input of shape ``(B, H, W, C)``.
        features: channel count of the block output (``>= C``).
        stride: spatial subsampling factor.

    Returns:
        ``x[:, ::stride, ::stride]`` padded with ``features - C`` zero
        channels, split evenly before and after the existing ones.
    """
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    extra = features - x.shape[-1]
    if extra > 0:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


def _batch_norm(
    train: bool, batch_mask: jax.Array | None = None
) -> Callable[[], Callable[[jax.Array], jax.Array]]:
    """Factory for the BatchNorm layers used by :class:`ResNet`.

    With ``batch_mask`` (``(B,)`` bool) the statistics come from the masked-in
    examples only (a per-replica batch size, :mod:`tempering.hyperparams`).
    """

    def make() -> Callable[[jax.Array], jax.Array]:
        norm = nn.BatchNorm(
            use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON
        )
        if batch_mask is None:
            return norm
        return lambda x: norm(x, mask=batch_mask.reshape((-1,) + (1,) * (x.ndim - 1)))

    return make


class ResNetBlock(nn.Module):
    """Basic residual block: two 3x3 convs with BatchNorm, option-A shortcut.

    ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``, convolutions without
    bias, the first with the given stride.

    Attributes:
        features: output channels.
        stride: stride of the first convolution (and of the shortcut).
    """

    features: int
    stride: int = 1

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, batch_mask: jax.Array | None = None
    ) -> jax.Array:
        """Applies the block.

        Args:
            x: input of shape ``(B, H, W, C)``.
            train: if True, BatchNorm uses and updates batch statistics.
            batch_mask: ``(B,)`` bool, the examples BatchNorm's statistics
                come from (None: all).

        Returns:
            Output of shape ``(B, H / stride, W / stride, features)``.
        """
        bn = _batch_norm(train, batch_mask)
        y = nn.Conv(
            self.features,
            (3, 3),
            strides=(self.stride, self.stride),
            padding="SAME",
            use_bias=False,
            kernel_init=kaiming_normal_fan_out,
        )(x)
        y = nn.relu(bn()(y))
        y = nn.Conv(
            self.features,
            (3, 3),
            padding="SAME",
            use_bias=False,
            kernel_init=kaiming_normal_fan_out,
        )(y)
        y = bn()(y)
        return nn.relu(y + _shortcut_a(x, self.features, self.stride))


class ResNet(nn.Module):
    """CIFAR ResNet of He et al. (2016), Section 4.2.

    ``Conv 3x3, 16 -> BN -> ReLU`` followed by one stage per entry of
    ``stage_sizes`` (``n`` basic blocks each, with 16/32/64 filters and stride 2
    at the first block of every stage but the first), global average pooling,
    ``Dropout(dropout_rate)`` and ``Dense(num_classes)``. Shortcuts are option A
    (identity, subsampled and zero-padded in channels when shapes change), so
    they add no parameters: ResNet-20 has about 0.27M parameters. Every
    convolution is bias-free, followed by BatchNorm, and initialised Kaiming
    normal in fan-out mode; the dense layer keeps Flax's default init.

    Dropout is only before the final dense layer; the default rate 0 gives the
    plain ResNet of the paper.

    Attributes:
        stage_sizes: number of blocks per stage, e.g. ``(3, 3, 3)``.
        num_classes: number of output logits.
        stage_features: filters per stage.
    """

    stage_sizes: Sequence[int]
    num_classes: int = 10
    stage_features: Sequence[int] = (16, 32, 64)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        dropout_rate: jax.Array | float = 0.0,
        batch_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Computes logits.

        Args:
            x: images of shape ``(B, H, W, C)``.
            train: if True, BatchNorm uses batch statistics (pass
                ``mutable=["batch_stats"]``) and dropout is active.
            dropout_rate: drop probability before the output layer; may be
                traced.
            batch_mask: ``(B,)`` bool, the examples BatchNorm's statistics
                come from (None: all); the engine passes it with a
                per-replica ``batch_size``.

        Returns:
            Logits of shape ``(B, num_classes)``.
        """
        x = jnp.asarray(x, jnp.float32)
        x = nn.Conv(
            self.stage_features[0],
            (3, 3),
            padding="SAME",
            use_bias=False,
            kernel_init=kaiming_normal_fan_out,
        )(x)
        x = nn.relu(_batch_norm(train, batch_mask)()(x))
        for stage, (n_blocks, features) in enumerate(
            zip(self.stage_sizes, self.stage_features, strict=True)
        ):
            for block in range(n_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = ResNetBlock(features, stride=stride)(
                    x, train=train, batch_mask=batch_mask
                )
        x = jnp.mean(x, axis=(1, 2))
        x = Dropout()(x, dropout_rate, deterministic=not train)
        return nn.Dense(self.num_classes)(x)


def resnet20(num_classes: int = 10) -> ResNet:
    """ResNet-20 (n = 3, about 0.27M parameters).

    Args:
        num_classes: number of output logits.

    Returns:
        The configured module.
    """
    return ResNet(stage_sizes=(3, 3, 3), num_classes=num_classes)


def resnet44(num_classes: int = 10) -> ResNet:
    """ResNet-44 (n = 7, about 0.66M parameters).

    Args:
        num_classes: number of output logits.

    Returns:
        The configured module.
    """
    return ResNet(stage_sizes=(7, 7, 7), num_classes=num_classes)


def resnet_optimizer(
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay, as in He et al. (2016).

    The learning rate is an injected hyperparameter (float32), so it can be
    read and changed per replica in ``opt_state.hyperparams["learning_rate"]``
    after ``jax.vmap(tx.init)``. Weight decay (added to the gradient before
    momentum, i.e. classic L2 regularisation) applies to all parameters,
    including BatchNorm scales/biases and the dense bias, as in many
    reproductions; nothing is masked out.

    Args:
        learning_rate: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 coefficient.

    Returns:
        The optax transformation.
    """

    def make(learning_rate: float) -> optax.GradientTransformation:
        return optax.chain(
            optax.add_decayed_weights(weight_decay),
            optax.sgd(learning_rate, momentum),
        )

    return optax.inject_hyperparams(make, hyperparam_dtype=jnp.float32)(
        learning_rate=learning_rate
    )
