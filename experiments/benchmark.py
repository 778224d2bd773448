"""Throughput of the fused replica step against a loop and lax.map; PT overhead.

Replica-steps per second (one SGD step of one replica, batch 128) for M
replicas of an MLP (MNIST-1D shapes), both LeNet-5s and ResNet-20, comparing

- ``fused``: the library's step, ``jit(train_step)`` with the default
  ``vectorize="auto"`` (tempering.fast);
- ``unroll``: ``vectorize="unroll"``, every convolution emitted once per
  replica (merged into one convolution where the input is shared);
- ``vmap``: the same step forced to plain ``jax.vmap`` (``vectorize="vmap"``),
  i.e. the naive vectorised grid;
- ``loop``: a Python loop over M jitted single-replica steps;
- ``lax_map``: ``jax.lax.map`` over replicas inside one jit;
- ``sequential``: ``vectorize="sequential"``, the single-replica step emitted
  M times in one program and chained to run one after another (M <= 8).

Also compared, at M = 8: a segment of steps run as one ``lax.fori_loop``
program (``loop="device"``) against one compiled step called from Python per
step (``loop="host"``, the CPU default), through
:func:`tempering.loops.run_segment`.

All variants of one (model, M) are timed interleaved, round robin, in one
process, so that load from other processes hits them alike; the ratios are the
result (absolute times are only meaningful on an idle, named device). Also
measured: the compiled peak memory against M, the share of ``pt_train`` wall
time spent outside SGD (validation + exchange), and PT against the independent
grid (``exchanges=False``) in the same engine.

Run::

    python -m experiments.benchmark            # full CPU run
    python -m experiments.benchmark --quick    # a few minutes

The models users write (a zoo: max-pool LeNet, BatchNorm CNN, 1-D conv net,
ResNet-20, a transformer layer, ...) against the loop a user writes by hand
(flax + optax, no library), median of interleaved repeats:
``python -m experiments.bench_zoo``.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import tempering as tp
from experiments.common import RESULTS_DIR, provenance, run_evaluate, save_result
from experiments.flops import jaxpr_flops, peak_tflops
from tempering import loops
from tempering.sources import ArraySource
from tempering.step import replica_train_step
from tempering.zoo import models

BATCH = 128
VARIANTS = ("fused", "unroll", "vmap", "loop", "lax_map", "sequential")
MAX_SEQUENTIAL_M = 8  # compile time grows with M copies of the step
# lax.map runs ResNet-20's step as a sequential loop of small convolutions,
# far slower than the Python loop on CPU; timing it at every M would dominate
# the benchmark's run time, so it is left out for ResNet-20.
NO_LAX_MAP = ("resnet20",)


def model_spec(name: str):
    """(model, single input shape, number of classes) of a benchmark model."""
    if name == "mlp":
        return models.MLP(), (40,), 10
    if name == "lenet_emnist":
        return models.lenet5_emnist(), (28, 28, 1), 26
    if name == "lenet_cifar10":
        return models.lenet5_cifar10(), (32, 32, 3), 10
    if name == "resnet20":
        return models.resnet20(), (32, 32, 3), 10
    raise ValueError(f"unknown model {name!r}")


def synthetic(shape, classes, num, seed=0):
    """Random inputs and labels: timing does not depend on the values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=num).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def make_state(name: str, num: int):
    model, shape, _ = model_spec(name)
    tx = models.resnet_optimizer() if name == "resnet20" else tp.sgd(0.01, 0.9)
    rate = 0.0 if name == "resnet20" else 0.1
    return tp.create_replicas(
        jax.random.key(0),
        model,
        tx,
        jnp.zeros((BATCH, *shape)),
        num_replicas=num,
        hyperparams={"dropout_rate": rate},
    )


# The fused step, jitted once; how it is vectorised is a static argument.
fused_step = jax.jit(tp.train_step, static_argnames=("per_replica_batch", "vectorize"))


