"""A run over several JAX processes (jax.distributed, gloo CPU collectives).

The processes are started by :func:`tempering.launch.launch` (a localhost
coordinator on a free port, forced host devices), the way users start them:
2 processes x 2 devices must give the run of 1 process x 4 devices, bit for
bit (the same SPMD program over the same 4-device mesh: XLA partitions it
alike, and the cross-process collectives only move values, they sum
nothing). A process that dies mid-run must end the run with an error naming
it, never a hang. Checkpoints over several processes resume a killed run
exactly, under the single-process rules (lock, manifest, fallback).
"""

import json
import os
import re
import shutil
import socket
import textwrap
import time

import jax
import numpy as np
import pytest

from tempering.launch import LaunchError, initialize, launch, main

pytestmark = pytest.mark.skipif(
    "jax_cpu_collectives_implementation" not in jax.config.values,
    reason="this JAX has no CPU collectives option (gloo)",
)

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import tempering.launch
    tempering.launch.initialize()  # a no-op in a process started alone

    import flax.linen as nn
    import jax
    import numpy as np
    import tempering as tp
    from jax.experimental import multihost_utils
    from tempering.step import zero_model_inputs


    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False):
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


    rng = np.random.default_rng(0)  # the same data in every process
    x = rng.normal(size=(256, 5)).astype(np.float32)
    y = rng.integers(0, 3, 256).astype(np.int32)
    if os.environ.get("WORKER_BAD_DATA") == str(jax.process_index()):
        x = x + 1.0
    ladder = tp.geometric_ladder("learning_rate", 0.02, 0.3, 4)
    state = tp.create_replicas(
        jax.random.key(0), Net(), tp.sgd(0.05, momentum=0.9), x[:1], ladder=ladder
    )
    bad_stream = os.environ.get("WORKER_BAD_STREAM") == str(jax.process_index())

    def stream():  # read whole by every process; batch 13 differs on a bad one
        for i in range(100):
            shift = 1.0 if bad_stream and i == 13 else 0.0
            yield x[32 * (i % 8):][:32] + shift, y[32 * (i % 8):][:32]

    streamed = tp.pt_train(state, ladder, jax.random.key(1), num_steps=20,
                           train_data=stream(), validation_data=(x[:64], y[:64]),
                           exchange_interval=10, devices=jax.devices())
    if os.environ.get("WORKER_DIE") == str(jax.process_index()):
        print("dying", flush=True)
        os._exit(3)
    run = dict(train_data=(x, y), validation_data=(x[:64], y[:64]),
               exchange_interval=10, batch_size=32, devices=jax.devices())
    calls = []
    result = tp.pt_train(state, ladder, jax.random.key(1), num_steps=20,
                         callback=calls.append, **run)
    result = tp.pt_train(result.state, ladder, jax.random.key(1), num_steps=20,
                         move_state=result.move_state, callback=calls.append, **run)
    history = result.history
    weights = multihost_utils.process_allgather(result.state.params, tiled=True)
    # a new call on replicas split over every process, without the move state
    # (read its hyperparameters from one process's devices: an error)
    continued = tp.pt_train(result.state, ladder, jax.random.key(4), num_steps=10,
                            **run)
    pbt = tp.pbt_train(state, jax.random.key(2), num_steps=20, ready_interval=5,
                       config=tp.pbt_config({"learning_rate": (0.01, 0.3)}),
                       **{k: v for k, v in run.items() if k != "exchange_interval"})
    # A dropout rate that is 0 in the burn-in, then laddered: each segment
    # reads the replicas' rates from every process (tempering.step).
    class DropNet(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False, dropout_rate=0.0):
            x = tp.Dropout()(nn.relu(nn.Dense(8)(x)), dropout_rate,
                             deterministic=not train)
            return nn.Dense(3)(x)

    drop_ladder = tp.linear_ladder("dropout_rate", 0.1, 0.4, 4, learning_rate=0.05)
    drop_state = tp.create_replicas(jax.random.key(0), DropNet(), tp.sgd(0.05),
                                    x[:1], ladder=drop_ladder)
    dropped = tp.pt_train(drop_state, drop_ladder, jax.random.key(3), num_steps=20,
                          burn_in=10, burn_in_hyperparams={"dropout_rate": 0.0},
                          **{**run, "exchange_interval": 5})
    lr_drop = tp.shard_replicas(tp.create_replicas(
        jax.random.key(0), DropNet(), tp.sgd(0.05), x[:1], ladder=ladder
    ), jax.devices())
    print("RESULT " + json.dumps(dict(
        process=jax.process_index(),
        zero_inputs=list(zero_model_inputs(lr_drop)),
        dropout_weights=[np.asarray(w).ravel().tolist() for w in jax.tree.leaves(
            multihost_utils.process_allgather(dropped.state.params, tiled=True))],
        devices=len(jax.devices()),
        mesh=len(result.state.params["Dense_0"]["kernel"].sharding.device_set),
        callbacks=len(calls),
        rungs=np.asarray(history.rungs).tolist(),
        accepted=np.asarray(history.move.accepted).tolist(),
        score=np.asarray(history.score).tolist(),
        final_score=np.asarray(result.summary.final_score).tolist(),
        weights=[np.asarray(w).ravel().tolist() for w in jax.tree.leaves(weights)],
        pbt_parent=np.asarray(pbt.history.move.parent).tolist(),
        pbt_lr=np.asarray(pbt.summary.final_hyperparams["learning_rate"]).tolist(),
        stream_score=np.asarray(streamed.history.score).tolist(),
        stream_final=np.asarray(streamed.summary.final_score).tolist(),
        continued=np.asarray(continued.summary.final_score).tolist(),
    )), flush=True)
    """
)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("multiprocess") / "worker.py"
    path.write_text(WORKER)
    return path


def results(launched, folder=None):
    """The processes' results, those of the run in ``folder`` if named."""
    found = [
        json.loads(line[len("RESULT ") :])
        for out in launched.stdout
        for line in out.splitlines()
        if line.startswith("RESULT ")
    ]
    found = [r for r in found if folder is None or r["folder"] == folder]
    return sorted(found, key=lambda r: r["process"])


