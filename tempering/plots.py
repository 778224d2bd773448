"""Figures of a run (matplotlib, an optional dependency, imported lazily).

The ``plot_*`` functions draw the quantities of :mod:`tempering.diagnostics`,
each on a given or new ``Axes`` which it returns; :func:`plot_diagnostics`
draws all of them on one figure.

Three figures of the paper take arrays rather than a history, so they also
draw results averaged over seeds or runs: :func:`plot_error_curves` (test
error against time, one curve per label), :func:`plot_replica_paths` (paper
Fig. 2, right: the rung of every replica from its start, the best one
highlighted) and :func:`plot_acceptance_rate` (a bar per adjacent rung pair).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tempering.diagnostics import (
    acceptance_over_time,
    barrier,
    c_over_time,
    replica_schedule,
    round_trips,
    rung_history,
    rung_occupancy,
)
from tempering.driver import best_index
from tempering.records import History, check_history

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_acceptance",
    "plot_acceptance_rate",
    "plot_barrier",
    "plot_c",
    "plot_diagnostics",
    "plot_error_curves",
    "plot_replica_paths",
    "plot_rung_occupancy",
    "plot_rung_paths",
    "plot_schedule",
    "plot_val_loss",
]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tempering.plots needs matplotlib: pip install matplotlib"
        ) from err
    return plt


def _axes(ax: Axes | None) -> Axes:
    if ax is None:
        _, ax = _pyplot().subplots()
    else:
        _pyplot()
    return ax


def _mark_unmeasured(ax: Axes, positions: np.ndarray, unmeasured: np.ndarray) -> None:
    """Labels "n/a" the bars with no value (NaN), which would look like zeros."""
    for position in positions[unmeasured]:
        ax.text(position, 0.0, "n/a", ha="center", va="bottom", fontsize="small",
                color="0.35")  # fmt: skip


def _pair_names(unmeasured: np.ndarray) -> str:
    """``"2-3"``, ``"0-1, 2-3"``: the adjacent pairs flagged in ``(M - 1,)``."""
    return ", ".join(f"{r}-{r + 1}" for r in np.flatnonzero(unmeasured))


def _as_shaped(
    name: str, value: Any, shape: tuple[int | None, ...], dtype=None, why: str = ""
) -> np.ndarray:
    """``value`` as an array of ``shape`` (None: any length), else a ValueError."""
    array = np.asarray(value, dtype)
    if array.ndim != len(shape) or any(
        want is not None and have != want
        for have, want in zip(array.shape, shape, strict=True)
    ):
        expected = "(" + ", ".join("n" if n is None else str(n) for n in shape)
        expected += ",)" if len(shape) == 1 else ")"
        raise ValueError(
            f"{name} must have shape {expected}{why}, got an array of shape "
            f"{array.shape}"
        )
    return array


def _check_labels(name: str, labels: Sequence[str] | None, count: int, of: str) -> None:
    if labels is not None and len(labels) != count:
        raise ValueError(
            f"{name} must have one label per {of} ({count}), got {len(labels)}"
        )


def _default_replica(history: History) -> int:
    """The replica with the lowest final validation loss (else 0)."""
    if history.validation is None:
        return 0
    val_loss = np.asarray(history.val_loss)
    return best_index(val_loss[-1]) if val_loss.shape[0] else 0


def _default_name(history: History) -> str | None:
    """The first hyperparameter whose values vary, else the first one (or None)."""
    for name, values in history.hyperparams.items():
        values = np.asarray(values, np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() != finite.max():
            return name
    return next(iter(history.hyperparams), None)


def _log_scale_if_wide(ax: Axes, values: np.ndarray) -> None:
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
        ax.set_yscale("log")


def plot_acceptance(
    history: History, ax: Axes | None = None, *, window: int = 10
) -> Axes:
    """Plots :func:`acceptance_over_time` of every adjacent pair against the step.

    Args:
        history: the history of :func:`tempering.pt_train`.
        ax: the Axes to draw on; a new figure's by default.
        window: rounds of the trailing window.

    Returns:
        The Axes.

    Raises:
        ValueError: a history whose move proposes no swaps (PBT), or
            ``window`` < 1.
    """
    check_history(history, "plot_acceptance")
    acceptance = acceptance_over_time(history, window)  # shape=(R, M - 1)
    ax = _axes(ax)  # after the checks: a refused call opens no figure
    steps = np.asarray(history.step)
    for pair in range(acceptance.shape[1]):
        ax.plot(steps, acceptance[:, pair], label=f"{pair}-{pair + 1}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel(f"acceptance (last {window} rounds)")
    ax.set_title("acceptance per rung pair")
    if acceptance.shape[1]:
        ax.legend(fontsize="x-small", ncol=2, title="rungs", title_fontsize="x-small")
    return ax


def plot_rung_occupancy(
    history: History, ax: Axes | None = None, *, colorbar: bool = True
) -> Axes:
    """Draws :func:`rung_occupancy` as a heatmap (replica by rung).

    Args:
        history: the history of :func:`tempering.pt_train`.
        ax: the Axes to draw on; a new figure's by default.
        colorbar: add a colour bar (inset on the right of ``ax``).

    Returns:
        The Axes.
    """
    check_history(history, "plot_rung_occupancy")
    occupancy = rung_occupancy(history)  # shape=(M, M)
    ax = _axes(ax)
    image = ax.imshow(occupancy, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    num_replicas = occupancy.shape[0]
    ticks = np.arange(num_replicas) if num_replicas <= 16 else None
    if ticks is not None:
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
    ax.set_xlabel("rung (0 = coldest)")
    ax.set_ylabel("replica")
    ax.set_title("rung occupancy (fraction of rounds)")
    if colorbar:
        cax = ax.inset_axes((1.02, 0.0, 0.04, 1.0))
        ax.figure.colorbar(image, cax=cax)
    return ax


def _replica_style(replica: int, highlight: int | None) -> dict[str, Any]:
    """Line style of one replica: the highlighted one thick, the others faded."""
    if highlight is None:
        return {}
    return {"lw": 2.5, "zorder": 3} if replica == highlight else {"alpha": 0.35}


def plot_rung_paths(
    history: History, ax: Axes | None = None, *, highlight: int | None = None
) -> Axes:
    """Plots the rung of every replica against the step (after every exchange).

    Args:
        history: the history of :func:`tempering.pt_train`.
        ax: the Axes to draw on; a new figure's by default.
        highlight: a replica to draw thicker (the others fade).

    Returns:
        The Axes.
    """
    check_history(history, "plot_rung_paths")
    rungs = rung_history(history)  # shape=(R, M)
    trips = int(round_trips(history).sum())
    ax = _axes(ax)
    steps = np.asarray(history.step)
    num_replicas = rungs.shape[1]
    for m in range(num_replicas):
        style = _replica_style(m, highlight)
        ax.step(steps, rungs[:, m], where="post", label=f"{m}", **style)
    ax.set_ylim(-0.5, max(num_replicas - 0.5, 0.5))
    if num_replicas <= 16:
        ax.set_yticks(np.arange(num_replicas))
    ax.set_xlabel("step")
    ax.set_ylabel("rung (0 = coldest)")
    ax.set_title(f"rung paths ({trips} round trips)")
    return ax


def plot_schedule(
    history: History, replica: int, name: str, ax: Axes | None = None
) -> Axes:
    """Plots :func:`replica_schedule`: one replica's values of one hyperparameter.

    Args:
        history: the history of :func:`tempering.pt_train`.
        replica: index of the replica.
        name: the hyperparameter.
        ax: the Axes to draw on; a new figure's by default.

    Returns:
        The Axes (log y axis when the values are positive and span over 10x).

    Raises:
        ValueError: a ``replica`` out of range, or a ``name`` the history
            does not hold.
    """
    check_history(history, "plot_schedule")
    steps, values = replica_schedule(history, replica, name)
    ax = _axes(ax)
    ax.step(steps, values, where="post", marker=".")
    _log_scale_if_wide(ax, values)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.set_title(f"{name} of replica {replica}")
    return ax


def plot_c(history: History, ax: Axes | None = None) -> Axes:
    """Plots :func:`c_over_time`, the Metropolis constant C of every round.

    Args:
        history: the history of :func:`tempering.pt_train`.
        ax: the Axes to draw on; a new figure's by default.

    Returns:
        The Axes (log y axis when C spans over 10x); a line per ladder for a
        ``multi_exchange_move`` history.
    """
    check_history(history, "plot_c")
    steps, c = c_over_time(history)  # shape=(R,) or (R, K)
    ax = _axes(ax)
    if c.ndim == 2:
        for k in range(c.shape[1]):
            ax.plot(steps, c[:, k], marker=".", label=f"ladder {k}")
        ax.legend(fontsize="x-small")
    else:
        ax.plot(steps, c, marker=".")
    _log_scale_if_wide(ax, c)
    ax.set_xlabel("step")
    ax.set_ylabel("C")
    ax.set_title("Metropolis constant C")
    return ax


def plot_barrier(
    history: History, ax: Axes | None = None, *, scheme: str | None = None
) -> Axes:
    """Draws :func:`~tempering.diagnostics.barrier`: the barrier along the ladder.

    A bar per adjacent pair at its middle, its local barrier (rejection rate),
    and the profile, the cumulative barrier from the coldest rung, as a line;
    the title gives the global barrier Λ̂, the rungs it suggests, and the
    measured round trips per round against the theory's bound for Λ̂.

    Args:
        history: the history of :func:`tempering.pt_train`.
        ax: the Axes to draw on; a new figure's by default.
        scheme: the exchange's scheme (:func:`~tempering.diagnostics.barrier`);
            None: the history's (``History.scheme``).

    Returns:
        The Axes.

    Raises:
        ValueError: for a history without swaps or rungs (PBT, the identity
            move).
    """
    check_history(history, "plot_barrier")
    result = barrier(history, scheme)
    ax = _axes(ax)
    num_rungs = result.profile.shape[0]
    pairs = np.arange(num_rungs - 1) + 0.5
    unmeasured = np.isnan(result.local)  # shape=(M - 1,)
    ax.bar(pairs, np.where(unmeasured, 0.0, result.local), width=0.6, alpha=0.45,
           label="local barrier (rejection rate)")  # fmt: skip
    _mark_unmeasured(ax, pairs, unmeasured)
    ax.plot(np.arange(num_rungs), result.profile, marker="o", color="black",
            label="profile (cumulative)")  # fmt: skip
    if num_rungs <= 16:
        ax.set_xticks(np.arange(num_rungs))
    ax.set_xlabel("rung (0 = coldest)")
    ax.set_ylabel("barrier")
    ax.legend(fontsize="x-small", loc="upper left")
    if not unmeasured.shape[0]:
        ax.set_title("communication barrier (one rung: no pairs)")
    elif result.suggested_rungs is None:
        ax.set_title(
            "communication barrier: no swap proposed between finite replicas "
            f"for pair {_pair_names(unmeasured)} (n/a)"
        )
    else:
        ax.set_title(
            rf"barrier $\hat\Lambda$ = {result.global_barrier:.2f} "
            f"(suggests {result.suggested_rungs} rungs)\n"
            f"round trips per round {result.round_trip_rate:.3f}, "
            f"bound {result.round_trip_bound:.3f}"
        )
    return ax


def plot_val_loss(
    history: History, ax: Axes | None = None, *, highlight: int | None = None
) -> Axes:
    """Plots the validation loss of every replica against the step.

    Args:
        history: the history of :func:`tempering.pt_train`.
        ax: the Axes to draw on; a new figure's by default.
        highlight: a replica to draw thicker (the others fade).

    Returns:
        The Axes.
    """
    check_history(history, "plot_val_loss")
    ax = _axes(ax)
    ax.set_title("validation loss per replica")
    if history.validation is None:
        ax.text(0.5, 0.5, "no validation data", ha="center", va="center")
        ax.set_axis_off()
        return ax
    val_loss = np.asarray(history.val_loss)  # shape=(R, M)
    steps = np.asarray(history.step)
    for m in range(val_loss.shape[1]):
        style = _replica_style(m, highlight)
        ax.plot(steps, val_loss[:, m], label=f"{m}", **style)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    return ax


def plot_diagnostics(
    history: History,
    replica: int | None = None,
    name: str | None = None,
    *,
    window: int = 10,
) -> Figure:
    """A dashboard of a parallel tempering run: a 2 x 3 grid and a column.

    Top row: :func:`plot_acceptance`, :func:`plot_rung_occupancy`,
    :func:`plot_rung_paths`; bottom row: :func:`plot_val_loss`,
    :func:`plot_schedule` of ``replica``, :func:`plot_c`; on the right, over
    both rows, :func:`plot_barrier`.

    Args:
        history: the history of :func:`tempering.pt_train`.
        replica: the replica whose schedule is drawn (and highlighted); default
            the one with the lowest final validation loss.
        name: the hyperparameter of the schedule; default the first one in
            ``history.hyperparams`` whose values vary.
        window: rounds of the acceptance window.

    Returns:
        The matplotlib Figure (7 Axes: the grid's row by row, then the
        barrier's).

    Raises:
        ValueError: a history without swaps or rungs (PBT, a replay), a
            ``replica`` out of range, or ``window`` < 1.
    """
    check_history(history, "plot_diagnostics")
    plt = _pyplot()
    if replica is None:
        replica = _default_replica(history)
    if name is None:
        name = _default_name(history)
    fig = plt.figure(figsize=(21, 8.5), layout="constrained")
    try:
        grid = fig.add_gridspec(2, 4)
        axes = np.array([[fig.add_subplot(grid[row, col]) for col in range(3)]
                         for row in range(2)])  # fmt: skip
        barrier_ax = fig.add_subplot(grid[:, 3])
        plot_acceptance(history, axes[0, 0], window=window)
        plot_rung_occupancy(history, axes[0, 1])
        plot_rung_paths(history, axes[0, 2], highlight=replica)
        plot_val_loss(history, axes[1, 0], highlight=replica)
        if name is None:
            axes[1, 1].text(0.5, 0.5, "no hyperparameters", ha="center", va="center")
            axes[1, 1].set_axis_off()
        else:
            plot_schedule(history, replica, name, axes[1, 1])
        plot_c(history, axes[1, 2])
        plot_barrier(history, barrier_ax)
    except BaseException:  # a refused history leaves no half-drawn figure open
        plt.close(fig)
        raise
    return fig


# figures of arrays (results of one run or averaged over several)
# --------------------------------------------------------------------------


def plot_replica_paths(
    rungs: Any,
    initial_rungs: Any,
    best_replica: int | None = None,
    steps: Any = None,
    ax: Axes | None = None,
    *,
    rung_labels: Sequence[str] | None = None,
    title: str | None = "replica paths",
) -> Axes:
    """Draws the rung of every replica from its start (paper Fig. 2, right).

    Args:
        rungs: ``(R, M)`` rung of replica m after exchange round r
            (``History.rungs``).
        initial_rungs: ``(M,)`` rungs before the first round
            (``History.initial_rungs``).
        best_replica: the replica drawn thick, black and on top
            (``PTSummary.best_replica``), or None.
        steps: optional ``(R,)`` x positions of the rounds (``History.step``);
            round indices when None. The initial rungs are drawn one interval
            before the first round (at step 0 when there is one round: no
            interval to read).
        ax: the Axes to draw on; a new figure's by default.
        rung_labels: optional tick labels of the rungs (e.g. the ladder values).
        title: the Axes' title, or None.

    Returns:
        The Axes.

    Raises:
        ValueError: ``rungs`` not ``(R, M)`` for the ``M`` of ``initial_rungs``,
            ``steps`` not ``(R,)``, ``best_replica`` not a replica, or
            ``rung_labels`` not one per rung.
    """
    initial_rungs = _as_shaped("initial_rungs", initial_rungs, (None,))
    num_replicas = initial_rungs.shape[0]
    rows = _as_shaped(
        "rungs",
        rungs,
        (None, num_replicas),
        why=(" (rounds x replicas, as many replicas as initial_rungs has)"),
    )
    if best_replica is not None and not 0 <= int(best_replica) < num_replicas:
        raise ValueError(
            f"best_replica must be a replica index in [0, {num_replicas}), got "
            f"{best_replica!r}"
        )
    if steps is not None:
        steps = _as_shaped("steps", steps, (rows.shape[0],), np.float64,
                           why=" (one per round of rungs)")  # fmt: skip
    _check_labels("rung_labels", rung_labels, num_replicas, "rung")
    ax = _axes(ax)
    path = np.concatenate([initial_rungs[None], rows])
    if steps is None:
        x = np.arange(path.shape[0])
    else:
        first = steps[0] - (steps[1] - steps[0]) if steps.size >= 2 else 0.0
        x = np.concatenate([[first], steps])
    for m in range(num_replicas):
        if best_replica is None or m != int(best_replica):
            ax.step(x, path[:, m], where="post", lw=0.9, alpha=0.55)
    if best_replica is not None:
        best = int(best_replica)
        ax.step(x, path[:, best], where="post", lw=2.6, color="black",
                label=f"best replica ({best})", zorder=5)  # fmt: skip
        ax.legend(loc="upper right", fontsize="small")
    ax.set_yticks(range(num_replicas))
    if rung_labels is not None:
        ax.set_yticklabels(list(rung_labels))
    ax.set_ylabel("rung (0 = coldest)")
    ax.set_xlabel("SGD step" if steps is not None else "exchange round")
    if title:
        ax.set_title(title)
    return ax


def plot_error_curves(
    steps: Any,
    errors_by_label: Mapping[str, Any],
    ax: Axes | None = None,
    *,
    std_by_label: Mapping[str, Any] | None = None,
    highlight: Sequence[str] = ("PT",),
    xlabel: str = "epoch",
    ylabel: str = "test error (%)",
    percent: bool = True,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Axes:
    """Draws one error curve per label (fixed rungs, the grid's best, PT, ...).

    Args:
        steps: ``(R,)`` x positions (steps or epochs).
        errors_by_label: label -> ``(R,)`` errors in [0, 1] (fractions); a
            shorter curve is drawn over the first steps.
        ax: the Axes to draw on; a new figure's by default.
        std_by_label: optional label -> ``(R,)`` standard deviations, drawn as
            a shaded band.
        highlight: labels drawn thick and on top, the first one in black.
        xlabel: the x axis label.
        ylabel: the y axis label.
        percent: multiply the errors by 100.
        title: the Axes' title, or None.
        ylim: optional y limits (after scaling).

    Returns:
        The Axes.

    Raises:
        ValueError: ``steps`` not one-dimensional, a curve with more points
            than ``steps`` or not one-dimensional, a ``std_by_label`` entry
            not the shape of its curve.
    """
    x = _as_shaped("steps", steps, (None,), np.float64)
    curves = {}
    for label, err in errors_by_label.items():
        err = _as_shaped(f"errors_by_label[{label!r}]", err, (None,), np.float64)
        if err.shape[0] > x.shape[0]:
            raise ValueError(
                f"errors_by_label[{label!r}] has {err.shape[0]} points but steps "
                f"only {x.shape[0]}: give one step per point (a shorter curve is "
                "drawn over the first steps)"
            )
        if std_by_label is not None and label in std_by_label:
            _as_shaped(f"std_by_label[{label!r}]", std_by_label[label], err.shape)
        curves[label] = err
    ax = _axes(ax)
    scale = 100.0 if percent else 1.0
    for label, err in curves.items():
        err = err * scale
        strong = label in highlight
        (line,) = ax.plot(
            x[: err.shape[0]], err, lw=2.4 if strong else 1.0,
            alpha=1.0 if strong else 0.7,
            color="black" if strong and label == highlight[0] else None,
            zorder=5 if strong else 2, label=label,
        )  # fmt: skip
        if std_by_label is not None and label in std_by_label:
            std = np.asarray(std_by_label[label], np.float64) * scale
            ax.fill_between(x[: err.shape[0]], err - std, err + std,
                            color=line.get_color(), alpha=0.15, lw=0)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize="x-small", ncol=2)
    if title:
        ax.set_title(title)
    return ax


def plot_acceptance_rate(
    acceptance_rate: Any,
    ax: Axes | None = None,
    *,
    std: Any = None,
    pair_labels: Sequence[str] | None = None,
    title: str | None = "acceptance rate per pair",
) -> Axes:
    """A bar per adjacent rung pair: its accepted / proposed exchanges.

    Unlike :func:`plot_acceptance` (over time, from a history), one number per
    pair: a run's ``PTSummary.acceptance_rate`` or a mean over seeds.

    Args:
        acceptance_rate: ``(M - 1,)`` rates (NaN where never proposed: no
            bar, marked "n/a").
        ax: the Axes to draw on; a new figure's by default.
        std: optional ``(M - 1,)`` error bars.
        pair_labels: optional tick labels; ``"r-r+1"`` by default.
        title: the Axes' title, or None.

    Returns:
        The Axes.

    Raises:
        ValueError: ``acceptance_rate`` not one-dimensional, ``std`` not its
            shape, or ``pair_labels`` not one per pair.
    """
    rate = _as_shaped("acceptance_rate", acceptance_rate, (None,), np.float64)
    if std is not None:
        std = _as_shaped("std", std, rate.shape, np.float64)
    _check_labels("pair_labels", pair_labels, rate.shape[0], "pair")
    ax = _axes(ax)
    pairs = np.arange(rate.shape[0])
    unmeasured = np.isnan(rate)
    ax.bar(pairs, np.where(unmeasured, 0.0, rate),
           yerr=None if std is None else np.nan_to_num(std), capsize=3)  # fmt: skip
    _mark_unmeasured(ax, pairs, unmeasured)
    ax.set_xticks(pairs)
    labels = pair_labels or [f"{r}-{r + 1}" for r in pairs]
    ax.set_xticklabels(list(labels), fontsize="small")
    ax.set_ylim(0, 1)
    ax.set_xlabel("rung pair")
    ax.set_ylabel("acceptance rate")
    if title:
        ax.set_title(title)
    return ax
