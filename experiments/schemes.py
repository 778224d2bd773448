"""Round trips of the two exchange schemes at the same acceptance, no training.

Which scheme mixes hyperparameters faster? A round trip (a replica going from
the coldest rung to the hottest and back) needs many rounds, more than the
training comparisons of ``experiments.compare`` have (18 rounds there: no
replica of either scheme completes one). Here the exchange runs alone, many
rounds, on a synthetic loss model: the validation loss of a replica is the
loss of its rung plus noise, ``L = r * gap + noise * N(0, 1)``, so a colder
rung is better on average and swaps are accepted at a rate set by C. C is
tuned once, as ``c="auto"`` tunes it for its default target 0.3
(``tempering.adaptation.solve_c`` on 200 rounds of ratios), and both schemes
run at that C the same number of rounds with the same keys. About a quarter
of the swaps are favourable (the hotter replica has the lower loss: always
accepted), so the rule aims the unfavourable swaps at that share and the mean
acceptance, in the table, is above 0.3.

    python -m experiments.schemes
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import (
    add_output_args,
    add_seeds_arg,
    fmt_mean_std,
    output_dirs,
    provenance,
    settings_of,
    write_outputs,
)
from tempering.adaptation import solve_c
from tempering.diagnostics import count_round_trips, independent_round_trip_rate
from tempering.exchange import exchange, pair_log_ratios

GAP, NOISE, TARGET = 1.0, 1.0, 0.3


def losses(key: jax.Array, rungs: jax.Array) -> jax.Array:
    """Synthetic validation losses: the rung's loss plus per-replica noise."""
    return GAP * rungs + NOISE * jax.random.normal(key, rungs.shape)


def tuned_c(key: jax.Array, num: int) -> jax.Array:
    """C at which the mean acceptance is TARGET on this loss model."""
    betas = 1.0 / jnp.arange(1.0, num + 1.0)
    rungs = jnp.arange(num)
    ratios = jax.vmap(lambda k: pair_log_ratios(rungs, losses(k, rungs), betas))(
        jax.random.split(key, 200)
    )
    return solve_c(ratios, TARGET, jnp.float32(1.0))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def run(key: jax.Array, num: int, rounds: int, scheme: str, c: jax.Array):
    """Rung of every replica after every round, and the mean acceptance."""
    betas = 1.0 / jnp.arange(1.0, num + 1.0)

    def step(rungs, inputs):
        key, r = inputs
        loss_key, swap_key = jax.random.split(key)
        new, info = exchange(
            swap_key, rungs, losses(loss_key, rungs), betas, c=c, scheme=scheme,
            parity=r % 2,
        )  # fmt: skip
        chance = jnp.where(info.proposed, info.acceptance_prob, 0.0)
        return new, (new, info.acceptance_prob.mean(), chance, info.proposed)

    keys = jax.random.split(key, rounds)
    _, (path, acceptance, chance, proposed) = jax.lax.scan(
        step, jnp.arange(num), (keys, jnp.arange(rounds))
    )
    return path, acceptance.mean(), chance.sum(0), proposed.sum(0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rungs", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--rounds", type=int, default=2000)
    add_seeds_arg(parser, 20)
    add_output_args(parser, "schemes_round_trips")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"argument --rounds must be >= 1, got {args.rounds}")
    if min(args.rungs) < 2:
        parser.error(f"argument --rungs: a ladder needs >= 2 rungs, got {args.rungs}")
    results = {}
    lines = [
        f"Exchange alone on a synthetic loss model (rung loss r·{GAP:g} + N(0, "
        f"{NOISE:g}) noise, T_r = r + 1), C as c='auto' tunes it for target "
        f"{TARGET}, the same for both schemes; "
        f"{args.rounds} rounds, {args.seeds} seeds, mean ± std. Exact: the rate "
        "for independent swaps at each pair's measured acceptance (the "
        "round_trip_expected of tempering.diagnostics.barrier).",
        "",
        "| rungs M | scheme | round trips per replica | mean acceptance | "
        "round trips per round, all replicas | exact, for the pairs' acceptance |",
        "|---|---|---|---|---|---|",
    ]
    for num in args.rungs:
        c = tuned_c(jax.random.key(num), num)
        for scheme in ("even_odd", "random_pair"):
            trips, accept, chances, proposals = [], [], 0.0, 0
            for seed in range(args.seeds):
                path, acc, chance, proposed = run(
                    jax.random.key(seed), num, args.rounds, scheme, c
                )
                path = np.concatenate([np.arange(num)[None], np.asarray(path)])
                trips.append(count_round_trips(path, num).mean())
                accept.append(float(acc))
                chances += np.asarray(chance, np.float64)
                proposals += np.asarray(proposed, np.int64)
            with np.errstate(invalid="ignore"):  # NaN: a pair never proposed
                per_pair = chances / proposals  # over every seed
            rates = np.asarray(trips) * num / args.rounds
            exact = independent_round_trip_rate(1.0 - per_pair, scheme)
            results[f"{num}/{scheme}"] = {
                "c": float(c), "round_trips_per_replica": trips, "acceptance": accept,
                "pair_acceptance": per_pair.tolist(), "round_trip_rate": rates.tolist(),
                "round_trip_exact": exact,
            }  # fmt: skip
            lines.append(
                f"| {num} | {scheme} | {fmt_mean_std(trips)} | "
                f"{fmt_mean_std(accept, digits=3)} | "
                f"{rates.mean():.4f} ± {rates.std(ddof=1) / np.sqrt(len(rates)):.4f} "
                f"s.e. | {exact:.4f} |"
            )
    table = "\n".join(lines) + "\n"
    payload = {
        "provenance": provenance(list(range(args.seeds)), outputs=output_dirs(args)),
        "settings": settings_of(args),
        "model": {"gap": GAP, "noise": NOISE, "target": TARGET},
        "results": results,
        "table": table,
    }
    write_outputs(args, payload, table)
    return payload


if __name__ == "__main__":
    main()
