"""Side by side with what users run today: Ray Tune PBT against vectorised PBT.

    python -m experiments.bench_raytune
    python -m experiments.bench_raytune --trials 8 --steps 2000 --interval 100

Both sides run the same population based training of the same model on the
same data, to the same number of replica-steps (``trials x steps``), in one
process, on CPU:

- tempering: ``tp.pbt_train`` on M stacked replicas (one jitted program per
  round), with the settings of ``experiments/compare.py`` for MNIST-1D: MLP
  (128, 128), geometric learning-rate ladder 0.005-0.2 as the starting
  population, SGD momentum 0.9 (``tp.sgd``), batch 128, dropout 0, burn-in
  200 steps, then exploit/explore every ``interval`` steps: truncation
  selection q = 0.25, perturb x0.8 / x1.2 or resample (p = 0.25) from the
  log-uniform prior 0.005-0.2, clipped to it;
- Ray Tune: ``tune.Tuner`` with ``PopulationBasedTraining`` (same quantile
  fraction, resample probability, perturbation factors and prior, a
  ``custom_explore_fn`` for the same clipping, ``burn_in_period`` so the first
  exploit falls on the same step), one function trainable per replica, run
  twice: ``synch=True`` (synchronous, like the library's PBT) and
  ``synch=False`` (Ray's default). Each trial trains the same single-replica
  model in plain flax/optax: a jitted segment of ``interval`` SGD steps
  (``lax.fori_loop``, the batch order of ``pbt_train``), then the validation
  loss (the PBT metric, mode "min") and accuracy, reported with a
  ``tune.Checkpoint`` of params and optimiser state that an exploiting trial
  restores. Trial i starts from the same initial weights and learning rate as
  replica i of the tempering run. ``ray.init(num_cpus=2)`` and 0.25 CPU per
  trial: all 8 trials run at once, one XLA thread each, actors reused.

Measured: wall time of ``pbt_train`` as a restarted notebook sees it, in new
processes with JAX's persistent compilation cache on
(``tp.enable_compilation_cache``): the first call with the cache empty
(compile included), the first call of another new process with the cache
warm, and a second call there; wall time of ``Tuner.fit()`` (``ray.init`` timed
separately), the best replica / trial by final validation loss with its
validation and test accuracy, and the ratio of the wall times. Every timed
run (each side, each seed) starts once the CPUs are idle
(``experiments.common.wait_until_idle``): a run timed while an earlier one's
processes (Ray's trial workers, another job) still use the cores would
measure them too. Each run records its wait and the idle fraction.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tempering as tp
from experiments.common import (
    REPO_ROOT,
    RUN_KEY_OFFSET,
    add_output_args,
    fmt_mean_std,
    output_dirs,
    provenance,
    seed_keys,
    settings_of,
    wait_until_idle,
    write_outputs,
)
from tempering.driver import best_index
from tempering.zoo import datasets as tdata
from tempering.zoo import models

LR_LOW, LR_HIGH = 0.005, 0.2
FEATURES, NUM_CLASSES = (128, 128), 10
MOMENTUM = 0.9
FRACTION = 0.25
RESAMPLE_PROBABILITY = 0.25
PERTURB_FACTORS = (0.8, 1.2)
RAY_TIME_LIMIT_FOR_3_SEEDS = 180.0  # seconds: more seeds only if Ray is faster
# The tempering side's timed calls (tempering_in_fresh_processes) and their labels.
CALLS = {
    "cold": "first call, new process, compilation cache empty",
    "warm": "first call, new process, compilation cache warm",
    "second": "second call in that process",
}

# Environment of the Ray worker processes: JAX on CPU, no preallocation, one
# XLA thread each (several trials share the 2 cores), the repo importable.
WORKER_ENV = {
    "JAX_PLATFORMS": "cpu",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(REPO_ROOT),
}


# ----------------------------------------------------------------------------
# Single-replica training in plain flax/optax (what a Ray trial runs).
# ----------------------------------------------------------------------------


@functools.cache
def single_replica_fns(batch_size: int):
    """``(model, tx, init, segment, evaluate)`` of one replica, cached per process.

    Cached so that a reused Ray actor (and every restart of a trial in it)
    keeps the compiled programs.
    """
    model = models.MLP(FEATURES, NUM_CLASSES)
    tx = tp.sgd(LR_LOW, momentum=MOMENTUM)

    @jax.jit
    def init(key, sample):
        variables = model.init(
            {"params": key, "dropout": key}, sample, train=False, dropout_rate=0.0
        )
        return variables["params"], tx.init(variables["params"])

    def loss_of(params, x, y):
        logits = model.apply({"params": params}, x, train=True, dropout_rate=0.0)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def segment(params, opt_state, data_key, train_x, train_y, start, num_steps):
        # Batches as in tempering.loops.train_segment (shared_batch=True): epoch
        # e is permutation(fold_in(data_key, e)), the last incomplete batch
        # dropped.
        num_examples = train_y.shape[0]
        steps_per_epoch = num_examples // batch_size

        def order_of(epoch):
            return jax.random.permutation(
                jax.random.fold_in(data_key, epoch), num_examples
            )

        def body(i, carry):
            params, opt_state, order, loss_sum = carry
            step = start + i
            epoch, position = step // steps_per_epoch, step % steps_per_epoch
            order = jax.lax.cond(position == 0, lambda: order_of(epoch), lambda: order)
            idx = jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size)
            loss, grads = jax.value_and_grad(loss_of)(
                params, train_x[idx], train_y[idx]
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, order, loss_sum + loss

        carry = (params, opt_state, order_of(start // steps_per_epoch), 0.0)
        params, opt_state, _, loss_sum = jax.lax.fori_loop(0, num_steps, body, carry)
        return params, opt_state, loss_sum / jnp.maximum(num_steps, 1)

    @jax.jit
    def evaluate(params, x, y):
        logits = model.apply({"params": params}, x, train=False, dropout_rate=0.0)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    return model, tx, init, segment, evaluate


def with_learning_rate(opt_state, lr: float):
    """The optimiser state with ``hyperparams["learning_rate"]`` set to ``lr``."""
    hyperparams = dict(opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    return opt_state._replace(hyperparams=hyperparams)


def ray_trainable(config: dict, data: dict, settings: dict) -> None:
    """One PBT trial: a single replica, reported every ``interval`` steps."""
    from ray import tune

    _, _, init, segment, evaluate = single_replica_fns(settings["batch_size"])
    train_x, train_y = jnp.asarray(data["train_x"]), jnp.asarray(data["train_y"])
    val_x, val_y = jnp.asarray(data["val_x"]), jnp.asarray(data["val_y"])
    data_key = jax.random.split(jax.random.key(settings["run_seed"]))[0]
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # resumed, or exploiting a better trial
        with checkpoint.as_directory() as directory:
            saved = pickle.loads((Path(directory) / "state.pkl").read_bytes())
        params, opt_state, step = saved["params"], saved["opt_state"], saved["step"]
    else:  # the same initial weights as replica `index` of create_replicas
        keys = jax.random.split(jax.random.key(settings["init_seed"]), config["trials"])
        params, opt_state = init(keys[config["index"]], train_x[:2])
        step = 0
    opt_state = with_learning_rate(opt_state, config["lr"])
    while step < settings["steps"]:
        num = min(settings["interval"], settings["steps"] - step)
        params, opt_state, train_loss = segment(
            params, opt_state, data_key, train_x, train_y, step, num
        )
        step += num
        val_loss, val_acc = evaluate(params, val_x, val_y)
        state = {
            "params": jax.device_get(params),
            "opt_state": jax.device_get(opt_state),
            "step": step,
        }
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "state.pkl").write_bytes(pickle.dumps(state))
            tune.report(
                {
                    "step": step,
                    "val_loss": float(val_loss),
                    "val_accuracy": float(val_acc),
                    "train_loss": float(train_loss),
                    "lr": float(config["lr"]),
                },
                checkpoint=tune.Checkpoint.from_directory(directory),
            )


def clip_learning_rate(config: dict) -> dict:
    """PBT explore step: clip the learning rate to the prior, as tempering does."""
    config["lr"] = float(min(max(config["lr"], LR_LOW), LR_HIGH))
    return config


# ----------------------------------------------------------------------------
# The two runs.
# ----------------------------------------------------------------------------


def run_tempering(args, dataset: tdata.Dataset, seed: int, calls) -> dict:
    """``pbt_train`` once per name in ``calls`` (its ``wall_s_<name>``), from
    the same replicas."""
    model = models.MLP(FEATURES, NUM_CLASSES)
    tx = tp.sgd(LR_LOW, momentum=MOMENTUM)
    ladder = tp.geometric_ladder("learning_rate", LR_LOW, LR_HIGH, args.trials)
    config = tp.pbt_config(
        {"learning_rate": tp.Prior(LR_LOW, LR_HIGH, log=True)},
        fraction=FRACTION,
        resample_probability=RESAMPLE_PROBABILITY,
        perturb_factors=PERTURB_FACTORS,
    )
    sample = dataset.train.inputs[:2]
    out = {}
    for call in calls:
        start = time.perf_counter()
        init_key, run_key = seed_keys(seed)
        state = tp.create_replicas(init_key, model, tx, sample, ladder=ladder)
        result = tp.pbt_train(
            state,
            run_key,
            config=config,
            train_data=dataset.train,
            validation_data=dataset.validation,
            num_steps=args.steps,
            ready_interval=args.interval,
            burn_in=args.burn_in,
            batch_size=args.batch_size,
        )
        jax.block_until_ready(result.state.params)
        out[f"wall_s_{call}"] = time.perf_counter() - start
    best = result.summary.best_replica
    test = tp.evaluate(result.state, dataset.test.inputs, dataset.test.labels)
    out.update(
        best_replica=best,
        best_val_loss=result.summary.best_val_loss,
        best_val_accuracy=result.summary.best_val_accuracy,
        best_test_accuracy=float(np.asarray(test.accuracy)[best]),
        max_val_accuracy=float(np.max(result.summary.final_val_accuracy)),
        final_val_accuracy=result.summary.final_val_accuracy,
        final_lr=result.summary.final_hyperparams["learning_rate"],
        num_copies=result.summary.num_copies,
    )
    return out


def tempering_in_fresh_processes(args, seed: int) -> dict:
    """``pbt_train`` as a restarted notebook sees it: new processes, JAX's cache on.

    A first process with an empty persistent compilation cache
    (``tp.enable_compilation_cache``) compiles and fills it (``cold``); a
    second process reads the programs back (``warm``) and calls once more
    (``second``, in-process caches warm). Imports and data loading are not
    in these times (they are in ``process_s``).
    """
    cache = Path(tempfile.mkdtemp(prefix="bench_raytune_cache_"))
    out = {}
    try:
        for calls in ("cold", "warm,second"):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "experiments.bench_raytune",
                 "--tempering-only", str(seed), "--calls", calls,
                 "--cache-dir", str(cache), *tempering_argv(args)],
                check=True, capture_output=True, text=True, cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )  # fmt: skip
            out[f"process_s_{calls.split(',')[0]}"] = time.perf_counter() - start
            out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(
        f"seed {seed} tempering: {out['wall_s_cold']:.1f} s cold cache, "
        f"{out['wall_s_warm']:.1f} s warm cache (new process), "
        f"{out['wall_s_second']:.1f} s second call; best val acc "
        f"{out['best_val_accuracy']:.4f}, test acc {out['best_test_accuracy']:.4f}",
        flush=True,
    )
    return out


def tempering_argv(args) -> list[str]:
    """The settings of the tempering side, as command-line arguments."""
    return [
        f"--trials={args.trials}", f"--steps={args.steps}",
        f"--interval={args.interval}", f"--burn-in={args.burn_in}",
        f"--batch-size={args.batch_size}",
    ]  # fmt: skip


def tempering_only(args) -> None:
    """``--tempering-only SEED``: one seed's ``pbt_train`` calls, as JSON on stdout."""
    tp.enable_compilation_cache(args.cache_dir)
    dataset = tdata.load_mnist1d()
    out = run_tempering(
        args, dataset, args.tempering_only, calls=tuple(args.calls.split(","))
    )
    print(json.dumps(jax.tree.map(lambda v: np.asarray(v).tolist(), out)))


