"""Adaptive C and ladder on synthetic loss models with known gaps."""

from __future__ import annotations

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempering as tp
from tempering.adaptation import (
    AdaptationState,
    barrier,
    decay_step,
    mean_acceptance,
    solve_c,
)
from tempering.ladder import assign_rungs
from tempering.moves import exchange_move
from tempering.zoo import models

M = 8
LADDER = tp.geometric_ladder("learning_rate", 0.01, 1.0, M)


@pytest.fixture(scope="module")
def state() -> tp.ReplicaState:
    sample = np.zeros((2, 3), np.float32)
    return tp.create_replicas(
        jax.random.key(0), models.MLP((4,), 2), tp.sgd(0.1), sample, ladder=LADDER
    )


def run_synthetic(state, move, loss_of_lr, rounds, noise=0.0, seed=1):
    """Rounds of the move where a replica's score is a function of its lr.

    Returns the replicas, the move's state and the stacked infos.
    """
    move_state = move.init(state)
    state = assign_rungs(state, move.current_ladder(move_state), move_state.rungs)
    step = jax.jit(move.step)
    key, infos = jax.random.key(seed), []
    for r in range(rounds):
        key, move_key, noise_key = jax.random.split(key, 3)
        scores = loss_of_lr(state.hyperparams["learning_rate"])
        scores = scores + noise * jax.random.normal(noise_key, (M,))
        state, move_state, info = step(
            move_key, state, move_state, scores, jnp.int32(r)
        )
        infos.append(jax.device_get(info))
    return state, move_state, jax.tree.map(lambda *xs: np.stack(xs), *infos)


def test_solve_c_hits_the_target() -> None:
    x = -np.random.default_rng(0).exponential(2.0, size=(5, 7)).astype(np.float32)
    x[0, :3] = 0.5  # favourable pairs count as accepted
    x[1, 0] = np.nan  # unseen
    # 3 favourable of 34: a share below 1 - sqrt(1 - target) for these targets
    for target in (0.2, 0.3, 0.6):
        c = solve_c(jnp.asarray(x), target, jnp.float32(1.0))
        assert float(mean_acceptance(c, jnp.asarray(x))) == pytest.approx(
            target, abs=1e-4
        )
    # Favourable pairs (always accepted) above the target: C sets the mean
    # acceptance of the unfavourable ones to the target instead.
    mostly = np.array([0.5, 0.2, 0.1, 0.3, -1.0, -3.0], np.float32)
    c = solve_c(jnp.asarray(mostly), 0.3, jnp.float32(1.0))
    unfavourable = jnp.asarray(mostly[mostly < 0])
    assert float(mean_acceptance(c, unfavourable)) == pytest.approx(0.3, abs=1e-4)
    # Only favourable (or no) pairs: C is not identified, the fallback stays.
    assert float(solve_c(jnp.full((2, 3), 0.5), 0.3, jnp.float32(7.0))) == 7.0
    assert float(solve_c(jnp.full((2, 3), jnp.nan), 0.3, jnp.float32(7.0))) == 7.0


def test_c_changes_continuously_with_the_favourable_share_and_the_target() -> None:
    """C jumped: 4.5 at a favourable share of 0.286, 1.2 at 0.300 (target 0.3),
    as the aim switched from all ratios to the unfavourable ones; and raising
    the target from 0.40 to 0.45 multiplied C by 20."""
    rng = np.random.default_rng(0)
    magnitude = np.abs(rng.normal(1.0, 0.3, 70)).astype(np.float32)
    cs = []
    for favourable in range(8, 29):  # shares 0.11 .. 0.40 around the switch
        x = -magnitude.copy()
        x[:favourable] = magnitude[:favourable]
        c = solve_c(jnp.asarray(x), 0.3, jnp.float32(1.0))
        unfavourable = jnp.asarray(x[x < 0])
        share = favourable / 70
        aim = max((0.3 - share) / (1 - share), min(share, 0.3))
        assert float(mean_acceptance(c, unfavourable)) == pytest.approx(aim, abs=1e-3)
        cs.append(float(c))
    steps = np.abs(np.diff(np.log(cs)))
    assert steps.max() < 0.15, np.round(cs, 3)  # one ratio more moves C by < 16%
    noise = jnp.asarray(rng.normal(0.0, 1.0, 70), jnp.float32)  # share about 0.5
    by_target = [
        float(solve_c(noise, t, jnp.float32(1.0))) for t in np.arange(0.1, 0.95, 0.05)
    ]
    assert np.all(np.diff(by_target) <= 1e-6), np.round(by_target, 3)  # never up


