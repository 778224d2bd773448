"""The ladder: per-rung hyperparameter values and temperatures.

Rung 0 is the coldest (least noise); rung ``r + 1`` is hotter than rung ``r``.
The temperature of a rung follows the noise its hyperparameters inject into
SGD (Pushkarov et al. 2019, section 2): a learning rate ``lr`` has
``T = lr``; a dropout rate ``q`` (keep probability ``p = 1 - q``) has one of
two temperatures, chosen by ``dropout_temperature=`` wherever a ladder is built
(:func:`make_ladder`, :func:`linear_ladder`, :func:`geometric_ladder`):

- ``"library"`` (the default): ``T = 1 / p = 1 / (1 - q)``, the factor by
  which inverted dropout scales the gradient noise, as the paper's text
  suggests (its section 2: "variance up by 1/p").
- ``"authors"``: ``beta = p / (1 - p)``, i.e. ``T = (1 - p) / p = q / (1 - q)``,
  the variance that inverted dropout *adds* (zero at ``p = 1``). This is what
  the authors' code computes (``betas = t/(1-t)`` in ``_swap`` of
  ``simulator/graph/simulator_graph.py``; their Keras code alike), and the
  paper's dropout constants C (2000 on CIFAR-10, 500 on EMNIST) were tuned
  with it: under ``T = 1 / p`` the same C is 3-4x weaker on the CIFAR-10
  ladder and 76-333x weaker on the EMNIST one, and the exchange becomes
  near-random (DESIGN.md section 2). It needs ``q > 0`` on every rung
  (``beta = inf`` at ``q = 0``).

Both rules order the rungs alike (hotter = more dropout); only the gaps
``beta_r - beta_{r+1}`` differ, and with them the strength of a given C. The
rule a ladder follows is stored on it (:attr:`Ladder.rule`, None for explicit
temperatures; :attr:`Ladder.dropout_temperature` and its repr show it), so a
result can store it and :func:`inverse_temperature` can map re-spaced
temperatures back to dropout rates by the same rule. Any other hyperparameter (weight
decay, momentum, a model input, ...) needs explicit temperatures.

A ladder over several hyperparameters at once follows the library's
documented rule: when every hyperparameter that varies across the rungs has a
default temperature, the rung's temperature is the *product* of their default
temperatures, e.g. ``T = lr / (1 - q)`` for a learning rate and a dropout rate
that vary together (``T = lr * q / (1 - q)`` with the authors' dropout rule).
The rationale: the noise of SGD scales with the learning
rate, and inverted dropout scales the variance of the gradient noise by
``1 / (1 - q)``, so the two noise factors multiply. A batch size ``B`` has
``T = 1 / B``: the gradient noise of SGD scales as ``lr / B`` (Smith & Le
2018), so a learning rate and a batch size together have ``T = lr / B``.
This is a convention of the library, not a theorem; give ``temperatures=`` to use any other. As soon
as one varying name has no default rule, explicit temperatures are required.
(:mod:`tempering.multi` offers the alternative of one ladder per
hyperparameter.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from numpy.typing import ArrayLike

from tempering._text import short_array
from tempering.hyperparams import (
    INTEGER_HYPERPARAMETERS,
    check_names,
    check_number,
    check_values,
    dtype_of,
    set_hyperparams,
)
from tempering.temperatures import (
    DROPOUT_TEMPERATURES,
    HYPERPARAMETERS,
    check_rule,
    combined_temperature,
    default_temperature,
    inverse_temperature,
)

if TYPE_CHECKING:
    from tempering.state import ReplicaState

__all__ = [
    "DROPOUT_TEMPERATURES",
    "HYPERPARAMETERS",
    "Ladder",
    "as_ladder",
    "assign_rungs",
    "check_ladder",
    "check_sound",
    "default_temperature",
    "geometric_ladder",
    "inverse_temperature",
    "linear_ladder",
    "make_ladder",
    "rungs_held",
]

# Relative tolerance with which a ladder's float32 temperatures are matched to
# a rule (the two dropout rules differ by the factor 1 / q >= 1.05 on any
# sound ladder, far beyond it).
_RULE_RTOL = 1e-4


@struct.dataclass
class Ladder:
    """Hyperparameter values and temperatures of the M rungs, coldest first.

    A pytree: the values and temperatures are its arrays, the rule that set
    the temperatures a static field (part of a compiled program's key).
    """

    values: dict[str, jax.Array]  # name -> shape=(M,), dtype=float32
    temperatures: jax.Array  # shape=(M,), dtype=float32, strictly increasing
    # How the temperatures were set: None for explicit ones; "library" or
    # "authors" for the product of the varying names' default temperatures,
    # with that dropout rule (module docstring).
    rule: str | None = struct.field(pytree_node=False, default=None)

    if TYPE_CHECKING:  # added by flax.struct.dataclass at run time

        def replace(self, **updates: Any) -> Ladder:
            """A copy with the given fields replaced."""
            ...

    @property
    def betas(self) -> jax.Array:
        """Inverse temperatures ``1 / T``, shape ``(M,)``, decreasing."""
        return 1.0 / self.temperatures

    @property
    def num_rungs(self) -> int:
        """Number of rungs M."""
        return int(self.temperatures.shape[0])

    @property
    def dropout_temperature(self) -> str | None:
        """The dropout rule the temperatures follow: ``"library"``, ``"authors"``.

        The ladder's :attr:`rule` when a dropout rate varies across its rungs;
        None otherwise (no varying dropout rate, or explicit temperatures).
        """
        if self.rule is None or "dropout_rate" not in self.values:
            return None
        rates = self.values["dropout_rate"]
        if isinstance(rates, jax.core.Tracer):
            return self.rule  # inside jit: the rule says dropout took part
        return self.rule if np.ptp(np.asarray(rates)) > 0 else None

    def __repr__(self) -> str:
        """Values and temperatures to 4 digits (more than 8 rungs elided)."""

        def show(array: Any) -> str:
            return short_array(array, repr(array))

        values = ", ".join(f"{k!r}: {show(v)}" for k, v in self.values.items())
        text = f"Ladder(values={{{values}}}, temperatures={show(self.temperatures)}"
        rule = self.dropout_temperature
        if rule is not None:
            text += f", dropout_temperature={rule!r}"
        return text + ")"


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
    if ladder.rule is not None:
        check_rule(ladder.rule)
        arrays = {k: np.asarray(v, np.float64) for k, v in ladder.values.items()}
        expected = combined_temperature(arrays, ladder.rule)
        if not np.allclose(expected, temps, rtol=_RULE_RTOL, atol=0.0):
            raise ValueError(
                f"ladder.rule={ladder.rule!r} says the temperatures are the default "
                f"ones of the values ({expected.tolist()}), got {temps.tolist()}; "
                "give rule=None for explicit temperatures, or build the ladder with "
                "tempering.make_ladder"
            )


def _numbers(values: Any, name: str) -> np.ndarray:
    """``values`` as float64, or a TypeError naming ``name`` (strings, bools)."""
    try:
        array = np.asarray(values, np.float64)
        kind = np.asarray(values).dtype.kind
    except (TypeError, ValueError):
        kind = "O"
    if kind not in "iuf":
        raise TypeError(f"{name} in the ladder must be numbers, got {values!r}")
    return array


def make_ladder(
    values: Mapping[str, ArrayLike] | None = None,
    *,
    temperatures: ArrayLike | None = None,
    dropout_temperature: str = "library",
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
        temperatures: optional explicit temperatures, one per rung, > 0,
            increasing: rung ``r`` (the ``r``-th value of every
            hyperparameter) gets ``temperatures[r]``, coldest first. Without
            them, the rungs are sorted by their default temperatures.
        dropout_temperature: the rule of a varying dropout rate ``q``:
            ``"library"`` (default, unchanged), ``T = 1 / (1 - q)`` (the
            paper's text); ``"authors"``, ``T = q / (1 - q)``, i.e.
            ``beta = p / (1 - p)`` for keep probability ``p``, what the
            authors' code uses and their C values were tuned with (module
            docstring; DESIGN.md section 2). Read back from the result as
            :attr:`Ladder.dropout_temperature`. Not with ``temperatures``.
        **kwargs: hyperparameter values, as in ``values``.

    Returns:
        A :class:`Ladder` whose rungs are ordered by increasing temperature.

    Raises:
        ValueError: fewer than 2 rungs, non-finite values, values outside a
            known range (``learning_rate <= 0``, ``dropout_rate`` outside
            ``[0, 1)``, ...; :data:`tempering.hyperparams.RANGES`), lengths that
            differ, duplicate temperatures, explicit temperatures that do not
            increase with the rung order, no hyperparameter that varies
            (without ``temperatures``), or no temperature for a varying name
            without a default one.
        TypeError: values that are not numbers (a string, an object).

    Example:
        >>> ladder = make_ladder(learning_rate=[0.01, 0.02, 0.04])
        >>> ladder.betas  # 1 / lr
        Array([100.,  50.,  25.], dtype=float32)
        >>> both = make_ladder(learning_rate=[0.01, 0.02], dropout_rate=[0.1, 0.2])
        >>> both.temperatures  # lr / (1 - q)
        Array([0.01111111, 0.025     ], dtype=float32)
        >>> authors = make_ladder(dropout_rate=[0.5, 0.2], dropout_temperature="authors")
        >>> authors.betas  # p / (1 - p)
        Array([4., 1.], dtype=float32)
        >>> authors.dropout_temperature
        'authors'
    """
    check_rule(dropout_temperature)
    if temperatures is not None and dropout_temperature != "library":
        raise ValueError(
            f"dropout_temperature={dropout_temperature!r} sets the temperatures "
            "from the dropout rates; give it or temperatures=, not both"
        )
    if values is not None and not isinstance(values, Mapping):
        raise TypeError(
            "values must map each hyperparameter to its values per rung, e.g. "
            "make_ladder(learning_rate=[0.01, 0.02]) or make_ladder("
            f"{{'learning_rate': [0.01, 0.02]}}), got {type(values).__name__} "
            f"{values!r}"
        )
    twice = sorted(set(values or {}) & set(kwargs))
    if twice:
        raise ValueError(
            f"make_ladder got {twice} both in values and as keywords: give each "
            "hyperparameter once"
        )
    given = dict(values or {}, **kwargs)
    if not given:
        raise ValueError(
            "make_ladder needs at least one hyperparameter, e.g. "
            "make_ladder(learning_rate=[0.01, 0.02, 0.04])"
        )
    arrays = {name: _numbers(v, name) for name, v in given.items()}
    if temperatures is not None:
        temperatures = _numbers(temperatures, "temperatures")
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
        check_values(name, arr, "the ladder")  # and as float32, as it holds them

    if temperatures is None:
        temps = combined_temperature(arrays, dropout_temperature)
    with np.errstate(over="ignore"):
        held = np.asarray(temps, np.float32)  # as the ladder holds them
    if not np.all(np.isfinite(held)) or np.any(held <= 0):
        raise ValueError(
            f"temperatures must be finite and > 0 in float32, got {temps.tolist()}"
        )
    if temperatures is not None and np.any(np.diff(temps) < 0):
        raise ValueError(
            f"temperatures {temps.tolist()} are out of order: rungs go coldest "
            "first, so explicit temperatures must increase with the rung order. "
            "Give the rungs' values and temperatures coldest first (the "
            "rungs are not re-sorted by explicit temperatures)"
        )
    order = np.argsort(temps, kind="stable")
    temps = temps[order]
    if np.any(np.diff(temps.astype(np.float32)) <= 0):  # as the ladder holds them
        raise ValueError(
            f"duplicate temperatures {temps.tolist()}: every rung needs its own "
            "temperature (its own hyperparameter value, distinct in float32)"
        )
    return Ladder(
        values={
            name: jnp.asarray(arr[order], jnp.float32) for name, arr in arrays.items()
        },
        temperatures=jnp.asarray(temps, jnp.float32),
        rule=None if temperatures is not None else dropout_temperature,
    )


def _spaced_ladder(
    spacing, name, low, high, num_rungs, temperatures, fixed, dropout_temperature
) -> Ladder:
    if not isinstance(num_rungs, int | np.integer) or num_rungs < 2:
        raise ValueError(f"num_rungs must be an int >= 2, got {num_rungs!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a hyperparameter name, got {name!r}")
    if name in fixed:
        raise ValueError(
            f"{name} is the ladder's spaced hyperparameter (low to high) and a "
            f"keyword too: give {name} once (the keywords are the other "
            "hyperparameters, shared by every rung)"
        )
    values = spacing(check_number(low, "low"), check_number(high, "high"), num_rungs)
    if name in INTEGER_HYPERPARAMETERS:  # geomspace(16, 128, 4) holds 32.00000000000001
        whole = np.round(values)
        values = np.where(np.isclose(values, whole, rtol=1e-9, atol=0.0), whole, values)
    return make_ladder(
        {name: values, **fixed},
        temperatures=temperatures,
        dropout_temperature=dropout_temperature,
    )


def linear_ladder(
    name: str,
    low: float,
    high: float,
    num_rungs: int,
    *,
    temperatures: ArrayLike | None = None,
    dropout_temperature: str = "library",
    **fixed: ArrayLike,
) -> Ladder:
    """A ladder with ``num_rungs`` linearly spaced values of one hyperparameter.

    Args:
        name: the hyperparameter that varies, e.g. ``"learning_rate"``.
        low: value at one end of the ladder.
        high: value at the other end.
        num_rungs: number of rungs M >= 2.
        temperatures: optional explicit temperatures.
        dropout_temperature: ``"library"`` (default, ``T = 1 / (1 - q)``) or
            ``"authors"`` (``T = q / (1 - q)``, ``beta = p / (1 - p)``), the
            rule of a dropout ladder (:func:`make_ladder`).
        **fixed: other hyperparameters, one value shared by every rung, e.g.
            ``learning_rate=0.01`` for a dropout ladder.

    Returns:
        The validated :class:`Ladder`, coldest rung first.

    Raises:
        TypeError: ``name`` not a string, ``low`` or ``high`` not a number.
        ValueError: ``num_rungs`` not an int >= 2, ``name`` given as a
            keyword too, or anything :func:`make_ladder` refuses.

    Example:
        >>> ladder = linear_ladder("dropout_rate", 0.47, 0.55, 8, learning_rate=0.01)
        >>> authors = linear_ladder(
        ...     "dropout_rate", 0.47, 0.55, 8, learning_rate=0.01,
        ...     dropout_temperature="authors",
        ... )  # the paper's CIFAR-10 ladder (keep 0.45-0.53) as its code ran it
    """
    return _spaced_ladder(
        np.linspace, name, low, high, num_rungs, temperatures, fixed,
        dropout_temperature,
    )  # fmt: skip


def geometric_ladder(
    name: str,
    low: float,
    high: float,
    num_rungs: int,
    *,
    temperatures: ArrayLike | None = None,
    dropout_temperature: str = "library",
    **fixed: ArrayLike,
) -> Ladder:
    """A ladder with geometrically spaced values of one hyperparameter.

    Args:
        name: the hyperparameter that varies.
        low: value at one end (> 0).
        high: value at the other end (> 0).
        num_rungs: number of rungs M >= 2.
        temperatures: optional explicit temperatures.
        dropout_temperature: ``"library"`` (default) or ``"authors"``, the
            rule of a dropout ladder (:func:`make_ladder`).
        **fixed: other hyperparameters shared by every rung.

    Returns:
        The validated :class:`Ladder`, coldest rung first.

    Raises:
        TypeError: ``name`` not a string, ``low`` or ``high`` not a number.
        ValueError: ``low`` or ``high`` not > 0, ``num_rungs`` not an int >= 2, ``name`` given as a
            keyword too, or anything :func:`make_ladder` refuses.
    """
    low, high = check_number(low, "low"), check_number(high, "high")
    if not (np.isfinite(low) and np.isfinite(high) and low > 0 and high > 0):
        raise ValueError(f"a geometric ladder needs low, high > 0, got {low}, {high}")
    return _spaced_ladder(
        np.geomspace, name, low, high, num_rungs, temperatures, fixed,
        dropout_temperature,
    )  # fmt: skip


def as_ladder(ladder: Any) -> Ladder:
    """A sound ladder (:func:`tempering.ladder.check_sound`) as float32 arrays.

    Hand-built ladders may hold lists; they are checked, then converted.

    Raises:
        TypeError: not a :class:`Ladder`, or values that are not a mapping.
        ValueError: an unsound ladder (see :func:`check_ladder`).
    """
    if not isinstance(ladder, Ladder):
        raise TypeError(
            "ladder must be a tempering.Ladder (see tempering.make_ladder), got "
            f"{type(ladder).__name__}"
        )
    if not isinstance(ladder.values, Mapping):
        raise TypeError(
            "ladder.values must be a mapping name -> one value per rung, got "
            f"{type(ladder.values).__name__}; build ladders with tempering.make_ladder"
        )
    check_sound(ladder)
    return Ladder(
        values={k: jnp.asarray(v, jnp.float32) for k, v in ladder.values.items()},
        temperatures=jnp.asarray(ladder.temperatures, jnp.float32),
        rule=ladder.rule,
    )


def check_ladder(state: ReplicaState, ladder: Ladder) -> None:
    """Raises ValueError unless ``ladder`` is sound and fits the state.

    A hand-built :class:`Ladder` (not from :func:`tempering.make_ladder`) is
    checked too: temperatures finite, > 0 and strictly increasing (a
    decreasing ladder would reverse the exchange's direction), one value per
    rung for every hyperparameter, each finite and within its range.
    """
    ladder = as_ladder(ladder)
    if ladder.num_rungs != state.num_replicas:
        raise ValueError(
            f"the ladder has {ladder.num_rungs} rungs but the state holds "
            f"{state.num_replicas} replicas; create the state with "
            "create_replicas(..., ladder=ladder)"
        )
    check_names(state, list(ladder.values), "ladder")


def assign_rungs(state: ReplicaState, ladder: Ladder, rungs: ArrayLike) -> ReplicaState:
    """Gives replica m the hyperparameters of ladder rung ``rungs[m]``.

    Only hyperparameters move; weights, optimiser moments and BatchNorm
    statistics stay with their replica.

    Raises:
        TypeError: rungs that are not integers.
        ValueError: rungs not of shape ``(M,)``, or (concrete ones) outside
            ``0..num_rungs - 1``.
    """
    _check_rung_indices(state, ladder, rungs)
    if any(isinstance(x, jax.core.Tracer) for x in (rungs, *ladder.values.values())):
        rungs = jnp.asarray(rungs, jnp.int32)
        values = {name: v[rungs] for name, v in ladder.values.items()}
    else:  # on the host: no small programs to compile before the first step
        rungs = np.asarray(rungs, np.int32)
        values = {name: np.asarray(v)[rungs] for name, v in ladder.values.items()}
    return set_hyperparams(state, **values)


def _check_rung_indices(state: ReplicaState, ladder: Ladder, rungs: Any) -> None:
    dtype = dtype_of(rungs)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"rungs must be integers (the rung of every replica), got dtype {dtype}"
        )
    if np.shape(rungs) != (state.num_replicas,):
        raise ValueError(
            f"rungs must hold one rung per replica, shape ({state.num_replicas},), "
            f"got shape {np.shape(rungs)}"
        )
    if not isinstance(rungs, jax.core.Tracer):
        indices = np.asarray(rungs)
        if np.any((indices < 0) | (indices >= ladder.num_rungs)):
            raise ValueError(
                f"rungs must lie in 0..{ladder.num_rungs - 1} (the ladder's "
                f"rungs), got {indices.tolist()}"
            )


def rungs_held(state: ReplicaState, ladder: Ladder) -> np.ndarray | None:
    """The rung each replica holds, read off its values; None if they are no rungs.

    Replica m holds rung r when its values of every name of ``ladder`` equal
    rung r's (in float32, as the replicas store them). Replicas holding equal
    values share out the equal rungs in order.

    Returns:
        ``(M,)`` int32, a permutation of the rungs, or None when the replicas'
        values are not the ladder's rungs, each held once.
    """
    num = state.num_replicas
    if ladder.num_rungs != num:
        return None
    match = np.ones((num, num), bool)  # replica m holds the values of rung r
    for name, values in ladder.values.items():
        if name not in state.hyperparams:
            return None
        held = np.asarray(state.hyperparams[name], np.float32)[:, None]
        match &= held == np.asarray(values, np.float32)[None, :]
    rungs, free = np.full(num, -1, np.int32), np.ones(num, bool)
    for m in range(num):
        candidates = np.flatnonzero(match[m] & free)
        if candidates.size == 0:
            return None
        rungs[m] = candidates[0]
        free[rungs[m]] = False
    return rungs
