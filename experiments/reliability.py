"""Fault injection: what a run's checkpoints do when things go wrong.

    python -m experiments.reliability --out-dir experiments/results  # ~3 min, 2 cores
    python -m experiments.reliability --faults stray_folder pickle_disabled

Every fault is injected into one small parallel-tempering run with checkpoints
(4 replicas of a two-layer tanh network with dropout on 512 synthetic
examples, a geometric learning-rate ladder, 130 steps in 20 rounds: the run of
``tests/resume_worker.py``, keys from :func:`experiments.common.seed_keys`),
then the same call is made again, as a user would, and what the library did is
measured: the warnings it gave, the error it raised, the round it resumed
after, and whether the final state and history are bit for bit those of the
same run without checkpoints and without faults. The faults:

- SIGKILL of the process (a child running the run) at each phase of a save:
  before orbax writes anything, after it wrote the files but before the rename
  that commits the step, just after that rename, and in the middle of a round
  between two saves (inside the scoring of the validation, before the move);
- damage to the latest saved step: one flipped bit in each kind of file (the
  largest array data file, orbax's array index ``manifest.ocdbt``, the array
  metadata ``arrays/_METADATA``, the JSON ``meta/metadata``, orbax's step
  metadata ``_CHECKPOINT_METADATA``), the largest array file truncated to half,
  the ``meta`` folder deleted, the JSON edited with its checksum left, every
  step's metadata unreadable;
- the folder: a numbered folder the library did not write (``999``), a second
  run on the folder while the first runs, the lock of a dead process, a
  checkpoint of tempering < 0.4 (pickled records);
- the call: another model code, optimiser setting, loss or score function
  than the checkpoint's; a resume with ``pickle`` disabled;
- bad ``checkpoint_dir`` values: ``''``, an int, a file, a path that cannot
  be created;
- errors between saves: a bad streamed batch (NaN) and every replica
  diverging (NaN scores), with no checkpoint due; a resume with a stream of
  other batches of the same kind (the run on a stream that saves its
  position, :class:`Batches`).

Each row of the table holds the fault, what the library did (measured, with
its messages), what it should do, and whether it did. The script exits with
status 1 when a row fails its expectation. Writes ``<out-dir>/reliability.json``
(the record: command, commit, machine, seed, every row with its details) and
``reliability.md`` (the table). Linux only (SIGKILL, /proc). XLA programs are
cached on disk in a temporary folder for the script's own processes (the run
is compiled once instead of once per call); nothing else is shared between
faults: every fault works on its own copy of the checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

import tempering as tp
from experiments.common import (
    REPO_ROOT,
    add_output_args,
    output_dirs,
    provenance,
    seed_keys,
    settings_of,
    write_outputs,
)
from tempering.sources import BatchError

SEED = 0
NUM_REPLICAS = 4
KILL_AT_SAVE = 9  # the n-th checkpoint of the killed runs (checkpoint_every=1)
CRASH_ROUND = 7  # the run whose steps are damaged stops in this round (0-based)


# --- the run ----------------------------------------------------------------


class Net(nn.Module):
    """Two Dense layers, tanh, a per-replica dropout rate."""

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.tanh(nn.Dense(16)(x))
        x = tp.Dropout()(x, dropout_rate, deterministic=not train)
        return nn.Dense(3)(x)


class NetRelu(nn.Module):
    """Net with relu: the same class name, configuration and parameters, other code."""

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.relu(nn.Dense(16)(x))
        x = tp.Dropout()(x, dropout_rate, deterministic=not train)
        return nn.Dense(3)(x)


NetRelu.__name__ = NetRelu.__qualname__ = "Net"

# Set in a child process only: SIGKILL inside the n-th call of score().
_KILL_IN_SCORE: dict[str, int] = {}
# Set for one call: score() is NaN for every replica from its n-th call on.
_NAN_IN_SCORE: dict[str, int] = {}


def score(validation):
    """The validation loss (what the exchange compares by default)."""
    if _NAN_IN_SCORE:
        _NAN_IN_SCORE["calls"] += 1
        if _NAN_IN_SCORE["calls"] >= _NAN_IN_SCORE["at"]:
            return validation.loss * np.float32(np.nan)
    if _KILL_IN_SCORE:
        _KILL_IN_SCORE["calls"] += 1
        if _KILL_IN_SCORE["calls"] == _KILL_IN_SCORE["at"]:
            _die(
                f"during round {_KILL_IN_SCORE['at']} (after its training and "
                "validation, in the scoring, before the move)"
            )
    return validation.loss


def by_accuracy(validation):
    """Another score function: minus the validation accuracy."""
    return -validation.metrics["accuracy"]


def smoothed(outputs, targets):
    """Another loss: cross entropy with label smoothing 0.1."""
    labels = optax.smooth_labels(jax.nn.one_hot(targets, outputs.shape[-1]), 0.1)
    return optax.softmax_cross_entropy(outputs, labels)


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)).astype(np.int32)
    return x, y


class Batches:
    """The examples in batches of 32, cycled in a fixed order; its position is JSON.

    Every replica trains on its batches: a run on it passes ``**Batches.SHARED``.

    ``reverse``: the same examples in the reverse order (another stream of the
    same kind); ``spoil_at``: that batch's first input is NaN.
    """

    SHARED = {"shared_batch": True}

    def __init__(self, reverse: bool = False, spoil_at: int | None = None):
        x, y = data()
        self.x, self.y = (x[::-1].copy(), y[::-1].copy()) if reverse else (x, y)
        self.spoil_at, self.index = spoil_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        start = 32 * (self.index % (len(self.y) // 32))
        x, y = self.x[start : start + 32], self.y[start : start + 32]
        if self.index == self.spoil_at:
            x = x.copy()
            x[0, 0] = np.nan
        self.index += 1
        return x, y

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


def run(
    directory: Any,
    steps: int,
    callback: Callable | None = None,
    variant: str | None = None,
    **kwargs: Any,
) -> tp.PTResult:
    """The run; ``variant`` swaps in another model, optimiser, loss or score function."""
    model = NetRelu() if variant == "model" else Net()
    if variant == "optimizer":
        tx = tp.sgd(0.1, momentum=0.9, nesterov=True)
    else:
        tx = tp.sgd(0.1, momentum=0.9)
    loss = smoothed if variant == "loss_fn" else tp.state.cross_entropy
    x, y = data()
    init_key, run_key = seed_keys(SEED)
    state = tp.create_replicas(
        init_key, model, tx, x[:2], num_replicas=NUM_REPLICAS, loss_fn=loss
    )
    ladder = tp.geometric_ladder(
        "learning_rate", 0.02, 0.4, NUM_REPLICAS, dropout_rate=0.1
    )
    settings = dict(
        train_data=(x, y), validation_data=(x[:128], y[:128]), num_steps=steps,
        burn_in=10, exchange_interval=6, batch_size=32, shared_batch=False,
        score_fn=by_accuracy if variant == "score_fn" else score, callback=callback,
    )  # fmt: skip
    if directory is not None:
        settings["checkpoint_dir"] = directory
    return tp.pt_train(state, ladder, run_key, **{**settings, **kwargs})


def arrays(result: tp.PTResult) -> dict[str, np.ndarray]:
    """The final state and every history field, flat."""
    flat = {
        f"state/{i}": np.asarray(leaf)
        for i, leaf in enumerate(jax.tree.leaves(result.state))
    }
    for name, value in result.history._asdict().items():
        for i, leaf in enumerate(jax.tree.leaves(value)):
            flat[f"history/{name}/{i}"] = np.asarray(leaf)
    return flat


def bit_for_bit(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> bool:
    """Same names, shapes, dtypes and bytes."""
    if a is None or sorted(a) != sorted(b):
        return False
    return all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and np.ascontiguousarray(a[k]).tobytes() == np.ascontiguousarray(b[k]).tobytes()
        for k in b
    )


# --- the killed run: a child process ------------------------------------------


def _die(where: str) -> None:
    print(f"SIGKILL {where}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _arm_save_kill(phase: str, at: int, directory: Path) -> None:
    """SIGKILL inside the ``at``-th checkpoint, at ``phase`` of the save."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.path import atomicity

    saves = {"n": 0, "step": None}
    save = ocp.CheckpointManager.save

    def counting_save(self, step, *args, **kwargs):
        saves["n"], saves["step"] = saves["n"] + 1, step
        print(f"save {saves['n']} step {step}", flush=True)
        if phase == "before_write" and saves["n"] == at:
            _die(f"in save {at} (step {step}), before orbax wrote anything")
        return save(self, step, *args, **kwargs)

    rename = atomicity.async_path.rename

    async def killing_rename(source, target, *args, **kwargs):
        commit = Path(target).parent == directory and Path(target).name.isdigit()
        if commit and phase == "before_rename" and saves["n"] == at:
            _die(
                f"in save {at} (step {saves['step']}), after orbax wrote its files, "
                "before the rename that commits them"
            )
        done = await rename(source, target, *args, **kwargs)
        if commit and phase == "after_rename" and saves["n"] == at:
            _die(f"in save {at} (step {saves['step']}), just after the commit rename")
        return done

    ocp.CheckpointManager.save = counting_save
    atomicity.async_path.rename = killing_rename


