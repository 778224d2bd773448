"""Checkpoints and exact resume: crashes, SIGKILL (also inside a save), Ctrl-C."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CrashError, TinyMLP, crash_at, leaves_equal, refuse_unpickling

import tempering as tp
from tempering import driver
from tempering.fingerprints import describe_move, describe_optimizer

WORKER_PATH = Path(__file__).with_name("resume_worker.py")
spec = importlib.util.spec_from_file_location("resume_worker", WORKER_PATH)
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run, without checkpoints."""
    return worker.arrays(worker.run(None, callback=None))


def assert_same(result_arrays, reference):
    assert sorted(result_arrays) == sorted(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(result_arrays[name], value, err_msg=name)


def test_a_crash_then_the_same_call_resumes_bit_for_bit(tmp_path, reference):
    with pytest.raises(CrashError):
        worker.run(tmp_path, callback=crash_at(7), checkpoint_every=3)
    steps = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    assert len(steps) == 2  # keep_checkpoints=2: after rounds 3 and 6 (1-based)
    rounds_seen = []
    result = worker.run(tmp_path, callback=lambda r: rounds_seen.append(r.round))
    assert rounds_seen[0] == 6  # resumed after the sixth round, not from scratch
    assert_same(worker.arrays(result), reference)
    # Calling once more finds the finished run: the same result, nothing rerun.
    again = worker.run(tmp_path, callback=crash_at(0))
    assert_same(worker.arrays(again), reference)


def test_other_settings_are_refused(tmp_path):
    with pytest.raises(CrashError):
        worker.run(tmp_path, callback=crash_at(1))
    with pytest.raises(ValueError, match="other settings .*batch_size"):
        worker.run(tmp_path, batch_size=16)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        worker.run(tmp_path / "other", checkpoint_every=0)


def test_ctrl_c_stops_after_the_round_and_resumes(tmp_path, reference):
    # as in a terminal, also when the tests run as a background job (SIG_IGN)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_stops_after_the_round_and_resumes(tmp_path, reference)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_ctrl_c_stays_ignored(tmp_path):
    # a background job (nohup, &) ignores SIGINT: a run must not take it over
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen = []
    try:
        worker.run(
            tmp_path, callback=lambda r: seen.append(signal.getsignal(signal.SIGINT))
        )
        assert seen and all(h is signal.SIG_IGN for h in seen)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_stops_after_the_round_and_resumes(tmp_path, reference):
    def interrupt_at_3(record):
        if record.round == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.warns(
        RuntimeWarning, match="interrupted: stopped at step 34"
    ) as caught:
        stopped = worker.run(tmp_path, callback=interrupt_at_3)
    assert {w.filename for w in caught} == {worker.__file__}  # pt_train's caller
    assert stopped.summary.interrupted
    assert stopped.history.step.tolist() == [16, 22, 28, 34]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = worker.run(tmp_path, callback=None)
    assert not resumed.summary.interrupted
    assert_same(worker.arrays(resumed), reference)


def test_pbt_resumes_bit_for_bit(tmp_path, tx, blobs, monkeypatch):
    (x, _), val = blobs
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], num_replicas=4)
    config = tp.pbt_config({"learning_rate": (0.01, 0.2)})

    def run(**kwargs):
        return tp.pbt_train(
            state, jax.random.key(3), config=config, train_data=blobs[0],
            validation_data=val, num_steps=60, ready_interval=10, batch_size=32,
            **kwargs,
        )  # fmt: skip

    plain = run()
    with pytest.raises(CrashError):
        run(checkpoint_dir=tmp_path, callback=crash_at(2))
    refuse_unpickling(monkeypatch)
    resumed = run(checkpoint_dir=tmp_path)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def spawn(*args):
    return subprocess.Popen(
        [sys.executable, str(WORKER_PATH), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def kill_after(process, line, delay):
    """SIGKILL ``process`` ``delay`` seconds after it prints ``line``."""
    for out in process.stdout:
        if out.strip() == line:
            time.sleep(delay)
            break
    process.kill()
    process.wait()


def test_sigkill_at_several_moments_then_resume_bit_for_bit(tmp_path, reference):
    checkpoints, out = tmp_path / "ck", tmp_path / "out.npz"
    # Killed inside its third save: files written, not yet committed by the rename.
    first = spawn(checkpoints, out, "--kill-in-save", 3)
    assert "killed in save" in first.communicate()[0]
    assert first.returncode == -signal.SIGKILL
    # Killed by us just after a round ended (during or right after its save).
    kill_after(spawn(checkpoints, out), "round 9", 0.02)
    assert not out.exists()
    rounds_seen = []
    result = worker.run(checkpoints, callback=lambda r: rounds_seen.append(r.round))
    assert 0 < rounds_seen[0] <= 10  # it resumed
    assert_same(worker.arrays(result), reference)


# --- trust: no pickle, integrity, one writer, foreign entries, fingerprint ------


def crashed_run(directory, rounds=7, **kwargs):
    """A run stopped after ``rounds`` rounds, its checkpoints in ``directory``."""
    with pytest.raises(CrashError):
        worker.run(directory, callback=crash_at(rounds), **kwargs)
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_resume_never_unpickles(tmp_path, reference, monkeypatch):
    crashed_run(tmp_path)
    refuse_unpickling(monkeypatch)
    assert_same(worker.arrays(worker.run(tmp_path, callback=None)), reference)


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", ["flip", "truncate", "meta", "bookkeeping", "deep", "deep-unchecked"]
)
def test_a_damaged_latest_step_is_named_and_the_one_before_resumes(
    tmp_path, reference, damage
):
    steps = crashed_run(tmp_path)
    latest = tmp_path / str(steps[-1])
    if damage == "bookkeeping":  # orbax's own file: no data, but not the one saved
        meta = latest / "_CHECKPOINT_METADATA"
        _flip_byte(meta, meta.stat().st_size // 2)
    elif damage.startswith("deep"):  # orbax parses it unbounded, listing the steps
        if damage == "deep-unchecked":  # a save killed before its manifest
            (latest / "tempering-manifest.json").unlink()
        (latest / "_CHECKPOINT_METADATA").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "meta":
        meta = next(p for p in (latest / "meta").rglob("*") if p.is_file())
        meta.write_text(
            meta.read_text().replace('"next_segment": ', '"next_segment": 1')
        )
    else:
        files = sorted(
            (p for p in (latest / "arrays").rglob("*") if p.is_file()),
            key=lambda p: -p.stat().st_size,
        )
        biggest = files[0]  # the weights' data file
        if damage == "flip":
            _flip_byte(biggest, biggest.stat().st_size // 2)
        else:
            biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    rounds_seen = []
    with pytest.warns(
        RuntimeWarning, match=f"checkpoint of step {steps[-1]} .*moved to"
    ):
        result = worker.run(tmp_path, callback=lambda r: rounds_seen.append(r.round))
    assert rounds_seen[0] == 6  # resumed from the step before (after round 5)
    assert_same(worker.arrays(result), reference)
    kept = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1 and kept[0].startswith(f"{steps[-1]}.corrupt-")  # kept


def test_files_added_to_a_step_are_named_and_the_step_resumes(tmp_path, reference):
    # A file manager's or a sync tool's files beside the saved ones are not
    # read: the step is intact (they set every step aside as corrupt before).
    steps = crashed_run(tmp_path)
    for step in steps:
        (tmp_path / str(step) / ".DS_Store").write_bytes(b"\x00\x01")
        for chunks in (tmp_path / str(step)).rglob("d"):  # beside orbax's chunks
            (chunks / ".DS_Store").write_bytes(b"\x00\x01")
            (chunks / "._4c91abc79f4bf158").write_bytes(b"\x00")
    (tmp_path / str(steps[-1]) / "arrays" / "notes.txt").write_text("lr too high?")
    rounds_seen = []
    with pytest.warns(RuntimeWarning, match="holds files it did not save") as caught:
        result = worker.run(tmp_path, callback=lambda r: rounds_seen.append(r.round))
    added = " ".join(str(w.message) for w in caught)
    assert "'.DS_Store'" in added and "'arrays/d/.DS_Store'" in added
    assert rounds_seen[0] == 7  # from the latest step (the damaged test: 6)
    assert_same(worker.arrays(result), reference)
    assert not [p for p in tmp_path.iterdir() if "corrupt" in p.name]


def test_a_manifest_that_omits_orbax_files_sets_the_step_aside(tmp_path, reference):
    """A manifest edited to drop orbax's own files had them warned about as
    added files, "not read (the saved files are intact)", which orbax reads."""
    import json

    steps = crashed_run(tmp_path)
    manifest = tmp_path / str(steps[-1]) / "tempering-manifest.json"
    listed = json.loads(manifest.read_text())
    del listed["arrays/_METADATA"]
    manifest.write_text(json.dumps(listed))
    rounds_seen = []
    with pytest.warns(
        RuntimeWarning, match="does not list files orbax reads"
    ) as caught:
        result = worker.run(tmp_path, callback=lambda r: rounds_seen.append(r.round))
    assert not any("did not save" in str(w.message) for w in caught)
    assert rounds_seen[0] == 6  # resumed from the step before
    assert_same(worker.arrays(result), reference)
    kept = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1 and kept[0].startswith(f"{steps[-1]}.corrupt-")


def test_no_intact_step_stops_instead_of_restarting(tmp_path):
    steps = crashed_run(tmp_path)
    for step in steps:
        meta = next(
            p for p in (tmp_path / str(step) / "meta").rglob("*") if p.is_file()
        )
        meta.write_text("{not json")
    with (
        pytest.warns(RuntimeWarning),
        pytest.raises(ValueError, match="holds no intact checkpoint"),
    ):
        worker.run(tmp_path, callback=None)


def test_a_folder_the_library_did_not_write_is_named_and_kept(tmp_path):
    (tmp_path / "999").mkdir()
    (tmp_path / "999" / "notes.txt").write_text("mine")
    (tmp_path / "README.txt").write_text("also mine")
    with pytest.raises(ValueError, match=r"did not write: \['999'\]"):
        worker.run(tmp_path, callback=None)
    assert (tmp_path / "999" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / ".tempering-lock").exists()  # released on the error


def test_a_second_run_on_a_busy_folder_fails_at_once(tmp_path):
    from tempering import checkpoint

    holder = checkpoint.Checkpointer(tmp_path, every=1, keep=2, settings={})
    try:
        with pytest.raises(
            ValueError, match=f"in use by another run \\(process {os.getpid()}"
        ):
            worker.run(tmp_path, callback=None)
    finally:
        holder.close()
    assert not (tmp_path / ".tempering-lock").exists()


def test_a_dead_process_lock_is_taken_over(tmp_path, reference):
    import json
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (tmp_path / ".tempering-lock").write_text(json.dumps(
        {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}
    ))  # fmt: skip
    with pytest.warns(RuntimeWarning, match="taking over the lock of process"):
        result = worker.run(tmp_path, callback=None)
    assert_same(worker.arrays(result), reference)
    assert not (tmp_path / ".tempering-lock").exists()


def test_a_lock_left_empty_or_by_an_earlier_self_is_taken_over(tmp_path):
    import json
    import socket

    from tempering.checkpoint_files import Lock

    lock_file = tmp_path / ".tempering-lock"
    lock_file.write_text("")  # a process died between creating and writing it
    with pytest.raises(RuntimeError, match="names no holder yet"):
        Lock(tmp_path)  # young: a run may be writing it right now
    os.utime(lock_file, (time.time() - 60, time.time() - 60))
    with pytest.warns(RuntimeWarning, match="names no holder"):
        Lock(tmp_path).release()
    # a restarted container's run often has the pid of the one before it
    lock_file.write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": "before"}
    ))  # fmt: skip
    with pytest.warns(RuntimeWarning, match=f"lock of process {os.getpid()}"):
        Lock(tmp_path).release()
    assert not lock_file.exists()


def test_keep_checkpoints_holds(tmp_path):
    worker.run(tmp_path, callback=None, keep_checkpoints=3)
    assert len([p for p in tmp_path.iterdir() if p.name.isdigit()]) == 3


@pytest.mark.parametrize(
    ("change", "entry"),
    [
        ({"loss_fn": "smoothed"}, "loss_fn"),
        ({"tx": "nesterov"}, "optimizer"),
        ({"tx": "momentum"}, "optimizer"),
        ({"model": "relu"}, "model"),
        ({"metrics_fn": None}, "metrics_fn"),
        ({"score_fn": "accuracy"}, "score_fn"),
    ],
)
def test_a_change_that_shapes_the_result_is_refused(tmp_path, change, entry):
    crashed_run(tmp_path, rounds=1, variant={})
    with pytest.raises(
        ValueError, match=f"other settings \\(they differ in: {entry}\\)"
    ):
        worker.run(tmp_path, callback=None, variant=change)


def test_another_vectorize_policy_is_refused(tmp_path):
    # the formulation over replicas shapes the result's bits
    crashed_run(tmp_path, rounds=1)
    with pytest.raises(ValueError, match=r"they differ in: vectorize\)"):
        worker.run(tmp_path, callback=None, vectorize="sequential")


def test_resume_allowing_resumes_despite_the_named_entries(tmp_path):
    crashed_run(tmp_path, rounds=1, variant={})
    rounds_seen = []
    result = worker.run(
        tmp_path, callback=lambda r: rounds_seen.append(r.round),
        variant={"score_fn": "accuracy"}, resume_allowing=("score_fn",),
    )  # fmt: skip
    assert rounds_seen[0] == 1 and len(result.history.step) == 20
    with pytest.raises(ValueError, match="no fingerprint entries"):
        worker.run(tmp_path / "b", callback=None, resume_allowing=("colour",))


@pytest.mark.parametrize(
    ("directory", "error", "match"),
    [
        ("", ValueError, "checkpoint_dir is ''"),
        (5, TypeError, "checkpoint_dir must be a path"),
        ("file", ValueError, "is a file, not a folder"),
    ],
)
def test_bad_checkpoint_dirs_are_named(tmp_path, directory, error, match):
    if directory == "file":
        directory = tmp_path / "file"
        directory.write_text("x")
    with pytest.raises(error, match=match):
        worker.run(directory, callback=None)


def test_a_pickled_checkpoint_of_an_older_version_is_refused(tmp_path):
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(tmp_path) as manager:  # the 0.3 layout
        manager.save(12, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave({"blob": np.zeros(8, np.uint8)}),
            meta=ocp.args.JsonSave({"settings": {}, "step": 12}),
        ))  # fmt: skip
    with pytest.raises(ValueError, match=r"tempering < 0.4 \(step 12\).*pickled"):
        worker.run(tmp_path, callback=None)