def test_solve_c_reaches_the_target_over_many_orders_of_magnitude() -> None:
    # the solution, C = 3.6e5, lies far outside the first bracket around
    # 1 / (the median gap) = 1, which stopped at 1e4 (mean acceptance 0.42)
    x = jnp.asarray([-1e-6] * 3 + [-1.0] * 4, jnp.float32)
    c = solve_c(x, 0.3, jnp.float32(1.0))
    assert float(mean_acceptance(c, x)) == pytest.approx(0.3, abs=1e-3)
    assert 3e5 < float(c) < 4e5


def test_a_diverged_pair_is_no_barrier_to_the_ladder() -> None:
    """An infinite ratio (a diverged replica) counts as unseen, as in solve_c."""
    positions = jnp.log(jnp.asarray([[0.01, 0.03, 0.1, 0.3]] * 2, jnp.float32))
    seen = jnp.asarray([[-0.5, -1.0, -0.2], [-0.4, -0.9, -0.3]], jnp.float32)
    for bad in (-jnp.inf, jnp.inf):
        diverged = seen.at[1, 2].set(bad)
        unseen = seen.at[1, 2].set(jnp.nan)
        np.testing.assert_array_equal(
            barrier(jnp.float32(1.0), diverged, positions),
            barrier(jnp.float32(1.0), unseen, positions),
        )


@pytest.mark.parametrize("target", [0.2, 0.4])
def test_auto_c_reaches_the_target_on_known_gaps(state, target) -> None:
    move = exchange_move(LADDER, c="auto", target_acceptance=target, adapt_rounds=10)
    state, move_state, info = run_synthetic(state, move, lambda lr: 3.0 * lr, rounds=30)
    # Loss linear in T on a geometric ladder: every pair has the same gap x, so
    # the frozen C accepts every pair with probability exactly the target.
    frozen = info.c[10:]
    assert np.all(frozen == frozen[0]) and np.all(info.c[9] == frozen[0])
    np.testing.assert_allclose(info.acceptance_prob[10:], target, atol=2e-3)
    assert float(move_state.adaptation.c) == float(frozen[0])


def test_auto_c_with_noisy_losses_within_tolerance(state) -> None:
    move = exchange_move(LADDER, c="auto", target_acceptance=0.3, adapt_rounds=20)
    _, _, info = run_synthetic(state, move, lambda lr: 3.0 * lr, rounds=220, noise=0.05)
    # Measured after the freeze, on 200 fresh rounds: within 0.05 of the target.
    assert abs(info.acceptance_prob[20:].mean() - 0.3) < 0.05
    assert np.all(info.c[20:] == info.c[19])


def test_auto_c_between_the_aims_accepts_unfavourable_swaps_at_the_share(state):
    """Noisy losses with about a quarter of the swaps favourable, a share between
    1 - sqrt(1 - 0.3) and 0.3: the frozen C accepts the unfavourable swaps at
    that share (the old rule aimed the overall mean at 0.3 from there, which
    left them at 0.08, an exchange that nearly sorts the replicas by loss)."""
    move = exchange_move(LADDER, c="auto", target_acceptance=0.3, adapt_rounds=40)
    _, _, info = run_synthetic(
        state, move, lambda lr: 3.0 * jnp.log(lr), rounds=440, noise=2.0, seed=2
    )
    x = np.where(info.proposed, info.log_ratio, np.nan)
    window, fresh = x[:40], x[40:]
    share = np.sum(window >= 0) / np.sum(np.isfinite(window))
    assert 1 - np.sqrt(0.7) + 0.03 < share < 0.3 - 0.01, share
    accepted = np.where(info.proposed, info.acceptance_prob, np.nan)[40:]
    assert abs(accepted[fresh < 0].mean() - share) < 0.05  # 0.20 at 0.23 here
    assert np.nanmean(accepted) > 0.3 + 0.05  # the favourable swaps lift the mean


