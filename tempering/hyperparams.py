"""The registry of per-replica hyperparameters: where each lives and what it accepts.

A replica's hyperparameters are one mapping, ``ReplicaState.hyperparams``
(name -> ``(M,)`` float32), and come from two places:

- **optimiser hyperparameters**: every float a ``optax.inject_hyperparams``
  transformation injects (``learning_rate``, ``b1``, ``weight_decay``, ...),
  wherever it sits in the optimiser state (inside ``optax.chain``, a
  ``MultiSteps``, ...). The engine writes the mapping's values into every
  injected copy of that name before each update, so the mapping is the one
  source of truth. A name the user gave an optax *schedule* is not a
  per-replica hyperparameter (the schedule recomputes it every step); laddering
  it is an error.
- **model inputs**: keywords of the model's ``__call__`` that take a traced
  per-replica value (``dropout_rate`` by default, when the model has it).
- **data**: ``batch_size``, the number of examples of each step's batch a
  replica trains on (:data:`DATA_HYPERPARAMETERS`), given in a ladder or in
  ``create_replicas(..., hyperparams=)``.

Values are checked against the known range of common names
(:data:`RANGES`, and the upper :data:`LIMITS` beyond which a value is a typo);
any other name only needs to be finite.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from tempering.state import ReplicaState

__all__ = [
    "DATA_HYPERPARAMETERS",
    "LIMITS",
    "RANGES",
    "Range",
    "check_names",
    "check_number",
    "check_values",
    "get_hyperparams",
    "injected_leaves",
    "injected_names",
    "raise_unknown_names",
    "read_injected",
    "scheduled_names",
    "set_hyperparams",
    "write_injected",
]

PyTree = Any


class Range(NamedTuple):
    """Allowed values of a hyperparameter: ``low (<|<=) value (<|<=) high``."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Elementwise membership."""
        above = values > self.low if self.low_open else values >= self.low
        below = values < self.high if self.high_open else values <= self.high
        return above & below

    def describe(self) -> str:
        """The range in interval notation, e.g. ``[0, 1)``."""
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


_UNIT = Range(0.0, 1.0, high_open=True)
RANGES: dict[str, Range] = {
    "learning_rate": Range(0.0, np.inf, low_open=True, high_open=True),
    "dropout_rate": _UNIT,
    "weight_decay": Range(0.0, np.inf, high_open=True),
    "momentum": _UNIT,
    "b1": _UNIT,
    "b2": _UNIT,
    "decay": _UNIT,
    "label_smoothing": _UNIT,
    "eps": Range(0.0, np.inf, high_open=True),
    "eps_root": Range(0.0, np.inf, high_open=True),
    "batch_size": Range(1.0, np.inf, high_open=True),
}
# Hyperparameters of the data, not of the optimiser or the model: a replica's
# ``batch_size`` is how many examples of the shared batch it trains on (the
# first ones; :func:`tempering.step.replica_train_step` masks the rest).
DATA_HYPERPARAMETERS = ("batch_size",)
INTEGER_HYPERPARAMETERS = ("batch_size",)  # whole numbers only
# Largest value accepted: above it a value is a typo, not a setting (a learning
# rate of 1e3 diverges on any usual loss scale). Raise an entry to allow more.
LIMITS: dict[str, float] = {"learning_rate": 10.0}


def dtype_of(value: Any) -> Any:
    """``value``'s dtype, traced or not, without reading an array's values.

    A list or a Python number is read through numpy (``jnp.result_type``
    takes no list, and warns of a numpy int64 it would truncate).
    """
    dtype = getattr(value, "dtype", None)
    return np.asarray(value).dtype if dtype is None else dtype


def check_number(value: Any, name: str) -> float:
    """``value`` as a float; bools, strings, complex numbers and arrays are refused by name."""
    if (
        isinstance(value, bool | np.bool_ | str)
        or np.ndim(value) != 0
        or np.iscomplexobj(value)
    ):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None


def _all_numbers(values: Any) -> bool:
    """Whether every element of a nested sequence is a number (no string)."""
    if isinstance(values, str | bytes):
        return False
    if isinstance(values, list | tuple | np.ndarray):
        return all(_all_numbers(v) for v in values)
    return isinstance(values, int | float | np.number)


def check_values(name: str, values: Any, where: str = "") -> np.ndarray:
    """Validates values of a hyperparameter (finite, :data:`RANGES`, :data:`LIMITS`).

    Args:
        name: the hyperparameter.
        values: a scalar or array of values.
        where: what the values are, for the message (e.g. ``"the ladder"``).

    Returns:
        The values as a float64 numpy array (checked as given, and rounded
        to float32 as the replicas hold them).

    Raises:
        TypeError: values that are not numbers (bools included).
        ValueError: non-finite values, or values outside the known range or
            above the limit.
    """
    label = f"{name} in {where}" if where else name
    kind = np.asarray(values).dtype.kind
    if kind == "b":
        raise TypeError(f"{label} must be numbers, not bools, got {values!r}")
    if kind in "USO" and not _all_numbers(values):  # "0.1" would parse
        raise TypeError(f"{label} must be numbers, got {values!r}")
    try:
        array = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{label} must be numbers, got {values!r}") from None
    _check_range(name, array, label)
    with np.errstate(over="ignore"):  # an overflow is refused below, by name
        held = array.astype(np.float32).astype(np.float64)
    if not np.array_equal(held, array):  # 0.99999999 is 1.0 in float32
        _check_range(
            name, held, f"{label}, rounded to float32 as the replicas hold them"
        )
    return array


