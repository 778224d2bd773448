"""Three-way comparison in one engine: parallel tempering, the grid, and PBT.

    python -m experiments.compare mnist1d --seeds 10
    python -m experiments.compare fashion_mnist --seeds 5
    python -m experiments.compare cifar10 --seeds 3

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

C rule. C is set once per benchmark from the grid run of the first seed: with
``x`` the median over rounds and adjacent rung pairs of
``|(beta_r - beta_{r+1}) (L_r - L_{r+1})|``, ``C = ln(1 / a) / x`` with
``a = 0.3``, so that a typical unfavourable swap is accepted with probability
0.3 (favourable ones always are). ``--c`` overrides it.

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
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import tempering as tp
from experiments.common import (
    DATA_DIR_ENV,
    default_data_dir,
    fmt_mean_std,
    provenance,
    save_result,
)
from tempering import data as tdata
from tempering import models
from tempering.driver import best_index
from tempering.exchange import SCHEMES

ACCEPT_TARGET = 0.3
METHODS = ("grid", "pt", "pbt")


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
    "fashion_mnist": Benchmark(models.lenet5_emnist(10), 4, 0.01, 0.1, 400, 40, 80, 5),
    "cifar10": Benchmark(
        models.lenet5_cifar10(10), 4, 0.005, 0.05, 150, 30, 30, 3, 128, 1000, 2000
    ),
}


def load(name: str, data_dir: str) -> tdata.Dataset:
    if name == "mnist1d":
        return tdata.load_mnist1d()
    return tdata.load_dataset(name, data_dir=data_dir, source="raw")


def calibrate_c(history: tp.PTHistory, ladder: tp.Ladder) -> float:
    """C such that a median unfavourable swap in the grid is accepted w.p. 0.3."""
    betas = np.asarray(ladder.betas)
    order = np.argsort(history.initial_rungs)  # replica at rung r (never moves)
    losses = history.val_loss[:, order]  # (R, M) by rung
    gaps = np.abs((betas[:-1] - betas[1:]) * (losses[:, :-1] - losses[:, 1:]))
    typical = float(np.median(gaps[np.isfinite(gaps)]))
    return math.log(1.0 / ACCEPT_TARGET) / max(typical, 1e-12)


def best_test_error(state: tp.ReplicaState, val_error: np.ndarray, test) -> float:
    best = best_index(val_error)
    metrics = tp.evaluate(state, test.inputs, test.labels)
    return float(1.0 - np.asarray(metrics.accuracy)[best])


def run_seed(args, bench: Benchmark, dataset, ladder, tx, seed: int, c) -> dict:
    sample = dataset.train.inputs[:2]
    common = dict(
        train_data=dataset.train,
        validation_data=dataset.validation,
        num_steps=args.steps,
        burn_in=args.burn_in,
        batch_size=args.batch_size,
    )
    init_key, run_key = jax.random.key(seed), jax.random.key(10_000 + seed)
    out = {"seed": seed}
    for method in METHODS:
        state = tp.create_replicas(init_key, bench.model, tx, sample, ladder=ladder)
        start = time.perf_counter()
        if method == "pbt":
            low, high = (
                float(ladder.values["learning_rate"].min()),
                float(ladder.values["learning_rate"].max()),
            )
            config = tp.pbt_config(
                {"learning_rate": tp.Prior(low, high, log=True)}, fraction=0.25
            )
            result = tp.pbt_train(
                state, run_key, config=config, ready_interval=args.interval, **common
            )
            extra = {
                "num_copies": result.summary.num_copies,
                "final_lr": result.summary.final_hyperparams["learning_rate"],
            }
            schedule = tp.best_schedule(result.history, result.summary.best_replica)
            extra["best_schedule"] = {
                "starts": schedule.starts,
                "learning_rate": schedule.values["learning_rate"],
            }
        else:
            if method == "pt" and c is None:
                raise RuntimeError("C is calibrated from the grid: run the grid first")
            result = tp.pt_train(
                state,
                ladder,
                run_key,
                exchange_interval=args.interval,
                c=c if method == "pt" else 1.0,
                scheme=args.scheme,
                exchanges=method == "pt",
                **common,
            )
            extra = {
                "acceptance_rate": result.summary.acceptance_rate,
                "round_trips": result.summary.round_trips,
            }
            if method == "grid" and c is None:
                c = calibrate_c(result.history, ladder)
        jax.block_until_ready(result.state.params)
        wall = time.perf_counter() - start
        val_error = 1.0 - np.asarray(result.summary.final_val_accuracy)
        out[method] = {
            "test_error": best_test_error(result.state, val_error, dataset.test),
            "best_val_error": float(np.min(val_error)),
            "curve_step": result.history.step,
            "curve_best_val_error": 1.0 - result.history.val_accuracy.max(axis=1),
            "wall_s": wall,
            **extra,
        }
        print(
            f"seed {seed} {method:4s} test err {out[method]['test_error']:.4f} "
            f"val err {out[method]['best_val_error']:.4f} {wall:.1f}s",
            flush=True,
        )
    out["c"] = c
    return out


def steps_to_target(run: dict, target: float, final_step: int) -> float:
    """First step at which the best validation error is <= target (nan: never)."""
    steps = np.asarray(run["curve_step"])
    errors = np.asarray(run["curve_best_val_error"])
    hit = np.flatnonzero(errors <= target + 1e-9)
    if hit.size:
        return float(steps[hit[0]])
    return float(final_step) if run["best_val_error"] <= target + 1e-9 else math.nan


def summarise(runs: list[dict], steps: int) -> tuple[dict, float]:
    target = float(np.mean([r["grid"]["best_val_error"] for r in runs]))
    summary = {}
    for method in METHODS:
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


def table(name: str, summary: dict, target: float, runs: list[dict], desc: str) -> str:
    n = len(runs)
    lines = [
        f"**{name}**: {desc}; {n} seeds, mean ± std. Target validation error "
        f"{100 * target:.2f}% (the grid's mean final best).",
        "",
        "| method | test error of best-by-validation replica (%) | "
        "steps to target (reached) | wall time (s) |",
        "|---|---|---|---|",
    ]
    labels = {"grid": "independent grid", "pt": "parallel tempering", "pbt": "PBT"}
    for method in METHODS:
        s = summary[method]
        reach = s["steps_to_target"][np.isfinite(s["steps_to_target"])]
        reach_txt = fmt_mean_std(reach, digits=0) if reach.size else "–"
        lines.append(
            f"| {labels[method]} | {fmt_mean_std(s['test_error'], 100)} | "
            f"{reach_txt} ({s['reached']}/{n}) | {fmt_mean_std(s['wall_s'], digits=1)} |"
        )
    pt_err = np.array(summary["pt"]["test_error"])
    for other in ("grid", "pbt"):
        diff = pt_err - np.array(summary[other]["test_error"])
        wins = int((diff < 0).sum())
        lines.append("")
        lines.append(
            f"PT − {labels[other]}: {fmt_mean_std(diff, 100)} points "
            f"(PT lower in {wins}/{n} seeds, equal in {int((diff == 0).sum())})."
        )
    acc = np.array([r["pt"]["acceptance_rate"] for r in runs], np.float64)
    lines.append(
        f"PT acceptance rate per adjacent pair (mean over seeds): "
        f"{np.round(np.nanmean(acc, 0), 2).tolist()}; C = {runs[0]['c']:.4g}."
    )
    return "\n".join(lines) + "\n"


def figure(name: str, runs: list[dict], summary: dict, target: float, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"grid": "tab:gray", "pt": "tab:red", "pbt": "tab:blue"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in METHODS:
        curves = np.array([r[method]["curve_best_val_error"] for r in runs])
        steps = np.asarray(runs[0][method]["curve_step"])
        mean, std = curves.mean(0), curves.std(0)
        ax1.plot(steps, 100 * mean, color=colors[method], label=method)
        ax1.fill_between(
            steps,
            100 * (mean - std),
            100 * (mean + std),
            color=colors[method],
            alpha=0.2,
        )
    ax1.axhline(100 * target, color="k", ls=":", lw=1, label="target")
    ax1.set_xlabel("SGD steps per replica")
    ax1.set_ylabel("best validation error (%)")
    ax1.set_title(f"{name}: best replica, mean ± std over seeds")
    ax1.legend()
    data = [100 * np.asarray(summary[m]["test_error"]) for m in METHODS]
    ax2.boxplot(data, tick_labels=list(METHODS))
    for i, d in enumerate(data):
        ax2.scatter(np.full(d.size, i + 1), d, color=colors[METHODS[i]], s=12, zorder=3)
    ax2.set_ylabel("test error of best-by-validation replica (%)")
    ax2.set_title(f"{len(runs)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--interval", type=int, default=None)
    parser.add_argument("--burn-in", type=int, default=None)
    parser.add_argument("--replicas", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--c", type=float, default=None, help="default: the C rule")
    parser.add_argument("--scheme", default="even_odd", choices=SCHEMES)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--val-subset", type=int, default=None)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help=f"raw data files (default: ${DATA_DIR_ENV}, else ../shared/data "
        "next to the repository)",
    )
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--name", default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    bench = BENCHMARKS[args.benchmark]
    for field in ("seeds", "steps", "interval", "burn_in", "replicas", "batch_size"):
        if getattr(args, field) is None:
            setattr(args, field, getattr(bench, field))
    dataset = load(args.benchmark, args.data_dir)
    subsets = {
        "train": args.train_subset,
        "validation": args.val_subset or bench.val_subset,
        "test": args.test_subset or bench.test_subset,
    }
    for split, size in subsets.items():
        if size:
            part = getattr(dataset, split)
            dataset = dataset._replace(
                **{split: tdata.Split(*(a[:size] for a in part))}
            )
    ladder = tp.geometric_ladder(
        "learning_rate", bench.lr_low, bench.lr_high, args.replicas
    )
    tx = tp.sgd(bench.lr_low, momentum=args.momentum)
    seeds = list(range(args.seeds))
    c = args.c
    runs = []
    for seed in seeds:
        run = run_seed(args, bench, dataset, ladder, tx, seed, c)
        c = run["c"]
        runs.append(run)
    summary, target = summarise(runs, args.steps)
    desc = (
        f"{type(bench.model).__name__}, {args.replicas} replicas, geometric lr ladder "
        f"{bench.lr_low}–{bench.lr_high}, SGD momentum {args.momentum}, batch "
        f"{args.batch_size}, {args.steps} steps per replica (burn-in {args.burn_in}), "
        f"exchange / PBT ready interval {args.interval}, PT scheme {args.scheme}; "
        f"train / validation / test examples {len(dataset.train.labels)} / "
        f"{len(dataset.validation.labels)} / {len(dataset.test.labels)}"
    )
    name = args.name or f"compare_{args.benchmark}"
    markdown = table(args.benchmark, summary, target, runs, desc)
    payload = {
        "provenance": provenance(seeds),
        "benchmark": args.benchmark,
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
        },
        "description": desc,
        "ladder_learning_rate": np.asarray(ladder.values["learning_rate"]),
        "c": c,
        "c_rule": f"ln(1/{ACCEPT_TARGET}) / median |dbeta * dL| of the seed-0 grid run",
        "target_val_error": target,
        "summary": summary,
        "runs": runs,
        "table": markdown,
    }
    path = save_result(name, payload, args.out_dir)
    path.with_suffix(".md").write_text(markdown)
    figure(args.benchmark, runs, summary, target, path.with_suffix(".png"))
    print(markdown)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
