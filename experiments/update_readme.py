"""Inlines generated result tables into README.md.

Each block ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` in the README
is replaced by the contents of ``experiments/results/NAME.md``, a table that an
experiment script generated from its JSON result file. Run after experiments:

    python -m experiments.update_readme
"""

from __future__ import annotations

import re
import sys

from experiments.common import RECORDS_DIR, REPO_ROOT

BLOCK = re.compile(r"(<!-- results:([\w.-]+) -->\n).*?(<!-- /results:\2 -->)", re.S)


def update(text: str) -> tuple[str, list[str]]:
    """Returns the README text with every block refreshed, and missing names."""
    missing = []

    def fill(match: re.Match) -> str:
        name = match.group(2)
        table = RECORDS_DIR / f"{name}.md"
        if not table.exists():
            missing.append(name)
            return match.group(0)
        return match.group(1) + table.read_text().rstrip() + "\n" + match.group(3)

    return BLOCK.sub(fill, text), missing


def main() -> int:
    readme = REPO_ROOT / "README.md"
    text, missing = update(readme.read_text())
    readme.write_text(text)
    for name in missing:
        print(
            f"no table experiments/results/{name}.md for block {name!r}",
            file=sys.stderr,
        )
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