class _NarrowNet(nn.Module):
    """Weights in bfloat16, computed in float32."""

    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.tanh(nn.Dense(8, param_dtype=jnp.bfloat16, dtype=jnp.float32)(x))
        return nn.Dense(2, dtype=jnp.float32)(x)


def test_bfloat16_weights_resume_bit_for_bit(tmp_path, blobs):
    (x, y), val = blobs
    y = y % 2

    def run(directory, callback=None):
        state = tp.create_replicas(
            jax.random.key(0), _NarrowNet(), tp.sgd(0.1), x[:2], num_replicas=2
        )
        config = tp.RunConfig(
            num_steps=30, interval=10, batch_size=16, checkpoint_dir=directory,
            callback=callback,
        )  # fmt: skip
        data = tp.RunData((x, y), validation=(val[0], val[1] % 2))
        return tp.train(state, jax.random.key(1), tp.identity_move(), data, config)

    reference = run(None)
    assert reference.state.params["Dense_0"]["kernel"].dtype == jnp.bfloat16
    with pytest.raises(CrashError):
        run(tmp_path, callback=crash_at(2))
    rounds_seen = []
    resumed = run(tmp_path, callback=lambda r: rounds_seen.append(r.round))
    assert rounds_seen == [2]  # from the checkpoint, nothing set aside as corrupt
    assert not [p for p in tmp_path.iterdir() if "corrupt" in p.name]
    assert leaves_equal(resumed.state, reference.state)


