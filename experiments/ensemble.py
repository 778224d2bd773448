"""The ensemble PT samples for free, against the grid's ensemble and single models.

    python -m experiments.ensemble mnist1d --seeds 10
    python -m experiments.ensemble fashion_mnist --seeds 5
    python -m experiments.ensemble cifar10 --seeds 5

The benchmarks, ladders, steps and keys of ``experiments.compare`` (PT with
``c="auto"`` and the grid, the same replicas and batches for both). Both runs
carry :func:`tempering.ensemble.cold_chain_ensemble` on the validation and
test inputs, a snapshot every round from the second half of the rounds on
(``--after``, a fraction of the rounds). Reported per seed, test error (%):

- each method's best single model (the replica with the lowest final
  validation error), as ``experiments.compare`` reports it;
- PT's cold-chain ensemble (the mean prediction of the replicas that trained
  on rung 0 in those rounds), and the grid's (its rung-0 replica's snapshots);
- the grid's ensemble of its M final models (a hyperparameter ensemble).

with paired differences over seeds (mean ± s.e.). One file per seed
(``results/ensemble/<name>/seed<k>.json``, ``--name`` by default
``ensemble_<benchmark>``): runs resume seed by seed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

import tempering as tp
from experiments.common import (
    add_data_dir_arg,
    add_output_args,
    add_seeds_arg,
    check_before_running,
    load_seed_record,
    mean_std,
    output_dirs,
    provenance,
    save_seed_record,
    seed_keys,
    seed_path,
    settings_of,
    subset,
    warn_dirty,
    write_outputs,
)
from experiments.compare import BENCHMARKS, load
from tempering.ensemble import (
    cold_chain_ensemble,
    mean_probabilities,
    replicas_probabilities,
)
from tempering.moves import exchange_move

SETTINGS = ("benchmark", "after", "steps")
ROWS = {
    "pt_single": "PT, best single model",
    "pt_cold": "PT, cold-chain ensemble",
    "grid_single": "grid, best single model",
    "grid_cold": "grid, rung-0 snapshot ensemble",
    "grid_final": "grid, ensemble of its M final models",
}
PAIRS = (
    ("pt_cold", "grid_final"),
    ("pt_cold", "pt_single"),
    ("grid_final", "grid_single"),
    ("pt_cold", "grid_single"),
    ("pt_single", "grid_single"),
)


def error(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) != np.asarray(labels)))


def run_method(exchanges: bool, args, bench, dataset, seed: int) -> dict:
    """PT (or the grid) with the cold-chain ensemble on one seed."""
    ladder = tp.geometric_ladder("learning_rate", bench.lr_low, bench.lr_high,
                                 bench.replicas)  # fmt: skip
    tx = tp.sgd(bench.lr_low, momentum=0.9)
    init_key, run_key = seed_keys(seed)
    state = tp.create_replicas(init_key, bench.model, tx, dataset.train.inputs[:2],
                               ladder=ladder)  # fmt: skip
    rounds = (args.steps - bench.burn_in) // bench.interval
    val, test = dataset.validation, dataset.test
    inputs = np.concatenate([np.asarray(val.inputs), np.asarray(test.inputs)])
    move = cold_chain_ensemble(
        exchange_move(ladder, c="auto", enabled=exchanges,
                      adapt_rounds=max(1, math.ceil(rounds / 4))),
        inputs, every=1, after=int(args.after * rounds),
    )  # fmt: skip
    config = tp.RunConfig(
        num_steps=args.steps, interval=bench.interval, burn_in=bench.burn_in,
        batch_size=bench.batch_size, move_at_end=False, progress=False,
    )  # fmt: skip
    result = tp.train(state, run_key, move, tp.RunData(dataset.train, val), config)
    num_val = len(val.labels)
    cold = mean_probabilities(result.move_state)
    final = replicas_probabilities(result.state, inputs)
    val_error = 1.0 - np.asarray(result.final.metrics["accuracy"])
    best = int(np.argmin(val_error))
    single = tp.evaluate(result.state, test.inputs, test.labels)
    return {
        "single_test_error": float(1.0 - np.asarray(single.accuracy)[best]),
        "cold_val_error": error(cold[:num_val], val.labels),
        "cold_test_error": error(cold[num_val:], test.labels),
        "final_val_error": error(final[:num_val], val.labels),
        "final_test_error": error(final[num_val:], test.labels),
        "snapshots": int(result.move_state.snapshots),
    }


def run_seed(args, bench, dataset, seed: int) -> dict:
    path = seed_path(Path(args.out_dir) / "ensemble", args.name, seed)
    settings = settings_of(args, *SETTINGS)
    record = load_seed_record(path, settings)
    if record is not None:
        return record
    pt = run_method(True, args, bench, dataset, seed)
    grid = run_method(False, args, bench, dataset, seed)
    for name, run in (("PT", pt), ("grid", grid)):
        if run["snapshots"] < 1:  # an ensemble of nothing: never recorded
            raise RuntimeError(
                f"seed {seed}: {name}'s cold-chain ensemble took no snapshot "
                f"(--steps {args.steps}, --after {args.after}); nothing written"
            )
    errors = {
        "pt_single": pt["single_test_error"], "pt_cold": pt["cold_test_error"],
        "grid_single": grid["single_test_error"], "grid_cold": grid["cold_test_error"],
        "grid_final": grid["final_test_error"],
    }  # fmt: skip
    print(f"seed {seed}", {k: round(100 * v, 2) for k, v in errors.items()}, flush=True)
    record = {"seed": seed, "settings": settings, "test_error": errors,
              "pt": pt, "grid": grid,
              "provenance": provenance([seed], outputs=output_dirs(args))}  # fmt: skip
    return save_seed_record(path, record)


def table(records: list[dict], args, desc: str) -> tuple[str, dict]:
    n = len(records)
    errors = {k: np.array([r["test_error"][k] for r in records]) for k in ROWS}
    lines = [
        f"**{args.benchmark}**: {desc}; {n} seeds, test error (%), mean ± std.",
        "",
        "| model | test error (%) |",
        "|---|---|",
        *(
            "| {} | {:.2f} ± {:.2f} |".format(
                label, *(100 * np.array(mean_std(errors[k])))
            )
            for k, label in ROWS.items()
        ),
        "",
        "| paired difference (points) | mean ± s.e. | lower in | beyond 2 s.e. |",
        "|---|---|---|---|",
    ]
    paired = {}
    for a, b in PAIRS:
        diff = 100 * (errors[a] - errors[b])
        mean, std = mean_std(diff)
        sem = std / math.sqrt(n) if n > 1 else float("nan")
        paired[f"{a}-{b}"] = {"mean": mean, "sem": sem, "lower": int(np.sum(diff < 0))}
        lines.append(
            f"| {ROWS[a]} − {ROWS[b]} | {mean:.2f} ± {sem:.2f} | "
            f"{int(np.sum(diff < 0))}/{n} | {'yes' if abs(mean) > 2 * sem else 'no'} |"
        )
    return "\n".join(lines) + "\n", paired


def snapshots(steps: int, after: float, bench) -> int:
    """The cold-chain snapshots a run takes: one per moved round from round
    ``int(after * rounds)`` on; the round that ends the run has no move
    (``move_at_end=False``), a trailing part-round none either."""
    rounds = (steps - bench.burn_in) // bench.interval
    if rounds < 1:
        return 0
    moved = rounds if (steps - bench.burn_in) % bench.interval else rounds - 1
    return max(0, moved - int(after * rounds))


def check_args(parser: argparse.ArgumentParser, args, bench) -> None:
    """Argument problems as ``parser.error``, before any data or training: at
    least one round, an ``--after`` that leaves a snapshot, the data folder,
    and the settings of the seed files this run merges."""
    if not 0 <= args.after < 1:
        parser.error(
            f"argument --after must be in [0, 1) (the first snapshot round as a "
            f"fraction of the rounds), got {args.after}: at 1 or more the "
            "ensemble takes no snapshot"
        )
    if snapshots(args.steps, args.after, bench) < 1:
        rounds = (args.steps - bench.burn_in) // bench.interval
        parser.error(
            f"--steps {args.steps} with --after {args.after} leaves the cold-chain "
            f"ensemble no snapshot ({max(rounds, 0)} rounds of {bench.interval} "
            f"after the {args.benchmark} burn-in of {bench.burn_in} steps, the "
            "last one without a move): give more --steps (at least "
            f"{bench.burn_in + 2 * bench.interval}) or a smaller --after"
        )
    folder = Path(args.out_dir) / "ensemble"
    check_before_running(
        parser, args,
        [seed_path(folder, args.name, s) for s in range(args.seeds)],
        settings_of(args, *SETTINGS),
    )  # fmt: skip


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    add_seeds_arg(parser, None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--after", type=float, default=0.5,
                        help="first snapshot round, as a fraction of the rounds, "
                        "in [0, 1)")  # fmt: skip
    add_data_dir_arg(parser)
    add_output_args(parser, None)
    args = parser.parse_args(argv)
    bench = BENCHMARKS[args.benchmark]
    args.seeds = bench.seeds if args.seeds is None else args.seeds
    args.steps = bench.steps if args.steps is None else args.steps
    args.name = args.name or f"ensemble_{args.benchmark}"
    check_args(parser, args, bench)
    dataset = load(args.benchmark, args.data_dir)
    dataset = dataset._replace(
        validation=subset(dataset.validation, bench.val_subset),
        test=subset(dataset.test, bench.test_subset),
    )
    records = [run_seed(args, bench, dataset, s) for s in range(args.seeds)]
    rounds = (args.steps - bench.burn_in) // bench.interval
    desc = (
        f"{type(bench.model).__name__}, {bench.replicas} replicas, lr ladder "
        f"{bench.lr_low}–{bench.lr_high}, {args.steps} steps, {rounds} rounds of "
        f"{bench.interval}; cold-chain snapshots every round from round "
        f"{int(args.after * rounds)}; PT with c='auto'; the settings of "
        "experiments.compare"
    )
    markdown, paired = table(records, args, desc)
    warn_dirty([r["provenance"]["git_commit"] for r in records], f"{args.name}'s table")
    payload = {"provenance": provenance(list(range(args.seeds)),
                                        outputs=output_dirs(args)),
               "settings": settings_of(args), "paired": paired,
               "seed_provenance": {r["seed"]: r["provenance"] for r in records},
               "records": records, "table": markdown}  # fmt: skip
    write_outputs(args, payload, markdown)
    return json.loads(json.dumps(paired))


if __name__ == "__main__":
    main()
