"""Golden-output configurations of the tempering engine.

Every ``run_<name>()`` builds its own tiny data and replicas from fixed seeds,
runs one engine entry point and returns all of its outputs as a flat dict of
numpy arrays (keys such as ``"history.rungs"``, ``"summary.acceptance_rate"``,
``"state.params"``). ``record_golden.py`` stores them at a fixed commit and
``tests/test_golden.py`` checks the current engine against them bit for bit.

The engine calls of each configuration sit together in one small block (marked
``# engine calls``), so that an API change (say ``vectorize``/``loop`` moving
from ``create_replicas`` to ``pt_train``) touches only those lines; the data,
the seeds and the recorded fields stay fixed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

import tempering as tp
from tempering import diffusion
from tempering.zoo.models import MLP

NUM_REPLICAS = 4
BATCH_SIZE = 32
MODEL = MLP(features=(16,), num_classes=4)

Arrays = dict[str, np.ndarray]
Split = tuple[np.ndarray, np.ndarray]

# The fields recorded from each result type (record_golden.py checks at
# recording time that these are all the fields the engine returned).
PT_HISTORY_FIELDS = (
    "step",
    "train_loss",
    "val_loss",
    "val_metrics",
    "score",
    "rungs",
    "hyperparams",
    "proposed",
    "accepted",
    "acceptance_prob",
    "c",
    "temperatures",
    "initial_rungs",
    "test_loss",
    "test_metrics",
    "diverged",
    "restored_from",
)
PT_SUMMARY_FIELDS = (
    "acceptance_rate",
    "round_trips",
    "best_replica",
    "best_val_loss",
    "final_val_loss",
    "final_val_metrics",
    "final_score",
    "c",
    "ladder",
    "diverged",
    "interrupted",
)
PBT_HISTORY_FIELDS = (
    "step",
    "first_step",
    "train_loss",
    "val_loss",
    "val_metrics",
    "parent",
    "copied",
    "hyperparams",
    "resampled",
    "initial_hyperparams",
    "burn_in_hyperparams",
    "burn_in",
    "num_steps",
    "diverged",
    "restored_from",
)
PBT_SUMMARY_FIELDS = (
    "num_copies",
    "best_replica",
    "best_val_loss",
    "final_val_loss",
    "final_val_metrics",
    "final_hyperparams",
    "diverged",
    "interrupted",
)
SCHEDULE_FIELDS = ("starts", "values", "replicas", "num_steps")
REPLAY_FIELDS = ("step", "val_loss", "val_metrics")
DIFFUSION_FIELDS = (
    "steps",
    "distance",
    "train_loss",
    "values",
    "hyperparameter",
    "initial_norm",
    "weight_norm",
)
EVAL_FIELDS = ("loss", "metrics")


class Data(NamedTuple):
    """The three splits, each an ``(inputs, labels)`` pair."""

    train: Split
    validation: Split
    test: Split


def make_data() -> Data:
    """Linearly separable 4-class data: ``y = argmax(x @ W)``, x and W normal.

    Returns:
        Train ``(256, 16)``, validation ``(64, 16)`` and test ``(64, 16)``
        float32 inputs with int32 labels, all drawn from
        ``np.random.default_rng(0)`` (W first, then train, validation, test).
    """
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(16, 4))

    def split(num: int) -> Split:
        inputs = rng.normal(size=(num, 16)).astype(np.float32)
        labels = np.argmax(inputs @ weights, axis=1).astype(np.int32)
        return inputs, labels

    return Data(split(256), split(64), split(64))


def _dropout_ladder() -> tp.Ladder:
    """The linear dropout ladder 0-0.5 at lr 0.1 of the dropout configurations."""
    return tp.linear_ladder("dropout_rate", 0.0, 0.5, NUM_REPLICAS, learning_rate=0.1)


def _lr_ladder() -> tp.Ladder:
    """The geometric learning-rate ladder 0.01-0.3."""
    return tp.geometric_ladder("learning_rate", 0.01, 0.3, NUM_REPLICAS)


@functools.cache
def sgd(
    learning_rate: float, momentum: float | None = None
) -> optax.GradientTransformation:
    """``tp.sgd``, one object per setting: compiled programs are cached on it."""
    return tp.sgd(learning_rate, momentum=momentum)


@functools.cache
def l2_sgd(learning_rate: float) -> optax.GradientTransformation:
    """``diffusion.l2_sgd``, one object per setting."""
    return diffusion.l2_sgd(learning_rate)


def params_digest(tree: Any) -> np.ndarray:
    """The leaves of ``tree`` in ``jax.tree.leaves`` order, raveled and concatenated.

    The result is float32: the recorded pytrees (parameters, optimiser states)
    hold float32 leaves and small integer counters, so it is exact.
    """
    leaves = [np.asarray(leaf, np.float32).ravel() for leaf in jax.tree.leaves(tree)]
    return np.concatenate(leaves) if leaves else np.zeros((0,), np.float32)


def _put(out: Arrays, key: str, value: Any) -> None:
    """Stores ``value`` under ``key``; a mapping becomes ``key.<name>`` entries."""
    if isinstance(value, Mapping):
        for name in sorted(value):
            _put(out, f"{key}.{name}", value[name])
    elif isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        for name in value._fields:
            _put(out, f"{key}.{name}", getattr(value, name))
    elif dataclasses.is_dataclass(value):  # a flax.struct pytree: its arrays
        for field in dataclasses.fields(value):
            if field.metadata.get("pytree_node", True):
                _put(out, f"{key}.{field.name}", getattr(value, field.name))
    else:
        out[key] = np.asarray(value)


def record(prefix: str, obj: Any, names: Sequence[str]) -> Arrays:
    """The named attributes of ``obj`` as ``"<prefix>.<name>"`` arrays."""
    out: Arrays = {}
    for name in names:
        _put(out, f"{prefix}.{name}", getattr(obj, name))
    return out


def record_state(state: tp.ReplicaState, prefix: str = "state") -> Arrays:
    """Final weights, optimiser state, dropout rates and step of replicas."""
    return {
        f"{prefix}.params": params_digest(state.params),
        f"{prefix}.opt_state": params_digest(state.opt_state),
        f"{prefix}.dropout_rate": np.asarray(state.dropout_rate),
        f"{prefix}.step": np.asarray(state.step),
    }


def _pt_outputs(result: tp.PTResult, metrics: tp.EvalMetrics | None = None) -> Arrays:
    out = {
        "move_state.rungs": np.asarray(result.move_state.rungs),
        **record("history", result.history, PT_HISTORY_FIELDS),
        **record("summary", result.summary, PT_SUMMARY_FIELDS),
        **record_state(result.state),
    }
    if metrics is not None:
        out.update(record("evaluate", metrics, EVAL_FIELDS))
    return out


def _pbt_outputs(result: tp.PBTResult) -> Arrays:
    return {
        **record("history", result.history, PBT_HISTORY_FIELDS),
        **record("summary", result.summary, PBT_SUMMARY_FIELDS),
        **record_state(result.state),
    }


# ----------------------------------------------------------------------------
# Parallel tempering.
# ----------------------------------------------------------------------------


def _pt_dropout(*, exchanges: bool, loop: str) -> Arrays:
    """PT (or the grid) on a linear dropout ladder, random-pair exchanges."""
    data = make_data()
    ladder = _dropout_ladder()
    tx = sgd(0.1, momentum=0.9)
    # engine calls
    state = tp.create_replicas(
        jax.random.key(0),
        MODEL,
        tx,
        data.train[0][:BATCH_SIZE],
        ladder=ladder,
    )
    result = tp.pt_train(
        state,
        ladder,
        jax.random.key(1),
        train_data=data.train,
        validation_data=data.validation,
        num_steps=55,  # 10 burn-in + 5 rounds of 8 + 5 leftover
        burn_in=10,
        exchange_interval=8,
        c=5.0,
        scheme="random_pair",
        exchanges=exchanges,
        batch_size=BATCH_SIZE,
        test_data=data.test,
        loop=loop,
    )
    metrics = tp.evaluate(result.state, *data.test)
    return _pt_outputs(result, metrics)


def run_pt_random() -> Arrays:
    """Random-pair PT on a dropout ladder (device loop), with test data."""
    return _pt_dropout(exchanges=True, loop="auto")


def run_grid() -> Arrays:
    """The same run as ``pt_random`` with every exchange masked out."""
    return _pt_dropout(exchanges=False, loop="auto")


def run_pt_host() -> Arrays:
    """``pt_random`` through the host loop (one compiled step per call)."""
    return _pt_dropout(exchanges=True, loop="host")


def run_pt_even_odd() -> Arrays:
    """Even-odd PT on a geometric lr ladder, own batches, burn-in at lr 0.1."""
    data = make_data()
    ladder = _lr_ladder()
    tx = sgd(0.05)
    # engine calls
    state = tp.create_replicas(
        jax.random.key(2),
        MODEL,
        tx,
        data.train[0][:BATCH_SIZE],
        ladder=ladder,
        same_init=True,
    )
    result = tp.pt_train(
        state,
        ladder,
        jax.random.key(3),
        train_data=data.train,
        validation_data=data.validation,
        # 8 burn-in + 8 rounds of 10. The brief's 48 steps (4 rounds) accept every
        # proposal for any c (the colder replica always had the higher loss,
        # so every acceptance probability is 1); with 8 rounds and c = 5 one of
        # the four proposals of pair (1, 2) is rejected (probability 0.295).
        num_steps=88,
        burn_in=8,
        exchange_interval=10,
        c=5.0,
        scheme="even_odd",
        shared_batch=False,
        burn_in_hyperparams={"learning_rate": 0.1},
        batch_size=BATCH_SIZE,
    )
    metrics = tp.evaluate(result.state, *data.test)
    return _pt_outputs(result, metrics)


def run_pt_auto() -> Arrays:
    """``pt_train``'s defaults on an lr ladder: C tuned in the first quarter, even-odd.

    Covers the adaptive exchange (its state carried between rounds, C frozen
    after 3 of 12 rounds) that the fixed-C configurations do not.
    """
    data = make_data()
    ladder = _lr_ladder()
    tx = sgd(0.05)
    # engine calls
    state = tp.create_replicas(
        jax.random.key(11), MODEL, tx, data.train[0][:BATCH_SIZE], ladder=ladder
    )
    result = tp.pt_train(
        state,
        ladder,
        jax.random.key(12),
        train_data=data.train,
        validation_data=data.validation,
        num_steps=120,
        burn_in=0,
        exchange_interval=10,
        batch_size=BATCH_SIZE,
    )
    return _pt_outputs(result)


# ----------------------------------------------------------------------------
# Population based training.
# ----------------------------------------------------------------------------


@functools.cache
def _pbt_truncation() -> tuple[
    tp.PBTResult, tp.replay.Schedule, list[tp.replay.Schedule]
]:
    """The ``pbt_truncation`` run, its best schedule and every final replica's.

    Cached: the ``replay`` configurations retrain on these schedules.
    """
    data = make_data()
    ladder = _dropout_ladder()
    tx = sgd(0.1, momentum=0.9)
    config = tp.pbt_config(
        {
            "learning_rate": tp.Prior(1e-3, 0.3, log=True),
            "dropout_rate": (0.0, 0.5),
        },
        selection="truncation",
        fraction=0.25,
    )
    # engine calls
    state = tp.create_replicas(
        jax.random.key(4), MODEL, tx, data.train[0][:BATCH_SIZE], ladder=ladder
    )
    result = tp.pbt_train(
        state,
        jax.random.key(5),
        config=config,
        train_data=data.train,
        validation_data=data.validation,
        num_steps=60,
        ready_interval=10,
        burn_in=5,
        batch_size=BATCH_SIZE,
    )
    schedule = tp.best_schedule(result.history, result.summary.best_replica)
    lineages = [tp.best_schedule(result.history, m) for m in range(NUM_REPLICAS)]
    return result, schedule, lineages


def run_pbt_truncation() -> Arrays:
    """Truncation PBT over lr and dropout from a dropout ladder, with burn-in.

    Besides the best replica's schedule (``schedule.*``), the schedule of every
    final replica is recorded (``schedules.<m>.*``): the best one has a single
    piece here.
    """
    result, schedule, lineages = _pbt_truncation()
    out = {**_pbt_outputs(result), **record("schedule", schedule, SCHEDULE_FIELDS)}
    for m, lineage in enumerate(lineages):
        out.update(record(f"schedules.{m}", lineage, SCHEDULE_FIELDS))
    return out


def run_pbt_tournament() -> Arrays:
    """Tournament PBT over lr, starting values drawn from the prior."""
    data = make_data()
    tx = sgd(0.1, momentum=0.9)
    config = tp.pbt_config(
        {"learning_rate": tp.Prior(1e-3, 0.3, log=True)}, selection="tournament"
    )
    # engine calls
    state = tp.create_replicas(
        jax.random.key(6),
        MODEL,
        tx,
        data.train[0][:BATCH_SIZE],
        num_replicas=NUM_REPLICAS,
    )
    result = tp.pbt_train(
        state,
        jax.random.key(7),
        config=config,
        train_data=data.train,
        validation_data=data.validation,
        num_steps=50,
        ready_interval=10,
        burn_in=0,
        init_from_prior=True,
        batch_size=BATCH_SIZE,
    )
    return _pbt_outputs(result)


def _replay(schedule: tp.replay.Schedule) -> Arrays:
    """Fresh replicas retrained on ``schedule`` with the PBT run's key."""
    data = make_data()
    tx = sgd(0.1, momentum=0.9)
    # engine calls
    state = tp.create_replicas(
        jax.random.key(8),
        MODEL,
        tx,
        data.train[0][:BATCH_SIZE],
        num_replicas=NUM_REPLICAS,
    )
    result = tp.replay_schedule(
        state,
        jax.random.key(5),
        schedule,
        train_data=data.train,
        validation_data=data.validation,
        batch_size=BATCH_SIZE,
    )
    return {**record("replay", result, REPLAY_FIELDS), **record_state(result.state)}