def _check_range(name: str, array: np.ndarray, label: str) -> None:
    """:func:`check_values`' ValueErrors for float64 values ``array``."""
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{label} has non-finite values {array.tolist()}")
    allowed = RANGES.get(name)
    if allowed is not None and not np.all(allowed.contains(array)):
        raise ValueError(
            f"{label} must lie in {allowed.describe()}, got {array.tolist()}"
        )
    if name in INTEGER_HYPERPARAMETERS and not np.all(array == np.round(array)):
        raise ValueError(
            f"{label} must be whole numbers (examples per step), got {array.tolist()}; "
            "a spacing that falls between them needs the values themselves, e.g. "
            "make_ladder(batch_size=[16, 32, 64, 128])"
        )
    limit = LIMITS.get(name)
    if limit is not None and np.any(array > limit):
        raise ValueError(
            f"{label} must be at most {limit:g} (larger values diverge; raise "
            f"tempering.hyperparams.LIMITS[{name!r}] if you mean it), got "
            f"{array.tolist()}"
        )


def _injected_key(path: tuple) -> str | None:
    """The hyperparameter name of a leaf at ``...hyperparams[name]``, else None."""
    if len(path) < 2:
        return None
    parent, last = path[-2], path[-1]
    if getattr(parent, "name", None) == "hyperparams" and hasattr(last, "key"):
        return str(last.key)
    return None


def injected_names(opt_state: PyTree) -> tuple[str, ...]:
    """Names of the float hyperparameters injected anywhere in an optimiser state.

    Args:
        opt_state: the state of one replica (or the stacked state).

    Returns:
        Sorted names, each once, scheduled ones included.
    """
    names = set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        name = _injected_key(path)
        if name is not None and jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            names.add(name)
    return tuple(sorted(names))


