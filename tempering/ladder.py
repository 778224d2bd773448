"""The ladder: per-rung hyperparameter values and temperatures.

Rung 0 is the coldest (least noise); rung ``r + 1`` is hotter than rung ``r``.
The temperature of a rung follows the noise its hyperparameters inject into
SGD (Pushkarov et al. 2019, section 2): a learning rate ``lr`` has
``T = lr``; a dropout rate ``q`` (keep probability ``p = 1 - q``) has
``T = 1 / p``. Any other hyperparameter (weight decay, momentum, a model
input, ...) needs explicit temperatures.

A ladder over several hyperparameters at once follows the library's
documented rule: when every hyperparameter that varies across the rungs has a
default temperature, the rung's temperature is the *product* of their default
temperatures, e.g. ``T = lr / (1 - q)`` for a learning rate and a dropout rate
that vary together. The rationale: the noise of SGD scales with the learning
rate, and inverted dropout scales the variance of the gradient noise by
``1 / (1 - q)``, so the two noise factors multiply. This is a convention of
the library, not a theorem; give ``temperatures=`` to use any other. As soon
as one varying name has no default rule, explicit temperatures are required.
(:mod:`tempering.multi` offers the alternative of one ladder per
hyperparameter.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from tempering.hyperparams import check_values

__all__ = [
    "HYPERPARAMETERS",
    "Ladder",
    "check_sound",
    "default_temperature",
    "geometric_ladder",
    "linear_ladder",
    "make_ladder",
]

# Hyperparameters with a default temperature (any other name needs explicit ones).
HYPERPARAMETERS = ("learning_rate", "dropout_rate")


class Ladder(NamedTuple):
    """Hyperparameter values and temperatures of the M rungs, coldest first."""

    values: dict[str, jax.Array]  # name -> shape=(M,), dtype=float32
    temperatures: jax.Array  # shape=(M,), dtype=float32, strictly increasing

    @property
    def betas(self) -> jax.Array:
        """Inverse temperatures ``1 / T``, shape ``(M,)``, decreasing."""
        return 1.0 / self.temperatures

    @property
    def num_rungs(self) -> int:
        """Number of rungs M."""
        return int(self.temperatures.shape[0])


def check_sound(ladder: Ladder) -> None:
    """Raises ValueError unless a (possibly hand-built) ladder is sound.

    Temperatures finite, > 0 and strictly increasing (a decreasing ladder
    would reverse the exchange's direction); one value per rung for every
    hyperparameter, each finite and within its range.
    """
    temps = np.asarray(ladder.temperatures, np.float64)
    if temps.ndim != 1 or temps.size < 2:
        raise ValueError(
            f"ladder.temperatures must be 1-D with one entry per rung (>= 2), got "
            f"shape {temps.shape}; build ladders with tempering.make_ladder"
        )
    if not np.all(np.isfinite(temps)) or np.any(temps <= 0):
        raise ValueError(
            f"ladder.temperatures must be finite and > 0, got {temps.tolist()}"
        )
    if np.any(np.diff(temps) <= 0):
        raise ValueError(
            f"ladder.temperatures must increase strictly, coldest rung first, got "
            f"{temps.tolist()}; tempering.make_ladder sorts the rungs for you"
        )
    for name, values in ladder.values.items():
        if np.shape(values) != temps.shape:
            raise ValueError(
                f"ladder.values[{name!r}] must have one value per rung, shape "
                f"{temps.shape}, got shape {np.shape(values)}"
            )
        check_values(name, values, "the ladder")


def default_temperature(name: str, values: np.ndarray) -> np.ndarray:
    """Temperature of each value of one hyperparameter (paper, section 2).

    Args:
        name: ``"learning_rate"`` (``T = lr``) or ``"dropout_rate"``
            (``T = 1 / (1 - q)``).
        values: the hyperparameter values, shape ``(M,)``.

    Returns:
        The temperatures, shape ``(M,)``.
    """
    values = np.asarray(values, np.float64)
    if name == "learning_rate":
        return values
    if name == "dropout_rate":
        return 1.0 / (1.0 - values)
    raise ValueError(f"no default temperature for {name!r}; pass temperatures=")


def make_ladder(
    values: Mapping[str, ArrayLike] | None = None,
    *,
    temperatures: ArrayLike | None = None,
    **kwargs: ArrayLike,
) -> Ladder:
    """Builds a validated ladder, rungs sorted from coldest to hottest.

    Each hyperparameter is given as one value per rung, or as a scalar shared
    by every rung. Without ``temperatures``, the hyperparameters that vary
    across rungs set the temperatures: one varying hyperparameter gives its
    :func:`default_temperature`; several give the product of their default
    temperatures (the library's documented rule, see the module docstring:
    ``T = lr / (1 - q)`` for a learning rate and a dropout rate), which needs
    every varying name to have a default rule (:data:`HYPERPARAMETERS`).

    Args:
        values: mapping from hyperparameter name to values: any name the
            replicas hold (``learning_rate``, ``weight_decay``, ``b1``,
            ``dropout_rate``, a model input, ...). May also be given as keyword
            arguments.
        temperatures: optional explicit temperatures, one per rung, > 0.
        **kwargs: hyperparameter values, as in ``values``.

    Returns:
        A :class:`Ladder` whose rungs are ordered by increasing temperature.

    Raises:
        ValueError: fewer than 2 rungs, non-finite values, values outside a
            known range (``learning_rate <= 0``, ``dropout_rate`` outside
            ``[0, 1)``, ...; :data:`tempering.hyperparams.RANGES`), lengths that
            differ, duplicate temperatures, no hyperparameter that varies
            (without ``temperatures``), or no temperature for a varying name
            without a default one.

    Example:
        >>> ladder = make_ladder(learning_rate=[0.01, 0.02, 0.04])
        >>> ladder.betas  # 1 / lr
        Array([100.,  50.,  25.], dtype=float32)
        >>> both = make_ladder(learning_rate=[0.01, 0.02], dropout_rate=[0.1, 0.2])
        >>> both.temperatures  # lr / (1 - q)
        Array([0.01111111, 0.025     ], dtype=float32)
    """
    given = dict(values or {}, **kwargs)
    if not given:
        raise ValueError(
            "make_ladder needs at least one hyperparameter, e.g. "
            "make_ladder(learning_rate=[0.01, 0.02, 0.04])"
        )
    arrays = {name: np.asarray(v, np.float64) for name, v in given.items()}
    for name, arr in arrays.items():
        if arr.ndim > 1:
            raise ValueError(f"{name} must be a scalar or 1-D, got shape {arr.shape}")
    lengths = {name: arr.size for name, arr in arrays.items() if arr.ndim == 1}
    if temperatures is not None:
        temps = np.asarray(temperatures, np.float64)
        if temps.ndim != 1:
            raise ValueError(f"temperatures must be 1-D, got shape {temps.shape}")
        lengths["temperatures"] = temps.size
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"mismatched ladder lengths {lengths}; give one value per rung"
        )
    num_rungs = next(iter(lengths.values()), 1)
    if num_rungs < 2:
        raise ValueError(
            f"a ladder needs at least 2 rungs, got {num_rungs}; give each "
            "hyperparameter as a list of values, one per rung"
        )
    arrays = {name: np.broadcast_to(arr, (num_rungs,)) for name, arr in arrays.items()}
    for name, arr in arrays.items():
        check_values(name, arr, "the ladder")

    if temperatures is None:
        temps = _combined_temperature(arrays)
    if not np.all(np.isfinite(temps)) or np.any(temps <= 0):
        raise ValueError(f"temperatures must be finite and > 0, got {temps.tolist()}")
    order = np.argsort(temps, kind="stable")
    temps = temps[order]
    if np.any(np.diff(temps) <= 0):
        raise ValueError(
            f"duplicate temperatures {temps.tolist()}: every rung needs its own "
            "temperature (its own hyperparameter value)"
        )
    return Ladder(
        values={
            name: jnp.asarray(arr[order], jnp.float32) for name, arr in arrays.items()
        },
        temperatures=jnp.asarray(temps, jnp.float32),
    )


def _combined_temperature(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Default temperatures of the rungs: the product over the varying names.

    Args:
        arrays: name -> float64 values, shape ``(M,)`` each.

    Returns:
        The temperatures, shape ``(M,)``, float64 (unsorted).
    """
    varying = [name for name, arr in arrays.items() if np.ptp(arr) > 0]
    if not varying:
        raise ValueError(
            "temperatures is required when no hyperparameter varies across "
            "rungs; pass temperatures=[...] (one per rung, > 0)"
        )
    if len(varying) == 1:  # one name: its own rule, exactly
        return default_temperature(varying[0], arrays[varying[0]])
    without = [name for name in varying if name not in HYPERPARAMETERS]
    if without:
        raise ValueError(
            f"temperatures is required: {without} vary across rungs together "
            f"with {[n for n in varying if n not in without]} and have no default "
            f"temperature (default rules exist for {list(HYPERPARAMETERS)}, "
            "combined by their product); pass temperatures=[...] (one per rung, > 0)"
        )
    temps = np.ones_like(arrays[varying[0]])  # shape=(M,), float64
    for name in HYPERPARAMETERS:  # a fixed order of the factors
        if name in varying:
            temps = temps * default_temperature(name, arrays[name])
    return temps


def _spaced_ladder(spacing, name, low, high, num_rungs, temperatures, fixed) -> Ladder:
    if not isinstance(num_rungs, int | np.integer) or num_rungs < 2:
        raise ValueError(f"num_rungs must be an int >= 2, got {num_rungs!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a hyperparameter name, got {name!r}")
    values = spacing(low, high, num_rungs)
    return make_ladder({name: values, **fixed}, temperatures=temperatures)


def linear_ladder(
    name: str,
    low: float,
    high: float,
    num_rungs: int,
    *,
    temperatures: ArrayLike | None = None,
    **fixed: ArrayLike,
) -> Ladder:
    """A ladder with ``num_rungs`` linearly spaced values of one hyperparameter.

    Args:
        name: the hyperparameter that varies, e.g. ``"learning_rate"``.
        low: value at one end of the ladder.
        high: value at the other end.
        num_rungs: number of rungs M >= 2.
        temperatures: optional explicit temperatures.
        **fixed: other hyperparameters, one value shared by every rung, e.g.
            ``learning_rate=0.01`` for a dropout ladder.

    Returns:
        The validated :class:`Ladder`, coldest rung first.

    Example:
        >>> ladder = linear_ladder("dropout_rate", 0.47, 0.55, 8, learning_rate=0.01)
    """
    return _spaced_ladder(np.linspace, name, low, high, num_rungs, temperatures, fixed)


def geometric_ladder(
    name: str,
    low: float,
    high: float,
    num_rungs: int,
    *,
    temperatures: ArrayLike | None = None,
    **fixed: ArrayLike,
) -> Ladder:
    """A ladder with geometrically spaced values of one hyperparameter.

    Args:
        name: the hyperparameter that varies.
        low: value at one end (> 0).
        high: value at the other end (> 0).
        num_rungs: number of rungs M >= 2.
        temperatures: optional explicit temperatures.
        **fixed: other hyperparameters shared by every rung.

    Returns:
        The validated :class:`Ladder`, coldest rung first.
    """
    if not (np.isfinite(low) and np.isfinite(high) and low > 0 and high > 0):
        raise ValueError(f"a geometric ladder needs low, high > 0, got {low}, {high}")
    return _spaced_ladder(np.geomspace, name, low, high, num_rungs, temperatures, fixed)