def _swap_move(key, state, scores, round_index):
    del key, scores, round_index
    return state, ()


def test_a_move_is_described_alike_in_every_process():
    # The same function defined again is another object at another address,
    # as in a new process: the description must not depend on the address.
    namespace = {}
    exec(  # noqa: S102  the same source, compiled twice
        "def _swap_move(key, state, scores, round_index):\n"
        "    del key, scores, round_index\n"
        "    return state, ()\n",
        namespace,
    )
    first = tp.moves.as_move(_swap_move)
    again = tp.moves.as_move(namespace["_swap_move"])
    assert describe_move(first) == describe_move(again)
    assert "0x" not in describe_move(first)


def test_the_settings_of_nested_moves_are_in_the_fingerprint():
    ladder = tp.geometric_ladder("learning_rate", 0.02, 0.4, 2)
    described = {
        name: describe_move(tp.multi_exchange_move([ladder], **kwargs))
        for name, kwargs in {
            "default": {},
            "even_odd": {"scheme": "even_odd"},
            "disabled": {"enabled": False},
        }.items()
    }
    assert len(set(described.values())) == 3


def test_validation_batches_are_in_the_fingerprint(tmp_path, tx, blobs):
    (x, y), (xv, yv) = blobs

    def run(validation, callback=None):
        state = tp.create_replicas(
            jax.random.key(0), TinyMLP(), tx, x[:2], num_replicas=2
        )
        config = tp.RunConfig(num_steps=30, interval=10, batch_size=16,
                              checkpoint_dir=tmp_path, callback=callback)  # fmt: skip
        data = tp.RunData((x, y), validation=validation)
        return tp.train(state, jax.random.key(1), tp.identity_move(), data, config)

    batches = [(xv[:32], yv[:32]), (xv[32:], yv[32:])]
    with pytest.raises(CrashError):
        run(batches, callback=crash_at(1))
    other = [(xv[:32], yv[:32]), (xv[32:], yv[32:][::-1])]
    with pytest.raises(ValueError, match=r"they differ in: validation_data\)"):
        run(other)
    rounds_seen = []
    run(list(batches), callback=lambda r: rounds_seen.append(r.round))
    assert rounds_seen == [1, 2]  # the same batches (another list) resume