def test_two_processes_match_one(worker, tmp_path):
    one = results(launch(worker, 1, 4, [str(tmp_path)], timeout=180))
    # two processes of two devices each: processes and local devices both split
    two = results(launch(worker, 2, 2, [str(tmp_path)], timeout=180))
    assert [r["process"] for r in two] == [0, 1]
    (reference,) = one
    assert reference["devices"] == reference["mesh"] == 4
    assert len(reference["rungs"]) == 2  # the second call's 2 rounds
    assert np.asarray(reference["accepted"]).any()  # the exchange moved rungs
    for got in two:
        assert got["devices"] == got["mesh"] == 4  # the global mesh
        # the same history on every process, bit for bit that of one process
        for field in ("rungs", "accepted", "score", "final_score", "weights",
                      "pbt_parent", "pbt_lr", "stream_score", "stream_final",
                      "dropout_weights", "continued"):  # fmt: skip
            assert got[field] == reference[field], field
        assert got["zero_inputs"] == ["dropout_rate"]  # read over the processes
    # callbacks run on process 0 only
    assert [r["callbacks"] for r in two] == [4, 0]
    assert np.any(np.asarray(reference["pbt_parent"]) != np.arange(4))  # copies


CHECKPOINT_WORKER = textwrap.dedent(
    """
    import json, os, sys, warnings
    import tempering.launch
    tempering.launch.initialize()

    import flax.linen as nn
    import jax
    import numpy as np
    import tempering as tp
    from jax.experimental import multihost_utils
    from tempering import checkpoint


    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False):
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


    save, restore = checkpoint.Checkpointer.save, checkpoint.Checkpointer.restore

    def save_then_die(self, tree, extra, step):  # a kill right after a checkpoint
        save(self, tree, extra, step)
        if f"{self.directory.name}:{step}" == os.environ.get("WORKER_CRASH_AT"):
            print("crashed", flush=True)
            os._exit(0)  # every process, at the same step

    def restore_and_say(self, template):
        restored = restore(self, template)
        print(f"restored {self.saved_step}", flush=True)
        return restored

    checkpoint.Checkpointer.save = save_then_die
    checkpoint.Checkpointer.restore = restore_and_say
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 5)).astype(np.float32)
    y = rng.integers(0, 3, 256).astype(np.int32)
    ladder = tp.geometric_ladder("learning_rate", 0.02, 0.3, 4)
    state = tp.create_replicas(
        jax.random.key(0), Net(), tp.sgd(0.05, momentum=0.9), x[:1], ladder=ladder
    )
    for folder in sys.argv[1:]:  # the same run in each folder, in turn
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = tp.pt_train(
                state, ladder, jax.random.key(1), num_steps=40, train_data=(x, y),
                validation_data=(x[:64], y[:64]), exchange_interval=10,
                batch_size=32, devices=jax.devices(), checkpoint_dir=folder)
        weights = multihost_utils.process_allgather(result.state.params, tiled=True)
        print("RESULT " + json.dumps(dict(
            folder=os.path.basename(folder),
            process=jax.process_index(),
            warnings=[str(w.message) for w in caught],
            rungs=np.asarray(result.history.rungs).tolist(),
            accepted=np.asarray(result.history.move.accepted).tolist(),
            score=np.asarray(result.history.score).tolist(),
            final_score=np.asarray(result.summary.final_score).tolist(),
            weights=[np.asarray(w).ravel().tolist() for w in jax.tree.leaves(weights)],
        )), flush=True)
    """
)