def test_decay_step_moves_c_towards_the_target() -> None:
    x = jnp.asarray([-1.0, -2.0, -0.5], jnp.float32)
    c = jnp.float32(1.0)
    above = float(mean_acceptance(c, x)) - 0.3  # about 0.36 accepted: C grows
    slope = float(np.mean(-np.asarray(x) * np.exp(np.asarray(x))))  # |d acc / d log C|
    assert above > 0
    grown = decay_step(c, x, 0.3, jnp.int32(0))  # gain 1: a Newton step
    assert float(grown) == pytest.approx(np.exp(above / slope), rel=1e-5)
    later = decay_step(c, x, 0.3, jnp.int32(99))  # gain 100 ** -0.6
    assert float(later) == pytest.approx(np.exp(above / slope * 100**-0.6), rel=1e-5)
    assert float(decay_step(c, x / 100, 0.01, 0)) == pytest.approx(np.e)  # clipped
    assert float(decay_step(c, x, 0.9, jnp.int32(0))) < 1.0  # too few: C falls
    # nothing unfavourable: every C accepts everything, C stays
    assert float(decay_step(c, jnp.asarray([0.5, 1.0, jnp.nan]), 0.3, 0)) == 1.0


def test_decay_step_converges_to_the_solved_c_and_follows_a_drift() -> None:
    # Stationary ratios (a tenth favourable): the Robbins-Monro iterates end
    # where the batch solver puts C on a large sample; after the gaps shrink
    # tenfold, C follows them (x10) and acceptance returns to the target.
    rng = np.random.default_rng(0)

    def ratios(scale, n):
        x = -rng.exponential(scale, size=(n, 7)).astype(np.float32)
        flip = rng.random((n, 7)) < 0.1
        return np.where(flip, -x, x)

    step = jax.jit(decay_step, static_argnums=2)

    def iterate(c, rows, start):  # the last 10 rounds decide what the target is for
        for k in range(len(rows)):
            recent = jnp.asarray(rows[max(0, k - 9) : k + 1])
            c = step(c, jnp.asarray(rows[k]), 0.3, jnp.int32(start + k), recent)
        return c

    c = iterate(jnp.float32(1.0), ratios(2.0, 3000), 0)
    solved = solve_c(jnp.asarray(ratios(2.0, 20000)), 0.3, jnp.float32(1.0))
    assert float(c) == pytest.approx(float(solved), rel=0.05)
    c = iterate(c, ratios(0.2, 3000), 3000)
    assert float(c) == pytest.approx(10 * float(solved), rel=0.1)
    fresh = jnp.asarray(ratios(0.2, 20000))
    assert float(mean_acceptance(c, fresh)) == pytest.approx(0.3, abs=0.02)


def test_decay_step_is_continuous_in_the_recent_favourable_share() -> None:
    """One favourable ratio more in 1000 recent ones, across 1 - sqrt(1 - 0.3):
    the step aimed this round's ratios, favourable ones included, at 0.3 on one
    side and its unfavourable ones at the recent share on the other, a jump of
    C from 2.47 to 1.65."""
    x = jnp.asarray([0.5, 0.4, -1.2, -0.8, -1.5, -0.9, -1.1], jnp.float32)
    magnitude = np.linspace(0.2, 3.0, 1000).astype(np.float32)
    steps = []
    for favourable in range(150, 180):  # shares 0.150 .. 0.179 around 0.163
        recent = -magnitude.copy()
        recent[:favourable] = magnitude[:favourable]
        steps.append(
            float(decay_step(jnp.float32(1.0), x, 0.3, 0, jnp.asarray(recent)))
        )
    assert np.abs(np.diff(np.log(steps))).max() < 0.02, np.round(steps, 3)


@pytest.mark.parametrize("favourable", [0.25, 0.5])
def test_decay_step_is_unbiased_where_the_unfavourable_swaps_are_aimed_at(favourable):
    """Shares of favourable ratios where the aim is min(s, target) for the
    unfavourable swaps: over 4 seeds the iterates end at the batch solver's C
    within 8% on average (the step before ended 12% low at both shares)."""
    step = jax.jit(decay_step, static_argnums=2)
    ends = []
    for seed in range(4):
        rng = np.random.default_rng(seed)

        def ratios(n, rng=rng):
            x = -rng.exponential(2.0, size=(n, 7)).astype(np.float32)
            return np.where(rng.random((n, 7)) < favourable, -x, x)

        rows, c = ratios(3000), jnp.float32(1.0)
        for k in range(len(rows)):
            recent = jnp.asarray(rows[max(0, k - 9) : k + 1])
            c = step(c, jnp.asarray(rows[k]), 0.3, jnp.int32(k), recent)
        solved = solve_c(jnp.asarray(ratios(20000)), 0.3, jnp.float32(1.0))
        ends.append(float(c) / float(solved))
    assert abs(np.mean(ends) - 1.0) < 0.08, np.round(ends, 3)


