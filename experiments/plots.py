"""Figures shared by the experiment scripts and the notebook.

Every function draws onto a matplotlib ``Axes`` it is given and returns it, so
callers compose their own figures (``fig, axes = plt.subplots(1, 3)``) and the
library itself never imports matplotlib. Signatures here are stable: the
notebook and ``experiments/quickstart.py`` import them.

- :func:`plot_replica_paths`: paper Fig. 2 (right), rung of every replica
  against time, the best replica highlighted.
- :func:`plot_error_curves`: test (or validation) error against steps or
  epochs, one curve (optionally mean ± std band) per label.
- :func:`plot_acceptance`: acceptance rate of every adjacent rung pair.
- :func:`plot_diffusion`: ||W(t) - W(t0)|| against time per hyperparameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "plot_acceptance",
    "plot_diffusion",
    "plot_error_curves",
    "plot_replica_paths",
]


def plot_replica_paths(
    ax,
    rungs,
    initial_rungs,
    best_replica: int | None,
    steps=None,
    *,
    rung_labels: Sequence[str] | None = None,
    title: str | None = "replica paths",
):
    """Draws the rung of every replica against time (paper Fig. 2, right).

    Args:
        ax: a matplotlib ``Axes``.
        rungs: ``(R, M)`` rung of replica m after exchange round r
            (``History.rungs``).
        initial_rungs: ``(M,)`` rungs before the first round
            (``History.initial_rungs``).
        best_replica: replica drawn thick and on top (``PTSummary.best_replica``),
            or None.
        steps: optional ``(R,)`` x positions of the rounds (``History.step``);
            round indices when None. The initial rungs are drawn one interval
            before the first round.
        rung_labels: optional tick labels for the rungs (e.g. the ladder values).
        title: axes title, or None.

    Returns:
        The axes.
    """
    rungs = np.asarray(rungs)
    initial_rungs = np.asarray(initial_rungs)
    num_replicas = initial_rungs.shape[0]
    path = np.concatenate([initial_rungs[None], rungs.reshape(-1, num_replicas)])
    if steps is None:
        x = np.arange(path.shape[0])
    else:
        steps = np.asarray(steps, np.float64)
        if steps.size >= 2:
            first = steps[0] - (steps[1] - steps[0])
        elif steps.size == 1:
            first = 0.0
        else:
            first = 0.0
        x = np.concatenate([[first], steps])
    for m in range(num_replicas):
        if best_replica is not None and m == int(best_replica):
            continue
        ax.step(x, path[:, m], where="post", lw=0.9, alpha=0.55)
    if best_replica is not None:
        ax.step(
            x,
            path[:, int(best_replica)],
            where="post",
            lw=2.6,
            color="black",
            label=f"best replica ({int(best_replica)})",
            zorder=5,
        )
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
    ax,
    steps,
    errors_by_label: Mapping[str, np.ndarray],
    *,
    std_by_label: Mapping[str, np.ndarray] | None = None,
    highlight: Sequence[str] = ("PT",),
    xlabel: str = "epoch",
    ylabel: str = "test error (%)",
    percent: bool = True,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
):
    """Draws one error curve per label (fixed replicas, PT, ...).

    Args:
        ax: a matplotlib ``Axes``.
        steps: ``(R,)`` x positions (steps or epochs).
        errors_by_label: label -> ``(R,)`` error in [0, 1] (fractions).
        std_by_label: optional label -> ``(R,)`` standard deviation, drawn as a
            shaded band.
        highlight: labels drawn thick and on top; the first one in black.
        xlabel: x axis label.
        ylabel: y axis label.
        percent: multiply errors by 100.
        title: axes title, or None.
        ylim: optional y limits (after scaling).

    Returns:
        The axes.
    """
    x = np.asarray(steps, np.float64)
    scale = 100.0 if percent else 1.0
    for label, err in errors_by_label.items():
        err = np.asarray(err, np.float64) * scale
        strong = label in highlight
        (line,) = ax.plot(
            x[: err.shape[0]],
            err,
            lw=2.4 if strong else 1.0,
            alpha=1.0 if strong else 0.7,
            color="black" if strong and label == highlight[0] else None,
            zorder=5 if strong else 2,
            label=label,
        )
        if std_by_label is not None and label in std_by_label:
            std = np.asarray(std_by_label[label], np.float64) * scale
            ax.fill_between(
                x[: err.shape[0]],
                err - std,
                err + std,
                color=line.get_color(),
                alpha=0.15,
                lw=0,
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize="x-small", ncol=2)
    if title:
        ax.set_title(title)
    return ax


def plot_acceptance(
    ax,
    acceptance_rate,
    *,
    std=None,
    pair_labels: Sequence[str] | None = None,
    title: str | None = "acceptance rate per pair",
):
    """Bar chart of the acceptance rate of every adjacent rung pair.

    Args:
        ax: a matplotlib ``Axes``.
        acceptance_rate: ``(M - 1,)`` accepted / proposed per pair (NaN where
            never proposed), e.g. ``PTSummary.acceptance_rate`` or a mean over
            seeds.
        std: optional ``(M - 1,)`` error bars.
        pair_labels: optional tick labels; ``"r-r+1"`` when None.
        title: axes title, or None.

    Returns:
        The axes.
    """
    rate = np.asarray(acceptance_rate, np.float64)
    pairs = np.arange(rate.shape[0])
    ax.bar(pairs, np.nan_to_num(rate), yerr=None if std is None else std, capsize=3)
    labels = pair_labels or [f"{r}-{r + 1}" for r in pairs]
    ax.set_xticks(pairs)
    ax.set_xticklabels(labels, fontsize="small")
    ax.set_ylim(0, 1)
    ax.set_xlabel("rung pair")
    ax.set_ylabel("acceptance rate")
    if title:
        ax.set_title(title)
    return ax


def plot_diffusion(
    ax,
    steps,
    distances,
    labels: Sequence[str],
    *,
    title: str | None = None,
    log: bool = True,
):
    """Draws ||W(t) - W(t0)|| against time, one curve per hyperparameter value.

    Args:
        ax: a matplotlib ``Axes``.
        steps: ``(T,)`` SGD steps since t0.
        distances: ``(T, M)`` distance of replica m (``DiffusionResult``).
        labels: M legend labels (the hyperparameter values).
        title: axes title, or None.
        log: log-log axes (diffusion is a power law in t).

    Returns:
        The axes.
    """
    x = np.asarray(steps, np.float64)
    d = np.asarray(distances, np.float64)
    colors = _ramp(d.shape[1])
    for m in range(d.shape[1]):
        ax.plot(x, d[:, m], color=colors[m], label=labels[m])
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("SGD steps t - t0")
    ax.set_ylabel(r"$\|W(t) - W(t_0)\|$")
    ax.legend(fontsize="x-small")
    if title:
        ax.set_title(title)
    return ax


def _ramp(n: int):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(n - 1, 1)) for i in range(n)]
