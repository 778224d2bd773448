"""Checkpoints of a run (orbax): exact resume, and nothing loaded that runs code.

``train(..., checkpoint_dir=path, checkpoint_every=K)`` (and ``pt_train`` /
``pbt_train``, which forward it) saves, every K rounds and when the call ends,
is interrupted or raises, everything the rest of the call depends on: the replicas
(weights, optimiser state, step), the move's state, the round records so far
and the position in the call's plan. The keys of a round, its batches
(in-memory data) and the even-odd parity are functions of the run's key and
the global step, so nothing else is needed: calling again with the same
arguments restores the latest checkpoint and carries on, and the final state
and history are bit for bit those of an uninterrupted call.

What a checkpoint holds, and what a resume trusts:

- **Arrays and JSON only.** Every array goes through orbax; the rest (the
  fingerprint, the plan position, checksums, the structure of the saved trees)
  is JSON, read with bounded size. Nothing is unpickled: loading a checkpoint
  someone sent you cannot run code. The saved trees are rebuilt into templates
  the resuming call builds itself, and their structure must match.
- **Integrity.** A SHA-256 of every array is stored and checked on restore,
  and once a step is committed a manifest holds the SHA-256 of each of its
  files (orbax's own bookkeeping too), so any changed byte is found (a
  file added since, such as a file manager's ``.DS_Store``, is named in a
  warning and not read). A step that fails (a flipped bit, a truncated or missing file, unreadable
  metadata) is renamed ``<step>.corrupt-<time>`` (kept, never deleted), a
  warning names it, and the call resumes from the newest intact step; when no
  step is intact the call stops with a ValueError instead of starting afresh.
- **One writer.** The call holds ``checkpoint_dir/.tempering-lock`` (its
  process id, host and start time inside) while it runs: a second run on the
  same folder fails at once naming the holder; the lock of a process that died
  on this host is taken over with a warning.
- **Several processes** (``jax.distributed``): every process saves and
  restores together through orbax; each writes its shards of the arrays split
  over processes, process 0 the host arrays and JSON, the manifest (after
  every process has written) and the lock; a restore's decisions (a step set
  aside, a refusal) are taken by all processes alike.
- **Only its own entries.** A numbered folder the library did not write (no
  checkpoint inside) is an error that names it; other files are left alone.
- **A fingerprint of everything that shapes the result**: the key, the initial
  replicas and move state, the model (its configuration and code), the
  optimiser (its structure, settings and code), the loss, metrics and score
  functions (name and code), the data, schedule, move and policies. A resume
  whose fingerprint differs is refused with a ValueError naming every entry
  that differs; ``RunConfig(resume_allowing=(name, ...))`` resumes anyway
  despite the entries named (for instance a ``score_fn`` changed on purpose; a
  ``metrics_fn`` whose metrics have other names cannot resume, since the
  rounds' records must keep one set of metrics: refused before any round).
  No entry lets through arrays that do not fit the call's: the saved arrays
  must have the paths, shapes and dtypes of the template the resuming call
  builds (a wider model, bfloat16 weights or another optimiser's state is
  refused with a ValueError naming the arrays and both layouts), and a move
  state must pass its move's own check (``check_state``).

Each checkpoint is written by orbax into a temporary directory and renamed
when complete, so a kill during a save leaves the previous checkpoint as the
latest; the last ``keep`` are kept. A stream of training batches resumes
exactly when it can save its position (``get_state()`` / ``set_state()``, as
grain's ``DataLoader`` and dataset iterators do): its state before the next
batch to train (whatever the reader peeked) is part of the checkpoint's JSON,
and the resuming call sets it, so the same batches follow, bit for bit. A
re-iterable without that (a list of batches, a ``tf.data`` dataset) resumes
exactly too: its count of elements read in the current pass is saved, with a
CRC-32 of them, and a resuming call reads that many from a fresh pass (and
refuses to resume if they, or the batch after them, are not the run's). A one-pass iterator (a generator, a ``tf.data``
iterator) cannot be rewound: a resumed call reads on from wherever the given
iterator is.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tempering._caller import warn
from tempering.checkpoint_files import (
    LOCK_NAME,
    MAX_META_DEPTH,
    CheckpointError,
    Lock,
    check_directory,
    check_manifest,
    check_meta_size,
    check_orbax_step_metadata,
    check_own_entries,
    json_depth,
    meta_digest,
    step_dirs,
    write_manifest,
)

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "ResumeRefusedError",
    "check_directory",
    "together",
]

FORMAT = "tempering-checkpoint/2"
# The dtypes a checkpoint may declare: numpy's numeric kinds (saved as their
# ``dtype.str``) and JAX's narrow ones (ml_dtypes) (saved by name: their ``str`` is
# only a void of their width).
_DTYPE_KINDS = "biufc"
_NARROW_DTYPES = {
    name: np.dtype(getattr(jnp, name))
    for name in (
        "bfloat16",
        "float8_e3m4",
        "float8_e4m3",
        "float8_e4m3b11fnuz",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float6_e2m3fn",
        "float6_e3m2fn",
        "float4_e2m1fn",
        "int2",
        "int4",
        "uint2",
        "uint4",
    )  # fmt: skip
    if hasattr(jnp, name)
}


def _dtype_name(dtype: np.dtype) -> str:
    """How a checkpoint declares ``dtype`` (read back by :func:`_declared_dtype`)."""
    return dtype.name if dtype.name in _NARROW_DTYPES else dtype.str


def _declared_dtype(name: Any) -> np.dtype:
    """The dtype a checkpoint declares; a CheckpointError for any other."""
    if isinstance(name, str) and name in _NARROW_DTYPES:
        return _NARROW_DTYPES[name]
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError):
        raise CheckpointError(f"declares dtype {name!r}") from None
    if dtype.kind not in _DTYPE_KINDS:
        raise CheckpointError(f"declares dtype {dtype}")
    return dtype


# --- several processes (jax.distributed) -------------------------------------------


def _multi() -> bool:
    return jax.process_count() > 1


def _sync(name: str) -> None:
    """A barrier of every process (several processes only)."""
    if _multi():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"tempering-checkpoint-{name}")


def _agree(code: int) -> int:
    """The largest of every process's ``code`` (a collective); one process: its own."""
    if not _multi():
        return code
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(code))))