def test_checkpoints_over_processes_resume_exactly(tmp_path):
    from tempering.checkpoint_files import MANIFEST

    worker = tmp_path / "checkpoint_worker.py"
    worker.write_text(CHECKPOINT_WORKER)
    whole, killed, held = tmp_path / "whole", tmp_path / "killed", tmp_path / "held"
    # One launch (the processes start once): the whole run, then the same run
    # in another folder, where every process dies right after the checkpoint
    # of step 30 (round 3 of 4).
    crashed = launch(worker, 2, 2, [str(whole), str(killed)], timeout=180,
                     env={"WORKER_CRASH_AT": "killed:30"})  # fmt: skip
    (reference, _) = results(crashed, "whole")
    assert sorted(os.listdir(whole)) == ["30", "40"]  # keep_checkpoints=2
    assert (whole / "40" / MANIFEST).exists()  # process 0 wrote it, after all
    assert all("crashed" in out for out in crashed.stdout)
    assert not results(crashed, "killed")
    assert (killed / ".tempering-lock").exists()  # left by the dead process 0
    # resumed in one process (the same four devices, unsplit): from step 30
    alone = tmp_path / "alone"
    shutil.copytree(killed, alone)
    one = launch(worker, 1, 4, [str(alone)], timeout=180)
    assert "restored 30" in one.stdout[0]
    (single,) = results(one, "alone")
    for field in ("rungs", "accepted", "score", "final_score", "weights"):
        assert single[field] == reference[field], field
    # a flipped byte in step 30: set aside, the resume starts from step 20
    arrays = [p for p in (killed / "30" / "arrays").rglob("*") if p.is_file()]
    target = max(arrays, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    # One launch: the resume, then a folder another live run holds, refused at
    # once (the launch fails), the holder named.
    held.mkdir()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
    (held / ".tempering-lock").write_text(json.dumps(holder))
    with pytest.raises(LaunchError) as error:
        launch(worker, 2, 2, [str(killed), str(held)], timeout=180,
               end_others=False, distributed_timeout=10)  # fmt: skip
    resumed = error.value.result
    assert all("restored 20" in out for out in resumed.stdout)
    got = results(resumed, "killed")
    assert [r["process"] for r in got] == [0, 1]
    for field in ("rungs", "accepted", "score", "final_score", "weights"):
        assert got[0][field] == got[1][field] == reference[field], field
    assert np.asarray(reference["accepted"]).any()
    warned = " ".join(got[0]["warnings"])
    assert "taking over the lock of process" in warned  # on process 0
    assert "the checkpoint of step 30" in warned and "fails its checksum" in warned
    assert not got[1]["warnings"]  # the decisions are process 0's to report
    assert len([p for p in os.listdir(killed) if p.startswith("30.corrupt-")]) == 1
    assert not results(resumed, "held")
    stderr = "".join(resumed.stderr)
    assert f"is in use by another run (process {os.getpid()} on host" in stderr
    assert sorted(os.listdir(held)) == [".tempering-lock"]


@pytest.mark.parametrize(
    ("env", "messages"),
    [
        ({"WORKER_BAD_DATA": "1"}, ["the data differs between processes",
                                    "on process 1 is not the one on process 0"]),
        # every process reads the whole stream; process 1's batch 13 differs
        ({"WORKER_BAD_STREAM": "1"},
         ["train_data differs between processes: batches 10 to 19",
          "on process 1 are not those of process 0"]),
    ],
    ids=["in_memory", "stream"],
)  # fmt: skip
def test_data_that_differs_between_processes_is_an_error(worker, env, messages):
    with pytest.raises(LaunchError) as error:
        launch(worker, 2, 1, ["unused"], timeout=180, env=env)
    stderr = "".join(error.value.result.stderr)
    for message in messages:
        assert message in stderr


def test_the_launcher_ends_the_others(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.environ.get('TEMPERING_PROCESS_ID') == '1':\n"
        "    sys.exit(3)\n"
        "time.sleep(600)\n"
    )
    with pytest.raises(LaunchError, match=r"process 1 of 3 exited with status 3"):
        launch(script, 3, timeout=60)
    with pytest.raises(LaunchError, match=r"process 0 of 1 was still running"):
        launch(script, 1, timeout=1)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, never reaped here, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_launcher_ends_what_a_failed_process_started(tmp_path):
    # The failed process's own children (a data loader's workers) outlived
    # the launch: its group was signalled only while it ran.
    script = tmp_path / "script.py"
    pids = tmp_path / "pids"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '120'])\n"
        f"open({str(pids)!r} + os.environ['TEMPERING_PROCESS_ID'], 'w')"
        ".write(str(child.pid))\n"
        "if os.environ['TEMPERING_PROCESS_ID'] == '1':\n"
        "    time.sleep(1)\n"
        "    sys.exit(3)\n"
        "time.sleep(120)\n"
    )
    with pytest.raises(LaunchError, match=r"process 1 of 2 exited with status 3"):
        launch(script, 2, timeout=60)
    children = [int((tmp_path / f"pids{rank}").read_text()) for rank in (0, 1)]
    deadline = time.monotonic() + 10
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, children))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-n", "0", "x.py"], "-n/--num-processes must be >= 1, got 0"),
        (["--devices-per-process", "-1", "x.py"], "--devices-per-process must be >= 1"),
        (["--timeout", "nan", "x.py"], "--timeout must be a finite number"),
    ],
)
def test_the_launchers_command_line_refuses_bad_numbers(argv, message, capsys):
    # -n 0 was a traceback, --timeout nan ran without a timeout
    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_processes": "2"}, TypeError, "num_processes must be an int"),
        ({"num_processes": True}, TypeError, "num_processes must be an int"),
        ({"devices_per_process": 1.5}, TypeError, "devices_per_process must be an int"),
        ({"distributed_timeout": 0}, ValueError, "distributed_timeout must be >= 1"),
    ],
)
def test_launch_refuses_bad_numbers_before_starting_anything(kwargs, error, message):
    # a str was a TypeError from '<', True ran one process, 1.5 reached XLA's flag
    # parser in every process, a timeout of 0 aborted them from C++
    with pytest.raises(error, match=message):
        launch("unused.py", **{"num_processes": 2, **kwargs})
    with pytest.raises(ValueError, match="timeout must be >= 1"):
        initialize(timeout=0)


