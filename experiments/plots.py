"""Figures shared by the experiment scripts.

Every function draws onto a matplotlib ``Axes`` it is given (the first
argument) and returns it, so callers compose their own figures
(``fig, axes = plt.subplots(1, 3)``). The figures of a run ship with the
package, in :mod:`tempering.plots` (where ``ax`` comes after the data and
is optional): the notebook imports them from there, and the three below are
those, with the experiments' argument order.

- :func:`plot_replica_paths`: paper Fig. 2 (right), rung of every replica
  against time, the best replica highlighted
  (:func:`tempering.plots.plot_replica_paths`).
- :func:`plot_error_curves`: test (or validation) error against steps or
  epochs, one curve (optionally mean ± std band) per label
  (:func:`tempering.plots.plot_error_curves`).
- :func:`plot_acceptance`: acceptance rate of every adjacent rung pair
  (:func:`tempering.plots.plot_acceptance_rate`).
- :func:`plot_diffusion`: ||W(t) - W(t0)|| against time per hyperparameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tempering import plots

__all__ = [
    "plot_acceptance",
    "plot_diffusion",
    "plot_error_curves",
    "plot_replica_paths",
]


def plot_replica_paths(ax, rungs, initial_rungs, best_replica, steps=None, **kwargs):
    """:func:`tempering.plots.plot_replica_paths` on ``ax``."""
    return plots.plot_replica_paths(
        rungs, initial_rungs, best_replica, steps, ax, **kwargs
    )


def plot_error_curves(ax, steps, errors_by_label, **kwargs):
    """:func:`tempering.plots.plot_error_curves` on ``ax``."""
    return plots.plot_error_curves(steps, errors_by_label, ax, **kwargs)


def plot_acceptance(ax, acceptance_rate, **kwargs):
    """:func:`tempering.plots.plot_acceptance_rate` on ``ax``."""
    return plots.plot_acceptance_rate(acceptance_rate, ax, **kwargs)


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
