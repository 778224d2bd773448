"""What happens to a replica whose loss stops being finite.

A replica *diverges* in a round when its mean training loss over the round's
segment, its validation loss or its score is NaN or inf. Its weights are then
useless and, with the default policy, stay so: the round's record flags it
(``diverged``), the driver warns once per replica and call, and it is never
reported as the best replica. With ``on_diverge="restore"`` the driver copies
the weights, optimiser state and batch statistics of the nearest finite colder
replica (the finite replica on the highest rung below its own; the nearest
hotter one when none is colder) into it before the move; it keeps its own
hyperparameters, and the record says where it came from (``restored_from``).
A move without rungs (PBT) ranks a diverged replica last under either policy,
restored or not: its round's exploit replaces it with a copy of a better
replica and explores its values, and it is never a donor.
When every replica has diverged the run stops with :class:`DivergenceError`,
which carries the history of the rounds done and the last state whose round
ended finite: nothing trained is lost, with or without ``checkpoint_dir``.
The warnings name the hyperparameters a replica had when it diverged (before
the round's restore and move).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from tempering._caller import warn
from tempering._quick_jit import quick_jit

__all__ = ["POLICIES", "DivergenceError", "attach", "check_policy"]

POLICIES = ("flag", "restore")


class DivergenceError(FloatingPointError):
    """Every replica's loss is NaN or inf: the run stops, its work attached.

    :func:`tempering.train` keeps a device copy of the replicas at the end of
    every round that ended finite (not every replica diverged; the cost is one
    more copy of the weights, batch statistics and optimiser state) and
    attaches it, since the replicas it trains are donated to each segment.

    Attributes:
        history: the :class:`~tempering.records.History` of the rounds done.
        state: the replicas after the last round that ended finite (after its
            restore and move), or as the call started when none did; with
            ``on_diverge="flag"`` a replica flagged by then stays non-finite.
        move_state: the move's state at the same point: pass both to a
            call that continues with other settings.
    """

    def __init__(
        self, message: str, history: Any = None, state: Any = None,
        move_state: Any = None,
    ):  # fmt: skip
        super().__init__(message)
        self.history, self.state, self.move_state = history, state, move_state


def attach(
    error: BaseException, state: Any, move_state: Any, history: Any
) -> BaseException:
    """``error`` carrying the last finite ``state``, ``move_state`` and ``history``."""
    error.state, error.move_state, error.history = state, move_state, history  # type: ignore[attr-defined]
    return error


def check_policy(on_diverge: Any) -> str:
    """``on_diverge`` validated: one of :data:`POLICIES`."""
    if not isinstance(on_diverge, str) or on_diverge not in POLICIES:
        raise ValueError(
            f"on_diverge must be one of {POLICIES} ('flag' records and warns, "
            f"'restore' re-initialises from the nearest finite colder replica), "
            f"got {on_diverge!r}"
        )
    return on_diverge


def non_finite(*values: np.ndarray | None) -> np.ndarray:
    """Replicas with any non-finite value among ``values`` (each ``(M,)``)."""
    present = [np.asarray(v, np.float64) for v in values if v is not None]
    return np.logical_or.reduce([~np.isfinite(v) for v in present])


def restore_sources(diverged: np.ndarray, rungs: np.ndarray | None) -> np.ndarray:
    """For each diverged replica, the finite replica it is restored from.

    Args:
        diverged: shape ``(M,)``, bool.
        rungs: shape ``(M,)``, the rung each replica holds (0 is the coldest);
            None for a move that keeps no rungs (PBT): replica m counts as
            rung m.

    Returns:
        shape ``(M,)``, int32: the finite replica on the highest rung below the
        diverged one's (the lowest rung above it when none is colder); -1 for
        replicas that did not diverge.
    """
    rungs = np.arange(len(diverged)) if rungs is None else np.asarray(rungs)
    finite = np.flatnonzero(~diverged)
    sources = np.full(diverged.shape, -1, np.int32)
    for m in np.flatnonzero(diverged):
        colder = finite[rungs[finite] < rungs[m]]
        hotter = finite[rungs[finite] > rungs[m]]
        if colder.size:
            sources[m] = colder[np.argmax(rungs[colder])]
        elif hotter.size:
            sources[m] = hotter[np.argmin(rungs[hotter])]
    return sources


@quick_jit
def copy_replicas(state: Any, gather: jax.Array) -> Any:
    """Replica m's weights, optimiser state and batch statistics from ``gather[m]``."""
    take = lambda tree: jax.tree.map(lambda x: x[gather], tree)  # noqa: E731
    return state.replace(
        params=take(state.params),
        batch_stats=take(state.batch_stats),
        opt_state=take(state.opt_state),
    )


class Warner:
    """Warns once per replica and call (``flag``), or at every restore."""

    def __init__(self, policy: str):
        self.policy = policy
        self.flagged: set[Any] = set()

    def __call__(self, record: Any, hyperparams: Any) -> None:
        """Warns about the replicas ``record`` flags.

        ``hyperparams`` are their values when they diverged: before the round's
        restore and move (``record.hyperparams`` are after the move).
        """
        copied = getattr(record.move, "copied", None)  # PBT's exploit
        for m in np.flatnonzero(record.diverged):
            source = int(record.restored_from[m])
            if copied is not None and copied[m]:
                self.flagged.discard(m)  # a new replica: it may warn again
                what = (
                    "replaced at this round's exploit by a copy of replica "
                    f"{int(record.move.parent[m])}, its values explored"
                )
            elif source >= 0:
                what = (
                    f"restored from replica {source} (the nearest finite one, "
                    "colder where one is)"
                )
            elif m in self.flagged:
                continue
            else:
                self.flagged.add(m)
                what = (
                    "kept as it is and never reported best; "
                    "on_diverge='restore' re-initialises it from the nearest "
                    "finite colder replica"
                )
            _warn(int(m), hyperparams, record.step, what)

    def at_end(self, diverged: np.ndarray, step: int, hyperparams: Any) -> None:
        """Warns about replicas the call's final evaluation found diverged.

        Those the rounds already flagged are not warned about again; these
        diverged after the last round (a last segment without a move).

        Args:
            diverged: shape ``(M,)``, bool; non-finite at the final evaluation.
            step: the replicas' step at the end of the call.
            hyperparams: name -> shape ``(M,)``, the replicas' values (host).
        """
        for m in np.flatnonzero(diverged):
            if m not in self.flagged:
                self.flagged.add(m)
                what = (
                    "found at the call's final evaluation, after its last round "
                    "(nothing restored or replaced it); never reported best"
                )
                _warn(int(m), hyperparams, step, what)


def _warn(replica: int, hyperparams: Any, step: int, what: str) -> None:
    """The RuntimeWarning that ``replica`` (its ``hyperparams`` named) diverged."""
    values = ", ".join(f"{k}={float(v[replica]):.4g}" for k, v in hyperparams.items())
    warn(
        f"replica {replica} ({values}) diverged by step {step} (non-finite loss "
        f"or score): {what}",
        RuntimeWarning,
    )
