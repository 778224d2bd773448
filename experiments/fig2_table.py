"""Writes ``experiments/results/fig2_table.md`` from the Fig. 2 result files.

Two kinds of result files are read; nothing is typed in by hand:

- the per-seed files of the authors' protocol,
  ``fig2/<setting>/seed<k>_<pt|grid>.json`` (:mod:`experiments.fig2_common`),
  merged per setting: every file of a setting must record the same config
  and protocol, else this script stops and names the difference. A figure per
  setting is written to ``fig2/<setting>.png``;
- the earlier one-file-per-experiment results ``fig2_*.json`` (library
  dropout temperature, lr step at the burn-in, no fixed dropout in the lr
  runs, 1000 validation examples, ``--scale`` shrinking the interval), in a
  table of their own.

Both statistics are reported, labelled, for PT and the grid (the same ladder
without exchanges), mean ± std over the seeds that have both:

- *ours*: the final test error of the replica with the lowest final
  validation loss (validation-selected, final);
- *the authors'*: the minimum over time of the test error of the replica
  whose test error gets lowest, curves Gaussian-smoothed (sigma = 3
  evaluation points) first (test-selected, minimum over time: optimistic; the
  statistic behind the paper's numbers).

It also writes ``fig2_summary.md`` beside the table: the authors'-protocol
verdicts alone, for the README (``python -m experiments.update_readme``).

    python -m experiments.fig2_table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import (
    RESULTS_DIR,
    check_same_setting,
    fmt_mean_std,
    mean_std,
    short_commit,
    warn_dirty,
)
from experiments.fig2_common import (
    AUTHORS_SIGMA,
    FIG2_DIR,
    KINDS,
    authors_statistic,
    plot_experiment,
    shared_part,
)

PAPER = {  # DESIGN.md section 2b, read off the paper's figures (PT vs best grid)
    "fig2_lenet_emnist_letters_dropout": "5.65 vs 5.8",
    "fig2_lenet_cifar10_dropout": "22.3 vs 23.0",
    "fig2_resnet20": "9.0 vs 9.2",
    "fig2_resnet44": "8.2 vs 8.4",
}


def paper_numbers(name: str) -> str:
    """The paper's PT vs grid for a result stem (a suffix marks a rerun at other scale)."""
    name = name.replace("fashion_mnist", "emnist_letters")
    return next((v for k, v in PAPER.items() if name.startswith(k)), "–")


def machine_name(provenance: dict) -> str:
    """The accelerator a run used, else its CPU and instruction set, from its
    provenance (XLA:CPU's results differ in the last bits between instruction
    sets, so a CPU is named with its own: ``AMD EPYC (CPU, avx512)``)."""
    machine = provenance.get("machine") or {}
    devices = machine.get("devices") or []
    if machine.get("backend") not in (None, "cpu") and devices:
        return str(devices[0])
    isa = machine.get("cpu_isa") or "ISA unrecorded"
    return f"{machine.get('cpu', 'unknown')} (CPU, {isa})"


def selected_replica_moved(run: dict, num_steps: int) -> bool:
    """Whether PT's selected replica ever trained away from its first rung.

    ``run["rungs"][k]`` holds from ``run["step"][k]`` on, so an exchange at the
    last step changes no weights. A replica that never trained elsewhere is
    bit-identical to its grid twin (same initial weights, batches and dropout
    masks), so its seed is a tie by construction.
    """
    trained = np.asarray(run["step"]) < num_steps
    path = np.asarray(run["rungs"])[trained, run["best_replica"]]
    return bool(np.any(path != run["initial_rungs"][run["best_replica"]]))


def authors_value(run: dict) -> float:
    """The authors' statistic of one run: recorded, else from its curves."""
    stat = run.get("authors_statistic")
    if stat is not None and stat.get("value") is not None:
        return float(stat["value"])
    curves = np.asarray(run["test_error_by_replica"], np.float64)
    return authors_statistic(curves, AUTHORS_SIGMA)["value"]