def injected_leaves(opt_state: PyTree) -> dict[str, list[Any]]:
    """Every injected copy of every name (floats, integers and all), in order."""
    copies: dict[str, list[Any]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        name = _injected_key(path)
        if name is not None:
            copies.setdefault(name, []).append(leaf)
    return copies


def scheduled_names(opt_state: PyTree) -> tuple[str, ...]:
    """Names injected as optax schedules (recomputed by the optimiser every step)."""
    names = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        for i, entry in enumerate(path[:-1]):
            if getattr(entry, "name", None) == "hyperparams_states":
                names.add(str(path[i + 1].key))
    return tuple(sorted(names))


def read_injected(opt_state: PyTree, name: str) -> jax.Array:
    """The first injected copy of ``name`` in an optimiser state."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        if _injected_key(path) == name:
            return leaf
    raise KeyError(f"the optimiser injects no hyperparameter {name!r}")


def write_injected(opt_state: PyTree, values: Mapping[str, jax.Array]) -> PyTree:
    """Writes ``values`` into every injected copy of each name, in its dtype.

    Names the optimiser does not inject are ignored; shapes must match the
    injected leaves (``()`` for one replica, ``(M,)`` for the stacked state).
    """

    def write(path, leaf):
        name = _injected_key(path)
        if name is None or name not in values:
            return leaf
        # A copy: the state's buffers are donated one by one, never aliased.
        return jnp.array(values[name], dtype=jnp.result_type(leaf), copy=True)

    return jax.tree_util.tree_map_with_path(write, opt_state)


def _raise_unknown(state: ReplicaState, names: Sequence[str], where: str) -> None:
    raise_unknown_names(state.hyperparams, state.scheduled, names, where)


def raise_unknown_names(
    known: Any, scheduled: Sequence[str], names: Sequence[str], where: str,
    hint: str = "",
) -> None:  # fmt: skip
    """Raises ValueError for ``names`` not among ``known``, naming the fix."""
    on_schedule = [n for n in names if n in scheduled]
    if on_schedule:
        raise ValueError(
            f"{where}: {on_schedule} follow an optax schedule in tx, so they cannot "
            "be set per replica; pass a number to optax.inject_hyperparams "
            "for a hyperparameter you ladder or set"
        )
    raise ValueError(
        f"{where}: unknown hyperparameter(s) {list(names)}; this state takes "
        f"{sorted(known)} (the floats tx injects with "
        "optax.inject_hyperparams, and the model inputs). An optimiser's "
        "argument is one when injected: optax.inject_hyperparams(optax.sgd)("
        "learning_rate=0.05, momentum=0.9) (tempering.sgd injects the learning "
        "rate only; tempering.diffusion.l2_sgd injects weight_decay too); a "
        f"model's keyword with create_replicas(..., model_inputs=...){hint}"
    )


def check_names(state: ReplicaState, names: Sequence[str], where: str) -> None:
    """Raises ValueError, with the fix, for names the state does not hold."""
    unknown = sorted(set(names) - set(state.hyperparams))
    if unknown:
        _raise_unknown(state, unknown, where)


def _index_or_none(value: Any) -> int | None:
    """``value`` as an index, else None (bools too).

    An int, a numpy integer or a concrete 0-d integer array (``jnp.argmin``'s).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return operator.index(value)
    if (
        isinstance(value, np.ndarray | jax.Array)
        and not isinstance(value, jax.core.Tracer)
        and value.shape == ()
        and np.issubdtype(value.dtype, np.integer)
    ):
        return operator.index(value)
    return None


def get_hyperparams(
    state: ReplicaState,
    names: Sequence[str] | int | None = None,
    *,
    replica: int | None = None,
) -> dict[str, Any]:
    """Per-replica values ``(M,)`` of the named (default: all) hyperparameters.

    Args:
        state: the replicas.
        names: a name, names, or None for all; an int (or a 0-d integer
            array, such as ``jnp.argmin``'s) is taken as ``replica``.
        replica: one replica's index: its values as Python floats instead.

    Example:
        >>> tp.get_hyperparams(result.state, result.summary.best_replica)
        {'dropout_rate': 0.1, 'learning_rate': 0.05}

    Raises:
        TypeError: names that are not strings, a replica that is not an int.
        ValueError: names the state does not hold.
        ValueError: a replica out of range.
    """
    from tempering.state import check_state  # (it imports this module)

    check_state(state, "get_hyperparams")
    if _index_or_none(names) is not None:
        replica, names = _index_or_none(names), None
    if replica is not None:
        if _index_or_none(replica) is None:
            raise TypeError(f"replica must be an int index, got {replica!r}")
        replica = operator.index(replica)
        num = state.num_replicas
        if not -num <= replica < num:
            raise ValueError(
                f"replica must lie in [-{num}, {num}) (one of the {num} replicas), "
                f"got {replica}"
            )
        values = get_hyperparams(state, names)
        return {name: float(v[replica]) for name, v in values.items()}
    names = sorted(state.hyperparams) if names is None else names
    if isinstance(names, str):
        names = (names,)
    elif not (
        isinstance(names, Collection)  # a list, a set, dict.keys()
        and all(isinstance(n, str) for n in names)
    ):
        raise TypeError(
            "names must be a hyperparameter name or a sequence of names, e.g. "
            f"['learning_rate'], got {names!r}"
        )
    names = tuple(names)
    check_names(state, names, "get_hyperparams")
    return {name: state.hyperparams[name] for name in names}


def set_hyperparams(state: ReplicaState, **values: Any) -> ReplicaState:
    """Writes per-replica hyperparameters (each ``(M,)`` or a scalar).

    Pure and jit-able; concrete values are range-checked (:data:`RANGES`).
    Traced values (under ``jax.jit``) and an array split over several
    processes (a multi-host run's own hyperparameters) cannot be read here:
    their shape is checked, their values are not.

    Args:
        state: the stacked replicas.
        **values: name -> one value for every replica, or ``(M,)`` values.

    Returns:
        The state with those hyperparameters (and the optimiser's injected
        copies) replaced.

    Raises:
        ValueError: a name the state does not hold, values of another shape
            than ``()`` or ``(M,)``, or outside the name's range.
        TypeError: a value that is not a number (a string).

    Example:
        >>> state = set_hyperparams(state, learning_rate=0.1, dropout_rate=rates)
    """
    if not values:
        return state
    from tempering.state import check_state  # (it imports this module)

    check_state(state, "set_hyperparams")
    unknown = sorted(set(values) - set(state.hyperparams))
    if unknown:
        _raise_unknown(state, unknown, "set_hyperparams")
    num = state.num_replicas
    new = dict(state.hyperparams)
    for name, value in values.items():
        if isinstance(value, jax.core.Tracer) or (
            isinstance(value, jax.Array) and not value.is_fully_addressable
        ):  # values unreadable here, the shape known
            shape = tuple(value.shape)
        else:
            shape = check_values(name, value).shape
        if shape not in ((), (num,)):
            raise ValueError(
                f"{name} must be a scalar or have shape ({num},) (one value per "
                f"replica), got shape {shape}"
            )
        value = jnp.array(value, jnp.float32, copy=True)  # never alias a caller's
        new[name] = jnp.broadcast_to(value, (num,))
    opt_state = write_injected(state.opt_state, new)
    return state.replace(hyperparams=new, opt_state=opt_state)
