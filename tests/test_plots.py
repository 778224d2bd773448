"""tempering.plots: the figures of a run's diagnostics."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from test_diagnostics import WALK, WALK_INITIAL, make_history  # noqa: E402

from tempering import diagnostics as dg  # noqa: E402
from tempering import plots  # noqa: E402


def test_defaults_of_the_dashboard() -> None:
    val_loss = np.ones((6, 4))
    val_loss[-1] = [0.9, np.nan, 0.4, 0.5]
    history = make_history(WALK, WALK_INITIAL, val_loss=val_loss)
    assert plots._default_replica(history) == 2
    assert plots._default_name(history) == "learning_rate"  # dropout_rate is constant


def test_plots_on_synthetic_history() -> None:
    history = make_history(WALK, WALK_INITIAL, c=[5.0, 3.0, 0.2, 0.2, 0.2, 0.2])
    try:
        fig, ax = plt.subplots()
        assert plots.plot_acceptance(history, ax) is ax
        assert len(ax.lines) == 3
        ax = plots.plot_rung_occupancy(history)
        np.testing.assert_allclose(ax.images[0].get_array(), dg.rung_occupancy(history))
        ax = plots.plot_rung_paths(history, highlight=0)
        assert len(ax.lines) == 4 and "3 round trips" in ax.get_title()
        ax = plots.plot_schedule(history, 0, "learning_rate")
        assert ax.get_yscale() == "log"
        assert plots.plot_c(history).get_yscale() == "log"
        fig = plots.plot_diagnostics(history, replica=1, name="learning_rate")
        assert isinstance(fig, Figure) and len(fig.axes) == 6
        fig = plots.plot_diagnostics(make_history(np.zeros((0, 3), int), [0, 1, 2]))
        assert len(fig.axes) == 6
    finally:
        plt.close("all")


def test_plot_diagnostics_of_a_real_run(pt_run) -> None:
    ladder, result = pt_run
    history, summary = result.history, result.summary
    assert plots._default_replica(history) == summary.best_replica
    try:
        fig = plots.plot_diagnostics(history)
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 6
        assert f"replica {summary.best_replica}" in fig.axes[4].get_title()
        assert "learning_rate" in fig.axes[4].get_title()
    finally:
        plt.close("all")
