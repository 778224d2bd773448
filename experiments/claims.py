"""The paper's three claims, measured for PT and the grid from the committed records.

Pushkarov et al. claim that hyperparameter PT gives (1) a lower test error
than the grid, (2) faster training and (3) better resistance to overfitting.
This script measures all three, per seed and as paired differences PT − grid
over the seeds that have both runs, from every record that holds per-round
curves; it reads JSON files only (no data, no training):

- ``quickstart.json``: validation *error* of every replica per round (no test
  curve);
- ``compare/<name>/seed<k>.json`` (``python -m experiments.compare``): the
  best validation error over the replicas per round only (no per-replica or
  test curves);
- ``fig2_*.json`` (the earlier Fig. 2 runs, every scale) and
  ``fig2/<setting>/seed<k>_<pt|grid>.json`` (the authors' protocol): the
  validation loss and the test error of every replica per round.

The *selected* replica of a run is the one it reports: the lowest final
validation loss (``best_replica``); its curve is that replica's over the run
(in PT its weights move between hyperparameter values). Per seed:

- **lower test error**: the final test error of the selected replica;
- **faster training**: the target is the grid's best validation value, the
  minimum over the run of the grid's selected replica (compare: of the best
  replica per round). The first recorded step at which the selected replica
  reaches it, and, separately, the first at which any replica does
  (population minimum), for PT and for the grid alike. A run that never
  reaches it is *censored*: counted, never given a value; the paired
  difference is over the seeds where both reach it;
- **resistance to overfitting**: the rise of the validation metric and of
  the test error from their minimum over the run to the end, for the selected
  replica and for the population mean (the mean over replicas per round).

Curves begin at the first evaluation round (after the burn-in), so steps
before it are not resolved. A paired difference is reported as mean ± s.e.
(s.e. = std(ddof=1)/sqrt(n)); "beyond 2 s.e." means |mean| > 2 s.e.; no verdict
from fewer than 2 paired seeds.

    python -m experiments.claims --out-dir experiments/results
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import (
    RECORDS_DIR,
    add_output_args,
    check_same_setting,
    figure,
    output_dirs,
    provenance,
    save_figure,
    warn_dirty,
    write_outputs,
)
from experiments.fig2_common import shared_part

# Per-seed quantities: key, label, unit, which claim they bear on.
QUANTITIES = (
    ("test_error", "final test error, selected", "points", "test"),
    ("steps_selected", "steps to the grid's best, selected", "steps", "faster"),
    ("steps_population", "steps to the grid's best, population min", "steps", "faster"),
    ("val_rise_selected", "validation rise, selected", "val", "overfit"),
    ("val_rise_mean", "validation rise, population mean", "val", "overfit"),
    ("test_rise_selected", "test-error rise, selected", "points", "overfit"),
    ("test_rise_mean", "test-error rise, population mean", "points", "overfit"),
)  # fmt: skip
KEYS = tuple(k for k, *_ in QUANTITIES)
TITLES = {k: title for k, title, *_ in QUANTITIES}
# How a difference PT − grid below / above zero reads, per claim.
WORDS = {
    "test": ("PT lower", "the grid lower"),
    "faster": ("PT faster", "PT slower"),
    "overfit": ("PT overfits less", "PT overfits more"),
}
CLAIMS = {
    "test": "Lower test error",
    "faster": "Faster training",
    "overfit": "Resistance to overfitting",
}
TOL = 1e-9  # a curve reaches the target when value <= target + TOL


@dataclass
class Run:
    """One method's run of one seed, as much of it as the record holds."""

    step: np.ndarray  # (R,) the step of each evaluation round
    val_best: np.ndarray  # (R,) the population minimum of the validation metric
    val: np.ndarray | None = None  # (R, M) every replica's validation metric
    test: np.ndarray | None = None  # (R, M) every replica's test error
    selected: int | None = None  # the replica the run reports
    test_error: float | None = None  # its final test error


