"""The one driver: burn-in, then rounds of segment -> evaluate -> move.

:func:`train` runs any move (:mod:`tempering.moves`); :func:`tempering.pt_train`,
:func:`tempering.pbt_train`, :func:`tempering.replay.replay_schedule` and
:func:`tempering.diffusion.diffusion_test` are thin wrappers around it.

Steps are global: ``state.step`` says where a run stands, so a second call
with the same key continues the first. Steps ``[0, burn_in)`` are the burn-in
(round 0, no move); round r >= 1 covers the ``interval`` steps after
``burn_in + (r - 1) * interval`` and ends with an evaluation and a move. The
keys of round r are ``fold_in(key, r)``, whichever call runs it, so N + K
steps in two calls are the N + K steps of one call, bit for bit. A call that
ends part-way through a round leaves the rest of it (and its move) to the
next call.

Every round's record goes to the host as numpy when the round ends (no device
memory is held per round; the host keeps a few hundred bytes per round) and to
the optional callback, which may stop the run. In-memory data continues
exactly across calls; a stream continues from wherever the caller's iterator
is (a re-iterable, such as a list of batches, starts again in each call, with
a warning when the call continues a run), and a resume from a checkpoint from the saved position when the stream can
save one (:mod:`tempering.sources`). A move skipped at the end of a call
(``move_at_end=False``, PBT) is not made up by the next call.

Nothing trained is lost: a :class:`~tempering.divergence.DivergenceError`, a
bad streamed batch (:class:`~tempering.sources.BatchError`) or any other error
during the rounds (a callback's or logger's) carries the replicas after the
last round that ended finite, the move's state and the history
(``error.state``, ``error.move_state``, ``error.history``); with
``checkpoint_dir`` that round is checkpointed too, so the same call (its data
mended) resumes from it.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, NamedTuple, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from tempering import divergence, fingerprints, resume, sharding
from tempering._caller import warn
from tempering._quick_jit import quick_jit
from tempering.batches import BatchReader
from tempering.config import MAX_STEP, Rounds, RunConfig, RunData, ScoreFn
from tempering.hyperparams import check_names, set_hyperparams
from tempering.loops import SegmentSettings, loop_for, run_evaluate, run_segment
from tempering.moves import ExchangeMove, as_move, rungs_of
from tempering.records import History, RecordRows, RoundRecord, brief_repr
from tempering.sources import (
    BatchError,
    RunSources,
    check_first_batch,
    check_scores_shape,
    prepare_sources,
)
from tempering.sources import metric_names as metric_names_of
from tempering.state import EvalMetrics, ReplicaState, check_key, check_state
from tempering.step import zero_model_inputs

__all__ = ["RunResult", "best_index", "ranked_last", "train"]


class RunResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
        state: the replicas at the end of the call.
        history: one record per round (:class:`tempering.History`).
        final: ``(M,)`` loss and metrics on ``validation_data`` at the end of
            the call (None without validation data).
        final_score: ``(M,)`` the ``score_fn`` of ``final`` (lower is better).
        diverged: ``(M,)`` bool, replicas non-finite at the end.
        interrupted: stopped early by Ctrl-C (after a whole round).
        move_state: the move's state at the end: pass it on to continue.
    """

    state: ReplicaState
    history: History
    final: EvalMetrics | None  # (M,) on validation_data at the end of the call
    final_score: np.ndarray | None  # shape=(M,), score_fn of final (lower is better)
    diverged: np.ndarray  # shape=(M,), bool; non-finite at the end of the call
    interrupted: bool = False  # stopped early by Ctrl-C (after a whole round)
    move_state: Any = None  # the move's state at the end: pass it on to continue

    def __repr__(self) -> str:
        return brief_repr(self)


def ranked_last(run: RunResult) -> np.ndarray:
    """Replicas a summary never reports best: diverged, or replaced at the end.

    A replica whose weights were replaced at the call's last step (restored
    after diverging, or PBT's exploit with ``exploit_at_end``) ties with its
    source at the final evaluation, yet holds values that never trained:
    the source, which earned the score, is the one to report.

    Args:
        run: the call's result (its history, end state and diverged flags).

    Returns:
        shape ``(M,)``, bool.
    """
    history = run.history
    last = run.diverged.copy()
    if len(history.step) and int(history.step[-1]) == int(run.state.step):
        last |= history.restored_from[-1] >= 0
        copied = getattr(history.move, "copied", None)
        if copied is not None:
            last |= np.asarray(copied[-1], bool)
    return last if not last.all() else run.diverged


def best_index(scores: Any, diverged: Any = None) -> int:
    """Index of the lowest score; NaN, inf and ``diverged`` replicas count as worst.

    ``diverged`` (bool, shape ``(M,)``) rules a replica out whatever its score:
    a score_fn blind to NaN outputs may score a diverged replica best.
    """
    scores = np.asarray(scores, np.float64)
    worst = ~np.isfinite(scores)
    if diverged is not None:
        worst |= np.asarray(diverged, bool)
    return int(np.argmin(np.where(worst, np.inf, scores)))


class _Segment(NamedTuple):
    round: int  # the round's number: its keys are fold_in(key, round)
    start: int  # index within the round of its first step
    steps: int
    ends_round: bool  # the round is complete after it
    evaluated: bool  # a complete round is evaluated and followed by a move
    round_index: int  # what the move sees (0 for the first evaluated round)


