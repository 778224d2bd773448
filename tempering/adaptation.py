"""Adaptive C and ladder: the exchange tunes itself in its first rounds, then freezes.

``pt_train(..., c="auto")`` (the default) sets the constant C of the Metropolis
test from what it observes. Every adaptation round records, for each adjacent
pair of rungs, the log acceptance ratio at C = 1,
``x_r = (beta_r - beta_{r+1}) (L_cold - L_hot)``; C is then the value that makes
the mean Metropolis probability ``mean min(1, exp(C x))`` over every ratio seen
so far equal the target (bisection in log C). Every pair is proposed equally
often under both schemes, so the target is the expected acceptance of a
proposed swap. Favourable swaps (the hotter replica has the lower loss) are
always accepted: with a share ``s`` of them no C accepts less than ``s``
(noisy losses give ``s`` near 0.5; early training on a learning-rate ladder
more). C then sets the acceptance of the unfavourable swaps to
``min(s, target)`` instead, so the exchange keeps exploring rather than
sorting; the overall target holds while ``s <= 1 - sqrt(1 - target)``, where
the two aims meet, so that C changes continuously (:func:`solve_c`). After
``adapt_rounds`` rounds C is frozen and the exchange is a
fixed Metropolis rule for the rest of the run. With ``adapt_schedule="decay"``
C keeps adapting after those rounds, one Robbins-Monro step per round on
log C with a decaying gain (:func:`decay_step`), so that it follows a loss
landscape that drifts as training goes on while its changes vanish (the
diminishing adaptation of adaptive MCMC); the ladder still freezes.

With ``adapt_ladder=True`` the inner rungs are also re-spaced every adaptation
round, so that adjacent pairs reject equally often (Syed et al. 2019; Vousden,
Farr & Mandel 2016): the rejection ``rho_r = 1 - min(1, exp(C x_r))`` of each
pair, spread over its interval of ``u = log T`` and pooled over the rounds
seen (:func:`barrier`), is a "communication barrier"; the new rungs divide it
into equal parts. The ends of the ladder and the order of its rungs never change. A
hyperparameter whose values set the temperatures by the default rule (learning
rate: ``T = lr``; dropout: ``T = 1 / (1 - q)``) follows its rule exactly, so a
learning-rate ladder is re-spaced in log space; any other hyperparameter is
interpolated between the old rungs (in log space when its values are > 0).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tempering.ladder import Ladder, inverse_temperature

__all__ = [
    "Adaptation",
    "AdaptationState",
    "barrier",
    "decay_step",
    "init_adaptation",
    "mean_acceptance",
    "respace_ladder",
    "solve_c",
]

# Bisection of log C within +-ln(1e4) around 1 / (the median unfavourable gap),
# the bracket first moved by its width (up to _SHIFTS times) while the target
# lies outside it (ratios spread over more than four orders of magnitude).
_LOG_RANGE = float(np.log(1e4))
_BISECTIONS = 48
_SHIFTS = 3
# Cells of log T between the ladder's ends on which the barrier is pooled.
_GRID = 64
# Gain of the k-th step past the window: (k + 1) ** -_DECAY_EXPONENT (in (1/2, 1]:
# the gains sum to infinity, their squares do not).
_DECAY_EXPONENT = 0.6
SCHEDULES = ("freeze", "decay")
# Floor of |d acceptance / d log C| in a decay step (bounds a step's size).
_MIN_SLOPE = 0.02
# Floor of the total barrier density, so that the barrier strictly increases
# (with no rejection at all the ladder becomes evenly spaced in log T).
_MIN_REJECTION = 1e-3


class Adaptation(NamedTuple):
    """Static settings of the adaptation (validated by ``exchange_move``)."""

    target: float | None  # mean acceptance C is tuned to; None keeps C fixed
    ladder: bool  # also re-space the inner rungs
    rule: str | None  # the hyperparameter whose default rule sets T, if any
    log_names: tuple[str, ...] = ()  # other names interpolated in log space
    dropout_temperature: str = "library"  # the dropout rule, when rule is dropout
    schedule: str = "freeze"  # after the window: "freeze", or "decay" (C only)


class AdaptationState(NamedTuple):
    """What the adaptive exchange carries between rounds (its move state)."""

    c: jax.Array  # shape=(), float32, the current C
    temperatures: jax.Array  # shape=(M,), the current ladder, coldest first
    values: dict[str, jax.Array]  # name -> shape=(M,), the current ladder values
    log_ratios: jax.Array  # shape=(A, M - 1), x of adaptation round a; NaN unseen
    positions: jax.Array  # shape=(A, M), log T of round a's rungs; NaN unseen
    rounds_done: jax.Array  # shape=(), int32, rounds adapted (<= A when frozen after)

    @property
    def adapt_rounds(self) -> int:
        """A: rounds of adaptation before C (and the ladder) freeze."""
        return int(self.log_ratios.shape[0])

    @property
    def ladder(self) -> Ladder:
        """The current values and temperatures (``current_ladder`` adds their rule)."""
        return Ladder(self.values, self.temperatures)


def init_adaptation(ladder: Ladder, adapt_rounds: int, c: float) -> AdaptationState:
    """The adaptation state before the first round.

    Args:
        ladder: the starting ladder (its ends stay fixed).
        adapt_rounds: A >= 1, rounds before C and the ladder freeze.
        c: C until the first round has seen an unfavourable pair.

    Returns:
        An :class:`AdaptationState`.
    """
    num_pairs = ladder.num_rungs - 1
    return AdaptationState(
        c=jnp.float32(c),
        temperatures=jnp.asarray(ladder.temperatures, jnp.float32),
        values={k: jnp.asarray(v, jnp.float32) for k, v in ladder.values.items()},
        log_ratios=jnp.full((adapt_rounds, num_pairs), jnp.nan, jnp.float32),
        positions=jnp.full((adapt_rounds, num_pairs + 1), jnp.nan, jnp.float32),
        rounds_done=jnp.int32(0),
    )


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """The sum of ``values`` over the count of ``mask`` (at least 1), float32."""
    count = jnp.maximum(mask.sum(), 1).astype(jnp.float32)
    return values.sum().astype(jnp.float32) / count


def mean_acceptance(c: jax.Array, log_ratios: jax.Array) -> jax.Array:
    """Mean of ``min(1, exp(c x))`` over the finite entries of ``log_ratios``."""
    valid = jnp.isfinite(log_ratios)
    x = jnp.where(valid, log_ratios, 0.0)
    probs = jnp.where(valid, jnp.exp(jnp.minimum(c * x, 0.0)), 0.0)
    return _masked_mean(probs, valid)


def solve_c(log_ratios: jax.Array, target: float, fallback: jax.Array) -> jax.Array:
    """The C at which the mean Metropolis probability of ``log_ratios`` is ``target``.

    Args:
        log_ratios: any shape; the log acceptance ratios at C = 1 (non-finite
            entries are ignored).
        target: the mean acceptance wanted, in (0, 1).
        fallback: returned when no finite ratio is unfavourable (< 0): then
            every C accepts everything and the data say nothing about C.

    Returns:
        C, shape ``()``, float32. With a share ``s`` of favourable ratios
        (always accepted), C makes the mean acceptance of all of them
        ``target`` while ``s <= 1 - sqrt(1 - target)``; above, that would
        need a C growing without bound as ``s`` nears ``target`` (and no C
        reaches it beyond), so C makes the mean acceptance of the
        *unfavourable* swaps ``min(s, target)``: the exchange keeps exploring
        instead of sorting the replicas by loss, and C is continuous in the
        ratios and the target.
    """
    x, unfavourable, goal = _target_ratios(jnp.asarray(log_ratios, jnp.float32), target)
    scale = jnp.nanmedian(jnp.where(unfavourable, -x, jnp.nan))
    centre = -jnp.log(jnp.where(unfavourable.any(), scale, 1.0))

    def shift(_, bounds):
        low, high = bounds  # the acceptance falls as C grows
        grow = mean_acceptance(jnp.exp(high), x) > goal
        shrink = mean_acceptance(jnp.exp(low), x) < goal
        step = jnp.where(grow, high - low, jnp.where(shrink, low - high, 0.0))
        return low + step, high + step

    def bisect(_, bounds):
        low, high = bounds
        mid = 0.5 * (low + high)
        too_often = mean_acceptance(jnp.exp(mid), x) > goal  # C must grow
        return jnp.where(too_often, mid, low), jnp.where(too_often, high, mid)

    bracket = (centre - _LOG_RANGE, centre + _LOG_RANGE)
    bracket = jax.lax.fori_loop(0, _SHIFTS, shift, bracket)
    low, high = jax.lax.fori_loop(0, _BISECTIONS, bisect, bracket)
    c = jnp.exp(0.5 * (low + high))
    return jnp.where(unfavourable.any(), c, fallback).astype(jnp.float32)


def _favourable_share(ratios: jax.Array) -> jax.Array:
    """The share of finite ratios that are favourable (``>= 0``, always accepted)."""
    seen = jnp.isfinite(ratios)
    return _masked_mean(seen & (ratios >= 0), seen)


def _switch_share(target: float | jax.Array) -> jax.Array:
    """``1 - sqrt(1 - target)``: the favourable share where the two aims meet."""
    return 1.0 - jnp.sqrt(1.0 - jnp.asarray(target, jnp.float32))


def _target_ratios(
    x: jax.Array, target: float | jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The ratios aimed at, whether any is unfavourable, and the acceptance aimed at.

    With ``s`` the share of favourable ratios (always accepted) in ``x``, the
    unfavourable swaps are accepted at ``max((target - s) / (1 - s),
    min(s, target))`` (:func:`_unfavourable_aim`):

    - ``(target - s) / (1 - s)`` makes the mean over all ratios ``target``
      (returned: all ratios and ``target``). As ``s`` nears ``target`` it
      falls to 0, an infinite C: the exchange would sort the replicas by loss
      and never accept an unfavourable swap.
    - ``min(s, target)`` keeps it exploring (returned: the unfavourable ratios
      and that acceptance): it takes over above ``s = 1 - sqrt(1 - target)``,
      where the two are equal, so that C changes continuously with the
      losses and with ``target``.

    Non-finite ratios are ignored.
    """
    unfavourable = jnp.isfinite(x) & (x < 0)
    share = _favourable_share(x)
    overall = share <= _switch_share(target)
    x = jnp.where(overall, x, jnp.where(unfavourable, x, jnp.nan))
    goal = jnp.where(overall, target, jnp.minimum(share, target))
    return x, unfavourable, goal.astype(jnp.float32)