def _manifest_by_process_0(step_dir: Path) -> None:
    """Process 0 writes the step's manifest; its failure is raised on every process.

    The others would otherwise wait for it in the next collective.
    """
    failure = None
    if jax.process_index() == 0:
        try:
            write_manifest(step_dir)
        except Exception as error:  # noqa: BLE001 - raised below, on every process
            failure = error
    if _agree(int(failure is not None)):
        if failure is not None:
            raise failure
        raise OSError(f"process 0 could not write the manifest of {step_dir}")


def _check_files(step_dir: Path) -> None:
    """A step's manifest holds, and its JSON is bounded (before orbax parses it)."""
    check_manifest(step_dir)
    check_meta_size(step_dir)


def _from_process_0(steps: list[int]) -> list[int]:
    """Process 0's list of steps, on every process (a collective); one process: itself."""
    if not _multi():
        return steps
    from jax.experimental import multihost_utils

    count = int(multihost_utils.broadcast_one_to_all(np.int64(len(steps))))
    mine = np.array(steps if jax.process_index() == 0 else [0] * count, np.int64)
    if len(mine) != count:
        mine = np.zeros(count, np.int64)
    return [int(s) for s in multihost_utils.broadcast_one_to_all(mine)]


def together(fn: Callable[[], Any]) -> Any:
    """``fn()`` on every process, failing on all when it fails on any.

    Every process decides alike (set a step aside, refuse it) before the next
    collective. One process: ``fn()``.
    """
    if not _multi():
        return fn()
    result: Any = None
    error: Exception | None = None
    code = 0
    try:
        result = fn()
    except CheckpointError as caught:
        error, code = caught, 1
    except Exception as caught:
        error, code = caught, 2
    agreed = _agree(code)
    if agreed == 0:
        return result
    if error is not None and code == agreed:
        raise error
    if agreed == 1:
        raise CheckpointError("another process of the run found it broken")
    raise ValueError(
        "another process of this run refused the checkpoint (its error says why)"
    )