def worker(spec: dict[str, Any]) -> None:
    """The run of a child process, described by ``spec`` (JSON on the command line)."""
    directory = Path(spec["dir"]).absolute()
    kill = spec.get("kill")
    if kill in ("before_write", "before_rename", "after_rename"):
        _arm_save_kill(kill, spec["at"], directory)
    elif kill == "mid_round":
        _KILL_IN_SCORE.update(calls=0, at=spec["at"])
    hold = spec.get("hold")

    def callback(record):
        print(f"round {record.round}", flush=True)
        if hold and record.round == 1:  # wait here until the parent says go
            print(f"holding {os.getpid()}", flush=True)
            deadline = time.monotonic() + 300
            while not Path(hold).exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    result = run(
        directory, spec["steps"], callback=callback,
        checkpoint_every=spec.get("every", 1),
    )  # fmt: skip
    np.savez(spec["out"], **arrays(result))
    print("done", flush=True)


def spawn(spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen:
    """The child running ``worker(spec)``; its stderr goes to ``<out>.stderr``."""
    with open(Path(spec["out"]).with_suffix(".stderr"), "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "experiments.reliability", "--worker",
             json.dumps(spec)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr,
            text=True,
        )  # fmt: skip


def child_error(spec: dict[str, Any]) -> str | None:
    """The last line of a child's traceback, if it raised."""
    path = Path(spec["out"]).with_suffix(".stderr")
    lines = path.read_text().splitlines() if path.exists() else []
    if not any(line.startswith("Traceback") for line in lines):
        return None
    return next((line for line in reversed(lines) if line.strip()), None)


# --- observing a call -----------------------------------------------------------


@dataclass
class Outcome:
    """What one call did: its result (flat arrays) or error, warnings, first round."""

    result: dict[str, np.ndarray] | None
    error: BaseException | None
    warnings: list[str]
    first_round: int | None
    seconds: float


@dataclass
class Row:
    fault: str
    injected: str
    observed: str
    expected: str
    passed: bool
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class Context:
    """The reference run, the damaged-run template, and helpers shared by the faults."""

    def __init__(self, args: argparse.Namespace, workdir: Path, env: dict[str, str]):
        self.args, self.workdir, self.env = args, workdir, env
        self.steps = args.steps
        self._reference: tuple[dict, list[int]] | None = None
        self._stream_reference: dict[str, np.ndarray] | None = None
        self._base: tuple[Path, list[int]] | None = None
        self._count = 0

    # the run without checkpoints and without faults
    @property
    def reference(self) -> dict[str, np.ndarray]:
        return self._ensure_reference()[0]

    @property
    def step_of_round(self) -> list[int]:
        """The global step at the end of each round (the reference's history)."""
        return self._ensure_reference()[1]

    @property
    def stream_reference(self) -> dict[str, np.ndarray]:
        """The run on :class:`Batches` (no checkpoints, no faults)."""
        if self._stream_reference is None:
            self._stream_reference = arrays(
                run(None, self.steps, train_data=Batches(), **Batches.SHARED)
            )
        return self._stream_reference

    @property
    def num_rounds(self) -> int:
        return len(self.step_of_round)

    def _ensure_reference(self):
        if self._reference is None:
            result = run(None, self.steps)
            self._reference = (arrays(result), np.asarray(result.history.step).tolist())
        return self._reference

    def round_after(self, step: int) -> int:
        """The 0-based round a call resumed from ``step`` trains first."""
        return self.step_of_round.index(step) + 1

    def fresh(self, name: str) -> Path:
        self._count += 1
        return self.workdir / f"{self._count:02d}-{name}"

    # a run stopped by an exception in round CRASH_ROUND: 2 steps kept
    def crashed(self, name: str) -> tuple[Path, list[int]]:
        """A copy of the crashed run's checkpoints, and its steps (oldest first)."""
        if self._base is None:
            base = self.workdir / "crashed"
            self.crash_run(base)
            self._base = (base, step_dirs(base))
        directory = self.fresh(name)
        shutil.copytree(self._base[0], directory)
        return directory, list(self._base[1])

    def crash_run(self, directory: Path, **kwargs: Any) -> None:
        """The run (with ``kwargs``), stopped by an exception in round CRASH_ROUND."""
        crash_round = min(CRASH_ROUND, self.num_rounds - 2)

        def crash(record):
            if record.round == crash_round:
                raise _CrashError

        with contextlib.suppress(_CrashError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(directory, self.steps, callback=crash, **kwargs)

    def call(self, directory: Any, **kwargs: Any) -> Outcome:
        """The same call again (or with ``kwargs``), observed."""
        seen: list[int] = []
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = arrays(
                    run(
                        directory,
                        self.steps,
                        callback=lambda r: seen.append(r.round),
                        **kwargs,
                    )
                )
                error = None
            except Exception as exc:  # what the library raised is the observation
                result, error = None, exc
        messages = [
            str(w.message) for w in caught if "checkpoint_dir" in str(w.message)
        ]
        return Outcome(
            result, error, messages, seen[0] if seen else None,
            time.perf_counter() - start,
        )  # fmt: skip

    def short(self, text: str, limit: int = 200) -> str:
        """A message without the temporary paths and times, on one line, bounded."""
        text = " ".join(text.replace(str(self.workdir) + os.sep, "").split())
        text = re.sub(r"\d{8}T\d{6}", "<time>", text)
        text = re.sub(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z)?", "<time>", text
        )
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def describe(self, outcome: Outcome, reference: dict | None = None) -> str:
        """What the call did, in words: warnings, error or resume, and the result.

        ``reference``: the faultless run it should equal (default: the run's).
        """
        parts = [
            "warned: " + self.short(re.sub(r"^checkpoint_dir [^\s:]*: ", "", m), 150)
            for m in outcome.warnings
        ]
        if outcome.error is not None:
            parts.append(
                f"{type(outcome.error).__name__}: {self.short(str(outcome.error))}"
            )
        else:
            if outcome.first_round is None:
                parts.append("found the run finished, trained nothing")
            elif outcome.first_round == 0:
                parts.append("started afresh")
            else:
                parts.append(
                    f"resumed after round {outcome.first_round} of {self.num_rounds}"
                )
            same = bit_for_bit(
                outcome.result, self.reference if reference is None else reference
            )
            parts.append("result bit for bit" if same else "result DIFFERS")
        return "; ".join(parts)


class _CrashError(BaseException):
    """A hard crash: not an ``Exception``, so the driver saves nothing on its way
    out (on an ``Exception`` it checkpoints the last round first)."""


def step_dirs(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in Path(directory).iterdir() if p.name.isdigit())


def set_aside(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).iterdir() if ".corrupt-" in p.name)