def single_replica_step(name: str) -> tuple[Callable, tuple]:
    """One replica's unbatched SGD step at batch ``BATCH`` and its arguments."""
    _, shape, classes = model_spec(name)
    x, y = synthetic(shape, classes, BATCH)
    state = make_state(name, 1)
    replica = jax.tree.map(
        lambda a: a[0],
        (state.params, state.batch_stats, state.opt_state, state.hyperparams),
    )
    step = functools.partial(replica_train_step, state)
    return step, (*replica, jax.random.key(0), x, y)


def replica_step_flops(name: str) -> float:
    """Model FLOPs of one replica's SGD step at batch ``BATCH`` (forward + backward)."""
    step, args = single_replica_step(name)
    return jaxpr_flops(jax.make_jaxpr(step)(*args))


def step_variants(
    name: str, num: int, x, y, skip: tuple[str, ...] = ()
) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, one SGD step of all M replicas each."""
    state = make_state(name, num)
    key = jax.random.key(1)
    one = functools.partial(replica_train_step, state)
    keys = jax.random.split(key, num)
    args = (state.params, state.batch_stats, state.opt_state, state.hyperparams, keys)
    single = jax.jit(one)
    per_replica = [jax.tree.map(lambda a, m=m: a[m], args) for m in range(num)]
    mapped = jax.jit(lambda a, x, y: jax.lax.map(lambda s: one(*s, x, y), a))
    variants = {
        "fused": lambda: fused_step(state, key, x, y),
        "unroll": lambda: fused_step(state, key, x, y, vectorize="unroll"),
        "vmap": lambda: fused_step(state, key, x, y, vectorize="vmap"),
        "loop": lambda: [single(*p, x, y) for p in per_replica],
        "lax_map": lambda: mapped(args, x, y),
        "sequential": lambda: fused_step(state, key, x, y, vectorize="sequential"),
    }
    if name in NO_LAX_MAP:
        skip = (*skip, "lax_map")
    if num > MAX_SEQUENTIAL_M:
        skip = (*skip, "sequential")
    return {k: v for k, v in variants.items() if k not in skip}


def peak_memory(name: str, num: int, vectorize: str, x, y) -> dict[str, int]:
    """Compiled memory of the fused step (arguments, outputs, temporaries)."""
    state = make_state(name, num)
    lowered = fused_step.lower(state, jax.random.key(0), x, y, vectorize=vectorize)
    compiled = lowered.compile()
    mem = compiled.memory_analysis()
    if mem is None:
        return {}
    return {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "peak_bytes": int(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
        ),
    }


def time_interleaved(fns: dict[str, Callable], reps: int) -> dict[str, dict]:
    """Round-robin timing; min and median seconds per call of every variant."""
    first_call = {}
    for name, fn in fns.items():  # compile, then one warm call
        start = time.perf_counter()
        jax.block_until_ready(fn())
        first_call[name] = time.perf_counter() - start
        jax.block_until_ready(fn())
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - start)
    return {
        k: {
            "min_s": float(np.min(v)),
            "median_s": float(np.median(v)),
            "first_call_s": first_call[k],
            "times_s": [float(t) for t in v],
        }
        for k, v in times.items()
    }


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Median and quartiles of per-repeat ratios of two interleaved variants.

    Repeat i of both ran back to back, so their ratio cancels the machine's
    load at that moment; the spread of the ratios is the measurement's noise.
    """
    ratios = np.asarray(numerator) / np.asarray(denominator)
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    return {
        "median": float(q50),
        "q25": float(q25),
        "q75": float(q75),
        "n": len(ratios),
    }


