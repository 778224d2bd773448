"""Layers whose noise level is a traced, per-replica input.

Flax's ``nn.Dropout`` decides in Python whether to apply the mask
(``if rate == 0.0``), so it cannot take a rate that is a tracer, let alone one
that differs across a ``jax.vmap`` over replicas. The layer here treats the rate
as data: the same compiled program serves every replica and every rate. A rate
that is the Python number 0 skips the layer (no mask, no key drawn), as
flax's does: the training drivers pass a model input that every replica holds
at 0 that way (:func:`tempering.step.zero_model_inputs`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Dropout", "dropout", "is_static_zero"]


def is_static_zero(rate: Any) -> bool:
    """Whether ``rate`` is the Python number 0 (not an array): dropout is a no-op."""
    return isinstance(rate, int | float) and not isinstance(rate, bool) and rate == 0


def dropout(key: jax.Array, x: jax.Array, rate: jax.Array | float) -> jax.Array:
    """Inverted dropout with a rate that may be traced.

    Args:
        key: PRNG key for the mask.
        x: input array.
        rate: probability of dropping each element, in ``[0, 1)``; a scalar that
            may be a tracer (for example a per-replica value under ``jax.vmap``:
            the engine's values are range-checked before they are traced). A
            concrete rate outside ``[0, 1)`` is a ValueError.

    Returns:
        ``x`` with elements zeroed with probability ``rate`` and the rest scaled
        by ``1 / (1 - rate)``, so the expectation is unchanged. ``rate = 0``
        returns ``x`` exactly; the Python number 0 draws no mask at all.
    """
    if is_static_zero(rate):
        return x
    if not isinstance(rate, jax.core.Tracer):
        concrete = np.asarray(rate, np.float64)
        if not np.all((concrete >= 0) & (concrete < 1)):
            raise ValueError(f"rate must lie in [0, 1), got {concrete.tolist()}")
    rate = jnp.asarray(rate, dtype=jnp.float32)
    keep_prob = 1.0 - rate
    keep = jax.random.uniform(key, x.shape, dtype=jnp.float32) < keep_prob
    scale = (1.0 / keep_prob).astype(x.dtype)  # a traced rate must be < 1
    return jnp.where(keep, x * scale, jnp.zeros_like(x))


class Dropout(nn.Module):
    """Dropout whose rate is a call argument rather than a module attribute.

    Draws its mask from the ``"dropout"`` RNG stream, like ``flax.linen.Dropout``.

    Example:
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, *, train=False, dropout_rate=0.0):
        ...         x = nn.relu(nn.Dense(32)(x))
        ...         x = Dropout()(x, rate=dropout_rate, deterministic=not train)
        ...         return nn.Dense(10)(x)
    """

    rng_collection: str = "dropout"

    @nn.compact
    def __call__(
        self, x: jax.Array, rate: jax.Array | float, *, deterministic: bool
    ) -> jax.Array:
        """Applies dropout.

        Args:
            x: input array.
            rate: drop probability in ``[0, 1)``; may be traced. The Python
                number 0 returns ``x`` and needs no RNG.
            deterministic: if True, returns ``x`` unchanged (evaluation mode).

        Returns:
            The masked and rescaled input, or ``x`` when deterministic.
        """
        if deterministic or is_static_zero(rate):
            return x
        return dropout(self.make_rng(self.rng_collection), x, rate)