def plan(first_step: int, sched: Rounds) -> list[_Segment]:
    """The segments of a call that starts at global step ``first_step``."""
    segments, step, end = [], first_step, first_step + sched.num_steps
    if sched.ends:
        if end > sched.ends[-1]:
            raise ValueError(
                f"num_steps={sched.num_steps} from step {first_step} runs past the "
                f"last round end {sched.ends[-1]}"
            )
        for r, (low, high) in enumerate(
            zip((0, *sched.ends), sched.ends, strict=False)
        ):
            lo, hi = max(low, step), min(high, end)
            if lo < hi:
                segments.append(_Segment(r, lo - low, hi - lo, hi == high, True, r))
        return segments
    while step < end:
        if step < sched.burn_in:
            steps = min(sched.burn_in, end) - step
            segments.append(_Segment(0, step, steps, False, False, -1))
        else:
            done, offset = divmod(step - sched.burn_in, sched.interval)
            steps = min(sched.interval - offset, end - step)
            complete = offset + steps == sched.interval
            segments.append(_Segment(done + 1, offset, steps, complete, True, done))
        step += steps
    return segments


def check_not_traced(state: ReplicaState) -> None:
    """Raises TypeError unless ``state`` is a concrete ReplicaState (no jax.jit)."""
    check_state(
        state,
        "the training drivers (pt_train, pbt_train, train, diffusion_test)",
        continues=True,
    )
    if isinstance(state.step, jax.core.Tracer):
        raise TypeError(
            "the training drivers (pt_train, pbt_train, train) run on the host: "
            "they loop over rounds in Python and read records back, so they "
            "cannot be traced by jax.jit/vmap/grad. Call them outside jax.jit "
            "(every step inside is compiled already); to compile your own loop, "
            "use tempering.train_step or tempering.loops.train_segment"
        )


def _move_name(move: Any) -> str:
    """The progress bar's name of a move: its type's, the grid's its own."""
    if isinstance(move, ExchangeMove) and not move.enabled:
        return "grid"
    return type(move).__name__


def _progress(total: int, enabled: bool | None, name: str):
    """The call's progress bar (tqdm), or None: off, or tqdm is not installed.

    ``enabled=None`` is "auto": on inside a Jupyter or IPython kernel (a
    notebook: Jupyter, VS Code, Colab), off elsewhere (scripts, pytest, CI).
    In a kernel the bar is tqdm.auto's widget when ipywidgets is installed,
    else tqdm's text bar, chosen here so that tqdm.auto never warns
    ``IProgress not found``.
    """
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has it
    shell = ipython.get_ipython() if ipython is not None else None
    in_kernel = getattr(shell, "kernel", None) is not None
    if not (in_kernel if enabled is None else enabled):
        return None
    try:
        from tqdm.std import tqdm
    except ImportError:  # pragma: no cover
        if enabled:  # asked for by name: say why there is none
            warn(
                "progress=True needs tqdm, which is not installed: pip install "
                'tqdm (or "tempering[experiments]"); the call runs without a bar',
                UserWarning,
            )
        return None
    if in_kernel:
        try:
            from tqdm import notebook
        except ImportError:  # pragma: no cover
            notebook = None
        if getattr(notebook, "IProgress", None) is not None:  # ipywidgets
            return notebook.tqdm(total=total, desc=name, unit="step")
    return tqdm(total=total, desc=name, unit="step", file=sys.stderr)


def _run_alike(
    key: jax.Array, state: ReplicaState, move: Any, move_state: Any, config: RunConfig
):
    """What every process of a ``jax.distributed`` run must pass alike.

    The key, state and move state (on a mesh of each process's own devices
    nothing else compares them: each process would train its own replicas
    while process 0 reports), and the settings that fix the run's
    collectives (a process with other steps or rounds would wait for the
    others until a timeout). Compared before any check one process alone
    could fail.
    """

    def text(value: Any) -> np.ndarray:
        return np.frombuffer(fingerprints.stable_repr(value).encode(), np.uint8)

    settings = {
        name: text(getattr(config, name))
        for name in ("num_steps", "interval", "burn_in", "batch_size", "shared_batch",
                     "eval_batch_size", "move_at_end", "on_diverge", "vectorize",
                     "loop", "checkpoint_every")
    }  # fmt: skip
    return {
        "key": key,
        "state.step": np.int64(state.step),
        "state": (state.params, state.batch_stats, state.opt_state, state.hyperparams),
        "move_state": move_state,
        **settings,
        "move": np.frombuffer(fingerprints.describe_move(move).encode(), np.uint8),
    }


def _host(tree: Any) -> Any:
    return sharding.to_host(tree)  # numpy copies, gathered over processes


@quick_jit
def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


# The run's keys, each in one small program (not several eager operations, each
# compiled before the first step).
@quick_jit
def _split_off_data_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    data_key, key = jax.random.split(key)
    return data_key, key


@quick_jit
def _round_keys(key: jax.Array, round_index: jax.Array) -> tuple[jax.Array, jax.Array]:
    segment_key, move_key = jax.random.split(jax.random.fold_in(key, round_index))
    return segment_key, move_key


def _apply_move(move, key, state, move_state, scores, round_index, mesh=None):
    state, move_state, info = move.step(key, state, move_state, scores, round_index)
    if mesh is not None:
        move_state = sharding.constrain_replicated(move_state, mesh)
    return sharding.constrain(state, mesh), move_state, info