def run_ray(args, dataset: tdata.Dataset, seed: int, storage: Path, mode: str) -> dict:
    """One ``Tuner.fit()`` of ``trials`` PBT trials to ``steps`` steps each.

    ``mode`` is ``"synch"`` (synchronous PBT, as the library's) or ``"async"``
    (Ray's default: each trial exploits on its own when it is ready).
    """
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    # Imported by name so that Ray pickles it by reference and a reused worker
    # keeps its compiled programs (run as __main__ it would be pickled by value).
    from experiments.bench_raytune import clip_learning_rate as explore_fn
    from experiments.bench_raytune import ray_trainable as trainable

    ladder = np.geomspace(LR_LOW, LR_HIGH, args.trials).astype(np.float32)
    random.seed(seed)  # Ray's PBT draws from Python's random module
    np.random.seed(seed)
    scheduler = PopulationBasedTraining(
        time_attr="step",
        perturbation_interval=args.interval,
        # first exploit at burn_in + interval steps, as in pbt_train
        burn_in_period=args.burn_in + args.interval,
        hyperparam_mutations={"lr": tune.loguniform(LR_LOW, LR_HIGH)},
        quantile_fraction=FRACTION,
        resample_probability=RESAMPLE_PROBABILITY,
        perturbation_factors=(1.2, 0.8),
        custom_explore_fn=explore_fn,
        synch=mode == "synch",
    )
    data = {
        "train_x": dataset.train.inputs,
        "train_y": dataset.train.labels,
        "val_x": dataset.validation.inputs,
        "val_y": dataset.validation.labels,
    }
    settings = {
        "batch_size": args.batch_size,
        "steps": args.steps,
        "interval": args.interval,
        "init_seed": seed,
        "run_seed": RUN_KEY_OFFSET + seed,  # seed_keys' convention
    }
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(trainable, data=data, settings=settings),
            {"cpu": args.cpu_per_trial},
        ),
        param_space={
            "index": tune.grid_search(list(range(args.trials))),
            "lr": tune.sample_from(lambda config: float(ladder[config["index"]])),
            "trials": args.trials,
        },
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            scheduler=scheduler,
            reuse_actors=args.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=f"bench_raytune_{mode}_seed{seed}",
            storage_path=str(storage),
            stop={"step": args.steps},
            verbose=0,
        ),
    )
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    errors = [str(r.error) for r in results if r.error is not None]
    finals = [r.metrics for r in results]
    steps = [m.get("step", 0) for m in finals]
    val_loss = np.array([m.get("val_loss", np.inf) for m in finals], np.float64)
    val_acc = np.array([m.get("val_accuracy", np.nan) for m in finals], np.float64)
    best = best_index(val_loss)
    _, _, _, _, evaluate = single_replica_fns(args.batch_size)
    with results[best].checkpoint.as_directory() as directory:
        saved = pickle.loads((Path(directory) / "state.pkl").read_bytes())
    test_loss, test_acc = evaluate(
        saved["params"],
        jnp.asarray(dataset.test.inputs),
        jnp.asarray(dataset.test.labels),
    )
    out = {
        "wall_s": wall,
        "errors": errors,
        "trial_steps": steps,
        "replica_steps": int(np.sum(steps)),
        "best_trial": best,
        "best_val_loss": float(val_loss[best]),
        "best_val_accuracy": float(val_acc[best]),
        "best_test_accuracy": float(test_acc),
        "best_checkpoint_step": int(saved["step"]),
        "max_val_accuracy": float(np.nanmax(val_acc)),
        "final_val_accuracy": val_acc,
        "final_lr": [float(r.config["lr"]) for r in results],
        "num_perturbations": int(getattr(scheduler, "_num_perturbations", -1)),
        # seconds each final trial spent in its trainable (Ray's time_total_s)
        "trial_time_total_s": [m.get("time_total_s", np.nan) for m in finals],
    }
    print(
        f"seed {seed} ray tune ({mode}): {wall:.1f} s; best val acc "
        f"{out['best_val_accuracy']:.4f}, test acc {out['best_test_accuracy']:.4f}, "
        f"{out['num_perturbations']} exploits, {len(errors)} errored trials",
        flush=True,
    )
    return out


