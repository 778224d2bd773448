"""The quick-start notebook: stored without outputs, and runs as a user runs it.

Executed by a kernel started in ``notebooks/`` (as Jupyter, VS Code and
``jupyter execute`` start it), with nothing of the repository on its path but
the installed package: no clone, no ``sys.path`` edit, no data files.
"""

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("mnist1d")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], "strip outputs before committing"
            assert cell.execution_count is None


def test_notebook_needs_no_clone_and_no_placeholder_url():
    text = NOTEBOOK.read_text()
    assert "<org>" not in text and "git clone" not in text
    code = "".join(
        cell.source
        for cell in nbformat.read(NOTEBOOK, as_version=4).cells
        if cell.cell_type == "code"
    )
    # the figures ship with the package (tempering.diagnostics)
    assert "import experiments" not in code and "from experiments" not in code
    assert "sys.path" not in code


def outputs(nb, name=None):
    """The text of every output (only the ``name`` stream's when given)."""
    return "".join(
        "".join(out.get("text", "")) + "".join(out.get("traceback", []))
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if name is None or out.get("name") == name
    )


def test_notebook_runs_from_its_folder_with_the_tiny_configuration(monkeypatch):
    monkeypatch.setenv("TEMPERING_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # As a user runs it: the installed package, not the repository on the path.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(ROOT / "notebooks")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()
    text = outputs(nb)
    assert "PT" in text and "acceptance rate per pair" in text
    assert "mnist1d" in text.lower()
    # progress bars are on in a kernel by default: tqdm's text bar (ipywidgets
    # is not installed), without tqdm.auto's "IProgress not found" warning
    if importlib.util.find_spec("ipywidgets") is None:
        assert "ExchangeMove" in outputs(nb, "stderr")
    assert "IProgress" not in text