def _dtype_of(leaf: Any) -> str:
    """A leaf's dtype, read without its values (they may span processes)."""
    dtype = getattr(leaf, "dtype", None)
    return str(np.asarray(leaf).dtype if dtype is None else dtype)


def _check_move_state(move: Any, state: ReplicaState, move_state: Any) -> None:
    """A ValueError unless ``move_state`` has the structure ``move.init`` builds.

    A move with its own ``check_state`` (the exchanges) checks it there, and
    that the replicas hold its rungs (``check_held``): replicas continuing an
    adapted ladder hold its values, not the rungs of the ladder ``move.init``
    reads.
    """
    check_state = getattr(move, "check_state", None)
    if check_state is not None:
        check_state(move_state)
        check_held = getattr(move, "check_held", None)
        if check_held is not None:
            check_held(state, move_state)
        return
    expected = move.init(state)

    def layout(tree: Any) -> list[tuple[tuple[int, ...], str]]:
        return [(np.shape(x), _dtype_of(x)) for x in jax.tree.leaves(tree)]

    same_tree = str(jax.tree.structure(expected)) == str(jax.tree.structure(move_state))
    if not same_tree or layout(expected) != layout(move_state):
        raise ValueError(
            "move_state does not fit this move: it must be what move.init(state) "
            "builds (the move_state of an earlier call of the same run, e.g. "
            f"result.move_state), got {type(move_state).__name__} with structure "
            f"{jax.tree.structure(move_state)}; pass None to start the move afresh"
        )


# A sharded state's moves keep each replica on its device (PBT's exploit would
# otherwise leave copied weights on every device).
_jitted_move = quick_jit(_apply_move, donate_argnums=(2,), static_argnames=("mesh",))


def train(
    state: ReplicaState, key: jax.Array, move: Any, data: RunData, config: RunConfig,
    *, move_state: Any = None,
) -> RunResult:  # fmt: skip
    """Trains M replicas in rounds of segment -> evaluate -> move (a host driver).

    Args:
        state: replicas from :func:`tempering.create_replicas`; training
            continues from ``state.step``.
        key: PRNG key of the run: pass the same key to continue a run.
        move: a :class:`tempering.moves.Move` (``init(state) -> move_state``
            and ``step(key, state, move_state, scores, round_index) -> (state,
            move_state, info)``), or a stateless function ``fn(key, state,
            scores, round_index) -> (state, info)``.
        data: the :class:`~tempering.config.RunData` (train, validation, test).
        config: every other setting, a :class:`~tempering.config.RunConfig`.
        move_state: what the move carries between rounds, from an earlier call
            of the same run (``result.move_state``); None: ``move.init(state)``.

    Returns:
        :class:`RunResult` ``(state, history, final, final_score, diverged,
        interrupted, move_state)``. Ctrl-C during the rounds stops the call
        after the round in progress: the result holds the rounds done,
        ``interrupted`` is True, and with ``config.checkpoint_dir`` a
        checkpoint is written to resume from. A second Ctrl-C (or a
        ``SystemExit``) aborts the round in progress: the rounds that ended
        are checkpointed first (one process; a third Ctrl-C aborts the save)
        and the exception carries them as ``state``, ``move_state`` and
        ``history``. A
        second Ctrl-C during the final evaluation stops only the evaluation:
        the result comes back with ``final=None``.

    Raises:
        TypeError / ValueError: before anything compiles, for bad data (each
            message names the argument and the fix), when traced by
            ``jax.jit``, or when ``checkpoint_dir`` holds another run's
            checkpoints.
        tempering.divergence.DivergenceError: every replica diverged.
        tempering.sources.BatchError: a streamed batch is bad (shape, dtype,
            NaN or inf, labels), named by its index, before it trains.
            Both errors carry ``state`` and ``move_state`` (after the last
            round that ended finite; a device copy of the replicas is kept at
            each round's end for this) and ``history`` (the rounds done);
            with ``checkpoint_dir`` that round is saved before the error is
            raised (with several processes only on a divergence), so the
            call resumes from it. Any other exception during the rounds (a
            callback's or a logger's, say) saves the last round that ended
            likewise, and carries the same three attributes (unless it has
            attributes of those names).

    Example:
        >>> config = tp.RunConfig(num_steps=2000, interval=100, burn_in=500)
        >>> result = tp.train(state, key, tp.identity_move(),
        ...                   tp.RunData((x, y), validation=(xv, yv)), config)
    """
    check_not_traced(state)
    key = check_key(key, "key")
    if not isinstance(data, RunData):
        raise TypeError(
            "data must be a tempering.RunData(train, validation=None, test=None), "
            f"got {type(data).__name__}"
        )
    if not isinstance(config, RunConfig):
        raise TypeError(
            "config must be a tempering.RunConfig(num_steps=..., interval=..., ...), "
            f"got {type(config).__name__}"
        )
    move = as_move(move)
    if jax.process_count() > 1:  # each would follow its own run, or wait for the others
        sharding.check_same_on_processes(
            _run_alike(key, state, move, move_state, config), "argument"
        )
    if data.validation is None and getattr(move, "compares_scores", False):
        raise TypeError(
            f"{type(move).__name__} compares the replicas' validation scores, but "
            "data has no validation: give tempering.RunData(train, validation=...) "
            "(without it every score is 0 and the move decides at random)"
        )
    if move_state is None:
        move_state = move.init(state)
    else:
        _check_move_state(move, state, move_state)
    if config.burn_in_hyperparams:
        check_names(state, list(config.burn_in_hyperparams), "burn_in_hyperparams")
        set_hyperparams(state, **config.burn_in_hyperparams)  # validates the values
        if config.burn_in == 0:
            warn(
                "burn_in_hyperparams given with burn_in=0: no step trains at "
                f"{sorted(config.burn_in_hyperparams)}; give burn_in= the steps "
                "that should, or drop burn_in_hyperparams",
                UserWarning,
            )
    devices = config.devices
    if devices is None:
        devices = sharding.default_devices(state)
    if devices is not None:
        state = sharding.shard_replicas(state, devices)
    mesh = sharding.mesh_of(state)
    if mesh is not None:
        move_state = sharding.replicate(move_state, mesh, what="move_state")
    if "batch_size" in state.hyperparams:
        sizes = _host(state.hyperparams["batch_size"])
        reach = getattr(move, "largest_batch_size", None)  # a move exploring sizes
        if callable(reach) and reach() is not None:
            sizes = np.append(sizes, reach())
        config = config.for_batch_sizes(sizes)
    first_step = int(state.step)
    if first_step + config.rounds.num_steps > MAX_STEP:
        raise ValueError(
            f"num_steps={config.rounds.num_steps} from step {first_step} passes "
            f"step 2**31 - 1 (the replicas count steps in int32): give fewer num_steps"
        )
    segments = plan(first_step, config.rounds)  # past explicit round ends raises
    sources = prepare_sources(state, data, config)  # a stream not read yet
    data_key, key = _split_off_data_key(key)
    # Copies: the caller's buffers are never donated, and the hyperparameters
    # before the burn-in outlive the state's, which are.
    state, move_state, before_burn_in = _copy((state, move_state, state.hyperparams))
    saver = None
    if config.checkpoint_dir is not None:
        saver = resume.checkpointer(state, move_state, key, move, sources, config)
    try:
        if saver is not None:  # another run's checkpoint: refused before any read
            saver.check_settings()
        run = _Run(
            move=move, key=key, data_key=data_key, data=sources, config=config,
            loop=config.loop, segments=segments, first_step=first_step,
            before_burn_in=before_burn_in, warner=divergence.Warner(config.on_diverge),
        )  # fmt: skip
        progress = resume.Progress(
            next_segment=0,
            records=RecordRows(
                sum(seg.evaluated and seg.ends_round for seg in segments)
            ),
            initial=None,
            burn_values=_host(run.before_burn_in),
        )
        # The checkpoint before the first batch: its refusals leave a generator be.
        restored = None
        if saver is not None:
            restored = _restore(saver, run, state, move_state, progress)
        if restored is not None:
            (state, move_state), progress, position = restored
        elif first_step > 0:
            _warn_stream_restarts(sources.train, first_step)
        sources = check_first_batch(state, sources, config)
        if saver is not None and restored is not None:
            resume.continue_stream(saver, position, sources.train)
        run = run._replace(
            data=sources, loop=loop_for(state, sources.sample, config.loop)
        )
        bar = _progress(
            config.num_steps, config.progress if jax.process_index() == 0 else False,
            _move_name(move),
        )  # fmt: skip
        if bar is not None:
            bar.update(sum(seg.steps for seg in segments[: progress.next_segment]))
        with resume.StopOnInterrupt() as interrupt:
            carry, progress, kept = _run_segments(
                run, (state, move_state), progress, saver, bar, interrupt
            )
            return _finish(run, carry, progress, saver, bar, interrupt, kept)
    finally:
        if saver is not None:
            saver.close()


