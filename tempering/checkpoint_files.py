"""The checkpoint folder on disk: its lock, its entries, bounded JSON, step manifests.

What :mod:`tempering.checkpoint` trusts about the files it reads, apart from
orbax: one writer per folder (:class:`Lock`), only its own numbered entries
(:func:`check_own_entries`), metadata read with bounded size and depth, and the
SHA-256 of every file of a committed step (:func:`write_manifest`,
:func:`check_manifest`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from tempering._caller import warn

__all__ = [
    "LOCK_NAME",
    "MANIFEST",
    "MAX_META_BYTES",
    "MAX_META_DEPTH",
    "ORBAX_STEP_METADATA",
    "CheckpointError",
    "Lock",
    "check_directory",
    "check_directory_name",
    "check_manifest",
    "check_orbax_step_metadata",
    "check_meta_size",
    "check_own_entries",
    "json_depth",
    "meta_digest",
    "read_lock",
    "step_dirs",
    "write_manifest",
]

LOCK_NAME = ".tempering-lock"
# Bounds on what a restore reads as JSON (a checkpoint's metadata is small).
MAX_META_BYTES = 64 * 2**20
MAX_META_DEPTH = 64


class CheckpointError(Exception):
    """A checkpoint step that cannot be trusted (corrupt, incomplete, unreadable)."""


# --- one writer per folder ----------------------------------------------------


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


# This process's own mark in the locks it takes: a restarted container's run
# often has the pid of the one before it (pid 1), but never its token.
_PROCESS_TOKEN = uuid.uuid4().hex
# A lock file that names no holder (empty, cut short) and is older than this
# was left by a process that died while writing it.
_UNWRITTEN_LOCK_S = 10.0


class Lock:
    """``directory/.tempering-lock``, created exclusively; released by :meth:`release`."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self.held = False
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "token": _PROCESS_TOKEN,
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(self.owner, file)
            self.held = True
            return
        raise RuntimeError(
            f"could not lock {self.path}: it names no holder yet (a run starting "
            "beside this one?); if no run uses the folder, delete the file"
        )

    def _take_over_if_stale(self) -> None:
        holder = read_lock(self.path)
        if holder is None:  # removed meanwhile, being written, or left unwritten
            if _age_s(self.path) > _UNWRITTEN_LOCK_S:
                self._take_over(None, "a lock file that names no holder")
            else:
                time.sleep(0.05)
            return
        same_host = holder.get("host") == self.owner["host"]
        pid = holder.get("pid")
        earlier_self = pid == os.getpid() and holder.get("token") != _PROCESS_TOKEN
        if (
            same_host
            and isinstance(pid, int)
            and (earlier_self or not process_alive(pid))
        ):
            self._take_over(
                holder,
                f"the lock of process {pid}, which is gone (started "
                f"{holder.get('started')})",
            )
            return
        raise ValueError(
            f"checkpoint_dir {self.path.parent} is in use by another run (process "
            f"{pid} on host {holder.get('host')!r}, started {holder.get('started')}): "
            "two runs must not write one folder. Wait for it to finish, give "
            f"another checkpoint_dir, or, if that run is gone, delete {self.path}"
        )

    def _take_over(self, holder: dict | None, what: str) -> None:
        """Removes the stale lock ``holder`` named, and only that one.

        Two runs may find the same stale lock: the lock is moved aside (an
        atomic rename, which one of them wins) and read again; a fresh lock
        moved by mistake (another run took over first) is put back.
        """
        aside = self.path.with_name(f"{LOCK_NAME}.{_PROCESS_TOKEN}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another run moved it first: try again
            return
        if read_lock(aside) != holder:  # a lock taken meanwhile: not stale
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink()
            return
        aside.unlink()
        warn(
            f"checkpoint_dir {self.path.parent}: taking over {what}",
            RuntimeWarning,
        )

    def release(self) -> None:
        """Removes the lock file if this lock still holds it."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                if read_lock(self.path) == self.owner:
                    self.path.unlink()
            self.held = False


def _age_s(path: Path) -> float:
    """Seconds since ``path`` was last written (0 if it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def read_lock(path: Path) -> dict | None:
    """The holder a lock file names (pid, host, start), or None if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")[:4096]
        holder = json.loads(text)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


# --- the directory ------------------------------------------------------------


def check_directory_name(directory: Any) -> str | os.PathLike:
    """``checkpoint_dir`` unchanged if it can name a folder, else an error.

    Nothing on disk is touched; raises a TypeError/ValueError naming the fix.
    """
    if isinstance(directory, bool) or not isinstance(directory, str | os.PathLike):
        raise TypeError(
            "checkpoint_dir must be a path (str or os.PathLike) to a folder, got "
            f"{type(directory).__name__}"
        )
    if os.fspath(directory) == "":
        raise ValueError(
            "checkpoint_dir is '': give a folder for the checkpoints (e.g. "
            "'checkpoints/run1'); '.' would write into the working directory"
        )
    return directory


def check_directory(directory: Any) -> Path:
    """``checkpoint_dir`` as an absolute path, created, or an error naming the fix."""
    path = Path(check_directory_name(directory)).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint_dir {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"checkpoint_dir {path} cannot be created ({error.strerror}): give a "
            "writable folder"
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(
            f"checkpoint_dir {path} is not writable: give a writable folder"
        )
    return path


def step_dirs(directory: Path) -> dict[int, Path]:
    """The numbered folders of ``directory``: step -> path."""
    return {
        int(entry.name): entry
        for entry in directory.iterdir()
        if entry.name.isdigit() and entry.is_dir()
    }


def check_own_entries(directory: Path) -> None:
    """A ValueError naming numbered entries that hold no checkpoint of this library."""
    foreign = sorted(
        entry.name
        for entry in directory.iterdir()
        if entry.name.isdigit()
        and not (
            entry.is_dir()
            and ((entry / "meta").exists() or (entry / "arrays").exists())
        )
    )
    if foreign:
        raise ValueError(
            f"checkpoint_dir {directory} holds numbered entries tempering did not "
            f"write: {foreign}. Checkpoint steps are numbered folders, so these "
            "would be taken for (or deleted as) old checkpoints: move them away or "
            "give another checkpoint_dir"
        )


# --- JSON, bounded --------------------------------------------------------------


def json_depth(value: Any, limit: int) -> int:
    """How deep JSON ``value`` nests, counted up to just past ``limit``."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def check_meta_size(step_dir: Path) -> None:
    """A CheckpointError unless the step's metadata files exist and are small."""
    files = [p for p in (step_dir / "meta").glob("**/*") if p.is_file()]
    if not files:
        raise CheckpointError("its metadata is missing")
    if sum(p.stat().st_size for p in files) > MAX_META_BYTES:
        raise CheckpointError(f"its metadata is larger than {MAX_META_BYTES} bytes")


ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"


def check_orbax_step_metadata(step_dir: Path) -> None:
    """A CheckpointError unless orbax's own file of the step is small, shallow JSON.

    Orbax reads it, unbounded, whenever it lists a folder's steps (before
    this library checks anything else of the step).
    """
    path = step_dir / ORBAX_STEP_METADATA
    if not path.is_file():
        return
    if path.stat().st_size > MAX_META_BYTES:
        raise CheckpointError(f"its {ORBAX_STEP_METADATA} is too large")
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"its {ORBAX_STEP_METADATA} is unreadable") from None
    if json_depth(value, MAX_META_DEPTH) > MAX_META_DEPTH:
        raise CheckpointError(f"its {ORBAX_STEP_METADATA} is nested too deeply")


MANIFEST = "tempering-manifest.json"


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def step_files(step_dir: Path) -> dict[str, Path]:
    return {
        p.relative_to(step_dir).as_posix(): p
        for p in sorted(step_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(f"{MANIFEST}.")
    }


def write_manifest(step_dir: Path) -> None:
    """The SHA-256 of every file of a committed step, written beside them atomically."""
    digests = {name: file_sha256(path) for name, path in step_files(step_dir).items()}
    tmp = step_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(digests, sort_keys=True))
    os.replace(tmp, step_dir / MANIFEST)


# The names of the files orbax writes and reads in a step (and its chunk folders).
_ORBAX_FILES = frozenset(
    {"_CHECKPOINT_METADATA", "_METADATA", "_sharding", "manifest.ocdbt", "metadata",
     "commit_success.txt"}
)  # fmt: skip


# orbax's (tensorstore's OCDBT) data files: hexadecimal names in a "d" folder
_CHUNK = re.compile(r"[0-9a-f]{16,}")


def _orbax_reads(name: str) -> bool:
    """Whether orbax may read the step's file ``name`` (a path in the step).

    Its own names only: a file manager's ``.DS_Store`` or ``._*`` beside them,
    in any folder, is not.
    """
    *folders, base = name.split("/")
    return base in _ORBAX_FILES or (
        bool(folders) and folders[-1] == "d" and _CHUNK.fullmatch(base) is not None
    )


def check_manifest(step_dir: Path) -> None:
    """CheckpointError unless every file of the step is the one saved, byte for byte.

    A step without a manifest (a save killed after orbax committed it, before
    the manifest was written) is checked array by array only. Files added
    since the save (a file manager's ``.DS_Store``, a sync tool's) are named
    in a warning and left alone: orbax reads only the files its own index,
    checked here, lists. A file the manifest omits that orbax would read
    (an orbax file's name) means the manifest was changed: an error.
    """
    path = step_dir / MANIFEST
    if not path.exists():
        return
    if path.stat().st_size > MAX_META_BYTES:
        raise CheckpointError("its manifest is too large")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError("its manifest is unreadable") from None
    if not isinstance(saved, dict):
        raise CheckpointError("its manifest is malformed")
    files = step_files(step_dir)
    missing = sorted(set(saved) - set(files))
    if missing:
        raise CheckpointError(f"its files differ from those saved ({missing[:3]})")
    for name in saved:
        if file_sha256(files[name]) != saved[name]:
            raise CheckpointError(f"its file {name} fails its checksum")
    added = sorted(set(files) - set(saved))
    unlisted = [name for name in added if _orbax_reads(name)]
    if unlisted:
        raise CheckpointError(
            f"its manifest does not list files orbax reads ({unlisted[:3]}): "
            "the manifest was changed"
        )
    if added:
        warn(
            f"the checkpoint in {step_dir} holds files it did not save "
            f"({added[:3]}{' ...' if len(added) > 3 else ''}); they are not read "
            "(the saved files are intact) and left in place",
            RuntimeWarning,
        )


def meta_digest(body: dict) -> str:
    """The SHA-256 of a metadata body, serialised canonically."""
    text = json.dumps(body, sort_keys=True, allow_nan=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