def flip_bit(path: Path, offset: int) -> int:
    """Flips bit 4 of the byte at ``offset`` (modulo the size); the offset used."""
    data = bytearray(path.read_bytes())
    offset %= len(data)
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    return offset


def largest_array_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "arrays").rglob("*") if p.is_file()]
    data_files = [p for p in files if p.parent.name == "d"]  # the data, not indices
    return max(data_files, key=lambda p: p.stat().st_size)


# --- the faults -------------------------------------------------------------------

FALLBACK = "detected: a warning names step {latest}, set aside as {latest}.corrupt-<time>; resumed from step {prev} (after round {round}); result bit for bit"


def fallback_row(
    ctx: Context, fault: str, injected: str, directory: Path, steps: list[int]
) -> Row:
    """The same call after damaging the latest step: it should resume from the one before."""
    latest, prev = steps[-1], steps[-2]
    outcome = ctx.call(directory)
    kept = set_aside(directory)
    expected_round = ctx.round_after(prev)
    detected = any(
        f"step {latest} " in m and f"moved to {latest}.corrupt-" in m
        for m in outcome.warnings
    )
    passed = (
        outcome.error is None
        and detected
        and outcome.first_round == expected_round
        and bit_for_bit(outcome.result, ctx.reference)
        and len(kept) == 1
        and kept[0].startswith(f"{latest}.corrupt-")
    )
    observed = ctx.describe(outcome)
    if (
        outcome.error is None
        and not outcome.warnings
        and outcome.first_round is not None
    ):
        observed = "not detected: " + observed
    return Row(
        fault, injected, observed,
        FALLBACK.format(latest=latest, prev=prev, round=expected_round), passed,
        outcome.seconds,
        {"steps": steps, "set_aside": [ctx.short(k) for k in kept],
         "first_round": outcome.first_round, "warnings": outcome.warnings,
         "error": None if outcome.error is None else repr(outcome.error)},
    )  # fmt: skip


