"""Checkpoints of a run (orbax): exact resume after an interruption.

``train(..., checkpoint_dir=path, checkpoint_every=K)`` (and ``pt_train`` /
``pbt_train``, which forward it) saves, every K rounds and when the call ends
or is interrupted, everything the rest of the call depends on: the replica
state (weights, optimiser and move state, step), the round records so far and
the position in the call's plan. The keys of a round, its batches (in-memory
data) and the even-odd parity are functions of the run's key and the global
step, so nothing else is needed: calling again with the same arguments
restores the latest checkpoint and carries on, and the final state and history
are bit for bit those of an uninterrupted call.

Each checkpoint is written by orbax into a temporary directory and renamed
when complete, so a kill during a save leaves the previous checkpoint as the
latest; the last ``keep`` are kept. A checkpoint records a fingerprint of the
call's settings (key, schedule, batch sizes, move, initial state and data): a
call whose fingerprint differs refuses to resume with a ValueError naming what
differs. A stream of training batches cannot be rewound: a resumed call reads
on from wherever the given iterator is (only in-memory data resumes exactly).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Checkpointer", "Progress", "fingerprint"]


class Progress(NamedTuple):
    """Where a call stands, besides its state (host values)."""

    next_segment: int  # index in the call's plan of the first segment left
    records: Any  # the round records so far (the driver's rows)
    initial: Any  # (rungs, hyperparams) before the first round of the call
    burn_values: Any  # hyperparams used in the burn-in


def _digest(tree: Any) -> str:
    """A SHA-1 over the bytes, shapes and dtypes of ``tree``'s array leaves."""
    sha = hashlib.sha1()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
            leaf.dtype, jax.dtypes.prng_key
        ):
            leaf = jax.random.key_data(leaf)
        array = np.ascontiguousarray(np.asarray(leaf))
        sha.update(f"{array.shape}{array.dtype}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def _describe_move(move: Any) -> str:
    """The move's type, settings and arrays, as a string."""
    if is_dataclass(move):
        static = {
            f.name: repr(getattr(move, f.name))
            for f in fields(move)
            if not f.metadata.get("pytree_node", True)
        }
        return f"{type(move).__qualname__}{sorted(static.items())}:{_digest(move)}"
    target = getattr(move, "fn", move)
    return f"{type(move).__qualname__}:{getattr(target, '__qualname__', repr(target))}"


def _describe_data(data: Any) -> str:
    inputs = getattr(data, "inputs", None)
    if inputs is None:
        return type(data).__qualname__  # a stream: only its kind
    return _digest((inputs, data.targets))


def fingerprint(state: Any, key: jax.Array, move: Any, data: Any, **settings: Any):
    """What a checkpoint must share with the call that resumes from it."""
    return {
        "key": _digest(key),
        "initial_state": _digest(
            (state.params, state.batch_stats, state.opt_state, state.hyperparams)
        ),
        "rungs": np.asarray(state.rungs).tolist(),
        "first_step": int(state.step),
        "move": _describe_move(move),
        "train_data": _describe_data(data.train),
        "validation_data": _describe_data(data.validation),
        "test_data": _describe_data(data.test),
        **{name: repr(value) for name, value in settings.items()},
    }


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key
    )


class Checkpointer:
    """Saves and restores one call's checkpoints in ``directory`` (orbax).

    Args:
        directory: where the checkpoints live (created if missing).
        every: rounds between checkpoints (>= 1).
        keep: how many of the latest checkpoints to keep (>= 1).
        settings: the call's :func:`fingerprint`.
    """

    def __init__(self, directory: str | Path, every: int, keep: int, settings: dict):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).expanduser().absolute()
        self.every, self.settings = every, settings
        self.since_save = 0
        self.saved_step: int | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def restore(self, template: Any) -> tuple[Any, Progress] | None:
        """The latest checkpoint as ``(state, progress)``, or None when there is none.

        Raises:
            ValueError: the checkpoint was made by a call with other settings.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        ocp = self._ocp
        saved = self.manager.restore(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
            ),
        )
        meta = saved["meta"]
        differs = sorted(
            name
            for name in set(meta["settings"]) | set(self.settings)
            if meta["settings"].get(name) != self.settings.get(name)
        )
        if differs:
            raise ValueError(
                f"checkpoint_dir {self.directory} holds a run made with other "
                f"settings (they differ in: {', '.join(differs)}); resume with the "
                "same state, key, data and settings, or give another checkpoint_dir "
                "(or delete this one) to start afresh"
            )
        arrays = saved["arrays"]
        leaves, treedef = jax.tree.flatten(template)
        blob = pickle.loads(np.asarray(arrays["blob"]).tobytes())
        restored = []
        for i, leaf in enumerate(leaves):
            value = arrays.get(f"leaf_{i}", blob["small"].get(i))
            if _is_key(leaf):
                value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
            restored.append(jax.device_put(value, leaf.sharding))
        self.saved_step = step
        return jax.tree.unflatten(treedef, restored), blob["progress"]

    def due(self) -> bool:
        """Counts a finished round; True when a checkpoint is due."""
        self.since_save += 1
        return self.since_save >= self.every

    def save(self, state: Any, progress: Progress, step: int) -> None:
        """Writes a checkpoint of ``state`` (any pytree) at ``step`` (once per step)."""
        if step == self.saved_step:
            return
        arrays, small = {}, {}
        for i, leaf in enumerate(jax.tree.leaves(state)):
            value = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
            if value.size:
                arrays[f"leaf_{i}"] = value
            else:  # orbax refuses empty arrays
                small[i] = value
        blob = pickle.dumps({"progress": progress, "small": small})
        arrays["blob"] = np.frombuffer(blob, np.uint8).copy()
        ocp = self._ocp
        self.manager.save(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(arrays),
                meta=ocp.args.JsonSave({"settings": self.settings, "step": step}),
            ),
        )
        self.manager.wait_until_finished()
        self.saved_step, self.since_save = step, 0

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