def _warn_stream_restarts(train: Any, first_step: int) -> None:
    """Warns that a continuing call reads a re-iterable from its first batch."""
    if isinstance(train, BatchReader) and train.from_its_start:
        warn(
            f"train_data is a re-iterable (a list of batches, a dataset), which "
            f"every call reads from its first batch: this call continues the run "
            f"at step {first_step} but not its stream, so the run is not the one "
            "long call's. To continue the stream, pass one iterator to every "
            "call (it = iter(batches), then train_data=it), or in-memory arrays",
            UserWarning,
        )


def _restore(saver, run, state, move_state, progress):
    """The checkpoint's ``((state, move_state), progress, train position)``, or None."""
    initial = (rungs_of(move_state), _host(state.hyperparams))
    return resume.restore(
        saver, (state, move_state), progress, initial,
        lambda names: _no_rounds(state, move_state, run, names, initial[1]),
        functools.partial(_resume_at, run),
    )  # fmt: skip


def _resume_at(run, step: int, rounds: int) -> int:
    """The plan's segment that follows a checkpoint of global ``step`` and ``rounds``.

    The same as the saved index unless ``resume_allowing`` let another
    schedule through; a plan that does not pass ``step`` at a segment's end
    with as many rounds recorded is refused (it would resume elsewhere).
    """
    at, recorded = run.first_step, 0
    for index, segment in enumerate(run.segments):
        if at == step and recorded == rounds:
            return index
        at += segment.steps
        recorded += _records_round(run, index)
    if at == step and recorded == rounds:
        return len(run.segments)
    raise ValueError(
        f"checkpoint_dir holds a checkpoint of step {step} after {rounds} rounds, "
        "which this call's schedule (num_steps, burn_in, interval) does not "
        "reach at a round's or segment's end: it cannot resume there. Give the "
        "checkpointed call's schedule, or another checkpoint_dir; to train a run "
        "on past its end, call again with its result's state (a continuing call)"
    )


