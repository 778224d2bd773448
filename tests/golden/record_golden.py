"""Records the golden outputs of every configuration in ``golden_configs``.

Run it with the engine to freeze on the import path, e.g. from a worktree of
the commit::

    git worktree add /tmp/golden_wt <commit>
    cd /tmp/golden_wt
    PYTHONPATH=/tmp/golden_wt python /path/to/tests/golden/record_golden.py

It writes ``golden.npz`` (keys ``"<config>/<field>"``) and ``golden.json``
(library versions, the commit of the imported ``tempering``, the platform)
next to this file, or into ``--out``. The XLA setting of ``tests/conftest.py``
(``JAX_DISABLE_MOST_OPTIMIZATIONS``, on unless the environment says otherwise)
is applied the same way, so the recording runs the programs the tests run.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import tempering as tp  # noqa: E402

jax.config.update(
    "jax_disable_most_optimizations",
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] not in ("0", "false", "False"),
)

import golden_configs as gc  # noqa: E402

# Result types whose fields golden_configs lists: at recording time every
# field the engine returns must be recorded.
FIELD_LISTS = {
    tp.PTHistory: gc.PT_HISTORY_FIELDS,
    tp.PTSummary: gc.PT_SUMMARY_FIELDS,
    tp.PBTHistory: gc.PBT_HISTORY_FIELDS,
    tp.PBTSummary: gc.PBT_SUMMARY_FIELDS,
    tp.Schedule: gc.SCHEDULE_FIELDS,
    tp.diffusion.DiffusionResult: gc.DIFFUSION_FIELDS,
    tp.EvalMetrics: gc.EVAL_FIELDS,
}
REPLAY_FIELDS = set(tp.ReplayResult._fields) - {"state"}


def check_field_lists() -> None:
    """Fails unless golden_configs records every field of every result type."""
    for kind, names in FIELD_LISTS.items():
        if set(names) != set(kind._fields):
            raise AssertionError(f"{kind.__name__}: {names} != {kind._fields}")
    if REPLAY_FIELDS != set(gc.REPLAY_FIELDS):
        raise AssertionError(f"ReplayResult: {gc.REPLAY_FIELDS} != {REPLAY_FIELDS}")


def check_coverage(arrays: dict[str, np.ndarray]) -> None:
    """Fails unless the outputs show what the configurations were chosen for."""
    rate = arrays["pt_even_odd/summary.acceptance_rate"]
    if not np.any((rate > 0) & (rate < 1)):
        raise AssertionError(f"pt_even_odd: no pair both accepts and rejects: {rate}")
    if arrays["pt_random/history.proposed"].sum() == 0:
        raise AssertionError("pt_random: no exchange was proposed")
    if arrays["grid/history.accepted"].any():
        raise AssertionError("grid: an exchange was accepted")
    if arrays["replay_lineage/replay.step"].size < 2:
        raise AssertionError("replay_lineage: the schedule has a single piece")
    if not arrays["pbt_truncation/history.copied"].any():
        raise AssertionError("pbt_truncation: no replica was copied")


def git(*args: str) -> str:
    """``git <args>`` in the checkout that ``tempering`` was imported from."""
    cwd = Path(tp.__file__).resolve().parent
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def metadata() -> dict[str, object]:
    """Versions, commit and platform the outputs belong to."""
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "tempering_file": str(Path(tp.__file__).resolve()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax_disable_most_optimizations": bool(
            jax.config.read("jax_disable_most_optimizations")
        ),
        "configs": list(gc.CONFIGS),
    }


def main() -> None:
    """Runs every configuration and writes golden.npz and golden.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="directory"
    )
    args = parser.parse_args()
    check_field_lists()
    arrays: dict[str, np.ndarray] = {}
    for name, run in gc.RUNNERS.items():
        start = time.perf_counter()
        outputs = run()
        print(f"{name}: {len(outputs)} arrays, {time.perf_counter() - start:.1f} s")
        arrays.update({f"{name}/{key}": value for key, value in outputs.items()})
    check_coverage(arrays)
    meta = metadata()
    print(json.dumps(meta, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "golden.npz", **arrays)
    (args.out / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