def test_decay_schedule_keeps_adapting_after_the_window(state) -> None:
    # The loss gaps shrink after round 40: the frozen C over-accepts from
    # then on, the decaying one brings the acceptance back to the target.
    def loss(lr, drift):
        return 3.0 * lr * drift

    infos = {}
    for schedule in ("freeze", "decay"):
        move = exchange_move(
            LADDER, c="auto", target_acceptance=0.3, adapt_rounds=10,
            adapt_schedule=schedule,
        )  # fmt: skip
        _, move_state, first = run_synthetic(state, move, lambda lr: loss(lr, 1.0), 40)
        # continue the same move state on the shrunken gaps
        step = jax.jit(move.step)
        st = assign_rungs(state, move.current_ladder(move_state), move_state.rungs)
        key, rows = jax.random.key(5), []
        for r in range(40, 240):
            key, sub = jax.random.split(key)
            scores = loss(st.hyperparams["learning_rate"], 0.2)
            st, move_state, info = step(sub, st, move_state, scores, jnp.int32(r))
            rows.append(jax.device_get(info))
        infos[schedule] = (first, jax.tree.map(lambda *xs: np.stack(xs), *rows))
    frozen_first, frozen = infos["freeze"]
    decayed_first, decayed = infos["decay"]
    # the window is the same; past it the frozen C never moves
    np.testing.assert_array_equal(frozen_first.c[:10], decayed_first.c[:10])
    assert np.all(frozen.c == frozen_first.c[9])
    assert abs(frozen.acceptance_prob[-50:].mean() - 0.3) > 0.15
    assert decayed.c[-1] > 3 * decayed_first.c[9]  # followed the gaps (x5)
    assert abs(decayed.acceptance_prob[-50:].mean() - 0.3) < 0.05


def test_adaptive_ladder_equalises_acceptance_keeps_ends_and_order(state) -> None:
    def loss(lr):
        return 3.0 * lr**2  # the barrier grows toward the hot end

    fixed = exchange_move(LADDER, c="auto", adapt_rounds=20)
    _, _, before = run_synthetic(state, fixed, loss, rounds=40)
    move = exchange_move(LADDER, c="auto", adapt_rounds=20, adapt_ladder=True)
    new_state, move_state, info = run_synthetic(state, move, loss, rounds=40)
    adapted = move_state.adaptation
    spread_before = np.ptp(before.acceptance_prob[20:].mean(0))
    spread_after = np.ptp(info.acceptance_prob[20:].mean(0))
    assert spread_before > 0.4  # the geometric ladder is far from equal
    assert spread_after < 0.05
    assert abs(info.acceptance_prob[20:].mean() - 0.3) < 0.03
    temps = np.asarray(adapted.temperatures)
    assert temps[0] == np.float32(0.01) and temps[-1] == np.float32(1.0)
    assert np.all(np.diff(temps) > 0)
    # The learning rate follows its rule T = lr exactly; replicas hold their rung's.
    lrs = np.asarray(adapted.values["learning_rate"])
    np.testing.assert_allclose(lrs, temps, rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(new_state.hyperparams["learning_rate"]),
        lrs[np.asarray(move_state.rungs)],
    )
    np.testing.assert_array_equal(info.temperatures[-1], temps)
    assert np.all(info.temperatures[20:] == temps)  # frozen