def run_replay() -> Arrays:
    """The best schedule of ``pbt_truncation`` replayed (a single piece here)."""
    _, schedule, _ = _pbt_truncation()
    return _replay(schedule)


def run_replay_lineage() -> Arrays:
    """The two-piece schedule of final replica 3 of ``pbt_truncation`` replayed.

    lr 0.1 until step 35, then the explored 0.0129: covers what the best
    schedule (one piece) does not, the hyperparameter change between pieces.
    """
    _, _, lineages = _pbt_truncation()
    return _replay(lineages[3])


# ----------------------------------------------------------------------------
# Weight diffusion.
# ----------------------------------------------------------------------------


def _diffusion(
    hyperparameter: str, values: Sequence[float], tx: optax.GradientTransformation
) -> Arrays:
    """The diffusion test of one hyperparameter, replicas from the same weights."""
    data = make_data()
    # engine calls
    state = tp.create_replicas(
        jax.random.key(9),
        MODEL,
        tx,
        data.train[0][:BATCH_SIZE],
        num_replicas=NUM_REPLICAS,
        same_init=True,
    )
    result = diffusion.diffusion_test(
        state,
        jax.random.key(10),
        train_data=data.train,
        hyperparameter=hyperparameter,
        values=values,
        num_steps=30,
        num_records=5,
        t0=5,
        batch_size=BATCH_SIZE,
    )
    return record("diffusion", result, DIFFUSION_FIELDS)


