"""Several hyperparameters: the product temperature and one ladder per name."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    REPLICAS,
    Case,
    T,
    V,
    bad_input_params,
    check_raises_before_compiling,
    hand_ladder,
)

import tempering as tp
import tempering.zoo.models
from tempering.adaptation import AdaptationState
from tempering.multi import (
    MultiExchangeInfo,
    MultiExchangeMove,
    MultiExchangeState,
    multi_exchange_move,
)

M = 4
LR = tp.geometric_ladder("learning_rate", 0.01, 0.08, M)  # ratio 2 between rungs
DROPOUT = tp.linear_ladder("dropout_rate", 0.1, 0.4, M)
NAMES = (("learning_rate",), ("dropout_rate",))
SLOPE = 2.0  # score = SLOPE * lr


# -- make_ladder: the product of the default temperatures ---------------------


def test_combined_temperature_is_the_product_sorted() -> None:
    lr = np.array([0.04, 0.01, 0.02])
    q = np.array([0.3, 0.1, 0.2])
    ladder = tp.make_ladder(learning_rate=lr, dropout_rate=q)
    expected = np.sort(lr / (1 - q))
    np.testing.assert_allclose(ladder.temperatures, expected, rtol=1e-6)
    np.testing.assert_allclose(ladder.values["learning_rate"], [0.01, 0.02, 0.04])
    np.testing.assert_allclose(ladder.values["dropout_rate"], [0.1, 0.2, 0.3])
    assert np.all(np.diff(np.asarray(ladder.temperatures)) > 0)
    # The order of the names does not matter.
    swapped = tp.make_ladder(dropout_rate=q, learning_rate=lr)
    np.testing.assert_array_equal(swapped.temperatures, ladder.temperatures)
    # Opposite directions: the product decides the order of the rungs.
    mixed = tp.make_ladder(
        learning_rate=[0.01, 0.02, 0.03], dropout_rate=[0.6, 0.5, 0.1]
    )
    np.testing.assert_allclose(
        mixed.temperatures, [0.01 / 0.4, 0.03 / 0.9, 0.02 / 0.5], rtol=1e-6
    )
    np.testing.assert_allclose(mixed.values["dropout_rate"], [0.6, 0.1, 0.5], rtol=1e-6)
    np.testing.assert_allclose(mixed.values["learning_rate"], [0.01, 0.03, 0.02])


def test_one_varying_name_is_unchanged_bit_for_bit() -> None:
    lr = [0.04, 0.01, 0.02]
    exact = jnp.asarray(np.sort(np.asarray(lr, np.float64)), jnp.float32)
    np.testing.assert_array_equal(tp.make_ladder(learning_rate=lr).temperatures, exact)
    # A constant dropout rate is no factor: T = lr exactly.
    fixed = tp.make_ladder(learning_rate=lr, dropout_rate=0.5, weight_decay=1e-4)
    np.testing.assert_array_equal(fixed.temperatures, exact)
    q = np.array([0.1, 0.47, 0.3])
    exact_q = jnp.asarray(np.sort(1.0 / (1.0 - q)), jnp.float32)
    ladder = tp.make_ladder(dropout_rate=q, learning_rate=0.01)
    np.testing.assert_array_equal(ladder.temperatures, exact_q)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(learning_rate=[0.01, 0.02], weight_decay=[1e-4, 1e-3]),
            r"temperatures is required: \['weight_decay'\]",
        ),
        (
            dict(learning_rate=[0.01, 0.02], dropout_rate=[0.1, 0.2], b1=[0.8, 0.9]),
            r"\['b1'\] vary across rungs",
        ),
        (dict(momentum=[0.1, 0.2]), "no default temperature for 'momentum'"),
        (
            dict(learning_rate=[0.01, 0.01], dropout_rate=0.1),
            "no hyperparameter varies",
        ),
        # 0.01 / 0.5 == 0.02 / 1: the product gives two rungs one temperature.
        (dict(learning_rate=[0.01, 0.02], dropout_rate=[0.5, 0.0]), "duplicate"),
    ],
)
def test_combined_temperature_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        tp.make_ladder(**kwargs)


def test_explicit_temperatures_still_win() -> None:
    # lr alone would order these rungs the other way; the given temperatures win
    ladder = tp.make_ladder(
        learning_rate=[0.02, 0.01], weight_decay=[1e-4, 1e-3], temperatures=[1, 2]
    )
    np.testing.assert_allclose(ladder.temperatures, [1, 2])
    np.testing.assert_allclose(ladder.values["weight_decay"], [1e-4, 1e-3], rtol=1e-6)


# -- the multi-ladder exchange -------------------------------------------------


@pytest.fixture(scope="module")
def state() -> tp.ReplicaState:
    return tp.create_replicas(
        jax.random.key(0), tempering.zoo.models.MLP((4,), 2), tp.sgd(0.1),
        np.zeros((2, 3), np.float32), num_replicas=M,
        hyperparams={"learning_rate": 0.05, "dropout_rate": 0.2},
    )  # fmt: skip


def run_synthetic(state, move, rounds, seed=1):
    """Rounds of the move where a replica's score is ``SLOPE * lr``.

    Returns the final ``(state, move_state)`` and per round (stacked): the
    info, the rungs and hyperparameters before and after the round, and the
    scores.
    """
    state = move.assign(state)
    move_state = move.init(state)
    step = jax.jit(move.step)
    key, rows = jax.random.key(seed), []
    for r in range(rounds):
        key, move_key = jax.random.split(key)
        before = jax.device_get((move_state.ladder_rungs, state.hyperparams))
        scores = SLOPE * state.hyperparams["learning_rate"]
        state, move_state, info = step(
            move_key, state, move_state, scores, jnp.int32(r)
        )
        after = jax.device_get((move_state.rungs, state.hyperparams))
        rows.append((jax.device_get(info), before, after, np.asarray(scores)))
    return (state, move_state), jax.tree.map(lambda *xs: np.stack(xs), *rows)


def binomial_bound(n, p, sigmas=4.5):
    return sigmas * np.sqrt(max(n * p * (1 - p), 1.0))


def test_random_ladder_choice_and_metropolis_statistics(state) -> None:
    rounds, c_lr, c_q = 400, 1.0, 50.0
    move = multi_exchange_move([LR, DROPOUT], c=[c_lr, c_q])
    assert isinstance(move, MultiExchangeMove) and move.num_ladders == 2
    final, (info, before, after, scores) = run_synthetic(state, move, rounds)
    assert isinstance(info, MultiExchangeInfo)
    assert info.rungs.shape == (rounds, 2, M) and info.c.shape == (rounds, 2)
    np.testing.assert_array_equal(info.c, np.broadcast_to([c_lr, c_q], (rounds, 2)))

    # Each ladder is drawn about half the time.
    chosen = info.ladder
    assert chosen.dtype == np.int32 and set(np.unique(chosen)) == {0, 1}
    n_lr = int((chosen == 0).sum())
    assert abs(n_lr - rounds / 2) < binomial_bound(rounds, 0.5)

    before_rungs, before_values = before
    after_rungs, after_values = after
    ladders = (LR, DROPOUT)
    for t in range(rounds):
        k = int(chosen[t])
        # Only the drawn ladder's rungs and hyperparameter may change.
        other = 1 - k
        np.testing.assert_array_equal(info.rungs[t, other], before_rungs[t, other])
        for name in NAMES[other]:
            np.testing.assert_array_equal(after_values[name][t], before_values[name][t])
        assert info.proposed[t].sum() == 1  # random_pair
        # Rung rows stay permutations; move_state.rungs is ladder 0's row.
        for row in info.rungs[t]:
            np.testing.assert_array_equal(np.sort(row), np.arange(M))
        np.testing.assert_array_equal(after_rungs[t], info.rungs[t, 0])
        # Every replica holds the values of its rung on every ladder.
        for j, ladder in enumerate(ladders):
            for name, values in ladder.values.items():
                np.testing.assert_array_equal(
                    after_values[name][t], np.asarray(values)[info.rungs[t, j]]
                )
    np.testing.assert_array_equal(final[1].ladder_rungs, info.rungs[-1])

    # The lr ladder: the cold replica of every pair has the lower score, with a
    # fixed gap: log ratio = -c * SLOPE * (2 - 1)^2 / 2 on a ratio-2 ladder.
    p_lr = np.exp(-c_lr * SLOPE / 2)
    on_lr = chosen == 0
    proposed = info.proposed[on_lr]
    np.testing.assert_allclose(info.acceptance_prob[on_lr][proposed], p_lr, rtol=1e-5)
    accepted = int(info.accepted[on_lr].sum())
    assert abs(accepted - n_lr * p_lr) < binomial_bound(n_lr, p_lr)
    assert accepted > 0

    # The dropout ladder: gaps vary with the replicas' lr; the probability is
    # the Metropolis one of ladder 1's betas and C, and the frequency matches.
    betas = 1.0 - np.asarray(DROPOUT.values["dropout_rate"], np.float64)  # 1 / T
    probs = []
    for t in np.flatnonzero(~on_lr):
        r = int(np.flatnonzero(info.proposed[t])[0])
        at_rung = np.argsort(before_rungs[t, 1])
        gap = scores[t, at_rung[r]] - scores[t, at_rung[r + 1]]
        prob = min(1.0, np.exp(c_q * (betas[r] - betas[r + 1]) * gap))
        assert info.acceptance_prob[t, r] == pytest.approx(prob, rel=1e-4, abs=1e-6)
        probs.append(prob)
    probs = np.asarray(probs)
    assert 0.05 < probs.mean() < 0.95  # a mix of favourable and unfavourable
    accepted = int(info.accepted[~on_lr].sum())
    bound = 4.5 * np.sqrt(max((probs * (1 - probs)).sum(), 1.0))
    assert abs(accepted - probs.sum()) < bound


def test_auto_c_per_ladder_freezes_after_its_own_rounds(state) -> None:
    adapt_rounds, target, rounds = 5, 0.3, 40
    move = multi_exchange_move(
        [LR, DROPOUT], c="auto", adapt_rounds=adapt_rounds, target_acceptance=target
    )
    final, (info, *_) = run_synthetic(state, move, rounds, seed=2)
    subs = [sub.adaptation for sub in final[1].sub_states]
    assert all(isinstance(sub, AdaptationState) for sub in subs)
    for k in range(2):
        own = np.flatnonzero(info.ladder == k)
        assert len(own) > adapt_rounds
        assert int(subs[k].rounds_done) == adapt_rounds
        c = info.c[:, k]
        # C changes only in the ladder's own rounds, and not after its last
        # adaptation round.
        changed = np.flatnonzero(np.diff(np.concatenate([[1.0], c])) != 0)
        assert set(changed) <= set(own[:adapt_rounds])
        assert np.all(c[own[adapt_rounds - 1] :] == c[own[adapt_rounds - 1]])
        assert c[-1] != 1.0 and float(subs[k].c) == c[-1]
    # Loss linear in lr on a geometric lr ladder: one gap, so the frozen C
    # accepts every lr pair with probability exactly the target.
    frozen = info.ladder == 0
    frozen[: np.flatnonzero(frozen)[adapt_rounds - 1] + 1] = False
    proposed = info.proposed[frozen]
    np.testing.assert_allclose(
        info.acceptance_prob[frozen][proposed], target, atol=2e-3
    )
    assert info.c[-1, 0] != info.c[-1, 1]  # each ladder its own C

    mixed = multi_exchange_move([LR, DROPOUT], c=[0.5, "auto"], adapt_rounds=3)
    final, (info, *_) = run_synthetic(state, mixed, 12, seed=3)
    assert final[1].sub_states[0].adaptation is None
    assert isinstance(final[1].sub_states[1].adaptation, AdaptationState)
    np.testing.assert_array_equal(info.c[:, 0], 0.5)
    ladders = mixed.current_ladders(final[1])
    np.testing.assert_array_equal(ladders[1].temperatures, DROPOUT.temperatures)


def test_assign_then_init_reads_the_rungs_off_the_values(state) -> None:
    move = multi_exchange_move([LR, DROPOUT], c=[1.0, "auto"], adapt_rounds=3)
    assigned = move.assign(state)
    np.testing.assert_array_equal(
        assigned.hyperparams["dropout_rate"], DROPOUT.values["dropout_rate"]
    )
    np.testing.assert_array_equal(
        assigned.hyperparams["learning_rate"], LR.values["learning_rate"]
    )
    multi = move.init(assigned)
    assert isinstance(multi, MultiExchangeState)
    np.testing.assert_array_equal(multi.ladder_rungs, np.tile(np.arange(M), (2, 1)))
    assert multi.sub_states[0].adaptation is None
    assert int(multi.sub_states[1].adaptation.rounds_done) == 0
    # After some rounds the rungs on each ladder differ; init reads them back.
    (moved, moved_state), _ = run_synthetic(state, move, 6, seed=4)
    np.testing.assert_array_equal(
        move.init(moved).ladder_rungs, moved_state.ladder_rungs
    )
    # Replicas that hold no rung of a ladder: the error says what to call.
    with pytest.raises(ValueError, match=r"move.assign\(state\)"):
        move.init(state)


def test_train_end_to_end(blobs, tx) -> None:
    (x, _), _ = blobs
    train, val = blobs
    state = tp.create_replicas(
        jax.random.key(0), tempering.zoo.models.MLP((8,), 3), tx, x[:4], num_replicas=M,
        hyperparams={"dropout_rate": 0.1},
    )  # fmt: skip
    move = multi_exchange_move([LR, DROPOUT], c=[0.5, "auto"], adapt_rounds=2)
    state = move.assign(state)
    data = tp.RunData(train, val)
    config = tp.RunConfig(num_steps=40, interval=5, batch_size=32)
    result = tp.train(state, jax.random.key(1), move, data, config)
    history = result.history
    rounds = len(history.round)
    assert rounds >= 6
    info = history.move
    assert isinstance(info, MultiExchangeInfo)
    assert info.ladder.shape == (rounds,)
    assert info.proposed.shape == info.accepted.shape == (rounds, M - 1)
    assert info.acceptance_prob.shape == info.log_ratio.shape == (rounds, M - 1)
    assert info.c.shape == (rounds, 2) and info.rungs.shape == (rounds, 2, M)
    np.testing.assert_array_equal(history.rungs, info.rungs[:, 0])
    for k, ladder in enumerate((LR, DROPOUT)):
        for name, values in ladder.values.items():
            np.testing.assert_array_equal(
                history.hyperparams[name], np.asarray(values)[info.rungs[:, k]]
            )
    assert np.all(np.isfinite(history.validation.loss))
    assert isinstance(result.move_state, MultiExchangeState)
    np.testing.assert_array_equal(result.move_state.ladder_rungs, info.rungs[-1])
    # A second call with the move state continues the run: 40 + 20 steps in
    # two calls are 60 in one.
    more = tp.train(
        result.state, jax.random.key(1), move, data, config.replace(num_steps=20),
        move_state=result.move_state,
    )  # fmt: skip
    whole = tp.train(state, jax.random.key(1), move, data, config.replace(num_steps=60))
    np.testing.assert_array_equal(
        more.history.move.rungs, whole.history.move.rungs[rounds:]
    )
    chex.assert_trees_all_equal(more.state.params, whole.state.params)


def test_bad_inputs_name_the_argument(state) -> None:
    shared_lr = tp.linear_ladder("dropout_rate", 0.1, 0.4, M, learning_rate=0.01)
    with pytest.raises(
        ValueError, match=r"ladders must have disjoint.*'learning_rate'"
    ):
        multi_exchange_move([LR, shared_lr])
    with pytest.raises(ValueError, match=r"ladders must all have the same number"):
        multi_exchange_move([LR, tp.linear_ladder("dropout_rate", 0.1, 0.4, M + 1)])
    with pytest.raises(ValueError, match=r"c must be .* one C per ladder.*3 values"):
        multi_exchange_move([LR, DROPOUT], c=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"c must be"):
        multi_exchange_move([LR, DROPOUT], c=[1.0, -2.0])
    with pytest.raises(ValueError, match=r"ladders must hold at least one"):
        multi_exchange_move([])
    with pytest.raises(TypeError, match=r"ladders must be a sequence"):
        multi_exchange_move(LR)
    with pytest.raises(TypeError, match=r"ladders\[1\]"):
        multi_exchange_move([LR, {"dropout_rate": [0.1, 0.2]}])
    with pytest.raises(ValueError, match="scheme"):
        multi_exchange_move([LR, DROPOUT], scheme="all")
    wd = tp.make_ladder(weight_decay=[0.0, 0.1, 0.2, 0.3], temperatures=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="weight_decay"):
        multi_exchange_move([LR, wd]).init(state)
    five = tp.geometric_ladder("learning_rate", 0.01, 0.1, 5)
    five_q = tp.linear_ladder("dropout_rate", 0.1, 0.5, 5)
    with pytest.raises(ValueError, match="5 rungs but the state holds 4"):
        multi_exchange_move([five, five_q]).init(state)


# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- exchange_move / multi_exchange_move ----------------------------------
    Case("multi-single-ladder", lambda c: tp.multi_exchange_move(c.ladder), T, r"ladders must be a sequence"),
    Case("multi-empty", lambda c: tp.multi_exchange_move([]), V, r"ladders must hold at least one"),
    Case("multi-not-ladder", lambda c: tp.multi_exchange_move([c.ladder, "dropout"]), T, r"ladders\[1\] must be a tempering.Ladder"),
    Case("multi-rung-counts", lambda c: tp.multi_exchange_move([c.ladder, tp.linear_ladder("dropout_rate", 0.0, 0.3, 3)]), V, r"same number of rungs"),
    Case("multi-shared-names", lambda c: tp.multi_exchange_move([c.ladder, tp.linear_ladder("dropout_rate", 0.0, 0.3, REPLICAS, learning_rate=0.1)]), V, r"disjoint hyperparameter names.*'learning_rate'"),
    Case("multi-c-length", lambda c: tp.multi_exchange_move([c.ladder, tp.linear_ladder("dropout_rate", 0.0, 0.3, REPLICAS)], c=[1.0, 2.0, 3.0]), V, r"one C per ladder"),
    Case("multi-c-negative", lambda c: tp.multi_exchange_move([c.ladder, c.dropout], c=[1.0, -2.0]), V, r"c must be finite and > 0"),
    Case("multi-enabled-string", lambda c: tp.multi_exchange_move([c.ladder, c.dropout], enabled="no"), T, r"enabled must be a bool"),
    Case("multi-hand-ladder-decreasing", lambda c: tp.multi_exchange_move([hand_ladder([0.4, 0.3, 0.2, 0.1]), c.dropout]), V, r"temperatures must increase strictly"),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)
