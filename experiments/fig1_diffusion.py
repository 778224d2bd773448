"""Paper Fig. 1: weight diffusion ||W(t) - W(t0)|| for dropout, lr and L2.

LeNet-5 (tanh, average pooling) on Fashion-MNIST (or MNIST) from the raw
files in ``--data-dir``. For each hyperparameter, M replicas start from the same
weights and train with the same batches, replica m at value m; the library's
:func:`tempering.diffusion.diffusion_test` records the distance of each from
its weights at t0. Writes ``experiments/results/fig1_diffusion.json`` and
``fig1_diffusion.png`` and prints whether the paper's finding holds: more
dropout and a higher learning rate diffuse faster; L2 weight decay plateaus,
lower for a larger coefficient.

    python -m experiments.fig1_diffusion   # data: ../shared/data next to the repo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import tempering as tp
from experiments.common import (
    add_data_dir_arg,
    add_output_args,
    add_seeds_arg,
    data_dir_error,
    figure,
    fmt_mean_std,
    output_dirs,
    provenance,
    save_figure,
    seed_keys,
    settings_of,
    usage_error,
    write_outputs,
)
from tempering import diffusion
from tempering.zoo import datasets
from tempering.zoo.models import LeNet5

SWEEPS = {
    # hyperparameter: (values, base learning rate)
    "dropout_rate": ([0.0, 0.2, 0.4, 0.6], 0.05),
    "learning_rate": ([0.0125, 0.025, 0.05, 0.1], None),
    "weight_decay": ([0.0, 0.01, 0.03, 0.1], 0.05),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"]
    )
    add_data_dir_arg(p)
    p.add_argument("--steps", type=int, default=600, help="SGD steps after t0")
    p.add_argument("--t0", type=int, default=100, help="steps before W(t0)")
    p.add_argument("--records", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-size", type=int, default=None, help="subsample train set")
    add_seeds_arg(p, [0])
    p.add_argument("--replicas", type=int, default=None, help="first M values only")
    add_output_args(p, "fig1_diffusion")
    args = p.parse_args(argv)
    minimum = {"steps": 1, "t0": 0, "records": 1, "batch_size": 1, "train_size": 1,
               "replicas": 2}  # fmt: skip
    for flag, low in minimum.items():
        if getattr(args, flag) is not None and getattr(args, flag) < low:
            p.error(f"argument --{flag.replace('_', '-')} must be >= {low}")
    return args


def monotone(x: np.ndarray, increasing: bool) -> bool:
    d = np.diff(x)
    return bool(np.all(d > 0) if increasing else np.all(d < 0))


def verdicts(results: dict) -> dict:
    """The paper's three claims, checked on the seed-mean final distances."""
    out = {}
    drop = np.asarray(results["dropout_rate"]["mean_distance"])
    out["dropout_faster_when_larger"] = monotone(drop[-1], True)
    lr = np.asarray(results["learning_rate"]["mean_distance"])
    out["lr_faster_when_larger"] = monotone(lr[-1], True)
    wd = np.asarray(results["weight_decay"]["mean_distance"])
    steps = np.asarray(results["weight_decay"]["steps"])
    half = max(int(np.searchsorted(steps, steps[-1] // 2, side="right")) - 1, 0)
    growth = (wd[-1] - wd[half]) / wd[-1]  # relative growth over the second half
    out["l2_growth_second_half"] = growth.tolist()
    out["l2_plateaus_for_largest"] = bool(abs(growth[-1]) < 0.05)
    out["l2_final_lower_when_larger"] = monotone(wd[-1][1:], False)
    out["l2_below_no_decay"] = bool(np.all(wd[-1][1:] < wd[-1][0]))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    problem = data_dir_error(args.data_dir, args.dataset)
    if problem:
        usage_error(problem)
    data = datasets.load_dataset(args.dataset, data_dir=args.data_dir, source="raw")
    x, y = data.train
    if args.train_size:
        x, y = x[: args.train_size], y[: args.train_size]
    model = LeNet5(num_classes=data.num_classes, activation="tanh", pooling="avg")
    # one optimiser object per kind: the compiled programs are cached on it
    sgd_tx = tp.sgd(0.05)
    l2_tx = diffusion.l2_sgd(0.05)
    results = {}
    start = time.time()
    for name, (values, base_lr) in SWEEPS.items():
        values = values[: args.replicas] if args.replicas else values
        runs = []
        for seed in args.seeds:
            tx = l2_tx if name == "weight_decay" else sgd_tx
            init_key, run_key = seed_keys(seed, offset=1000)
            state = tp.create_replicas(
                init_key,
                model,
                tx,
                x[:2],
                num_replicas=len(values),
                same_init=True,
            )
            if base_lr is not None:  # the swept hyperparameter is set by the test
                state = tp.set_hyperparams(state, learning_rate=base_lr)
            res = diffusion.diffusion_test(
                state,
                run_key,
                train_data=(x, y),
                hyperparameter=name,
                values=values,
                num_steps=args.steps,
                num_records=args.records,
                t0=args.t0,
                batch_size=args.batch_size,
            )
            runs.append(res)
            print(f"{name} seed {seed}: final distance {res.distance[-1].round(3)}")
        dist = np.stack([r.distance for r in runs])
        results[name] = {
            "values": values,
            "base_learning_rate": base_lr,
            "steps": runs[0].steps,
            "distance_per_seed": dist,
            "mean_distance": dist.mean(0),
            "train_loss_per_seed": np.stack([r.train_loss for r in runs]),
        }
    check = verdicts(results)
    payload = {
        "provenance": provenance(args.seeds, outputs=output_dirs(args)),
        "settings": settings_of(args),
        "model": "LeNet5(tanh, avg pool), same initial weights and batches per sweep",
        "dataset": args.dataset,
        "note": "CPU only (no GPU in this session)",
        "wall_time_s": time.time() - start,
        "results": results,
        "verdicts": check,
    }
    write_outputs(args, payload, markdown(payload), lambda p: plot(results, p))
    for k, v in check.items():
        print(f"  {k}: {v}")
    return payload


CLAIMS = {
    "dropout_faster_when_larger": "more dropout diffuses faster",
    "lr_faster_when_larger": "a higher learning rate diffuses faster",
    "l2_plateaus_for_largest": "the largest L2 coefficient plateaus "
    "(< 5% growth over the second half)",
    "l2_final_lower_when_larger": "a larger L2 coefficient ends lower",
    "l2_below_no_decay": "every L2 coefficient ends below no decay",
}


def markdown(payload: dict) -> str:
    """Final distances (mean ± std over seeds) and the paper's claims checked."""
    results, seeds = payload["results"], payload["provenance"]["seeds"]
    steps = payload["results"]["dropout_rate"]["steps"]
    lines = [
        f"{payload['dataset']}, {payload['model']}; ||W(t) - W(t0)|| after "
        f"{int(steps[-1])} steps (t0 = {payload['settings']['t0']}), batch "
        f"{payload['settings']['batch_size']}, {len(seeds)} seeds, mean ± std.",
        "",
        "| hyperparameter | value: final distance |",
        "|---|---|",
    ]
    for name, res in results.items():
        final = np.asarray(res["distance_per_seed"])[:, -1, :]  # (seeds, values)
        cells = ", ".join(
            f"{v:g}: {fmt_mean_std(final[:, i], digits=2)}"
            for i, v in enumerate(res["values"])
        )
        lines.append(f"| {name} | {cells} |")
    lines.append("")
    for key, words in CLAIMS.items():
        verdict = "holds" if payload["verdicts"][key] else "does **not** hold"
        lines.append(f"- {words}: {verdict}")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    from experiments.plots import plot_diffusion

    titles = {
        "dropout_rate": "dropout rate",
        "learning_rate": "learning rate",
        "weight_decay": "L2 weight decay",
    }
    fig, axes = figure(3, (14, 4))
    for ax, (name, res) in zip(axes, results.items(), strict=True):
        labels = [f"{v:g}" for v in res["values"]]
        plot_diffusion(
            ax, res["steps"], res["mean_distance"], labels, title=titles[name]
        )
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