def error_row(
    ctx: Context, fault: str, injected: str, outcome: Outcome, error: type,
    match: str, expected: str, extra: bool = True, details: dict | None = None,
) -> Row:  # fmt: skip
    """A call that should stop with ``error`` whose message matches ``match``."""
    passed = (
        type(outcome.error) is error
        and re.search(match, str(outcome.error)) is not None
        and extra
    )
    return Row(
        fault, injected, ctx.describe(outcome), expected, passed, outcome.seconds,
        {"error": None if outcome.error is None else repr(outcome.error),
         "warnings": outcome.warnings, **(details or {})},
    )  # fmt: skip


def kill_row(ctx: Context, phase: str) -> Row:
    """SIGKILL a child in ``phase``, then resume here: bit for bit, from the newest step."""
    labels = {
        "before_write": ("SIGKILL in a save, before orbax writes", ""),
        "before_rename": ("SIGKILL in a save, files written, before the commit rename", ""),
        "after_rename": ("SIGKILL in a save, just after the commit rename", ""),
        "mid_round": ("SIGKILL mid-round, between saves", " (checkpoint_every=3)"),
    }  # fmt: skip
    fault, when = labels[phase]
    directory = ctx.fresh(phase)
    every = 3 if phase == "mid_round" else 1
    at = min(KILL_AT_SAVE, ctx.num_rounds - 2)
    # mid_round: the score of round `at` (0-based) is the (at + 1)-th call
    spec = dict(dir=str(directory), out=str(directory.with_suffix(".npz")),
                steps=ctx.steps, kill=phase, at=at + 1 if phase == "mid_round" else at,
                every=every)  # fmt: skip
    start = time.perf_counter()
    child = spawn(spec, ctx.env)
    stdout, _ = child.communicate(timeout=600)
    killed = child.returncode == -signal.SIGKILL
    said = [line for line in stdout.splitlines() if line.startswith("SIGKILL")]
    steps = step_dirs(directory) if directory.exists() else []
    leftovers = (
        sorted(p.name for p in directory.iterdir() if not p.name.isdigit())
        if directory.exists()
        else []
    )
    crashed = child_error(spec)
    saving = [int(m) for m in re.findall(r"^save \d+ step (\d+)$", stdout, re.M)]
    outcome = ctx.call(directory)
    newest = max(steps) if steps else None
    expected_round = ctx.round_after(newest) if newest is not None else None
    passed = (
        killed
        and bool(said)
        and outcome.error is None
        and outcome.first_round == expected_round
        and bit_for_bit(outcome.result, ctx.reference)
    )
    if phase in ("before_write", "before_rename"):  # the killed save is not there
        passed = passed and bool(saving) and newest == saving[-2]
    elif phase == "after_rename":  # the killed save is committed
        passed = passed and bool(saving) and newest == saving[-1]
    observed = (
        ("killed (SIGKILL), " if killed else f"NOT killed (exit {child.returncode}"
         + (f": {ctx.short(crashed)}" if crashed else "") + "), ")
        + f"left steps {steps}"
        + (f" and {leftovers}" if leftovers else "")
        + "; then " + ctx.describe(outcome)
    )  # fmt: skip
    if phase == "mid_round":
        expected = "resumes from the last save (after round {r}); result bit for bit"
    elif phase == "after_rename":
        expected = "the killed save is committed: resumes from it (after round {r}); result bit for bit"
    else:
        expected = "the killed save is not there: resumes from the one before (after round {r}); result bit for bit"
    return Row(
        fault, f"SIGKILL {said[0][8:] if said else '(none: the child was not killed)'}{when}",
        observed, expected.format(r=expected_round), passed,
        time.perf_counter() - start,
        {"steps_left": steps, "other_entries": leftovers, "saves_started": saving,
         "first_round": outcome.first_round, "returncode": child.returncode,
         "child_error": crashed},
    )  # fmt: skip


