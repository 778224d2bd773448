"""Quick start: parallel tempering against the independent grid on MNIST-1D.

Runs with no network and no data files: MNIST-1D is generated procedurally by
the ``mnist1d`` package. Eight replicas of a small MLP train on a dropout
ladder; the same ladder, initial weights, batch order, seeds and step budget
run three ways in the same engine:

- ``grid``: exchanges off (the independent grid search),
- ``PT``: ``pt_train``'s defaults: C adapted to a mean acceptance of 0.3 in
  the first quarter of the rounds (``c="auto"``), even-odd swaps,
- ``PT-random-pair``: the paper's scheme (one random adjacent pair per
  round), C adapted alike.

The best replica of each run is chosen by its final validation loss and scored
on the test split. Writes ``experiments/results/quickstart.{json,md,png}``.

    python -m experiments.quickstart            # about 3 minutes on 2 CPU cores
    python -m experiments.quickstart --seeds 2 --steps 600   # a smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

import tempering as tp
from experiments.common import (
    add_output_args,
    add_seeds_arg,
    figure,
    final_rungs,
    fmt_mean_std,
    output_dirs,
    provenance,
    save_figure,
    seed_keys,
    settings_of,
    write_outputs,
)
from tempering.zoo.datasets import load_mnist1d
from tempering.zoo.models import MLP

METHODS = {
    "grid": dict(exchanges=False),
    "PT": dict(),
    "PT-random-pair": dict(scheme="random_pair"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_seeds_arg(parser, 5)
    parser.add_argument("--steps", type=int, default=4000, help="SGD steps per replica")
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--exchange-interval", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--dropout-low", type=float, default=0.0)
    parser.add_argument("--dropout-high", type=float, default=0.7)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument(
        "--c", type=float, default=None, help="a fixed C (default: c='auto')"
    )
    add_output_args(parser, "quickstart")
    args = parser.parse_args(argv)
    for flag in ("steps", "exchange_interval", "replicas"):
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag.replace('_', '-')} must be >= 1")
    if args.burn_in < 0 or args.steps - args.burn_in < args.exchange_interval:
        parser.error(
            f"--steps {args.steps} leaves {args.steps - args.burn_in} steps after "
            f"--burn-in {args.burn_in}, less than one --exchange-interval "
            f"({args.exchange_interval}) (or a negative --burn-in): give more "
            "--steps, a shorter --burn-in or --exchange-interval"
        )
    if args.c is not None and not args.c > 0:
        parser.error(
            f"argument --c must be > 0 (or left out for c='auto'), got {args.c}"
        )
    return args


def run_seed(args, dataset, ladder, tx, seed: int) -> dict:
    """All methods on one seed: same initial weights and batch order for each."""
    model = MLP(features=(128, 128), num_classes=dataset.num_classes)
    out = {}
    init_key, run_key = seed_keys(seed)
    for method, settings in METHODS.items():
        state = tp.create_replicas(
            init_key, model, tx, dataset.train.inputs[:2], ladder=ladder
        )
        start = time.perf_counter()
        result = tp.pt_train(
            state,
            ladder,
            run_key,
            train_data=dataset.train,
            validation_data=dataset.validation,
            num_steps=args.steps,
            exchange_interval=args.exchange_interval,
            burn_in=args.burn_in,
            **settings,
            **({} if args.c is None else {"c": args.c}),
        )
        test = tp.evaluate(result.state, dataset.test.inputs, dataset.test.labels)
        jax.block_until_ready(test)
        seconds = time.perf_counter() - start
        best = result.summary.best_replica
        history = result.history
        out[method] = {
            "test_error_best": 1.0 - float(test.accuracy[best]),
            "test_error_all": 1.0 - np.asarray(test.accuracy),
            "best_replica": best,
            "best_final_rung": int(final_rungs(history)[best]),
            "val_error_best": 1.0 - result.summary.best_val_accuracy,
            "acceptance_rate": result.summary.acceptance_rate,
            "round_trips": result.summary.round_trips,
            "c": history.c,
            "steps": history.step,
            "val_error": 1.0 - history.val_accuracy,
            "rungs": history.rungs,
            "initial_rungs": history.initial_rungs,
            "wall_seconds": seconds,
        }
        print(
            f"seed {seed} {method:7s} test error {out[method]['test_error_best']:.4f} "
            f"(best replica {best}, rung {out[method]['best_final_rung']}) "
            f"round trips {int(result.summary.round_trips.sum())} [{seconds:.1f}s]",
            flush=True,
        )
    return out


def table(runs: list[dict], ladder_desc: str, replicas: int = 8) -> str:
    """The markdown table of the run, from the per-seed records."""
    lines = [
        f"MNIST-1D, MLP 128-128, {replicas} replicas, {ladder_desc}; {len(runs)} "
        "seeds, mean ± std.",
        "",
        "| method | best-replica test error (%) | acceptance rate (mean over pairs) | round trips (all replicas) | final C |",
        "|---|---|---|---|---|",
    ]
    for method in METHODS:
        errors = [r[method]["test_error_best"] for r in runs]
        rates = [
            np.nanmean(r[method]["acceptance_rate"]) if method != "grid" else np.nan
            for r in runs
        ]
        trips = [np.sum(r[method]["round_trips"]) for r in runs]
        rate_text = "–" if method == "grid" else fmt_mean_std(rates)
        finals = [r[method]["c"][-1] for r in runs]
        c_text = "–" if method == "grid" else fmt_mean_std(finals, digits=3)
        lines.append(
            f"| {method} | {fmt_mean_std(errors, 100)} | {rate_text} | "
            f"{fmt_mean_std(trips, digits=1)} | {c_text} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], ladder, path: Path) -> None:
    """Replica paths (seed 0), validation-error curves, acceptance per pair."""
    from experiments.plots import plot_error_curves, plot_replica_paths

    fig, axes = figure(3, (16, 4.5))
    pt = runs[0]["PT"]
    labels = [f"q={q:.2f}" for q in np.asarray(ladder.values["dropout_rate"])]
    plot_replica_paths(
        axes[0],
        pt["rungs"],
        pt["initial_rungs"],
        pt["best_replica"],
        pt["steps"],
        rung_labels=labels,
        title="PT replica paths (seed 0)",
    )
    steps = pt["steps"]
    grid_val = np.stack([r["grid"]["val_error"] for r in runs])  # (S, R, M)
    curves = {
        f"grid {labels[m]}": grid_val[:, :, m].mean(0) for m in range(grid_val.shape[2])
    }
    stds = {}
    for method in METHODS:
        best_so_far = np.stack([r[method]["val_error"].min(1) for r in runs])
        curves[f"{method} best replica"] = best_so_far.mean(0)
        stds[f"{method} best replica"] = best_so_far.std(0)
    plot_error_curves(
        axes[1],
        steps,
        curves,
        std_by_label=stds,
        highlight=tuple(f"{m} best replica" for m in METHODS),
        xlabel="SGD step",
        ylabel="validation error (%)",
        title=f"validation error, mean over {len(runs)} seeds",
    )
    pairs = np.arange(len(ladder.temperatures) - 1)
    for offset, method in ((-0.2, "PT"), (0.2, "PT-random-pair")):
        rates = np.stack([r[method]["acceptance_rate"] for r in runs])
        proposed = np.isfinite(rates).any(0)
        mean = np.where(
            proposed, np.nanmean(np.where(np.isfinite(rates), rates, 0), 0), 0
        )
        axes[2].bar(pairs + offset, mean, width=0.4, label=method)
    axes[2].set_xticks(pairs, [f"{r}-{r + 1}" for r in pairs])
    axes[2].set(
        ylim=(0, 1),
        xlabel="rung pair",
        ylabel="acceptance rate",
        title=f"acceptance rate per pair, mean over {len(runs)} seeds",
    )
    axes[2].legend(fontsize="small")
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    seeds = list(range(args.seeds))
    dataset = load_mnist1d()
    ladder = tp.linear_ladder(
        "dropout_rate",
        args.dropout_low,
        args.dropout_high,
        args.replicas,
        learning_rate=args.learning_rate,
    )
    tx = tp.sgd(args.learning_rate, momentum=0.9)  # one optimiser: compiled once
    start = time.perf_counter()
    runs = [run_seed(args, dataset, ladder, tx, seed) for seed in seeds]
    ladder_desc = (
        f"dropout ladder {args.dropout_low}–{args.dropout_high} (linear), lr {args.learning_rate}, "
        f"momentum 0.9, batch 128, {args.steps} steps, burn-in {args.burn_in}, "
        f"exchange every {args.exchange_interval}, "
        + ("C adapted (c='auto')" if args.c is None else f"C = {args.c}")
    )
    payload = {
        **provenance(seeds, outputs=output_dirs(args)),
        "settings": settings_of(args),
        "dataset": {
            "name": dataset.name,
            "train": len(dataset.train.labels),
            "validation": len(dataset.validation.labels),
            "test": len(dataset.test.labels),
        },
        "ladder": {k: np.asarray(v) for k, v in ladder.values.items()}
        | {"temperatures": np.asarray(ladder.temperatures)},
        "runs": runs,
        "total_wall_seconds": time.perf_counter() - start,
    }
    write_outputs(
        args,
        payload,
        table(runs, ladder_desc, args.replicas),
        lambda p: plot(runs, ladder, p),
    )
    return payload


if __name__ == "__main__":
    main()
