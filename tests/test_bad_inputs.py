"""No silent bad input (issue 17): a table of 237 bad inputs to the public API.

Each case makes one bad call (``create_replicas``, ``set_hyperparams``,
``get_hyperparams``, the ladders and hand-built ``Ladder``, ``exchange``,
``exchange_move``, ``multi_exchange_move``, ``pt_train``, ``pbt_config``,
``pbt_step``, ``pbt_train``, ``train``, ``diffusion_test``, ``evaluate``,
``train_step``, the data loaders) and asserts the exception class (ValueError or
TypeError) and a message that names the argument, most with the fix. The
error must come before anything compiles: no program of the package (init,
segment, evaluation, move) is compiled during a case (``compiled`` fixture,
``jax.log_compiles``); ``create_replicas`` gets a fresh model each time, so its
init is never a cache hit. Shared replicas (M = 4, one Dense layer on 8
features) are built once; nothing trains.

Counts: 65 of them needed a library fix in this change (``fixed=True``:
they ran silently, failed with another library's message, or raised only
after compiling, measured against the previous commit with this table); 0 still
wait for a fix in a module this change did not touch (``pending``, strict
xfail with the exact change). Two more calls run to a result the caller did not
ask for and warn (``WARNING_CASES``). Property tests of the same checks and of
the exchange and PBT operators are in ``test_properties.py``.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import pkgutil
import re
import types
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempering as tp
from tempering import diffusion
from tempering.pbt import pbt_step
from tempering.zoo import datasets as tdata

NAN = float("nan")
INF = float("inf")
M = 4
FEATURES = 8
CLASSES = 3


class DropNet(nn.Module):
    """One Dense layer on 8 features, with a per-replica dropout rate."""

    tag: int = 0  # another tag, another model: its init is never cached

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.Dense(CLASSES)(x)
        return tp.Dropout()(x, dropout_rate, deterministic=not train)


class PlainNet(nn.Module):
    """One Dense layer, no dropout rate."""

    tag: int = 0

    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(CLASSES)(x)


_TAGS = itertools.count(1)


def _arrays(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=num).astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def ctx():
    """Everything the cases share, built once (two tiny inits, nothing trained)."""
    x, y = _arrays(32, 0)
    xv, yv = _arrays(16, 1)
    tx = tp.sgd(0.05)
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, M)
    key = jax.random.key(0)
    return types.SimpleNamespace(
        x=x, y=y, xv=xv, yv=yv, tx=tx, ladder=ladder, key=jax.random.key(1),
        state=tp.create_replicas(key, DropNet(), tx, x[:1], ladder=ladder),
        plain=tp.create_replicas(key, PlainNet(), tx, x[:1], num_replicas=M),
        rungs=jnp.arange(M, dtype=jnp.int32),
        losses=jnp.linspace(1.0, 2.0, M),
        betas=ladder.betas,
        config=tp.pbt_config({"learning_rate": (0.01, 0.1)}),
        dropout=tp.linear_ladder("dropout_rate", 0.0, 0.3, M),
    )  # fmt: skip


# --- the calls the cases make bad, one argument at a time ---------------------


def pt(ctx: Any, /, **overrides: Any) -> Any:
    """``pt_train`` on the shared state and data, with ``overrides``."""
    kwargs = dict(
        train_data=(ctx.x, ctx.y), validation_data=(ctx.xv, ctx.yv), num_steps=20,
        exchange_interval=5, batch_size=8, c=1.0,
    )  # fmt: skip
    kwargs.update(overrides)
    state = kwargs.pop("state", ctx.state)
    ladder = kwargs.pop("ladder", ctx.ladder)
    key = kwargs.pop("key", ctx.key)
    return tp.pt_train(state, ladder, key, **kwargs)


def pbt(ctx: Any, /, **overrides: Any) -> Any:
    """``pbt_train`` on the shared state and data, with ``overrides``."""
    kwargs = dict(
        train_data=(ctx.x, ctx.y), validation_data=(ctx.xv, ctx.yv), num_steps=20,
        ready_interval=5, batch_size=8, config=ctx.config,
    )  # fmt: skip
    kwargs.update(overrides)
    return tp.pbt_train(ctx.state, ctx.key, **kwargs)


def run(ctx: Any, /, **overrides: Any) -> Any:
    """``tp.train`` with the identity move on the shared state and data."""
    kwargs = dict(num_steps=20, interval=5, batch_size=8)
    kwargs.update(overrides)
    move = kwargs.pop("move", tp.identity_move())
    data = tp.RunData(
        kwargs.pop("train_data", (ctx.x, ctx.y)),
        kwargs.pop("validation_data", (ctx.xv, ctx.yv)),
        kwargs.pop("test_data", None),
    )
    return tp.train(ctx.state, ctx.key, move, data, tp.RunConfig(**kwargs))


def create(ctx: Any, /, **overrides: Any) -> Any:
    """``create_replicas`` of a fresh one-layer net, with ``overrides``."""
    kwargs = dict(
        key=ctx.key, model=DropNet(tag=next(_TAGS)), tx=ctx.tx, sample_input=ctx.x[:1],
        num_replicas=M,
    )  # fmt: skip
    kwargs.update(overrides)
    return tp.create_replicas(**kwargs)


def diff(ctx: Any, /, **overrides: Any) -> Any:
    """``diffusion_test`` on the shared state, with ``overrides``."""
    kwargs = dict(
        train_data=(ctx.x, ctx.y), hyperparameter="dropout_rate",
        values=[0.0, 0.1, 0.2, 0.3], num_steps=10, num_records=3, batch_size=8,
    )  # fmt: skip
    kwargs.update(overrides)
    return diffusion.diffusion_test(ctx.state, ctx.key, **kwargs)


def xchg(ctx: Any, /, **overrides: Any) -> Any:
    """``tp.exchange`` on concrete arguments, with ``overrides``."""
    kwargs = dict(
        key=ctx.key, rungs=ctx.rungs, losses=ctx.losses, betas=ctx.betas, c=1.0
    )
    kwargs.update(overrides)
    return tp.exchange(**kwargs)


def pbt_cfg(**overrides: Any) -> Any:
    """``pbt_config`` of a learning-rate prior, with ``overrides``."""
    prior = overrides.pop("prior", {"learning_rate": (0.01, 0.1)})
    return tp.pbt_config(prior, **overrides)


def hand_ladder(temps: Any, lr: Any = None) -> tp.Ladder:
    """A ``tp.Ladder`` built by hand, as arrays (no make_ladder checks)."""
    temps = np.asarray(temps, np.float32)
    lr = temps if lr is None else np.asarray(lr, np.float32)
    return tp.Ladder(values={"learning_rate": lr}, temperatures=temps)


def nan_at(array: np.ndarray, index: tuple, value: float = NAN) -> np.ndarray:
    """A copy of ``array`` with one entry replaced."""
    array = array.copy()
    array[index] = value
    return array


# --- the table ------------------------------------------------------------------


class Case(NamedTuple):
    id: str
    call: Callable[[Any], Any]  # makes the bad call on the shared ctx
    error: type[Exception]
    match: str  # regex the message must contain: names the argument (and the fix)
    fixed: bool = False  # needed a library fix in this change
    pending: str | None = None  # a fix needed in a module this change left alone
    trains: bool = False  # (pending) runs training before it fails: not run


V, T = ValueError, TypeError
DRIVER = "tempering/driver.py: train() must check it before anything compiles"

# fmt: off
CASES = [
    # --- create_replicas -------------------------------------------------
    Case("create-dropout-1", lambda c: create(c, hyperparams={"dropout_rate": 1.0}), V, r"dropout_rate.*\[0, 1\)"),
    Case("create-dropout-nan", lambda c: create(c, hyperparams={"dropout_rate": NAN}), V, r"dropout_rate.*non-finite"),
    Case("create-lr-negative", lambda c: create(c, hyperparams={"learning_rate": -0.1}), V, r"learning_rate.*\(0, ", fixed=True),
    Case("create-lr-zero", lambda c: create(c, hyperparams={"learning_rate": 0.0}), V, r"learning_rate.*\(0, ", fixed=True),
    Case("create-lr-huge", lambda c: create(c, hyperparams={"learning_rate": 1e9}), V, r"learning_rate in hyperparams must be at most 10", fixed=True),
    Case("create-lr-inf", lambda c: create(c, hyperparams={"learning_rate": INF}), V, r"learning_rate.*non-finite", fixed=True),
    Case("create-lr-string", lambda c: create(c, hyperparams={"learning_rate": "fast"}), T, r"learning_rate.*numbers", fixed=True),
    Case("create-unknown-hyperparam", lambda c: create(c, hyperparams={"lr": 0.1}), V, r"unknown hyperparameter.*'lr'", fixed=True),
    Case("create-hyperparams-not-mapping", lambda c: create(c, hyperparams=[("learning_rate", 0.1)]), T, r"hyperparams must be a mapping", fixed=True),
    Case("create-key-int", lambda c: create(c, key=0), T, r"key must be a JAX PRNG key"),
    Case("create-key-float", lambda c: create(c, key=1.5), T, r"key must be a JAX PRNG key"),
    Case("create-key-batch", lambda c: create(c, key=jax.random.split(c.key, 2)), V, r"key must be a single PRNG key"),
    Case("create-num-replicas-0", lambda c: create(c, num_replicas=0), V, r"num_replicas"),
    Case("create-num-replicas-negative", lambda c: create(c, num_replicas=-2), V, r"num_replicas"),
    Case("create-num-replicas-float", lambda c: create(c, num_replicas=2.5), T, r"num_replicas must be an int", fixed=True),
    Case("create-num-replicas-missing", lambda c: create(c, num_replicas=None), V, r"num_replicas"),
    Case("create-num-replicas-vs-ladder", lambda c: create(c, ladder=c.ladder, num_replicas=3), V, r"num_replicas=3.*4 rungs"),
    Case("create-ladder-not-ladder", lambda c: create(c, ladder={"learning_rate": [0.1, 0.2]}), T, r"ladder must be a tempering.Ladder"),
    Case("create-dropout-ladder-plain-model", lambda c: create(c, model=PlainNet(tag=next(_TAGS)), ladder=tp.linear_ladder("dropout_rate", 0.0, 0.5, M), num_replicas=None), V, r"dropout_rate.*model_inputs", fixed=True),
    Case("create-hand-ladder-decreasing", lambda c: create(c, ladder=hand_ladder([0.4, 0.3, 0.2, 0.1]), num_replicas=None), V, r"temperatures must increase", fixed=True),
    Case("create-hand-ladder-fewer-values", lambda c: create(c, ladder=hand_ladder([0.1, 0.2, 0.3, 0.4], lr=[0.1, 0.2]), num_replicas=None), V, r"values\['learning_rate'\] must have one value per rung", fixed=True),
    Case("create-hand-ladder-values-list", lambda c: create(c, ladder=tp.Ladder([0.1, 0.2], jnp.array([0.1, 0.2])), num_replicas=None), T, r"ladder.values must be a mapping", fixed=True),
    Case("create-weight-decay-ladder-not-injected", lambda c: create(c, ladder=tp.linear_ladder("weight_decay", 0.0, 0.1, M, temperatures=[1.0, 2.0, 3.0, 4.0]), num_replicas=None), V, r"ladder: unknown hyperparameter.*weight_decay", fixed=True),
    Case("create-lr-wrong-length", lambda c: create(c, hyperparams={"learning_rate": [0.1, 0.2]}), V, r"learning_rate in hyperparams must be one value or one per replica, shape \(4,\)", fixed=True),
    Case("create-lr-bool", lambda c: create(c, hyperparams={"learning_rate": True}), T, r"learning_rate in hyperparams must be numbers, not bools", fixed=True),
    Case("create-model-inputs-unknown", lambda c: create(c, model_inputs=("temperature",)), V, r"model_inputs.*temperature"),
    Case("create-train-kwarg-unknown", lambda c: create(c, train_kwarg="training"), V, r"train_kwarg"),
    Case("create-model-not-module", lambda c: create(c, model=lambda x: x), T, r"model must be a flax.linen.Module", fixed=True),
    Case("create-tx-not-optax", lambda c: create(c, tx=0.1), T, r"tx must be an optax", fixed=True),
    Case("create-sample-input-scalar", lambda c: create(c, sample_input=np.float32(1.0)), V, r"sample_input", fixed=True),
    Case("create-sample-input-strings", lambda c: create(c, sample_input=np.array([["a"] * FEATURES])), T, r"sample_input", fixed=True),
    Case("create-loss-fn-not-callable", lambda c: create(c, loss_fn="mse"), T, r"loss_fn must be callable", fixed=True),
    Case("create-same-init-string", lambda c: create(c, same_init="yes"), T, r"same_init must be True or False", fixed=True),
    # --- set_hyperparams / get_hyperparams -------------------------------
    Case("set-dropout-1", lambda c: tp.set_hyperparams(c.state, dropout_rate=1.0), V, r"dropout_rate.*\[0, 1\)"),
    Case("set-lr-negative", lambda c: tp.set_hyperparams(c.state, learning_rate=-0.01), V, r"learning_rate.*\(0, "),
    Case("set-lr-huge", lambda c: tp.set_hyperparams(c.state, learning_rate=1e9), V, r"learning_rate must be at most 10", fixed=True),
    Case("set-lr-nan-entry", lambda c: tp.set_hyperparams(c.state, learning_rate=[0.1, NAN, 0.1, 0.1]), V, r"learning_rate.*non-finite"),
    Case("set-wrong-length", lambda c: tp.set_hyperparams(c.state, learning_rate=[0.1, 0.2, 0.3]), V, r"learning_rate.*shape \(4,\)"),
    Case("set-2d", lambda c: tp.set_hyperparams(c.state, learning_rate=np.full((M, 1), 0.1)), V, r"learning_rate.*shape \(4,\)"),
    Case("set-unknown-name", lambda c: tp.set_hyperparams(c.state, lr=0.1), V, r"set_hyperparams.*unknown.*'lr'"),
    Case("set-string", lambda c: tp.set_hyperparams(c.state, learning_rate="fast"), T, r"learning_rate.*numbers"),
    Case("set-bool", lambda c: tp.set_hyperparams(c.state, dropout_rate=False), T, r"dropout_rate must be numbers, not bools", fixed=True),
    Case("set-dropout-negative", lambda c: tp.set_hyperparams(c.state, dropout_rate=[0.1, -0.1, 0.2, 0.3]), V, r"dropout_rate must lie in \[0, 1\)"),
    Case("get-unknown-name", lambda c: tp.get_hyperparams(c.state, ["lr"]), V, r"get_hyperparams.*unknown.*'lr'"),
    Case("get-names-int", lambda c: tp.get_hyperparams(c.state, 5), T, r"names must be a hyperparameter name or a sequence", fixed=True),
    # --- ladders ----------------------------------------------------------
    Case("ladder-empty", lambda c: tp.make_ladder(), V, r"at least one hyperparameter"),
    Case("ladder-one-rung", lambda c: tp.make_ladder(learning_rate=[0.1]), V, r"at least 2 rungs"),
    Case("ladder-scalar-only", lambda c: tp.make_ladder(learning_rate=0.1), V, r"at least 2 rungs"),
    Case("ladder-lr-negative", lambda c: tp.make_ladder(learning_rate=[-0.1, 0.1]), V, r"learning_rate.*\(0, "),
    Case("ladder-dropout-1", lambda c: tp.make_ladder(dropout_rate=[0.1, 1.0]), V, r"dropout_rate.*\[0, 1\)"),
    Case("ladder-nan", lambda c: tp.make_ladder(learning_rate=[0.1, NAN]), V, r"learning_rate.*non-finite"),
    Case("ladder-duplicate-temperatures", lambda c: tp.make_ladder(weight_decay=[0.0, 1e-3], temperatures=[1.0, 1.0]), V, r"duplicate temperatures"),
    Case("ladder-nothing-varies", lambda c: tp.make_ladder(learning_rate=[0.1, 0.1]), V, r"temperatures is required when no hyperparameter varies"),
    Case("ladder-mismatched-lengths", lambda c: tp.make_ladder(learning_rate=[0.1, 0.2], dropout_rate=[0.1, 0.2, 0.3]), V, r"mismatched ladder lengths"),
    Case("ladder-2d", lambda c: tp.make_ladder(learning_rate=[[0.1, 0.2]]), V, r"learning_rate must be a scalar or 1-D"),
    Case("ladder-no-default-temperature", lambda c: tp.make_ladder(weight_decay=[0.0, 1e-3]), V, r"no default temperature.*temperatures="),
    Case("ladder-temperatures-negative", lambda c: tp.make_ladder(weight_decay=[0.0, 1e-3], temperatures=[1.0, -1.0]), V, r"temperatures must be finite and > 0"),
    Case("ladder-temperatures-length", lambda c: tp.make_ladder(learning_rate=[0.1, 0.2], temperatures=[1.0, 2.0, 3.0]), V, r"mismatched ladder lengths"),
    Case("ladder-strings", lambda c: tp.make_ladder(learning_rate=["a", "b"]), T, r"learning_rate.*numbers", fixed=True),
    Case("linear-num-rungs-1", lambda c: tp.linear_ladder("learning_rate", 0.1, 0.2, 1), V, r"num_rungs must be an int >= 2"),
    Case("linear-num-rungs-float", lambda c: tp.linear_ladder("learning_rate", 0.1, 0.2, 2.5), V, r"num_rungs must be an int >= 2"),
    Case("linear-name-not-str", lambda c: tp.linear_ladder(5, 0.1, 0.2, 4), T, r"name must be a hyperparameter name"),
    Case("linear-dropout-to-1", lambda c: tp.linear_ladder("dropout_rate", 0.0, 1.0, 4), V, r"dropout_rate.*\[0, 1\)"),
    Case("geometric-low-zero", lambda c: tp.geometric_ladder("learning_rate", 0.0, 0.1, 4), V, r"low, high > 0"),
    Case("geometric-high-negative", lambda c: tp.geometric_ladder("learning_rate", 0.1, -1.0, 4), V, r"low, high > 0"),
    Case("geometric-lr-huge", lambda c: tp.geometric_ladder("learning_rate", 0.01, 1e3, 4), V, r"learning_rate in the ladder must be at most 10", fixed=True),
    Case("ladder-temperatures-2d", lambda c: tp.make_ladder(weight_decay=[0.0, 1e-3], temperatures=[[1.0, 2.0]]), V, r"temperatures must be 1-D"),
    # --- hand-built Ladder (through exchange_move / pt_train) --------------
    Case("hand-ladder-decreasing", lambda c: tp.exchange_move(hand_ladder([0.4, 0.3, 0.2, 0.1])), V, r"temperatures must increase strictly"),
    Case("hand-ladder-nan", lambda c: tp.exchange_move(hand_ladder([0.1, NAN, 0.3, 0.4])), V, r"temperatures must be finite"),
    Case("hand-ladder-negative", lambda c: tp.exchange_move(hand_ladder([-0.1, 0.2, 0.3, 0.4])), V, r"temperatures must be finite and > 0"),
    Case("hand-ladder-fewer-values", lambda c: tp.exchange_move(hand_ladder([0.1, 0.2, 0.3, 0.4], lr=[0.1, 0.2])), V, r"values\['learning_rate'\] must have one value per rung"),
    Case("hand-ladder-lr-negative-values", lambda c: tp.exchange_move(hand_ladder([0.1, 0.2, 0.3, 0.4], lr=[-0.1, 0.2, 0.3, 0.4])), V, r"learning_rate in the ladder"),
    Case("hand-ladder-one-rung", lambda c: tp.exchange_move(hand_ladder([0.1])), V, r"temperatures must be 1-D.*>= 2"),
    Case("hand-ladder-pt-decreasing", lambda c: pt(c, ladder=hand_ladder([0.4, 0.3, 0.2, 0.1])), V, r"temperatures must increase strictly"),
    Case("hand-ladder-pt-fewer-values", lambda c: pt(c, ladder=hand_ladder([0.1, 0.2, 0.3, 0.4], lr=[0.1, 0.2, 0.3])), V, r"one value per rung"),
    Case("hand-ladder-lists-get-to-c", lambda c: pt(c, ladder=tp.Ladder({"learning_rate": [0.1, 0.2, 0.3, 0.4]}, [0.1, 0.2, 0.3, 0.4]), c=0.0), V, r"c must be finite and > 0", fixed=True),
    # --- exchange ---------------------------------------------------------
    Case("exchange-c-0", lambda c: xchg(c, c=0.0), V, r"c must be finite and > 0"),
    Case("exchange-c-negative", lambda c: xchg(c, c=-1.0), V, r"c must be finite and > 0"),
    Case("exchange-c-nan", lambda c: xchg(c, c=NAN), V, r"c must be finite and > 0"),
    Case("exchange-c-inf", lambda c: xchg(c, c=INF), V, r"c must be finite and > 0"),
    Case("exchange-c-array", lambda c: xchg(c, c=np.array([1.0, 2.0])), V, r"c must be one number"),
    Case("exchange-c-string", lambda c: xchg(c, c="auto"), T, r"c must be a number", fixed=True),
    Case("exchange-betas-increasing", lambda c: xchg(c, betas=c.betas[::-1]), V, r"betas must be finite and strictly decreasing"),
    Case("exchange-betas-nan", lambda c: xchg(c, betas=jnp.array([4.0, NAN, 2.0, 1.0])), V, r"betas must be finite"),
    Case("exchange-two-betas", lambda c: xchg(c, betas=c.betas[:2]), V, r"betas must have one entry per replica"),
    Case("exchange-three-losses", lambda c: xchg(c, losses=c.losses[:3]), V, r"losses must have one entry per replica"),
    Case("exchange-five-losses", lambda c: xchg(c, losses=jnp.ones(5)), V, r"losses must have one entry per replica"),
    Case("exchange-rungs-not-permutation", lambda c: xchg(c, rungs=jnp.array([0, 0, 1, 2])), V, r"rungs must be a permutation"),
    Case("exchange-rungs-float", lambda c: xchg(c, rungs=jnp.array([0.0, 1.0, 2.0, 3.0])), T, r"rungs must be integers", fixed=True),
    Case("exchange-rungs-2d", lambda c: xchg(c, rungs=c.rungs[None]), V, r"rungs must be a permutation"),
    Case("exchange-scheme-unknown", lambda c: xchg(c, scheme="even-odd"), V, r"scheme must be one of"),
    Case("exchange-parity-2", lambda c: xchg(c, scheme="even_odd", parity=2), V, r"parity must be 0 or 1", fixed=True),
    Case("exchange-parity-float", lambda c: xchg(c, scheme="even_odd", parity=0.5), V, r"parity must be 0 or 1", fixed=True),
    Case("exchange-key-int", lambda c: xchg(c, key=3), T, r"key must be a JAX PRNG key", fixed=True),
    # --- exchange_move / multi_exchange_move -------------------------------
    Case("move-ladder-not-ladder", lambda c: tp.exchange_move([0.1, 0.2]), T, r"ladder must be a tempering.Ladder"),
    Case("move-c-0", lambda c: tp.exchange_move(c.ladder, c=0.0), V, r"c must be finite and > 0"),
    Case("move-c-word", lambda c: tp.exchange_move(c.ladder, c="automatic"), V, r"c must be a number > 0 or 'auto'"),
    Case("move-c-bool", lambda c: tp.exchange_move(c.ladder, c=True), T, r"c must be one number or 'auto'"),
    Case("move-enabled-string", lambda c: tp.exchange_move(c.ladder, enabled="False"), T, r"enabled must be a bool"),
    Case("move-target-0", lambda c: tp.exchange_move(c.ladder, c="auto", target_acceptance=0.0), V, r"target_acceptance must be a number in \(0, 1\)"),
    Case("move-target-1.5", lambda c: tp.exchange_move(c.ladder, c="auto", target_acceptance=1.5), V, r"target_acceptance must be a number in \(0, 1\)"),
    Case("move-adapt-rounds-negative", lambda c: tp.exchange_move(c.ladder, c="auto", adapt_rounds=-1), V, r"adapt_rounds must be >= 1"),
    Case("move-adapt-rounds-float", lambda c: tp.exchange_move(c.ladder, c="auto", adapt_rounds=2.5), T, r"adapt_rounds must be an int"),
    Case("move-adapt-ladder-string", lambda c: tp.exchange_move(c.ladder, adapt_ladder="yes"), T, r"adapt_ladder must be True or False"),
    Case("multi-single-ladder", lambda c: tp.multi_exchange_move(c.ladder), T, r"ladders must be a sequence"),
    Case("multi-empty", lambda c: tp.multi_exchange_move([]), V, r"ladders must hold at least one"),
    Case("multi-not-ladder", lambda c: tp.multi_exchange_move([c.ladder, "dropout"]), T, r"ladders\[1\] must be a tempering.Ladder"),
    Case("multi-rung-counts", lambda c: tp.multi_exchange_move([c.ladder, tp.linear_ladder("dropout_rate", 0.0, 0.3, 3)]), V, r"same number of rungs"),
    Case("multi-shared-names", lambda c: tp.multi_exchange_move([c.ladder, tp.linear_ladder("dropout_rate", 0.0, 0.3, M, learning_rate=0.1)]), V, r"disjoint hyperparameter names.*'learning_rate'"),
    Case("multi-c-length", lambda c: tp.multi_exchange_move([c.ladder, tp.linear_ladder("dropout_rate", 0.0, 0.3, M)], c=[1.0, 2.0, 3.0]), V, r"one C per ladder"),
    Case("multi-c-negative", lambda c: tp.multi_exchange_move([c.ladder, c.dropout], c=[1.0, -2.0]), V, r"c must be finite and > 0"),
    Case("multi-enabled-string", lambda c: tp.multi_exchange_move([c.ladder, c.dropout], enabled="no"), T, r"enabled must be a bool"),
    Case("multi-hand-ladder-decreasing", lambda c: tp.multi_exchange_move([hand_ladder([0.4, 0.3, 0.2, 0.1]), c.dropout]), V, r"temperatures must increase strictly"),
    # --- pt_train ---------------------------------------------------------
    Case("pt-exchanges-string", lambda c: pt(c, exchanges="False"), T, r"exchanges must be True or False"),
    Case("pt-nan-train-inputs", lambda c: pt(c, train_data=(nan_at(c.x, (3, 2)), c.y)), V, r"train_data inputs hold 1 non-finite"),
    Case("pt-nan-validation-inputs", lambda c: pt(c, validation_data=(nan_at(c.xv, (0, 0)), c.yv)), V, r"validation_data inputs hold 1 non-finite"),
    Case("pt-inf-test-inputs", lambda c: pt(c, test_data=(np.full_like(c.xv, INF), c.yv)), V, r"test_data inputs hold .* non-finite"),
    Case("pt-validation-shape-after-burn-in", lambda c: pt(c, burn_in=5, validation_data=(c.xv[:, :5], c.yv)), V, r"validation_data: the model cannot take inputs of shape \(5,\)"),
    Case("pt-train-shape", lambda c: pt(c, train_data=(c.x[:, :, None], c.y)), V, r"train_data: the model cannot take inputs"),
    Case("pt-labels-float", lambda c: pt(c, train_data=(c.x, c.y.astype(np.float32))), T, r"train_data labels must be integers"),
    Case("pt-labels-out-of-range", lambda c: pt(c, validation_data=(c.xv, c.yv + CLASSES)), V, r"validation_data labels must lie in \[0, 3\)"),
    Case("pt-labels-2d", lambda c: pt(c, train_data=(c.x, c.y[:, None])), V, r"train_data: loss_fn or metrics_fn cannot take"),
    Case("pt-lengths-mismatch", lambda c: pt(c, train_data=(c.x, c.y[:-1])), V, r"train_data has 32 inputs but 31 targets"),
    Case("pt-train-data-string", lambda c: pt(c, train_data="mnist"), T, r"train_data must be"),
    Case("pt-validation-generator", lambda c: pt(c, validation_data=iter([(c.xv, c.yv)])), T, r"validation_data is a one-pass iterator"),
    Case("pt-no-validation", lambda c: pt(c, validation_data=None), T, r"pt_train needs validation_data"),
    Case("pt-c-0", lambda c: pt(c, c=0.0), V, r"c must be finite and > 0"),
    Case("pt-c-minus-1", lambda c: pt(c, c=-1.0), V, r"c must be finite and > 0"),
    Case("pt-c-array", lambda c: pt(c, c=np.array([1.0, 2.0])), T, r"c must be one number"),
    Case("pt-scheme-unknown", lambda c: pt(c, scheme="random"), V, r"scheme must be one of"),
    Case("pt-target-acceptance", lambda c: pt(c, c="auto", target_acceptance=1.0), V, r"target_acceptance must be a number in \(0, 1\)"),
    Case("pt-adapt-rounds-negative", lambda c: pt(c, c="auto", adapt_rounds=-3), V, r"adapt_rounds must be >= 1"),
    Case("pt-num-steps-0", lambda c: pt(c, num_steps=0), V, r"num_steps must be >= 1"),
    Case("pt-num-steps-negative", lambda c: pt(c, num_steps=-1), V, r"num_steps must be >= 1"),
    Case("pt-num-steps-float", lambda c: pt(c, num_steps=20.0), T, r"num_steps must be an int"),
    Case("pt-interval-0", lambda c: pt(c, exchange_interval=0), V, r"exchange_interval must be >= 1"),
    Case("pt-interval-float", lambda c: pt(c, exchange_interval=2.5), T, r"exchange_interval must be an int"),
    Case("pt-burn-in-negative", lambda c: pt(c, burn_in=-1), V, r"burn_in must be >= 0"),
    Case("pt-batch-size-0", lambda c: pt(c, batch_size=0), V, r"batch_size must be >= 1"),
    Case("pt-batch-size-negative", lambda c: pt(c, batch_size=-8), V, r"batch_size must be >= 1"),
    Case("pt-batch-size-too-big", lambda c: pt(c, batch_size=64), V, r"fewer than batch_size=64"),
    Case("pt-eval-batch-size-0", lambda c: pt(c, eval_batch_size=0), V, r"eval_batch_size must be >= 1"),
    Case("pt-burn-in-dropout-1", lambda c: pt(c, burn_in=5, burn_in_hyperparams={"dropout_rate": 1.0}), V, r"dropout_rate.*\[0, 1\)"),
    Case("pt-burn-in-lr-negative", lambda c: pt(c, burn_in=5, burn_in_hyperparams={"learning_rate": -0.1}), V, r"learning_rate.*\(0, "),
    Case("pt-burn-in-lr-huge", lambda c: pt(c, burn_in=5, burn_in_hyperparams={"learning_rate": 1e4}), V, r"learning_rate must be at most 10", fixed=True),
    Case("pt-burn-in-unknown", lambda c: pt(c, burn_in=5, burn_in_hyperparams={"lr": 0.1}), V, r"unknown hyperparameter.*'lr'"),
    Case("pt-key-int", lambda c: pt(c, key=0), T, r"key must be a JAX PRNG key"),
    Case("pt-key-float", lambda c: pt(c, key=0.5), T, r"key must be a JAX PRNG key"),
    Case("pt-state-not-state", lambda c: pt(c, state={"params": None}), T, r"state must be a ReplicaState"),
    Case("pt-ladder-rungs-mismatch", lambda c: pt(c, ladder=tp.geometric_ladder("learning_rate", 0.01, 0.1, 3)), V, r"3 rungs but the state holds 4"),
    Case("pt-weight-decay-ladder-not-injected", lambda c: pt(c, ladder=tp.linear_ladder("weight_decay", 0.0, 0.1, M, temperatures=[1.0, 2.0, 3.0, 4.0])), V, r"ladder: unknown hyperparameter.*weight_decay.*inject_hyperparams"),
    Case("pt-dropout-ladder-plain-model", lambda c: pt(c, state=c.plain, ladder=c.dropout), V, r"ladder: unknown hyperparameter.*dropout_rate.*model_inputs"),
    Case("pt-rungs-not-permutation", lambda c: pt(c, state=c.state.replace(rungs=jnp.array([0, 0, 1, 2], jnp.int32))), V, r"state.rungs must be a permutation"),
    Case("pt-num-steps-bool", lambda c: pt(c, num_steps=True), T, r"num_steps must be an int"),
    Case("pt-interval-bool", lambda c: pt(c, exchange_interval=True), T, r"exchange_interval must be an int"),
    Case("pt-labels-negative", lambda c: pt(c, train_data=(c.x, nan_at(c.y, (0,), -1))), V, r"train_data labels must lie in \[0, 3\)"),
    Case("pt-test-labels-out-of-range", lambda c: pt(c, test_data=(c.xv, c.yv * 5)), V, r"test_data labels must lie in \[0, 3\)"),
    Case("pt-test-shape", lambda c: pt(c, test_data=(c.xv[:, :3], c.yv)), V, r"test_data: the model cannot take inputs"),
    Case("pt-nan-validation-targets", lambda c: pt(c, validation_data=(c.xv, c.yv.astype(np.float32) * NAN)), V, r"validation_data targets hold 16 non-finite"),
    Case("pt-adapt-ladder-string", lambda c: pt(c, adapt_ladder="yes"), T, r"adapt_ladder must be True or False"),
    Case("pt-ladder-dict", lambda c: pt(c, ladder={"learning_rate": [0.01, 0.1]}), T, r"ladder must be a tempering.Ladder"),
    Case("pt-loop-unknown", lambda c: pt(c, loop="gpu"), V, r"loop must be one of"),
    Case("pt-vectorize-unknown", lambda c: pt(c, vectorize="fast"), V, r"unknown vectorize policy 'fast'", fixed=True),
    Case("pt-shared-batch-string", lambda c: pt(c, shared_batch="no"), T, r"shared_batch must be True or False"),
    # --- pbt --------------------------------------------------------------
    Case("pbt-prior-empty", lambda c: tp.pbt_config({}), V, r"prior is empty"),
    Case("pbt-prior-reversed", lambda c: tp.pbt_config({"learning_rate": (0.1, 0.01)}), V, r"low=0.1 >= high=0.01"),
    Case("pbt-prior-lr-negative", lambda c: tp.pbt_config({"learning_rate": (-0.1, 0.1)}), V, r"learning_rate in the prior"),
    Case("pbt-prior-dropout-1", lambda c: tp.pbt_config({"dropout_rate": (0.0, 1.0)}), V, r"dropout_rate in the prior.*\[0, 1\)"),
    Case("pbt-prior-log-zero", lambda c: tp.pbt_config({"weight_decay": (0.0, 0.1, True)}), V, r"log-uniform prior\['weight_decay'\] needs low > 0"),
    Case("pbt-prior-not-tuple", lambda c: tp.pbt_config({"learning_rate": 0.1}), T, r"prior\['learning_rate'\] must be a Prior"),
    Case("pbt-prior-not-mapping", lambda c: tp.pbt_config(["learning_rate"]), T, r"prior must be a mapping", fixed=True),
    Case("pbt-bounds-without-prior", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, bounds={"dropout_rate": (0.0, 0.5)}), V, r"bounds given for \['dropout_rate'\]"),
    Case("pbt-bounds-reversed", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, bounds={"learning_rate": (0.1, 0.01)}), V, r"bounds\['learning_rate'\]"),
    Case("pbt-selection-unknown", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, selection="best"), V, r"selection must be one of"),
    Case("pbt-fraction-0", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, fraction=0.0), V, r"fraction q must lie in \(0, 0.5\]"),
    Case("pbt-fraction-0.6", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, fraction=0.6), V, r"fraction q must lie in \(0, 0.5\]"),
    Case("pbt-resample-1.5", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, resample_probability=1.5), V, r"resample_probability must lie in \[0, 1\]"),
    Case("pbt-factors-empty", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, perturb_factors=()), V, r"perturb_factors must be a non-empty"),
    Case("pbt-factors-negative", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, perturb_factors=(-0.8, 1.2)), V, r"perturb_factors must be a non-empty"),
    Case("pbt-factors-scalar", lambda c: tp.pbt_config({"learning_rate": (0.01, 0.1)}, perturb_factors=0.8), T, r"perturb_factors must be a sequence", fixed=True),
    Case("pbt-prior-lr-huge", lambda c: tp.pbt_config({"learning_rate": (0.01, 100.0)}), V, r"learning_rate in the prior must be at most 10", fixed=True),
    Case("pbt-fraction-string", lambda c: pbt_cfg(fraction="a fifth"), T, r"fraction must be a number", fixed=True),
    Case("pbt-bounds-not-mapping", lambda c: pbt_cfg(bounds=[(0.01, 0.1)]), T, r"bounds must be a mapping", fixed=True),
    Case("pbt-step-key-int", lambda c: pbt_step(7, c.state, c.losses, c.config), T, r"key must be a JAX PRNG key", fixed=True),
    Case("pbt-train-config-dict", lambda c: pbt(c, config={"learning_rate": (0.01, 0.1)}), T, r"config must be a PBTConfig"),
    Case("pbt-train-config-unknown-name", lambda c: pbt(c, config=tp.pbt_config({"weight_decay": (0.0, 0.1)})), V, r"config.*unknown.*weight_decay"),
    Case("pbt-train-ready-interval-0", lambda c: pbt(c, ready_interval=0), V, r"ready_interval must be >= 1"),
    Case("pbt-train-no-validation", lambda c: pbt(c, validation_data=None), T, r"pbt_train needs validation_data"),
    Case("pbt-train-exploit-at-end-str", lambda c: pbt(c, exploit_at_end="yes"), T, r"exploit_at_end must be True or False"),
    Case("pbt-step-scores-length", lambda c: pbt_step(c.key, c.state, jnp.ones(3), c.config), V, r"scores must have one entry per replica", fixed=True),
    Case("pbt-step-config-dict", lambda c: pbt_step(c.key, c.state, jnp.ones(M), {"learning_rate": (0.01, 0.1)}), T, r"config must be a PBTConfig", fixed=True),
    # --- train ------------------------------------------------------------
    Case("train-move-not-callable", lambda c: run(c, move=5), T, r"move must have init\(state\)"),
    Case("train-interval-empty", lambda c: run(c, interval=[]), V, r"interval must be increasing round ends"),
    Case("train-interval-decreasing", lambda c: run(c, interval=[10, 5]), V, r"interval must be increasing round ends"),
    Case("train-ends-with-burn-in", lambda c: run(c, interval=[5, 10, 20], burn_in=5), V, r"burn_in must be 0 with explicit round ends"),
    Case("train-past-last-end", lambda c: run(c, interval=[5, 10]), V, r"runs past the last round end 10"),
    Case("train-callback-not-callable", lambda c: run(c, callback="print"), T, r"callback must be callable", fixed=True),
    Case("train-score-fn-not-callable", lambda c: run(c, score_fn="loss"), T, r"score_fn must be callable", fixed=True),
    Case("train-metrics-fn-not-callable", lambda c: run(c, metrics_fn="accuracy"), T, r"metrics_fn must be callable"),
    Case("train-augment-not-callable", lambda c: run(c, augment="flip"), T, r"augment must be callable", fixed=True),
    # --- diffusion_test ---------------------------------------------------
    Case("diffusion-values-length", lambda c: diff(c, values=[0.0, 0.1]), V, r"values must have one entry per replica \(4\)"),
    Case("diffusion-values-dropout-1", lambda c: diff(c, values=[0.0, 0.1, 0.2, 1.0]), V, r"dropout_rate.*\[0, 1\)"),
    Case("diffusion-unknown-hyperparameter", lambda c: diff(c, hyperparameter="weight_decay"), V, r"unknown hyperparameter.*weight_decay"),
    Case("diffusion-hyperparameter-not-str", lambda c: diff(c, hyperparameter=5), T, r"hyperparameter must be", fixed=True),
    Case("diffusion-t0-negative", lambda c: diff(c, t0=-1), V, r"t0 must be an int >= 0"),
    Case("diffusion-num-steps-0", lambda c: diff(c, num_steps=0), V, r"num_steps"),
    Case("diffusion-num-steps-float", lambda c: diff(c, num_steps=2.5), T, r"num_steps must be an int", fixed=True),
    Case("diffusion-num-records-0", lambda c: diff(c, num_records=0), V, r"num_records"),
    Case("diffusion-num-records-float", lambda c: diff(c, num_records=2.5), T, r"num_records must be an int", fixed=True),
    Case("diffusion-spacing-unknown", lambda c: diff(c, spacing="cubic"), V, r"spacing must be 'log' or 'linear'"),
    Case("diffusion-values-nan", lambda c: diff(c, values=[0.0, NAN, 0.2, 0.3]), V, r"dropout_rate.*non-finite"),
    Case("diffusion-values-strings", lambda c: diff(c, values=["a", "b", "c", "d"]), T, r"values must be numbers", fixed=True),
    Case("diffusion-t0-float", lambda c: diff(c, t0=1.5), V, r"t0 must be an int >= 0"),
    # --- evaluate / train_step --------------------------------------------
    Case("evaluate-batch-size-0", lambda c: tp.evaluate(c.state, c.xv, c.yv, batch_size=0), V, r"batch_size >= 1"),
    Case("evaluate-metrics-fn-not-callable", lambda c: tp.evaluate(c.state, c.xv, c.yv, metrics_fn="accuracy"), T, r"loss_fn or metrics_fn cannot take", fixed=True),
    Case("evaluate-batch-size-float", lambda c: tp.evaluate(c.state, c.xv, c.yv, batch_size=2.5), T, r"batch_size must be an int", fixed=True),
    Case("evaluate-lengths-mismatch", lambda c: tp.evaluate(c.state, c.xv, c.yv[:-2]), V, r"inputs.*targets", fixed=True),
    Case("evaluate-inputs-shape", lambda c: tp.evaluate(c.state, c.xv[:, :5], c.yv), V, r"inputs.*shape", fixed=True),
    Case("evaluate-labels-float", lambda c: tp.evaluate(c.state, c.xv, c.yv.astype(np.float32)), T, r"targets: loss_fn or metrics_fn cannot take targets .* float32", fixed=True),
    Case("step-inputs-shape", lambda c: tp.train_step(c.state, c.key, c.x[:, :5], c.y), V, r"inputs.*shape", fixed=True),
    Case("step-lengths-mismatch", lambda c: tp.train_step(c.state, c.key, c.x, c.y[:-1]), V, r"inputs.*targets", fixed=True),
    Case("step-per-replica-axis", lambda c: tp.train_step(c.state, c.key, c.x[:6].reshape(3, 2, FEATURES), c.y[:6].reshape(3, 2), per_replica_batch=True), V, r"per_replica_batch", fixed=True),
    Case("step-key-int", lambda c: tp.train_step(c.state, 0, c.x, c.y), T, r"key must be a JAX PRNG key", fixed=True),
    Case("step-scalar-targets", lambda c: tp.train_step(c.state, c.key, c.x, c.y[0]), V, r"targets must have a batch axis", fixed=True),
    Case("step-vectorize-unknown", lambda c: tp.train_step(c.state, c.key, c.x, c.y, vectorize="fast"), V, r"vectorize"),
    # --- data -------------------------------------------------------------
    Case("data-split-fraction-0", lambda c: tdata.split_validation(c.x, c.y, 0.0, 0), V, r"validation_fraction must be in \(0, 1\)"),
    Case("data-split-fraction-1", lambda c: tdata.split_validation(c.x, c.y, 1.0, 0), V, r"validation_fraction must be in \(0, 1\)"),
    Case("data-split-lengths", lambda c: tdata.split_validation(c.x, c.y[:-4], 0.1, 0), V, r"inputs.*labels", fixed=True),
    Case("data-unknown-dataset", lambda c: tdata.load_dataset("imagenet"), V, r"unknown dataset 'imagenet'"),
    Case("data-unknown-source", lambda c: tdata.load_dataset("mnist", source="web"), V, r"unknown source 'web'"),
    Case("data-raw-without-dir", lambda c: tdata.load_dataset("mnist", source="raw"), V, r"source='raw' needs data_dir"),
    Case("data-fraction-before-loading", lambda c: tdata.load_dataset("mnist", source="raw", data_dir="/nonexistent", validation_fraction=1.5), V, r"validation_fraction must be in \(0, 1\)", fixed=True),
    Case("data-mnist1d-fraction", lambda c: tdata.load_mnist1d(validation_fraction=0.0), V, r"validation_fraction must be in \(0, 1\)"),
    Case("data-augment-not-nhwc", lambda c: tdata.augment_crop_flip(c.key, jnp.zeros((2, 8))), V, r"images must be NHWC", fixed=True),
    Case("data-augment-padding-negative", lambda c: tdata.augment_crop_flip(c.key, jnp.zeros((2, 4, 4, 1)), padding=-1), V, r"padding must be an int >= 0", fixed=True),
    Case("data-fraction-string", lambda c: tdata.load_dataset("mnist", source="raw", data_dir="/nonexistent", validation_fraction="0.1"), T, r"validation_fraction must be a number", fixed=True),
    Case("data-mnist1d-num-samples", lambda c: tdata.load_mnist1d(num_samples=0), V, r"num_samples must be >= 10", fixed=True),
]
# fmt: on

# Calls that would run, but to a result the caller did not ask for: a warning
# (an error under warnings-as-errors, raised before anything compiles).
WARNING_CASES = [
    Case("pt-exchange-interval-longer-than-run", lambda c: pt(c, exchange_interval=50), UserWarning, r"num_steps=20 ends before the first exchange.*exchange_interval=50"),
    Case("pt-burn-in-longer-than-run", lambda c: pt(c, burn_in=30), UserWarning, r"num_steps=20 ends before the first exchange \(burn_in=30"),
]  # fmt: skip


def _params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[
                pytest.mark.xfail(strict=True, run=not case.trains, reason=case.pending)
            ]
            if case.pending
            else [],
        )
        for case in cases
    ]


# --- nothing compiles before the error --------------------------------------------


def _engine_programs() -> frozenset[str]:
    """Names of every function the package defines (what its programs are named)."""
    names = set()
    for info in pkgutil.walk_packages(tp.__path__, "tempering."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if callable(obj) and getattr(obj, "__module__", "").startswith("tempering"):
                names.update({name, getattr(obj, "__name__", name)})
    return frozenset(names)


ENGINE_PROGRAMS = _engine_programs()
_COMPILING = re.compile(r"Compiling (?:jit\()?([^\s()]+)")


class _Compiles(logging.Handler):
    """Collects the names of the programs XLA compiles (``jax.log_compiles``)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _COMPILING.match(record.getMessage())
        if match:
            self.names.append(match.group(1))


