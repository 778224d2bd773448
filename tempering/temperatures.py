"""The default temperature rules of the ladder's hyperparameters.

A learning rate ``lr`` has ``T = lr``, a batch size ``B`` has ``T = 1 / B``, a
dropout rate ``q`` has ``T = 1 / (1 - q)`` (``"library"``) or ``T = q / (1 - q)``
(``"authors"``); several varying together have the product. Why these, and
what the two dropout rules mean for C: :mod:`tempering.ladder`, which uses
and re-exports these names.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DROPOUT_TEMPERATURES",
    "HYPERPARAMETERS",
    "check_rule",
    "combined_temperature",
    "default_temperature",
    "inverse_temperature",
]

# Hyperparameters with a default temperature (any other name needs explicit ones).
HYPERPARAMETERS = ("learning_rate", "dropout_rate", "batch_size")
# The two dropout temperature rules (module docstring); "library" is the default.
DROPOUT_TEMPERATURES = ("library", "authors")


def check_rule(dropout_temperature: str) -> str:
    """``dropout_temperature`` if it names a dropout rule, else a ValueError."""
    if dropout_temperature not in DROPOUT_TEMPERATURES:
        raise ValueError(
            f"dropout_temperature must be one of {DROPOUT_TEMPERATURES} "
            f"('library': T = 1 / (1 - q); 'authors': T = q / (1 - q), i.e. "
            f"beta = p / (1 - p)), got {dropout_temperature!r}"
        )
    return dropout_temperature


def default_temperature(
    name: str, values: np.ndarray, *, dropout_temperature: str = "library"
) -> np.ndarray:
    """Temperature of each value of one hyperparameter (paper, section 2).

    Args:
        name: ``"learning_rate"`` (``T = lr``), ``"batch_size"`` (``T = 1 / B``)
            or ``"dropout_rate"``.
        values: the hyperparameter values, shape ``(M,)``.
        dropout_temperature: the dropout rule (module docstring):
            ``"library"`` (default), ``T = 1 / (1 - q)``, the paper's text; or
            ``"authors"``, ``T = q / (1 - q)`` (``beta = p / (1 - p)`` for keep
            probability ``p = 1 - q``), the authors' code, which needs
            ``q > 0``.

    Returns:
        The temperatures, shape ``(M,)``.

    Example:
        >>> default_temperature("dropout_rate", [0.5], dropout_temperature="authors")
        array([1.])
    """
    check_rule(dropout_temperature)
    values = np.asarray(values, np.float64)
    if name == "learning_rate":
        return values
    if name == "batch_size":  # SGD's noise scale is lr / B (Smith & Le 2018)
        return 1.0 / values
    if name == "dropout_rate":
        if dropout_temperature == "library":
            return 1.0 / (1.0 - values)
        if np.any(values <= 0):
            raise ValueError(
                "the authors' dropout temperature T = q / (1 - q) is 0 at "
                f"dropout_rate 0 (beta = inf), got dropout rates {values.tolist()}; "
                "keep every rung's dropout rate > 0, or use "
                "dropout_temperature='library' (T = 1 / (1 - q))"
            )
        return values / (1.0 - values)
    raise ValueError(f"no default temperature for {name!r}; pass temperatures=")


def inverse_temperature(
    name: str, temperatures, *, dropout_temperature: str = "library"
):
    """The value of one hyperparameter whose default temperature is ``temperatures``.

    The inverse of :func:`default_temperature` (numpy or jax arrays alike), for
    code that moves temperatures and must move the values with them, such as
    a re-spaced ladder (:mod:`tempering.adaptation`): learning rate ``T``;
    dropout ``1 - 1 / T`` (``"library"``) or ``T / (1 + T)`` (``"authors"``).
    """
    check_rule(dropout_temperature)
    if name == "learning_rate":
        return temperatures
    if name == "batch_size":
        return 1.0 / temperatures
    if name == "dropout_rate":
        if dropout_temperature == "library":
            return 1.0 - 1.0 / temperatures
        return temperatures / (1.0 + temperatures)
    raise ValueError(f"no default temperature for {name!r}")


def combined_temperature(
    arrays: dict[str, np.ndarray], dropout_temperature: str = "library"
) -> np.ndarray:
    """Default temperatures of the rungs: the product over the varying names.

    Args:
        arrays: name -> float64 values, shape ``(M,)`` each.
        dropout_temperature: the dropout rule, ``"library"`` or ``"authors"``.

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
        return default_temperature(
            varying[0], arrays[varying[0]], dropout_temperature=dropout_temperature
        )
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
            temps = temps * default_temperature(
                name, arrays[name], dropout_temperature=dropout_temperature
            )
    return temps
