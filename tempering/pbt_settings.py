"""PBT's settings: which hyperparameters it explores, how it selects, how it perturbs.

:func:`pbt_config` validates them into a :class:`PBTConfig` (hashable: a
static argument of the jitted PBT step, :mod:`tempering.pbt`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from tempering.hyperparams import check_number, check_values
from tempering.ladder import HYPERPARAMETERS

__all__ = ["SELECTIONS", "PBTConfig", "Prior", "pbt_config"]

SELECTIONS = ("truncation", "tournament")


class Prior(NamedTuple):
    """Prior of one hyperparameter: uniform on ``[low, high]``, or log-uniform."""

    low: float
    high: float
    log: bool = False


class PBTConfig(NamedTuple):
    """Validated PBT settings (hashable: a static argument of the jitted round).

    Build it with :func:`pbt_config`; entry ``i`` of every per-hyperparameter
    tuple belongs to ``names[i]``.
    """

    names: tuple[str, ...]  # hyperparameters explored, e.g. ("learning_rate",)
    priors: tuple[Prior, ...]  # resampling prior of each
    bounds: tuple[tuple[float, float], ...]  # (low, high) clip range of each
    selection: str  # "truncation" or "tournament"
    fraction: float  # q in (0, 0.5]: bottom / top fraction for truncation
    resample_probability: float  # p in [0, 1]: redraw from the prior
    perturb_factors: tuple[float, ...]  # factors drawn uniformly, e.g. (0.8, 1.2)


def _check_prior(name: str, prior: Any) -> Prior:
    if isinstance(prior, Prior):
        low, high, log = prior
    elif isinstance(prior, tuple | list) and len(prior) in (2, 3):
        low, high, log = (*prior, False) if len(prior) == 2 else prior
    else:
        raise TypeError(
            f"prior[{name!r}] must be a Prior(low, high, log) or a (low, high[, log]) "
            f"tuple, got {prior!r}"
        )
    low, high = (
        check_number(low, f"prior[{name!r}]'s low"),
        check_number(high, f"prior[{name!r}]'s high"),
    )
    if not isinstance(log, bool | np.bool_):
        raise TypeError(
            f"prior[{name!r}]'s log must be True (log-uniform) or False (uniform), "
            f"got {log!r}"
        )
    log = bool(log)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"prior[{name!r}] must be finite, got ({low}, {high})")
    if low >= high:
        raise ValueError(
            f"prior[{name!r}] has low={low} >= high={high}; bounds reversed or empty"
        )
    if log and low <= 0:
        raise ValueError(f"log-uniform prior[{name!r}] needs low > 0, got {low}")
    _check_range(name, low, high, "the prior")
    return Prior(low, high, log)


def _check_range(name: str, low: float, high: float, what: str) -> None:
    check_values(name, [low, high], what)


def pbt_config(
    prior: Mapping[str, Prior | tuple],
    *,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    selection: str = "truncation",
    fraction: float = 0.2,
    resample_probability: float = 0.25,
    perturb_factors: Sequence[float] = (0.8, 1.2),
) -> PBTConfig:
    """Validates PBT settings, before anything compiles.

    Args:
        prior: hyperparameter name (any the replicas hold: ``"learning_rate"``,
            ``"dropout_rate"``, ``"weight_decay"``, ...) -> :class:`Prior` or
            ``(low, high[, log])``. Only these hyperparameters are explored; the
            others are copied from the parent unchanged.
        bounds: name -> ``(low, high)`` clip range after explore; defaults to
            the prior's range.
        selection: ``"truncation"`` or ``"tournament"``.
        fraction: q in (0, 0.5], the bottom / top fraction of truncation.
        resample_probability: p in [0, 1], chance to redraw a hyperparameter
            from its prior instead of perturbing it.
        perturb_factors: non-empty, positive; one is drawn uniformly per
            hyperparameter and replica. A value of exactly 0 (a dropout rate
            of 0) stays 0 under any factor: only a resample moves it, so
            with ``resample_probability=0`` it stays 0 for good.

    Returns:
        A :class:`PBTConfig`.

    Raises:
        ValueError: empty prior, reversed or invalid bounds (``low >= high``,
            values outside a known range such as lr <= 0), q outside
            (0, 0.5], p outside [0, 1], empty or non-positive factors, or an
            unknown selection rule.
        TypeError: ``prior`` not a mapping, an entry neither a :class:`Prior`
            nor a ``(low, high)`` pair, bounds of another form, or a
            fraction, probability or factors that are not numbers.

    Example:
        >>> config = pbt_config({"learning_rate": Prior(1e-3, 1e-1, log=True)})
    """
    if not isinstance(prior, Mapping):
        raise TypeError(
            "prior must be a mapping name -> Prior(low, high, log), e.g. "
            f"{{'learning_rate': Prior(1e-3, 1e-1, log=True)}}, got {prior!r}"
        )
    if not prior:
        raise ValueError(
            "prior is empty: give at least one hyperparameter to explore, e.g. "
            "{'learning_rate': Prior(1e-3, 1e-1, log=True)}"
        )
    if bounds is not None and not isinstance(bounds, Mapping):
        raise TypeError(f"bounds must be a mapping name -> (low, high), got {bounds!r}")
    for mapping, what in ((prior, "prior"), (bounds or {}, "bounds")):
        named = [n for n in mapping if not isinstance(n, str)]
        if named:
            raise TypeError(
                f"{what} names hyperparameters by str (as create_replicas holds "
                f"them, e.g. 'learning_rate'), got {named[0]!r}"
            )
    bounds = dict(bounds or {})
    extra = sorted(set(bounds) - set(prior))
    if extra:
        raise ValueError(f"bounds given for {extra}, which have no prior")
    # The order fixes which key each name draws from: the common two first.
    names = tuple(n for n in HYPERPARAMETERS if n in prior) + tuple(
        sorted(n for n in prior if n not in HYPERPARAMETERS)
    )
    priors = tuple(_check_prior(name, prior[name]) for name in names)
    clips = tuple(
        _check_bounds(name, bounds.get(name, (p.low, p.high)), p)
        for name, p in zip(names, priors, strict=True)
    )
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    fraction = check_number(fraction, "fraction")
    if not 0.0 < fraction <= 0.5:
        raise ValueError(
            f"fraction q must lie in (0, 0.5] (bottom q copy the top q), got {fraction}"
        )
    resample_probability = check_number(resample_probability, "resample_probability")
    if not 0.0 <= resample_probability <= 1.0:
        raise ValueError(
            f"resample_probability must lie in [0, 1], got {resample_probability}"
        )
    return PBTConfig(
        names=names,
        priors=priors,
        bounds=clips,
        selection=selection,
        fraction=fraction,
        resample_probability=resample_probability,
        perturb_factors=_check_factors(perturb_factors),
    )


def _check_bounds(name: str, bounds: Any, prior: Prior) -> tuple[float, float]:
    """The clip range of ``name`` after explore, as floats; it meets the prior."""
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise TypeError(f"bounds[{name!r}] must be a (low, high) pair, got {bounds!r}")
    low = check_number(bounds[0], f"bounds[{name!r}]'s low")
    high = check_number(bounds[1], f"bounds[{name!r}]'s high")
    if not (np.isfinite(low) and np.isfinite(high)) or low >= high:
        raise ValueError(
            f"bounds[{name!r}] = ({low}, {high}) must be finite with low < high "
            "(bounds reversed?)"
        )
    _check_range(name, low, high, "the bounds")
    if high < prior.low or low > prior.high:
        raise ValueError(
            f"bounds[{name!r}] = ({low}, {high}) miss its prior's range "
            f"[{prior.low}, {prior.high}]: every value drawn from the prior would be "
            f"clipped to {low if low > prior.high else high}; widen one to meet the other"
        )
    return low, high


def _check_factors(perturb_factors: Any) -> tuple[float, ...]:
    """The perturbation factors as a non-empty tuple of positive floats."""
    if isinstance(perturb_factors, str) or np.ndim(perturb_factors) != 1:
        raise TypeError(
            "perturb_factors must be a sequence of positive numbers, e.g. "
            f"(0.8, 1.2), got {perturb_factors!r}"
        )
    factors = tuple(check_number(f, "perturb_factors") for f in perturb_factors)
    if not factors or not all(np.isfinite(f) and f > 0 for f in factors):
        raise ValueError(
            f"perturb_factors must be a non-empty list of positive numbers, got {factors}"
        )
    return factors