# ----------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------


MODE_LABELS = {
    "synch": "Ray Tune PBT, synchronous (as the library's)",
    "async": "Ray Tune PBT, asynchronous (Ray's default)",
}


def table(runs: list[dict], modes, ray_init_s: float, desc: str, note: str) -> str:
    temp = [r["tempering"] for r in runs]
    walls = {call: [t[f"wall_s_{call}"] for t in temp] for call in CALLS}
    seeds = [r["seed"] for r in runs]
    steps = runs[0]["replica_steps"]
    lines = [
        f"**Ray Tune PBT vs tempering PBT (MNIST-1D, CPU)**: {desc}; seeds {seeds}, "
        "mean ± std over seeds. Best = the replica / trial with the lowest final "
        "validation loss.",
        "",
        "| method | wall time (s) | replica-steps | best val accuracy (%) | "
        "test accuracy of best (%) | Ray time / tempering time |",
        "|---|---|---|---|---|---|",
    ]
    for call, label in CALLS.items():
        scores = (
            f"{fmt_mean_std([t['best_val_accuracy'] for t in temp], 100)} | "
            f"{fmt_mean_std([t['best_test_accuracy'] for t in temp], 100)}"
            if call == "cold"
            else "(same run) | (same run)"
        )
        lines.append(
            f"| tempering `pbt_train`, {label} | "
            f"{fmt_mean_std(walls[call], digits=1)} | {steps} | {scores} | |"
        )
    for mode in modes:
        ray = [r["ray"][mode] for r in runs]
        wall = [r["wall_s"] for r in ray]
        ratios = ", ".join(
            f"{fmt_mean_std(np.divide(wall, walls[call]), digits=1)}x vs {call}"
            for call in CALLS
        )
        lines.append(
            f"| {MODE_LABELS[mode]}, `Tuner.fit` | {fmt_mean_std(wall, digits=1)} | "
            f"{ray[0]['replica_steps']} | "
            f"{fmt_mean_std([r['best_val_accuracy'] for r in ray], 100)} | "
            f"{fmt_mean_std([r['best_test_accuracy'] for r in ray], 100)} | "
            f"{ratios} |"
        )
    lines += [
        "",
        f"`ray.init` took {ray_init_s:.1f} s more, not counted in the Ray times. The "
        "tempering times include `create_replicas`, not the new process's imports "
        "and data loading; the Ray times include starting the trial processes, "
        "importing JAX and compiling in each (Ray's workers run without a "
        "persistent compilation cache, as Ray starts them).",
    ]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="replicas / trials")
    parser.add_argument("--steps", type=int, default=2000, help="SGD steps per trial")
    parser.add_argument("--interval", type=int, default=100, help="PBT ready interval")
    parser.add_argument("--burn-in", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="default: 3 if the first (synchronous) Ray run takes under 3 minutes, "
        "else 1",
    )
    parser.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    parser.add_argument(
        "--cpu-per-trial", type=float, default=0.25, help="Ray resources per trial"
    )
    parser.add_argument(
        "--ray-modes",
        nargs="+",
        choices=sorted(MODE_LABELS),
        default=["synch", "async"],
        help="Ray PBT variants to run, the first decides the number of seeds",
    )
    parser.add_argument(
        "--reuse-actors", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=180.0,
        help="seconds a timed run waits at most for idle CPUs (0: no wait)",
    )
    # internal: one seed of the tempering side in this process (see
    # tempering_in_fresh_processes)
    parser.add_argument(
        "--tempering-only", type=int, default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--calls", default="cold", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    add_output_args(parser, "bench_raytune")
    return parser.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.tempering_only is not None:
        tempering_only(args)
        return None
    load_start = os.getloadavg()
    import ray

    dataset = tdata.load_mnist1d()
    storage = Path(tempfile.mkdtemp(prefix="bench_raytune_"))
    ray_started_here = not ray.is_initialized()
    start = time.perf_counter()
    if ray_started_here:
        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": WORKER_ENV},
        )
    ray_init_s = time.perf_counter() - start
    runs, note = [], ""
    try:
        seeds = list(range(args.seeds)) if args.seeds is not None else [0]
        while len(runs) < len(seeds):
            seed = seeds[len(runs)]
            # Every timed run starts on an idle machine: no earlier run's
            # processes are timed with it.
            idle = {"tempering": wait_until_idle(max_wait_s=args.idle_wait)}
            run = {
                "seed": seed,
                "loadavg_before": os.getloadavg(),
                "replica_steps": args.trials * args.steps,
                "tempering": tempering_in_fresh_processes(args, seed),
                "ray": {},
                "idle_before": idle,
            }
            for mode in args.ray_modes:
                idle[mode] = wait_until_idle(max_wait_s=args.idle_wait)
                ray_run = run_ray(args, dataset, seed, storage, mode)
                run["ray"][mode] = ray_run
                for call in CALLS:
                    run.setdefault(f"ray_over_tempering_{call}", {})[mode] = (
                        ray_run["wall_s"] / run["tempering"][f"wall_s_{call}"]
                    )
            run["loadavg_after"] = os.getloadavg()
            runs.append(run)
            if args.seeds is None and len(runs) == 1:
                wall = run["ray"][args.ray_modes[0]]["wall_s"]
                if wall < RAY_TIME_LIMIT_FOR_3_SEEDS:
                    seeds = [0, 1, 2]
                else:
                    note = (
                        f"One seed only: the first Ray run ({args.ray_modes[0]}) took "
                        f"{wall:.0f} s, more than {RAY_TIME_LIMIT_FOR_3_SEEDS:.0f} s."
                    )
    finally:
        if ray_started_here:
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    load_end = os.getloadavg()
    seeds = [r["seed"] for r in runs]
    desc = (
        f"MLP (128, 128), {args.trials} replicas / trials, starting learning rates "
        f"the geometric ladder {LR_LOW}–{LR_HIGH}, SGD momentum {MOMENTUM}, batch "
        f"{args.batch_size}, dropout 0, {args.steps} steps per replica (burn-in "
        f"{args.burn_in}), PBT every {args.interval} steps: truncation q = "
        f"{FRACTION}, perturb x0.8 / x1.2 or resample (p = {RESAMPLE_PROBABILITY}) "
        f"from log-uniform {LR_LOW}–{LR_HIGH}, clipped; Ray {ray.__version__}, "
        f"ray.init(num_cpus={args.cpus}), {args.cpu_per_trial} CPU per trial (all "
        f"{args.trials} trials at once when {args.cpu_per_trial} x {args.trials} <= "
        f"{args.cpus}), reuse_actors={args.reuse_actors}, one XLA thread per trial; "
        f"{os.cpu_count()} CPU cores shared with other jobs, load average "
        f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end; every timed run "
        "started once the CPUs were idle (at least 85% over 2 s, waited "
        f"{max(w['waited_s'] for r in runs for w in r['idle_before'].values()):.0f} s "
        f"at most, --idle-wait {args.idle_wait:.0f})"
    )
    markdown = table(runs, args.ray_modes, ray_init_s, desc, note)
    summary = {
        **{
            f"tempering_wall_s_{call}": [r["tempering"][f"wall_s_{call}"] for r in runs]
            for call in CALLS
        },
        "tempering_best_val_accuracy": [
            r["tempering"]["best_val_accuracy"] for r in runs
        ],
        "tempering_best_test_accuracy": [
            r["tempering"]["best_test_accuracy"] for r in runs
        ],
    }
    for mode in args.ray_modes:
        summary[f"ray_{mode}_wall_s"] = [r["ray"][mode]["wall_s"] for r in runs]
        for call in CALLS:
            summary[f"ray_{mode}_over_tempering_{call}"] = [
                r[f"ray_over_tempering_{call}"][mode] for r in runs
            ]
        for key in ("best_val_accuracy", "best_test_accuracy"):
            summary[f"ray_{mode}_{key}"] = [r["ray"][mode][key] for r in runs]
    payload = {
        "provenance": provenance(seeds, outputs=output_dirs(args)),
        "settings": settings_of(args),
        "description": desc,
        "ray_version": ray.__version__,
        "python_executable": sys.executable,
        "worker_env": WORKER_ENV,
        "ray_init_s": ray_init_s,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "summary": summary,
        "runs": runs,
        "note": note,
        "table": markdown,
    }
    write_outputs(args, payload, markdown)
    return payload


if __name__ == "__main__":
    main()
