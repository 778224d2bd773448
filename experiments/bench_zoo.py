"""The zoo benchmark: the fused replica step against a user's hand loop.

For every model of :mod:`experiments.zoo` (the MLP, both library LeNets, a
user's LeNet with ReLU + max-pool + SAME padding, a small CNN with BatchNorm
and max-pool, a 1-D conv net for MNIST-1D, ResNet-20, one transformer layer),
M replicas (default 8), batch 128, one SGD step (momentum 0.9) of all M
replicas is timed as

- ``fused``: the library's step, ``jit(tempering.train_step)`` with the
  default ``vectorize="auto"``;
- ``vmap``: the same step with ``vectorize="vmap"`` (plain ``jax.vmap``);
- one variant per name in ``--policies`` (default ``patches``, the previous
  default: patch matrices for shared-input convolutions, JAX's rule for
  pooling; and ``sequential``: the single-replica step in a ``lax.map``; see
  :mod:`tempering.fast`); not timed for a model where it is ``"auto"``'s
  program;
- ``hand_vmap``: what an expert writes: a jitted ``jax.vmap`` of the user's
  step (:func:`experiments.zoo.hand_vmap_step`); ``hand vmap / fused`` says
  whether the library adds anything an expert would not write;
- ``loop``: what a user writes without the library: a Python loop over the M
  replicas of one jitted flax + optax SGD step (:func:`experiments.zoo.hand_step`,
  compiled once for all M);
- ``segment`` (with ``--segment S``): what ``pt_train`` runs between two
  exchanges, :func:`tempering.loops.run_segment` of S steps on in-memory data
  (batches gathered on device; on CPU one program of S steps for a model
  without convolutions, one call per step for one with them), timed per step.

Every variant donates its state and trains on from its own last step, as a
training loop does: the library's driver donates the replicas to each segment,
and a careful user passes ``donate_argnums``. (Without donation each call
writes all M replicas' weights and optimizer state to fresh memory, which the
allocator may map anew on every call: a cost of the benchmark, not of training,
that favoured the loop's smaller outputs by up to a quarter of the MLP's step
and varied between machines.)

All variants of a model are timed interleaved, each repeat in a new random
order, in one process
(the ratios are the result: absolute times mean something only on an idle,
named device).
The statistic is the MEDIAN over the repeats of each variant's seconds per
step (not the minimum); ``loop / variant`` is the ratio of those medians, and
the paired ratio (median and quartiles of the per-repeat ratios, both run back
to back) shows the spread. Memory: XLA's compiled peak (arguments, outputs and
temporaries; ``memory_analysis``) of each fused variant at M replicas against M
times that of the user's single-replica step. Model FLOPs
(:mod:`experiments.flops`: the matrix products and convolutions of one
replica's step, forward and backward) give the fused step's model GFLOP/s,
and its MFU on a GPU whose peak is tabulated there.

Run::

    python -m experiments.bench_zoo            # the full zoo, M = 8, batch 128
    python -m experiments.bench_zoo --models lenet_user,mlp --reps 10
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import tempering as tp
from experiments import zoo
from experiments.common import add_output_args, output_dirs, provenance, save_result
from experiments.flops import jaxpr_flops, peak_tflops
from tempering import fast, loops

BATCH = 128
# ResNet-20 steps take seconds (plain vmap's grouped convolutions a minute on
# 2 CPU cores): fewer repeats for it by default.
SLOW_MODELS = ("resnet20",)


# The fused step, jitted once; how it is vectorised is a static argument.
fused_step = jax.jit(tp.train_step, static_argnames=("per_replica_batch", "vectorize"))
# ... and as the driver runs it, the replicas donated.
donated_step = jax.jit(
    tp.train_step,
    static_argnames=("per_replica_batch", "vectorize"),
    donate_argnums=(0,),
)


def synthetic(shape, classes, num, seed=0):
    """Random inputs and labels: timing does not depend on the values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=num).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def _minor_page_faults() -> int:
    """The process's minor page faults so far (first touches of new memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(
    fns: dict[str, Callable], reps: int, seed: int = 0
) -> dict[str, dict]:
    """Interleaved timing; min and median seconds per call of every variant.

    Every repeat calls each variant once, in a new random order (seeded): on
    a CPU the call right after another variant's can be slower than the
    same program elsewhere in the round (a fixed round robin measured two
    copies of one program 20% apart), so no variant keeps one position.
    Each call's minor page faults are counted too: XLA:CPU allocates a
    program's temporaries on every call, and memory the C allocator maps
    afresh faults on its first touch.
    """
    order = np.random.default_rng(seed)
    first_call = {}
    for name, fn in fns.items():  # compile, then one warm call
        start = time.perf_counter()
        jax.block_until_ready(fn())
        first_call[name] = time.perf_counter() - start
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    faults: dict[str, list[int]] = {k: [] for k in fns}
    names = list(fns)
    for _ in range(reps):
        for i in order.permutation(len(names)):
            before = _minor_page_faults()
            start = time.perf_counter()
            jax.block_until_ready(fns[names[i]]())
            times[names[i]].append(time.perf_counter() - start)
            faults[names[i]].append(_minor_page_faults() - before)
    return {
        k: {
            "min_s": float(np.min(v)),
            "median_s": float(np.median(v)),
            "first_call_s": first_call[k],
            "times_s": [float(t) for t in v],
            "page_faults_per_call": float(np.median(faults[k])),
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
    return {"median": float(q50), "q25": float(q25), "q75": float(q75),
            "n": len(ratios)}  # fmt: skip


def device_line(machine: dict) -> tuple[str, str]:
    """(short device name, one-line description) of the machine of a result."""
    if machine["backend"] == "cpu":
        isa = f" ({machine['cpu_isa']})" if machine.get("cpu_isa") else ""
        allocator = machine.get("allocator_env")
        tuned = (
            ", allocator " + " ".join(f"`{k}={v}`" for k, v in allocator.items())
            if allocator
            else ""
        )
        return "CPU", (
            f"{machine['cpu']}{isa}, {machine['cpu_count']} cores (shared){tuned}"
        )
    kind = machine["devices"][0]
    return kind, f"{kind} (host: {machine['cpu']}, {machine['cpu_count']} cores)"


def make_replicas(entry: zoo.ZooEntry, num: int, x: jax.Array) -> tp.ReplicaState:
    """M replicas of a zoo model with SGD (momentum), the user's settings."""
    return tp.create_replicas(
        jax.random.key(0),
        entry.make(),
        tp.sgd(zoo.LEARNING_RATE, momentum=zoo.MOMENTUM),
        x,
        num_replicas=num,
        hyperparams=dict(entry.call_kwargs),
        model_inputs=tuple(entry.call_kwargs),
    )


