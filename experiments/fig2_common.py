"""Shared driver of the paper's Fig. 2 experiments: PT against the grid.

One setting = one model, one dataset, one ladder and the authors' protocol
(DESIGN.md section 2b, read from their code): their dropout temperature
(``beta = p / (1 - p)``), C, exchange interval, learning-rate schedule, fixed
dropout of the lr runs, the whole validation split for the exchange, plain SGD
and one batch shared by every replica. For every seed it runs parallel
tempering and the independent grid (the same ladder with exchanges off: same
data split, initial weights, batches and step budget, one engine) and writes
**one result file per seed and kind**,
``<out-dir>/fig2/<setting>/seed<k>_<pt|grid>.json``, so that a long experiment
can be run piece by piece; :mod:`experiments.fig2_table` merges them (table
and figure). Every file records the temperature rule, the schedule, C and how
it was chosen, the exchange interval and the number of exchange attempts.

Run length, without changing the exchange physics:

- ``--scale s`` (or ``--steps N``, the same with ``s = N / paper steps``)
  multiplies the run's length and its schedule points (first exchange,
  learning-rate step) by ``s``. C and the exchange interval stay the authors':
  each exchange is the same Metropolis test on losses that had the same
  number of steps to drift apart; the run makes fewer of them.
- ``--exchange-interval K`` changes the interval. The authors' C was tuned to
  the loss gaps that build up over *their* interval, so a different interval
  needs a stated rule for C, ``--c-rule``: ``keep`` (the authors' C, as is) or
  ``auto`` (C tuned during the first quarter of the rounds to
  ``--target-acceptance``, then frozen: ``tempering.adaptation``), or an
  explicit ``--c``. Without one of them the script refuses to run.

Statistics, both recorded per run and both reported by the table:

- ours: the final test error (whole test set unless ``--final-test-size``) of
  the replica with the lowest final validation loss (validation-selected,
  final);
- the authors': the minimum over time of the test error of the replica whose
  test error gets lowest, each replica's per-round test-error curve smoothed
  with a Gaussian of sigma = 3 evaluation points first (test-selected,
  minimum over time: optimistic), for PT and the grid alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import tempering as tp
from experiments.common import (
    add_data_dir_arg,
    add_output_args,
    add_seeds_arg,
    as_json,
    check_same_setting,
    figure,
    final_rungs,
    output_dirs,
    provenance,
    run_evaluate,
    save_figure,
    save_seed_record,
    seed_keys,
    seed_path,
    subset,
)
from tempering.diagnostics import count_round_trips

# Per-seed result files live under RESULTS_DIR / FIG2_DIR / <setting>.
FIG2_DIR = "fig2"
KINDS = ("pt", "grid")
# Keys of a per-seed file that may differ between the files of one setting.
# (stand_in holds the reason EMNIST was unavailable, whose wording may vary.)
PER_FILE = ("provenance", "run", "seed", "kind", "note", "device", "stand_in")
# Gaussian smoothing of the test-error curves before the authors' statistic
# (DESIGN.md section 2b), in evaluation points (here: exchange rounds).
AUTHORS_SIGMA = 3.0
C_RULES = ("paper", "keep", "auto", "explicit")


class Fig2Config(NamedTuple):
    """One Fig. 2 setting (the authors' values at full scale)."""

    name: str  # setting name, e.g. "fig2_lenet_cifar10_dropout"
    hyperparameter: str  # "dropout_rate" or "learning_rate"
    low: float  # coldest ... hottest ladder values (linear ladder)
    high: float
    num_replicas: int
    c: float  # normalisation constant C of the acceptance probability
    exchange_interval: int  # SGD steps between exchanges
    burn_in: int  # SGD steps before the first exchange (lr ladders: the ladder too)
    rounds: int  # exchange rounds (attempts) after the burn-in
    learning_rate: float  # dropout ladders: every rung's lr from lr_drop_step on
    dropout_rate: float  # lr ladders: the fixed dropout of every rung
    burn_in_learning_rate: float  # lr before lr_drop_step / before the lr ladder
    batch_size: int = 128
    augment: bool = False
    # Dropout ladders: the step at which every rung's lr goes from
    # burn_in_learning_rate to learning_rate (the authors': 25k CIFAR-10, 62k
    # EMNIST, independent of the burn-in); None: at the burn-in.
    lr_drop_step: int | None = None
    # The dropout temperature rule (tempering.ladder): "authors" (beta = p / (1
    # - p), their code, which their C was tuned with) or "library" (T = 1 / p).
    dropout_temperature: str = "authors"
    scheme: str = "random_pair"  # the paper's Algorithm 1: one random pair
    c_rule: str = "paper"  # how C was chosen (C_RULES)
    paper_exchange_interval: int | None = None  # the interval the paper's C is for
    paper_num_steps: int | None = None  # the authors' run length
    target_acceptance: float = 0.3  # c_rule "auto" only

    @property
    def num_steps(self) -> int:
        """Total SGD steps per replica."""
        return self.burn_in + self.rounds * self.exchange_interval


def shaped(
    config: Fig2Config,
    scale: float = 1.0,
    *,
    exchange_interval: int | None = None,
    burn_in: int | None = None,
    rounds: int | None = None,
) -> Fig2Config:
    """The setting ``scale`` times as long: the one rule of every run length.

    The run length (the authors' ``paper_num_steps``), the first exchange and
    the learning-rate step are multiplied by ``scale``; C and the exchange
    interval are kept, so the run makes fewer exchange attempts (rounds),
    each the same Metropolis test as at full scale. The steps after the last
    whole round are dropped. ``exchange_interval``, ``burn_in`` (absolute
    steps) and ``rounds`` override; a changed interval needs a rule for C
    (:func:`apply_overrides`).

    Raises:
        ValueError: ``scale <= 0``, or no exchange round left after the burn-in.
    """
    if not scale > 0:
        raise ValueError(
            f"the run's scale must be > 0, got {scale:g}: give --scale > 0 or "
            "--steps >= 1"
        )
    full = config.paper_num_steps or config.num_steps
    config = config._replace(
        paper_num_steps=full,
        paper_exchange_interval=config.paper_exchange_interval
        or config.exchange_interval,
    )
    total = max(1, round(full * scale))
    interval = exchange_interval or config.exchange_interval
    first = round(config.burn_in * scale) if burn_in is None else burn_in
    drop = config.lr_drop_step
    if drop is not None:
        drop = round(drop * scale)
    if rounds is None:
        rounds = (total - first) // interval
    if rounds < 1:
        raise ValueError(
            f"{total} steps (scale {scale:g}) leave {total - first} steps after "
            f"the burn-in ({first}), less than one exchange interval "
            f"({interval}); give a larger --scale / --steps, or a shorter "
            "--exchange-interval with a --c-rule"
        )
    return config._replace(
        exchange_interval=interval, burn_in=first, lr_drop_step=drop, rounds=rounds
    )


def make_ladder(config: Fig2Config) -> tp.Ladder:
    """The setting's linear ladder (only the ladder's hyperparameter; the
    learning rate of a dropout ladder and the dropout of an lr ladder are set
    by :func:`phases` and :func:`run_one`)."""
    if config.hyperparameter == "dropout_rate":
        return tp.linear_ladder(
            "dropout_rate",
            config.low,
            config.high,
            config.num_replicas,
            dropout_temperature=config.dropout_temperature,
        )
    return tp.linear_ladder(
        "learning_rate", config.low, config.high, config.num_replicas
    )


def phases(config: Fig2Config) -> list[tuple[int, int, float | None]]:
    """``(first step, end step, lr of every rung or None)`` of each pt_train call.

    A dropout ladder trains at ``burn_in_learning_rate`` until
    ``lr_drop_step``, then at ``learning_rate`` (two calls of one run: same
    key, global steps, rounds and parity). An lr ladder is one call: every
    replica at ``burn_in_learning_rate`` during the burn-in, then the ladder.
    """
    total = config.num_steps
    if config.hyperparameter != "dropout_rate":
        return [(0, total, None)]
    drop = config.burn_in if config.lr_drop_step is None else config.lr_drop_step
    drop = min(max(drop, 0), total)
    parts = [
        (0, drop, config.burn_in_learning_rate),
        (drop, total, config.learning_rate),
    ]
    return [p for p in parts if p[1] > p[0]]


def schedule(config: Fig2Config) -> dict[str, Any]:
    """The run's schedule in plain numbers (recorded in every result file)."""
    out: dict[str, Any] = {
        "num_steps": config.num_steps,
        "first_exchange_step": config.burn_in + config.exchange_interval,
        "burn_in": config.burn_in,
        "exchange_interval": config.exchange_interval,
        "exchange_rounds": config.rounds,
        "evaluation_dropout": "off (train=False)",
    }
    if config.hyperparameter == "dropout_rate":
        out["learning_rate"] = [
            {"from_step": start, "learning_rate": lr} for start, _, lr in phases(config)
        ]
        out["lr_drop_step"] = config.lr_drop_step
    else:
        out["learning_rate"] = [
            {"from_step": 0, "learning_rate": config.burn_in_learning_rate},
            {"from_step": config.burn_in, "learning_rate": "ladder"},
        ]
        out["fixed_dropout_rate"] = config.dropout_rate
    return out


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Arguments every Fig. 2 script takes."""
    add_data_dir_arg(p)
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="run length and schedule points x scale; C and interval kept (1 = paper)",
    )
    length.add_argument(
        "--steps",
        type=int,
        default=None,
        help="total steps per replica (the same as --scale steps / paper steps)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="exchange rounds after the burn-in (sets the length; --scale still "
        "scales the burn-in and the lr drop)",
    )
    p.add_argument(
        "--burn-in", type=int, default=None, help="steps before the first exchange"
    )
    p.add_argument(
        "--exchange-interval",
        type=int,
        default=None,
        help="steps between exchanges; other than the paper's needs --c-rule or --c",
    )
    p.add_argument(
        "--c-rule",
        choices=["keep", "auto"],
        default=None,
        help="C at a non-paper interval: keep the paper's C, or tune it "
        "(c='auto', --target-acceptance) in the first quarter of the rounds",
    )
    p.add_argument("--target-acceptance", type=float, default=0.3)
    p.add_argument("--c", type=float, default=None, help="override C")
    p.add_argument(
        "--dropout-temperature",
        choices=list(tp.ladder.DROPOUT_TEMPERATURES),
        default="authors",
        help="dropout ladders: 'authors' beta = p/(1-p) (default, their C is "
        "tuned to it) or 'library' T = 1/p",
    )
    p.add_argument(
        "--scheme",
        choices=["random_pair", "even_odd"],
        default="random_pair",
        help="exchange proposals: the paper's one random pair (default) or even-odd",
    )
    add_seeds_arg(p, [0, 1, 2])
    p.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    p.add_argument("--replicas", type=int, default=None, help="M (paper: 8)")
    p.add_argument("--batch-size", type=int, default=None, help="paper: 128")
    p.add_argument("--train-size", type=int, default=None, help="subsample train")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="validation examples the exchange sees (default: the whole split)",
    )
    p.add_argument(
        "--test-curve-size",
        type=int,
        default=None,
        help="test examples evaluated every round (default: all)",
    )
    p.add_argument(
        "--eval-size",
        type=int,
        default=None,
        help="sets both --val-size and --test-curve-size (earlier runs' flag)",
    )
    p.add_argument(
        "--final-test-size",
        type=int,
        default=None,
        help="test examples of the final evaluation (default: all)",
    )
    add_output_args(p, None)
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="save each run's checkpoints under DIR/<setting>/seed<k>_<kind> "
        "and resume from them: the same command carries on a killed run",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        help="exchange rounds between checkpoints (with --checkpoint-dir)",
    )
    p.add_argument("--note", default="", help="free text stored in the result")


def check_flags(args: argparse.Namespace) -> None:
    """Refuses flags that contradict each other or are out of range.

    Every conflict is refused rather than resolved silently: ``--c`` fixes C,
    ``--c-rule`` states how C is chosen (one or the other); ``--rounds`` sets
    the run's length, which ``--steps`` also sets; ``--eval-size`` sets both
    ``--val-size`` and ``--test-curve-size``.

    Raises:
        ValueError: naming the flags.
    """
    value = functools.partial(getattr, args)
    if value("c", None) is not None:
        if not value("c") > 0:
            raise ValueError(f"--c must be > 0, got {value('c'):g}")
        if value("c_rule", None) is not None:
            raise ValueError(
                f"--c {value('c'):g} fixes C and --c-rule {value('c_rule')} states "
                "how C is chosen: give one of them, not both"
            )
    if value("steps", None) is not None and value("rounds", None) is not None:
        raise ValueError(
            "--rounds sets the run's length (--burn-in + rounds x "
            "--exchange-interval), which --steps also sets: give one of them"
        )
    if value("eval_size", None) is not None:
        both = [
            f for f in ("val_size", "test_curve_size") if value(f, None) is not None
        ]
        if both:
            flags = " and ".join("--" + f.replace("_", "-") for f in both)
            raise ValueError(
                f"--eval-size sets both --val-size and --test-curve-size; give it "
                f"or {flags}, not both"
            )
    if not 0 < value("target_acceptance", 0.3) < 1:
        raise ValueError(
            f"--target-acceptance must be in (0, 1), got {value('target_acceptance')}"
        )
    minimum = {
        "steps": 1, "rounds": 1, "burn_in": 0, "exchange_interval": 1,
        "replicas": 1, "batch_size": 1, "train_size": 1, "val_size": 1,
        "test_curve_size": 1, "eval_size": 1, "final_test_size": 1,
        "checkpoint_every": 1,
    }  # fmt: skip
    for name, low in minimum.items():
        if value(name, None) is not None and value(name) < low:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be >= {low}, got {value(name)}")


def check_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, config: Fig2Config
) -> Fig2Config:
    """:func:`apply_overrides`, its refusals as ``parser.error`` (before any
    data is loaded or any run starts)."""
    try:
        return apply_overrides(config, args)
    except ValueError as err:
        parser.error(str(err))


def apply_overrides(config: Fig2Config, args: argparse.Namespace) -> Fig2Config:
    """Length, interval, C rule and command-line overrides; never a silent C.

    The setting's name gets a suffix for any run that is not the authors'
    (``_<steps>steps_every<interval>``, ``_cauto`` / ``_cexplicit``,
    ``_betalibrary``), so runs of different settings never share a folder;
    ``--name`` replaces it.

    Raises:
        ValueError: an exchange interval other than the paper's without
            ``--c-rule`` or ``--c``, flags that contradict each other
            (``--c`` with ``--c-rule``, ``--steps`` with ``--rounds``,
            ``--eval-size`` with ``--val-size`` / ``--test-curve-size``), a
            value out of range (``--c`` <= 0, ``--scale`` <= 0, a size < 1),
            or no exchange round left. Each names its flags.
    """
    check_flags(args)
    paper_steps = config.paper_num_steps or config.num_steps
    full_steps = shaped(config).num_steps  # whole rounds of the paper's run
    scale = args.scale
    if getattr(args, "steps", None) is not None:
        scale = args.steps / paper_steps
    config = shaped(
        config,
        scale,
        exchange_interval=args.exchange_interval,
        burn_in=args.burn_in,
        rounds=args.rounds,
    )
    config = config._replace(
        dropout_temperature=getattr(
            args, "dropout_temperature", config.dropout_temperature
        ),
        scheme=getattr(args, "scheme", config.scheme),
        target_acceptance=getattr(args, "target_acceptance", 0.3),
    )
    if args.replicas is not None:
        config = config._replace(num_replicas=args.replicas)
    if args.batch_size is not None:
        config = config._replace(batch_size=args.batch_size)
    c_rule = getattr(args, "c_rule", None)
    if args.c is not None:
        config = config._replace(c=args.c, c_rule="explicit")
    elif c_rule == "auto":
        config = config._replace(c_rule="auto")
    elif config.exchange_interval != config.paper_exchange_interval:
        if c_rule != "keep":
            raise ValueError(
                f"exchange interval {config.exchange_interval} differs from the "
                f"paper's {config.paper_exchange_interval}, for which C = "
                f"{config.c:g} was tuned; state a rule for C: --c-rule keep (the "
                "paper's C, as is), --c-rule auto (tuned to --target-acceptance) "
                "or --c VALUE"
            )
        config = config._replace(c_rule="keep")
    if args.name:
        return config._replace(name=args.name)
    name = config.name
    if config.num_steps != full_steps or (
        config.exchange_interval != config.paper_exchange_interval
    ):
        name += f"_{config.num_steps}steps_every{config.exchange_interval}"
    if config.c_rule in ("auto", "explicit"):
        name += f"_c{config.c_rule}"
    dropout = config.hyperparameter == "dropout_rate"
    if dropout and config.dropout_temperature != "authors":
        name += f"_beta{config.dropout_temperature}"
    return config._replace(name=name)


def authors_statistic(
    test_error: np.ndarray, sigma: float = AUTHORS_SIGMA
) -> dict[str, Any]:
    """The authors' reported number for one run (DESIGN.md section 2b).

    The minimum over time of the test error of the replica whose test error
    gets lowest, after Gaussian smoothing of each replica's curve along time
    (``scipy.ndimage.gaussian_filter1d``, sigma in evaluation points, its
    default ``reflect`` ends): test-selected, so optimistic.

    Args:
        test_error: ``(R, M)`` test error of replica m at evaluation r.
        sigma: the smoothing; 0 for none.

    Returns:
        ``value`` (the statistic), ``replica`` and ``round`` where it is
        reached, ``raw_min`` (the same minimum without smoothing), ``sigma``.
    """
    err = np.asarray(test_error, np.float64)
    if err.ndim != 2 or err.shape[0] == 0 or not np.any(np.isfinite(err)):
        return {"value": float("nan"), "replica": -1, "round": -1,
                "raw_min": float("nan"), "sigma": sigma}  # fmt: skip
    smooth = err
    if sigma > 0 and err.shape[0] > 1:
        from scipy.ndimage import gaussian_filter1d

        smooth = gaussian_filter1d(err, sigma, axis=0)
    smooth = np.where(np.isfinite(smooth), smooth, np.inf)
    r, m = np.unravel_index(int(np.argmin(smooth)), smooth.shape)
    return {
        "value": float(smooth[r, m]),
        "replica": int(m),
        "round": int(r),
        "raw_min": float(np.nanmin(err)),
        "sigma": sigma,
    }


def run_one(
    config: Fig2Config,
    model: Any,
    tx: Any,
    data: tp.data.Dataset,
    seed: int,
    exchanges: bool,
    val_size: int | None,
    augment: Callable | None,
    final_test_size: int | None = None,
    test_curve_size: int | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 10,
) -> dict[str, Any]:
    """One PT (or grid) run; returns its per-round curves and final metrics.

    With ``checkpoint_dir``, each ``pt_train`` call of the run checkpoints into
    ``checkpoint_dir / phase<i>`` and resumes from there: a killed run, started
    again with the same arguments, carries on bit for bit (a finished phase
    returns its result without training).
    """
    ladder = make_ladder(config)
    train = data.train
    fixed = {}
    if config.hyperparameter == "learning_rate":
        fixed = {"dropout_rate": config.dropout_rate}
    init_key, key = seed_keys(seed)
    state = tp.create_replicas(
        init_key, model, tx, train.inputs[:2], ladder=ladder, hyperparams=fixed
    )
    c: float | str = "auto" if config.c_rule == "auto" else config.c
    auto = {}
    if config.c_rule == "auto":
        auto = {
            "target_acceptance": config.target_acceptance,
            "adapt_rounds": max(1, config.rounds // 4),
        }
    burn_in_hyperparams = None
    if config.hyperparameter == "learning_rate":
        burn_in_hyperparams = {"learning_rate": config.burn_in_learning_rate}
    resumed = checkpoint_dir is not None and any(Path(checkpoint_dir).glob("phase*/*"))
    start = time.time()
    histories, result = [], None
    parts = phases(config)
    move_state = None  # the exchange's state, carried from phase to phase
    for index, (first, end, lr) in enumerate(parts):
        if lr is not None:
            state = tp.set_hyperparams(state, learning_rate=lr)
        resume = {}
        if checkpoint_dir is not None:
            resume = {
                "checkpoint_dir": Path(checkpoint_dir).absolute() / f"phase{index}",
                "checkpoint_every": checkpoint_every,
            }
        with warnings.catch_warnings():
            if index < len(parts) - 1:  # the next call continues the run
                warnings.filterwarnings("ignore", "num_steps=.*ends before")
            result = tp.pt_train(
                state,
                ladder,
                key,
                train_data=train,
                validation_data=subset(data.validation, val_size),
                test_data=subset(data.test, test_curve_size),
                num_steps=end - first,
                exchange_interval=config.exchange_interval,
                burn_in=config.burn_in,
                c=c,
                scheme=config.scheme,
                exchanges=exchanges,
                batch_size=config.batch_size,
                augment=augment,
                burn_in_hyperparams=burn_in_hyperparams,
                move_state=move_state,
                **auto,
                **resume,
            )
        state, move_state = result.state, result.move_state
        histories.append(result.history)
    wall = time.time() - start
    h, s = tp.History.concatenate(histories), result.summary
    initial_rungs = np.asarray(h.initial_rungs)
    test_error = 1.0 - h.test_accuracy  # (R, M)
    val_loss = h.val_loss
    selected = np.argmin(np.where(np.isfinite(val_loss), val_loss, np.inf), axis=1)
    selected_error = test_error[np.arange(len(selected)), selected]
    # replica m's curve, and the curve of the replica on rung r (grid: the same)
    by_rung = np.empty_like(test_error)
    path = np.concatenate([initial_rungs[None], h.rungs[:-1]])  # during round
    for r in range(test_error.shape[0]):
        by_rung[r, path[r]] = test_error[r]
    final_test = subset(data.test, final_test_size)
    final = run_evaluate(state, final_test.inputs, final_test.labels)
    final_error = 1.0 - np.asarray(final.accuracy)
    accepted, proposed = h.accepted.sum(0), h.proposed.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(proposed > 0, accepted / np.maximum(proposed, 1), np.nan)
    best = int(s.best_replica)
    with warnings.catch_warnings():  # a pair never proposed: all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_prob = np.nanmean(h.acceptance_prob, axis=0)
    return {
        "seed": seed,
        "exchanges": exchanges,
        "wall_time_s": wall,  # this process only, when resumed
        "resumed_from_checkpoint": resumed,
        "step": h.step,
        "epoch": h.step * config.batch_size / len(train.labels),
        "val_loss": val_loss,
        "test_error_by_replica": test_error,
        "test_error_by_rung": by_rung,
        "selected_replica": selected,
        "selected_test_error": selected_error,
        "rungs": h.rungs,
        "initial_rungs": initial_rungs,
        "accepted": accepted,
        "proposed": proposed,
        "acceptance_rate": rate,
        "mean_acceptance_prob": mean_prob,
        "c_used": h.c,
        "exchange_attempts": int(len(h.step)),
        "pairs_proposed": int(proposed.sum()),
        "round_trips": count_round_trips(
            np.concatenate([initial_rungs[None], h.rungs]), ladder.num_rungs
        ),
        "best_replica": best,
        "final_val_loss": s.final_val_loss,
        "final_test_error": final_error,
        # ours: the final test set (all of it unless --final-test-size),
        # replica with the lowest final validation loss
        "best_test_error": float(final_error[best]),
        "min_test_error": float(final_error.min()),
        # the authors': min over time of the smoothed per-round test error of
        # the replica whose test error gets lowest
        "authors_statistic": authors_statistic(test_error),
        "final_rungs": final_rungs(h),
    }


def checkpoint_path(args: Any, name: str, seed: int, kind: str) -> Path | None:
    """Where one run's checkpoints live (None without ``--checkpoint-dir``)."""
    root = getattr(args, "checkpoint_dir", None)
    return None if root is None else Path(root) / name / f"seed{seed}_{kind}"


def protocol(
    config: Fig2Config, ladder: tp.Ladder, data: tp.data.Dataset, args: Any
) -> dict[str, Any]:
    """What makes two runs comparable, recorded in every result file."""
    val_size = _size(args, "val_size", len(data.validation.labels))
    return {
        "dropout_temperature": config.dropout_temperature
        if config.hyperparameter == "dropout_rate"
        else None,
        "ladder_dropout_temperature": ladder.dropout_temperature,
        "temperatures": np.asarray(ladder.temperatures),
        "betas": np.asarray(ladder.betas),
        "c": config.c,
        "c_rule": config.c_rule,
        "target_acceptance": config.target_acceptance
        if config.c_rule == "auto"
        else None,
        "exchange_interval": config.exchange_interval,
        "paper_exchange_interval": config.paper_exchange_interval,
        "scheme": config.scheme,
        "exchange_attempts": config.rounds,
        "num_steps": config.num_steps,
        "paper_num_steps": config.paper_num_steps,
        "schedule": schedule(config),
        "validation_size": val_size,
        "test_curve_size": _size(args, "test_curve_size", len(data.test.labels)),
        "final_test_size": min(
            args.final_test_size or len(data.test.labels), len(data.test.labels)
        ),
        "authors_sigma": AUTHORS_SIGMA,
    }


def _size(args: Any, name: str, full: int) -> int:
    size = getattr(args, name, None)
    if size is None:
        size = getattr(args, "eval_size", None)
    return full if size is None else min(size, full)


def run_experiment(
    config: Fig2Config,
    model: Any,
    tx: Any,
    data: tp.data.Dataset,
    args: argparse.Namespace,
    *,
    augment: Callable | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """PT and grid over every seed; one result file per seed and kind.

    Returns:
        The runs of this call merged as :mod:`experiments.fig2_table` merges
        files (``runs``: kind -> list), with the file paths.
    """
    if args.train_size:
        data = data._replace(train=subset(data.train, args.train_size))
    if getattr(args, "val_size", None) is None:
        args.val_size = getattr(args, "eval_size", None)
    if getattr(args, "test_curve_size", None) is None:
        args.test_curve_size = getattr(args, "eval_size", None)
    ladder = make_ladder(config)
    proto = protocol(config, ladder, data, args)
    shared = {
        "setting": config.name,
        "config": config._asdict() | {"num_steps": config.num_steps},
        "protocol": proto,
        "ladder": {k: np.asarray(v) for k, v in ladder.values.items()},
        "dataset": data.name,
        "num_train": len(data.train.labels),
        "scale": config.num_steps / config.paper_num_steps,
        **(extra or {}),
    }
    folder = Path(args.out_dir) / FIG2_DIR / config.name
    check_setting_folder(folder, shared_part(shared))
    runs: dict[str, list] = {kind: [] for kind in KINDS}
    paths = []
    for seed in args.seeds:
        for kind in args.kinds:
            run = run_one(
                config,
                model,
                tx,
                data,
                seed,
                kind == "pt",
                args.val_size,
                augment,
                args.final_test_size,
                args.test_curve_size,
                checkpoint_dir=checkpoint_path(args, config.name, seed, kind),
                checkpoint_every=getattr(args, "checkpoint_every", 10),
            )
            payload = {
                "provenance": provenance([seed], outputs=output_dirs(args)),
                **shared,
                "kind": kind,
                "seed": seed,
                "device": jax.default_backend(),
                "note": args.note,
                "run": run,
            }
            path = seed_path(Path(args.out_dir) / FIG2_DIR, config.name, seed, kind)
            runs[kind].append(save_seed_record(path, payload)["run"])
            paths.append(path)
            stat = run["authors_statistic"]["value"]
            print(
                f"{config.name} seed {seed} {kind}: ours (best-val replica, final) "
                f"{100 * run['best_test_error']:.2f}%, authors' (test-selected, "
                f"min over time) {100 * stat:.2f}%, "
                f"{run['exchange_attempts']} exchange attempts, "
                f"{run['wall_time_s']:.0f}s -> {path}",
                flush=True,
            )
    return {"config": config._asdict(), "protocol": proto, "runs": runs,
            "paths": paths}  # fmt: skip


def shared_part(record: dict) -> dict:
    """What every file of one setting must record alike: all but :data:`PER_FILE`."""
    return {k: v for k, v in record.items() if k not in PER_FILE}


def check_setting_folder(folder: Path, shared: dict) -> None:
    """A ValueError before any training where ``folder`` holds files of other settings.

    ``shared``: what this run's files will record alike (:func:`shared_part`);
    a file of another setting would be merged into no table (fig2_table and
    claims refuse the folder), so the run would be wasted.
    """
    files = sorted(Path(folder).glob("seed*_*.json"))
    here = Path("this run's settings")
    check_same_setting(
        [(here, as_json(shared))]
        + [(path, shared_part(json.loads(path.read_text()))) for path in files],
        folder,
    )


def plot_experiment(payload: dict[str, Any], path: Path) -> None:
    """Error curves, replica paths and acceptance rates of one setting.

    ``payload``: ``config`` and ``ladder`` of the setting, ``runs`` (kind ->
    list of runs, one per seed), as :mod:`experiments.fig2_table` merges them.
    """
    from experiments.plots import plot_acceptance, plot_error_curves, plot_replica_paths

    runs, config = payload["runs"], payload["config"]
    values = next(iter(v for v in payload["ladder"].values() if np.ptp(v) > 0))
    epochs = np.asarray(runs["pt"][0]["epoch"])
    curves, stds = {}, {}
    grid_by_rung = np.stack([r["test_error_by_rung"] for r in runs["grid"]])
    for rung, value in enumerate(values):
        curves[f"grid {config['hyperparameter']}={value:.4g}"] = grid_by_rung[
            :, :, rung
        ].mean(0)
    for label, kind in (("grid best (by val)", "grid"), ("PT", "pt")):
        sel = np.stack([r["selected_test_error"] for r in runs[kind]])
        curves[label], stds[label] = sel.mean(0), sel.std(0)
    fig, axes = figure(3, (17, 4.5))
    finals = np.concatenate([c[-max(1, len(c) // 2) :] for c in curves.values()])
    lo, hi = 100 * np.nanmin(finals), 100 * np.nanmax(finals)
    pad = 0.3 * (hi - lo) + 0.5
    plot_error_curves(
        axes[0],
        epochs,
        curves,
        std_by_label=stds,
        highlight=("PT", "grid best (by val)"),
        title=f"{config['name']} ({len(runs['pt'])} seeds)",
        ylim=(max(0.0, lo - pad), hi + pad),
    )
    first = runs["pt"][0]
    plot_replica_paths(
        axes[1],
        first["rungs"],
        first["initial_rungs"],
        first["best_replica"],
        steps=first["step"],
        rung_labels=[f"{v:.4g}" for v in values],
        title=f"PT replica paths (seed {first['seed']})",
    )
    rates = np.array([r["acceptance_rate"] for r in runs["pt"]], np.float64)
    plot_acceptance(axes[2], np.nanmean(rates, 0), std=np.nanstd(rates, 0))
    save_figure(fig, path, dpi=100)