def test_two_runs_taking_over_one_stale_lock_do_not_both_hold_it(tmp_path, monkeypatch):
    import json
    import socket

    from tempering import checkpoint_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}
    (tmp_path / ".tempering-lock").write_text(json.dumps(stale))
    # B reads the stale lock; A takes it over before B acts on what it read
    with pytest.warns(RuntimeWarning, match="taking over the lock"):
        first = checkpoint_files.Lock(tmp_path)
    reads = iter([stale])
    real = checkpoint_files.read_lock
    monkeypatch.setattr(
        checkpoint_files, "read_lock", lambda path: next(reads, None) or real(path)
    )
    with pytest.raises(ValueError, match="in use by another run"):
        checkpoint_files.Lock(tmp_path)
    assert first.held and real(tmp_path / ".tempering-lock") == first.owner
    first.release()


def test_an_error_in_the_callback_keeps_the_round_it_ended(tmp_path, reference):
    """An exception (not a hard crash) saves the last round, whenever one is due."""

    def failing(record):
        if record.round == 7:
            raise ConnectionError("the logging service is unreachable")

    with pytest.raises(ConnectionError):
        worker.run(tmp_path, callback=failing, checkpoint_every=100)
    rounds_seen = []
    result = worker.run(tmp_path, callback=lambda r: rounds_seen.append(r.round))
    assert rounds_seen[0] == 8  # after the round whose callback failed
    assert_same(worker.arrays(result), reference)