class _Run(NamedTuple):
    """What a :func:`train` call fixes before its first segment (validated)."""

    move: Any
    key: jax.Array  # the run's key, the data key split off
    data_key: jax.Array
    data: RunSources
    config: RunConfig
    loop: str  # "device" or "host" for this state and data (the config's
    # setting until the first training batch is checked)
    segments: list[_Segment]  # the call's plan
    first_step: int
    before_burn_in: Any  # the state's own hyperparams, back after the burn-in
    warner: divergence.Warner  # the call's divergence warnings

    def evaluate(self, state: ReplicaState, source: Any, name: str) -> EvalMetrics:
        """The vectorised evaluation of every replica on ``source``."""
        config = self.config
        return run_evaluate(
            state, source, batch_size=config.eval_batch_size,
            metrics_fn=config.metrics_fn, vectorize=config.vectorize,
            loop=self.loop, name=name,
        )  # fmt: skip

    @property
    def segment_settings(self) -> SegmentSettings:
        """How the segments batch and run their steps (static under jit)."""
        config = self.config
        return SegmentSettings(
            config.array_batch_size,
            config.shared_batch,
            config.augment,
            config.vectorize,
        )


class _Kept(NamedTuple):
    """The call after the last round that ended finite: what an error carries."""

    carry: Any  # (replicas, move_state); the replicas a copy (segments donate them)
    progress: resume.Progress  # its records the first `progress.records.count`
    train_position: dict | None  # the stream's position (with a checkpointer)


def _keep(carry, progress, saver, train) -> _Kept:
    """A :class:`_Kept` of the call as it stands (the move state is never donated)."""
    position = resume.stream_position(train) if saver is not None else None
    progress = progress._replace(records=progress.records.so_far())
    return _Kept((_copy(carry[0]), carry[1]), progress, position)


def _run_segments(run, carry, progress, saver, bar, interrupt):
    """Trains the segments left: the carry, progress and kept carry where it stopped.

    It stops at the plan's end, a truthy callback or Ctrl-C, and checkpoints
    when one is due. A DivergenceError or BatchError carries the call after
    the last round that ended finite (:class:`_Kept`), with the history, and
    a checkpointer saves it first: nothing trained is lost.
    """
    segments = len(run.segments)
    kept = _keep(carry, progress, saver, run.data.train)
    for index in range(progress.next_segment, segments):
        carry, progress = _start_segment(run, carry, progress, index)
        try:
            carry, progress, record = _train_segment(run, carry, progress, index)
            if record is not None:
                kept = _keep(carry, progress, saver, run.data.train)
        except (divergence.DivergenceError, BatchError) as error:
            _raise_kept(error, kept, saver, run)
        except Exception as error:
            _save_kept(saver, kept, error)
            _carry_kept(error, kept, run)
            raise
        except (KeyboardInterrupt, SystemExit) as error:  # a second Ctrl-C, exit()
            _keep_on_abort(saver, kept, error, run)
            raise
        if bar is not None:
            bar.update(run.segments[index].steps)
        # Over several processes, process 0 decides at round ends (callback, Ctrl-C).
        stop = interrupt.requested and (jax.process_count() == 1 or record is not None)
        if record is not None:
            try:
                stop = _callback_stops(run.config.callback, record, stop)
            except Exception as error:  # every process raises: saving is safe
                _save_kept(saver, kept, error, every_process=True)
                _carry_kept(error, kept, run)
                raise
            except (KeyboardInterrupt, SystemExit) as error:
                _keep_on_abort(saver, kept, error, run)
                raise
            last = index + 1 == segments
            if not (stop or last or _interrupted(interrupt)):
                try:  # the next segment reads that batch: taken only if it trains
                    kept = kept._replace(
                        train_position=resume.with_next_batch(
                            kept.train_position, run.data.train
                        )
                    )
                except (divergence.DivergenceError, BatchError) as error:
                    _raise_kept(error, kept, saver, run)
            if saver is not None and saver.due() and not (stop or last):
                try:
                    _save_or_warn(saver, carry, progress, kept.train_position, _DUE)
                except Exception as error:  # several processes: raised on each
                    _carry_kept(error, kept, run)
                    raise
                except (KeyboardInterrupt, SystemExit) as error:  # in the save
                    _keep_on_abort(saver, kept, error, run)
                    raise
        if stop or _interrupted(interrupt):
            break
    if jax.process_count() > 1:  # process 0's Ctrl-C stopped them all: all say so
        interrupt.requested = sharding.from_process_0(interrupt.requested)
    return carry, progress, kept


def _interrupted(interrupt: Any) -> bool:
    """A Ctrl-C that stops the call at this segment's end (one process: any end)."""
    return bool(interrupt.requested) and jax.process_count() == 1


def _raise_kept(error: BaseException, kept: _Kept, saver: Any, run: _Run) -> NoReturn:
    """Saves the call after its last finite round, attaches it to ``error``, raises."""
    _save_kept(saver, kept, error)
    state, move_state = kept.carry
    history = _stack(kept.progress, state, move_state, run, None)
    raise divergence.attach(error, state, move_state, history) from None