def run_diffusion_lr() -> Arrays:
    """Weight diffusion against the learning rate."""
    return _diffusion("learning_rate", [0.01, 0.03, 0.1, 0.3], sgd(0.1))


def run_diffusion_dropout() -> Arrays:
    """Weight diffusion against the dropout rate."""
    return _diffusion("dropout_rate", [0.0, 0.1, 0.3, 0.5], sgd(0.1))


def run_diffusion_wd() -> Arrays:
    """Weight diffusion against the L2 weight decay (``l2_sgd``)."""
    return _diffusion("weight_decay", [0.0, 1e-3, 1e-2, 1e-1], l2_sgd(0.05))


# Training steps of each configuration, for the tolerance of its float outputs
# off the recording platform (compare.tolerance). The replays retrain the
# 60-step schedules of pbt_truncation.
NUM_STEPS = {
    "pt_random": 55,
    "grid": 55,
    "pt_even_odd": 88,
    "pt_host": 55,
    "pt_auto": 120,
    "pbt_truncation": 60,
    "pbt_tournament": 50,
    "replay": 60,
    "replay_lineage": 60,
    "diffusion_lr": 30,
    "diffusion_dropout": 30,
    "diffusion_wd": 30,
}

# Losses of a 4-class problem start at ln 4 and fall: every recorded loss is
# below this bound.
LOSS_BOUND = 1.5