# A tiny PT run every process builds alike (after tempering.launch.initialize()).
TINY_RUN = textwrap.dedent(
    """
    import flax.linen as nn
    import jax
    import numpy as np
    import tempering as tp


    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False):
            return nn.Dense(3)(x)


    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int32)
    ladder = tp.geometric_ladder("learning_rate", 0.02, 0.3, 4)
    state = tp.create_replicas(
        jax.random.key(0), Net(), tp.sgd(0.05), x[:1], ladder=ladder
    )
    """
)

MISUSE_WORKER = (
    textwrap.dedent(
        """
    import json, os, signal, sys
    import tempering.launch
    tempering.launch.initialize()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    """
    )
    + TINY_RUN
    + textwrap.dedent(
        """
    me = jax.process_index()

    def stop_with_an_error(record):
        raise KeyError("the user's callback failed")

    def ctrl_c(record):  # Ctrl-C on process 0 (callbacks run there), once
        if record.round == 0:
            os.kill(os.getpid(), signal.SIGINT)

    nan_on_1 = x.copy()
    nan_on_1[0, 0] = np.nan if me == 1 else nan_on_1[0, 0]
    shift = 1.0 if me == 1 else 0.0  # process 1's validation stream differs
    validation_stream = [(x[:32] + shift, y[:32]), (x[32:], y[32:])]
    cases = {
        "keys": dict(key=jax.random.key(1 + me)),  # each process its own key
        "mesh": dict(devices=jax.devices()[:2]),  # process 0's devices only
        # the global mesh on one process, its own devices on the other; the
        # global mesh in another order (before: misleading errors, a stall)
        "mixed_mesh": dict(devices=jax.devices() if me == 0 else jax.local_devices()),
        "mesh_order": dict(devices=jax.devices()[::-1] if me else jax.devices()),
        "callback": dict(callback=stop_with_an_error),  # raises on process 0
        "ctrl_c": dict(callback=ctrl_c),
        # bad on one process only: every process must fail alike, not hang
        "nan_on_1": dict(train_data=(nan_on_1, y)),
        "eval_stream": dict(validation_data=validation_stream),
        "unshared": dict(checkpoint_dir=os.path.join(sys.argv[1], f"ck{me}")),
        # each process its own state on its own devices (before: two runs,
        # process 0's reported); another plan on process 1 (before: a hang)
        "own_state": dict(devices=jax.local_devices(), state=tp.create_replicas(
            jax.random.key(me), Net(), tp.sgd(0.05), x[:1], ladder=ladder)),
        "own_plan": dict(burn_in=10 if me else 0),
        # a streamed batch refused on process 1 only (before: process 0 waited
        # for it in the round's collective until JAX's timeout)
        "nan_batch_on_1": dict(train_data=(
            (x[16 * (i % 4):][:16] * (np.nan if me == 1 and i == 3 else 1.0),
             y[16 * (i % 4):][:16]) for i in range(100))),
    }
    for case, settings in cases.items():
        settings = {"key": jax.random.key(1), "train_data": (x, y),
                    "validation_data": (x, y), "state": state, **settings}
        try:
            result = tp.pt_train(settings.pop("state"), ladder, settings.pop("key"),
                                 num_steps=20, exchange_interval=10, batch_size=16,
                                 **settings)
            outcome = f"ran: interrupted {result.summary.interrupted}"
        except Exception as error:
            outcome = f"{type(error).__name__}: {error}"
        print("RESULT " + json.dumps(
            dict(folder=case, process=me, outcome=outcome)), flush=True)

    # tp.train continued from its result (the exchange reads the rungs held)
    move = tp.exchange_move(ladder, c=1.0)
    config = tp.RunConfig(num_steps=10, interval=5, batch_size=16, progress=False,
                          devices=jax.devices())
    data = tp.RunData((x, y), validation=(x, y))
    first = tp.train(state, jax.random.key(1), move, data, config)
    again = tp.train(first.state, jax.random.key(1), move, data, config,
                     move_state=first.move_state)
    print("RESULT " + json.dumps(dict(folder="continued", process=me,
                                      outcome=f"ran: step {int(again.state.step)}")))

    from tempering import ensemble
    grid = tp.pt_train(state, ladder, jax.random.key(1), exchanges=False,
                       train_data=(x, y), validation_data=(x, y), num_steps=10,
                       exchange_interval=5, batch_size=16, devices=jax.devices())
    mean = ensemble.replicas_probabilities(grid.state, x[:64])
    print("RESULT " + json.dumps(dict(folder="ensemble", process=me, outcome=(
        f"ran: probabilities {mean.shape} summing to {mean.sum():.1f}"))))

    # process 0 cannot write a manifest (a full disk): every process raises
    import tempering.checkpoint as checkpoint
    real_manifest = checkpoint.write_manifest
    def full_disk(step_dir):
        if me == 0 and step_dir.name == "10":
            raise OSError(28, "No space left on device")
        return real_manifest(step_dir)
    checkpoint.write_manifest = full_disk
    try:
        tp.pt_train(state, ladder, jax.random.key(1), train_data=(x, y),
                    validation_data=(x, y), num_steps=20, exchange_interval=10,
                    batch_size=16, checkpoint_dir=os.path.join(sys.argv[1], "full"))
        outcome = "ran"
    except Exception as error:
        outcome = f"{type(error).__name__}: {error} | carries state: " + str(
            hasattr(error, "state"))
    print("RESULT " + json.dumps(dict(folder="full_disk", process=me,
                                      outcome=outcome)), flush=True)
    """
    )
)