@pytest.mark.parametrize("abort", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("where", ["callback", "segment"])
def test_an_abort_keeps_the_rounds_that_ended(tmp_path, reference, abort, where):
    # A second Ctrl-C (KeyboardInterrupt) or a SystemExit aborts the call, but
    # the rounds that ended are saved first: they were lost before.
    def callback(record):
        if record.round == 7:
            raise abort()

    real = driver._train_segment
    ended = []

    def segment(run, carry, progress, index):
        if len(ended) == 8:  # after round 7 (rounds count from 0)
            raise abort()
        out = real(run, carry, progress, index)
        if out[2] is not None:
            ended.append(index)
        return out

    with pytest.raises(abort) as caught:
        if where == "callback":
            worker.run(tmp_path, callback=callback, checkpoint_every=100)
        else:
            with mock.patch.object(driver, "_train_segment", segment):
                worker.run(tmp_path, callback=None, checkpoint_every=100)
    assert int(caught.value.state.step) == int(caught.value.history.step[-1])
    rounds_seen = []
    result = worker.run(tmp_path, callback=lambda r: rounds_seen.append(r.round))
    assert rounds_seen[0] == 8  # after the seventh round
    assert_same(worker.arrays(result), reference)


def test_per_replica_burn_in_values_resume_bit_for_bit(tmp_path):
    burn_in = {"learning_rate": np.asarray([0.05, 0.06, 0.07, 0.08], np.float32)}
    whole = worker.arrays(worker.run(None, burn_in_hyperparams=burn_in))
    with pytest.raises(CrashError):
        worker.run(tmp_path, callback=crash_at(4), checkpoint_every=2,
                   burn_in_hyperparams=burn_in)  # fmt: skip
    with pytest.raises(ValueError, match="differ in: burn_in_hyperparams"):
        worker.run(tmp_path, burn_in_hyperparams={"learning_rate": 0.05})
    resumed = worker.run(tmp_path, burn_in_hyperparams=burn_in)
    assert_same(worker.arrays(resumed), whole)


def test_another_schedule_allowed_resumes_only_where_the_plans_meet(tmp_path):
    """resume_allowing=("schedule",) trains on from the checkpoint's step when the
    call's plan passes it at a round's end, and refuses a plan that does not."""
    fixed = dict(c=0.5, callback=None)  # a self-tuned C adapts over the rounds
    allowed = dict(fixed, resume_allowing=("schedule",))
    mid_round = tmp_path / "mid_round"
    worker.run(mid_round, num_steps=133, **fixed)  # rounds end at 16, ..., 130
    for num_steps in (136, 100):  # 133 is no segment's end; a call ending before
        with pytest.raises(ValueError, match="step 133 after 20 rounds.*cannot resume"):
            worker.run(mid_round, num_steps=num_steps, **allowed)
    first = tmp_path / "first"
    worker.run(first, **fixed)  # 130 steps, the end of round 20
    longer = worker.run(first, num_steps=136, **allowed)
    whole = worker.run(None, num_steps=136, **fixed)
    assert_same(worker.arrays(longer), worker.arrays(whole))


# --- the run's own code, described with what it reads by global name -------------

SMOOTHING = 0.1
LOGGED: list = []  # mutable: changes as a run goes, never described


def _scaled(outputs):
    return outputs * SMOOTHING


def _loss_with_helper(outputs, targets):
    LOGGED.append(1)
    return tp.state.cross_entropy(_scaled(outputs), targets)


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.tanh(nn.Dense(4)(x))


class _NetOfBlocks(nn.Module):
    act: object = None

    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(3)(_Block()(x))


class _ScaledLoss:
    def __init__(self, scale):
        self._scale = scale

    def __call__(self, outputs, targets):
        return tp.state.cross_entropy(outputs * self._scale, targets)


def _relu_block(self, x):
    return nn.relu(nn.Dense(4)(x))


def test_a_fingerprint_sees_the_code_and_constants_a_run_reads(monkeypatch):
    """Changes that alter a run but not the function passed: a constant, a helper's
    code, a submodule's class, a callable's private setting, a lambda field."""
    from tempering.fingerprints import describe_callable

    loss = describe_callable(_loss_with_helper)
    model = tp.frontends.as_frontend(_NetOfBlocks()).describe()
    LOGGED.append(2)  # mutable globals are not the run's definition
    assert describe_callable(_loss_with_helper) == loss
    monkeypatch.setitem(globals(), "SMOOTHING", 0.2)
    assert describe_callable(_loss_with_helper) != loss
    monkeypatch.setitem(globals(), "SMOOTHING", 0.1)
    monkeypatch.setitem(globals(), "_scaled", lambda outputs: 2 * outputs)
    assert describe_callable(_loss_with_helper) != loss
    relu = type("_Block", (nn.Module,), {"__call__": nn.compact(_relu_block)})
    monkeypatch.setitem(globals(), "_Block", relu)
    assert tp.frontends.as_frontend(_NetOfBlocks()).describe() != model
    assert describe_callable(_ScaledLoss(1.0)) != describe_callable(_ScaledLoss(2.0))
    leaky = [
        tp.frontends.as_frontend(_NetOfBlocks(act=lambda v, s=s: nn.leaky_relu(v, s)))
        for s in (0.1, 0.3)
    ]
    assert leaky[0].describe() != leaky[1].describe()


# --- sets: described by their elements, alike in every process --------------------

_SET_PROBE = """
import hashlib, os
os.environ["JAX_PLATFORMS"] = "cpu"
import flax.linen as nn
from tempering.frontends import as_frontend
from tempering.fingerprints import _describe_setting, describe_callable

NAMES = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"}


class Net(nn.Module):
    skip: frozenset = frozenset(NAMES)
    parts: tuple = (frozenset({"head", "body", "tail", "neck"}), 2)

    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(3)(x)


def loss(outputs, targets):  # a set literal: a frozenset among the code's constants
    names = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"}
    return outputs.sum() * ("beta" in names)


def make_loss(ignored):
    def scaled(outputs, targets):
        return outputs.sum() * (len(ignored) > 0)

    return scaled


def sha(text):
    return hashlib.sha1(text.encode()).hexdigest()


print(repr(NAMES))  # the order a set's repr shows in this process
print(sha(as_frontend(Net()).describe()))
print(sha(describe_callable(loss)))
print(sha(describe_callable(make_loss(frozenset(NAMES)))))
print(sha(_describe_setting(frozenset(NAMES))))
"""


def test_sets_are_described_alike_in_every_process(tmp_path):
    """A set's repr follows PYTHONHASHSEED: a restarted process must still match."""
    script = tmp_path / "probe.py"
    script.write_text(_SET_PROBE)
    root = str(Path(tp.__file__).resolve().parents[1])
    outputs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=root)
        done = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True,
            check=True, timeout=120,
        )  # fmt: skip
        outputs.append(done.stdout.splitlines())
    assert outputs[0][0] != outputs[1][0]  # the seeds order the set differently
    assert outputs[0][1:] == outputs[1][1:]  # model, loss code, closure, setting


