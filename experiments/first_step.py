"""The first step: a fresh process to its first trained step, with and without the cache.

What a user waits for after starting a script or restarting a notebook
kernel: importing JAX, building M replicas of a zoo model
(:mod:`experiments.zoo`) and compiling and running one SGD step of all of
them, until the result is ready (``jax.block_until_ready``). Every
measurement is a FRESH Python process (nothing compiled, nothing in memory),
timed from just before the process is started to the moment its first step's
result is ready (the wall clock, shared by both processes; the process's exit
is not counted). Four variants, as :mod:`experiments.bench_zoo` builds them
(its builders, reused):

- ``loop``: the user's hand loop: M single-replica flax + optax steps of one
  jitted function (:func:`experiments.zoo.hand_step`), each replica
  initialised by a jitted ``init``, one step of every replica (its process
  imports tempering too, for the zoo's models: every variant imports the same
  modules);
- ``fused``: the library: ``tempering.create_replicas`` and one
  ``train_step`` of all M replicas, ``vectorize="auto"`` (bench_zoo's
  ``fused`` column);
- ``cold``: ``fused`` with :func:`tempering.enable_compilation_cache` on a
  new, empty folder (the programs are compiled and written);
- ``warm``: ``fused`` again on the folder ``cold`` just filled (the programs
  are read back, not compiled).

The variants of a model run interleaved (loop, fused, cold, warm, then again,
``--repeats`` times), each repeat with its own fresh folder; the statistic is
the median over the repeats. The cache variants also count JAX's cache events
(hits, and entries written) to show that ``warm`` compiled nothing. Neither
``loop`` nor ``fused`` uses a persistent cache (the environment's
``JAX_COMPILATION_CACHE_DIR`` and ``TEMPERING_CACHE_DIR`` are not passed on).

Run::

    python -m experiments.first_step                    # the zoo, M = 8, 5 repeats
    python -m experiments.first_step --models mlp,lenet_user --repeats 3
"""

from __future__ import annotations

# A measured process starts its own clock here, before JAX is imported (its
# imports are the same for every variant: the zoo's models live in tempering).
import time

_MODULE_START = time.perf_counter()

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import tempering as tp  # noqa: E402
from experiments import bench_zoo, zoo  # noqa: E402
from experiments.common import (  # noqa: E402
    add_output_args,
    output_dirs,
    provenance,
    save_result,
    write_outputs,
)

VARIANTS = ("loop", "fused", "cold", "warm")
CACHED = ("cold", "warm")
# Not passed on to the measured processes: a cache would leak into loop/fused.
CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE",
             "TEMPERING_CACHE_DIR")  # fmt: skip
REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "FIRST_STEP_RESULT "


# --- the measured process ---------------------------------------------------


def child(variant: str, model: str, num: int, batch: int, cache_dir: str | None):
    """One measurement, in a fresh process: prints its timings as one JSON line."""
    events: collections.Counter = collections.Counter()
    if variant in CACHED:
        jax.monitoring.register_event_listener(
            lambda event, **kwargs: events.update([event.rsplit("/", 1)[-1]])
        )
    else:
        jax.config.update("jax_enable_compilation_cache", False)
    imported = time.perf_counter()
    if variant in CACHED:
        tp.enable_compilation_cache(cache_dir)
    entry = zoo.ZOO[model]
    x, y = bench_zoo.synthetic(entry.input_shape, entry.num_classes, batch)
    key = jax.random.key(1)
    if variant == "loop":
        init, hand = zoo.hand_step(entry)
        replicas = [
            jax.jit(init)(k, x) for k in jax.random.split(jax.random.key(0), num)
        ]
        keys = list(jax.random.split(key, num))
        jax.block_until_ready(replicas)
        built = time.perf_counter()
        out = [hand(v, o, k, x, y) for (v, o), k in zip(replicas, keys, strict=True)]
    else:
        state = bench_zoo.make_replicas(entry, num, x)
        jax.block_until_ready(state)
        built = time.perf_counter()
        out = bench_zoo.fused_step(state, key, x, y, vectorize="auto")
    jax.block_until_ready(out)
    ready = time.perf_counter()
    ready_wall = time.time()
    record = {
        "ready_wall": ready_wall,
        "in_process_s": ready - _MODULE_START,
        "import_s": imported - _MODULE_START,
        "build_s": built - imported,
        "step_s": ready - built,
    }
    if variant in CACHED:
        record["cache_hits"] = events["cache_hits"]
        record["cache_writes"] = events["cache_misses"]  # JAX's name for a write
        record["cache_requests"] = events["compile_requests_use_cache"]
    print(RESULT_PREFIX + json.dumps(record), flush=True)