def test_misuse_over_processes_fails_alike_on_every_process(tmp_path):
    """Each process its own key, a mesh of one process's devices, a callback that
    raises on process 0: every process raises (none waits forever in a
    collective the others never reach), and the run goes on to the next case;
    Ctrl-C on process 0 interrupts them all alike."""
    worker = tmp_path / "misuse_worker.py"
    worker.write_text(MISUSE_WORKER)
    launched = launch(worker, 2, 2, [str(tmp_path)], timeout=240)
    cases = ("keys", "mesh", "callback", "ctrl_c")
    keys, mesh, callback, ctrl_c = (results(launched, c) for c in cases)
    # data bad on process 1 only (before: each process its own error, then
    # collectives out of step); a checkpoint folder each process sees apart
    # (before: a hang in orbax's restore); a continued tp.train (before: a
    # RuntimeError reading the rungs held over processes)
    expected = {
        "nan_on_1": "ValueError: the data differs between processes",
        "eval_stream": "ValueError: validation_data differs between processes: "
        "the batches process 1 read are not those of process 0",
        "unshared": r"ValueError: checkpoint_dir \S+ck[01] is not the same folder on "
        "every process: process 1 does not see the lock file process 0 wrote",
        "continued": "ran: step 20",
        "mixed_mesh": r"ValueError: devices differs between processes \(process 0: "
        r"devices \[0, 1, \d+, \d+\]; process 1: its own\)",
        "mesh_order": r"ValueError: devices differs between processes \(process 0: "
        r"devices \[0, 1, \d+, \d+\]; process 1: devices \[\d+, \d+, 1, 0\]\)",
        "own_state": r"ValueError: the argument differs between processes: "
        r"argument\['state'\]\[0\]\['Dense_0'\]\['kernel'\] on process 1",
        "own_plan": r"ValueError: the argument differs between processes: "
        r"argument\['burn_in'\] on process 1",
        "nan_batch_on_1": r"(ValueError: train_data differs between processes: "
        r"batches 0 to \d+ of the stream on process 1|BatchError: train_data "
        r"batch 3 \(counting from 0\) is refused)",
        # the grid's ensemble of a run split over processes (before: a
        # RuntimeError reading the replicas' finite flags)
        "ensemble": r"ran: probabilities \(64, 3\) summing to 64.0",
        # before: process 1 waited in the save's barrier until the timeout
        "full_disk": r"OSError: (\[Errno 28\] No space left on device|process 0 "
        r"could not write the manifest of \S+/10) \| carries state: True",
    }
    for case, pattern in expected.items():
        outcomes = [got["outcome"] for got in results(launched, case)]
        assert len(outcomes) == 2, (case, outcomes)
        assert all(re.match(pattern, o) for o in outcomes), (case, outcomes)
    for got in keys:
        assert got["outcome"].startswith(
            "ValueError: the argument differs between processes: argument['key'] on "
            "process 1 is not the one on process 0"
        )
    for got in mesh:
        assert got["outcome"].startswith("ValueError: devices: over 2 processes")
        assert "on process 1 it holds devices of processes [0]" in got["outcome"]
    assert callback[0]["outcome"] == 'KeyError: "the user\'s callback failed"'
    assert callback[1]["outcome"].startswith(
        "RuntimeError: the callback raised an error on process 0 after round 0"
    )
    # Ctrl-C on process 0 stops every process, and every one says it was
    assert [got["outcome"] for got in ctrl_c] == ["ran: interrupted True"] * 2


