"""Provenance and result files shared by the experiment scripts.

Every number the README quotes comes from a JSON file written here, which
records the command, the git commit, the machine and the seeds.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tempering import loops
from tempering.sources import ArraySource
from tempering.state import default_metrics

# The committed records the README quotes (python -m experiments.update_readme
# reads them). Scripts write here only when asked: --out-dir experiments/results,
# or TEMPERING_RESULTS_DIR=experiments/results.
RECORDS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "TEMPERING_DATA_DIR"
RESULTS_DIR_ENV = "TEMPERING_RESULTS_DIR"


def default_results_dir() -> Path:
    """Where experiments write by default: ``$TEMPERING_RESULTS_DIR``, else ``./tempering-results``.

    A path relative to the working directory, never the tracked
    ``experiments/results/`` (:data:`RECORDS_DIR`), so that running an
    experiment does not dirty a clone. Set ``TEMPERING_RESULTS_DIR`` (or pass
    the script's ``--out-dir``) to ``experiments/results`` to refresh the
    committed records on purpose.
    """
    override = os.environ.get(RESULTS_DIR_ENV)
    return Path(override) if override else Path("tempering-results")


# Default output directory of every script (read once, at import).
RESULTS_DIR = default_results_dir()


def default_data_dir() -> Path:
    """Where the raw data files are: ``$TEMPERING_DATA_DIR``, else ``../shared/data``.

    The relative default is resolved from the repository root (not from the
    working directory), so ``--data-dir`` needs no setting wherever the scripts
    run from.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "data"


def git_commit() -> str:
    """The commit of the working tree, with ``-dirty`` if its code has local changes.

    Result files (``experiments/results/``, and the untracked default
    ``tempering-results/``) do not count: a sequence of experiments run from
    one clean checkout records the same clean commit.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)experiments/results",
            ],  # fmt: skip
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU, core count, accelerator and library versions of this run."""
    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in devices],
        "jax": jax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def provenance(seeds: list[int] | None = None) -> dict[str, Any]:
    """What produced a result: command, commit, machine, seeds, date."""
    return {
        "command": "python -m " + _module_name() + " " + " ".join(sys.argv[1:]),
        "git_commit": git_commit(),
        "machine": machine(),
        "seeds": list(seeds) if seeds is not None else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    return Path(sys.argv[0]).stem


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | jax.Array):
        return _to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def run_evaluate(state, inputs, targets, *, batch_size: int = 1000):
    """Evaluates every replica from the host, as ``tempering.train`` does.

    :func:`tempering.loops.run_evaluate` on in-memory data, with the loop
    ``"auto"`` resolves to for this model (a host loop over chunks on CPU for
    models with convolutions, one ``lax.scan`` program otherwise).
    """
    source = ArraySource(jnp.asarray(inputs), jnp.asarray(targets))
    return loops.run_evaluate(
        state,
        source,
        batch_size=batch_size,
        metrics_fn=default_metrics,
        loop=loops.loop_for(state, source.inputs, "auto"),
    )


def save_result(
    name: str, payload: dict[str, Any], results_dir: Path | None = None
) -> Path:
    """Writes ``<results_dir>/<name>.json`` (NaN as null, inf as a string)."""
    out_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(_to_jsonable(payload), indent=1) + "\n")
    return path


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std


def fmt_mean_std(values, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` of ``values * scale`` as a string; one value alone.

    A single value has no spread over seeds: it is shown without "± 0.00".
    """
    values = np.asarray(values, np.float64) * scale
    if values.size == 1:
        return f"{values.item():.{digits}f}"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
