"""Shared driver of the paper's Fig. 2 experiments: PT against the grid.

One experiment = one model, one dataset, one ladder, the authors' exchange
settings (DESIGN.md section 2b). For every seed it runs parallel tempering and
the independent grid (the same ladder with exchanges off: same data split,
initial weights, batches and step budget, one engine), records per round the
validation and test metrics of every replica, and writes one JSON result and
one figure:

- test error against epochs for every fixed replica of the grid (seed mean),
  the grid's best replica and PT, where "PT" and "grid best" at each round are
  the replica with the lowest validation loss at that round: selected by
  validation, never by test error;
- the replica paths of PT (rung against time, the replica that ends best
  highlighted), first seed;
- acceptance rate per adjacent pair, mean and std over seeds.

``--scale s`` multiplies burn-in and exchange interval by ``s`` and keeps the
number of exchange rounds, so a reduced run makes as many exchange decisions
as the full one, over shorter segments.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import tempering as tp
from experiments.common import (
    DATA_DIR_ENV,
    RESULTS_DIR,
    default_data_dir,
    mean_std,
    provenance,
    run_evaluate,
    save_result,
)


class Fig2Config(NamedTuple):
    """One Fig. 2 experiment at full (paper) scale."""

    name: str  # result file stem, e.g. "fig2_lenet_cifar10_dropout"
    hyperparameter: str  # "dropout_rate" or "learning_rate"
    low: float  # coldest ... hottest ladder values (linear ladder)
    high: float
    num_replicas: int
    c: float  # normalisation constant C of the acceptance probability
    exchange_interval: int  # SGD steps between exchanges
    burn_in: int  # SGD steps before the first exchange
    rounds: int  # exchange rounds after the burn-in
    learning_rate: float  # fixed lr on every rung (dropout ladders)
    dropout_rate: float  # fixed dropout on every rung (lr ladders)
    burn_in_learning_rate: float  # lr of every replica during the burn-in
    batch_size: int = 128
    augment: bool = False

    @property
    def num_steps(self) -> int:
        """Total SGD steps per replica."""
        return self.burn_in + self.rounds * self.exchange_interval


def scaled(config: Fig2Config, scale: float, rounds: int | None = None) -> Fig2Config:
    """Shrinks burn-in and exchange interval by ``scale`` (rounds kept)."""
    return config._replace(
        burn_in=max(1, round(config.burn_in * scale)),
        exchange_interval=max(1, round(config.exchange_interval * scale)),
        rounds=rounds if rounds is not None else config.rounds,
    )


def make_ladder(config: Fig2Config) -> tp.Ladder:
    """The experiment's linear ladder; the other hyperparameter is fixed."""
    if config.hyperparameter == "dropout_rate":
        return tp.linear_ladder(
            "dropout_rate",
            config.low,
            config.high,
            config.num_replicas,
            learning_rate=config.learning_rate,
        )
    return tp.linear_ladder(
        "learning_rate",
        config.low,
        config.high,
        config.num_replicas,
        dropout_rate=config.dropout_rate,
    )


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Arguments every Fig. 2 script takes."""
    p.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help=f"raw data files (default: ${DATA_DIR_ENV}, else ../shared/data "
        "next to the repository)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="step scale (1 = paper)")
    p.add_argument("--rounds", type=int, default=None, help="exchange rounds")
    p.add_argument(
        "--burn-in", type=int, default=None, help="steps before the first exchange"
    )
    p.add_argument(
        "--exchange-interval", type=int, default=None, help="steps between exchanges"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--replicas", type=int, default=None, help="M (paper: 8)")
    p.add_argument("--batch-size", type=int, default=None, help="paper: 128")
    p.add_argument("--c", type=float, default=None, help="override C")
    p.add_argument("--train-size", type=int, default=None, help="subsample train")
    p.add_argument(
        "--eval-size",
        type=int,
        default=None,
        help="validation/test examples evaluated per round (default: all)",
    )
    p.add_argument(
        "--final-test-size",
        type=int,
        default=None,
        help="test examples of the final evaluation (default: all)",
    )
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=None, help="result file stem")
    p.add_argument("--note", default="", help="free text stored in the result")


def apply_overrides(config: Fig2Config, args: argparse.Namespace) -> Fig2Config:
    """Scale and command-line overrides."""
    config = scaled(config, args.scale, args.rounds)
    if args.burn_in is not None:
        config = config._replace(burn_in=args.burn_in)
    if args.exchange_interval:
        config = config._replace(exchange_interval=args.exchange_interval)
    if args.replicas:
        config = config._replace(num_replicas=args.replicas)
    if args.batch_size:
        config = config._replace(batch_size=args.batch_size)
    if args.c:
        config = config._replace(c=args.c)
    if args.name:
        config = config._replace(name=args.name)
    return config


def _subset(split: tp.data.Split, size: int | None) -> tp.data.Split:
    if size is None or size >= len(split.labels):
        return split
    return tp.data.Split(split.inputs[:size], split.labels[:size])


def run_one(
    config: Fig2Config,
    model: Any,
    tx: Any,
    data: tp.data.Dataset,
    seed: int,
    exchanges: bool,
    eval_size: int | None,
    augment: Callable | None,
    final_test_size: int | None = None,
) -> dict[str, Any]:
    """One PT (or grid) run; returns its per-round curves and final metrics."""
    ladder = make_ladder(config)
    train = data.train
    state = tp.create_replicas(
        jax.random.key(seed), model, tx, train.inputs[:2], ladder=ladder
    )
    start = time.time()
    result = tp.pt_train(
        state,
        ladder,
        jax.random.key(10_000 + seed),
        train_data=train,
        validation_data=_subset(data.validation, eval_size),
        test_data=_subset(data.test, eval_size),
        num_steps=config.num_steps,
        exchange_interval=config.exchange_interval,
        burn_in=config.burn_in,
        c=config.c,
        exchanges=exchanges,
        batch_size=config.batch_size,
        augment=augment,
        burn_in_hyperparams={"learning_rate": config.burn_in_learning_rate},
    )
    wall = time.time() - start
    h, s = result.history, result.summary
    test_error = 1.0 - h.test_accuracy  # (R, M)
    selected = np.argmin(np.where(np.isfinite(h.val_loss), h.val_loss, np.inf), axis=1)
    selected_error = test_error[np.arange(len(selected)), selected]
    # replica m's curve, and the curve of the replica on rung r (grid: the same)
    by_rung = np.empty_like(test_error)
    path = np.concatenate([h.initial_rungs[None], h.rungs[:-1]])  # rung during round
    for r in range(test_error.shape[0]):
        by_rung[r, path[r]] = test_error[r]
    final_test = _subset(data.test, final_test_size)
    final = run_evaluate(result.state, final_test.inputs, final_test.labels)
    final_error = 1.0 - np.asarray(final.accuracy)
    return {
        "seed": seed,
        "exchanges": exchanges,
        "wall_time_s": wall,
        "step": h.step,
        "epoch": h.step * config.batch_size / len(train.labels),
        "val_loss": h.val_loss,
        "test_error_by_replica": test_error,
        "test_error_by_rung": by_rung,
        "selected_replica": selected,
        "selected_test_error": selected_error,
        "rungs": h.rungs,
        "initial_rungs": h.initial_rungs,
        "accepted": h.accepted.sum(0),
        "proposed": h.proposed.sum(0),
        "acceptance_rate": s.acceptance_rate,
        "round_trips": s.round_trips,
        "best_replica": s.best_replica,
        "final_val_loss": s.final_val_loss,
        "final_test_error": final_error,
        # the headline number: the final test set (all of it unless
        # --final-test-size), replica with the lowest final
        # validation loss
        "best_test_error": float(final_error[s.best_replica]),
        "min_test_error": float(final_error.min()),
        "final_rungs": np.asarray(result.state.rungs),
    }


def run_experiment(
    config: Fig2Config,
    model: Any,
    tx: Any,
    data: tp.data.Dataset,
    args: argparse.Namespace,
    *,
    augment: Callable | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """PT and grid over every seed; writes the JSON and the figure."""
    if args.train_size:
        data = data._replace(train=_subset(data.train, args.train_size))
    runs = {"pt": [], "grid": []}
    start = time.time()
    for seed in args.seeds:
        for kind, exchanges in (("pt", True), ("grid", False)):
            run = run_one(
                config,
                model,
                tx,
                data,
                seed,
                exchanges,
                args.eval_size,
                augment,
                args.final_test_size,
            )
            runs[kind].append(run)
            print(
                f"{config.name} seed {seed} {kind}: test error of best-val replica "
                f"{100 * run['best_test_error']:.2f}% "
                f"(min {100 * run['min_test_error']:.2f}%), "
                f"{run['wall_time_s']:.0f}s",
                flush=True,
            )
    ladder = make_ladder(config)
    pt_err = [r["best_test_error"] for r in runs["pt"]]
    grid_err = [r["best_test_error"] for r in runs["grid"]]
    summary = {
        "pt_test_error": mean_std(pt_err),
        "grid_best_test_error": mean_std(grid_err),
        "pt_minus_grid": mean_std(np.subtract(pt_err, grid_err)),
        "pt_beats_grid_seeds": int(np.sum(np.less(pt_err, grid_err))),
        "num_seeds": len(args.seeds),
        "mean_acceptance_rate": np.nanmean(
            [r["acceptance_rate"] for r in runs["pt"]], axis=0
        ),
    }
    payload = {
        "provenance": provenance(args.seeds),
        "config": config._asdict() | {"num_steps": config.num_steps},
        "ladder": {k: np.asarray(v) for k, v in ladder.values.items()},
        "dataset": data.name,
        "num_train": len(data.train.labels),
        "eval_size": args.eval_size,
        "final_test_size": args.final_test_size or len(data.test.labels),
        "scale": args.scale,
        "device": jax.default_backend(),
        "note": args.note,
        "wall_time_s": time.time() - start,
        "summary": summary,
        "runs": runs,
        **(extra or {}),
    }
    path = save_result(config.name, payload, args.out_dir)
    plot_experiment(payload, args.out_dir / f"{config.name}.png")
    print(
        f"wrote {path}: PT {100 * summary['pt_test_error'][0]:.2f}% vs grid best "
        f"{100 * summary['grid_best_test_error'][0]:.2f}%"
    )
    return payload


def plot_experiment(payload: dict[str, Any], path: Path) -> None:
    """Error curves, replica paths and acceptance rates of one experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.plots import plot_acceptance, plot_error_curves, plot_replica_paths

    runs, config = payload["runs"], payload["config"]
    values = next(iter(v for v in payload["ladder"].values() if np.ptp(v) > 0))
    epochs = np.asarray(runs["pt"][0]["epoch"])
    curves, stds = {}, {}
    grid_by_rung = np.stack([r["test_error_by_rung"] for r in runs["grid"]])
    for rung, value in enumerate(values):
        curves[f"grid {config['hyperparameter']}={value:.4g}"] = grid_by_rung[
            :, :, rung
        ].mean(0)
    for label, kind in (("grid best (by val)", "grid"), ("PT", "pt")):
        sel = np.stack([r["selected_test_error"] for r in runs[kind]])
        curves[label], stds[label] = sel.mean(0), sel.std(0)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    finals = np.concatenate([c[-max(1, len(c) // 2) :] for c in curves.values()])
    lo, hi = 100 * np.nanmin(finals), 100 * np.nanmax(finals)
    pad = 0.3 * (hi - lo) + 0.5
    plot_error_curves(
        axes[0],
        epochs,
        curves,
        std_by_label=stds,
        highlight=("PT", "grid best (by val)"),
        title=f"{config['name']} ({len(runs['pt'])} seeds)",
        ylim=(max(0.0, lo - pad), hi + pad),
    )
    first = runs["pt"][0]
    plot_replica_paths(
        axes[1],
        first["rungs"],
        first["initial_rungs"],
        first["best_replica"],
        steps=first["step"],
        rung_labels=[f"{v:.4g}" for v in values],
        title=f"PT replica paths (seed {first['seed']})",
    )
    rates = np.array([r["acceptance_rate"] for r in runs["pt"]], np.float64)
    plot_acceptance(axes[2], np.nanmean(rates, 0), std=np.nanstd(rates, 0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
