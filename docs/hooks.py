"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks:``).

- The notebook ``notebooks/quickstart.ipynb`` becomes the page
  ``notebooks/quickstart.md``, *executed* as the site builds, offline with its
  tiny configuration (``TEMPERING_NOTEBOOK_TINY=1``, under a minute on 2 CPU
  cores), by ``nbclient`` in a subprocess of ``$TEMPERING_DOCS_PYTHON`` (a
  Python with tempering installed, JAX and the ``notebook`` extra; default: the
  one running MkDocs), its kernel started in the notebook's folder as Jupyter
  starts it, with only the installed package on its path. A cell that fails
  fails the build.
  ``TEMPERING_DOCS_EXECUTE=0`` renders it as stored instead, for a quick
  local preview (the page says so).
- The figures under ``experiments/results/`` are served as ``results/*.png``,
  so the guides show the committed figures without copying them.
- Every name in ``tempering.__all__`` must have an entry on the API page
  ``api/tempering.md``, and every public submodule a page: a name added to the
  package without documentation fails the (strict) build.
- Sphinx roles in docstrings (``:func:`x```) are shown as plain code.
- Every results block (``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``)
  is filled from ``experiments/results/NAME.md`` as the page is rendered, by
  ``experiments/update_readme.py`` (which also keeps the Markdown files
  current); a block without its file fails the build.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"notebooks/quickstart.md": ROOT / "notebooks" / "quickstart.ipynb"}
RESULTS = ROOT / "experiments" / "results"
PUBLIC_SUBMODULES = (
    "loops fast sources hyperparams diffusion data zoo.datasets zoo.models loggers "
    "sharding launch "
    "checkpoint divergence adaptation diagnostics multi frontends frontends.nnx "
    "frontends.equinox plots layers replay moves ladder fingerprints ensemble"
).split()


def _load_update_readme():
    """``experiments/update_readme.py``, loaded by path (no JAX import)."""
    path = ROOT / "experiments" / "update_readme.py"
    spec = importlib.util.spec_from_file_location("_tempering_update_readme", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UPDATE_README = _load_update_readme()

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj|py:\w+):(<code)")


# Run by $TEMPERING_DOCS_PYTHON: executes the notebook (argv[1]) in its own
# folder (argv[2]) and prints it, outputs included, as JSON.
EXECUTE = """
import sys
import nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[2]}}).execute()
sys.stdout.write(nbformat.writes(nb))
"""


def execute_notebook(path: Path) -> dict:
    """The notebook executed offline with its tiny configuration.

    Raises:
        PluginError: a cell failed (its error is shown), or the Python given
            by ``TEMPERING_DOCS_PYTHON`` lacks nbclient, ipykernel or tempering.
    """
    python = os.environ.get("TEMPERING_DOCS_PYTHON") or sys.executable
    # the inline backend (ipykernel's), so that figures become image outputs
    inline = "module://matplotlib_inline.backend_inline"
    env = dict(os.environ, TEMPERING_NOTEBOOK_TINY="1", MPLBACKEND=inline)
    env.pop("PYTHONPATH", None)  # as a user runs it: the installed package
    done = subprocess.run(
        [python, "-c", EXECUTE, str(path), str(path.parent)],
        capture_output=True,
        text=True,
        env=env,
        cwd=path.parent,
    )
    if done.returncode:
        raise PluginError(
            f"executing {path.relative_to(ROOT)} with {python} failed "
            f"(TEMPERING_DOCS_EXECUTE=0 renders it unexecuted):\n" + done.stderr[-3000:]
        )
    return json.loads(done.stdout)


def notebook_markdown(path: Path, execute: bool = True) -> str:
    """The notebook as a Markdown page: its text cells, code cells and outputs.

    Args:
        path: the ``.ipynb`` file (stored without outputs).
        execute: execute it first (tiny configuration); else render as stored.
    """
    rel = path.relative_to(ROOT).as_posix()
    if execute:
        notebook = execute_notebook(path)
        note = (
            f'!!! note "`{rel}`, executed as this site was built"\n'
            "    With its tiny configuration (`TEMPERING_NOTEBOOK_TINY=1`: a few\n"
            "    seconds of training on a CPU), so the numbers below show that it\n"
            "    runs, not what PT achieves. Open it in Jupyter or Colab for the\n"
            "    full configuration (a few minutes on a CPU).\n"
        )
    else:
        notebook = json.loads(path.read_text())
        note = (
            f'!!! note "`{rel}`, shown as stored (not executed in this build)"\n'
            "    Open it in Jupyter or Colab to run it (a few minutes on a CPU).\n"
        )
    parts = [note]
    for cell in notebook["cells"]:
        source = "".join(cell["source"]).rstrip()
        if cell["cell_type"] == "markdown":
            parts.append(source + "\n")
        elif cell["cell_type"] == "code":
            parts.append("```python\n" + source + "\n```\n")
            for output in _coalesced(cell.get("outputs", [])):
                text = output.get("text") or output.get("data", {}).get("text/plain")
                if output.get("data", {}).get("image/png"):
                    image = output["data"]["image/png"].replace("\n", "")
                    parts.append(f"![output](data:image/png;base64,{image})\n")
                elif text and _as_shown(text):
                    parts.append("```text\n" + _as_shown(text) + "\n```\n")
    return "\n".join(parts)


def _coalesced(outputs: list[dict]) -> list[dict]:
    """Consecutive outputs of one stream (stdout, stderr) joined, as Jupyter shows."""
    joined: list[dict] = []
    for output in outputs:
        previous = joined[-1] if joined else {}
        if output.get("output_type") == "stream" and (
            previous.get("output_type") == "stream"
            and previous.get("name") == output.get("name")
        ):
            previous["text"] = "".join(previous["text"]) + "".join(output["text"])
        else:
            joined.append(dict(output))
    return joined


def _as_shown(text: str | list[str]) -> str:
    """An output's text as a terminal shows it.

    A line rewritten after carriage returns (a progress bar's updates) shows
    its last version.
    """
    lines = "".join(text).split("\n")
    shown = (line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in lines)
    return "\n".join(shown).strip("\n")


def public_names() -> list[str]:
    """``tempering.__all__``, read from the source without importing JAX."""
    tree = ast.parse((ROOT / "tempering" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(target, "id", None) == "__all__" for target in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise PluginError("tempering/__init__.py has no __all__")


def check_api_coverage(docs_dir: Path) -> None:
    """Every public name and submodule has its entry in the API reference."""
    page = (docs_dir / "api" / "tempering.md").read_text()
    missing = [
        name
        for name in public_names()
        if name not in PUBLIC_SUBMODULES
        and not re.search(rf"^::: tempering\.(\w+\.)?{name}$", page, re.M)
    ]
    for module in PUBLIC_SUBMODULES:
        path = docs_dir / "api" / f"{module}.md"
        if not path.exists() or f"::: tempering.{module}\n" not in path.read_text():
            missing.append(f"tempering.{module} (page api/{module}.md)")
    if missing:
        raise PluginError(
            "public names without an API reference entry: " + ", ".join(missing)
        )


def on_files(files: Files, config) -> Files:
    """Adds the notebook pages and the result figures; checks API coverage."""
    check_api_coverage(Path(config["docs_dir"]))
    execute = os.environ.get("TEMPERING_DOCS_EXECUTE", "1") != "0"
    for src_uri, path in NOTEBOOKS.items():
        content = notebook_markdown(path, execute=execute)
        files.append(File.generated(config, src_uri, content=content))
    for figure in sorted(RESULTS.glob("*.png")):
        files.append(
            File.generated(config, f"results/{figure.name}", abs_src_path=str(figure))
        )
    return files


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    """Fills the results blocks from the committed records."""
    markdown, missing = UPDATE_README.update(markdown, RESULTS)
    if missing:
        raise PluginError(
            f"{page.file.src_uri}: no experiments/results/<name>.md for the "
            "results block(s) " + ", ".join(missing)
        )
    return markdown


def on_page_content(html: str, **kwargs) -> str:
    """Sphinx roles left in docstrings (``:func:`x```) render as plain code."""
    return ROLE.sub(r"\1", html)
