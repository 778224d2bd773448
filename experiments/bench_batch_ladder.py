"""What a batch-size ladder costs: the masked fused step against the plain one.

    python -m experiments.bench_batch_ladder --models mlp,lenet_cifar10,resnet20

A batch-size ladder trains M replicas at M batch sizes in one fused step: every
replica computes its loss and gradients on the shared batch of the largest
size, and its first ``batch_size`` examples are weighted in (the others are
masked out; BatchNorm statistics too). So the masked step costs what the plain
fused step at the largest batch costs, whatever the smaller sizes: this script
measures that (both steps interleaved, ``--reps`` repeats, medians and the
paired ratio), for zoo models at M rungs with batch sizes halving from
``--batch`` (e.g. 128, 64, 32, 16 at M = 4). The plain step trains every
replica on all of the batch; the table also gives the share of the computed
examples the ladder uses (sum of the sizes / (M x largest)).
"""

from __future__ import annotations

import argparse

import jax

import tempering as tp
from experiments import zoo
from experiments.bench_zoo import fused_step, paired_ratio, synthetic, time_interleaved
from experiments.common import add_output_args, output_dirs, provenance, write_outputs


def bench(name: str, num: int, batch: int, reps: int) -> dict:
    """Plain and masked fused steps of one zoo model, timed interleaved."""
    entry = zoo.ZOO[name]
    x, y = synthetic(entry.input_shape, entry.num_classes, batch)
    sizes = [max(1, batch // 2**m) for m in range(num)]
    tx = tp.sgd(zoo.LEARNING_RATE, momentum=zoo.MOMENTUM)
    common = dict(
        hyperparams=dict(entry.call_kwargs), model_inputs=tuple(entry.call_kwargs)
    )
    plain = tp.create_replicas(jax.random.key(0), entry.make(), tx, x, num_replicas=num,
                               **common)  # fmt: skip
    masked = tp.create_replicas(
        jax.random.key(0), entry.make(), tx, x,
        ladder=tp.make_ladder(batch_size=sizes), **common,
    )  # fmt: skip
    key = jax.random.key(1)
    timed = time_interleaved(
        {
            "plain": lambda: fused_step(plain, key, x, y)[1].loss,
            "masked": lambda: fused_step(masked, key, x, y)[1].loss,
        },
        reps,
    )
    return {
        "model": name,
        "replicas": num,
        "batch_sizes": sizes,
        "used_share": sum(sizes) / (num * batch),
        "plain_ms": 1000 * timed["plain"]["median_s"],
        "masked_ms": 1000 * timed["masked"]["median_s"],
        "masked_over_plain": paired_ratio(
            timed["masked"]["times_s"], timed["plain"]["times_s"]
        ),
        "times": timed,
    }


def table(rows: list[dict], record: dict, args: argparse.Namespace) -> str:
    lines = [
        "| model | M | batch sizes | plain step (ms) | masked step (ms) | "
        "masked / plain, median [q25, q75] | examples used |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["masked_over_plain"]
        lines.append(
            f"| {r['model']} | {r['replicas']} | {r['batch_sizes']} | "
            f"{r['plain_ms']:.1f} | {r['masked_ms']:.1f} | {ratio['median']:.3f} "
            f"[{ratio['q25']:.3f}, {ratio['q75']:.3f}] | {100 * r['used_share']:.0f}% |"
        )
    prov = record["provenance"]
    machine = prov["machine"]
    lines += [
        "",
        f"`{prov['command']}` at {prov['git_commit']}, {machine.get('cpu', '')} "
        f"({machine.get('cpu_isa', '')}, {machine.get('cpu_count', '')} cores, "
        f"shared): one SGD step (momentum) of all M replicas, medians of "
        f"{args.reps} interleaved repeats; plain: every replica on the whole "
        f"batch of {args.batch}; masked: a batch-size ladder, replica m on the "
        "first batch_size[m] examples of the same batch.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="mlp,lenet_cifar10,resnet20")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=20)
    add_output_args(parser, "bench_batch_ladder")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(zoo.ZOO))
    if unknown or not names:
        parser.error(
            f"argument --models: unknown models {unknown}; the zoo has {list(zoo.ZOO)}"
        )
    for flag in ("replicas", "batch", "reps"):
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag} must be >= 1")
    rows = []
    for name in names:
        rows.append(bench(name, args.replicas, args.batch, args.reps))
        print({k: rows[-1][k] for k in ("model", "plain_ms", "masked_ms")}, flush=True)
    record = {
        "provenance": provenance(outputs=output_dirs(args)),
        "settings": vars(args),
        "rows": rows,
    }
    write_outputs(args, record, table(rows, record, args))


if __name__ == "__main__":
    main()