def merge_setting(folder: Path) -> dict[str, Any]:
    """The per-seed files of one setting as one payload (``runs``: kind -> list).

    Raises:
        ValueError: files of the folder that record different configs or
            protocols, or two files for one seed and kind.
    """
    files = sorted(folder.glob("seed*_*.json"))
    if not files:
        raise ValueError(f"no seed*_<kind>.json file in {folder}")
    records = [(path, json.loads(path.read_text())) for path in files]
    check_same_setting([(path, shared_part(res)) for path, res in records], folder)
    reference = shared_part(records[0][1])
    stand_in = records[0][1].get("stand_in")
    runs: dict[str, dict[int, dict]] = {kind: {} for kind in KINDS}
    commits, machines = set(), set()
    for _, res in records:
        kind, seed = res["kind"], int(res["seed"])
        if seed in runs[kind]:
            raise ValueError(f"two {kind} results for seed {seed} in {folder}")
        runs[kind][seed] = res["run"]
        commits.add(res["provenance"].get("git_commit", "unknown"))
        machines.add(machine_name(res["provenance"]))
    warn_dirty(commits, f"the setting {folder.name}")
    paired = sorted(set(runs["pt"]) & set(runs["grid"]))
    return {
        **reference,
        "stand_in": stand_in,
        "name": folder.name,
        "paired_seeds": paired,
        "unpaired": {kind: sorted(set(runs[kind]) - set(paired)) for kind in KINDS},
        "commits": sorted(commits),
        "machines": sorted(machines),
        "runs": {kind: [runs[kind][s] for s in paired] for kind in KINDS},
    }


def _statistics(pt_runs: list[dict], grid_runs: list[dict]) -> dict[str, Any]:
    ours_pt = np.array([r["best_test_error"] for r in pt_runs], np.float64)
    ours_grid = np.array([r["best_test_error"] for r in grid_runs], np.float64)
    auth_pt = np.array([authors_value(r) for r in pt_runs], np.float64)
    auth_grid = np.array([authors_value(r) for r in grid_runs], np.float64)
    accepted = sum(np.sum(r["accepted"]) for r in pt_runs)
    proposed = sum(np.sum(r["proposed"]) for r in pt_runs)
    return {
        "ours": (ours_pt, ours_grid),
        "authors": (auth_pt, auth_grid),
        "acceptance": accepted / proposed if proposed else float("nan"),
    }


def _cells(pt: np.ndarray, grid: np.ndarray) -> list[str]:
    diff = pt - grid
    return [
        fmt_mean_std(pt, 100),
        fmt_mean_std(grid, 100),
        fmt_mean_std(diff, 100),
        f"{int(np.sum(diff < 0))}/{len(pt)}",
    ]


def verdict(name: str, label: str, pt: np.ndarray, grid: np.ndarray) -> str:
    """One plain-words line: does PT beat the grid by this statistic?

    A paired mean difference beyond two standard errors (over seeds) is a gain
    for PT, or the other way a loss; a smaller one is seed noise. The ± is the
    standard deviation of the paired differences, as in the tables. One seed
    gives no verdict: without a spread no difference can be told from noise.
    """
    diff = pt - grid
    if len(pt) < 2:
        return (
            f"{name} ({label}): one seed so far, no verdict: "
            f"PT {100 * np.mean(pt):.2f}% vs grid {100 * np.mean(grid):.2f}%"
        )
    wins = f"PT wins on {int(np.sum(diff < 0))} of {len(pt)} seeds"
    mean_diff, spread = mean_std(100 * diff)
    beyond_noise = abs(mean_diff) > 2 * spread / np.sqrt(len(pt))
    errors = f"{100 * np.mean(pt):.2f}% vs {100 * np.mean(grid):.2f}%"
    size = f"{abs(mean_diff):.2f} ± {spread:.2f} points"
    if mean_diff < 0 and beyond_noise:
        return f"{name} ({label}): PT is lower by {size}, beyond 2 s.e. ({wins})"
    if mean_diff < 0:
        return (
            f"{name} ({label}): **PT does not beat the grid beyond seed noise**: "
            f"{errors}, a gain of {size} ({wins})"
        )
    if beyond_noise:
        return (
            f"{name} ({label}): **PT does not beat the grid; the grid is lower** "
            f"by {size}, beyond 2 s.e.: {errors} ({wins})"
        )
    return f"{name} ({label}): **PT does not beat the grid** here: {errors} ({wins})"


def _dataset(res: dict) -> str:
    dataset = res["dataset"]
    if res.get("stand_in"):
        dataset += " (stands in for EMNIST-letters)"
    return dataset


def _lr_schedule(schedule: dict) -> str:
    parts = []
    for item in schedule["learning_rate"]:
        lr = item["learning_rate"]
        lr = lr if isinstance(lr, str) else f"{lr:g}"
        parts.append(f"{lr} from {item['from_step']}")
    return ", ".join(parts)


