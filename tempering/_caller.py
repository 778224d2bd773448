"""Warnings that point at the user's line, however deep in the library they arise."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import FrameType

_PACKAGE = str(Path(__file__).resolve().parent)


def _library_dirs() -> tuple[str, ...]:
    """Where JAX and Flax live: their frames between tempering's are skipped too."""
    import flax
    import jax

    return tuple(str(Path(str(m.__file__)).resolve().parent) for m in (jax, flax))


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the line that called into tempering.

    The stack level is that of the frame just outside the outermost frame of
    the library, so the warning names the user's line whichever wrapper,
    helper or traced function (JAX's frames in between) it arose in, with no
    stack level counted by hand.
    """
    frames = []
    frame: FrameType | None = sys._getframe(1)  # the caller of warn: stack level 2
    while frame is not None:
        frames.append(os.path.realpath(frame.f_code.co_filename))
        frame = frame.f_back
    ours = [i for i, name in enumerate(frames) if name.startswith(_PACKAGE)]
    index = ours[-1] + 1 if ours else 0
    skipped = (_PACKAGE, *_library_dirs())
    while index < len(frames) - 1 and frames[index].startswith(skipped):
        index += 1
    warnings.warn(message, category, stacklevel=index + 2)
