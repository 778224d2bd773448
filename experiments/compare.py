"""Three-way comparison in one engine: parallel tempering, the grid, and PBT.

    python -m experiments.compare mnist1d --seeds 10
    python -m experiments.compare fashion_mnist --seeds 5
    python -m experiments.compare cifar10 --seeds 5

For every seed the three methods start from the same replicas (same initial
weights and learning-rate ladder), see the same batches (same run key: the batch
order and burn-in are identical) and take the same number of SGD steps per
replica:

- grid: ``pt_train(..., exchanges=False)``, the ladder with no exchanges; its
  best replica is what a grid search of M values finds;
- PT: ``pt_train`` with exchanges of the learning rate between adjacent rungs;
- PBT: ``pbt_train`` from the same ladder, truncation selection (q = 0.25),
  perturb x0.8 / x1.2 or resample (p = 0.25) from a log-uniform prior over the
  ladder's range, clipped to that range, every ``interval`` steps.

PT uses the library's defaults: C is adapted to a mean acceptance of 0.3 in
the first quarter of the rounds (``c="auto"``), with no grid run before it;
``pt_ladder`` also adapts the ladder's inner rungs. ``--c`` fixes C instead.
``--methods`` picks among grid, pt, pt_ladder, pt_random_pair, pt_even_odd
(the two exchange schemes with everything else at the defaults),
pt_target_0.2, pt_target_0.4 (other acceptance targets), pt_decay (C adapted
over the whole run: ``adapt_schedule="decay"``) and pbt.

Every seed writes its own file, ``results/compare/<name>/seed<k>.json``
(command, commit, machine); a seed whose file exists is not run again (unless
``--force``), so a long comparison can be run piece by piece
(``--seed-list 3,4``) and the table is merged from the files once every seed
is there. ``--rerun pt,pt_decay`` runs those methods again in the existing
files, keeping the other methods' runs and their provenance (after a change
that can move only them, such as the rule for an adaptive C).

Reported per method (mean ± std over seeds): test error of the replica with the
lowest final validation error; steps until the best replica's validation error
first reaches the target (the grid's mean final best validation error, so
"how soon does a method reach what the grid reaches at the end"; runs that
never reach it are counted separately); wall time of the call (seed 0, which
compiles, excluded when there is more than one seed).
"""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import tempering as tp
from experiments.common import (
    add_data_dir_arg,
    add_output_args,
    add_seeds_arg,
    check_before_running,
    figure,
    fmt_mean_std,
    load_seed_record,
    mean_std,
    output_dirs,
    provenance,
    save_figure,
    save_seed_record,
    seed_keys,
    seed_list_arg,
    seed_path,
    settings_of,
    short_commit,
    subset,
    warn_dirty,
    write_outputs,
)
from tempering.driver import best_index
from tempering.zoo import datasets as tdata
from tempering.zoo import models

# pt_train settings of each method beside the library's defaults (None: PBT).
METHODS: dict[str, dict | None] = {
    "grid": {"exchanges": False},
    "pt": {},
    "pt_ladder": {"adapt_ladder": True},
    "pt_random_pair": {"scheme": "random_pair"},
    "pt_even_odd": {"scheme": "even_odd"},
    "pt_target_0.2": {"target_acceptance": 0.2},
    "pt_target_0.4": {"target_acceptance": 0.4},
    "pt_decay": {"adapt_schedule": "decay"},
    "pbt": None,
}
DEFAULT_METHODS = ("grid", "pt", "pt_ladder", "pbt")
LABELS = {
    "grid": "independent grid",
    "pt": "parallel tempering (auto C)",
    "pt_ladder": "PT, auto C + adaptive ladder",
    "pt_random_pair": "PT, random pair",
    "pt_even_odd": "PT, even-odd",
    "pt_target_0.2": "PT, auto C, target 0.2",
    "pt_target_0.4": "PT, auto C, target 0.4",
    "pt_decay": "PT, auto C adapted over the whole run (decaying gain)",
    "pbt": "PBT",
}
# Settings a seed file must share with the run that merges it.
RUN_SETTINGS = (
    "benchmark", "steps", "interval", "burn_in", "replicas", "batch_size", "c",
    "momentum", "train_subset", "val_subset", "test_subset",
)  # fmt: skip