def _callback_stops(callback, record: RoundRecord, stop: bool) -> bool:
    """Whether the call stops after this round, on every process alike.

    Process 0 decides: its ``stop`` (Ctrl-C) or its callback's truthy return.
    Over several processes the callback runs on process 0 only; an error it
    raises there stops every process (the others raise a RuntimeError), where
    they would otherwise wait for process 0 in the next collective.
    """
    if jax.process_count() == 1:
        return (callback is not None and _truthy(callback(record))) or stop
    raised = None
    if jax.process_index() == 0 and callback is not None:
        try:
            stop = _truthy(callback(record)) or stop
        except Exception as error:  # noqa: BLE001 - raised below, on every process
            raised = error
    code = sharding.code_from_process_0(2 if raised is not None else int(stop))
    if code == 2:
        if raised is not None:
            raise raised
        raise RuntimeError(
            f"the callback raised an error on process 0 after round {record.round} "
            "(raised there): every process stops"
        )
    return bool(code)


def _truthy(returned: Any) -> bool:
    """Whether a callback's return stops the call (an array of several: a TypeError)."""
    if np.ndim(returned) > 0 and np.size(returned) != 1:
        raise TypeError(
            "callback must return None or a bool (True stops the call after the "
            f"round), got an array of shape {np.shape(returned)}: reduce it, e.g. "
            "with .any() or .all()"
        )
    return bool(returned)


def _carry_kept(
    error: BaseException,
    kept: _Kept,
    run: _Run,
    where: str = "after its last finite round",
) -> None:
    """Any error of the rounds carries the call after its last finite round.

    As a DivergenceError does (``state``, ``move_state``, ``history``), and a
    note saying so (``where`` the call stands); an error that has such
    attributes of its own keeps them.
    """
    if any(hasattr(error, name) for name in ("state", "move_state", "history")):
        return
    state, move_state = kept.carry
    try:
        history = _stack(kept.progress, state, move_state, run, None)
        divergence.attach(error, state, move_state, history)
    except Exception:  # noqa: BLE001 - an exception without a __dict__
        return
    if hasattr(error, "add_note"):  # Python >= 3.11
        error.add_note(
            f"tempering: error.state, .move_state and .history hold the call "
            f"{where} (step {int(state.step)})"
        )


def _keep_on_abort(saver, kept: _Kept, error: BaseException, run: _Run) -> None:
    """An abort (a second Ctrl-C, a SystemExit) keeps the rounds that ended.

    Saved first with a checkpointer, in one process only (over several, the
    others would wait in the save's collective for the one that aborted); a
    further Ctrl-C aborts the save, which then never counts as a checkpoint.
    """
    if jax.process_count() == 1:
        _save_kept(saver, kept, error, every_process=True)
    _carry_kept(error, kept, run)


def _save_kept(
    saver, kept: _Kept, error: BaseException, *, every_process: bool = False
) -> None:
    """Checkpoints the kept call before ``error`` is raised (not saved yet).

    The save is a collective: with several processes only an error every
    process raises alike saves (a divergence: every process sees the same
    losses; a callback's error, which process 0 shares), not one process's own
    (a bad batch). A failing save warns; the error raised is the run's.
    """
    if saver is None:
        return
    alike = every_process or isinstance(error, divergence.DivergenceError)
    if jax.process_count() > 1 and not alike:
        return
    try:
        resume.save(saver, kept.carry, kept.progress, kept.train_position)
    except Exception as failure:  # noqa: BLE001 - the run's own error goes on
        warn(
            f"the checkpoint of step {int(kept.carry[0].step)} (the last finite "
            f"round) was not saved: {failure!r}",
            RuntimeWarning,
        )


def _records_round(run, index: int) -> bool:
    """Whether segment ``index`` ends an evaluated round and moves (a record)."""
    segment = run.segments[index]
    last = index + 1 == len(run.segments)
    moves = run.config.move_at_end or not last
    return segment.evaluated and segment.ends_round and moves


def _start_segment(run, carry, progress, index):
    """The burn-in's hyperparameters, and the values before the call's first round."""
    state, move_state = carry
    initial, burn_values = progress.initial, progress.burn_values
    burn_in_hyperparams = run.config.burn_in_hyperparams
    if not run.segments[index].evaluated and burn_in_hyperparams:
        state = set_hyperparams(state, **burn_in_hyperparams)
        burn_values = _host(state.hyperparams)
    if run.segments[index].evaluated and initial is None:
        initial = (rungs_of(move_state), _host(state.hyperparams))
    progress = progress._replace(initial=initial, burn_values=burn_values)
    return (state, move_state), progress


def _train_segment(run, carry, progress, index):
    """One segment of the plan: ``((state, move_state), progress, record or None)``.

    Its SGD steps, then the evaluation and the move if it ends a round.
    """
    state, move_state = carry
    segment = run.segments[index]
    burning = not segment.evaluated
    burn_in_hyperparams = run.config.burn_in_hyperparams
    segment_key, move_key = _round_keys(run.key, segment.round)
    # Read each segment: a move or the burn-in may have changed the values.
    settings = run.segment_settings._replace(zero_inputs=zero_model_inputs(state))
    state, train_loss = run_segment(
        state, segment_key, run.data.train, segment.steps, data_key=run.data_key,
        settings=settings, loop=run.loop, start=segment.start,
    )  # fmt: skip
    last = index + 1 == len(run.segments)
    if burning and burn_in_hyperparams and (last or run.segments[index + 1].evaluated):
        state = set_hyperparams(state, **run.before_burn_in)  # burn-in over
    progress = progress._replace(next_segment=index + 1)
    if not _records_round(run, index):
        return (state, move_state), progress, None
    state, move_state, record = _end_round(
        run, state, move_state, move_key, segment.round_index, train_loss
    )
    progress.records.add(record)
    return (state, move_state), progress, record


