"""One run's settings, validated once: :class:`RunConfig` and its data, :class:`RunData`.

A run of :func:`tempering.train` is ``train(state, key, move, data, config)``:
the replicas, the run's key, the move, the data splits and every other setting
in one frozen :class:`RunConfig` (schedule, batching, evaluation, execution,
checkpoints, divergence policy). A config is checked when it is built (a
``TypeError`` or ``ValueError`` naming the field and the fix, before anything
compiles) and changed one field at a time with :meth:`RunConfig.replace`:

```python
config = tp.RunConfig(num_steps=4000, interval=100, burn_in=500)
longer = config.replace(num_steps=8000)
```

:func:`tempering.pt_train` and :func:`tempering.pbt_train` take the same
settings as keywords (their exchange or ready interval is the config's
``interval``), or a whole ``run_config=``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from tempering.checkpoint_files import check_directory_name
from tempering.divergence import check_policy
from tempering.fast import resolve_policy
from tempering.loops import LOOPS
from tempering.state import EvalMetrics, MetricsFn, default_metrics

__all__ = [
    "Callback",
    "RunConfig",
    "RunData",
    "Rounds",
    "ScoreFn",
    "check_bool",
    "check_int",
    "config_from",
    "require_validation",
]

ScoreFn = Callable[[EvalMetrics], jax.Array]
Callback = Callable[[Any], Any]

_CALLABLE_FORMS = {
    "callback": "callback(record) -> stop?",
    "score_fn": "score_fn(metrics) -> (M,) scores",
    "augment": "augment(key, batch) -> batch",
    "metrics_fn": "metrics_fn(outputs, targets) -> {name: (B,)}",
}


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools refused), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool; strings and numbers are refused."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def require_validation(validation_data: Any, caller: str, role: str) -> None:
    """A TypeError when a wrapper whose move needs scores gets no validation data.

    Args:
        validation_data: what the caller passed.
        caller: the wrapper's name, e.g. ``"pt_train"``.
        role: what the validation loss is for there, e.g. "drives the exchanges".
    """
    if validation_data is None:
        raise TypeError(f"{caller} needs validation_data: its loss {role}")


def _check_callable(function: Any, name: str) -> None:
    if function is not None and not callable(function):
        raise TypeError(
            f"{name} must be callable as {_CALLABLE_FORMS[name]} (or None), "
            f"got {type(function).__name__} {function!r}"
        )


class Rounds(NamedTuple):
    """When to train, evaluate and move (a :class:`RunConfig`'s, validated).

    Fixed rounds: round 0 is the burn-in ``[0, burn_in)`` (no evaluation, no
    move) and round r >= 1 ends at ``burn_in + r * interval``. Explicit rounds
    (``ends``): round r ends at ``ends[r]``, and every round is evaluated and
    followed by a move, round 0 included.
    """

    num_steps: int  # SGD steps this call takes, burn-in included
    interval: int  # SGD steps per round (fixed rounds); 0 with explicit ends
    burn_in: int  # global steps [0, burn_in) before the first round
    ends: tuple[int, ...] = ()  # explicit global round ends, increasing


# The replicas count their global steps in int32 (``state.step``).
MAX_STEP = 2**31 - 1


def check_step_count(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int in ``[minimum, MAX_STEP]`` (a count of steps)."""
    value = check_int(value, name, minimum)
    if value > MAX_STEP:
        raise ValueError(
            f"{name} must be at most 2**31 - 1 = {MAX_STEP} (the replicas count "
            f"steps in int32), got {value}"
        )
    return value


def _rounds(num_steps: Any, interval: Any, burn_in: Any) -> Rounds:
    """Validates the rounds of a call (``interval``: an int, or the round ends)."""
    num_steps = check_step_count(num_steps, "num_steps", 1)
    burn_in = check_step_count(burn_in, "burn_in", 0)
    if isinstance(interval, int | np.integer) and not isinstance(interval, bool):
        return Rounds(num_steps, check_step_count(interval, "interval", 1), burn_in)
    if np.ndim(interval) == 0:  # a float, a bool, ...: not an int, not round ends
        check_int(interval, "interval", 1)
    ends = tuple(check_step_count(e, "interval", 0) for e in interval)
    if not ends or any(b <= a for a, b in zip(ends, ends[1:], strict=False)):
        raise ValueError(f"interval must be increasing round ends >= 1, got {ends}")
    if ends[0] == 0:
        raise ValueError(
            f"interval's round ends must be >= 1, got {ends}: a round trains at "
            "least one step (the first round ends after its first step or later)"
        )
    if burn_in:
        raise ValueError("burn_in must be 0 with explicit round ends")
    return Rounds(num_steps, 0, 0, ends)


@dataclasses.dataclass(frozen=True)
class RunData:
    """The data of a run.

    Attributes:
        train: in-memory ``(inputs, targets)`` / ``Split``, or an iterable of
            batches (:mod:`tempering.sources`).
        validation: arrays or a re-iterable of batches, evaluated every round;
            its loss is the default score. None: no evaluation (the move sees
            zero scores).
        test: optional held-out data evaluated every round with the same
            weights as the validation (before the move); never scored.
    """

    train: Any
    validation: Any = None
    test: Any = None


# Examples per step and replica of in-memory data when batch_size is None.
DEFAULT_BATCH_SIZE = 128


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a :func:`tempering.train` call but its state, key, move and data.

    Built once and validated then (``TypeError`` / ``ValueError`` naming the
    field). Change one field with :meth:`replace`.

    Attributes:
        num_steps: SGD steps this call takes per replica, burn-in included.
        interval: SGD steps per round, or explicit global round ends, each
            >= 1 and increasing (every round then evaluated and moved, round
            0 included; no burn-in).
        burn_in: global steps before the first round (no evaluation, no move).
        burn_in_hyperparams: values every replica uses during the burn-in,
            e.g. ``{"learning_rate": 0.1}``; the state's own come back after.
        move_at_end: False skips the move (and the record) of a round that
            ends the call (PBT: no exploit after the last segment).
        batch_size: examples per step and replica of in-memory data; None:
            :data:`DEFAULT_BATCH_SIZE`. Streamed batches keep their own size:
            a ``batch_size`` that differs from it is an error, never ignored.
        shared_batch: every replica sees the same batch each step; False
            gives each replica its own batch order (in-memory data) or expects
            batches with a leading replica axis (streams).
        augment: optional on-device ``augment(key, batch) -> batch``.
        eval_batch_size: chunk size of the vectorised evaluation.
        metrics_fn: per-example metrics ``(outputs, targets) -> {name: (B,)}``;
            default accuracy for classification, None for none.
        score_fn: ``score_fn(validation: EvalMetrics) -> (M,)`` scores the
            move compares, lower is better; default the validation loss.
        vectorize: how layers are batched over replicas
            (:func:`tempering.fast.replica_vmap`'s policies).
        loop: ``"auto"``, ``"device"`` or ``"host"`` (:mod:`tempering.loops`).
        devices: split the replicas over these devices
            (:func:`tempering.sharding.shard_replicas`); None: over every local
            device when there are several and M is a multiple of their number
            (else one device, with a warning); ``jax.local_devices()[:1]``: one device.
        progress: a tqdm progress bar: True, False, or None (the default): on
            in a notebook (a Jupyter or IPython kernel), off elsewhere (scripts, CI).
        callback: ``callback(record)`` after every round with its
            :class:`tempering.RoundRecord`; a truthy return stops the run.
        checkpoint_dir: save checkpoints here and resume from the latest
            (:mod:`tempering.checkpoint`); None: no checkpoints.
        checkpoint_every: rounds between checkpoints (with ``checkpoint_dir``
            only, as ``keep_checkpoints`` and ``resume_allowing``: given
            without it, a ValueError).
        keep_checkpoints: how many of the latest checkpoints to keep.
        resume_allowing: entries of the checkpoint's fingerprint that may
            differ when resuming (e.g. ``("metrics_fn",)``): the run resumes
            anyway, half one setting and half the other. By default any
            difference is refused, naming the entries.
        on_diverge: ``"flag"`` or ``"restore"`` (:mod:`tempering.divergence`).

    Example:
        >>> config = RunConfig(num_steps=2000, interval=100, burn_in=500)
        >>> config.replace(batch_size=64).batch_size
        64
    """

    # the schedule
    num_steps: int
    interval: int | tuple[int, ...]
    burn_in: int = 0
    burn_in_hyperparams: Mapping[str, float] | None = None
    move_at_end: bool = True
    # batching
    batch_size: int | None = None
    shared_batch: bool = True
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    # evaluation
    eval_batch_size: int = 1000
    metrics_fn: MetricsFn | None = default_metrics
    score_fn: ScoreFn | None = None
    # execution
    vectorize: str = "auto"
    loop: str = "auto"
    devices: Sequence[jax.Device] | None = None
    progress: bool | None = None
    callback: Callback | None = None
    # checkpoints
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    resume_allowing: tuple[str, ...] = ()
    # divergence
    on_diverge: str = "flag"

    def __post_init__(self) -> None:
        schedule = _rounds(self.num_steps, self.interval, self.burn_in)
        normal: dict[str, Any] = {
            "num_steps": schedule.num_steps,
            "burn_in": schedule.burn_in,
            "interval": schedule.ends or schedule.interval,
            "move_at_end": check_bool(self.move_at_end, "move_at_end"),
            "batch_size": None
            if self.batch_size is None
            else check_int(self.batch_size, "batch_size", 1),
            "shared_batch": check_bool(self.shared_batch, "shared_batch"),
            "eval_batch_size": check_int(self.eval_batch_size, "eval_batch_size", 1),
            "progress": None
            if self.progress is None
            else check_bool(self.progress, "progress"),
            "checkpoint_every": check_int(self.checkpoint_every, "checkpoint_every", 1),
            "keep_checkpoints": check_int(self.keep_checkpoints, "keep_checkpoints", 1),
            "on_diverge": check_policy(self.on_diverge),
            "checkpoint_dir": None
            if self.checkpoint_dir is None
            else check_directory_name(self.checkpoint_dir),
            "resume_allowing": _check_names(self.resume_allowing, "resume_allowing"),
        }
        if normal["checkpoint_dir"] is None:
            _check_no_checkpoint_settings(normal)
        for name in ("callback", "score_fn", "augment", "metrics_fn"):
            _check_callable(getattr(self, name), name)
        resolve_policy(self.vectorize)  # an unknown name is a ValueError
        if self.devices is not None:
            from tempering.sharding import checked_mesh

            checked_mesh(self.devices)
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {LOOPS}, got {self.loop!r}")
        hyperparams = self.burn_in_hyperparams
        if hyperparams is not None and not isinstance(hyperparams, Mapping):
            raise TypeError(
                "burn_in_hyperparams must be a mapping of name -> value, e.g. "
                f"{{'learning_rate': 0.1}}, got {type(hyperparams).__name__}"
            )
        if hyperparams is not None:
            normal["burn_in_hyperparams"] = dict(hyperparams) or None
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    @property
    def rounds(self) -> Rounds:
        """The validated rounds of the call."""
        if isinstance(self.interval, tuple):
            return Rounds(self.num_steps, 0, 0, self.interval)
        return Rounds(self.num_steps, self.interval, self.burn_in)

    @property
    def array_batch_size(self) -> int:
        """Examples per step and replica of in-memory data (the default when None)."""
        return DEFAULT_BATCH_SIZE if self.batch_size is None else self.batch_size

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def for_batch_sizes(self, sizes: Any) -> RunConfig:
        """The config for replicas with per-replica ``batch_size`` values ``sizes``.

        Every step's batch holds the largest of them and of the burn-in's
        ``batch_size`` (each replica trains on its first ``batch_size``
        examples): ``batch_size=None`` becomes that largest size; a smaller
        ``batch_size`` is a ValueError.
        """
        largest = int(np.max(np.asarray(sizes)))
        burn_in = (self.burn_in_hyperparams or {}).get("batch_size")
        if burn_in is not None:  # the burn-in's steps need their size too
            largest = max(largest, int(np.max(np.asarray(burn_in))))
        if self.batch_size is None:
            return self.replace(batch_size=largest)
        if self.batch_size < largest:
            raise ValueError(
                f"batch_size={self.batch_size} is smaller than the largest "
                "per-replica batch_size (of the state, burn_in_hyperparams, or "
                "the upper bound of a batch_size pbt_config explores), "
                f"{largest}: every step's batch "
                "holds the largest, and each replica trains on its first batch_size "
                f"examples. Give batch_size={largest} (or None, which means it)"
            )
        return self


def _check_names(names: Any, name: str) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(
            f"{name} must be a tuple of names, e.g. ('metrics_fn',), got {names!r}"
        )
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"{name} must hold names (str), got {names!r}")
    return tuple(names)


_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(RunConfig)
    if field.default is not dataclasses.MISSING
}


def _check_no_checkpoint_settings(normal: dict[str, Any]) -> None:
    """A ValueError for checkpoint settings given without a ``checkpoint_dir``.

    They would be ignored: the run would save nothing while its caller
    believes it protected.
    """
    given = [
        name
        for name in ("checkpoint_every", "keep_checkpoints", "resume_allowing")
        if normal[name] != _DEFAULTS[name]
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)} given without checkpoint_dir: nothing would be "
            "saved; pass checkpoint_dir= (a folder) to checkpoint the run, or "
            f"leave {' and '.join(given)} at the default"
        )


def _is_default(name: str, value: Any) -> bool:
    default = _DEFAULTS[name]
    if value is default:
        return True
    plain = isinstance(value, int | float | str) and type(value) is type(default)
    return plain and value == default


def config_from(
    config: RunConfig | None,
    caller: str,
    interval_name: str,
    num_steps: Any,
    interval: Any,
    **settings: Any,
) -> RunConfig:
    """The run's config: ``config`` itself, or one built from a wrapper's keywords.

    Args:
        config: a whole :class:`RunConfig` (the wrapper's ``run_config``), or None.
        caller: the wrapper's name, for messages (``"pt_train"``).
        interval_name: its name for ``interval`` (``"exchange_interval"``).
        num_steps: its ``num_steps`` keyword.
        interval: its interval keyword (validated under ``interval_name``).
        **settings: its other run settings, as :class:`RunConfig` fields.

    Raises:
        TypeError: no config and no ``num_steps`` or interval, or an interval
            that is not an int (explicit round ends go in a ``RunConfig``).
        ValueError: a config and settings given as keywords too.
    """
    if config is None:
        missing = [
            name
            for name, value in (("num_steps", num_steps), (interval_name, interval))
            if value is None
        ]
        if missing:
            raise TypeError(
                f"{caller} needs {' and '.join(f'{m}=' for m in missing)} (or a "
                "whole run_config=tempering.RunConfig(...))"
            )
        if np.ndim(interval) != 0:
            raise TypeError(
                f"{interval_name} must be an int (SGD steps per round), got "
                f"{interval!r}; for explicit round ends give "
                "run_config=tempering.RunConfig(num_steps=..., interval=(end, ...))"
            )
        interval = check_int(interval, interval_name, 1)
        return RunConfig(num_steps=num_steps, interval=interval, **settings)
    if not isinstance(config, RunConfig):
        raise TypeError(
            f"run_config must be a tempering.RunConfig, got {type(config).__name__}"
        )
    given = [name for name, value in settings.items() if not _is_default(name, value)]
    given += [
        name
        for name, value in (("num_steps", num_steps), (interval_name, interval))
        if value is not None
    ]
    if given:
        raise ValueError(
            f"{caller}: give either run_config= or the run settings as keywords, "
            f"not both (also given: {', '.join(sorted(given))}); change a setting "
            "of a config with run_config.replace(name=value)"
        )
    return config
