"""Where a round's time goes: the SGD steps, the evaluation, the move, the records.

    python -m experiments.round_cost --replicas 8 64 --layouts 1x1 1x2 2x1

A round of ``pt_train`` (or ``pbt_train``) is ``interval`` fused SGD steps of
every replica, the evaluation of every replica on the validation set, the move
(the exchange, or PBT's exploit and explore) and the round's record read to
the host (gathered from every process when the replicas are split over
several). This script times each of them inside the real driver: it wraps the
driver's ``run_segment``, ``_Run.evaluate``, ``_jitted_move`` and ``_host``
with timers that wait for their results (``jax.block_until_ready``). The
driver itself waits at the same places (it reads the round's losses to the
host before the move), so the wrappers add no synchronisation a run does not
have; the time outside the four parts (Python bookkeeping) is reported too.

Every layout ``PxD`` runs in fresh processes: ``P`` JAX processes
(:func:`tempering.launch.launch`, gloo collectives over localhost) of ``D``
CPU devices each, the replicas split over all ``P * D`` devices. Each
measurement is a warm-up (a call of each length: it compiles), then ``--repeats`` timed
pairs of calls, of ``--rounds`` and of twice as many rounds: the
difference between the two, divided by ``--rounds``, is the time per round
(of each part, and in all), and what the shorter call takes beyond its
rounds is the call's fixed cost (checks, placing the data, the final
evaluation, the history). The table gives the medians, and the fixed cost's
range over the repeats: it is the difference of two noisy totals, often
smaller than their spread. ``--table-from RECORD`` writes a saved record's
table again without measuring.

The model is the zoo's MLP (one hidden layer of ``--width``) on synthetic
MNIST-1D-sized data (40 features, 10 classes), batch 128, a validation set
of 1,000 examples: the shape of the compare benchmark's MNIST-1D run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

if __name__ == "__main__" and "--child" in sys.argv:  # joins the launch first
    import tempering.launch

    tempering.launch.initialize()

from experiments.common import (
    REPO_ROOT,
    add_output_args,
    output_dirs,
    provenance,
    write_outputs,
)

PARTS = ("steps", "evaluation", "move", "records")
METHODS = ("pt", "pbt")


def _timed(totals: dict, calls: dict, part: str, fn):
    import jax

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        totals[part] += time.perf_counter() - start
        calls[part] += 1
        return out

    return wrapper


def instrument(totals: dict, calls: dict) -> None:
    """Wraps the driver's four parts of a round with timers adding to ``totals``
    (seconds) and ``calls`` (how often each part ran)."""
    from tempering import driver

    driver.run_segment = _timed(totals, calls, "steps", driver.run_segment)
    driver._jitted_move = _timed(totals, calls, "move", driver._jitted_move)
    driver._host = _timed(totals, calls, "records", driver._host)
    driver._Run.evaluate = _timed(totals, calls, "evaluation", driver._Run.evaluate)


def trainer(method: str, ladder, run: dict, interval: int):
    """``call(state, key, num_steps)``: the method's driver with ``run``'s settings."""
    import tempering as tp

    if method == "pt":
        return lambda state, key, steps: tp.pt_train(
            state, ladder, key, num_steps=steps, exchange_interval=interval,
            c=1.0, **run,
        )  # fmt: skip
    low, high = (
        ladder.values["learning_rate"].min(),
        ladder.values["learning_rate"].max(),
    )
    config = tp.pbt_config(
        {"learning_rate": tp.Prior(float(low), float(high), log=True)}, fraction=0.25
    )
    return lambda state, key, steps: tp.pbt_train(
        state, key, config=config, num_steps=steps, ready_interval=interval, **run
    )


def measure(args: argparse.Namespace) -> dict:
    """One process's share of a launch: every (method, M) of the command line."""
    import jax

    import tempering as tp
    from tempering.zoo.models import MLP

    totals = dict.fromkeys(PARTS, 0.0)
    calls = dict.fromkeys(PARTS, 0)
    instrument(totals, calls)
    rng = np.random.default_rng(0)  # the same data in every process
    x = rng.normal(size=(4000, 40)).astype(np.float32)
    y = rng.integers(0, 10, 4000).astype(np.int32)
    rows = []
    for method in args.methods:
        for num in args.replicas:
            ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, num)
            model = MLP((args.width,), 10)
            state = tp.create_replicas(
                jax.random.key(0), model, tp.sgd(0.05, momentum=0.9), x[:1],
                ladder=ladder,
            )  # fmt: skip
            run = dict(
                train_data=(x[:3000], y[:3000]), validation_data=(x[3000:], y[3000:]),
                batch_size=128, devices=jax.devices(), progress=False,
            )  # fmt: skip
            call = trainer(method, ladder, run, args.interval)
            for rounds in (args.rounds, 2 * args.rounds):  # compiles
                call(state, jax.random.key(1), rounds * args.interval)
            per_round = []
            for repeat in range(args.repeats):
                timed, counted = {}, {}
                for rounds in (args.rounds, 2 * args.rounds):
                    for part in PARTS:
                        totals[part], calls[part] = 0.0, 0
                    start = time.perf_counter()
                    call(state, jax.random.key(2 + repeat), rounds * args.interval)
                    timed[rounds] = {"total": time.perf_counter() - start, **totals}
                    counted[rounds] = dict(calls)
                short, long = timed[args.rounds], timed[2 * args.rounds]
                ms = {k: 1000 * (long[k] - short[k]) / args.rounds for k in short}
                ms["other"] = ms["total"] - sum(ms[p] for p in PARTS)
                ms["round"] = ms.pop("total")
                ms["call"] = 1000 * short["total"] - args.rounds * ms["round"]
                per_round.append(ms)
            median = {
                k: float(np.median([r[k] for r in per_round])) for k in per_round[0]
            }
            calls_per_round = {
                p: (counted[2 * args.rounds][p] - counted[args.rounds][p]) / args.rounds
                for p in PARTS
            }  # of the last repeat: the same in every one
            rows.append({"method": method, "replicas": num, "ms_per_round": median,
                         "calls_per_round": calls_per_round,
                         "repeats": per_round})  # fmt: skip
    return {"process": jax.process_index(), "devices": jax.device_count(), "rows": rows}


