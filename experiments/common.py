"""The experiments' harness: arguments, seeds and keys, records, tables, figures.

Every script uses these pieces, one implementation each:

- command line: :func:`add_output_args` (``--out-dir``, ``--name``),
  :func:`add_data_dir_arg` (``--data-dir``), :func:`add_seeds_arg`
  (``--seeds``, a count or a list);
- keys: :func:`seed_keys`, the convention every training comparison uses
  (``key(seed)`` for the initial weights, ``key(10_000 + seed)`` for the run);
- records: :func:`provenance` (command, commit, machine: CPU model and
  instruction-set level or accelerator, seeds, date),
  :func:`save_result`, per-seed records (:func:`seed_path`,
  :func:`load_seed_record`, :func:`save_seed_record`, :func:`same_record`);
- outputs: :func:`write_outputs` (record, table and figure of one result),
  :func:`figure` (a matplotlib figure off screen), :func:`fmt_mean_std`.

Every number the README quotes comes from a JSON file written here, which
records the command, the git commit, the machine and the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
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


def git_commit(outputs: Any = ()) -> str:
    """The commit of the working tree, with ``-dirty`` if its code has local changes.

    Result files (``experiments/results/``, the untracked default
    ``tempering-results/`` and the run's own ``outputs``: its ``--out-dir``,
    ``--checkpoint-dir``) do not count: a sequence of experiments run from one
    clean checkout records the same clean commit, wherever inside the clone
    its results go. Untracked files elsewhere do count (code never committed
    must not hide behind a commit that lacks it), and so does an output folder
    that holds tracked files (the repository's root, ``experiments/``).
    """
    try:
        commit = _git("rev-parse", "HEAD")
        excluded = [
            ":(exclude)experiments/results",
            ":(exclude)tempering-results",
            *(f":(exclude,literal){p}" for p in _output_folders(outputs)),
        ]
        dirty = _git(
            "status",
            "--porcelain",  # untracked files too: code never committed
            "--",
            ".",
            *excluded,
        )
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _output_folders(outputs: Any) -> list[str]:
    """The folders of ``outputs`` inside the clone that hold no tracked file,
    relative to its root (the folders git status need not count)."""
    root = REPO_ROOT.resolve()
    folders = []
    for path in [outputs] if isinstance(outputs, str | os.PathLike) else outputs:
        if path is None:
            continue
        try:
            rel = Path(path).resolve().relative_to(root).as_posix()
        except ValueError:
            continue  # outside the clone: git status never sees it
        if rel == "." or _git("ls-files", "--", f":(literal){rel}"):
            continue  # the clone itself, or a folder with code in it
        folders.append(rel)
    return folders


def output_dirs(args: argparse.Namespace) -> list[Path]:
    """The folders a script's run writes (``--out-dir``, ``--checkpoint-dir``)."""
    names = ("out_dir", "checkpoint_dir")
    return [Path(v) for n in names if (v := getattr(args, n, None)) is not None]


def short_commit(commit: str) -> str:
    """A commit as tables show it: 7 hex digits, ``-dirty`` kept (``cb19844-dirty``)."""
    commit = str(commit)
    dirty = commit.endswith("-dirty")
    base = commit[: -len("-dirty")] if dirty else commit
    return base[:7] + ("-dirty" if dirty else "")


def warn_dirty(commits: Any, what: str) -> bool:
    """Warns (stderr) when a merged record names a commit of a dirty tree.

    Returns whether any of ``commits`` is dirty or unknown.
    """
    bad = sorted({str(c) for c in commits if not is_clean_commit(str(c))})
    if bad:
        print(
            f"WARNING: {what} merges records made from a tree with local changes or "
            f"at no known commit ({', '.join(short_commit(c) for c in bad)}): "
            "their code is not the commit they name; rerun them from a clean "
            "checkout before quoting them",
            file=sys.stderr,
        )
    return bool(bad)


def _cpuinfo() -> dict[str, str]:
    """The fields of ``/proc/cpuinfo``, each as the first processor gives it
    (empty where there is no such file)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        name, _, value = line.partition(":")
        info.setdefault(name.strip(), value.strip())
    return info


def cpu_model() -> str:
    """The CPU model name (Linux), else the platform's processor string."""
    return _cpuinfo().get("model name") or platform.processor() or "unknown"


def cpu_generation() -> str:
    """The CPU's family, model and cache size (``/proc/cpuinfo``), or "unknown".

    One model name covers processor generations ("AMD EPYC" covers Zen 3 to
    Zen 5) whose results differ in the last bits for some programs at the
    same instruction set (the CIFAR-10 LeNet's), so a record names it.
    """
    fields = _cpuinfo()
    keys = (("family", "cpu family"), ("model", "model"), ("cache", "cache size"))
    found = [f"{label} {fields[key]}" for label, key in keys if fields.get(key)]
    return ", ".join(found) or "unknown"


# Instruction-set levels, highest first: the flag of /proc/cpuinfo that marks
# each (x86 and Arm names as the Linux kernel spells them). XLA:CPU generates
# other code at each level, so the last bits of every result differ between
# them (tests/golden/README.md: bit for bit only on the same platform).
_ISA_LEVELS = (
    ("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sse4.2", "sse4_2"),
    ("sve2", "sve2"), ("sve", "sve"), ("neon", "asimd"),
)  # fmt: skip


def cpu_isa() -> str:
    """The CPU's highest instruction-set level (``avx512``, ``avx2``, ...).

    Read from the first processor's flags in /proc/cpuinfo ("unknown" where
    there are none); ``XLA_FLAGS=--xla_cpu_max_isa=...``, which caps the code
    XLA generates, is appended as ``"<level>, xla max <cap>"``.
    """
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    level = next((lvl for lvl, flag in _ISA_LEVELS if flag in flags), "unknown")
    cap = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
    return level + (f", xla max {cap.group(1)}" if cap else "")


def allocator_env() -> dict[str, str]:
    """The C allocator's settings in the environment (glibc's ``MALLOC_*`` and
    ``GLIBC_TUNABLES``, an ``LD_PRELOAD``ed allocator): they change how fast
    XLA:CPU's per-call temporaries are (experiments/bench_zoo.py)."""
    names = ("GLIBC_TUNABLES", "LD_PRELOAD")
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith("MALLOC_") or k in names
    }