def _finish(run, carry, progress, saver, bar, interrupt, kept) -> RunResult:
    """Evaluates the end state, saves the last checkpoint, stacks the history.

    Ctrl-C during the final evaluation counts as an interruption; a second one
    stops the evaluation only (``final`` is None), the rounds are kept. When
    every replica diverged by the end, the checkpoint is the last round that
    ended finite (``kept``), as for a divergence within the rounds, so that
    calling again repeats the call.
    """
    state, move_state = carry
    if bar is not None:
        bar.close()
    try:
        final, final_score = _final(run, state)
    except KeyboardInterrupt:
        final = final_score = None
        interrupt.requested = True
    except BaseException as error:
        try:
            _save_end(run, carry, progress, saver)  # what trained is kept
        except Exception:  # noqa: BLE001 - the evaluation's error is the one raised
            pass
        end = _Kept(carry, progress, None)
        _carry_kept(error, end, run, "at its end, before the final evaluation")
        raise
    history = _stack(progress, state, move_state, run, final)
    try:
        result = _result(state, move_state, history, final, final_score, interrupt)
    except divergence.DivergenceError as error:
        _save_kept(saver, kept, error)
        kept_state, kept_move_state = kept.carry
        raise divergence.attach(error, kept_state, kept_move_state, history) from None
    if final is not None:
        run.warner.at_end(result.diverged, int(state.step), _host(state.hyperparams))
    try:
        _save_end(run, carry, progress, saver)
    except Exception as error:  # several processes: raised on each, with the call
        raise divergence.attach(error, state, move_state, history) from None
    except (KeyboardInterrupt, SystemExit) as error:  # in the save: tried once more
        if jax.process_count() == 1:
            try:
                _save_end(run, carry, progress, saver)
            except BaseException:  # noqa: BLE001 - a further Ctrl-C: raise the first
                pass
        raise divergence.attach(error, state, move_state, history) from None
    if interrupt.requested:
        lost = final is None and run.data.validation is not None
        resume.warn_interrupted(int(state.step), saver is not None, lost)
    return result


def _save_end(run, carry, progress, saver) -> None:
    """The call's last checkpoint: where it stopped (its end, or early)."""
    if saver is None:
        return
    position = resume.stream_position(run.data.train)
    if progress.next_segment < len(run.segments):  # stopped early: resumable
        try:  # the next batch, fingerprinted for the resume, then given back
            position = resume.with_next_batch(position, run.data.train)
        except ValueError:  # a bad or missing batch: the resumed call says so
            pass
        finally:
            if isinstance(run.data.train, BatchReader):
                run.data.train.unread()
    _save_or_warn(saver, carry, progress, position, _LAST)


_DUE = (
    "Training goes on; the next round tries again, and the checkpoints saved "
    "before are intact"
)
_LAST = (
    "The call's result holds what trained: save it yourself, or free the space "
    "and call again with the same checkpoint_dir, which resumes from the last "
    "checkpoint saved"
)


def _save_or_warn(saver, carry, progress, position, then: str) -> None:
    """Saves a checkpoint; a failing save (a full disk) warns, saying ``then``.

    The save's error must not throw away what the call trained. Over several
    processes a save is a collective and its error is raised: on every
    process when process 0 fails to write the manifest; a failure inside
    orbax's writes on one process only can leave the others waiting in its
    barrier until the coordination service's timeout.

    Args:
        saver: the call's :class:`~tempering.checkpoint.Checkpointer`.
        carry: ``(state, move_state)`` to save.
        progress: the call's progress (its records and next segment).
        position: the training stream's position, or None.
        then: what the warning says happens next.
    """
    try:
        resume.save(saver, carry, progress, position)
    except Exception as failure:
        if jax.process_count() > 1:
            raise
        warn(
            f"the checkpoint of step {int(carry[0].step)} was not saved: "
            f"{failure!r}. {then}",
            RuntimeWarning,
        )


def _final(run: _Run, state: ReplicaState) -> tuple[Any, Any]:
    """The final validation metrics and scores (host), or ``(None, None)``."""
    if run.data.validation is None:
        return None, None
    final = run.evaluate(state, run.data.validation, "validation_data")
    return _host((final, _scores(final, run.config.score_fn, state.num_replicas)))


def _result(state, move_state, history, final, final_score, interrupt) -> RunResult:
    """The call's result; every replica diverged at the end is an error."""
    diverged = _diverged_at_end(history, final, final_score, state.num_replicas)
    if diverged.all():
        raise divergence.DivergenceError(
            f"every replica diverged (a non-finite loss or score) by step "
            f"{int(state.step)}, "
            "the end of the call: lower the learning rate or check the model and "
            "data; the error's .state is the last finite state, its .history the "
            "rounds done",
        )
    return RunResult(
        state, history, final, final_score, diverged, interrupt.requested, move_state
    )


def _diverged_at_end(history, final, final_score, num: int) -> np.ndarray:
    """Replicas whose last evaluation (or round) was not finite."""
    if final is not None:
        return divergence.non_finite(final.loss, final_score)
    if len(history.diverged):
        return history.diverged[-1] & (history.restored_from[-1] < 0)
    return np.zeros((num,), bool)