class Benchmark(NamedTuple):
    """Settings of one benchmark (defaults sized for a shared 2-core CPU)."""

    model: Any
    replicas: int
    lr_low: float
    lr_high: float
    steps: int
    interval: int
    burn_in: int
    seeds: int
    batch_size: int = 128
    val_subset: int | None = None  # first examples of the validation split
    test_subset: int | None = None  # first examples of the test split


BENCHMARKS = {
    "mnist1d": Benchmark(models.MLP((128, 128), 10), 8, 0.005, 0.2, 2000, 100, 200, 10),
    # About 2.8 epochs of the 54,000 training examples, 20 rounds.
    "fashion_mnist": Benchmark(
        models.lenet5_emnist(10), 4, 0.01, 0.1, 1200, 55, 100, 5
    ),
    # About 2.3 epochs of the 45,000 training examples, 20 rounds.
    "cifar10": Benchmark(
        models.lenet5_cifar10(10), 4, 0.005, 0.05, 800, 40, 0, 5, 128, 1000, 2000
    ),
}


def load(name: str, data_dir: str) -> tdata.Dataset:
    if name == "mnist1d":
        return tdata.load_mnist1d()
    return tdata.load_dataset(name, data_dir=data_dir, source="raw")


def best_test_error(state: tp.ReplicaState, val_error: np.ndarray, test) -> float:
    best = best_index(val_error)
    metrics = tp.evaluate(state, test.inputs, test.labels)
    return float(1.0 - np.asarray(metrics.accuracy)[best])


def run_method(method, args, bench, dataset, ladder, tx, seed) -> dict:
    """One method on one seed: same replicas, batches and steps as the others."""
    sample = dataset.train.inputs[:2]
    common = dict(
        train_data=dataset.train,
        validation_data=dataset.validation,
        num_steps=args.steps,
        burn_in=args.burn_in,
        batch_size=args.batch_size,
    )
    init_key, run_key = seed_keys(seed)
    state = tp.create_replicas(init_key, bench.model, tx, sample, ladder=ladder)
    start = time.perf_counter()
    settings = METHODS[method]
    if settings is None:
        low = float(ladder.values["learning_rate"].min())
        high = float(ladder.values["learning_rate"].max())
        config = tp.pbt_config(
            {"learning_rate": tp.Prior(low, high, log=True)}, fraction=0.25
        )
        result = tp.pbt_train(
            state, run_key, config=config, ready_interval=args.interval, **common
        )
        schedule = tp.best_schedule(result.history, result.summary.best_replica)
        extra = {
            "num_copies": result.summary.num_copies,
            "final_lr": result.summary.final_hyperparams["learning_rate"],
            "best_schedule": {
                "starts": schedule.starts,
                "learning_rate": schedule.values["learning_rate"],
            },
        }
    else:
        if args.c is not None:
            settings = {**settings, "c": args.c}
        result = tp.pt_train(
            state, ladder, run_key, exchange_interval=args.interval,
            **settings, **common,
        )  # fmt: skip
        history = result.history
        extra = {
            "acceptance_rate": result.summary.acceptance_rate,
            "round_trips": result.summary.round_trips,
            "c": history.c,
            "final_ladder_lr": result.summary.ladder.values["learning_rate"],
            "best_lr_path": history.hyperparams["learning_rate"][
                :, result.summary.best_replica
            ],
        }
    jax.block_until_ready(result.state.params)
    wall = time.perf_counter() - start
    val_error = 1.0 - np.asarray(result.summary.final_val_accuracy)
    return {
        "test_error": best_test_error(result.state, val_error, dataset.test),
        "best_val_error": float(np.min(val_error)),
        "curve_step": result.history.step,
        "curve_best_val_error": 1.0 - result.history.val_accuracy.max(axis=1),
        "wall_s": wall,
        **extra,
    }