def flip_row(ctx: Context, kind: str) -> Row:
    labels = {
        "data": ("bit flip: array data file", lambda s: largest_array_file(s)),
        "manifest": ("bit flip: array index manifest.ocdbt", lambda s: s / "arrays" / "manifest.ocdbt"),
        "array_metadata": ("bit flip: array metadata arrays/_METADATA", lambda s: s / "arrays" / "_METADATA"),
        "json_metadata": ("bit flip: JSON meta/metadata", lambda s: s / "meta" / "metadata"),
        "step_metadata": ("bit flip: orbax's _CHECKPOINT_METADATA", lambda s: s / "_CHECKPOINT_METADATA"),
    }  # fmt: skip
    fault, target = labels[kind]
    directory, steps = ctx.crashed(f"flip-{kind}")
    path = target(directory / str(steps[-1]))
    offset = flip_bit(path, path.stat().st_size // 2)
    rel = path.relative_to(directory).as_posix()
    return fallback_row(
        ctx,
        fault,
        f"bit 4 of byte {offset} of {path.stat().st_size} flipped in {rel}",
        directory,
        steps,
    )


def truncate_row(ctx: Context) -> Row:
    directory, steps = ctx.crashed("truncate")
    path = largest_array_file(directory / str(steps[-1]))
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    rel = path.relative_to(directory).as_posix()
    return fallback_row(
        ctx,
        "truncated array file",
        f"{rel} cut from {size} to {size // 2} bytes",
        directory,
        steps,
    )


def meta_deleted_row(ctx: Context) -> Row:
    directory, steps = ctx.crashed("meta-deleted")
    shutil.rmtree(directory / str(steps[-1]) / "meta")
    return fallback_row(
        ctx, "deleted meta folder", f"{steps[-1]}/meta removed", directory, steps
    )


def tampered_row(ctx: Context) -> Row:
    directory, steps = ctx.crashed("tampered")
    path = directory / str(steps[-1]) / "meta" / "metadata"
    text = path.read_text()
    edited = text.replace('"next_segment": ', '"next_segment": 1', 1)
    path.write_text(edited)
    assert edited != text
    return fallback_row(
        ctx, "tampered metadata",
        f'{steps[-1]}/meta/metadata edited ("next_segment": N -> 1N, skipping rounds), its sha256 left',
        directory, steps,
    )  # fmt: skip


def no_intact_row(ctx: Context) -> Row:
    directory, steps = ctx.crashed("no-intact")
    for step in steps:
        (directory / str(step) / "meta" / "metadata").write_text("{not json")
    outcome = ctx.call(directory)
    kept = set_aside(directory)
    return error_row(
        ctx, "no intact step", f"the JSON metadata of every step ({steps}) made unreadable",
        outcome, ValueError, r"holds no intact checkpoint",
        "ValueError: no intact checkpoint (never a silent fresh start); every step set aside",
        extra=len(outcome.warnings) == len(steps) and len(kept) == len(steps),
        details={"set_aside": [ctx.short(k) for k in kept]},
    )  # fmt: skip


def stray_folder_row(ctx: Context) -> Row:
    directory, _ = ctx.crashed("stray")
    (directory / "999").mkdir()
    (directory / "999" / "notes.txt").write_text("mine")
    outcome = ctx.call(directory)
    kept = (directory / "999" / "notes.txt").exists()
    unlocked = not (directory / ".tempering-lock").exists()
    return error_row(
        ctx, "stray folder 999", "a folder 999 with a file inside, next to the checkpoints",
        outcome, ValueError, r"did not write: \['999'\]",
        "ValueError naming '999'; the folder kept; the lock released",
        extra=kept and unlocked, details={"kept": kept, "lock_released": unlocked},
    )  # fmt: skip


def concurrent_row(ctx: Context) -> Row:
    directory = ctx.fresh("concurrent")
    go = directory.with_suffix(".go")
    out = directory.with_suffix(".npz")
    spec = dict(dir=str(directory), out=str(out), steps=ctx.steps, hold=str(go))
    start = time.perf_counter()
    first = spawn(spec, ctx.env)
    holder = None
    for line in first.stdout:
        if line.startswith("holding "):
            holder = int(line.split()[1])
            break
    second = ctx.call(directory)  # while the first waits inside its round 1
    go.touch()
    rest, _ = first.communicate(timeout=600)
    finished = first.returncode == 0 and out.exists()
    first_same = finished and bit_for_bit(dict(np.load(out)), ctx.reference)
    again = ctx.call(directory)  # the folder it left: the finished run, intact
    intact = (
        again.error is None and again.first_round is None and not again.warnings
        and bit_for_bit(again.result, ctx.reference)
    )  # fmt: skip
    unlocked = not (directory / ".tempering-lock").exists()
    crashed = child_error(spec)
    observed = (
        ctx.describe(second) + f" (after {second.seconds:.2f} s); the first "
        + ("finished, result bit for bit" if first_same else "did NOT finish intact"
           + (f" ({ctx.short(crashed)})" if crashed else ""))
        + "; a third call on the folder " + ctx.describe(again)
        + ("; lock released" if unlocked else "; lock LEFT")
    )  # fmt: skip
    passed = (
        holder is not None
        and isinstance(second.error, ValueError)
        and re.search(rf"in use by another run \(process {holder} on host", str(second.error)) is not None
        and second.seconds < 10
        and first_same and intact and unlocked
    )  # fmt: skip
    return Row(
        "two concurrent writers",
        "a second run on the folder starts while the first (a child process) is in round 1",
        observed,
        "the second fails at once (ValueError naming the holder's process and host); the first finishes, bit for bit; its checkpoints intact",
        passed, time.perf_counter() - start,
        {"holder_pid": holder, "second_error": repr(second.error),
         "second_seconds": second.seconds, "first_returncode": first.returncode,
         "child_error": crashed},
    )  # fmt: skip


def dead_lock_row(ctx: Context) -> Row:
    directory = ctx.fresh("dead-lock")
    directory.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pid = int(dead.stdout)
    (directory / ".tempering-lock").write_text(
        json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"})
    )
    outcome = ctx.call(directory)
    unlocked = not (directory / ".tempering-lock").exists()
    passed = (
        outcome.error is None
        and any(f"taking over the lock of process {pid}" in m for m in outcome.warnings)
        and bit_for_bit(outcome.result, ctx.reference)
        and unlocked
    )
    return Row(
        "lock of a dead process",
        f".tempering-lock of process {pid} (exited) on this host",
        ctx.describe(outcome) + ("; lock released" if unlocked else "; lock LEFT"),
        "taken over with a warning naming the process; the run trains, bit for bit",
        passed, outcome.seconds, {"dead_pid": pid, "warnings": outcome.warnings},
    )  # fmt: skip


def pickled_row(ctx: Context) -> Row:
    import orbax.checkpoint as ocp

    directory = ctx.fresh("pickled")
    with ocp.CheckpointManager(directory) as manager:  # the 0.3 layout
        manager.save(12, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave({"blob": np.zeros(8, np.uint8)}),
            meta=ocp.args.JsonSave({"settings": {}, "step": 12}),
        ))  # fmt: skip
    outcome = ctx.call(directory)
    return error_row(
        ctx,
        "pickled checkpoint (tempering < 0.4)",
        "a step in the 0.3 layout (pickled records, no format entry)",
        outcome,
        ValueError,
        r"tempering < 0.4 \(step 12\).*pickled",
        "ValueError: refused, nothing unpickled",
    )