def _unfavourable_aim(share: jax.Array, target: float | jax.Array) -> jax.Array:
    """The acceptance of unfavourable swaps aimed at, for a favourable ``share``.

    ``(target - share) / (1 - share)`` up to ``1 - sqrt(1 - target)`` (the
    mean over all swaps is then ``target``), ``min(share, target)`` above:
    the two are equal there, so the aim is continuous in ``share``.
    """
    below = (target - share) / jnp.maximum(1.0 - share, 1e-6)
    aim = jnp.where(share <= _switch_share(target), below, jnp.minimum(share, target))
    return aim.astype(jnp.float32)


def decay_step(
    c: jax.Array,
    log_ratios: jax.Array,
    target: float,
    step: jax.Array | int,
    recent: jax.Array | None = None,
) -> jax.Array:
    """One step of C past the window, towards the acceptance ``target``.

    A Robbins-Monro step on log C with a decaying gain ``(step + 1) ** -0.6``,
    scaled by this round's sensitivity (a stochastic Newton step):

    ```
    log C += clip(gain * (acceptance - target) / |d acceptance / d log C|, -1, 1)
    ```

    The acceptance is the mean Metropolis probability of this round's
    unfavourable ratios at the current C, against the aim :func:`solve_c`
    would set for them with the share ``s`` of favourable ratios in the
    ``recent`` rounds (one round of a few pairs is too few to tell ``s``):
    ``(target - s) / (1 - s)``, which makes the mean over all swaps the
    target, up to ``s = 1 - sqrt(1 - target)``, and ``min(s, target)``
    above, so that the step is continuous in ``s``. Its slope in log C is the
    mean of ``C x exp(C x)`` over the same ratios, floored at 0.02.
    Acceptance falls as C grows, so too many acceptances raise C.

    Args:
        c: the current C, shape ``()``.
        log_ratios: this round's ratios at C = 1, ``(M - 1,)``.
        target: the mean acceptance wanted, in (0, 1).
        step: rounds since the window ended (0 for the first), shape ``()``.
        recent: the ratios of recent rounds (any shape, NaN unseen) whose
            share of favourable pairs sets the aim; default ``log_ratios``.

    Returns:
        The next C, shape ``()``, float32; C itself when no ratio is
        unfavourable (every C accepts everything).
    """
    x = jnp.asarray(log_ratios, jnp.float32)
    pooled = x if recent is None else jnp.asarray(recent, jnp.float32)
    unfavourable = jnp.isfinite(x) & (x < 0)
    cx = jnp.where(unfavourable, c * x, 0.0)
    accepted = _masked_mean(jnp.where(unfavourable, jnp.exp(cx), 0.0), unfavourable)
    excess = accepted - _unfavourable_aim(_favourable_share(pooled), target)
    # the sensitivity from the recent rounds: this round's alone is noisy, and
    # dividing by it biases the steps
    seen = jnp.isfinite(pooled) & (pooled < 0)
    pooled_cx = jnp.where(seen, c * pooled, 0.0)
    slope = _masked_mean(pooled_cx * jnp.exp(pooled_cx), seen)
    gain = (jnp.asarray(step, jnp.float32) + 1.0) ** -_DECAY_EXPONENT
    move = jnp.clip(gain * excess / jnp.maximum(-slope, _MIN_SLOPE), -1.0, 1.0)
    return jnp.where(unfavourable.any(), c * jnp.exp(move), c).astype(jnp.float32)