def record_path(args, seed: int) -> Path:
    return seed_path(Path(args.out_dir) / "compare", args.name, seed)


def run_seed(args, bench, dataset, ladder, tx, seed: int) -> dict:
    """Runs the methods of one seed that its file lacks, and saves the file."""
    path = record_path(args, seed)
    settings = settings_of(args, *RUN_SETTINGS)
    record = load_seed_record(path, settings, args.force) or {
        "seed": seed, "settings": settings, "runs": {},
    }  # fmt: skip
    record = drop_runs(record, args.rerun)
    todo = [m for m in args.methods if m not in record["runs"]]
    for method in todo:
        run = run_method(method, args, bench, dataset, ladder, tx, seed)
        record["runs"][method] = run
        print(
            f"seed {seed} {method:14s} test err {run['test_error']:.4f} "
            f"val err {run['best_val_error']:.4f} {run['wall_s']:.1f}s",
            flush=True,
        )
    if todo:
        record.setdefault("provenance", {})[",".join(todo)] = provenance(
            [seed], outputs=output_dirs(args)
        )
        record = save_seed_record(path, record)
    return record


def drop_runs(record: dict, methods: tuple[str, ...]) -> dict:
    """The seed record without the runs of ``methods``, nor their provenance.

    A provenance entry names the methods one command ran ("grid,pt"); the
    dropped methods leave its name, and an entry left with none goes.
    """
    runs = {m: r for m, r in record["runs"].items() if m not in methods}
    kept = {}
    for names, prov in record.get("provenance", {}).items():
        left = [m for m in names.split(",") if m not in methods]
        if left:
            kept[",".join(left)] = prov
    return {**record, "runs": runs, "provenance": kept}


def steps_to_target(run: dict, target: float, final_step: int) -> float:
    """First step at which the best validation error is <= target (nan: never)."""
    steps = np.asarray(run["curve_step"])
    errors = np.asarray(run["curve_best_val_error"])
    hit = np.flatnonzero(errors <= target + 1e-9)
    if hit.size:
        return float(steps[hit[0]])
    return float(final_step) if run["best_val_error"] <= target + 1e-9 else math.nan


def summarise(runs: list[dict], methods, steps: int) -> tuple[dict, float]:
    target = float(np.mean([r["grid"]["best_val_error"] for r in runs]))
    summary = {}
    for method in methods:
        per = [r[method] for r in runs]
        reach = np.array([steps_to_target(p, target, steps) for p in per])
        walls = [p["wall_s"] for p in per]
        summary[method] = {
            "test_error": [p["test_error"] for p in per],
            "best_val_error": [p["best_val_error"] for p in per],
            "steps_to_target": reach,
            "reached": int(np.isfinite(reach).sum()),
            "wall_s": walls[1:] if len(walls) > 1 else walls,
        }
    return summary, target


def paired(summary: dict, method: str, other: str) -> dict:
    """Paired difference of test errors (method - other) over seeds, in points."""
    diff = 100 * (
        np.array(summary[method]["test_error"]) - np.array(summary[other]["test_error"])
    )
    mean, std = mean_std(diff)
    sem = std / math.sqrt(diff.size) if diff.size > 1 else math.nan
    return {
        "mean": mean, "std": std, "sem": sem,
        "lower": int((diff < 0).sum()), "equal": int((diff == 0).sum()),
        "n": int(diff.size),
        "beyond_2_sem": bool(diff.size > 1 and abs(mean) > 2 * sem),  # either way
    }  # fmt: skip


def _beyond(difference: dict) -> str:
    """``yes`` (lower beyond 2 s.e.), ``yes, higher`` or ``no`` (within noise)."""
    if not difference["beyond_2_sem"]:
        return "no"
    return "yes" if difference["mean"] < 0 else "yes, higher"