def jax_env() -> dict[str, str]:
    """``XLA_FLAGS`` and every ``JAX_*`` variable set: they change what is compiled."""
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith("JAX_") or k == "XLA_FLAGS"
    }


def package_versions() -> dict[str, str]:
    """The versions of the packages that compute a result, besides jax."""
    from importlib import metadata

    versions = {}
    for name in ("jaxlib", "flax", "optax", "numpy", "tempering"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs since boot, from ``/proc/stat``."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    return ticks[3] + ticks[4], sum(ticks)  # idle + iowait


def wait_until_idle(
    min_idle: float = 0.85, window_s: float = 2.0, max_wait_s: float = 180.0
) -> dict[str, float]:
    """Waits until the machine's CPUs were idle ``min_idle`` of a ``window_s``
    window (the processes of an earlier timed run gone), at most ``max_wait_s``.

    Returns the seconds waited and the idle fraction of the last window, for
    the record. Returns at once where ``/proc/stat`` is missing (not Linux) or
    ``max_wait_s <= 0``.
    """
    start = time.perf_counter()
    idle = math.nan
    while max_wait_s > 0:
        before = _cpu_times()
        if before is None:
            break
        time.sleep(window_s)
        after = _cpu_times()
        idle = (after[0] - before[0]) / max(after[1] - before[1], 1)
        if idle >= min_idle or time.perf_counter() - start >= max_wait_s:
            break
    return {"waited_s": time.perf_counter() - start, "idle_fraction": idle}


def machine() -> dict[str, Any]:
    """CPU (model, instruction-set level, generation), core count, accelerator and
    library versions of this run."""
    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_generation": cpu_generation(),
        "cpu_count": os.cpu_count(),
        "allocator_env": allocator_env(),
        "jax_env": jax_env(),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in devices],
        "jax": jax.__version__,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def provenance(seeds: list[int] | None = None, outputs: Any = ()) -> dict[str, Any]:
    """What produced a result: command, commit, machine, seeds, date.

    ``outputs``: the folders the run writes (:func:`output_dirs`), which do
    not make the commit ``-dirty`` (:func:`git_commit`). The command is quoted
    as a shell would need it (:func:`shlex.join`), so it can be pasted back.
    """
    return {
        "command": shlex.join(["python", "-m", _module_name(), *sys.argv[1:]]),
        "git_commit": git_commit(outputs),
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
    commit = str(payload.get("provenance", {}).get("git_commit", ""))
    if out_dir.resolve() == RECORDS_DIR.resolve() and not is_clean_commit(commit):
        print(
            f"WARNING: {path} names the commit {commit!r}, not a clean one: a "
            "committed record must come from a clean, committed tree (the tests "
            "refuse it); rerun from a clean checkout",
            file=sys.stderr,
        )
    return path


def is_clean_commit(commit: str) -> bool:
    """Whether ``commit`` names a commit of a clean tree (40 hex digits, no suffix)."""
    return len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)


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