def step_variants(
    entry: zoo.ZooEntry,
    num: int,
    batch: int,
    policies: tuple[str, ...],
    skip: tuple[str, ...] = (),
    segment: int = 0,
) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], dict]], float]:
    """Zero-argument callables (one step of all M replicas), their memory, and
    the model FLOPs of one replica's step.

    Every timed variant donates its state and trains on from its own last
    step, as a training loop does (the library's driver donates the replicas
    to every segment; a careful user passes ``donate_argnums``). Without
    donation every call writes its outputs to fresh memory, and the fused
    step's outputs (all M replicas' weights and optimizer state) are large
    enough for the allocator to map new pages each time: a cost of the
    benchmark, not of training, and one that varies between machines.
    """
    x, y = synthetic(entry.input_shape, entry.num_classes, batch)
    key = jax.random.key(1)
    replica_keys = jax.random.split(jax.random.key(0), num)
    keys = list(jax.random.split(key, num))

    def fused(vectorize):
        current = [make_replicas(entry, num, x)]

        def run():
            current[0], info = donated_step(current[0], key, x, y, vectorize=vectorize)
            return info.loss

        return run

    state = make_replicas(entry, num, x)

    def fused_memory(vectorize):
        return lambda: compiled_memory(
            fused_step.lower(state, key, x, y, vectorize=vectorize)
        )

    variants = {"fused": fused("auto"), "vmap": fused("vmap")}
    memory = {"fused": fused_memory("auto"), "vmap": fused_memory("vmap")}
    init, hand = zoo.hand_step(entry)
    one = jax.jit(init)(replica_keys[0], x)
    hand_jaxpr = jax.make_jaxpr(hand)(*one, keys[0], x, y)
    for policy in policies:
        if any(same_program(policy, v, hand_jaxpr.jaxpr) for v in ("auto", "vmap")):
            continue  # e.g. no pooling in the model: the fused or the vmap step
        variants[policy], memory[policy] = fused(policy), fused_memory(policy)
    variants["hand_vmap"] = _hand_vmap(entry, replica_keys, keys, x, y)
    variants["loop"] = _hand_loop(entry, replica_keys, keys, x, y)
    if segment:
        variants["segment"] = _segment(entry, num, batch, segment, key)
    memory["one_replica"] = lambda: compiled_memory(hand.lower(*one, keys[0], x, y))
    variants = {k: v for k, v in variants.items() if k not in skip}
    memory = {k: v for k, v in memory.items() if k not in skip}
    return variants, memory, jaxpr_flops(hand_jaxpr)


