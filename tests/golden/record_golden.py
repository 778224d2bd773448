"""Records the golden outputs of every configuration in ``golden_configs``.

From the repository root, with the engine of the current checkout::

    python tests/golden/record_golden.py            # writes golden.npz, golden.json
    python tests/golden/record_golden.py --check    # compares, writes nothing

Recording needs a clean tree (the record names its commit) unless ``--allow-dirty``.
It writes ``golden.npz`` (keys ``"<config>/<field>"``) and ``golden.json`` (library
versions, the commit of the imported ``tempering``, and the platform's
fingerprint, ``compare.fingerprint``) next to this file, or into ``--out``. The
XLA setting of ``tests/conftest.py`` (``JAX_DISABLE_MOST_OPTIMIZATIONS``, on
unless the environment says otherwise) is applied the same way, so the
recording runs the programs the tests run.

``--check`` reruns every configuration in fresh processes, once as this
machine's XLA compiles it and once under each lower instruction set
(``XLA_FLAGS=--xla_cpu_max_isa=...``), and prints, per run, whether the
discrete outcomes equal the recording's and how close the float outputs come to
their tolerance: the evidence that a configuration's outcomes are robust to
last-bit differences (``tests/golden/README.md``).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import tempering as tp  # noqa: E402

jax.config.update(
    "jax_disable_most_optimizations",
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] not in ("0", "false", "False"),
)

import golden_compare as compare  # noqa: E402
import golden_configs as gc  # noqa: E402

# Result types whose fields golden_configs lists: at recording time every
# field the engine returns must be recorded, but for those named in
# NOT_RECORDED. The histories (one tp.History type for PT and PBT) are recorded
# by the names users read, fields and the move info's fields alike.
FIELD_LISTS = {
    tp.PTSummary: gc.PT_SUMMARY_FIELDS,
    tp.PBTSummary: gc.PBT_SUMMARY_FIELDS,
    tp.replay.Schedule: gc.SCHEDULE_FIELDS,
    tp.diffusion.DiffusionResult: gc.DIFFUSION_FIELDS,
    tp.EvalMetrics: gc.EVAL_FIELDS,
}
NOT_RECORDED = {
    # The exchange's state at the end: its C and ladder are recorded already
    # (history.c, history.temperatures, summary.c, summary.ladder). The
    # barrier, its bound and the rungs it suggests are functions of the
    # recorded acceptance and round trips (tempering.diagnostics.barrier).
    tp.PTSummary: {"move_state", "barrier", "round_trip_bound", "suggested_rungs"},
}
REPLAY_FIELDS = set(tp.replay.ReplayResult._fields) - {"state"}


def check_field_lists() -> None:
    """Fails unless golden_configs records every field of every result type."""
    for kind, names in FIELD_LISTS.items():
        if set(names) | NOT_RECORDED.get(kind, set()) != set(kind._fields):
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
    """Versions, commit and platform fingerprint the outputs belong to."""
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threefry_partitionable": gc.THREEFRY_PARTITIONABLE,
        "fingerprint": compare.fingerprint(),
        "configs": list(gc.CONFIGS),
    }


ISA_LEVELS = ("AVX512", "AVX2", "AVX", "SSE4_2")


def lower_isas() -> list[str]:
    """XLA:CPU instruction sets below this machine's (x86 only; [] elsewhere)."""
    isa = set(compare.fingerprint()["cpu"]["isa"])
    top = "AVX512" if "avx512f" in isa else "AVX2" if "avx2" in isa else "AVX"
    if "avx" not in isa:
        return []
    return list(ISA_LEVELS[ISA_LEVELS.index(top) + 1 :])


def run_all() -> dict[str, np.ndarray]:
    """Every configuration's outputs, keyed ``"<config>/<field>"``."""
    arrays: dict[str, np.ndarray] = {}
    for name in gc.RUNNERS:
        start = time.perf_counter()
        outputs = gc.run(name)
        print(f"{name}: {len(outputs)} arrays, {time.perf_counter() - start:.1f} s")
        arrays.update({f"{name}/{key}": value for key, value in outputs.items()})
    return arrays


def check(directory: Path) -> None:
    """Reruns the configurations under each instruction set against the record."""
    recorded = dict(np.load(directory / "golden.npz", allow_pickle=False))
    for isa in [None, *lower_isas()]:
        env = dict(os.environ)
        if isa is not None:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa={isa}"
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "outputs.npz"
            subprocess.run(
                [sys.executable, __file__, "--dump", str(out)],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            outputs = dict(np.load(out, allow_pickle=False))
        print(f"{isa or 'this machine'}: {summarize(outputs, recorded)}")


def summarize(outputs: dict[str, np.ndarray], recorded: dict[str, np.ndarray]) -> str:
    """Discrete outcomes equal or not; the float deviation worst against its bound."""
    changed, worst, where = [], 0.0, ""
    for name in gc.CONFIGS:
        prefix = f"{name}/"
        want = {
            k[len(prefix) :]: v for k, v in recorded.items() if k.startswith(prefix)
        }
        gains = gc.gains(name, want)
        for field, expected in want.items():
            got = outputs[prefix + field]
            if compare.is_discrete(field, expected):
                if not np.array_equal(got, expected, equal_nan=got.dtype.kind == "f"):
                    changed.append(prefix + field)
                continue
            gain = gains.get(field, 1.0)
            allowed = compare.allowed_deviation(expected, gc.NUM_STEPS[name], gain)
            error = np.nanmax(np.abs(got.astype(float) - expected), initial=0.0)
            if error / allowed > worst:
                worst, where = float(error / allowed), prefix + field
    discrete = "discrete outcomes equal" if not changed else f"CHANGED {changed}"
    return f"{discrete}; float outputs at most {worst:.4f} of their bound ({where})"


def main() -> None:
    """Records (or checks, or dumps) the outputs of every configuration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="directory"
    )
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--allow-dirty", action="store_true")
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        check(args.out)
        return
    arrays = run_all()
    if args.dump:
        np.savez(args.dump, **arrays)
        return
    check_field_lists()
    check_coverage(arrays)
    meta = metadata()
    if meta["dirty"] and not args.allow_dirty:
        raise SystemExit("the tree has uncommitted changes: commit, or --allow-dirty")
    print(json.dumps(meta, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "golden.npz", **arrays)
    (args.out / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