@pytest.fixture
def compiled():
    """Names of the programs compiled while the test runs."""
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield handler.names
    finally:
        logger.removeHandler(handler)


def test_compile_probe_sees_a_compile(compiled):
    jax.jit(tp.state.cross_entropy)(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32))
    assert "cross_entropy" in compiled and "cross_entropy" in ENGINE_PROGRAMS


@pytest.mark.parametrize("case", _params(CASES))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    with pytest.raises(case.error, match=case.match):
        case.call(ctx)
    engine = sorted(set(compiled) & ENGINE_PROGRAMS)
    assert not engine, f"compiled {engine} before raising"


@pytest.mark.parametrize("case", _params(WARNING_CASES))
def test_suspicious_input_warns_before_anything_compiles(ctx, compiled, case):
    with warnings.catch_warnings():
        warnings.simplefilter("error", case.error)
        with pytest.raises(case.error, match=case.match):
            case.call(ctx)
    assert not set(compiled) & ENGINE_PROGRAMS


def test_table_ids_are_unique_and_counted():
    ids = [case.id for case in CASES + WARNING_CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 60
    assert all(case.error in (ValueError, TypeError) for case in CASES)
    fixed = sum(case.fixed for case in CASES)
    pending = sum(case.pending is not None for case in CASES)
    doc = " ".join(__doc__.split())
    assert f"{len(CASES)} bad inputs" in doc
    assert f"{fixed} of them needed a library fix" in doc
    assert f"{pending} still wait" in doc or f"{pending} still waits" in doc


# --- what the fixes let through -----------------------------------------------------


def test_a_hand_built_ladder_of_lists_is_checked_then_used(ctx):
    lists = tp.Ladder(
        {"learning_rate": [0.01, 0.02, 0.05, 0.1]}, [0.01, 0.02, 0.05, 0.1]
    )
    move = tp.exchange_move(lists, c=2.0)
    assert move.ladder.temperatures.dtype == jnp.float32
    np.testing.assert_allclose(move.ladder.betas, 1 / np.array([0.01, 0.02, 0.05, 0.1]))
    tp.ladder.check_ladder(ctx.state, lists)
