"""Host memory and time against the number of rounds (the records are per round).

Every round's record goes to the host as numpy when the round ends, so the
memory a run holds grows only by those small arrays. For each number of
rounds, in a fresh process: a warm-up run of 50 rounds (compiles everything),
then the timed run; the resident set size (VmRSS) is read before and after.

    python -m experiments.rounds_memory --rounds 50 5000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from experiments.common import add_output_args, output_dirs, provenance, write_outputs


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(num_rounds: int) -> dict:
    import jax
    import jax.numpy as jnp  # noqa: F401

    import tempering as tp
    from tempering.zoo.models import MLP

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16)).astype(np.float32)
    y = rng.integers(0, 4, size=512).astype(np.int32)
    ladder = tp.make_ladder(learning_rate=[0.01, 0.02, 0.04, 0.08])
    state = tp.create_replicas(jax.random.key(0), MLP((16,), 4), tp.sgd(0.01), x[:8],
                               ladder=ladder)  # fmt: skip
    settings = dict(train_data=(x, y), validation_data=(x[:64], y[:64]),
                    exchange_interval=1, c=1.0, batch_size=32)  # fmt: skip
    tp.pt_train(state, ladder, jax.random.key(1), num_steps=50, **settings)
    before = rss_mb()
    start = time.perf_counter()
    result = tp.pt_train(state, ladder, jax.random.key(1), num_steps=num_rounds,
                         **settings)  # fmt: skip
    seconds = time.perf_counter() - start
    after = rss_mb()
    assert len(result.history.step) == num_rounds
    return {
        "rounds": num_rounds,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "rss_growth_mb": after - before,
        "seconds": seconds,
        "ms_per_round": 1000 * seconds / num_rounds,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, nargs="+", default=[50, 5000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    add_output_args(parser, "rounds_memory")
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    rows = []
    for rounds in args.rounds:
        out = subprocess.run(
            [sys.executable, "-m", "experiments.rounds_memory", "--child", str(rounds)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    record = {"provenance": provenance(outputs=output_dirs(args)), "rows": rows}
    lines = [
        "| rounds | RSS growth (MB) | time (s) | ms / round |",
        "|---|---|---|---|",
        *(
            f"| {r['rounds']} | {r['rss_growth_mb']:.1f} | {r['seconds']:.1f} | "
            f"{r['ms_per_round']:.2f} |"
            for r in rows
        ),
        "",
        f"`{record['provenance']['command']}` at {record['provenance']['git_commit']}, "
        f"{record['provenance']['machine'].get('cpu', '')}: M = 4, MLP 16, "
        "exchange every step, after a 50-round warm-up in the same process.",
    ]
    write_outputs(args, record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
