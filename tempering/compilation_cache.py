"""JAX's persistent compilation cache, turned on in one call.

Every new Python process (a script, a restarted notebook kernel) compiles the
library's programs again: the fused step, the segment, the evaluation, the
move. :func:`enable_compilation_cache` turns on JAX's persistent compilation
cache, which writes each compiled program (XLA's serialised executable) to a
folder on disk and, in a later process, reads it back instead of compiling it
again. The entries are keyed by a hash of the program as JAX lowered it, the
jaxlib and backend versions, the XLA flags, the compile options and the
devices, so a changed model, shape, setting or version compiles afresh (and
adds an entry); nothing is ever read for a program that differs.

How JAX treats the folder (read in jax 0.10.2's ``jax._src.compilation_cache``
and checked there): the setting ``jax_compilation_cache_dir`` is read at the
first compilation after it is set, and from then on the cache stays in that
folder for the rest of the process: changing the setting later is silently
ignored (what compiles next is still written to the first folder) unless the
cache is reset
(``jax.experimental.compilation_cache.compilation_cache.reset_cache()``).
:func:`enable_compilation_cache` resets it when the folder changes, so it can
be called at any point of a process.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import jax

CACHE_DIR_ENV = "TEMPERING_CACHE_DIR"
"""The environment variable naming the default cache folder."""


def _default_directory() -> tuple[Path, str]:
    """The default folder and what named it (for error messages)."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override is not None:
        if not override.strip():  # "" or " ": a folder named " ", silently
            raise ValueError(
                f"enable_compilation_cache: ${CACHE_DIR_ENV} is set but empty "
                f"({override!r}): give it a folder, or unset it for the default"
            )
        return Path(override), f"${CACHE_DIR_ENV}"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "tempering" / "jax", "the default cache folder"


def _checked_directory(directory: str | os.PathLike | None) -> Path:
    """The folder as a resolved absolute path, created; errors name the argument."""
    if directory is None:
        path, what = _default_directory()
    else:
        what = "directory"
        if not isinstance(directory, str | os.PathLike):
            raise TypeError(
                "enable_compilation_cache: directory must be a folder's path "
                f"(str or os.PathLike) or None, got {type(directory).__name__}"
            )
        name = os.fspath(directory)
        if not isinstance(name, str):
            raise TypeError(
                "enable_compilation_cache: directory must be a str path, got "
                f"an os.PathLike of {type(name).__name__}"
            )
        if not name.strip():
            raise ValueError(
                "enable_compilation_cache: directory must name a folder, got an "
                "empty string (None: the default folder)"
            )
        path = Path(name)
    path = path.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"enable_compilation_cache: {what} must be a folder, but {path} is a "
            "file: name a folder (it is created if missing)"
        )
    try:
        # 0o700: what a process reads from the cache, it runs (JAX trusts it)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"enable_compilation_cache: {what} {path} cannot be created: {err}"
        ) from err
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ValueError(
            f"enable_compilation_cache: {what} {path} is not readable and "
            "writable by this user"
        )
    # JAX writes the folder's path into every program's cache key: one folder
    # reached by two paths (a symlink) would be two caches.
    return path.resolve()


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Turns on JAX's persistent compilation cache in ``directory``.

    Every program JAX compiles from then on in this process (the library's
    fused step, segments, evaluation and move, and any other ``jax.jit``) is
    written to the folder, and a later process that calls this with the same
    folder reads it back instead of compiling it again: the first step after
    a restart of a script or a notebook kernel then costs what loading the
    programs costs, not what compiling them costs. The thresholds are set so
    that every program is written however fast it compiled
    (``jax_persistent_cache_min_compile_time_secs = 0``; JAX's default, 1 s,
    would skip most of the library's programs on small models) and however
    small it is (``jax_persistent_cache_min_entry_size_bytes`` lowered to 0
    if it was set higher). These are process-wide JAX settings.

    Call it before or after other JAX work, as often as you like: the
    programs compiled before it are not written (their next compilation, in
    another process, is). JAX itself binds the cache to the folder named at
    the first compilation after it is set and silently ignores a later
    change of ``jax_compilation_cache_dir``; this function therefore resets
    JAX's cache (``reset_cache``) whenever the folder changes, so the new one
    takes effect at once, and warns (``UserWarning``) when it replaces a
    folder set earlier in the process: what was compiled before stays in the
    earlier folder. Called again with the same folder, it changes nothing.

    Only the process with ``jax.process_index() == 0`` writes entries (JAX's
    rule); give the processes of a multi-host run a folder on a shared file
    system for the others to read them. JAX trusts what it reads from the
    folder (it runs it): keep it private to you; the cache folder, when this
    function creates it, is private to its owner (mode 0o700). JAX evicts nothing
    unless ``jax_compilation_cache_max_size`` is set (bytes); delete the folder
    to empty the cache.

    Args:
        directory: the cache folder, created if missing (parents too); ``~``
            is expanded. None: ``$TEMPERING_CACHE_DIR`` if set, else
            ``$XDG_CACHE_HOME/tempering/jax``, else
            ``~/.cache/tempering/jax``.

    Returns:
        The folder, as an absolute path with its symlinks resolved.

    Raises:
        TypeError: ``directory`` is not a ``str``, an ``os.PathLike`` or None.
        ValueError: ``directory`` (or ``$TEMPERING_CACHE_DIR``) is empty,
            names a file, or cannot be created or written. Both are raised
            before any JAX setting changes or anything compiles.

    Example:
        >>> import tempering as tp
        >>> folder = tp.enable_compilation_cache()  # before the first pt_train
        >>> state, history, summary = tp.pt_train(state, ladder, key, ...)
        >>> # a restarted kernel that calls enable_compilation_cache() again
        >>> # loads the compiled programs from `folder` instead of compiling
    """
    path = _checked_directory(directory)
    previous = _setting("jax_compilation_cache_dir")
    enabled = _setting("jax_enable_compilation_cache")
    if _setting("jax_persistent_cache_min_compile_time_secs") > 0:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if _setting("jax_persistent_cache_min_entry_size_bytes") > 0:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    same = previous is not None and _same_folder(previous, path)
    if same and enabled:
        return path
    if previous is not None and not same:
        warnings.warn(
            f"JAX's persistent compilation cache moves from {previous} to {path}: "
            f"what this process compiled before (if anything) was written to "
            f"{previous}, what it compiles from now on goes to {path}",
            UserWarning,
            stacklevel=2,
        )
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX decides once per process (at its first compilation) whether and
    # where it caches; a reset makes it decide again at the next compilation.
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    return path


def _setting(name: str) -> Any:
    """A JAX setting's current value (``jax.config.<name>``)."""
    return getattr(jax.config, name)


def _same_folder(name: str, path: Path) -> bool:
    """Whether a folder named in JAX's setting is ``path``."""
    try:
        return Path(name).expanduser().absolute() == path or (
            Path(name).exists() and Path(name).samefile(path)
        )
    except OSError:
        return False
