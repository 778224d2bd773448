"""Checkpoints and exact resume: crashes, SIGKILL (also inside a save), Ctrl-C."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import TinyMLP

import tempering as tp

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


class CrashError(Exception):
    pass


def crash_at(round_index):
    def callback(record):
        if record.round == round_index:
            raise CrashError

    return callback


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


def test_pbt_resumes_bit_for_bit(tmp_path, tx, blobs):
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
