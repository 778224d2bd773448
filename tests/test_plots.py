"""tempering.plots: the figures of a run's diagnostics."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from test_diagnostics import (  # noqa: E402
    ACCEPTED,
    EVEN_ODD,
    LONG_WALK,
    WALK,
    WALK_INITIAL,
    make_history,
)

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
        assert isinstance(fig, Figure) and len(fig.axes) == 7
        assert "barrier" in fig.axes[6].get_title()
        fig = plots.plot_diagnostics(make_history(np.zeros((0, 3), int), [0, 1, 2]))
        assert len(fig.axes) == 7
        assert "no swap proposed" in fig.axes[6].get_title()
    finally:
        plt.close("all")


def test_plot_diagnostics_of_a_real_run(pt_run) -> None:
    ladder, result = pt_run
    history, summary = result.history, result.summary
    assert plots._default_replica(history) == summary.best_replica
    try:
        fig = plots.plot_diagnostics(history)
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 7
        assert f"replica {summary.best_replica}" in fig.axes[4].get_title()
        assert "learning_rate" in fig.axes[4].get_title()
    finally:
        plt.close("all")


def test_a_refused_plot_leaves_no_figure_open() -> None:
    """The PT plots made their Axes before their checks: each refused history
    left an empty figure behind (shown under the error in a notebook)."""
    pt = make_history(WALK, WALK_INITIAL)
    no_rungs = pt._replace(rungs=None, initial_rungs=None)  # a PBT-like history
    no_info = pt._replace(move=None)
    refused = [
        lambda: plots.plot_acceptance(pt, window=0),
        lambda: plots.plot_acceptance(no_info),
        lambda: plots.plot_rung_occupancy(no_rungs),
        lambda: plots.plot_rung_paths(no_rungs),
        lambda: plots.plot_c(no_info),
        lambda: plots.plot_diagnostics(pt, replica=7, name="learning_rate"),
        lambda: plots.plot_diagnostics(no_rungs, replica=0, name="learning_rate"),
    ]
    plt.close("all")
    try:
        for plot in refused:
            with pytest.raises(ValueError):
                plot()
            assert plt.get_fignums() == []
    finally:
        plt.close("all")


def test_plot_barrier() -> None:
    history = make_history(LONG_WALK, WALK_INITIAL, proposed=EVEN_ODD,
                           accepted=ACCEPTED)  # fmt: skip
    try:
        fig, ax = plt.subplots()
        assert plots.plot_barrier(history, ax) is ax
        (profile,) = ax.lines
        np.testing.assert_array_equal(profile.get_xdata(), [0, 1, 2, 3])
        np.testing.assert_allclose(profile.get_ydata(), [0.0, 0.5, 1.25, 2.25])
        heights = [bar.get_height() for bar in ax.patches]
        np.testing.assert_allclose(heights, [0.5, 0.75, 1.0])  # local barriers
        title = ax.get_title()
        assert "2.25" in title and "suggests 6 rungs" in title
        assert f"{3 / 8:.3f}" in title and f"{1 / 6.5:.3f}" in title
        ax = plots.plot_barrier(history, scheme="random_pair")
        assert f"{1 / (3 * 5.25):.3f}" in ax.get_title()
    finally:
        plt.close("all")


def test_plot_barrier_marks_a_pair_without_an_estimate() -> None:
    """A pair whose every proposal involved a diverged replica (no estimate,
    NaN) was drawn as a zero bar, a perfectly mixing pair, under the title "a
    pair was never proposed", which it was."""
    rounds = 4
    history = make_history(np.tile([0, 1, 2, 3], (rounds, 1)), [0, 1, 2, 3],
                           accepted=np.tile([True, True, False], (rounds, 1)))  # fmt: skip
    diverged = np.zeros((rounds, 4), bool)
    diverged[:, 3] = True
    history = history._replace(diverged=diverged)
    try:
        ax = plots.plot_barrier(history)
        assert [bar.get_height() for bar in ax.patches] == [0.0, 0.0, 0.0]
        marks = [(text.get_position()[0], text.get_text()) for text in ax.texts]
        assert marks == [(2.5, "n/a")]  # the pair 2-3, not the two that mix
        assert "pair 2-3" in ax.get_title() and "never proposed" not in ax.get_title()
        ax = plots.plot_acceptance_rate([0.5, np.nan, 0.0])
        assert [text.get_position()[0] for text in ax.texts] == [1]
    finally:
        plt.close("all")


@pytest.mark.parametrize(
    ("plot", "kwargs", "match"),
    [
        (plots.plot_replica_paths,  # 3 rungs were redrawn as 3 replicas of 5 points
         dict(rungs=np.zeros((3, 4), int), initial_rungs=np.arange(3)),
         r"rungs must have shape \(n, 3\)"),
        (plots.plot_replica_paths,
         dict(rungs=np.zeros((3, 4), int), initial_rungs=np.arange(4), best_replica=4),
         r"best_replica must be a replica index in \[0, 4\)"),
        (plots.plot_replica_paths,
         dict(rungs=np.zeros((3, 4), int), initial_rungs=np.arange(4), steps=[1, 2]),
         r"steps must have shape \(3,\)"),
        (plots.plot_replica_paths,
         dict(rungs=np.zeros((3, 4), int), initial_rungs=np.arange(4),
              rung_labels=["a"]),
         r"rung_labels must have one label per rung \(4\), got 1"),
        (plots.plot_error_curves,
         dict(steps=[1, 2], errors_by_label={"PT": [0.1, 0.2, 0.3]}),
         r"errors_by_label\['PT'\] has 3 points but steps only 2"),
        (plots.plot_error_curves,
         dict(steps=[1, 2], errors_by_label={"PT": [0.1, 0.2]},
              std_by_label={"PT": [0.1]}),
         r"std_by_label\['PT'\] must have shape \(2,\)"),
        (plots.plot_acceptance_rate,
         dict(acceptance_rate=[0.1, 0.2], pair_labels=["a"]),
         r"pair_labels must have one label per pair \(2\), got 1"),
        (plots.plot_acceptance_rate, dict(acceptance_rate=[0.1, 0.2], std=[0.1]),
         r"std must have shape \(2,\)"),
    ],
)  # fmt: skip
def test_the_array_plots_refuse_arrays_of_the_wrong_shape(plot, kwargs, match) -> None:
    """Each drew a wrong figure (the first) or failed inside numpy or matplotlib."""
    try:
        with pytest.raises(ValueError, match=match):
            plot(**kwargs)
    finally:
        plt.close("all")


def test_the_array_plots_draw_what_they_are_given() -> None:
    try:
        ax = plots.plot_replica_paths(np.array([[1, 0], [0, 1]]), [0, 1], best_replica=1,
                                      steps=[10, 20], rung_labels=["cold", "hot"])  # fmt: skip
        np.testing.assert_array_equal(ax.lines[-1].get_ydata(), [1, 0, 1])
        np.testing.assert_array_equal(ax.lines[-1].get_xdata(), [0, 10, 20])
        ax = plots.plot_error_curves([1, 2, 3], {"PT": [0.1, 0.2], "grid": [0.1] * 3})
        assert [len(line.get_xdata()) for line in ax.lines] == [2, 3]
    finally:
        plt.close("all")