# --- the checkpointer -------------------------------------------------------------


class ResumeRefusedError(ValueError):
    """An intact checkpoint this call cannot resume (raised by a restore's template).

    Unlike a template's other errors (a malformed checkpoint, set aside), it
    refuses the resume: the message says why and what to give instead.
    """


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key
    )


def _paths(tree: Any) -> list[str]:
    """The key path of every leaf (the structure, without static fields)."""
    return [
        jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_leaves_with_path(tree)
    ]


def _saved_layout(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a template's device leaf is saved with (a key as its data)."""
    if _is_key(leaf):
        leaf = jax.eval_shape(jax.random.key_data, leaf)
    return tuple(leaf.shape), np.dtype(leaf.dtype)


def _layout_text(shape: Sequence[int], dtype: np.dtype) -> str:
    """``float32[8, 3]``: a saved array's layout, as messages name it."""
    return f"{dtype}{list(shape)}"


def _layout_problems(paths: list[str], leaves: list, entries: list) -> list[str]:
    """Each device leaf of the template whose saved shape or dtype is another.

    Host leaves (numpy, Python values: the round records) are restored as
    saved. A malformed entry is a CheckpointError.
    """
    problems = []
    for path, leaf, entry in zip(paths, leaves, entries, strict=True):
        if not isinstance(leaf, jax.Array):
            continue
        try:
            saved = tuple(int(n) for n in entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"its metadata is malformed at {path}") from None
        dtype = _declared_dtype(entry.get("dtype"))
        mine = _saved_layout(leaf)
        if (saved, dtype) != mine:
            problems.append(
                f"{path} is saved as {_layout_text(saved, dtype)}, this call's is "
                f"{_layout_text(*mine)}"
            )
    return problems


def _listed(paths: Sequence[str], most: int = 4) -> str:
    """Up to ``most`` paths, and how many more."""
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _sha256(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    sha = hashlib.sha256(f"{array.shape}{array.dtype.str}".encode())
    sha.update(array.tobytes())
    return sha.hexdigest()


class Checkpointer:
    """Saves and restores one call's checkpoints in ``directory`` (orbax + JSON).

    Holds the folder's lock from construction to :meth:`close`. In a run over
    several processes (``jax.distributed``) every process makes one, with the
    same arguments, and calls it alike: process 0 holds the lock, writes the
    JSON, the host arrays and the manifest, each process writes its shards of
    the arrays split over processes (orbax), and every decision of a restore
    (a step set aside, a refusal) is taken by all processes together.

    Args:
        directory: where the checkpoints live (created if missing).
        every: rounds between checkpoints (>= 1).
        keep: how many of the latest checkpoints to keep (>= 1).
        settings: the call's :func:`tempering.fingerprints.fingerprint`.
        allowed: fingerprint entries that may differ on resume.
        check: ``check(tree)`` checks a restored tree beyond its layout
            (e.g. the move's own check of its state), raising ValueError to
            refuse the resume; None: no check.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        every: int,
        keep: int,
        settings: dict[str, str],
        allowed: Sequence[str] = (),
        check: Callable[[Any], None] | None = None,
    ):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = check_directory(directory)
        self.every, self.settings, self.allowed = every, settings, tuple(allowed)
        self.check = check
        unknown = sorted(set(self.allowed) - set(settings))
        if unknown:
            raise ValueError(
                f"resume_allowing names {unknown}, which are no fingerprint entries; "
                f"they are {sorted(settings)}"
            )
        self.since_save = 0
        self.saved_step: int | None = None
        self._lock: Lock | None = None
        error: BaseException | None = None
        if jax.process_index() == 0:
            try:
                self._lock = Lock(self.directory)
                check_own_entries(self.directory)
                self._set_aside_unlistable()
            except BaseException as caught:
                error = caught
        if _agree(int(error is not None)):
            self._release()
            if error is not None:
                raise error
            raise ValueError(
                f"checkpoint_dir {self.directory}: process 0 of this run refused "
                "it (its error says why)"
            )
        self._check_shared()
        try:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            )
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except BaseException:
            self._release()
            raise

    def _check_shared(self) -> None:
        """A ValueError on every process unless all see process 0's lock file.

        Over several processes the folder must be one folder (a filesystem
        they share): a restore waits for every process inside orbax, and one
        that sees no checkpoints would leave the others waiting.
        """
        if not _multi():
            return
        from tempering import sharding

        seen = b""
        for _ in range(30):  # a shared filesystem may show a new file late
            try:
                seen = (self.directory / LOCK_NAME).read_bytes()
            except OSError:
                seen = b""
            if seen:
                break
            time.sleep(0.1)
        differing = sharding.processes_differing(
            np.array([zlib.crc32(seen), len(seen)], np.uint32)
        )
        if differing:
            self._release()
            raise ValueError(
                f"checkpoint_dir {self.directory} is not the same folder on every "
                f"process: process {differing[0]} does not see the lock file process "
                "0 wrote there. Over several processes give a folder on a "
                "filesystem every process shares"
            )

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def restore(self, template: Callable[[dict], Any]) -> tuple[Any, dict] | None:
        """The newest intact checkpoint as ``(tree, extra)``, or None when there is none.

        Args:
            template: ``template(extra) -> tree`` builds, from the JSON
                ``extra`` saved beside the arrays, a pytree of the saved
                structure: its device arrays (``jax.Array`` leaves) are
                restored in their place, so the saved ones must have their
                shapes and dtypes (their shardings and PRNG key types are
                kept); host leaves (numpy, Python values) are restored as
                saved. It raises :class:`ResumeRefusedError` to refuse the resume.

        Raises:
            ValueError: the checkpoint was made by a call with other settings,
                holds other arrays or layouts than the template (the paths
                named), fails :attr:`check`, or no saved step is intact.
        """
        steps = _from_process_0(sorted(step_dirs(self.directory), reverse=True))
        failures = []
        for step in steps:
            try:
                tree, extra = self._restore_step(step, template)
            except CheckpointError as error:
                failures.append(self._set_aside(step, error))
                continue
            if self.check is not None:
                together(functools.partial(self._check_restored, step, tree))
            self.saved_step = step
            return tree, extra
        if failures:
            raise ValueError(
                f"checkpoint_dir {self.directory} holds no intact checkpoint "
                f"({'; '.join(failures)}): the run is not restarted silently. Give "
                "another checkpoint_dir to start afresh"
            )
        return None

    def refusal(self, step: int, reason: str) -> ValueError:
        """The error refusing to resume the intact checkpoint of ``step``: ``reason``."""
        return ValueError(
            f"checkpoint_dir {self.directory}: the checkpoint of step {step} "
            f"cannot resume this call: {reason}"
        )

    def _check_restored(self, step: int, tree: Any) -> None:
        """:attr:`check` of a restored tree, its refusal naming the folder and step."""
        assert self.check is not None
        try:
            self.check(tree)
        except ValueError as error:
            raise self.refusal(step, str(error)) from None

    def _allowed_note(self) -> str:
        """What ``resume_allowing`` does not cover (a layout refused despite it)."""
        if self.allowed:
            return (
                f"resume_allowing={self.allowed!r} lets a run of other settings "
                "resume, not arrays that do not fit this call's"
            )
        return "this call's fingerprint is the checkpoint's, yet its arrays differ"

    def _set_aside(self, step: int, error: CheckpointError) -> str:
        """Renames a failed step out of orbax's way (kept for inspection); a warning."""
        if jax.process_index() != 0:  # process 0 moves it
            _sync(f"set-aside-{step}")
            self.manager.reload()
            return f"step {step} ({error}), set aside by process 0"
        message = self._rename_aside(step, error)
        _sync(f"set-aside-{step}")
        self.manager.reload()
        return message

    def _set_aside_unlistable(self) -> None:
        """Sets aside the steps whose own orbax file orbax would read unbounded.

        Process 0, before orbax lists the folder (it parses that file of every
        step when it does).
        """
        for step, step_dir in sorted(step_dirs(self.directory).items()):
            try:
                check_orbax_step_metadata(step_dir)
            except CheckpointError as error:
                self._rename_aside(step, error)

    def _rename_aside(self, step: int, error: CheckpointError) -> str:
        """Renames step ``step`` to ``<step>.corrupt-<time>``, with a warning."""
        source = self.directory / str(step)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        target = self.directory / f"{step}.corrupt-{stamp}"
        source.rename(target)
        message = f"step {step} ({error}), moved to {target.name}"
        warn(
            f"checkpoint_dir {self.directory}: the checkpoint of {message}; "
            "resuming from the newest intact step before it",
            RuntimeWarning,
        )
        return message

    def _restore_step(
        self, step: int, template: Callable[[dict], Any]
    ) -> tuple[Any, dict]:
        meta, leaves, treedef, entries = together(
            lambda: self._read_meta(step, template)
        )
        values = together(lambda: self._read_arrays(step, entries))
        restored = []
        for leaf, value in zip(leaves, values, strict=True):
            if _multi():
                from tempering import sharding

                if isinstance(leaf, jax.Array) and isinstance(
                    leaf.sharding, jax.sharding.NamedSharding
                ):
                    value = sharding.put_global(value, leaf.sharding)
                elif isinstance(leaf, jax.Array):
                    value = jax.device_put(value, leaf.sharding)
                if _is_key(leaf):
                    value = jax.random.wrap_key_data(
                        value, impl=jax.random.key_impl(leaf)
                    )
                restored.append(value)
                continue
            if _is_key(leaf):
                value = jax.random.wrap_key_data(
                    jnp.asarray(value), impl=jax.random.key_impl(leaf)
                )
            if isinstance(leaf, jax.Array):
                value = jax.device_put(value, leaf.sharding)
            restored.append(value)
        return jax.tree.unflatten(treedef, restored), meta["extra"]

    def check_settings(self) -> None:
        """Refuses a folder whose newest readable checkpoint is another run's.

        Reads only the checkpoints' JSON, so that a call refuses another run's
        folder before it reads its data. A step whose JSON is broken is left
        to :meth:`restore` (which sets it aside).

        Raises:
            ValueError: that checkpoint was made with other settings.
        """
        for step in _from_process_0(sorted(step_dirs(self.directory), reverse=True)):
            try:
                together(functools.partial(self._read_checked_meta, step))
            except CheckpointError:
                continue
            return

    def _read_meta(
        self, step: int, template: Callable[[dict], Any]
    ) -> tuple[dict, list, Any, list]:
        """The step's checked JSON, the template's leaves and structure, its entries."""
        meta = self._read_checked_meta(step)
        where = f"checkpoint_dir {self.directory}: the checkpoint of step {step}"
        try:
            tree_template = template(meta["extra"])
            entries = list(meta["leaves"])
        except ResumeRefusedError as error:
            raise self.refusal(step, str(error)) from None
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"its metadata is malformed: {error!r}") from None
        leaves, treedef = jax.tree.flatten(tree_template)
        paths, saved = _paths(tree_template), meta.get("structure")
        if paths != saved:
            raise ValueError(f"{where} {self._other_arrays(saved, paths)}")
        if len(entries) != len(leaves):
            raise CheckpointError("its metadata lists another number of arrays")
        problems = _layout_problems(paths, leaves, entries)
        if problems:
            raise ValueError(
                f"{where} holds arrays of other shapes or dtypes than this call's: "
                f"{_listed(problems, 3)}. {self._allowed_note()}: resume with the "
                "checkpointed run's model, optimiser, state and move (the same "
                "shapes and dtypes), or give another checkpoint_dir"
            )
        return meta, leaves, treedef, entries

    def _other_arrays(self, saved: Any, paths: list[str]) -> str:
        """What differs between the saved arrays' paths and this call's."""
        if not isinstance(saved, list):
            raise CheckpointError("its metadata holds no structure")
        mine, theirs = set(paths), set(map(str, saved))
        only_saved = [p for p in map(str, saved) if p not in mine]
        only_call = [p for p in paths if p not in theirs]
        if only_saved or only_call:
            differ = "; ".join(
                f"{label}: {_listed(found)}"
                for label, found in (
                    ("only in the checkpoint", only_saved),
                    ("only in this call", only_call),
                )
                if found
            )
        else:
            differ = "the same paths in another order"
        return (
            f"holds other arrays than this call's ({differ}). "
            f"{self._allowed_note()}: resume with the checkpointed run's model, "
            "optimiser, move and evaluations, or give another checkpoint_dir"
        )

    def _read_checked_meta(self, step: int) -> dict:
        """The step's JSON, checked whole, its fingerprint this call's."""
        ocp = self._ocp
        step_dir = self.directory / str(step)
        # Agreed before orbax's restore, which waits for every process.
        together(functools.partial(_check_files, step_dir))
        try:
            saved = self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )["meta"]
        except Exception as error:  # orbax raises many kinds for broken files
            raise CheckpointError(f"its metadata cannot be read: {error}") from None
        if isinstance(saved, dict) and "format" not in saved and "settings" in saved:
            raise ValueError(
                f"checkpoint_dir {self.directory} holds a checkpoint of tempering "
                f"< 0.4 (step {step}), whose records were pickled: it cannot be "
                "loaded safely and is not resumed. Give another checkpoint_dir"
            )
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise CheckpointError(f"its metadata is not a {FORMAT} checkpoint's")
        meta = saved.get("body")
        if (
            not isinstance(meta, dict)
            or json_depth(meta, MAX_META_DEPTH) > MAX_META_DEPTH
        ):
            raise CheckpointError("its metadata is malformed or nested too deeply")
        if meta_digest(meta) != saved.get("sha256"):
            raise CheckpointError("its metadata fails its checksum")
        if meta.get("step") != step:
            raise CheckpointError(f"its metadata is step {meta.get('step')}'s")
        self._check_settings(meta.get("settings"))
        return meta

    def _read_arrays(self, step: int, entries: list) -> list[np.ndarray]:
        """The step's arrays as host values, each checked against its checksum.

        Every process reads them whole (the shards each process wrote), as
        numpy: a template of host arrays, so a checkpoint written over several
        processes resumes in one process (or another layout) too; without
        one, orbax restores the saved sharding and refuses another topology.
        """
        ocp = self._ocp
        arrays = {}
        if any(entry.get("stored") for entry in entries):
            try:
                restore = ocp.args.StandardRestore(
                    {
                        f"leaf_{i}": np.zeros(
                            entry["shape"], _declared_dtype(entry["dtype"])
                        )
                        for i, entry in enumerate(entries)
                        if entry.get("stored")
                    }
                )
                arrays = self.manager.restore(
                    step, args=ocp.args.Composite(arrays=restore)
                )["arrays"]
            except Exception as error:  # orbax raises many kinds for broken files
                raise CheckpointError(f"its arrays cannot be read: {error}") from None
        return [self._leaf_value(i, entry, arrays) for i, entry in enumerate(entries)]

    @staticmethod
    def _leaf_value(i: int, entry: dict, arrays: dict) -> np.ndarray:
        try:
            dtype = _declared_dtype(entry["dtype"])
        except CheckpointError as error:
            raise CheckpointError(f"leaf {i} {error}") from None
        shape = tuple(entry["shape"])
        if not entry["stored"]:
            value = np.zeros(shape, dtype)
        else:
            if f"leaf_{i}" not in arrays:
                raise CheckpointError(f"leaf {i} is missing")
            value = np.asarray(arrays[f"leaf_{i}"])
        if value.shape != shape or value.dtype != dtype:
            raise CheckpointError(
                f"leaf {i} is {value.dtype}{list(value.shape)}, saved as "
                f"{dtype}{list(shape)}"
            )
        if _sha256(value) != entry["sha256"]:
            raise CheckpointError(f"leaf {i} fails its checksum")
        return value

    def _check_settings(self, saved: Any) -> None:
        if not isinstance(saved, dict):
            raise CheckpointError("its metadata holds no fingerprint")
        differs = sorted(
            name
            for name in set(saved) | set(self.settings)
            if saved.get(name) != self.settings.get(name) and name not in self.allowed
        )
        if differs:
            unsaved = [name for name in differs if name not in saved]
            older = (
                f" (the checkpoint has no {', '.join(unsaved)}: a version of "
                "tempering before it was fingerprinted wrote it; if the run used "
                "the same, resume_allowing those names resumes it)"
                if unsaved else ""
            )  # fmt: skip
            raise ValueError(
                f"checkpoint_dir {self.directory} holds a run made with other "
                f"settings (they differ in: {', '.join(differs)}){older}; resume "
                "with the same state, key, model, optimiser, functions, data and "
                "settings, give another checkpoint_dir (or delete this one) to "
                "start afresh, or resume anyway with "
                "RunConfig(resume_allowing=(<names>,)) (pt_train(..., "
                "resume_allowing=...))"
            )

    def due(self) -> bool:
        """Counts a finished round; True when a checkpoint is due."""
        self.since_save += 1
        return self.since_save >= self.every

    def save(self, tree: Any, extra: dict, step: int) -> None:
        """Writes a checkpoint of ``tree`` (any pytree) and JSON ``extra`` at ``step``."""
        if step == self.saved_step:
            return
        leaves = [
            jax.random.key_data(leaf) if _is_key(leaf) else leaf
            for leaf in jax.tree.leaves(tree)
        ]
        if _multi():  # gathered for the checksums (a collective)
            from tempering import sharding

            values = sharding.to_host(leaves)
        else:
            values = [np.asarray(leaf) for leaf in leaves]
        arrays, entries = {}, []
        for i, (leaf, value) in enumerate(zip(leaves, values, strict=True)):
            stored = bool(value.size)  # orbax refuses empty arrays
            if stored:  # an array over several processes: each writes its shards
                split = isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
                arrays[f"leaf_{i}"] = leaf if split else value
            entries.append(
                {"shape": list(value.shape), "dtype": _dtype_name(value.dtype),
                 "stored": stored, "sha256": _sha256(value)}
            )  # fmt: skip
        body = {
            "settings": self.settings,
            "step": step,
            "structure": _paths(tree),
            "leaves": entries,
            "extra": extra,
        }
        meta = {"format": FORMAT, "body": body, "sha256": meta_digest(body)}
        ocp = self._ocp
        items = {"meta": ocp.args.JsonSave(meta)}
        if arrays:
            items["arrays"] = ocp.args.StandardSave(arrays)
        self.manager.save(step, args=ocp.args.Composite(**items))
        self.manager.wait_until_finished()
        _sync(f"saved-{step}")
        _manifest_by_process_0(self.directory / str(step))
        self.saved_step, self.since_save = step, 0

    def close(self) -> None:
        """Waits for pending writes, releases the manager and the folder's lock."""
        try:
            self.manager.wait_until_finished()
            self.manager.close()
        finally:
            self._release()