def test_a_dead_process_ends_the_run(worker):
    # Process 1 dies between two calls. Left alone (the launcher would end it
    # at once), process 0 ends by itself: an error in its next collective,
    # then JAX's heartbeat timeout (distributed_timeout / 2) at its exit.
    with pytest.raises(LaunchError, match=r"process 1 of 2 exited with status 3") as e:
        launch(
            worker, 2, 1, ["unused"], timeout=120, env={"WORKER_DIE": "1"},
            distributed_timeout=10, end_others=False,
        )  # fmt: skip
    result = e.value.result
    assert "dying" in result.stdout[1]
    assert result.returncodes[0] not in (0, None)  # ended by itself, not killed
    assert "Gloo" in result.stderr[0] or "distributed service" in result.stderr[0]
    assert result.seconds < 100


CTRL_C_WORKER = (
    textwrap.dedent(
        """
    import sys, time
    import tempering.launch
    tempering.launch.initialize()
    """
    )
    + TINY_RUN
    + textwrap.dedent(
        """

    def started(record):  # runs on process 0: the terminal's Ctrl-C comes now
        if record.round == 0:
            open(sys.argv[1], "w").close()
            time.sleep(3)

    result = tp.pt_train(state, ladder, jax.random.key(1), num_steps=4000,
                         train_data=(x, y), validation_data=(x, y),
                         exchange_interval=10, batch_size=16, callback=started,
                         progress=False)
    print(f"RESULT interrupted {result.summary.interrupted} "
          f"rounds {len(result.history.step)}", flush=True)
    """
    )
)


def test_ctrl_c_on_the_launcher_stops_every_process_after_a_round(tmp_path):
    """Before, it killed the processes (started in sessions of their own, they
    never saw the SIGINT): no result, no checkpoint, the output lost."""
    import signal
    import subprocess
    import sys
    import time

    worker, marker = tmp_path / "ctrl_c_worker.py", tmp_path / "round0"
    worker.write_text(CTRL_C_WORKER)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tempering.launch", "-n", "2", "--timeout", "300",
         str(worker), str(marker)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.exists() and launcher.poll() is None:
        assert time.monotonic() < deadline, "round 0 never ended"
        time.sleep(0.1)
    launcher.send_signal(signal.SIGINT)  # a terminal's Ctrl-C
    out, err = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, err[-2000:]
    assert "Ctrl-C passed on to process 0" in err
    for rank in (0, 1):
        found = re.search(rf"\[{rank}\] RESULT interrupted True rounds (\d+)", out)
        assert found and int(found.group(1)) < 400, out[-2000:]
