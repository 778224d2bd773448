"""Inlines generated result tables into README.md and the documentation pages.

Each block ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` in
``README.md`` or in a page under ``docs/`` (``docs/**/*.md``) is replaced by
the contents of ``experiments/results/NAME.md``, a table that an experiment
script generated from its JSON result file. Run after refreshing a committed
record:

    python -m experiments.update_readme          # rewrites the pages in place
    python -m experiments.update_readme --check  # writes nothing; exit 1 if stale

Running it twice changes nothing the second time. The documentation build
fills the same blocks as it renders (``docs/hooks.py``), so the site always
shows the records; this script keeps the Markdown files themselves current,
which is what GitHub and a reader of the clone see.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# The same folders as experiments.common.REPO_ROOT / RECORDS_DIR (tested), not
# imported from there: the documentation build loads this module, and
# experiments.common imports JAX.
REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDS_DIR = REPO_ROOT / "experiments" / "results"

BLOCK = re.compile(r"(<!-- results:([\w.-]+) -->\n).*?(<!-- /results:\2 -->)", re.S)


def update(text: str, records_dir: Path = RECORDS_DIR) -> tuple[str, list[str]]:
    """Returns the text with every block refreshed, and the names with no table."""
    missing = []

    def fill(match: re.Match) -> str:
        name = match.group(2)
        table = records_dir / f"{name}.md"
        if not table.exists():
            missing.append(name)
            return match.group(0)
        return match.group(1) + table.read_text().rstrip() + "\n" + match.group(3)

    return BLOCK.sub(fill, text), missing


def pages(root: Path = REPO_ROOT) -> list[Path]:
    """The files whose blocks are filled: README.md and every docs/**/*.md."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Inline experiments/results/NAME.md into README.md and docs/**/*.md."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a page is not up to date with its records",
    )
    args = parser.parse_args(argv)
    status = 0
    for page in pages():
        old = page.read_text()
        new, missing = update(old)
        rel = page.relative_to(REPO_ROOT).as_posix()
        for name in missing:
            print(
                f"{rel}: no table experiments/results/{name}.md for block {name!r}",
                file=sys.stderr,
            )
            status = 1
        if new != old:
            if args.check:
                print(f"{rel}: out of date with experiments/results/", file=sys.stderr)
                status = 1
            else:
                page.write_text(new)
                print(f"updated {rel}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