def throughput(names, ms, reps, resnet_ms, resnet_skip=(), skip=()) -> list[dict]:
    rows = []
    peak = peak_tflops(jax.devices()[0].device_kind)
    for name in names:
        _, shape, classes = model_spec(name)
        x, y = synthetic(shape, classes, BATCH)
        flops = replica_step_flops(name)
        for num in resnet_ms if name == "resnet20" else ms:
            t0 = time.perf_counter()
            resnet = tuple(resnet_skip) if name == "resnet20" else ()
            variants = step_variants(name, num, x, y, (*skip, *resnet))
            repeats = min(reps, 3) if name == "resnet20" else reps
            timing = time_interleaved(variants, repeats)
            row = {"model": name, "M": num, "timing": timing}
            row["flops_per_replica_step"] = flops
            for k, t in timing.items():
                row[f"{k}_replica_steps_per_s"] = num / t["min_s"]
                row[f"{k}_tflops_per_s"] = flops * num / t["min_s"] / 1e12
                if peak is not None:
                    row[f"{k}_mfu"] = row[f"{k}_tflops_per_s"] / peak
                row[f"{k}_vs_loop"] = timing["loop"]["min_s"] / t["min_s"]
                row[f"{k}_vs_loop_median"] = timing["loop"]["median_s"] / t["median_s"]
            row["memory"] = {
                v: peak_memory(name, num, v, x, y) for v in ("auto", "vmap")
            }
            rows.append(row)
            print(
                f"{name:14s} M={num:3d} "
                + " ".join(f"{k}={row[f'{k}_vs_loop']:.2f}x" for k in timing)
                + f"  (vs loop, min of {repeats}; {time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    return rows


def pt_overhead(name: str, num: int, interval: int, rounds: int, reps: int) -> dict:
    """Wall time of pt_train (PT and grid) against SGD alone, same steps.

    The training set has ``9 * n_val`` examples and the validation split
    ``n_val`` (a 10 % split of the paper's data sizes: 54k/6k for MNIST-like,
    45k/5k for CIFAR-10, 4k/1k... scaled down to keep the run short).
    """
    _, shape, classes = model_spec(name)
    n_val = {"mlp": 1000, "lenet_emnist": 5000, "lenet_cifar10": 5000}.get(name, 5000)
    train = synthetic(shape, classes, 9 * n_val, seed=1)
    val = synthetic(shape, classes, n_val, seed=2)
    ladder = tp.make_ladder(learning_rate=np.linspace(0.01, 0.02, num))
    state = make_state(name, num)
    steps = interval * rounds
    evaluate = functools.partial(run_evaluate, batch_size=1000)
    # the segments exactly as pt_train runs them (its loop and batches)
    source = ArraySource(*train)
    settings = loops.SegmentSettings(batch_size=BATCH)
    loop = loops.loop_for(state, train[0], "auto")

    def run_pt(exchanges):
        def go():
            return tp.pt_train(
                state,
                ladder,
                jax.random.key(0),
                train_data=train,
                validation_data=val,
                num_steps=steps,
                exchange_interval=interval,
                exchanges=exchanges,
            ).state

        return go

    def sgd_only():
        s = jax.tree.map(jnp.copy, state)
        for r in range(rounds):  # same rounds, no validation or exchange
            s, _ = loops.run_segment(
                s, jax.random.key(r), source, interval, data_key=jax.random.key(0),
                settings=settings, loop=loop,
            )  # fmt: skip
        return s

    fns = {"pt": run_pt(True), "grid": run_pt(False), "sgd_only": sgd_only}
    timing = time_interleaved(fns, reps)
    eval_t = time_interleaved({"eval": lambda: evaluate(state, *val)}, 5)["eval"]
    step_t = timing["sgd_only"]["min_s"] / steps
    return {
        "model": name,
        "M": num,
        "exchange_interval": interval,
        "rounds": rounds,
        "n_val": n_val,
        "timing": timing,
        "validation_s": eval_t,
        "pt_vs_grid": timing["pt"]["min_s"] / timing["grid"]["min_s"],
        "pt_vs_grid_median": timing["pt"]["median_s"] / timing["grid"]["median_s"],
        "pt_vs_grid_paired": paired_ratio(
            timing["pt"]["times_s"], timing["grid"]["times_s"]
        ),
        "outside_sgd_share": 1 - timing["sgd_only"]["min_s"] / timing["pt"]["min_s"],
        "validation_share_estimate": eval_t["min_s"]
        / (eval_t["min_s"] + interval * step_t),
    }


def pt_overhead_estimate(name: str, num: int, intervals, reps: int) -> dict:
    """Validation share at the authors' intervals from measured components."""
    _, shape, classes = model_spec(name)
    x, y = synthetic(shape, classes, BATCH)
    val = synthetic(shape, classes, 5000, seed=2)
    state = make_state(name, num)
    evaluate = functools.partial(run_evaluate, batch_size=1000)
    timing = time_interleaved(
        {
            "step": lambda: fused_step(state, jax.random.key(0), x, y),
            "validation": lambda: evaluate(state, *val),
        },
        reps,
    )
    t_step, t_val = timing["step"]["min_s"], timing["validation"]["min_s"]
    return {
        "model": name,
        "M": num,
        "n_val": 5000,
        "validation_in_steps": t_val / t_step,
        "share": {str(k): t_val / (t_val + k * t_step) for k in intervals},
    }


def segment_loops(name: str, num: int, steps: int, reps: int) -> dict:
    """Seconds per step of a segment: lax.fori_loop program vs host loop."""
    _, shape, classes = model_spec(name)
    train = ArraySource(*synthetic(shape, classes, 20 * BATCH, seed=1))
    state = make_state(name, num)
    settings = loops.SegmentSettings(batch_size=BATCH)

    def run(loop):
        def go():
            copy = jax.tree.map(jnp.copy, state)  # run_segment donates it
            return loops.run_segment(
                copy, jax.random.key(0), train, steps, data_key=jax.random.key(1),
                settings=settings, loop=loop,
            )  # fmt: skip

        return go

    timing = time_interleaved({loop: run(loop) for loop in ("device", "host")}, reps)
    row = {"model": name, "M": num, "steps": steps, "timing": timing}
    row["host_vs_device"] = timing["device"]["min_s"] / timing["host"]["min_s"]
    row["host_vs_device_median"] = (
        timing["device"]["median_s"] / timing["host"]["median_s"]
    )
    print(
        f"segment {name} M={num}: device {timing['device']['min_s'] / steps:.3f} "
        f"s/step, host {timing['host']['min_s'] / steps:.3f} s/step, "
        f"host {row['host_vs_device']:.2f}x faster",
        flush=True,
    )
    return row


def device_line(machine: dict) -> tuple[str, str]:
    """(short device name, one-line description) of the machine of a result."""
    if machine["backend"] == "cpu":
        return "CPU", f"{machine['cpu']}, {machine['cpu_count']} cores (shared)"
    kind = machine["devices"][0]
    return kind, f"{kind} (host: {machine['cpu']}, {machine['cpu_count']} cores)"


def markdown(result: dict) -> str:
    machine = result["provenance"]["machine"]
    short, described = device_line(machine)
    has_mfu = any("fused_mfu" in r for r in result["throughput"])
    lines = (
        []
        if not result["throughput"]
        else [
            f"### Fused replica step on {short}: throughput relative to a loop of M "
            "jitted steps",
            "",
            f"{described}, jax {machine['jax']}, batch {BATCH}. "
            "Ratio = loop time / variant time (min over interleaved repeats, at "
            "most 3 for ResNet-20; >1 is faster than the loop). `fused` is the "
            "library default "
            '(`vectorize="auto"`), `unroll` one convolution per replica, `vmap` '
            "plain `jax.vmap`. Model GFLOP/s: matrix products and convolutions of "
            "the step (forward and backward, `experiments/flops.py`) per second of "
            "the fused step"
            + (
                "; MFU: that over the device's dense float32 (TF32) peak."
                if has_mfu
                else "."
            ),
            "",
            "| model | M | fused | unroll | vmap | lax.map | sequential | loop | "
            "peak MiB fused / vmap | fused model GFLOP/s |"
            + (" fused MFU |" if has_mfu else ""),
            "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if has_mfu else ""),
        ]
    )
    for r in result["throughput"]:
        mem = r["memory"]
        mib = " / ".join(
            f"{mem[v].get('peak_bytes', 0) / 2**20:.1f}" for v in ("auto", "vmap")
        )
        cells = [
            f"{r[f'{v}_vs_loop']:.2f}" if f"{v}_vs_loop" in r else "–"
            for v in ("fused", "unroll", "vmap", "lax_map", "sequential")
        ]
        gflops = (
            f"{1e3 * r['fused_tflops_per_s']:.1f}" if "fused_tflops_per_s" in r else "–"
        )
        mfu = f" {100 * r['fused_mfu']:.1f}% |" if "fused_mfu" in r else ""
        if has_mfu and not mfu:
            mfu = " – |"
        lines.append(
            f"| {r['model']} | {r['M']} | {' | '.join(cells)} | 1.00 | {mib} | "
            f"{gflops} |{mfu}"
        )
    if result.get("segment_loops"):
        lines += [
            "",
            "### A segment of steps: `lax.fori_loop` program vs host loop",
            "",
            "Seconds per step are min over interleaved repeats (shared machine: "
            "read the ratio). `device`: the segment as one `lax.fori_loop` "
            "program; `host`: one compiled step called per step (the CPU default for "
            "models with convolutions).",
            "",
            "| model | M | steps | device s/step | host s/step | host faster by |",
            "|---|---|---|---|---|---|",
        ]
        for r in result["segment_loops"]:
            t, n = r["timing"], r["steps"]
            lines.append(
                f"| {r['model']} | {r['M']} | {n} | {t['device']['min_s'] / n:.3f} | "
                f"{t['host']['min_s'] / n:.3f} | {r['host_vs_device']:.2f}x |"
            )
    if result.get("pt_overhead"):
        lines += [
            "",
            "### Tempering overhead (validation + exchange) in `pt_train`",
            "",
            f"{described}, jax {machine['jax']}. PT / grid: min over repeats; "
            "paired: median [quartiles] of the per-repeat ratios (PT and grid run "
            "back to back in each repeat).",
            "",
            "| model | M | exchange every | validation set | PT / grid wall | "
            "PT / grid paired | outside SGD (end to end) | "
            "validation share (components) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result["pt_overhead"]:
            paired = r.get("pt_vs_grid_paired")
            paired = (
                f"{paired['median']:.3f} [{paired['q25']:.3f}, {paired['q75']:.3f}]"
                f" (n = {paired['n']})"
                if paired
                else "–"
            )
            lines.append(
                f"| {r['model']} | {r['M']} | {r['exchange_interval']} | "
                f"{r['n_val']} | {r['pt_vs_grid']:.3f} | {paired} | "
                f"{100 * r['outside_sgd_share']:.1f}% | "
                f"{100 * r['validation_share_estimate']:.2f}% |"
            )
    if result.get("overhead_estimates"):
        intervals = list(result["overhead_estimates"][0]["share"])
        lines += [
            "",
            "Validation share of PT wall time at the authors' exchange intervals "
            "(5000 validation examples; from the measured step and validation "
            "times):",
            "",
            "| model | M | validation = steps | "
            + " | ".join(f"every {k}" for k in intervals)
            + " |",
            "|---|---|---|" + "---|" * len(intervals),
        ]
        for r in result["overhead_estimates"]:
            lines.append(
                f"| {r['model']} | {r['M']} | {r['validation_in_steps']:.1f} | "
                + " | ".join(f"{100 * v:.2f}%" for v in r["share"].values())
                + " |"
            )
    return "\n".join(lines).lstrip("\n") + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["model"] for r in result["throughput"]})
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names, strict=True):
        rows = [r for r in result["throughput"] if r["model"] == name]
        ms = [r["M"] for r in rows]
        loop = np.array([r["loop_replica_steps_per_s"] for r in rows])
        for v in VARIANTS:
            if f"{v}_replica_steps_per_s" not in rows[0]:
                continue
            rel = np.array([r[f"{v}_replica_steps_per_s"] for r in rows])
            ax.plot(ms, rel / loop[0], marker="o", label=v)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("replicas M")
    axes[0].set_ylabel("replica-steps/s (÷ loop at smallest M)")
    axes[0].legend()
    short, _ = device_line(result["provenance"]["machine"])
    fig.suptitle(f"{short} throughput vs M (relative to the loop)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,2,4,8,16,32")
    parser.add_argument("--resnet-ms", default="1,2,4,8")
    parser.add_argument("--models", default="mlp,lenet_emnist,lenet_cifar10,resnet20")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-pt", action="store_true")
    parser.add_argument(
        "--pt-only",
        action="store_true",
        help="only the pt_train overhead (PT vs grid vs SGD alone)",
    )
    parser.add_argument(
        "--pt-reps",
        type=int,
        default=3,
        help="interleaved repeats of each pt_train run",
    )
    parser.add_argument(
        "--pt-runs",
        default="mlp:300:3,mlp:1000:2",
        help="model:exchange_interval:rounds of each pt_train overhead run (M = 8)",
    )
    parser.add_argument(
        "--resnet-skip",
        default="",
        help="comma-separated variants not timed for resnet20 (e.g. vmap,lax_map)",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated variants not timed at all"
    )
    parser.add_argument("--segment-models", default="mlp,lenet_emnist,lenet_cifar10")
    parser.add_argument("--segment-steps", type=int, default=10)
    parser.add_argument("--name", default="benchmark_cpu")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    ms = [int(m) for m in args.ms.split(",")]
    resnet_ms = [int(m) for m in args.resnet_ms.split(",")]
    names = args.models.split(",")
    reps = args.reps
    pt_runs = [
        (n, 8, int(k), int(r))
        for n, k, r in (x.split(":") for x in args.pt_runs.split(","))
    ]
    if args.quick:
        ms, resnet_ms, reps = [1, 8], [1, 2], min(reps, 5)
        pt_runs = [("mlp", 8, 300, 2)]
    result = {"provenance": provenance(seeds=[0])}
    resnet_skip = tuple(v for v in args.resnet_skip.split(",") if v)
    skip = tuple(v for v in args.skip.split(",") if v)
    if args.pt_only:
        names, args.segment_models = [], ""
    result["throughput"] = throughput(names, ms, reps, resnet_ms, resnet_skip, skip)
    save_result(args.name, result, Path(args.out))  # kept if a later part fails
    result["segment_loops"] = [
        segment_loops(n, 8, args.segment_steps, min(reps, 3))
        for n in args.segment_models.split(",")
        if n
    ]
    save_result(args.name, result, Path(args.out))
    if not args.skip_pt:
        pt_reps = min(args.pt_reps, 2) if args.quick else args.pt_reps
        result["pt_overhead"] = [
            pt_overhead(n, m, k, r, pt_reps) for n, m, k, r in pt_runs
        ]
        for r in result["pt_overhead"]:
            print(
                f"pt_train {r['model']} every {r['exchange_interval']}: PT/grid "
                f"{r['pt_vs_grid']:.3f}, outside SGD {100 * r['outside_sgd_share']:.2f}%"
                f", validation (components) {100 * r['validation_share_estimate']:.2f}%",
                flush=True,
            )
        lenets = [n for n in names if n.startswith("lenet")]
        result["overhead_estimates"] = [
            pt_overhead_estimate(n, 8, (300, 600, 1000), reps) for n in lenets
        ]
    out = Path(args.out)
    save_result(args.name, result, out)
    (out / f"{args.name}.md").write_text(markdown(result))
    if result["throughput"]:
        plot(result, out / f"{args.name}.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