def protocol_row(res: dict) -> str:
    """One row of the protocol table of a merged setting."""
    cfg, proto = res["config"], res["protocol"]
    sched = proto["schedule"]
    rule = proto.get("dropout_temperature") or "–"
    if rule == "authors":
        rule = "authors: β = p/(1−p)"
    elif rule == "library":
        rule = "library: T = 1/p"
    c_rule = proto["c_rule"]
    if c_rule == "auto":  # C tuned in the run; the paper's C is not used
        c = f"auto (target acceptance {proto['target_acceptance']:g})"
    else:
        c = f"{proto['c']:g} ({c_rule}"
        if proto["exchange_interval"] != proto["paper_exchange_interval"]:
            c += f"; tuned at interval {proto['paper_exchange_interval']}"
        c += ")"
    fixed = sched.get("fixed_dropout_rate")
    cells = [
        res["name"],
        _dataset(res),
        f"{cfg['hyperparameter']} {cfg['low']:g}–{cfg['high']:g}",
        rule,
        c,
        f"{cfg['num_steps']} ({cfg['burn_in']} + {cfg['rounds']}×"
        f"{cfg['exchange_interval']}) of {proto['paper_num_steps']}",
        _lr_schedule(sched),
        "–" if fixed is None else f"keep {1 - fixed:g}",
        proto["scheme"],
        str(proto["validation_size"]),
        f"{proto['test_curve_size']} / {proto['final_test_size']}",
        str(res.get("model", "–")),
        ", ".join(short_commit(commit) for commit in res["commits"]),
        "; ".join(res["machines"]),
    ]
    return "| " + " | ".join(cells) + " |"


def result_row(res: dict) -> tuple[str, list[str]]:
    """One row of the results table of a merged setting, and its verdicts."""
    runs, name = res["runs"], res["name"]
    stats = _statistics(runs["pt"], runs["grid"])
    attempts = sorted({int(r["exchange_attempts"]) for r in runs["pt"]})
    pending = [f"{k} seeds {v}" for k, v in res["unpaired"].items() if v]
    seeds = str(len(runs["pt"]))
    if pending:
        seeds += " (unpaired: " + "; ".join(pending) + ")"
    cells = [
        name,
        seeds,
        "–".join(map(str, attempts)) if attempts else "–",
        f"{stats['acceptance']:.2f}",
        *_cells(*stats["ours"]),
        *_cells(*stats["authors"]),
        paper_numbers(name),
    ]
    verdicts = [
        verdict(name, "ours", *stats["ours"]),
        verdict(name, "authors'", *stats["authors"]),
    ]
    return "| " + " | ".join(cells) + " |", verdicts


def legacy_row(path: Path) -> tuple[str, list[str]]:
    """One row of the earlier protocol's table and its verdicts."""
    res = json.loads(path.read_text())
    runs, cfg = res["runs"], res["config"]
    stats = _statistics(runs["pt"], runs["grid"])
    moved = sum(selected_replica_moved(r, cfg["num_steps"]) for r in runs["pt"])
    name = path.stem
    cells = [
        name,
        _dataset(res),
        f"{cfg['hyperparameter']} {cfg['low']:g}–{cfg['high']:g}",
        f"{cfg['num_steps']} ({cfg['burn_in']} + {cfg['rounds']}×{cfg['exchange_interval']})",
        f"{res['scale']:g}",
        str(cfg["batch_size"]),
        f"{res.get('eval_size') or 'all'} / {res.get('final_test_size') or 'all'}",
        str(len(runs["pt"])),
        f"{stats['acceptance']:.2f}",
        *_cells(*stats["ours"]),
        f"{moved}/{len(runs['pt'])}",
        *_cells(*stats["authors"]),
        paper_numbers(name),
    ]
    verdicts = [
        verdict(name, "ours", *stats["ours"]),
        verdict(name, "authors'", *stats["authors"]),
    ]
    return "| " + " | ".join(cells) + " |", verdicts