@dataclass
class Setting:
    """One record's PT and grid runs, by seed."""

    name: str
    label: str
    metric: str  # "loss" or "error": the validation metric of the curves
    num_steps: int
    runs: dict[int, dict[str, Run]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    produced_at: set[str] = field(default_factory=set)
    # seeds left out: a method's run missing, or the seed's file missing
    unpaired: list[int] = field(default_factory=list)


def _array(values) -> np.ndarray:
    """A record's list as float64, JSON null (a NaN) and "inf" included."""
    return np.array(
        [
            _array(v) if isinstance(v, list) else (np.nan if v is None else float(v))
            for v in values
        ]
    )


def _finite(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), a, np.nan)


def _curve_run(run: dict, val_key: str, test_key: str | None, step_key: str) -> Run:
    val = _finite(_array(run[val_key]))
    test = _finite(_array(run[test_key])) if test_key else None
    return Run(
        step=np.asarray(run[step_key], np.int64),
        val_best=np.nanmin(np.where(np.isnan(val), np.inf, val), axis=1),
        val=val,
        test=test,
        selected=int(run["best_replica"]),
    )


def load_quickstart(path: Path) -> Setting:
    record = json.loads(path.read_text())
    steps = int(record["settings"]["steps"])
    laddered = [
        k
        for k, v in record["ladder"].items()
        if k != "temperatures" and len(set(v)) > 1
    ]
    setting = Setting(
        "quickstart",
        f"quick start ({record['dataset']['name']}, {', '.join(laddered)}), {steps} steps",
        "error", steps, files=[path], produced_at={record["git_commit"]},
    )  # fmt: skip
    for seed, runs in zip(record["seeds"], record["runs"], strict=True):
        pair = {}
        for method, key in (("grid", "grid"), ("pt", "PT")):
            run = _curve_run(runs[key], "val_error", None, "steps")
            run.test_error = float(runs[key]["test_error_best"])
            pair[method] = run
        setting.runs[int(seed)] = pair
    return setting


def load_compare(folder: Path) -> Setting:
    """The seed files of one ``experiments.compare`` run.

    Raises:
        ValueError: files of the folder made with other settings (named, with
            the keys that differ): they are never merged.
    """
    files = sorted(folder.glob("seed*.json"), key=lambda p: int(p.stem[4:]))
    records = {path: json.loads(path.read_text()) for path in files}
    check_same_setting(
        [(path, record.get("settings")) for path, record in records.items()], folder
    )
    first = records[files[0]]
    steps = int(first["settings"]["steps"])
    ladder = ", lr" if "final_ladder_lr" in first["runs"].get("grid", {}) else ""
    setting = Setting(
        folder.name, f"{folder.name} ({first['settings']['benchmark']}{ladder}), "
        f"{steps} steps", "error", steps,
    )  # fmt: skip
    for path, record in records.items():
        runs = record["runs"]
        if not {"grid", "pt"} <= runs.keys():
            continue
        setting.files.append(path)
        setting.produced_at |= {p["git_commit"] for p in record["provenance"].values()}
        pair = {}
        for method in ("grid", "pt"):
            run = runs[method]
            pair[method] = Run(
                step=np.asarray(run["curve_step"], np.int64),
                val_best=_finite(_array(run["curve_best_val_error"])),
                test_error=float(run["test_error"]),
            )
        setting.runs[int(record["seed"])] = pair
    merged = folder.parent.parent / f"{folder.name}.json"  # the run's seed list
    expected = set(range(max(setting.runs, default=-1) + 1))
    if merged.exists():
        expected |= set(json.loads(merged.read_text())["provenance"]["seeds"] or [])
    setting.unpaired = sorted(expected - set(setting.runs))
    return setting


def _fig2_run(run: dict) -> Run:
    out = _curve_run(run, "val_loss", "test_error_by_replica", "step")
    out.test_error = float(run["best_test_error"])
    return out