def variant_row(ctx: Context, entry: str) -> Row:
    labels = {
        "model": ("changed model code", "the model's tanh replaced by relu (same class name, configuration and parameters)"),
        "optimizer": ("changed optimiser setting", "sgd(0.1, momentum=0.9) -> sgd(0.1, momentum=0.9, nesterov=True)"),
        "loss_fn": ("changed loss", "cross entropy -> cross entropy with label smoothing 0.1"),
        "score_fn": ("changed score function", "validation loss -> minus the validation accuracy"),
    }  # fmt: skip
    fault, injected = labels[entry]
    directory, steps = ctx.crashed(f"variant-{entry}")
    outcome = ctx.call(directory, variant=entry)
    allowed = ctx.call(directory, variant=entry, resume_allowing=(entry,))
    overridden = allowed.error is None and allowed.first_round == ctx.round_after(
        steps[-1]
    )
    row = error_row(
        ctx, fault, f"resumed with {injected}", outcome, ValueError,
        rf"other settings \(they differ in: {entry}\)",
        f"ValueError naming {entry} (and nothing else); with resume_allowing=('{entry}',) it resumes",
        extra=overridden,
        details={"resume_allowing": repr(allowed.error) if allowed.error else allowed.first_round},
    )  # fmt: skip
    row.observed += "; with resume_allowing: " + (
        f"resumed after round {allowed.first_round}"
        if allowed.error is None
        else f"{type(allowed.error).__name__}: {ctx.short(str(allowed.error))}"
    )
    return row


def pickle_disabled_row(ctx: Context) -> Row:
    import _pickle
    import pickle

    directory, steps = ctx.crashed("no-pickle")
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append("unpickle")
        raise RuntimeError("unpickling is disabled")

    saved = [(m, n, getattr(m, n)) for m in (pickle, _pickle) for n in ("loads", "load", "Unpickler")]  # fmt: skip
    for module, name, _ in saved:
        setattr(module, name, refuse)
    try:
        outcome = ctx.call(directory)
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
    expected_round = ctx.round_after(steps[-1])
    passed = (
        outcome.error is None and not attempts and not outcome.warnings
        and outcome.first_round == expected_round
        and bit_for_bit(outcome.result, ctx.reference)
    )  # fmt: skip
    return Row(
        "pickle disabled during resume",
        "pickle.loads/load/Unpickler and _pickle's raise during the resuming call",
        ctx.describe(outcome) + f"; {len(attempts)} unpickling attempts",
        f"resumes from the latest step (after round {expected_round}), bit for bit; nothing unpickled",
        passed, outcome.seconds, {"unpickle_attempts": len(attempts)},
    )  # fmt: skip


def bad_dir_row(ctx: Context, kind: str) -> Row:
    if kind == "empty":
        value, error, match, text = (
            "",
            ValueError,
            r"checkpoint_dir is ''",
            "ValueError: checkpoint_dir is ''",
        )
    elif kind == "int":
        value, error, match, text = (
            5,
            TypeError,
            r"checkpoint_dir must be a path",
            "TypeError: must be a path",
        )
    elif kind == "file":
        value = ctx.fresh("file")
        value.write_text("x")
        error, match, text = (
            ValueError,
            r"is a file, not a folder",
            "ValueError: a file, not a folder",
        )
    else:  # not creatable, even by root
        value = Path("/proc/tempering-reliability/run")
        error, match, text = (
            ValueError,
            r"cannot be created",
            "ValueError: cannot be created",
        )
    shown = {"empty": "''", "int": "5", "file": "a file's path", "unwritable": "/proc/tempering-reliability/run (cannot be created)"}[kind]  # fmt: skip
    outcome = ctx.call(value)
    return error_row(
        ctx, f"checkpoint_dir={shown}", f"checkpoint_dir={value!r}"
        if kind != "file" else "checkpoint_dir=<a file>", outcome, error, match,
        text,
    )  # fmt: skip


