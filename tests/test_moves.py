"""The moves between rounds: exchange_move."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Case, T, V, bad_input_params, check_raises_before_compiling

import tempering as tp
from tempering.ensemble import cold_chain_ensemble, replicas_probabilities
from tempering.zoo import models

# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- exchange_move / multi_exchange_move ----------------------------------
    Case("move-ladder-not-ladder", lambda c: tp.exchange_move([0.1, 0.2]), T, r"ladder must be a tempering.Ladder"),
    Case("move-c-0", lambda c: tp.exchange_move(c.ladder, c=0.0), V, r"c must be finite and > 0"),
    Case("move-c-word", lambda c: tp.exchange_move(c.ladder, c="automatic"), V, r"c must be a number > 0 or 'auto'"),
    Case("move-c-bool", lambda c: tp.exchange_move(c.ladder, c=True), T, r"c must be one number or 'auto'"),
    Case("move-c-none", lambda c: tp.exchange_move(c.ladder, c=None), T, r"c must be one number or 'auto', got None", fixed=True),
    Case("move-c-complex", lambda c: tp.exchange_move(c.ladder, c=1 + 0j), T, r"c must be one number or 'auto'", fixed=True),
    Case("move-c-complex64", lambda c: tp.exchange_move(c.ladder, c=np.complex64(2 + 3j)), T, r"c must be one number or 'auto'", fixed=True),
    Case("move-c-rounds-to-0", lambda c: tp.exchange_move(c.ladder, c=1e-50), V, r"c must be .*finite in float32", fixed=True),
    Case("move-c-overflows-float32", lambda c: tp.exchange_move(c.ladder, c=1e39), V, r"c must be .*finite in float32", fixed=True),
    Case("move-enabled-string", lambda c: tp.exchange_move(c.ladder, enabled="False"), T, r"enabled must be a bool"),
    Case("move-target-0", lambda c: tp.exchange_move(c.ladder, c="auto", target_acceptance=0.0), V, r"target_acceptance must be a number in \(0, 1\)"),
    Case("move-target-1.5", lambda c: tp.exchange_move(c.ladder, c="auto", target_acceptance=1.5), V, r"target_acceptance must be a number in \(0, 1\)"),
    Case("move-adapt-rounds-negative", lambda c: tp.exchange_move(c.ladder, c="auto", adapt_rounds=-1), V, r"adapt_rounds must be >= 1"),
    Case("move-adapt-rounds-float", lambda c: tp.exchange_move(c.ladder, c="auto", adapt_rounds=2.5), T, r"adapt_rounds must be an int"),
    Case("move-adapt-ladder-string", lambda c: tp.exchange_move(c.ladder, adapt_ladder="yes"), T, r"adapt_ladder must be True or False"),
    Case("move-adapt-ladder-grid", lambda c: tp.exchange_move(c.ladder, enabled=False, adapt_ladder=True), V, r"adapt_ladder=True .*enabled=False .*the grid", fixed=True),
    # --- the ensembles ---------------------------------------------------------
    Case("ensemble-inputs-other-features", lambda c: cold_chain_ensemble(tp.exchange_move(c.ladder), c.x[:, :5]).init(c.state), V, r"cold_chain_ensemble's inputs: the model cannot take inputs of shape \(5,\)", fixed=True),
    Case("ensemble-inputs-one-example", lambda c: cold_chain_ensemble(tp.exchange_move(c.ladder), c.x[:, :, None]).init(c.state), V, r"cold_chain_ensemble's inputs: the model cannot take inputs of shape \(8, 1\)", fixed=True),
    Case("ensemble-init-not-a-state", lambda c: cold_chain_ensemble(tp.exchange_move(c.ladder), c.x).init(c.state.params), T, r"cold_chain_ensemble's init takes a ReplicaState", fixed=True),
    Case("population-ensemble-other-features", lambda c: replicas_probabilities(c.state, c.x[:, :5]), V, r"replicas_probabilities' inputs: the model cannot take inputs of shape \(5,\)", fixed=True),
    Case("population-ensemble-not-a-state", lambda c: replicas_probabilities(c.state.params, c.x), T, r"replicas_probabilities takes a ReplicaState", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


@pytest.mark.parametrize("c", [1.0, "auto"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "scores, round_index, match",
    [
        (np.ones((4, 1)), 0, r"scores must hold one validation loss per replica, shape \(4,\)"),
        (np.ones(5), 0, r"scores must hold one validation loss per replica, shape \(4,\)"),
        (np.ones(4), 1.0, r"round_index must be an integer scalar"),
        (np.ones(4), np.array([1]), r"round_index must be an integer scalar"),
    ],
)  # fmt: skip
def test_a_moves_step_names_bad_scores_and_round_index(
    c, jit, scores, round_index, match
):
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
    state = tp.create_replicas(
        jax.random.key(0), models.MLP((4,), 2), tp.sgd(0.1), np.zeros((2, 3), np.float32),
        ladder=ladder,
    )  # fmt: skip
    move = tp.exchange_move(ladder, c=c)
    step = jax.jit(move.step) if jit else move.step
    with pytest.raises(ValueError, match=match):
        step(
            jax.random.key(1), state, move.init(state), jnp.asarray(scores), round_index
        )