def load_fig2(path: Path) -> Setting:
    """An earlier Fig. 2 record: ``runs: {pt: [...], grid: [...]}`` in one file."""
    record = json.loads(path.read_text())
    steps = int(record["config"]["num_steps"])
    setting = Setting(
        path.stem, f"{path.stem}, {steps} steps", "loss", steps, files=[path],
        produced_at={record["provenance"]["git_commit"]},
    )  # fmt: skip
    by_seed: dict[int, dict[str, Run]] = {}
    for method in ("grid", "pt"):
        for run in record["runs"].get(method, []):
            by_seed.setdefault(int(run["seed"]), {})[method] = _fig2_run(run)
    setting.runs = {k: v for k, v in sorted(by_seed.items()) if len(v) == 2}
    setting.unpaired = sorted(k for k, v in by_seed.items() if len(v) != 2)
    return setting


def load_fig2_folder(folder: Path) -> Setting:
    """The authors' protocol: ``fig2/<setting>/seed<k>_<pt|grid>.json``.

    Raises:
        ValueError: files of the folder that record different configs or
            protocols (``experiments.fig2_table``'s check): never merged.
    """
    by_seed: dict[int, dict[str, Run]] = {}
    files, commits, steps = [], set(), 0
    records = {
        p: json.loads(p.read_text()) for p in sorted(folder.glob("seed*_*.json"))
    }
    check_same_setting([(p, shared_part(r)) for p, r in records.items()], folder)
    for path, record in records.items():
        by_seed.setdefault(int(record["seed"]), {})[record["kind"]] = _fig2_run(
            record["run"]
        )
        files.append(path)
        commits.add(record["provenance"]["git_commit"])
        steps = int(record["config"]["num_steps"])
    label = f"{folder.name}, {steps} steps"
    if str(steps) not in folder.name:
        label = f"{folder.name} (authors' protocol), {steps} steps"
    setting = Setting(folder.name, label, "loss", steps, files=files)
    setting.produced_at = commits
    setting.runs = {k: v for k, v in sorted(by_seed.items()) if len(v) == 2}
    setting.unpaired = sorted(k for k, v in by_seed.items() if len(v) != 2)
    return setting


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def load_settings(records_dir: Path) -> list[Setting]:
    """Every record under ``records_dir`` with curves and paired PT/grid seeds."""
    records_dir = Path(records_dir)
    found = []
    if (records_dir / "quickstart.json").exists():
        found.append(load_quickstart(records_dir / "quickstart.json"))
    for folder in _folders(records_dir / "compare"):
        found.append(load_compare(folder))
    for path in sorted(records_dir.glob("fig2_*.json")):
        record = json.loads(path.read_text())
        if isinstance(record.get("runs"), dict):
            found.append(load_fig2(path))
    for folder in _folders(records_dir / "fig2"):
        found.append(load_fig2_folder(folder))
    return [s for s in found if s.runs]


# --- per seed ---------------------------------------------------------------


def first_reach(step: np.ndarray, curve: np.ndarray, target: float) -> int | None:
    """The first step at which ``curve <= target`` (None: never; censored)."""
    hit = np.flatnonzero(np.nan_to_num(curve, nan=np.inf) <= target + TOL)
    return int(step[hit[0]]) if hit.size else None


def rise(curve: np.ndarray) -> float | None:
    """The final value minus the minimum over the run (None: no finite value)."""
    if not np.isfinite(curve).any() or not np.isfinite(curve[-1]):
        return None
    return float(curve[-1] - np.nanmin(curve))