# --- command line -----------------------------------------------------------


def add_output_args(parser: argparse.ArgumentParser, name: str | None) -> None:
    """``--out-dir`` (alias ``--out``; default :data:`RESULTS_DIR`) and ``--name``."""
    parser.add_argument(
        "--out-dir", "--out", dest="out_dir", type=Path, default=RESULTS_DIR,
        help=f"where the results go (default: ${RESULTS_DIR_ENV}, else "
        "./tempering-results)",
    )  # fmt: skip
    parser.add_argument("--name", default=name, help="name of the result files")


def add_data_dir_arg(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``: the raw data files (:func:`default_data_dir`)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help=f"raw data files (default: ${DATA_DIR_ENV}, else ../shared/data "
        "next to the repository)",
    )


def add_seeds_arg(
    parser: argparse.ArgumentParser, default: int | list[int] | None
) -> None:
    """``--seeds``: a count N (seeds 0..N-1) for an int default, else a list.

    The count must be at least 1; the list's values are seed numbers, each
    >= 0 and given once (a repeated seed is the same run twice, not another
    seed). Either is refused with ``parser.error`` as it is parsed.
    """
    if isinstance(default, list):
        parser.add_argument(
            "--seeds", type=_seed_number, nargs="+", default=default,
            action=_SeedList,
            help=f"seed numbers to run, each once (e.g. --seeds 0 1 2; default: "
            f"{' '.join(map(str, default))})",
        )  # fmt: skip
    else:
        parser.add_argument(
            "--seeds", type=_seed_count, default=default,
            help="number of seeds N >= 1: runs seeds 0..N-1",
        )  # fmt: skip


def _seed_count(text: str) -> int:
    value = _integer(text, "the number of seeds")
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"the number of seeds must be >= 1, got {value} (--seeds N runs seeds "
            "0..N-1)"
        )
    return value


def _seed_number(text: str) -> int:
    value = _integer(text, "a seed number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed number must be >= 0, got {value}")
    return value


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what} must be an integer, got {text!r}"
        ) from None


class _SeedList(argparse.Action):
    """``--seeds 0 1 2``: seed numbers, each once."""

    def __call__(self, parser, namespace, values, option_string=None):
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            parser.error(
                f"argument {option_string}: seeds {repeated} given more than once; "
                "the values are seed numbers: list each seed once"
            )
        setattr(namespace, self.dest, list(values))