def _hand_loop(entry, replica_keys, keys, x, y) -> Callable[[], list]:
    """A user's loop: M calls of one jitted, donating single-replica step."""
    init, step = zoo.hand_step(entry, donate=True)
    replicas = [jax.jit(init)(k, x) for k in replica_keys]

    def run():
        losses = []
        for m, k in enumerate(keys):
            variables, opt_state, loss = step(*replicas[m], k, x, y)
            replicas[m] = (variables, opt_state)
            losses.append(loss)
        return losses

    return run


def _segment(entry, num, batch, steps, key) -> Callable[[], jax.Array]:
    """What the driver runs between exchanges: one segment of ``steps`` steps.

    XLA:CPU allocates a program's temporaries on every call; a segment that
    is one program (``loop="device"``) pays that once for all its steps.
    """
    xs, ys = synthetic(entry.input_shape, entry.num_classes, batch * steps, seed=1)
    # as the driver does: its own copy, since the segment donates every buffer
    # and a fresh state's leaves may share one
    current = [jax.tree.map(jnp.copy, make_replicas(entry, num, xs[:batch]))]
    settings = loops.SegmentSettings(batch_size=batch)
    loop = loops.loop_for(current[0], xs, "auto")

    def run():
        current[0], loss = loops.run_segment(
            current[0], key, (xs, ys), steps, data_key=key, settings=settings,
            loop=loop,
        )  # fmt: skip
        return loss

    return run


def _per_step(timing: dict, steps: int) -> dict:
    """A variant's timing per call turned into its timing per step."""
    per = {
        k: v / steps for k, v in timing.items() if k.endswith("_s") and k != "times_s"
    }
    return {
        **timing,
        **per,
        "times_s": [t / steps for t in timing["times_s"]],
        "page_faults_per_call": timing["page_faults_per_call"] / steps,
        "steps_per_call": steps,
    }


def _hand_vmap(entry, replica_keys, keys, x, y) -> Callable[[], jax.Array]:
    """An expert's step: ``jax.vmap`` of the user's step, jitted and donating."""
    init, step = zoo.hand_vmap_step(entry, donate=True)
    current = [init(replica_keys, x)]
    stacked_keys = jnp.stack(keys)

    def run():
        variables, opt_state, loss = step(*current[0], stacked_keys, x, y)
        current[0] = (variables, opt_state)
        return loss

    return run


def same_program(policy: str, other: str, jaxpr) -> bool:
    """Whether two policies compile the same fused step for this jaxpr."""
    return fast.applied_rules(policy, jaxpr) == fast.applied_rules(other, jaxpr)


def compiled_memory(lowered) -> dict[str, int]:
    """Arguments, outputs, temporaries and their sum (bytes) of a compiled step."""
    mem = lowered.compile().memory_analysis()
    if mem is None:
        return {}
    sizes = {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
    }
    sizes["peak_bytes"] = sum(sizes.values())
    return sizes


def param_count(entry: zoo.ZooEntry) -> int:
    """Parameters of one replica (shapes only: nothing is computed)."""
    x = jnp.zeros((1, *entry.input_shape), jnp.float32)
    model = entry.make()
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), x, train=False, **entry.call_kwargs)
    )
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(shapes["params"])))


