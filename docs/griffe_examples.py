"""A griffe extension: a docstring's ``Example:`` section is read as ``Examples:``.

The package's Google-style docstrings write ``Example:`` (singular) over
``>>>`` lines; griffe reads the singular as a free-text admonition, where
``x["a"]["b"]`` looks like a Markdown link. As ``Examples:`` the lines render
as code. Docstrings are not changed; only the copy griffe parses.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExamplesSection(Extension):
    """Renames ``Example:`` section headers to ``Examples:``."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        """Runs on every object griffe loads."""
        if obj.docstring is not None:
            obj.docstring.value = SINGULAR.sub(r"\1Examples:", obj.docstring.value)