def _population_mean(a: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(a).sum(1)
        return np.where(counts > 0, np.nansum(a, 1) / np.maximum(counts, 1), np.nan)


def target_of(grid: Run) -> float:
    """The grid's best validation value: its selected replica's minimum over
    the run (the population minimum where no per-replica curves are recorded)."""
    if grid.val is not None and grid.selected is not None:
        return float(np.nanmin(grid.val[:, grid.selected]))
    return float(np.nanmin(grid.val_best))


def seed_quantities(run: Run, target: float, val_scale: float) -> dict[str, Any]:
    """One run's quantities (None where the record lacks the curve or, for the
    steps, where the run never reaches ``target``)."""
    q: dict[str, Any] = dict.fromkeys(k for k, *_ in QUANTITIES)
    q["test_error"] = None if run.test_error is None else 100 * run.test_error
    q["steps_population"] = first_reach(run.step, run.val_best, target)
    if run.val is not None and run.selected is not None:
        sel = run.val[:, run.selected]
        q["steps_selected"] = first_reach(run.step, sel, target)
        q["val_rise_selected"] = _scaled(rise(sel), val_scale)
        q["val_rise_mean"] = _scaled(rise(_population_mean(run.val)), val_scale)
    if run.test is not None and run.selected is not None:
        q["test_rise_selected"] = _scaled(rise(run.test[:, run.selected]), 100)
        q["test_rise_mean"] = _scaled(rise(_population_mean(run.test)), 100)
    return q


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def recorded(run: Run) -> set[str]:
    """The quantities a run's record can give (censored steps included)."""
    keys = {"test_error", "steps_population"}
    if run.val is not None and run.selected is not None:
        keys |= {"steps_selected", "val_rise_selected", "val_rise_mean"}
    if run.test is not None and run.selected is not None:
        keys |= {"test_rise_selected", "test_rise_mean"}
    return keys


# --- paired differences -----------------------------------------------------


def paired(pt: list, grid: list) -> dict[str, Any]:
    """PT − grid over the seeds where both have a value.

    Returns n (paired seeds), mean, std, sem (s.e. = std(ddof=1)/sqrt(n); None
    for n < 2), pt_lower (seeds with PT below the grid), the censored counts
    (seeds where PT's or the grid's value is None) and ``sign``: -1 (PT lower
    beyond 2 s.e.), +1 (higher beyond 2 s.e.), 0 (within noise, or no
    difference on any seed: ``identical``), None (fewer than 2 paired seeds).
    """
    both = [
        (p, g) for p, g in zip(pt, grid, strict=True) if p is not None and g is not None
    ]
    diff = np.array([p - g for p, g in both], np.float64)
    n = int(diff.size)
    out: dict[str, Any] = {
        "n": n,
        "seeds": len(pt),
        "pt_censored": sum(p is None for p in pt),
        "grid_censored": sum(g is None for g in grid),
        "mean": float(diff.mean()) if n else None,
        "std": float(diff.std(ddof=1)) if n > 1 else None,
        "sem": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "pt_lower": int((diff < 0).sum()),
        "equal": int((diff == 0).sum()),
        "identical": bool(n and not diff.any()),
        "diffs": diff.tolist(),
    }
    if n < 2:
        out["sign"] = None
    elif out["identical"] or abs(out["mean"]) <= 2 * out["sem"]:
        out["sign"] = 0
    else:
        out["sign"] = int(np.sign(out["mean"]))
    return out


def verdict(claim: str, stats: list[dict | None]) -> str:
    """A claim's verdict in one setting, from its quantities' paired differences.

    Beyond 2 s.e. in one direction only: that direction; in both: "mixed";
    else "within noise" ("no difference" where PT and the grid are equal on
    every paired seed). For steps, PT never reaching the grid's best on all
    but at most one seed reads "not faster"; censored seeds are named.
    """
    lower, higher = WORDS[claim]
    stats = [s for s in stats if s is not None]
    if not stats:
        return "not recorded"
    decided = [s["sign"] for s in stats if s["sign"] is not None]
    never = max(s["pt_censored"] for s in stats)
    seeds = max(s["seeds"] for s in stats)
    if not decided:
        if claim == "faster" and never >= 2 and never > seeds - 2:
            return (
                f"not faster: PT never reaches the grid's best on {never}/{seeds} seeds"
            )
        return "no verdict (< 2 paired seeds)"
    if -1 in decided and 1 in decided:
        text = "mixed (both directions beyond 2 s.e.)"
    elif -1 in decided:
        text = f"{lower} beyond 2 s.e."
    elif 1 in decided:
        text = f"{higher} beyond 2 s.e."
    elif all(s["identical"] for s in stats if s["sign"] is not None):
        text = "no difference"
    else:
        text = "within noise"
    if claim == "faster" and never:
        text += f"; PT never reaches it on {never}/{seeds} seeds"
    return text


def analyse(setting: Setting) -> dict[str, Any]:
    """Per-seed quantities and paired differences of one setting."""
    val_scale = 100.0 if setting.metric == "error" else 1.0
    runs = [r for pair in setting.runs.values() for r in pair.values()]
    available = set.union(*(recorded(r) for r in runs))
    per_seed = {}
    columns: dict[str, dict[str, list]] = {k: {"pt": [], "grid": []} for k in KEYS}
    for seed, pair in setting.runs.items():
        target = target_of(pair["grid"])
        seed_q = {
            m: seed_quantities(pair[m], target, val_scale) for m in ("pt", "grid")
        }
        per_seed[seed] = {"target": target, **seed_q}
        for key in KEYS:
            for m in ("pt", "grid"):
                columns[key][m].append(seed_q[m][key])
    diffs = {
        key: paired(columns[key]["pt"], columns[key]["grid"])
        if key in available
        else None
        for key in KEYS
    }
    grid_mean = {
        key: float(np.mean([v for v in columns[key]["grid"] if v is not None]))
        if any(v is not None for v in columns[key]["grid"]) else None
        for key in KEYS
    }  # fmt: skip
    verdicts = {
        claim: verdict(claim, [diffs[k] for k, _, _, c in QUANTITIES if c == claim])
        for claim in CLAIMS
    }
    return {
        "name": setting.name,
        "label": setting.label,
        "validation_metric": setting.metric,
        "val_unit": "points" if setting.metric == "error" else "nats",
        "num_steps": setting.num_steps,
        "first_round_step": int(min(r.step[0] for r in runs)),
        "seeds": sorted(setting.runs),
        "unpaired_seeds": setting.unpaired,
        "per_seed": per_seed,
        "grid_mean": grid_mean,
        "paired": diffs,
        "verdicts": verdicts,
    }


# --- outputs ----------------------------------------------------------------


def _seeds_cell(a: dict) -> str:
    """The paired seeds' count, and the seeds left out (a run or a file missing)."""
    left_out = a.get("unpaired_seeds") or []
    count = str(len(a["seeds"]))
    return f"{count} (**left out: {left_out}**)" if left_out else count


def _digits(a: dict, key: str) -> int:
    if key.startswith("steps"):
        return 0
    if key.startswith("val") and a["validation_metric"] == "loss":
        return 4
    return 2


def _unit(a: dict, key: str) -> str:
    if key.startswith("steps"):
        return "steps"
    return a["val_unit"] if key.startswith("val") else "points"


def _fmt(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def _cell(a: dict, key: str, censored: bool = False) -> str:
    stats, digits = a["paired"][key], _digits(a, key)
    if stats is None:
        return "–"
    if stats["n"] == 0:
        text = "–"
    elif stats["n"] == 1:
        text = f"{_fmt(stats['mean'], digits)} (n = 1)"
    else:
        text = f"{_fmt(stats['mean'], digits)} ± {stats['sem']:.{digits}f}"
        if stats["sign"]:
            text = f"**{text}**"
        if stats["n"] < stats["seeds"]:
            text += f" ({stats['n']}/{stats['seeds']})"
    if censored and stats["pt_censored"]:
        text += f", PT never: {stats['pt_censored']}"
    return text


def _quote(a: dict, claim: str) -> str:
    """A setting's label and its differences beyond 2 s.e. for ``claim``."""
    if a["verdicts"][claim].startswith("not faster"):
        return f"{a['label']} ({a['verdicts'][claim].split(': ', 1)[1]})"
    hits = [
        f"{TITLES[k]} {_fmt(a['paired'][k]['mean'], _digits(a, k))} ± "
        f"{a['paired'][k]['sem']:.{_digits(a, k)}f} {_unit(a, k)}, "
        f"n = {a['paired'][k]['n']}"
        for k, _, _, c in QUANTITIES
        if c == claim and a["paired"][k] is not None and a["paired"][k]["sign"]
    ]
    return f"{a['label']} ({'; '.join(hits)})"


def sentences(analyses: list[dict]) -> list[str]:
    """One sentence per claim: what holds and what does not, from the analyses."""
    out = []
    for claim, title in CLAIMS.items():
        lower, higher = WORDS[claim]
        verdicts = [a["verdicts"][claim] for a in analyses]
        measured = [
            a for a, v in zip(analyses, verdicts, strict=True) if v != "not recorded"
        ]

        def group(*prefixes, measured=measured, claim=claim):
            return [a for a in measured if a["verdicts"][claim].startswith(prefixes)]

        favour, against = group(lower), group(higher, "not faster")
        parts = [
            f"**{title}**, measured in {len(measured)} of {len(analyses)} settings: "
            f"{lower} beyond 2 s.e. in {len(favour)}"
        ]
        if favour:
            parts[0] += " (" + "; ".join(_quote(a, claim) for a in favour) + ")"
        worse = (
            "PT slower or never reaching the grid's best"
            if claim == "faster"
            else higher
        )
        parts.append(f"{worse} in {len(against)}")
        if against:
            parts[-1] += " (" + "; ".join(_quote(a, claim) for a in against) + ")"
        for name, prefix in (
            ("mixed", "mixed"), ("within noise", "within noise"),
            ("no difference on any seed", "no difference"),
            ("no verdict (< 2 paired seeds)", "no verdict"),
        ):  # fmt: skip
            count = len(group(prefix))
            if count:
                parts.append(f"{name} in {count}")
        text = ", ".join(parts) + "."
        if claim == "faster":
            steps = [a["paired"]["steps_selected"] for a in measured]
            steps = [s for s in steps if s is not None]
            text += (
                f" PT's selected replica never reaches the grid's best validation value "
                f"on {sum(s['pt_censored'] for s in steps)} of "
                f"{sum(s['seeds'] for s in steps)} seeds (censored, not averaged)."
            )
        out.append(text)
    return out


def table(analyses: list[dict]) -> str:
    lines = [
        "<!-- generated by python -m experiments.claims; do not edit -->",
        "PT − grid, paired over seeds, mean ± s.e. (s.e. = std/√n; **bold**: beyond "
        "2 s.e.; (k/n): k paired seeds of n). *Selected*: the replica a run reports "
        "(lowest final validation loss), followed over the run. Steps: the first "
        "evaluated step at which the grid's best validation value (its selected "
        "replica's minimum over the run; compare: the best replica per round, the "
        "only curve recorded) is reached; a run that never reaches it is censored "
        "(PT never: count). Rise: final value minus the minimum over the run. "
        "Validation: loss (nats), or error (points) where marked *err*; test error "
        "in points; –: not recorded.",
        "",
    ]
    lines += [f"- {s}" for s in sentences(analyses)]
    lines += [
        "",
        "| setting | seeds | final test error | steps, selected | steps, population "
        "min | faster? |",
        "|---|---|---|---|---|---|",
    ]
    for a in analyses:
        err = " *err*" if a["validation_metric"] == "error" else ""
        lines.append(
            f"| {a['label']}{err} | {_seeds_cell(a)} | {_cell(a, 'test_error')} | "
            f"{_cell(a, 'steps_selected', True)} | "
            f"{_cell(a, 'steps_population', True)} | {a['verdicts']['faster']} |"
        )
    lines += [
        "",
        "| setting | grid's rise, selected: validation / test | validation rise, "
        "selected | validation rise, mean | test-error rise, selected | test-error "
        "rise, mean | overfits less? |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in analyses:
        err = " *err*" if a["validation_metric"] == "error" else ""
        g = a["grid_mean"]
        grid = " / ".join(
            "–" if g[k] is None else f"{g[k]:.{_digits(a, k)}f}"
            for k in ("val_rise_selected", "test_rise_selected")
        )
        lines.append(
            f"| {a['label']}{err} | {grid} | {_cell(a, 'val_rise_selected')} | "
            f"{_cell(a, 'val_rise_mean')} | {_cell(a, 'test_rise_selected')} | "
            f"{_cell(a, 'test_rise_mean')} | {a['verdicts']['overfit']} |"
        )
    return "\n".join(lines) + "\n"


def plot(analyses: list[dict], path: Path) -> None:
    """Paired differences ± 2 s.e., one panel per quantity, one row per setting.

    Steps are shown as a percentage of the run's steps; the validation panels
    show the settings whose validation metric is the loss (nats) only.
    """
    fig, axes = figure(
        len(QUANTITIES), (2.7 * len(QUANTITIES) + 2.5, 0.3 * len(analyses) + 1.6)
    )
    labels = [
        a["label"] + (" (err)" if a["validation_metric"] == "error" else "")
        for a in analyses
    ]
    y = np.arange(len(analyses))[::-1]
    for ax, (key, title, unit, _) in zip(axes, QUANTITIES, strict=True):
        for yi, a in zip(y, analyses, strict=True):
            s = a["paired"][key]
            if (
                s is None
                or s["n"] < 2
                or (unit == "val" and a["validation_metric"] != "loss")
            ):
                continue
            scale = 100.0 / a["num_steps"] if unit == "steps" else 1.0
            color = {-1: "tab:green", 1: "tab:red"}.get(s["sign"], "tab:gray")
            ax.errorbar(
                s["mean"] * scale, yi, xerr=2 * s["sem"] * scale, fmt="o", color=color,
                ms=4, capsize=2,
            )  # fmt: skip
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_ylim(-0.5, len(analyses) - 0.5)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(
            {"steps": "PT − grid, % of the run", "points": "PT − grid, points",
             "val": "PT − grid, nats"}[unit], fontsize=8,
        )  # fmt: skip
        ax.set_yticks(y)
        ax.set_yticklabels(labels if ax is axes[0] else [], fontsize=6)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="y", lw=0.3, alpha=0.5)
    fig.suptitle(
        "The paper's claims: PT − grid, paired over seeds, mean ± 2 s.e. (green: PT "
        "better beyond 2 s.e., red: worse; < 2 paired seeds: not drawn)", fontsize=9,
    )  # fmt: skip
    save_figure(fig, path)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out or None


def inputs(settings: list[Setting], records_dir: Path) -> list[dict[str, Any]]:
    """The files read: path, the commits that produced their runs, and the
    commit that last changed each file (None: not committed)."""
    records_dir = Path(records_dir).resolve()
    root = Path(_git(["rev-parse", "--show-toplevel"], records_dir) or records_dir)
    out = []
    for setting in settings:
        files = []
        for path in setting.files:
            path = Path(path).resolve()
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = path.as_posix()
            committed = _git(["log", "-1", "--format=%H", "--", rel], root)
            files.append({"path": rel, "committed_in": committed})
        out.append(
            {"setting": setting.name, "produced_at": sorted(setting.produced_at),
             "files": files}
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records-dir", type=Path, default=RECORDS_DIR,
        help="where the records are read (default: the committed experiments/results)",
    )  # fmt: skip
    add_output_args(parser, "claims")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.records_dir)
    except ValueError as err:  # records of other settings in one folder
        parser.error(f"--records-dir {args.records_dir}: {err}")
    warn_dirty({c for s in settings for c in s.produced_at}, "the claims' table")
    analyses = [analyse(s) for s in settings]
    payload = {
        "provenance": provenance(outputs=output_dirs(args)),
        "inputs": inputs(settings, args.records_dir),
        "definitions": __doc__,
        "settings": analyses,
        "sentences": sentences(analyses),
    }
    write_outputs(args, payload, table(analyses), lambda p: plot(analyses, p))
    return payload


if __name__ == "__main__":
    main()