PROTOCOL_HEADER = (
    "| setting | dataset | ladder | dropout temperature | C (rule) | "
    "steps (first exchange + rounds×interval) of the paper's | lr (from step) | "
    "fixed dropout | proposals | validation examples | test examples "
    "(curves / final) | model | commits | machines |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)
RESULT_HEADER = (
    "| setting | seeds | exchange attempts per run | acceptance | "
    "ours: PT (%) | ours: grid (%) | ours: PT − grid | ours: PT wins | "
    "authors': PT (%) | authors': grid (%) | authors': PT − grid | "
    "authors': PT wins | paper (PT vs grid, %) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)
LEGACY_HEADER = (
    "| experiment | dataset | ladder | steps (burn-in + rounds×interval) | "
    "scale | batch | test examples (curves / final) | seeds | acceptance | "
    "ours: PT (%) | ours: grid (%) | ours: PT − grid | ours: PT wins | "
    "selected replica exchanged | authors': PT (%) | authors': grid (%) | "
    "authors': PT − grid | authors': PT wins | paper (PT vs grid, %) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)
STATISTICS = (
    "*Ours*: final test error of the replica with the lowest final validation "
    "loss (validation-selected, final). *Authors'*: minimum over time of the "
    "test error of the replica whose test error gets lowest, each replica's "
    f"per-round test-error curve Gaussian-smoothed first (σ = {AUTHORS_SIGMA:g} "
    "evaluation points, i.e. exchange rounds): test-selected and optimistic, "
    "the statistic the paper's numbers are. Both mean ± std over seeds; the "
    "grid is the same ladder with exchanges off (same split, initial weights, "
    "batches and steps); *PT wins*: seeds on which PT is strictly lower. The "
    "lines below call a paired mean difference a gain (or, for the grid, a "
    "loss) only beyond two standard errors over seeds."
)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    args = p.parse_args(argv)
    root = args.results_dir / FIG2_DIR
    settings = [
        merge_setting(d) for d in sorted(root.glob("*")) if d.is_dir()
    ] if root.is_dir() else []  # fmt: skip
    generated = "<!-- generated by python -m experiments.fig2_table; do not edit -->"
    lines = [generated]
    lines += ["**The authors' protocol** (per-seed files under "
              f"`experiments/results/{FIG2_DIR}/`):", ""]  # fmt: skip
    complete = [s for s in settings if s["paired_seeds"]]
    summary = [generated]
    if not complete:
        none_yet = (
            "No setting has a PT and a grid result for the same seed yet: "
            "these runs are pending."
        )
        lines += [none_yet, ""]
        summary += [f"The authors' protocol: {none_yet[0].lower()}{none_yet[1:]}"]
    else:
        lines += [PROTOCOL_HEADER, *(protocol_row(s) for s in complete), ""]
        lines += [RESULT_HEADER]
        verdicts = []
        for s in complete:
            row, v = result_row(s)
            lines.append(row)
            verdicts += [f"- {x}" for x in v]
            if not args.no_plots:
                plot_experiment(s, root / f"{s['name']}.png")
        lines += ["", STATISTICS, "", *verdicts, ""]
        summary += [
            "The authors' protocol, per setting (seeds with both a PT and a grid "
            "run; *ours*: validation-selected final test error, *authors'*: "
            "test-selected minimum over time):",
            "",
            *verdicts,
        ]
    pending = [
        f"- {s['name']}: {kind} only, seeds {seeds}"
        for s in settings
        for kind, seeds in s["unpaired"].items()
        if seeds
    ]
    if pending:
        summary += ["", "Runs without their twin yet:", "", *pending]
    legacy = sorted(args.results_dir.glob("fig2_*.json"))
    if legacy:
        lines += [
            "**Earlier protocol** (one file per experiment: library dropout "
            "temperature T = 1/p, lr step at the burn-in, no fixed dropout in "
            "the lr runs, exchange on the first validation examples, `--scale` "
            "shrinking the exchange interval at the paper's C):",
            "",
            LEGACY_HEADER,
        ]
        verdicts = []
        for f in legacy:
            row, v = legacy_row(f)
            lines.append(row)
            verdicts += [f"- {x}" for x in v]
        lines += [
            "",
            STATISTICS + " Here the per-round curves (and so the authors' "
            "statistic) cover the first test examples counted in the table, "
            "the final error all of them unless stated. *Selected replica "
            "exchanged*: on how many seeds PT's selected replica ever trained "
            "at another rung than its first; one that never did is the same "
            "network as its grid twin, so that seed is an exact tie. These are "
            "reduced CPU runs: not comparable to the paper's numbers.",
            "",
            *verdicts,
            "",
        ]
    text = "\n".join(lines)
    out = args.out or args.results_dir / "fig2_table.md"
    out.write_text(text)
    out.with_name("fig2_summary.md").write_text("\n".join(summary) + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