def produced_by(records: list[dict]) -> dict[str, list[str]]:
    """Method -> the commits and machines its seeds' runs came from.

    A seed file's provenance is keyed by the methods one command ran
    (``"grid,pbt"``); the commit is shown with its ``-dirty`` suffix, the
    machine is its platform's node (e.g. ``fc-v1252``) and instruction set.
    """
    found: dict[str, set[str]] = {}
    for record in records:
        for methods, prov in record["provenance"].items():
            machine = prov.get("machine", {})
            node = re.search(r"fc-v\d+", machine.get("platform", ""))
            where = node.group(0) if node else machine.get("platform", "?")
            isa = machine.get("cpu_isa") or "ISA unrecorded"
            for method in methods.split(","):
                found.setdefault(method, set()).add(
                    f"{short_commit(prov['git_commit'])} ({where}, {isa})"
                )
    return {method: sorted(places) for method, places in found.items()}


def table(
    name: str, summary: dict, target: float, runs: list[dict], desc: str,
    produced: dict[str, list[str]] | None = None,
) -> str:  # fmt: skip
    n = len(runs)
    methods = list(summary)
    lines = [
        f"**{name}**: {desc}; {n} seeds, mean ± std. Target validation error "
        f"{100 * target:.2f}% (the grid's mean final best).",
        "",
        "| method | test error of best-by-validation replica (%) | "
        "steps to target (reached) | wall time (s) |",
        "|---|---|---|---|",
    ]
    for method in methods:
        s = summary[method]
        reach = s["steps_to_target"][np.isfinite(s["steps_to_target"])]
        reach_txt = fmt_mean_std(reach, digits=0) if reach.size else "–"
        lines.append(
            f"| {LABELS[method]} | {fmt_mean_std(s['test_error'], 100)} | "
            f"{reach_txt} ({s['reached']}/{n}) | {fmt_mean_std(s['wall_s'], digits=1)} |"
        )
    if produced:
        lines += [
            "",
            "Produced at (commit, machine, instruction set): "
            + "; ".join(
                f"{LABELS[m]} {', '.join(produced[m])}"
                for m in methods
                if m in produced
            )
            + ". The wall times are each method's own, on those machines under "
            "their loads: compare them across rows only where the rows ran on "
            "one machine.",
        ]
    lines += [
        "",
        "| paired difference (points) | mean ± std | ± s.e. | lower in | beyond 2 s.e. |",
        "|---|---|---|---|---|",
    ]
    for method in methods:
        if not method.startswith("pt"):
            continue
        for other in ("grid", "pbt", "pt"):
            if other not in summary or other == method:
                continue
            d = paired(summary, method, other)
            lines.append(
                f"| {LABELS[method]} − {LABELS[other]} | {d['mean']:.2f} ± "
                f"{d['std']:.2f} | {d['sem']:.2f} | {d['lower']}/{n} "
                f"(equal {d['equal']}) | {_beyond(d)} |"
            )
    lines.append("")
    for method in methods:
        if not method.startswith("pt") or method == "grid":
            continue
        acc = np.array([r[method]["acceptance_rate"] for r in runs], np.float64)
        trips = np.array([np.sum(r[method]["round_trips"]) for r in runs], np.float64)
        final_c = np.array([r[method]["c"][-1] for r in runs], np.float64)
        barrier = np.sum(1.0 - acc, axis=1)  # Syed et al.'s Lambda-hat per seed
        lines.append(
            f"{LABELS[method]}: acceptance per adjacent pair (mean over seeds) "
            f"{np.round(np.nanmean(acc, 0), 2).tolist()}, communication barrier "
            f"{fmt_mean_std(barrier, digits=2)} (tempering.diagnostics.barrier), round "
            f"trips per run {fmt_mean_std(trips, digits=1)}, final C "
            f"{fmt_mean_std(final_c, digits=4)}."
        )
    return "\n".join(lines) + "\n"