def _scores(metrics: EvalMetrics, score_fn: ScoreFn | None, num: int) -> jax.Array:
    """What the moves compare: ``score_fn(metrics)``, by default the loss."""
    scores = metrics.loss if score_fn is None else jnp.asarray(score_fn(metrics))
    check_scores_shape(scores.shape, num)
    return scores


def _end_round(run, state, move_state, key, round_index, train_loss):
    """Evaluate, score, flag (and restore) diverged replicas, move; the record."""
    data = run.data
    metrics = test_metrics = None
    scores = np.zeros((state.num_replicas,), np.float32)
    if data.validation is not None:
        metrics = run.evaluate(state, data.validation, "validation_data")
        scores = _scores(metrics, run.config.score_fn, state.num_replicas)
    if data.test is not None:
        test_metrics = run.evaluate(state, data.test, "test_data")
    train_loss, metrics, scores = _host((train_loss, metrics, scores))
    diverged = divergence.non_finite(
        train_loss, None if metrics is None else metrics.loss, scores
    )
    if diverged.all():
        raise divergence.DivergenceError(
            f"every replica diverged (a non-finite loss or score) in round "
            f"{round_index}, by step {int(state.step)}: lower the learning rate or "
            "check the model and data; the error's .state is the last finite state "
            "(checkpointed when checkpoint_dir is given), its .history the rounds "
            "done"
        )
    sources = np.full(diverged.shape, -1, np.int32)
    # A diverged replica is the worst to the move, whatever its score: a
    # score_fn blind to NaN outputs must not make it PBT's donor or PT's coldest.
    move_scores = np.where(diverged, np.inf, scores)
    when_diverged = _host(state.hyperparams) if diverged.any() else None
    if run.config.on_diverge == "restore" and diverged.any():
        sources = divergence.restore_sources(diverged, rungs_of(move_state))
        gather = np.where(sources >= 0, sources, np.arange(len(sources)))
        state = divergence.copy_replicas(state, np.asarray(gather, np.int32))
        if rungs_of(move_state) is not None:  # it holds its source's weights
            move_scores = move_scores[gather]
        # A move without rungs (PBT) ranks it last still: it copies a winner and
        # explores, and never spreads the values it diverged with.
    state, move_state, info = _jitted_move(
        run.move, key, state, move_state, np.asarray(move_scores, np.float32),
        np.int32(round_index), mesh=sharding.mesh_of(state),
    )  # fmt: skip
    test_metrics, info, hyperparams = _host((test_metrics, info, state.hyperparams))
    record = RoundRecord(
        round=round_index,
        step=int(state.step),
        train_loss=train_loss,
        validation=metrics,
        score=scores,
        test=test_metrics,
        move=info,
        rungs=rungs_of(move_state),
        hyperparams=hyperparams,
        diverged=diverged,
        restored_from=sources,
    )
    if when_diverged is not None:
        run.warner(record, when_diverged)
    return state, move_state, record


def _stack(progress, state, move_state, run, final) -> History:
    """The history of the call's rounds; an empty one keeps every field's trailing shape."""
    initial = progress.initial or (rungs_of(move_state), _host(state.hyperparams))
    return progress.records.history(
        lambda: _no_rounds(
            state,
            move_state,
            run,
            None if final is None else list(final.metrics),
            initial[1],
        ),  # fmt: skip
        initial_rungs=initial[0],
        initial_hyperparams=initial[1],
        burn_in_hyperparams=progress.burn_values,
        first_step=run.first_step,
        burn_in=run.config.burn_in,
        num_steps=int(state.step),
        scheme=getattr(run.move, "scheme", None),
    )


def _no_rounds(state, move_state, run, metric_names, hyperparams) -> RoundRecord:
    """A record stacked over zero rounds: the trailing shapes of every field.

    The move's info shapes come from tracing its step, so this runs only for a
    call that recorded no round, and as the template of a resumed call's records.
    """
    num = state.num_replicas
    empty_m = np.zeros((0, num), np.float32)
    evaluated = (
        run.data.validation if run.data.validation is not None else run.data.test
    )
    if metric_names is None and evaluated is not None:  # no final validation
        metric_names = metric_names_of(state, evaluated, run.config.metrics_fn)

    def empty_metrics(source):
        if source is None:
            return None
        return EvalMetrics(empty_m, {k: empty_m for k in metric_names or ()})

    info = jax.eval_shape(
        _apply_move, run.move, jax.random.key(0), state, move_state, jnp.zeros(num),
        jnp.int32(0),
    )[2]  # fmt: skip
    return RoundRecord(  # stacked over zero rounds: arrays in the int fields too
        round=np.zeros((0,), np.int64),  # type: ignore[arg-type]
        step=np.zeros((0,), np.int64),  # type: ignore[arg-type]
        train_loss=empty_m,
        validation=empty_metrics(run.data.validation),
        score=empty_m,
        test=empty_metrics(run.data.test),
        move=jax.tree.map(lambda s: np.zeros((0, *s.shape), s.dtype), info),
        rungs=None if rungs_of(move_state) is None else empty_m.astype(np.int32),
        hyperparams={k: empty_m for k in hyperparams},
        diverged=empty_m.astype(bool),
        restored_from=empty_m.astype(np.int32),
    )