def run_layout(layout: str, args: argparse.Namespace) -> list[dict]:
    """The rows of one ``PxD`` layout, from its process 0."""
    from tempering.launch import launch

    processes, devices = (int(n) for n in layout.split("x"))
    child = [
        "--child", "--replicas", *map(str, args.replicas), "--methods", *args.methods,
        "--rounds", str(args.rounds), "--interval", str(args.interval),
        "--repeats", str(args.repeats), "--width", str(args.width),
    ]  # fmt: skip
    env = {
        "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
        )
    }
    result = launch(
        Path(__file__), processes, devices, child, timeout=3000, env=env,
        distributed_timeout=300,
    )  # fmt: skip
    out = json.loads(result.stdout[0].strip().splitlines()[-1])
    for row in out["rows"]:
        row["layout"] = layout
        row["processes"], row["devices"] = processes, out["devices"]
    return out["rows"]


def table(rows: list[dict], args: argparse.Namespace, record: dict) -> str:
    lines = [
        "| method | M | processes x devices | round (ms) | steps | evaluation | "
        "move | records | other | move + records (% of round) | call's fixed cost (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["ms_per_round"]
        cost = 100 * (t["move"] + t["records"]) / t["round"]
        parts = " | ".join(f"{t[p]:.2f}" for p in (*PARTS, "other"))
        lines.append(
            f"| {r['method']} | {r['replicas']} | {r['processes']} x "
            f"{r['devices'] // r['processes']} | {t['round']:.1f} | {parts} | "
            f"{cost:.2f} | {fixed_cost(r)} |"
        )
    prov = record["provenance"]
    machine = prov["machine"]
    lines += [
        "",
        f"`{prov['command']}` at {prov['git_commit']}, {machine.get('cpu', '')} "
        f"({machine.get('cpu_isa', '')}, {machine.get('cpu_count', '')} cores): "
        f"milliseconds per round, median of {args.repeats} pairs of calls of "
        f"{args.rounds} and {2 * args.rounds} rounds after a warm-up (the "
        f"difference over the extra rounds); a round is {args.interval} SGD steps of every "
        f"replica (MLP {args.width}, batch 128, 40 features), the evaluation on "
        "1,000 examples, the move (PT: the exchange with C = 1; PBT: exploit and "
        "explore) and the round's records read to the host (from every process). "
        "The call's fixed cost is what the shorter call took beyond its rounds, "
        "the median [min, max] over the repeats; n/r (not resolved) where that "
        "range reaches zero or below: the fixed cost is then smaller than the "
        f"spread of {args.rounds} rounds' time between repeats.",
    ]
    return "\n".join(lines) + "\n"


def fixed_cost(row: dict) -> str:
    """The call's fixed cost of a row: median [min, max] over repeats, or n/r."""
    costs = [repeat["call"] for repeat in row["repeats"]]
    spread = f"[{min(costs):.0f}, {max(costs):.0f}]"
    if min(costs) <= 0:
        return f"n/r {spread}"
    return f"{row['ms_per_round']['call']:.0f} {spread}"


def table_from(path: Path) -> str:
    """The table of a saved record, written again beside it (its ``.md``)."""
    record = json.loads(path.read_text())
    text = table(record["rows"], argparse.Namespace(**record["settings"]), record)
    path.with_suffix(".md").write_text(text)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--layouts", nargs="+", default=["1x1", "1x2", "2x1"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--table-from",
        type=Path,
        metavar="RECORD",
        help="measure nothing: write the table of this saved record (its .json) "
        "again beside it, as this version of the script renders it",
    )
    add_output_args(parser, "round_cost")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return
    if args.table_from is not None:
        print(table_from(args.table_from))
        return
    rows = []
    for layout in args.layouts:
        rows += run_layout(layout, args)
        print(json.dumps([{k: r[k] for k in ("layout", "method", "replicas",
                                              "ms_per_round")} for r in rows[-len(args.replicas) * len(args.methods):]]),
              flush=True)  # fmt: skip
    record = {
        "provenance": provenance(outputs=output_dirs(args)),
        "settings": vars(args),
        "rows": rows,
    }
    write_outputs(args, record, table(rows, args, record))


if __name__ == "__main__":
    main()