def bench_model(
    entry: zoo.ZooEntry,
    num: int,
    batch: int,
    reps: int,
    policies: tuple[str, ...],
    skip: tuple[str, ...],
    memory: bool,
    segment: int = 0,
) -> dict:
    t0 = time.perf_counter()
    variants, memory_fns, flops = step_variants(
        entry, num, batch, policies, skip, segment
    )
    timing = time_interleaved(variants, reps)
    if "segment" in timing:
        timing["segment"] = _per_step(timing["segment"], segment)
    loop = timing["loop"]
    row = {
        "model": entry.name,
        "description": entry.description,
        "M": num,
        "batch": batch,
        "repeats": reps,
        "params_per_replica": param_count(entry),
        "flops_per_replica_step": flops,
        "fused_gflops_per_s": flops * num / timing["fused"]["median_s"] / 1e9,
        "timing": timing,
        "loop_vs": {
            k: loop["median_s"] / t["median_s"]
            for k, t in timing.items()
            if k != "loop"
        },
        "loop_vs_paired": {
            k: paired_ratio(loop["times_s"], t["times_s"])
            for k, t in timing.items()
            if k != "loop"
        },
    }
    if "hand_vmap" in timing:
        expert = timing["hand_vmap"]
        row["hand_vmap_vs_fused"] = expert["median_s"] / timing["fused"]["median_s"]
        row["hand_vmap_vs_fused_paired"] = paired_ratio(
            expert["times_s"], timing["fused"]["times_s"]
        )
    peak = peak_tflops(jax.devices()[0].device_kind)
    if peak is not None:
        row["fused_mfu"] = row["fused_gflops_per_s"] / (1e3 * peak)
    if memory:
        row["memory"] = {k: fn() for k, fn in memory_fns.items()}
        one = row["memory"]["one_replica"].get("peak_bytes")
        row["memory_vs_m_times_one"] = {
            k: m["peak_bytes"] / (num * one)
            for k, m in row["memory"].items()
            if k != "one_replica" and one and "peak_bytes" in m
        }
    row["wall_s"] = time.perf_counter() - t0
    print(
        f"{entry.name:15s} M={num} "
        + " ".join(f"{k}={t['median_s'] * 1e3:.1f}ms" for k, t in timing.items())
        + "  loop/"
        + " loop/".join(f"{k}={r:.2f}x" for k, r in row["loop_vs"].items())
        + f"  (medians of {reps}; {row['wall_s']:.0f}s)",
        flush=True,
    )
    return row


def summary(rows: list[dict]) -> dict:
    """Median and minimum over the zoo of loop / variant, per variant and M."""
    out = {}
    for num in sorted({r["M"] for r in rows}):
        at = [r for r in rows if r["M"] == num]
        names = sorted({k for r in at for k in r["loop_vs"]})
        out[str(num)] = {}
        for k in names:
            out[str(num)][k] = _spread(
                [r["loop_vs"][k] for r in at if k in r["loop_vs"]]
            )
        expert = [r["hand_vmap_vs_fused"] for r in at if "hand_vmap_vs_fused" in r]
        if expert:
            out[str(num)]["hand_vmap / fused"] = _spread(expert)
    return out


def _spread(ratios: list[float]) -> dict:
    """Median, minimum and count of one ratio over the zoo's models."""
    return {
        "median": float(np.median(ratios)),
        "min": float(np.min(ratios)),
        "models": len(ratios),
    }