def _saved_between(
    ctx: Context,
    directory: Path,
    error: type,
    match: str,
    failing_call: Callable[[], Outcome],
    last_round: int,
    resumed: Callable[[], Outcome],
    reference: dict,
) -> tuple:
    """An error between saves, the checkpoint it left, then the same call mended."""
    first = failing_call()
    steps = step_dirs(directory) if directory.exists() else []
    expected_step = ctx.step_of_round[last_round]
    second = resumed()
    passed = (
        type(first.error) is error and re.search(match, str(first.error)) is not None
        and steps == [expected_step] and second.error is None
        and second.first_round == last_round + 1
        and bit_for_bit(second.result, reference)
    )  # fmt: skip
    observed = (
        f"{ctx.describe(first)}; left steps {steps}; then, mended: "
        + ctx.describe(second, reference)
    )
    return first, second, steps, expected_step, passed, observed


def bad_batch_row(ctx: Context) -> Row:
    directory = ctx.fresh("bad-batch")
    at = min(KILL_AT_SAVE, ctx.num_rounds - 2)  # the batch's round (0-based)
    spoil_at = ctx.step_of_round[at - 1] + 2  # the third batch of that round
    _, second, steps, saved, passed, observed = _saved_between(
        ctx, directory, BatchError, rf"train_data batch {spoil_at} .*non-finite",
        lambda: ctx.call(directory, train_data=Batches(spoil_at=spoil_at),
                         checkpoint_every=1000, **Batches.SHARED),
        at - 1, lambda: ctx.call(directory, train_data=Batches(), **Batches.SHARED),
        ctx.stream_reference,
    )  # fmt: skip
    return Row(
        "bad streamed batch between saves",
        f"NaN in batch {spoil_at} of a stream that saves its position (round {at}); "
        "checkpoint_every=1000 (no save due)",
        observed,
        f"BatchError naming batch {spoil_at}; the last finite round saved (step "
        f"{saved}); the same call, its stream mended, resumes after round "
        f"{at}; result bit for bit that of the clean stream",
        passed, second.seconds, {"steps": steps, "spoil_at": spoil_at},
    )  # fmt: skip


def diverged_row(ctx: Context) -> Row:
    directory = ctx.fresh("diverged")
    at = min(KILL_AT_SAVE, ctx.num_rounds - 2)

    def failing() -> Outcome:
        _NAN_IN_SCORE.update(calls=0, at=at + 1)  # round `at` is the (at+1)-th
        try:
            return ctx.call(directory, checkpoint_every=1000)
        finally:
            _NAN_IN_SCORE.clear()

    _, second, steps, saved, passed, observed = _saved_between(
        ctx, directory, tp.DivergenceError, rf"every replica diverged .*round {at}",
        failing, at - 1, lambda: ctx.call(directory), ctx.reference,
    )  # fmt: skip
    return Row(
        "every replica diverged between saves",
        f"every replica's score NaN from round {at} on; checkpoint_every=1000 (no "
        "save due)",
        observed,
        f"DivergenceError naming round {at}; the last finite round saved (step "
        f"{saved}); the same call resumes after round {at}; result bit for bit",
        passed, second.seconds, {"steps": steps},
    )  # fmt: skip


def other_stream_row(ctx: Context) -> Row:
    directory = ctx.fresh("other-stream")
    ctx.crash_run(directory, train_data=Batches(), **Batches.SHARED)
    steps = step_dirs(directory)
    saved_round = ctx.round_after(steps[-1])
    copy = ctx.fresh("same-stream")
    shutil.copytree(directory, copy)
    other = ctx.call(directory, train_data=Batches(reverse=True), **Batches.SHARED)
    same = ctx.call(copy, train_data=Batches(), **Batches.SHARED)
    allowed = ctx.call(
        directory, train_data=Batches(reverse=True), resume_allowing=("train_data",),
        **Batches.SHARED,
    )  # fmt: skip
    overridden = allowed.error is None and allowed.first_round == saved_round
    resumed = (
        same.error is None and same.first_round == saved_round
        and bit_for_bit(same.result, ctx.stream_reference)
    )  # fmt: skip
    row = error_row(
        ctx, "another stream of the same kind",
        "resumed with the examples in the reverse order (a stream of the same "
        "class, saving its position)", other, ValueError,
        r"batch \d+\).*differ in: train_data",
        "ValueError naming train_data (the batch at the saved position); with "
        "resume_allowing=('train_data',) it resumes",
        extra=overridden and resumed,
        details={"resume_allowing": repr(allowed.error) if allowed.error else allowed.first_round},
    )  # fmt: skip
    row.observed += (
        "; with resume_allowing: "
        + (
            f"resumed after round {allowed.first_round}"
            if allowed.error is None
            else f"{type(allowed.error).__name__}: {ctx.short(str(allowed.error))}"
        )
        + "; the same stream, on a copy of the folder: "
        + ctx.describe(same, ctx.stream_reference)
    )
    row.expected += "; the same stream resumes, bit for bit"
    return row


