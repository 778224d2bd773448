"""Where a single-replica SGD step spends its time on this backend.

Every ``conv_general_dilated`` of the step (the forward convolutions and the
backward ones that ``jax.grad`` emits: input and kernel gradients) is timed on
its own, compiled alone, at the step's shapes, and set against the whole
step; with the FLOPs of each convolution this gives its achieved GFLOP/s. It
explains the limits in ``experiments/benchmark.py``: where the convolutions are
most of the step and run no faster merged than one replica at a time, no
formulation of the fused step can beat a loop over replicas by much.

    python -m experiments.profile_step --models lenet_cifar10,lenet_emnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from experiments.benchmark import BATCH, single_replica_step, time_interleaved
from experiments.common import RESULTS_DIR, provenance, save_result
from experiments.flops import CONV, compiled_alone, conv_flops, equations


def profile(name: str, reps: int) -> dict:
    one, step_args = single_replica_step(name)
    jaxpr = jax.make_jaxpr(one)(*step_args)
    step = jax.jit(one)
    fns = {"step": lambda: step(*step_args)}
    convs = []
    rng = np.random.default_rng(0)
    for i, eqn in enumerate(equations(jaxpr.jaxpr, CONV)):
        fns[f"conv{i}"], shapes = compiled_alone(eqn, rng)
        convs.append({"index": i, **shapes, "flops": conv_flops(eqn)})
    timing = time_interleaved(fns, reps)
    step_s = timing["step"]["min_s"]
    for c in convs:
        t = timing[f"conv{c['index']}"]["min_s"]
        c["seconds"] = t
        c["share_of_step"] = t / step_s
        c["gflops_per_s"] = c["flops"] / t / 1e9
    conv_s = sum(c["seconds"] for c in convs)
    return {
        "model": name,
        "step_s": step_s,
        "conv_share": conv_s / step_s,
        "conv_gflops_per_s": sum(c["flops"] for c in convs) / conv_s / 1e9,
        "convs": convs,
    }


def markdown(result: dict) -> str:
    m = result["provenance"]["machine"]
    lines = [
        f"Single-replica SGD step, batch {BATCH}, {m['cpu']}, {m['cpu_count']} "
        f"cores, jax {m['jax']}; each convolution of the step (forward and the "
        "two gradients) compiled and timed alone (min over interleaved repeats).",
        "",
        "| model | convolution (lhs * rhs → out) | GFLOP | ms | share of step | GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["profiles"]:
        for c in r["convs"]:
            lines.append(
                f"| {r['model']} | {c['lhs']} * {c['rhs']} → {c['out']} | "
                f"{c['flops'] / 1e9:.3f} | {1e3 * c['seconds']:.1f} | "
                f"{100 * c['share_of_step']:.0f}% | {c['gflops_per_s']:.1f} |"
            )
        lines.append(
            f"| {r['model']} | **all convolutions** | | | "
            f"**{100 * r['conv_share']:.0f}%** of {1e3 * r['step_s']:.1f} ms | "
            f"{r['conv_gflops_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet_cifar10,lenet_emnist")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--name", default="profile_step_cpu")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    result = {
        "provenance": provenance(seeds=[0]),
        "profiles": [profile(n, args.reps) for n in args.models.split(",")],
    }
    save_result(args.name, result, args.out)
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