def barrier(c: jax.Array, log_ratios: jax.Array, positions: jax.Array) -> jax.Array:
    """The cumulative rejection along ``u = log T``, pooled over rounds.

    Round a's pair (r, r + 1) rejects with ``rho = 1 - min(1, exp(c x))``,
    spread evenly over ``[u_r, u_{r+1}]`` of that round's ladder; the density
    at each of ``_GRID`` cells between the ends is the mean over the rounds
    seen. Every round is re-weighed at the current C.

    Args:
        c: the current C.
        log_ratios: ``(A, M - 1)`` ratios at C = 1 per round (NaN: unseen).
        positions: ``(A, M)`` ``log T`` of each round's rungs (NaN: unseen).

    Returns:
        ``(_GRID + 1,)`` cumulative barrier at the cell edges (0 at the cold
        end, strictly increasing).
    """
    low, high = positions[0, 0], positions[0, -1]  # the ends never move
    edges = jnp.linspace(low, high, _GRID + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    rho = 1.0 - jnp.exp(jnp.minimum(c * log_ratios, 0.0))  # (A, M - 1)
    # A pair with a diverged replica (an infinite ratio) is unseen, not a
    # barrier: no spacing of the healthy rungs could lower it.
    rho = jnp.where(jnp.isfinite(log_ratios), rho, jnp.nan)
    num_pairs = log_ratios.shape[1]

    def density(u: jax.Array, rho_row: jax.Array) -> jax.Array:
        pair = jnp.clip(
            jnp.searchsorted(u, centres, side="right") - 1, 0, num_pairs - 1
        )
        return rho_row[pair] / jnp.diff(u)[pair]

    densities = jax.vmap(density)(positions, rho)  # (A, _GRID); NaN when unseen
    mean = jnp.nan_to_num(jnp.nanmean(densities, axis=0), nan=0.0)
    floor = _MIN_REJECTION / (high - low)
    cell = (high - low) / _GRID
    return jnp.concatenate(
        [jnp.zeros((1,), jnp.float32), jnp.cumsum(jnp.maximum(mean, floor) * cell)]
    )


def respace_ladder(
    ladder: Ladder,
    cumulative: jax.Array,
    rule: str | None = None,
    log_names: tuple[str, ...] = (),
    dropout_temperature: str = "library",
) -> Ladder:
    """Inner rungs moved so that every adjacent pair gets an equal barrier share.

    Args:
        ladder: the current ladder, M rungs.
        cumulative: the cumulative barrier at ``_GRID + 1`` evenly spaced
            points of ``log T`` between the ends (:func:`barrier`).
        rule: the hyperparameter whose default rule sets the temperatures
            (its values follow the new temperatures exactly), or None.
        log_names: hyperparameters interpolated in log space (values > 0);
            the others are interpolated linearly in ``log T``.
        dropout_temperature: the dropout rule (``"library"`` or
            ``"authors"``, :func:`tempering.ladder.default_temperature`) when
            ``rule`` is the dropout rate.

    Returns:
        The new ladder: same ends, same order, same names.
    """
    temps = ladder.temperatures
    positions = jnp.log(temps)
    edges = jnp.linspace(positions[0], positions[-1], cumulative.shape[0])
    wanted = jnp.linspace(0.0, cumulative[-1], temps.shape[0])
    new_positions = jnp.interp(wanted, cumulative, edges)
    new_temps = jnp.exp(new_positions).at[0].set(temps[0]).at[-1].set(temps[-1])
    values = {}
    for name, old in ladder.values.items():
        if name == rule:
            new = inverse_temperature(
                name, new_temps, dropout_temperature=dropout_temperature
            )
        elif name in log_names:
            new = jnp.exp(jnp.interp(new_positions, positions, jnp.log(old)))
        else:
            new = jnp.interp(new_positions, positions, old)
        new = jnp.where(jnp.all(old == old[0]), old, new)  # a shared value stays
        values[name] = new.at[0].set(old[0]).at[-1].set(old[-1]).astype(jnp.float32)
    return Ladder(values, new_temps.astype(jnp.float32))


def adapt(
    settings: Adaptation, adaptation: AdaptationState, log_ratios: jax.Array
) -> AdaptationState:
    """One round of adaptation given this round's ratios at C = 1, ``(M - 1,)``.

    Past ``adapt_rounds`` rounds the state comes back unchanged (frozen), or,
    with the ``"decay"`` schedule, with C moved by :func:`decay_step`.
    """
    active = adaptation.rounds_done < adaptation.adapt_rounds
    row = jnp.minimum(adaptation.rounds_done, adaptation.adapt_rounds - 1)
    seen = adaptation.log_ratios.at[row].set(log_ratios)
    positions = adaptation.positions.at[row].set(jnp.log(adaptation.temperatures))
    c = adaptation.c
    if settings.target is not None:
        c = solve_c(seen, settings.target, adaptation.c)
    ladder = adaptation.ladder
    if settings.ladder:
        cumulative = barrier(c, seen, positions)
        ladder = respace_ladder(
            ladder, cumulative, settings.rule, settings.log_names,
            settings.dropout_temperature,
        )  # fmt: skip
    new = AdaptationState(
        c, ladder.temperatures, ladder.values, seen, positions,
        adaptation.rounds_done + 1,
    )  # fmt: skip
    new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, adaptation)
    if settings.schedule == "decay" and settings.target is not None:
        # past the window, the ratios' buffer holds the last A rounds (cyclic)
        count = adaptation.adapt_rounds
        recent = adaptation.log_ratios.at[adaptation.rounds_done % count].set(
            log_ratios
        )
        after = adaptation.rounds_done - count
        later = decay_step(adaptation.c, log_ratios, settings.target, after, recent)
        new = new._replace(
            c=jnp.where(active, new.c, later),
            log_ratios=jnp.where(active, new.log_ratios, recent),
            rounds_done=adaptation.rounds_done + 1,
        )
    return new
