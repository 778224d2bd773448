"""The documentation agrees with the code and the records it describes.

Fast checks (no training): API pages for the public submodules, docstring
argument names against signatures, the ``run_config`` arguments against
:class:`tempering.RunConfig`, and prose against the committed records.
"""

import ast
import dataclasses
import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import pytest

import tempering
from tempering import loops, sources
from tempering.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def public_submodules() -> list[str]:
    """``PUBLIC_SUBMODULES`` of ``docs/hooks.py``, read without importing MkDocs."""
    tree = ast.parse((DOCS / "hooks.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(target, "id", None) == "PUBLIC_SUBMODULES"
            for target in node.targets
        ):
            # ("a b " "c").split(): a Call on a constant string
            return ast.literal_eval(node.value.func.value).split()
    raise AssertionError("docs/hooks.py has no PUBLIC_SUBMODULES")


def test_every_public_submodule_has_an_api_page_in_the_nav():
    modules = public_submodules()
    nav = (ROOT / "mkdocs.yml").read_text()
    overview = (DOCS / "api" / "index.md").read_text()
    for module in modules:
        importlib.import_module(f"tempering.{module}")
        page = DOCS / "api" / f"{module}.md"
        assert page.exists(), f"no docs/api/{module}.md"
        assert f"::: tempering.{module}\n" in page.read_text(), page
        assert f"api/{module}.md" in nav, f"api/{module}.md is not in mkdocs.yml's nav"
        assert f"]({module}.md)" in overview, (
            f"docs/api/index.md does not link {module}"
        )
    # every page of the API reference is a public submodule's (or the top level's)
    pages = {p.stem for p in (DOCS / "api").glob("*.md")} - {"index", "tempering"}
    assert pages == set(modules)


def test_the_modules_users_are_told_to_call_have_pages():
    # tp.layers.dropout, tempering.replay's types, tempering.moves.rungs_of,
    # tempering.ladder.assign_rungs: named in the guides
    assert {"layers", "replay", "moves", "ladder"} <= set(public_submodules())


ARGS = re.compile(r"^(Args|Arguments|Parameters):[ \t]*$", re.M)


def documented_args(doc: str | None) -> list[str]:
    """The names a Google-style docstring's ``Args:`` section documents."""
    doc = inspect.cleandoc(doc or "")
    match = ARGS.search(doc)
    if not match:
        return []
    names, indent = [], None
    for line in doc[match.end() :].split("\n")[1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:  # the next section
            break
        indent = depth if indent is None else indent
        entry = re.match(r"\s*\*{0,2}(\w+)( \(.*\))?:", line)
        if depth == indent and entry:
            names.append(entry.group(1))
    return names


def documented_callables():
    """``(qualified name, object)`` of every public function, class and method."""
    for info in pkgutil.walk_packages(tempering.__path__, "tempering."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (equinox, ...)
            continue
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != info.name:
                continue
            yield f"{info.name}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if inspect.isfunction(member) and not attr.startswith("_"):
                        yield f"{info.name}.{name}.{attr}", member


def test_docstring_arguments_are_the_signatures():
    # griffe (the docs build, strict) fails on an argument the signature lacks
    wrong = {}
    for name, obj in documented_callables():
        if not callable(obj):
            continue
        try:
            parameters = set(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            continue
        extra = set(documented_args(obj.__doc__)) - parameters
        if extra:
            wrong[name] = sorted(extra)
    assert not wrong, f"documented arguments not in the signature: {wrong}"


def test_functions_documents_its_fields():
    from tempering.frontends.functions import Functions

    fields = [field.name for field in dataclasses.fields(Functions)]
    assert documented_args(Functions.__doc__) == fields
    assert fields == ["init_fn", "apply_fn", "train_kwarg"]


def run_config_doc(function) -> str:
    """The text of ``function``'s ``run_config`` argument."""
    doc = inspect.cleandoc(function.__doc__)
    text = doc.split("\n    run_config:", 1)[1]
    return re.split(r"\n\n|\n    \w+:|\n\S", text, maxsplit=1)[0]


@pytest.mark.parametrize(
    "function, interval",
    [
        (tempering.pt_train, "exchange_interval"),
        (tempering.pbt_train, "ready_interval"),
    ],
)
def test_run_config_docs_name_the_config_fields_and_the_other_keywords(
    function, interval
):
    text = run_config_doc(function)
    named = set(re.findall(r"``(\w+)``", text))
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    assert fields <= named, f"RunConfig fields not named: {fields - named}"
    assert interval in named
    # every keyword that is not a RunConfig field is said to stay a keyword
    keywords = {
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    others = keywords - fields - {interval, "run_config"}
    assert others <= named, f"keywords not named: {others - named}"
    assert "stay keyword" in text or "stays a keyword" in text


def test_no_record_or_page_names_a_models_module_that_does_not_exist():
    # tempering.zoo.models is the module (tempering.models was renamed)
    stale = re.compile(r"tempering\.models\.\w")
    paths = [ROOT / "experiments" / "zoo.py", ROOT / "README.md"]
    paths += sorted((ROOT / "experiments" / "results").glob("*.md"))
    paths += sorted((ROOT / "experiments" / "results").glob("*.json"))
    paths += sorted(DOCS.rglob("*.md"))
    found = [str(p.relative_to(ROOT)) for p in paths if stale.search(p.read_text())]
    assert not found, found


def test_the_reliability_guide_reports_no_failure_the_record_lacks():
    record = json.loads((ROOT / "experiments/results/reliability.json").read_text())
    guide = (DOCS / "guides" / "reliability.md").read_text()
    prose = re.sub(
        r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", "", guide, flags=re.S
    )
    if record["failed"] == 0:
        assert not re.search(r"fails? at the recorded commit", prose)


def test_the_sources_docstring_states_the_stream_chunk():
    assert "STREAM_CHUNK" in sources.__doc__
    assert f"({loops.STREAM_CHUNK})" in sources.__doc__


def test_the_diffusion_docstring_reports_the_measured_l2_verdict():
    # the paper's claim is presented as the paper's; the record says no plateau
    table = (ROOT / "experiments/results/fig1_l2.md").read_text()
    rows = [line for line in table.splitlines() if re.match(r"\| [\d.]+ \|", line)]
    assert rows and all(line.rstrip(" |").endswith("no") for line in rows)
    doc = " ".join(importlib.import_module("tempering.diffusion").__doc__.split())
    assert "The paper claims" in doc and "finds no plateau" in doc


def test_every_committed_record_names_a_clean_commit_of_this_repository():
    """A record written from a tree with changes (an untracked module included)
    names a commit that does not hold the code which produced it."""
    import json
    import subprocess

    from experiments.common import RECORDS_DIR, is_clean_commit

    def commits(tree):
        if isinstance(tree, dict):
            for key, value in tree.items():
                if key == "git_commit":
                    yield value
                else:
                    yield from commits(value)
        elif isinstance(tree, list):
            for item in tree:
                yield from commits(item)

    named = {
        commit: path.relative_to(RECORDS_DIR)
        for path in sorted(RECORDS_DIR.rglob("*.json"))
        for commit in commits(json.loads(path.read_text()))
    }
    assert named, "no record names a commit"
    unclean = {str(path): c for c, path in named.items() if not is_clean_commit(c)}
    assert not unclean
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], capture_output=True,
        text=True, cwd=RECORDS_DIR,
    )  # fmt: skip
    if shallow.returncode != 0 or shallow.stdout.strip() != "false":
        return  # no git, or a clone without the history: nothing to look up
    known = subprocess.run(
        ["git", "cat-file", "--batch-check"], input="\n".join(named) + "\n",
        capture_output=True, text=True, cwd=RECORDS_DIR,
    )  # fmt: skip
    if known.returncode == 0:
        missing = [line for line in known.stdout.splitlines() if "missing" in line]
        assert not missing