# The (fixed) ladder of each exchange configuration.
LADDERS: dict[str, Callable[[], tp.Ladder]] = {
    "pt_random": _dropout_ladder,
    "grid": _dropout_ladder,
    "pt_host": _dropout_ladder,
    "pt_even_odd": _lr_ladder,
    "pt_auto": _lr_ladder,
}


def gains(name: str, recorded: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Outputs of ``name`` that amplify a change of the losses, and by how much.

    An acceptance probability ``p = exp(min(0, C (beta_r - beta_r+1) (L_i -
    L_j)))`` moves by at most ``C * max dbeta`` times the change of ``L_i -
    L_j``, itself at most twice the deviation allowed for a loss (``LOSS_BOUND``
    times the tolerance). C is the largest the run used (``history.c``).
    """
    if name not in LADDERS:
        return {}
    betas = np.asarray(LADDERS[name]().betas, np.float64)
    c = float(np.max(recorded["history.c"]))
    gain = 2.0 * c * float(np.max(betas[:-1] - betas[1:])) * LOSS_BOUND
    return {"history.acceptance_prob": gain}


# The PRNG bits of the recording (jax_threefry_partitionable; its default
# changed from False to True in JAX 0.5.0): the runs reproduce them on every
# supported release.
THREEFRY_PARTITIONABLE = True


def run(name: str) -> Arrays:
    """The outputs of configuration ``name`` under the recording's PRNG setting."""
    with jax.threefry_partitionable(THREEFRY_PARTITIONABLE):
        return RUNNERS[name]()


RUNNERS: dict[str, Callable[[], Arrays]] = {
    "pt_random": run_pt_random,
    "grid": run_grid,
    "pt_even_odd": run_pt_even_odd,
    "pt_host": run_pt_host,
    "pt_auto": run_pt_auto,
    "pbt_truncation": run_pbt_truncation,
    "pbt_tournament": run_pbt_tournament,
    "replay": run_replay,
    "replay_lineage": run_replay_lineage,
    "diffusion_lr": run_diffusion_lr,
    "diffusion_dropout": run_diffusion_dropout,
    "diffusion_wd": run_diffusion_wd,
}
CONFIGS = tuple(RUNNERS)