@pytest.mark.parametrize(
    ("rule", "temperature"),
    [("library", lambda q: 1 / (1 - q)), ("authors", lambda q: q / (1 - q))],
)
def test_adaptive_ladder_respaces_dropout_by_its_rule(rule, temperature) -> None:
    sample = np.zeros((2, 3), np.float32)
    low = 0.0 if rule == "library" else 0.1  # the authors' T is 0 at q = 0
    ladder = tp.linear_ladder(
        "dropout_rate", low, 0.6, 4, learning_rate=0.05, dropout_temperature=rule
    )
    dropout_state = tp.create_replicas(
        jax.random.key(0), models.MLP((4,), 2), tp.sgd(0.1), sample, ladder=ladder
    )
    move = exchange_move(ladder, c="auto", adapt_rounds=5, adapt_ladder=True)
    move_state = move.init(dropout_state)
    out = assign_rungs(dropout_state, ladder, move_state.rungs)
    step = jax.jit(move.step)
    for r in range(5):
        scores = 2.0 * out.hyperparams["dropout_rate"] ** 3
        out, move_state, _ = step(
            jax.random.key(r), out, move_state, scores, jnp.int32(r)
        )
    adapted = move.current_ladder(move_state)
    rates = np.asarray(adapted.values["dropout_rate"])
    np.testing.assert_allclose(
        np.asarray(adapted.temperatures), temperature(rates.astype(np.float64)),
        rtol=1e-5,
    )  # fmt: skip
    assert adapted.dropout_temperature == rule
    assert rates[0] == np.float32(low) and rates[-1] == np.float32(0.6)
    assert not np.allclose(rates, np.asarray(ladder.values["dropout_rate"]))
    np.testing.assert_array_equal(adapted.values["learning_rate"], np.float32(0.05))