def test_a_captured_set_is_described_by_its_elements():
    from tempering.fingerprints import describe_callable

    def make_loss(ignored):
        def loss(outputs, targets):
            return tp.state.cross_entropy(outputs, targets) * (targets not in ignored)

        return loss

    first, other = make_loss({0, 1}), make_loss({2, 5})
    assert describe_callable(first) != describe_callable(other)
    assert describe_callable(first) == describe_callable(make_loss({1, 0}))
    assert describe_callable(first) != describe_callable(make_loss(frozenset()))


def test_a_set_of_numbers_is_described_as_before():
    """Its order is the same in every process: sorting its reprs changed the
    fingerprints of runs saved before (a loss testing ``in {2, 10, 33}``)."""
    from tempering.fingerprints import stable_repr

    for value in (frozenset({2, 10, 33}), {0.5, None, (1, 2)}, frozenset()):
        assert stable_repr(value) == repr(value)
    assert stable_repr(frozenset({"b", "a"})) == "frozenset({'a', 'b'})"


def test_another_loop_is_refused(tmp_path):
    """The host and the device loop round alike but not bitwise: a checkpoint
    of one resumed under the other silently matched neither run."""
    crashed_run(tmp_path, rounds=1)
    with pytest.raises(ValueError, match=r"they differ in: loop\)"):
        worker.run(tmp_path, callback=None, loop="host")