# --- the driver -------------------------------------------------------------


def measure(
    variant: str,
    model: str,
    num: int,
    batch: int,
    cache_dir: Path | None,
    timeout: float,
) -> dict:
    """Starts one fresh process and returns its timings.

    ``first_step_s``: from just before the process starts to its first step's
    result being ready (both wall clocks); ``process_s``: to its exit.
    """
    env = {k: v for k, v in os.environ.items() if k not in CACHE_ENV}
    command = [sys.executable, "-m", "experiments.first_step", "--child", variant,
               "--models", model, "--M", str(num), "--batch", str(batch)]  # fmt: skip
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    start_wall = time.time()
    start = time.perf_counter()
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    process_s = time.perf_counter() - start
    lines = [s for s in proc.stdout.splitlines() if s.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{variant} {model}: the measured process failed "
            f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    record = json.loads(lines[-1][len(RESULT_PREFIX) :])
    record["first_step_s"] = record.pop("ready_wall") - start_wall
    record["process_s"] = process_s
    return record


def median(values) -> float:
    return float(np.median(values))


def quartiles(values: list[float]) -> dict:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75),
            "n": len(values)}  # fmt: skip


def bench_model(model: str, args, scratch: Path) -> dict:
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        folder = scratch / f"{model}-{rep}"  # created by the cold run
        for variant in VARIANTS:
            runs[variant].append(
                measure(variant, model, args.M, args.batch,
                        folder if variant in CACHED else None, args.timeout)
            )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
    first = {v: [r["first_step_s"] for r in runs[v]] for v in VARIANTS}
    medians = {v: median(first[v]) for v in VARIANTS}
    # What a cache can shorten: from the imports done to the step's result.
    after = {v: [r["build_s"] + r["step_s"] for r in runs[v]] for v in CACHED}
    row = {
        "model": model,
        "description": zoo.ZOO[model].description,
        "M": args.M,
        "batch": args.batch,
        "repeats": args.repeats,
        "median_s": medians,
        "phases_median_s": {
            v: {
                p: median([r[p] for r in runs[v]])
                for p in ("import_s", "build_s", "step_s")
            }
            for v in VARIANTS
        },
        "ratios": {
            "fused/loop": medians["fused"] / medians["loop"],
            "warm/cold": medians["warm"] / medians["cold"],
            "warm/loop": medians["warm"] / medians["loop"],
            "cold/fused": medians["cold"] / medians["fused"],
            "warm/cold after imports": median(after["warm"]) / median(after["cold"]),
        },
        "after_imports_median_s": {v: median(after[v]) for v in CACHED},
        "paired": {
            "fused/loop": quartiles(
                [f / lp for f, lp in zip(first["fused"], first["loop"], strict=True)]
            ),
            "warm/cold": quartiles(
                [w / c for w, c in zip(first["warm"], first["cold"], strict=True)]
            ),
            "warm/cold after imports": quartiles(
                [w / c for w, c in zip(after["warm"], after["cold"], strict=True)]
            ),
        },
        "cache": {
            v: {
                k: [r[k] for r in runs[v]]
                for k in ("cache_hits", "cache_writes", "cache_requests")
            }
            for v in CACHED
        },
        "runs": runs,
        "wall_s": time.perf_counter() - t0,
    }
    print(
        f"{model:15s} M={args.M} "
        + " ".join(f"{v}={medians[v]:.2f}s" for v in VARIANTS)
        + f"  fused/loop={row['ratios']['fused/loop']:.2f}"
        + f" warm/cold={row['ratios']['warm/cold']:.2f}"
        + f"  (medians of {args.repeats}; {row['wall_s']:.0f}s)",
        flush=True,
    )
    return row


def summary(rows: list[dict]) -> dict:
    out = {}
    for name in ("fused/loop", "warm/cold", "warm/loop", "warm/cold after imports"):
        values = [r["ratios"][name] for r in rows]
        out[name] = {"median": median(values), "min": min(values),
                     "max": max(values), "models": len(values)}  # fmt: skip
    return out


def paired(q: dict) -> str:
    return f"{q['median']:.2f} [{q['q25']:.2f}, {q['q75']:.2f}]"