COLORS = {
    "grid": "tab:gray", "pt": "tab:red", "pt_ladder": "tab:orange",
    "pt_random_pair": "tab:purple", "pt_even_odd": "tab:green", "pbt": "tab:blue",
    "pt_target_0.2": "tab:brown", "pt_target_0.4": "tab:pink", "pt_decay": "tab:olive",
}  # fmt: skip


def plot(name: str, runs: list[dict], summary: dict, target: float, path: Path):
    methods = list(summary)
    fig, (ax1, ax2) = figure(2, (11, 3.8))
    for method in methods:
        curves = np.array([r[method]["curve_best_val_error"] for r in runs])
        steps = np.asarray(runs[0][method]["curve_step"])
        mean, std = curves.mean(0), curves.std(0)
        color = COLORS[method]
        ax1.plot(steps, 100 * mean, color=color, label=method)
        ax1.fill_between(
            steps, 100 * (mean - std), 100 * (mean + std), color=color, alpha=0.15
        )
    ax1.axhline(100 * target, color="k", ls=":", lw=1, label="target")
    ax1.set_xlabel("SGD steps per replica")
    ax1.set_ylabel("best validation error (%)")
    ax1.set_title(f"{name}: best replica, mean ± std over seeds")
    ax1.legend(fontsize=8)
    data = [100 * np.asarray(summary[m]["test_error"]) for m in methods]
    ax2.boxplot(data, tick_labels=methods)
    for i, d in enumerate(data):
        ax2.scatter(np.full(d.size, i + 1), d, color=COLORS[methods[i]], s=12, zorder=3)
    ax2.tick_params(axis="x", labelsize=8)
    ax2.set_ylabel("test error of best-by-validation replica (%)")
    ax2.set_title(f"{len(runs)} seeds")
    save_figure(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    add_seeds_arg(parser, None)
    parser.add_argument(
        "--seed-list", default=None,
        help="run only these seeds (e.g. 3,4); the table is merged once all are there",
    )  # fmt: skip
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--force", action="store_true", help="rerun existing seeds")
    parser.add_argument(
        "--rerun", default="",
        help="methods to run again in existing seed files (e.g. pt,pt_decay after a "
        "change that moves them); the others' runs and provenance are kept",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--interval", type=int, default=None)
    parser.add_argument("--burn-in", type=int, default=None)
    parser.add_argument("--replicas", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--c", type=float, default=None, help="default: c='auto'")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--val-subset", type=int, default=None)
    parser.add_argument("--test-subset", type=int, default=None)
    add_data_dir_arg(parser)
    add_output_args(parser, None)
    args = parser.parse_args(argv)
    args.name = args.name or f"compare_{args.benchmark}"
    args.methods = tuple(args.methods.split(","))
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or "grid" not in args.methods:
        parser.error(f"--methods must include grid and name only {sorted(METHODS)}")
    args.rerun = tuple(m for m in args.rerun.split(",") if m)
    if set(args.rerun) - set(args.methods):
        parser.error(f"--rerun must name only methods of --methods {args.methods}")
    bench = BENCHMARKS[args.benchmark]
    for field in ("seeds", "steps", "interval", "burn_in", "replicas", "batch_size"):
        if getattr(args, field) is None:
            setattr(args, field, getattr(bench, field))
    for field in ("val_subset", "test_subset"):
        if getattr(args, field) is None:
            setattr(args, field, getattr(bench, field))
    check_args(parser, args)
    return args


def todo_seeds(args, parser: argparse.ArgumentParser | None = None) -> list[int]:
    """The seeds this call runs: ``--seed-list`` (checked), else 0..N-1."""
    if args.seed_list is None:
        return list(range(args.seeds))
    parser = parser or argparse.ArgumentParser(prog="experiments.compare")
    return seed_list_arg(parser, args.seed_list, args.seeds)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument problem, as ``parser.error``, before any data or training:
    sizes, the seed list, the data folder, and the settings of the seed files
    that this run would merge (a file of other settings is never merged)."""
    for flag in ("steps", "interval", "replicas", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag.replace('_', '-')} must be >= 1")
    for flag in ("train_subset", "val_subset", "test_subset"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"argument --{flag.replace('_', '-')} must be >= 1")
    if args.burn_in < 0 or args.steps - args.burn_in < args.interval:
        parser.error(
            f"--steps {args.steps} leaves {args.steps - args.burn_in} steps after "
            f"--burn-in {args.burn_in}, less than one --interval ({args.interval}) "
            "(or a negative --burn-in): give more --steps, a shorter --burn-in or "
            "--interval"
        )
    if args.c is not None and not args.c > 0:
        parser.error(
            f"argument --c must be > 0 (or left out for c='auto'), got {args.c}"
        )
    todo = todo_seeds(args, parser)
    checked = [s for s in range(args.seeds) if not (args.force and s in todo)]
    check_before_running(  # a seed to run again (--force) may hold anything
        parser, args, [record_path(args, s) for s in checked],
        settings_of(args, *RUN_SETTINGS),
    )  # fmt: skip


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    bench = BENCHMARKS[args.benchmark]
    dataset = load(args.benchmark, args.data_dir)
    dataset = dataset._replace(
        train=subset(dataset.train, args.train_subset),
        validation=subset(dataset.validation, args.val_subset),
        test=subset(dataset.test, args.test_subset),
    )
    ladder = tp.geometric_ladder(
        "learning_rate", bench.lr_low, bench.lr_high, args.replicas
    )
    tx = tp.sgd(bench.lr_low, momentum=args.momentum)
    seeds = list(range(args.seeds))
    for seed in todo_seeds(args):
        run_seed(args, bench, dataset, ladder, tx, seed)
    missing = [s for s in seeds if not record_path(args, s).exists()]
    if missing:
        print(f"seeds {missing} not run yet: no table")
        return None
    # every merged seed through the settings check, not only those run here
    settings = settings_of(args, *RUN_SETTINGS)
    records = [load_seed_record(record_path(args, s), settings) for s in seeds]
    lacking = [r["seed"] for r in records if set(args.methods) - set(r["runs"])]
    if lacking:
        print(f"seeds {lacking} lack some of {args.methods}: no table")
        return None
    warn_dirty(
        [p["git_commit"] for r in records for p in r["provenance"].values()],
        f"{args.name}'s table",
    )
    runs = [r["runs"] for r in records]
    summary, target = summarise(runs, args.methods, args.steps)
    desc = (
        f"{type(bench.model).__name__}, {args.replicas} replicas, geometric lr ladder "
        f"{bench.lr_low}–{bench.lr_high}, SGD momentum {args.momentum}, batch "
        f"{args.batch_size}, {args.steps} steps per replica (burn-in {args.burn_in}), "
        f"exchange / PBT ready interval {args.interval}, "
        + (
            "C adapted (c='auto', pt_train defaults)"
            if args.c is None
            else f"C = {args.c}"
        )
        + f"; train / validation / test examples {len(dataset.train.labels)} / "
        f"{len(dataset.validation.labels)} / {len(dataset.test.labels)}"
    )
    markdown = table(
        args.benchmark, summary, target, runs, desc, produced=produced_by(records)
    )
    payload = {
        "provenance": provenance(seeds, outputs=output_dirs(args)),
        "seed_provenance": {r["seed"]: r["provenance"] for r in records},
        "benchmark": args.benchmark,
        "settings": settings_of(args),
        "description": desc,
        "ladder_learning_rate": np.asarray(ladder.values["learning_rate"]),
        "target_val_error": target,
        "summary": summary,
        "paired": {
            f"{m}-{o}": paired(summary, m, o)
            for m in args.methods
            if m.startswith("pt")
            for o in ("grid", "pbt", "pt")
            if o in summary and o != m
        },  # fmt: skip
        "runs": runs,
        "table": markdown,
    }
    write_outputs(
        args,
        payload,
        markdown,
        lambda p: plot(args.benchmark, runs, summary, target, p),
    )
    return payload


if __name__ == "__main__":
    main()