def _schedule_chain(decay_steps: int, peak: float = 0.1):
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, peak, 5, decay_steps)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(),
                       optax.scale_by_learning_rate(schedule))  # fmt: skip


def test_an_optimizer_is_described_to_its_deepest_setting():
    """Cut at depth 6, a chain's schedule read "..." whatever its decay steps or
    peak (a 10x learning rate resumed silently), and MultiSteps' every_k, held
    by the object its bound methods belong to, was not described at all."""
    import optax

    from tempering.fingerprints import describe_callable

    def described(tx):
        return describe_callable(tx.init) + describe_callable(tx.update)

    base = described(_schedule_chain(40))
    assert base == described(_schedule_chain(40))
    assert base != described(_schedule_chain(100_000))
    assert base != described(_schedule_chain(40, peak=1.0))
    steps = [optax.MultiSteps(optax.sgd(0.1), every_k_schedule=k) for k in (2, 2, 4)]
    two, again, four = (described(s.gradient_transformation()) for s in steps)
    assert two == again != four


def test_a_function_that_reaches_itself_is_described():
    from tempering.fingerprints import describe_callable

    def make(scale):
        def loss(outputs, targets, depth=0):
            return scale * (loss(outputs, targets, depth + 1) if depth < 2 else 1.0)

        return loss

    assert "<cycle:" in describe_callable(make(1.0))
    assert describe_callable(make(1.0)) == describe_callable(make(1.0))
    assert describe_callable(make(1.0)) != describe_callable(make(2.0))


def test_the_functions_an_nnx_or_equinox_model_holds_are_in_its_fingerprint():
    """Described by the graph's repr (nnx) or the tree's structure (Equinox)
    with addresses removed, an activation held as an attribute or a static
    field read alike for relu and relu6: the checkpoint resumed into the other
    model."""
    from flax import nnx

    from tempering.frontends import as_frontend

    class Net(nnx.Module):
        def __init__(self, act, rngs: nnx.Rngs):
            self.linear = nnx.Linear(2, 2, rngs=rngs)
            self.act = act
            self.heads = nnx.List([nnx.Linear(2, 2, rngs=rngs)])

        def __call__(self, x):
            return self.heads[0](self.act(self.linear(x)))

    def nnx_described(act):
        return as_frontend(Net(act, nnx.Rngs(0)), None).describe()

    assert nnx_described(nnx.relu) == nnx_described(nnx.relu)
    assert nnx_described(nnx.relu) != nnx_described(nnx.relu6)
    assert nnx_described(lambda x: nnx.leaky_relu(x, 0.1)) != nnx_described(
        lambda x: nnx.leaky_relu(x, 0.5)
    )
    eqx = pytest.importorskip("equinox")

    class Mlp(eqx.Module):
        linear: eqx.nn.Linear
        act: object = eqx.field(static=True)

        def __call__(self, x):
            return self.act(self.linear(x))

    def eqx_described(act):
        module = Mlp(eqx.nn.Linear(2, 2, key=jax.random.key(0)), act)
        return as_frontend(module, None).describe()

    assert eqx_described(jax.nn.relu) == eqx_described(jax.nn.relu)
    assert eqx_described(jax.nn.relu) != eqx_described(jax.nn.relu6)
    # the optimiser's state mirrors the module's tree, static function and all:
    # its entry held the function's address, so no other process could resume
    module = Mlp(eqx.nn.Linear(2, 2, key=jax.random.key(0)), jax.nn.relu)
    state = tp.create_replicas(
        jax.random.key(0), module, tp.sgd(0.1, momentum=0.9), np.zeros((1, 2)),
        num_replicas=2,
    )  # fmt: skip
    described = describe_optimizer(state.tx, state.opt_state)
    assert "0x" not in described and "custom_jvp" in described, described