FAULTS: dict[str, Callable[[Context], Row]] = {
    "kill_before_write": lambda c: kill_row(c, "before_write"),
    "kill_before_rename": lambda c: kill_row(c, "before_rename"),
    "kill_after_rename": lambda c: kill_row(c, "after_rename"),
    "kill_mid_round": lambda c: kill_row(c, "mid_round"),
    "flip_data": lambda c: flip_row(c, "data"),
    "flip_manifest": lambda c: flip_row(c, "manifest"),
    "flip_array_metadata": lambda c: flip_row(c, "array_metadata"),
    "flip_json_metadata": lambda c: flip_row(c, "json_metadata"),
    "flip_step_metadata": lambda c: flip_row(c, "step_metadata"),
    "truncate": truncate_row,
    "meta_deleted": meta_deleted_row,
    "tampered_metadata": tampered_row,
    "no_intact_step": no_intact_row,
    "stray_folder": stray_folder_row,
    "concurrent_writers": concurrent_row,
    "dead_lock": dead_lock_row,
    "pickled_checkpoint": pickled_row,
    "changed_model": lambda c: variant_row(c, "model"),
    "changed_optimizer": lambda c: variant_row(c, "optimizer"),
    "changed_loss": lambda c: variant_row(c, "loss_fn"),
    "changed_score": lambda c: variant_row(c, "score_fn"),
    "pickle_disabled": pickle_disabled_row,
    "dir_empty": lambda c: bad_dir_row(c, "empty"),
    "dir_int": lambda c: bad_dir_row(c, "int"),
    "dir_file": lambda c: bad_dir_row(c, "file"),
    "dir_unwritable": lambda c: bad_dir_row(c, "unwritable"),
    "bad_batch": bad_batch_row,
    "diverged": diverged_row,
    "other_stream": other_stream_row,
}


# --- outputs ---------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def table(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    failed = [r for r in rows if not r["passed"]]
    lines = [
        f"Faults injected into a PT run with checkpoints ({payload['run']}); each "
        "row is measured, then the same call is made again. "
        f"Record `reliability.json`: `{payload['command'].strip()}` at commit "
        f"`{payload['git_commit'][:12]}`, {payload['machine']['cpu']}, "
        f"{payload['machine']['cpu_count']} cores, jax {payload['machine']['jax']}, "
        f"seed {SEED}. **{len(rows) - len(failed)} of {len(rows)} rows pass**"
        + (f"; failing: {', '.join(r['fault'] for r in failed)}." if failed else "."),
        "",
        "| fault | injected | what the library did (measured) | expected | pass |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "yes" if r["passed"] else "**NO**"
        lines.append(
            f"| {_cell(r['fault'])} | {_cell(r['injected'])} | {_cell(r['observed'])} "
            f"| {_cell(r['expected'])} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_output_args(parser, "reliability")
    parser.add_argument(
        "--faults", nargs="+", choices=sorted(FAULTS), default=list(FAULTS),
        help="the faults to inject (default: all, in the table's order)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=130,
        help="SGD steps of the run (130: 20 rounds of 6 after a burn-in of 10)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-workdir", action="store_true",
        help="keep the temporary folder of the checkpoints (its path is printed)",
    )  # fmt: skip
    return parser.parse_args(argv)


def _use_compile_cache(path: Path) -> dict[str, str]:
    """XLA programs cached in ``path`` for this process and its children."""
    settings = {
        "JAX_COMPILATION_CACHE_DIR": str(path),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return settings


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    order = [name for name in FAULTS if name in args.faults]
    workdir = Path(tempfile.mkdtemp(prefix="tempering-reliability-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p
    )
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.update(_use_compile_cache(workdir / "xla-cache"))
    ctx = Context(args, workdir, env)
    start = time.perf_counter()
    rows = []
    try:
        for name in order:
            began = time.perf_counter()
            try:
                row = FAULTS[name](ctx)
            except Exception as error:  # the injection itself failed: a failed row
                row = Row(
                    name, "(the injection failed)",
                    f"{type(error).__name__}: {ctx.short(str(error))}",
                    "the fault injected and the library's response measured", False,
                    time.perf_counter() - began, {"error": repr(error)},
                )  # fmt: skip
            row.details["name"] = name
            rows.append(row)
            print(f"[{'pass' if row.passed else 'FAIL'}] {row.fault} "
                  f"({time.perf_counter() - began:.1f} s): {row.observed}", flush=True)  # fmt: skip
    finally:
        if args.keep_workdir:
            print(f"checkpoints kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    payload = {
        **provenance([SEED], outputs=output_dirs(args)),
        "settings": settings_of(args),
        "run": (
            f"{NUM_REPLICAS} replicas, 2-layer tanh MLP with dropout 0.1, 512 "
            f"examples, lr ladder 0.02-0.4, {args.steps} steps, {ctx.num_rounds} rounds"
            if ctx._reference is not None
            else f"{NUM_REPLICAS} replicas, {args.steps} steps"
        ),
        "rows": [asdict(r) for r in rows],
        "passed": sum(r.passed for r in rows),
        "failed": sum(not r.passed for r in rows),
        "total_wall_seconds": time.perf_counter() - start,
    }
    write_outputs(args, payload, table(payload))
    return payload


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(json.loads(sys.argv[2]))
    else:
        sys.exit(0 if main()["failed"] == 0 else 1)