def short_markdown(result: dict) -> str:
    """The README's table: per model, loop / fused and the memory ratio."""
    machine = result["provenance"]["machine"]
    _, described = device_line(machine)
    lines = [
        f"{described}, jax {machine['jax']}, M replicas of one SGD step, batch "
        f"{result['batch']}. loop / fused: a user's Python loop over M jitted "
        'flax + optax steps against `train_step(vectorize="auto")`, **the median '
        "of interleaved repeats** [quartiles of the per-repeat ratios]; > 1: the "
        "library is faster; hand vmap / fused: against an expert's jitted "
        "`jax.vmap` of the same step (> 1: the library is faster). Every step "
        "donates its state. Memory: compiled peak against M single steps.",
        "",
        "| model | M | loop / fused | hand vmap / fused | memory ÷ (M × one) |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        p = r["loop_vs_paired"].get("fused")
        paired = f" [{p['q25']:.2f}, {p['q75']:.2f}]" if p else ""
        mem = r.get("memory_vs_m_times_one", {}).get("fused")
        expert = r.get("hand_vmap_vs_fused")
        lines.append(
            f"| {r['model']} | {r['M']} | {r['loop_vs']['fused']:.2f}{paired} | "
            + (f"{expert:.2f} | " if expert else "– | ")
            + (f"{mem:.2f} |" if mem else "– |")
        )
    for num, per in result["summary"].items():
        s = per["fused"]
        lines += ["", f"Over the zoo at M = {num}: loop / fused median "
                  f"{s['median']:.2f}, min {s['min']:.2f} ({s['models']} models)"
                  + (f"; hand vmap / fused median {e['median']:.2f}, min "
                     f"{e['min']:.2f}" if (e := per.get("hand_vmap / fused")) else "")
                  + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    machine = result["provenance"]["machine"]
    short, described = device_line(machine)
    rows = result["rows"]
    variants = list(dict.fromkeys(k for r in rows for k in r["timing"] if k != "loop"))
    has_memory = any("memory" in r for r in rows)
    has_flops = any("fused_gflops_per_s" in r for r in rows)
    has_mfu = any("fused_mfu" in r for r in rows)
    has_faults = any("page_faults_per_call" in r["timing"]["loop"] for r in rows)
    fault_columns = (
        ["fused"] + (["segment"] if "segment" in variants else []) + ["loop"]
    )
    lines = [
        f"### Zoo: fused replica step vs a user's hand loop on {short}",
        "",
        f"{described}, jax {machine['jax']}, batch {result['batch']}, one SGD step "
        "(momentum 0.9) of all M replicas. **Statistic: the median over "
        "interleaved repeats** (each repeat in a random order, one process; "
        "repeats per model in "
        "the table), not the minimum. `loop`: a Python loop over M replicas of one "
        "jitted flax + optax step, as a user writes it; `fused`: "
        '`train_step` with `vectorize="auto"`; `vmap`: `train_step` as plain '
        "`jax.vmap`; `hand_vmap`: an expert's jitted `jax.vmap` of the user's "
        "step; "
        + (
            f"`segment`: what `pt_train` runs between exchanges, a segment of "
            f"{result['segment_steps']} steps (`tempering.loops.run_segment`, "
            "batches gathered on device), per step; "
            if result.get("segment_steps")
            else ""
        )
        + "other columns: named `vectorize` policies. Every step donates its "
        "state and trains on from its last one. Ratios are loop median / variant "
        "median (> 1: faster than the loop); paired: median [q25, q75] of the "
        "per-repeat ratios loop / fused; hand vmap / fused: the expert's median "
        "over the library's (> 1: the library is faster). Memory: XLA's compiled peak (arguments "
        "+ outputs + temporaries) of the fused step against M times that of the "
        "user's single-replica step."
        + (
            " Model GFLOP/s: the matrix products and convolutions of one replica's "
            "step (forward and backward, `experiments/flops.py`) × M per second of "
            "the fused step"
            + (
                "; MFU: that over the device's dense float32 (TF32) peak."
                if has_mfu
                else "."
            )
            if has_flops
            else ""
        )
        + (
            " Page faults: the median minor page faults of one call (first "
            "touches of memory the allocator mapped afresh)."
            if has_faults
            else ""
        ),
        "",
        "| model | M | repeats | "
        + " | ".join(f"{v} ms" for v in variants)
        + " | loop ms | "
        + " | ".join(f"loop / {v}" for v in variants)
        + " | loop / fused paired | hand vmap / fused |"
        + (" peak MiB fused / M × one | fused ÷ (M × one) |" if has_memory else "")
        + (" fused model GFLOP/s |" if has_flops else "")
        + (" fused MFU |" if has_mfu else "")
        + (f" page faults {' / '.join(fault_columns)} |" if has_faults else ""),
        "|---|---|---|"
        + "---|" * (2 * len(variants) + 3)
        + ("---|---|" if has_memory else "")
        + "---|" * (has_flops + has_mfu + has_faults),
    ]
    for r in rows:
        t = r["timing"]
        ms = [f"{t[v]['median_s'] * 1e3:.1f}" if v in t else "–" for v in variants]
        ratios = [
            f"{r['loop_vs'][v]:.2f}" if v in r["loop_vs"] else "–" for v in variants
        ]
        p = r["loop_vs_paired"].get("fused")
        paired = f"{p['median']:.2f} [{p['q25']:.2f}, {p['q75']:.2f}]" if p else "–"
        expert = r.get("hand_vmap_vs_fused")
        expert_cell = f"{expert:.2f}" if expert else "–"
        mem = ""
        if has_memory:
            m = r.get("memory", {})
            fused = m.get("fused", {}).get("peak_bytes")
            one = m.get("one_replica", {}).get("peak_bytes")
            if fused and one:
                mem = (
                    f" {fused / 2**20:.1f} / {r['M'] * one / 2**20:.1f} | "
                    f"{r['memory_vs_m_times_one']['fused']:.2f} |"
                )
            else:
                mem = " – | – |"
        if has_flops:
            gflops = r.get("fused_gflops_per_s")
            mem += f" {gflops:.1f} |" if gflops else " – |"
        if has_mfu:
            mem += f" {100 * r['fused_mfu']:.1f}% |" if "fused_mfu" in r else " – |"
        if has_faults:
            faults = [t.get(v, {}).get("page_faults_per_call") for v in fault_columns]
            mem += (
                " "
                + " / ".join("–" if f is None else f"{f:.0f}" for f in faults)
                + " |"
            )
        lines.append(
            f"| {r['model']} | {r['M']} | {r['repeats']} | {' | '.join(ms)} | "
            f"{t['loop']['median_s'] * 1e3:.1f} | {' | '.join(ratios)} | {paired} | "
            f"{expert_cell} |" + mem
        )
    for num, per in result["summary"].items():
        lines += [
            "",
            f"Over the zoo at M = {num}: "
            + "; ".join(
                f"{k if '/' in k else 'loop / ' + k} median {s['median']:.2f}, "
                f"min {s['min']:.2f} "
                f"({s['models']} models)"
                for k, s in per.items()
            )
            + ".",
        ]
    lines += ["", "Models:", ""]
    lines += [
        f"- `{r['model']}`: {r['description']}" for r in rows if r["M"] == rows[0]["M"]
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.ZOO))
    parser.add_argument("--ms", default="8", help="comma-separated replica counts")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument(
        "--slow-reps",
        type=int,
        default=3,
        help=f"repeats for {', '.join(SLOW_MODELS)} (seconds per step)",
    )
    parser.add_argument(
        "--policies",
        default="patches,sequential",
        help="comma-separated vectorize policies timed besides auto and vmap",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated model:variant pairs not timed (e.g. resnet20:vmap)",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--segment",
        type=int,
        default=0,
        help="also time a driver's segment of this many steps (per step)",
    )
    add_output_args(parser, "bench_zoo")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in zoo.ZOO]
    if unknown:
        parser.error(f"unknown models {unknown}; the zoo has {list(zoo.ZOO)}")
    policies = tuple(p for p in args.policies.split(",") if p)
    for policy in policies:
        fast.resolve_policy(policy)  # fail before any timing
    skips = [s.split(":") for s in args.skip.split(",") if s]
    if any(len(s) != 2 or s[1] in ("loop", "fused") for s in skips):
        parser.error("--skip takes model:variant pairs, never the loop or fused")
    out = args.out_dir
    result = {
        "provenance": provenance(seeds=[0], outputs=output_dirs(args)),
        "statistic": "median over interleaved repeats (random order each repeat, one process)",
        "batch": args.batch,
        "policies": list(policies),
        "segment_steps": args.segment,
        "rows": [],
    }
    for num in (int(m) for m in args.ms.split(",")):
        for name in names:
            skip = tuple(v for m, v in skips if m == name)
            reps = args.slow_reps if name in SLOW_MODELS else args.reps
            result["rows"].append(
                bench_model(
                    zoo.ZOO[name],
                    num,
                    args.batch,
                    reps,
                    policies,
                    skip,
                    memory=not args.no_memory,
                    segment=args.segment,
                )  # fmt: skip
            )
            result["summary"] = summary(result["rows"])
            save_result(args.name, result, out)  # kept if a later model fails
    (out / f"{args.name}.md").write_text(markdown(result))
    (out / f"{args.name}_short.md").write_text(short_markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
