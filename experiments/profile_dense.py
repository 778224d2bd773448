"""Where a zoo model's step spends its time: M single products against batched ones.

The zoo benchmark (``experiments/bench_zoo.py``) finds no formulation of the
fused MLP step clearly faster than a user's loop over M jitted steps on CPU.
This profile says why. Every ``dot_general`` (``--primitive``; or every
``conv_general_dilated``, the convolutions of a LeNet) of one replica's SGD
step (forward, and the input and weight gradients ``jax.grad`` emits) is
compiled alone at the step's shapes and called M times in a row, as the loop
runs it; every one of the vmapped M-replica step (one batched product, or
one with the replica axis merged into a shared operand) is compiled alone and
called once. Both are timed interleaved with the whole steps (the library's
single-replica step and a user's flax + optax step, each in a loop over
replicas, and the fused step under plain vmap and ``"sequential"``; data
passed as arguments, as in the zoo), so the table shows
what share of a step the products are, and whether batching them over
replicas gains anything on this backend.

    python -m experiments.profile_dense
    python -m experiments.profile_dense --model lenet_cifar10 --primitive conv_general_dilated
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

from experiments import zoo
from experiments.bench_zoo import (
    BATCH,
    fused_step,
    make_replicas,
    synthetic,
    time_interleaved,
)
from experiments.common import add_output_args, output_dirs, provenance, write_outputs
from experiments.flops import CONV, DOT, compiled_alone, equations
from tempering.step import replica_train_step


def profile(model: str, num: int, reps: int, primitive: str = DOT) -> dict:
    entry = zoo.ZOO[model]
    x, y = synthetic(entry.input_shape, entry.num_classes, BATCH)
    state = make_replicas(entry, num, x)
    one = functools.partial(replica_train_step, state)
    keys = jax.random.split(jax.random.key(1), num)
    stacked = (state.params, state.batch_stats, state.opt_state, state.hyperparams)
    replica = jax.tree.map(lambda a: a[0], stacked)
    single_jaxpr = jax.make_jaxpr(one)(*replica, keys[0], x, y).jaxpr
    batched = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None, None))
    fused_jaxpr = jax.make_jaxpr(batched)(*stacked, keys, x, y).jaxpr
    rng = np.random.default_rng(0)
    fns, rows = {}, []
    singles = [compiled_alone(e, rng) for e in equations(single_jaxpr, primitive)]
    fuseds = [compiled_alone(e, rng) for e in equations(fused_jaxpr, primitive)]
    for i, ((single, s_shapes), (fused, f_shapes)) in enumerate(
        zip(singles, fuseds, strict=True)
    ):
        fns[f"loop{i}"] = lambda f=single: [f() for _ in range(num)]
        fns[f"fused{i}"] = fused
        rows.append({"index": i, "single": s_shapes, "fused": f_shapes})
    step = jax.jit(one)
    per_replica = [jax.tree.map(lambda a, m=m: a[m], stacked) for m in range(num)]
    fns["step_loop"] = lambda: [
        step(*r, k, x, y) for r, k in zip(per_replica, keys, strict=True)
    ]
    init, hand = zoo.hand_step(entry)
    users = [jax.jit(init)(k, x) for k in keys]
    fns["step_hand"] = lambda: [
        hand(v, o, k, x, y) for (v, o), k in zip(users, keys, strict=True)
    ]
    for policy in ("vmap", "sequential"):
        fns[f"step_{policy}"] = functools.partial(
            fused_step, state, keys[0], x, y, vectorize=policy
        )
    timing = time_interleaved(fns, reps)
    med = {k: v["median_s"] for k, v in timing.items()}
    for r in rows:
        r["loop_s"], r["fused_s"] = med[f"loop{r['index']}"], med[f"fused{r['index']}"]
    return {
        "model": model,
        "M": num,
        "primitive": primitive,
        "rows": rows,
        "steps": {k[5:]: v for k, v in med.items() if k.startswith("step_")},
        "gemm_loop_s": sum(r["loop_s"] for r in rows),
        "gemm_fused_s": sum(r["fused_s"] for r in rows),
        "timing": timing,
    }


def markdown(result: dict) -> str:
    m = result["provenance"]["machine"]
    p = result["profile"]
    steps = p["steps"]
    what = "convolution" if p.get("primitive") == CONV else "matrix product"
    lines = [
        f"Zoo model `{p['model']}`, M = {p['M']}, batch {BATCH}, {m['cpu']}, "
        f"{m['cpu_count']} cores, jax {m['jax']}; each {what} of the step "
        "compiled and timed alone, **median of interleaved repeats**: *loop* = "
        f"one replica's {what} called M times, *fused* = the vmapped step's "
        f"{what} called once.",
        "",
        "| product | one replica (lhs · rhs → out) | fused (lhs · rhs → out) | "
        "loop ms | fused ms | loop / fused |",
        "|---|---|---|---|---|---|",
    ]
    for r in p["rows"]:
        s, f = r["single"], r["fused"]
        lines.append(
            f"| {r['index']} | {s['lhs']} · {s['rhs']} → {s['out']} | "
            f"{f['lhs']} · {f['rhs']} → {f['out']} | {1e3 * r['loop_s']:.2f} | "
            f"{1e3 * r['fused_s']:.2f} | {r['loop_s'] / r['fused_s']:.2f} |"
        )
    lines.append(
        f"| **all** | | | **{1e3 * p['gemm_loop_s']:.2f}** | "
        f"**{1e3 * p['gemm_fused_s']:.2f}** | "
        f"**{p['gemm_loop_s'] / p['gemm_fused_s']:.2f}** |"
    )
    lines += [
        "",
        f"Whole steps (M replicas): the library's single-replica step in a "
        f"loop {1e3 * steps['loop']:.2f} ms, a user's flax + optax step in a "
        f"loop (the zoo's baseline) {1e3 * steps['hand']:.2f} ms, fused (vmap) "
        f"{1e3 * steps['vmap']:.2f} ms, fused (sequential) "
        f"{1e3 * steps['sequential']:.2f} ms; the {what}s are "
        f"{100 * p['gemm_loop_s'] / steps['loop']:.0f}% of the loop's step and "
        f"{100 * p['gemm_fused_s'] / steps['vmap']:.0f}% of the vmapped one.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=list(zoo.ZOO))
    parser.add_argument("--primitive", default=DOT, choices=[DOT, CONV])
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--reps", type=int, default=15)
    add_output_args(parser, "profile_dense_cpu")
    args = parser.parse_args(argv)
    result = {
        "provenance": provenance(seeds=[0], outputs=output_dirs(args)),
        "statistic": "median over interleaved repeats",
        "profile": profile(args.model, args.replicas, args.reps, args.primitive),
    }
    write_outputs(args, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