def markdown(result: dict) -> str:
    machine = result["provenance"]["machine"]
    short, described = bench_zoo.device_line(machine)
    env = result["settings"]["environment"]
    lines = [
        f"### The first step: a fresh process to the first trained step on {short}",
        "",
        f"{described}, jax {machine['jax']}, batch {result['settings']['batch']}, "
        "one SGD step (momentum 0.9) of all M replicas. Seconds from just before "
        "a fresh Python process starts to its first step's result being ready "
        "(imports, building the replicas, compiling, the step), **the median over "
        "fresh processes** (run interleaved: loop, fused, cold, warm; repeats per "
        "model in the table). `loop`: a user's Python loop over M single-replica "
        "jitted flax + optax steps; `fused`: `tempering.train_step` of all M "
        '(`vectorize="auto"`); `cold`: `fused` after '
        "`tempering.enable_compilation_cache` on an empty folder; `warm`: the same "
        "folder again (programs read back, not compiled). Import: the loop "
        "process's imports (jax, flax, optax, the zoo), part of every column. "
        "Ratios of medians "
        "(< 1: the numerator is faster); paired: median [q25, q75] of the "
        "per-repeat ratios. Hits: JAX's persistent-cache hits in the warm "
        "process / programs it asked the cache for (median). After imports: "
        "from the imports done to the step's result (building the replicas, "
        "compiling or reading the programs back, the step), what a cache can "
        "shorten; paired."
        + (
            " Environment: " + ", ".join(f"`{k}={v}`" for k, v in env.items()) + "."
            if env
            else ""
        ),
        "",
        "| model | M | repeats | import s | loop s | fused s | cold s | warm s "
        "| fused / loop | fused / loop paired | warm / cold | warm / cold paired "
        "| warm / loop | warm hits | cold after imports s | warm after imports s "
        "| warm / cold after imports paired |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        m, q = r["median_s"], r["ratios"]
        warm = r["cache"]["warm"]
        hits = f"{median(warm['cache_hits']):g} / {median(warm['cache_requests']):g}"
        lines.append(
            f"| {r['model']} | {r['M']} | {r['repeats']} | "
            f"{r['phases_median_s']['loop']['import_s']:.2f} | {m['loop']:.2f} | "
            f"{m['fused']:.2f} | {m['cold']:.2f} | {m['warm']:.2f} | "
            f"{q['fused/loop']:.2f} | {paired(r['paired']['fused/loop'])} | "
            f"{q['warm/cold']:.2f} | {paired(r['paired']['warm/cold'])} | "
            f"{q['warm/loop']:.2f} | {hits} | "
            f"{r['after_imports_median_s']['cold']:.2f} | "
            f"{r['after_imports_median_s']['warm']:.2f} | "
            f"{paired(r['paired']['warm/cold after imports'])} |"
        )
    s = result["summary"]
    lines += [
        "",
        f"Over {s['fused/loop']['models']} model(s): "
        + "; ".join(
            f"{k} median {v['median']:.2f} (range {v['min']:.2f}-{v['max']:.2f})"
            for k, v in s.items()
        )
        + ".",
        "",
        "Models:",
        "",
    ]
    lines += [f"- `{r['model']}`: {r['description']}" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None,
                        help="comma-separated zoo models (default: all)")  # fmt: skip
    parser.add_argument("--M", type=int, default=8, help="replicas")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds one measured process may take")  # fmt: skip
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    add_output_args(parser, "first_step")
    return parser, parser.parse_args(argv)


def main(argv=None) -> dict | None:
    parser, args = parse(argv)
    if args.child:
        child(args.child, args.models, args.M, args.batch, args.cache_dir)
        return None
    names = [n for n in (args.models or ",".join(zoo.ZOO)).split(",") if n]
    unknown = [n for n in names if n not in zoo.ZOO]
    if unknown:
        parser.error(f"unknown models {unknown}; the zoo has {list(zoo.ZOO)}")
    if args.repeats < 1 or args.M < 1 or args.batch < 1:
        parser.error("--repeats, --M and --batch must be at least 1")
    environment = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("JAX_", "XLA_")) and k not in CACHE_ENV
    }
    result = {
        "provenance": provenance(seeds=[0], outputs=output_dirs(args)),
        "statistic": "median over fresh processes (interleaved: "
        + ", ".join(VARIANTS)
        + ")",
        "settings": {
            "models": names,
            "M": args.M,
            "batch": args.batch,
            "repeats": args.repeats,
            "environment": environment,
        },
        "rows": [],
    }
    scratch = Path(tempfile.mkdtemp(prefix="tempering-first-step-"))
    try:
        for name in names:
            result["rows"].append(bench_model(name, args, scratch))
            result["summary"] = summary(result["rows"])
            save_result(args.name, result, args.out_dir)  # kept on failure
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_outputs(args, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