def test_a_ctrl_c_in_a_checkpoints_save_keeps_the_rounds_that_ended(
    blobs, tx, tmp_path, monkeypatch
):
    """A Ctrl-C landing in a save skipped what a Ctrl-C elsewhere does: the
    round that had ended was not saved and the error carried nothing."""
    from tempering import checkpoint

    real = checkpoint.Checkpointer.save
    pressed = []

    def save(self, tree, extra, step):
        if step in (20, 50) and step not in pressed:
            pressed.append(step)
            raise KeyboardInterrupt  # lands inside the save
        return real(self, tree, extra, step)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    (x, y), validation = blobs
    ladder = tp.geometric_ladder("learning_rate", 0.02, 0.2, 4)
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:2], ladder=ladder)

    def run(folder, **kwargs):
        return tp.pt_train(
            state, ladder, jax.random.key(1), train_data=(x, y),
            validation_data=validation, num_steps=50, exchange_interval=10,
            batch_size=32, checkpoint_dir=tmp_path / folder, **kwargs,
        )  # fmt: skip

    with pytest.raises(KeyboardInterrupt) as caught:  # in a save due at step 20
        run("due")
    assert int(caught.value.state.step) == 20 and len(caught.value.history.step) == 2
    assert sorted(os.listdir(tmp_path / "due")) == ["10", "20"]
    with pytest.raises(KeyboardInterrupt) as caught:  # in the call's last save
        run("last", checkpoint_every=4)
    assert int(caught.value.state.step) == 50
    assert "50" in os.listdir(tmp_path / "last")


def test_a_function_met_again_is_described_once():
    """A helper reached by many paths was described along each of them: 18
    levels of h = compose(h, h) took 28 s and 20 MB of fingerprint."""
    from tempering.fingerprints import describe_callable

    def compose(f, g):
        return lambda x: f(g(x))

    def helper(x):
        return x + 1

    h = helper
    for _ in range(18):
        h = compose(h, h)
    text = describe_callable(h)
    assert len(text) < 5_000 and "<same:" in text
    other = helper
    for _ in range(17):
        other = compose(other, other)
    assert text != describe_callable(compose(other, lambda x: x))


def test_a_checkpoint_without_a_newer_entry_says_which(tmp_path):
    """Resuming a checkpoint written before an entry was fingerprinted said
    only that the settings differ."""
    from tempering.checkpoint import Checkpointer

    saver = Checkpointer(
        str(tmp_path), every=1, keep=1, settings={"loop": "'auto'", "key": "k"}
    )
    with pytest.raises(ValueError, match=r"they differ in: loop\) \(the checkpoint "
                       r"has no loop: a version of tempering before"):  # fmt: skip
        saver._check_settings({"key": "k"})


def test_a_description_is_bounded_in_size_and_reads_alike_as_before():
    """Objects, dicts and sets reached along many paths grew a description
    exponentially (2.9 to 15 MB at 17 levels); a short function met again (the
    init_empty_state of an optax chain) read <same:k>, so a checkpoint of an
    optax chain written before would not resume; two closures closing on
    different ancestors read alike."""
    import optax

    from tempering.fingerprints import describe_callable, describe_value

    nested, objects = {"v": 1}, (1, 2)
    closures = frozenset({len})
    for _ in range(17):
        nested = {"a": nested, "b": nested}
        objects = (objects, objects)
        closures = frozenset({(lambda s: lambda x: s)(closures),
                              (lambda s: lambda x: (s, 1))(closures)})  # fmt: skip
    for value in (nested, objects, closures):
        assert len(describe_value(value, 0)) < 5_000
    chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    text = describe_callable(chain.init)
    assert "<same:" not in text and text.count("init_empty_state") == 2

    def make(order):
        def node(depth):
            return 1 if depth > 2 else order[depth](depth + 1)

        return node

    outer_inner = [None, None, None]
    first, second = make(outer_inner), make(outer_inner)
    outer_inner[:] = [first, second, first]
    other = [None, None, None]
    a, b = make(other), make(other)
    other[:] = [a, b, b]
    assert describe_callable(first) != describe_callable(a)