def test_pt_train_auto_is_default_records_c_and_continues(blobs, tx) -> None:
    train, val = blobs
    ladder = tp.geometric_ladder("learning_rate", 0.02, 0.3, 4)
    state = tp.create_replicas(
        jax.random.key(0), models.MLP((16,), 3), tx, train[0][:2], ladder=ladder
    )
    kwargs = dict(
        train_data=train, validation_data=val, exchange_interval=5, burn_in=10
    )
    full = tp.pt_train(state, ladder, jax.random.key(3), num_steps=90, **kwargs)
    # 16 rounds: a quarter adapt, then C stays.
    assert full.history.c.shape == (16,)
    assert np.all(full.history.c[3:] == full.history.c[3])
    assert full.summary.c == float(full.history.c[-1])
    # adapt_schedule="decay": the same window, then C keeps moving
    decay = tp.pt_train(state, ladder, jax.random.key(3), num_steps=90,
                        adapt_schedule="decay", **kwargs)  # fmt: skip
    np.testing.assert_array_equal(decay.history.c[:4], full.history.c[:4])
    assert len(np.unique(decay.history.c[4:])) > 1
    assert full.history.temperatures.shape == (16, 4)
    # Two calls of the same run give the same run: the second continues the
    # adaptation of the first's move_state (and takes its adapt_rounds; the
    # first's default depends on the call's length, so it is named here).
    first = tp.pt_train(
        state, ladder, jax.random.key(3), num_steps=30, adapt_rounds=4, **kwargs
    )
    assert isinstance(first.move_state.adaptation, AdaptationState)
    second = tp.pt_train(
        first.state, ladder, jax.random.key(3), num_steps=60,
        move_state=first.move_state, **kwargs,
    )  # fmt: skip
    _assert_same_run(first, second, full)
    # A first call within the burn-in adapts nothing, so it fixes no
    # adapt_rounds: the defaults of the call that continues it are those of
    # the one call over both, bit for bit.
    with pytest.warns(UserWarning, match="ends before the first exchange"):
        burn = tp.pt_train(state, ladder, jax.random.key(3), num_steps=7, **kwargs)
    rest = tp.pt_train(
        burn.state, ladder, jax.random.key(3), num_steps=83,
        move_state=burn.move_state, **kwargs,
    )  # fmt: skip
    assert rest.move_state.adaptation.adapt_rounds == 4
    np.testing.assert_array_equal(rest.history.c, full.history.c)
    for a, b in zip(jax.tree.leaves(rest.state.params),
                    jax.tree.leaves(full.state.params), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    # Without it the second call tunes C afresh, and says so.
    with pytest.warns(UserWarning, match="no move_state was given"):
        fresh = tp.pt_train(
            first.state, ladder, jax.random.key(3), num_steps=60, **kwargs
        )
    assert fresh.history.c[0] != full.history.c[4]
    # A number keeps C fixed.
    fixed = tp.pt_train(state, ladder, jax.random.key(3), num_steps=30, c=5.0, **kwargs)
    assert np.all(fixed.history.c == 5.0) and fixed.summary.c == 5.0
    assert fixed.move_state.adaptation is None  # only the rungs


def _assert_same_run(first, second, full) -> None:
    np.testing.assert_array_equal(
        np.concatenate([first.history.c, second.history.c]), full.history.c
    )
    np.testing.assert_array_equal(second.history.rungs, full.history.rungs[4:])
    for got, want in zip(
        jax.tree.leaves(second.state.params), jax.tree.leaves(full.state.params),
        strict=True,
    ):  # fmt: skip
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("saver", ["flax.serialization", "orbax"])
def test_saved_replicas_and_move_state_continue_the_run(blobs, tx, tmp_path, saver):
    train, val = blobs
    ladder = tp.geometric_ladder("learning_rate", 0.02, 0.3, 4)

    def fresh_replicas():
        return tp.create_replicas(
            jax.random.key(0), models.MLP((16,), 3), tx, train[0][:2], ladder=ladder
        )

    kwargs = dict(
        train_data=train, validation_data=val, exchange_interval=5, burn_in=10,
        adapt_rounds=4,
    )  # fmt: skip
    key = jax.random.key(3)
    full = tp.pt_train(fresh_replicas(), ladder, key, num_steps=90, **kwargs)
    first = tp.pt_train(fresh_replicas(), ladder, key, num_steps=30, **kwargs)
    saved = {"replicas": first.state, "move_state": first.move_state}
    # Fresh templates: new replicas and a fresh exchange state of the same run.
    template = fresh_replicas()
    move = tp.exchange_move(ladder, c="auto", adapt_rounds=4)
    template = {"replicas": template, "move_state": move.init(template)}
    if saver == "flax.serialization":
        data = flax.serialization.to_bytes(saved)
        restored = flax.serialization.from_bytes(template, data)
    else:
        ocp = pytest.importorskip("orbax.checkpoint")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp_path / "run", saved)
            checkpointer.wait_until_finished()
            restored = checkpointer.restore(tmp_path / "run", template)
    assert int(restored["replicas"].step) == 30
    second = tp.pt_train(
        restored["replicas"], ladder, key, num_steps=60,
        move_state=restored["move_state"], **kwargs,
    )  # fmt: skip
    _assert_same_run(first, second, full)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"c": "adaptive"}, ValueError, "c must be a number > 0 or 'auto'"),
        ({"c": "auto", "target_acceptance": 1.0}, ValueError, "target_acceptance"),
        ({"c": "auto", "target_acceptance": "0.3"}, TypeError, "target_acceptance"),
        ({"c": "auto", "adapt_rounds": 0}, ValueError, "adapt_rounds must be >= 1"),
        ({"c": "auto", "adapt_rounds": 2.0}, TypeError, "adapt_rounds must be an int"),
        ({"adapt_ladder": "yes"}, TypeError, "adapt_ladder must be True or False"),
        ({"c": "auto", "adapt_schedule": "slow"}, ValueError, "adapt_schedule must be"),
        ({"c": 2.0, "adapt_schedule": "decay"}, ValueError, "it needs c='auto'"),
    ],
)
def test_bad_adaptation_settings(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        exchange_move(LADDER, **kwargs)


def test_an_adapted_ladder_continues_in_a_second_call(blobs, tx) -> None:
    """The replicas hold the re-spaced values: the second call refused them,
    checking them against the rungs of the ladder it was given."""
    train, val = blobs
    ladder = tp.geometric_ladder("learning_rate", 0.02, 0.3, 4)
    state = tp.create_replicas(
        jax.random.key(0), models.MLP((16,), 3), tx, train[0][:2], ladder=ladder
    )
    kwargs = dict(
        train_data=train, validation_data=val, exchange_interval=5, burn_in=10,
        adapt_ladder=True, adapt_rounds=4,
    )  # fmt: skip
    full = tp.pt_train(state, ladder, jax.random.key(3), num_steps=60, **kwargs)
    first = tp.pt_train(state, ladder, jax.random.key(3), num_steps=30, **kwargs)
    adapted = np.asarray(first.summary.ladder.values["learning_rate"])
    assert not np.allclose(adapted, np.asarray(ladder.values["learning_rate"]))
    second = tp.pt_train(
        first.state, ladder, jax.random.key(3), num_steps=30,
        move_state=first.move_state, **kwargs,
    )  # fmt: skip
    _assert_same_run(first, second, full)
    move = exchange_move(ladder, c="auto", adapt_rounds=4, adapt_ladder=True)
    data = tp.RunData(train, validation=val)
    config = tp.RunConfig(num_steps=30, interval=5, burn_in=10)
    again = tp.train(first.state, jax.random.key(3), move, data, config,
                     move_state=first.move_state)  # fmt: skip
    np.testing.assert_array_equal(again.history.rungs, second.history.rungs)