def seed_list_arg(parser: argparse.ArgumentParser, text: str, count: int) -> list[int]:
    """``--seed-list 3,4``: seed numbers within ``0..count-1``, each once."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(
            f"argument --seed-list: {text!r} is not a comma-separated list of seed "
            "numbers (e.g. --seed-list 3,4)"
        )
    outside = [s for s in seeds if not 0 <= s < count]
    if not seeds or outside:
        parser.error(
            f"argument --seed-list: seeds {outside or seeds} are outside the run's "
            f"seeds 0..{count - 1} (--seeds {count}); give seeds of the run, or "
            "a larger --seeds"
        )
    if len(set(seeds)) != len(seeds):
        parser.error(f"argument --seed-list: {text!r} names a seed twice")
    return seeds


def usage_error(message: str) -> None:
    """Stops as ``parser.error`` does (exit 2, ``<prog>: error: ...``), where
    the parser is out of reach."""
    print(f"{_module_name()}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def data_dir_error(data_dir: Path, dataset: str, source: str = "raw") -> str | None:
    """Why ``--data-dir`` cannot give ``dataset`` (None: it can, or tfds may).

    ``source="raw"``: the dataset's raw files must be there; ``"auto"``: the
    folder must exist (the loader reads the raw files or tfds' data from it).
    """
    from tempering.zoo import dataset_files

    spec = dataset_files.dataset_spec(dataset)
    fix = (
        f"give --data-dir, or set ${DATA_DIR_ENV}, to the folder that holds "
        f"{spec.raw_subdir or dataset}/"
    )
    if not Path(data_dir).is_dir():
        return f"argument --data-dir: {data_dir} is no folder; {fix}"
    if source != "raw" or not spec.raw_files:
        return None
    missing = [
        f
        for f in spec.raw_files
        if not Path(dataset_files.raw_path(spec, data_dir, f)).is_file()
    ]
    if missing:
        return (
            f"argument --data-dir: {data_dir} lacks the raw files of {dataset} "
            f"({spec.raw_subdir}/{missing[0]}, ...); {fix}"
        )
    return None


# --- keys -------------------------------------------------------------------

# The run key of seed k is key(RUN_KEY_OFFSET + k): batches, dropout masks and
# exchanges draw from it, the initial weights from key(k).
RUN_KEY_OFFSET = 10_000


def seed_keys(seed: int, offset: int = RUN_KEY_OFFSET) -> tuple[jax.Array, jax.Array]:
    """``(key(seed), key(offset + seed))``: initial weights and the run of a seed.

    Every method of a comparison takes the same two keys for one seed, so they
    start from the same replicas and see the same batches. The Fig. 1
    diffusion scripts recorded their runs with ``offset=1000``.
    """
    return jax.random.key(seed), jax.random.key(offset + seed)


# --- per-seed records -------------------------------------------------------


def seed_path(out_dir: Path, name: str, seed: int, kind: str | None = None) -> Path:
    """``<out_dir>/<name>/seed<k>[_<kind>].json``: one seed's record."""
    suffix = "" if kind is None else f"_{kind}"
    return Path(out_dir) / name / f"seed{seed}{suffix}.json"


def load_seed_record(path: Path, settings: dict, force: bool = False) -> dict | None:
    """The record at ``path`` if it exists (and not ``force``), else None.

    Raises:
        ValueError: the record was made with other ``settings`` (the keys
            that differ named, with both values).
    """
    if force or not Path(path).exists():
        return None
    record = json.loads(Path(path).read_text())
    settings = as_json(settings)
    stored = record.get("settings")
    if not same_record(stored, settings):
        keys = differing_keys(stored, settings)
        values = ", ".join(
            f"{k}: {_get(stored, k)!r} there, {_get(settings, k)!r} here" for k in keys
        )
        raise ValueError(
            f"{path} was made with other settings ({values}); rerun with its "
            "settings, remove it (or --force, where offered) or give the run "
            "another --name / --out-dir"
        )
    return record


def check_before_running(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    seed_paths: Any,
    settings: dict,
) -> None:
    """``parser.error`` before any work: a data folder that lacks the
    benchmark's files, or a seed file (of ``seed_paths``) of other settings."""
    if args.benchmark != "mnist1d":
        problem = data_dir_error(args.data_dir, args.benchmark)
        if problem:
            parser.error(problem)
    for path in seed_paths:
        try:
            load_seed_record(path, settings)
        except ValueError as err:
            parser.error(str(err))


def _get(record: Any, key: str) -> Any:
    return record.get(key, "absent") if isinstance(record, dict) else record


def differing_keys(a: Any, b: Any) -> list[str]:
    """The top-level keys whose values differ between two records (``same_record``)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return [] if same_record(a, b) else ["(the whole record)"]
    return sorted(k for k in a.keys() | b.keys() if not same_record(a.get(k), b.get(k)))


def check_same_setting(records: list[tuple[Path, dict]], what: str) -> None:
    """Refuses records of one merge that differ (``same_record``).

    ``records``: (file, the part of its record that must agree); ``what``:
    the folder or run being merged, for the message.

    Raises:
        ValueError: naming the keys that differ and two files that differ.
    """
    if not records:
        return
    first_path, first = records[0]
    for path, record in records[1:]:
        if not same_record(record, first):
            keys = differing_keys(record, first)
            raise ValueError(
                f"{path} and {Path(first_path).name} in {what} record different "
                f"{keys}: runs of other settings are not comparable and are never "
                "merged; move one away or give the other run its own --name"
            )


def save_seed_record(path: Path, record: dict) -> dict:
    """Writes one seed's record and returns it as read back (plain JSON types)."""
    save_result(Path(path).stem, record, Path(path).parent)
    return json.loads(Path(path).read_text())


def same_record(a: Any, b: Any) -> bool:
    """Equal records, floats to float32 rounding (machines and JAX versions
    differ in the last bit of derived values such as a ladder's betas)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_record(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same_record, a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    return a == b


def as_json(obj: Any) -> Any:
    """``obj`` as a record holds it once written and read back (plain JSON types)."""
    return json.loads(json.dumps(_to_jsonable(obj)))


# --- outputs ----------------------------------------------------------------


def settings_of(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The command line's values (all, or ``names``) as a record stores them."""
    values = vars(args)
    return as_json({k: values[k] for k in names} if names else values)


def write_outputs(
    args: argparse.Namespace,
    payload: dict[str, Any],
    table: str,
    plot: Callable[[Path], None] | None = None,
) -> Path:
    """Writes ``<out_dir>/<name>``: ``.json`` (the record), ``.md`` (its
    table) and ``.png`` (``plot(path)``, if given); prints the table.

    The figure is drawn (to a temporary file, renamed last) before the record
    is written, so a table or figure that fails leaves no half-written
    result: no record without its table and figure.
    """
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.name}.json"
    partial = out_dir / f".{args.name}.partial.png"
    try:
        if plot is not None:
            plot(partial)
        save_result(args.name, payload, out_dir)
        path.with_suffix(".md").write_text(table)
        if plot is not None:
            os.replace(partial, path.with_suffix(".png"))
    finally:
        partial.unlink(missing_ok=True)
    print(table)
    print(f"wrote {path}")
    return path


def figure(ncols: int, size: tuple[float, float]):
    """``(fig, axes)``: a row of ``ncols`` axes, drawn off screen (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=size)


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Writes and closes a figure of :func:`figure`."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def subset(split, size: int | None):
    """The first ``size`` examples of a data split (all of them for None)."""
    if size is None or size >= len(split.labels):
        return split
    return type(split)(split.inputs[:size], split.labels[:size])


def final_rungs(history) -> np.ndarray:
    """The rungs after a run's last round (its initial rungs with no round)."""
    if history.rungs is not None and len(history.rungs):
        return np.asarray(history.rungs)[-1]
    return np.asarray(history.initial_rungs)
