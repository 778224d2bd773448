"""Fig. 1, L2 only: does weight decay confine the diffusion once the weights have equilibrated?

The paper claims that L2 weight decay, unlike dropout and the learning rate,
does not act as a temperature: it confines the weights, so ``||W(t) - W(t0)||``
plateaus. Measured from an early ``t0`` the distance mostly records the weights
shrinking toward the norm the decay imposes (time constant ``1 / (lr * wd)``
steps: 2000 at lr 0.05 and wd 0.01), not a diffusion around it. Here ``t0`` is
past that: by default three time constants of the smallest non-zero
coefficient, so every decayed replica's norm is within ``e^-3`` of its
equilibrium, and the distance is then followed for ``--steps`` more steps
(linear records) beside the norm ``||W(t)||``.

Same model, data and base learning rate as ``experiments.fig1_diffusion``
(LeNet-5, tanh, average pooling, Fashion-MNIST, SGD lr 0.05, batch 128); all
replicas start from the same weights and see the same batches. One result file
per seed (``results/fig1_l2/seed<k>.json``); the table and figure are merged
from them once every seed is there:

    python -m experiments.fig1_l2 --seeds 0 1 2
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
    load_seed_record,
    output_dirs,
    provenance,
    save_figure,
    save_seed_record,
    seed_keys,
    seed_path,
    settings_of,
    warn_dirty,
    write_outputs,
)
from tempering import diffusion
from tempering.zoo import datasets
from tempering.zoo.models import LeNet5

BASE_LR = 0.05
VALUES = (0.0, 0.01, 0.03, 0.1)
# A decayed replica's distance "plateaus" when it grows by less than this
# fraction over the second half of the measured window.
PLATEAU = 0.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_dir_arg(p)
    add_seeds_arg(p, [0, 1, 2])
    p.add_argument(
        "--t0", type=int, default=None,
        help="steps before W(t0) (default: 3 / (lr * smallest non-zero wd))",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=2000, help="steps after t0")
    p.add_argument("--records", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    add_output_args(p, "fig1_l2")
    args = p.parse_args(argv)
    for flag, low in (("steps", 1), ("records", 2), ("batch_size", 1), ("t0", 0)):
        if getattr(args, flag) is not None and getattr(args, flag) < low:
            p.error(f"argument --{flag.replace('_', '-')} must be >= {low}")
    problem = data_dir_error(args.data_dir, "fashion_mnist")
    if problem:
        p.error(problem)
    if args.t0 is None:
        args.t0 = int(round(3 / (BASE_LR * min(v for v in VALUES if v > 0))))
    return args


def run_seed(args, x, y, seed: int) -> dict:
    model = LeNet5(num_classes=10, activation="tanh", pooling="avg")
    init_key, run_key = seed_keys(seed, offset=1000)
    state = tp.create_replicas(
        init_key, model, diffusion.l2_sgd(BASE_LR), x[:2],
        num_replicas=len(VALUES), same_init=True,
    )  # fmt: skip
    start = time.time()
    res = diffusion.diffusion_test(
        state, run_key, train_data=(x, y),
        hyperparameter="weight_decay", values=list(VALUES), num_steps=args.steps,
        num_records=args.records, spacing="linear", t0=args.t0,
        batch_size=args.batch_size,
    )  # fmt: skip
    return {
        "seed": seed,
        "steps": res.steps,
        "distance": res.distance,
        "weight_norm": res.weight_norm,
        "initial_norm": res.initial_norm,
        "train_loss": res.train_loss,
        "wall_time_s": time.time() - start,
    }


SETTINGS = ("t0", "steps", "records", "batch_size")


def summarise(runs: list[dict]) -> dict:
    """Per coefficient: growth of the distance and drift of the norm, 2nd half."""
    dist = np.stack([np.asarray(r["distance"]) for r in runs])  # (S, T, M)
    norm = np.stack([np.asarray(r["weight_norm"]) for r in runs])
    half = dist.shape[1] // 2 - 1
    growth = (dist[:, -1] - dist[:, half]) / dist[:, -1]  # (S, M)
    drift = (norm[:, -1] - norm[:, half]) / norm[:, -1]
    first_drift = (norm[:, 0] - np.stack([r["initial_norm"] for r in runs])) / norm[
        :, 0
    ]
    return {
        "growth_second_half": growth,
        "norm_drift_second_half": drift,
        "norm_drift_first_record": first_drift,
        "final_distance": dist[:, -1],
        "final_norm": norm[:, -1],
        "plateaus": (np.abs(growth.mean(0)) < PLATEAU).tolist(),
    }


def markdown(args, summary: dict, n: int) -> str:
    lines = [
        f"Fashion-MNIST, LeNet-5 (tanh, avg pool), SGD lr {BASE_LR}, batch "
        f"{args.batch_size}; W(t0) at t0 = {args.t0} steps "
        f"({args.t0 * BASE_LR * min(v for v in VALUES if v > 0):g} time constants "
        f"1/(lr·wd) of wd = {min(v for v in VALUES if v > 0)}), then "
        f"{args.steps} steps; {n} seeds, mean ± std.",
        "",
        "| weight decay | time constant (steps) | final ‖W − W(t0)‖ | distance growth, 2nd half | final ‖W‖ | norm drift, 2nd half | plateau (< 5% growth) |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, v in enumerate(VALUES):
        tau = "∞" if v == 0 else f"{1 / (BASE_LR * v):.0f}"
        lines.append(
            f"| {v:g} | {tau} | {fmt_mean_std(summary['final_distance'][:, i])} | "
            f"{fmt_mean_std(summary['growth_second_half'][:, i], 100, 1)}% | "
            f"{fmt_mean_std(summary['final_norm'][:, i])} | "
            f"{fmt_mean_std(summary['norm_drift_second_half'][:, i], 100, 1)}% | "
            f"{'yes' if summary['plateaus'][i] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    steps = np.asarray(runs[0]["steps"])
    fig, (ax1, ax2) = figure(2, (11, 4))
    for i, v in enumerate(VALUES):
        dist = np.stack([np.asarray(r["distance"])[:, i] for r in runs])
        norm = np.stack([np.asarray(r["weight_norm"])[:, i] for r in runs])
        for ax, y in ((ax1, dist), (ax2, norm)):
            ax.plot(steps, y.mean(0), label=f"wd {v:g}")
            ax.fill_between(
                steps, y.mean(0) - y.std(0), y.mean(0) + y.std(0), alpha=0.2
            )
    ax1.set(xlabel="steps after t0", ylabel="‖W(t) − W(t0)‖", title="distance")
    ax2.set(xlabel="steps after t0", ylabel="‖W(t)‖", title="weight norm")
    ax1.legend()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    data = datasets.load_dataset("fashion_mnist", data_dir=args.data_dir, source="raw")
    x, y = data.train
    settings = settings_of(args, *SETTINGS)
    runs = []
    for seed in args.seeds:
        path = seed_path(args.out_dir, args.name, seed)
        record = load_seed_record(path, settings)
        if record is None:
            record = save_seed_record(path, {
                "provenance": provenance([seed], outputs=output_dirs(args)),
                "settings": settings,
                **run_seed(args, x, y, seed),
            })  # fmt: skip
            print(f"seed {seed}: {record['wall_time_s']:.0f}s", flush=True)
        runs.append(record)
    warn_dirty([r["provenance"]["git_commit"] for r in runs], f"{args.name}'s table")
    summary = summarise(runs)
    table = markdown(args, summary, len(runs))
    payload = {
        "provenance": provenance(args.seeds, outputs=output_dirs(args)),
        "seed_provenance": {r["seed"]: r["provenance"] for r in runs},
        "settings": settings,
        "values": VALUES,
        "summary": summary,
        "table": table,
    }
    write_outputs(args, payload, table, lambda p: plot(runs, p))
    return payload


if __name__ == "__main__":
    main()
