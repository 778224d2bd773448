"""Several JAX processes on one machine: a launcher and its ``initialize``.

:func:`launch` (or ``python -m tempering.launch``) starts ``num_processes``
copies of a Python script, each with ``devices_per_process`` CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=K``, ``JAX_PLATFORMS=cpu``)
and a localhost coordinator on a free port. The script calls
:func:`initialize` first: it turns on JAX's gloo CPU collectives and calls
:func:`jax.distributed.initialize` from the environment the launcher set
(``TEMPERING_COORDINATOR``, ``TEMPERING_NUM_PROCESSES``,
``TEMPERING_PROCESS_ID``), with timeouts, so that ``jax.devices()`` then lists
every process's devices (the global mesh) and ``tp.pt_train(...,
devices=jax.devices())`` splits the replicas over all of them.

The launcher waits for every process under one overall timeout. When a
process exits with an error (or is killed), the others are ended and a
:class:`LaunchError` names the process and its exit status: a run never hangs
on a dead peer. This is how the tests run several processes; on a cluster
(Slurm, TPU slices, Kubernetes) call :func:`jax.distributed.initialize()`
without arguments instead: it picks the cluster up by itself.

From a shell, ``python -m tempering.launch -n 2 --devices-per-process 2
train.py --seed 0`` runs ``train.py --seed 0`` in 2 processes of 2 devices
each, the script starting with:

```python
import tempering.launch
tempering.launch.initialize()  # before any other JAX call
import jax
import tempering as tp
...
result = tp.pt_train(state, ladder, key, ..., devices=jax.devices())
```
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from tempering.config import check_int

__all__ = ["LaunchError", "LaunchResult", "free_port", "initialize", "launch"]

#: Environment variables :func:`launch` sets and :func:`initialize` reads.
COORDINATOR = "TEMPERING_COORDINATOR"
NUM_PROCESSES = "TEMPERING_NUM_PROCESSES"
PROCESS_ID = "TEMPERING_PROCESS_ID"
TIMEOUT = "TEMPERING_DISTRIBUTED_TIMEOUT"


class LaunchError(RuntimeError):
    """A launched process failed, or the launch ran past its timeout.

    ``result`` holds what every process wrote and its exit status (None for a
    process the launcher ended).
    """

    def __init__(self, message: str, result: LaunchResult):
        super().__init__(message)
        self.result = result


class LaunchResult(NamedTuple):
    """What :func:`launch` returns: each process's exit status and output."""

    returncodes: list[int | None]  # None: ended by the launcher
    stdout: list[str]
    stderr: list[str]
    seconds: float  # wall time of the launch


def free_port() -> int:
    """A TCP port free on localhost now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def initialize(timeout: int | None = None) -> None:
    """Joins the processes :func:`launch` started (call it before any JAX work).

    Uses JAX's gloo CPU collectives and :func:`jax.distributed.initialize`
    with the coordinator, process count and id that :func:`launch` put in the
    environment. Without them (a script run on its own) it does nothing, so
    the same script runs as one process too.

    Args:
        timeout: seconds to wait for every process to join, and for a
            silent peer before the others fail (JAX's heartbeat); default
            the launcher's (``TEMPERING_DISTRIBUTED_TIMEOUT``) or 60.

    Raises:
        TypeError: ``timeout`` not an int.
        ValueError: ``timeout`` below 1.
    """
    if timeout is not None:
        check_int(timeout, "timeout", 1)
    if COORDINATOR not in os.environ:
        return
    import jax

    if timeout is None:
        timeout = int(os.environ.get(TIMEOUT, "60"))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ[COORDINATOR],
        num_processes=int(os.environ[NUM_PROCESSES]),
        process_id=int(os.environ[PROCESS_ID]),
        initialization_timeout=timeout,
        heartbeat_timeout_seconds=max(5, timeout // 2),
        shutdown_timeout_seconds=timeout,
    )


def launch(
    script: str | os.PathLike,
    num_processes: int,
    devices_per_process: int = 1,
    args: Sequence[str] = (),
    *,
    timeout: float = 600.0,
    env: Mapping[str, str] | None = None,
    distributed_timeout: int = 60,
    check: bool = True,
    end_others: bool = True,
) -> LaunchResult:
    """Runs ``script`` as ``num_processes`` JAX processes of one distributed run.

    Each process gets ``devices_per_process`` CPU devices and the environment
    :func:`initialize` reads (a free localhost port for the coordinator,
    process 0). The launcher waits for them all; as soon as one exits with an
    error, the others are ended (SIGTERM, then SIGKILL), so a dead process
    never leaves the rest waiting on it.

    Args:
        script: the Python script each process runs (``python script args``).
        num_processes: how many processes.
        devices_per_process: CPU devices in each process.
        args: the script's command-line arguments (the same for every process).
        timeout: seconds for the whole launch; past it every process is ended.
        env: extra environment variables for every process.
        distributed_timeout: the processes' own timeout (:func:`initialize`).
        check: raise :class:`LaunchError` when a process fails.
        end_others: end the other processes as soon as one fails (default);
            False waits for them to end on their own (JAX's own timeouts end
            a process whose peer is gone), still within ``timeout``.

    Returns:
        :class:`LaunchResult`: exit statuses and the output of each process.

    Raises:
        LaunchError: a process failed or the timeout passed (with ``check``);
            the message names the process, its exit status and its last
            lines of stderr.
        TypeError: ``num_processes``, ``devices_per_process`` or
            ``distributed_timeout`` not an int.
        ValueError: one of them below 1, or ``timeout`` not a finite number
            of seconds above 0.
    """
    for name, value in (
        ("num_processes", num_processes),
        ("devices_per_process", devices_per_process),
        ("distributed_timeout", distributed_timeout),
    ):
        check_int(value, name, 1)
    if not (math.isfinite(timeout) and timeout > 0):  # nan would never time out
        raise ValueError(
            f"timeout must be a finite number of seconds > 0, got {timeout}"
        )
    address = f"127.0.0.1:{free_port()}"
    base = {**os.environ, **(env or {})}
    base["JAX_PLATFORMS"] = "cpu"
    flags = [
        f
        for f in base.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    base["XLA_FLAGS"] = " ".join(flags)
    base[TIMEOUT] = str(distributed_timeout)
    start = time.monotonic()
    outputs, procs = [], []
    with tempfile.TemporaryDirectory(prefix="tempering-launch-") as tmp:
        try:
            for rank in range(num_processes):
                process_env = dict(base)
                if num_processes > 1:
                    process_env[COORDINATOR] = address
                    process_env[NUM_PROCESSES] = str(num_processes)
                    process_env[PROCESS_ID] = str(rank)
                out = open(Path(tmp, f"{rank}.out"), "w+")  # noqa: SIM115
                err = open(Path(tmp, f"{rank}.err"), "w+")  # noqa: SIM115
                outputs.append((out, err))
                procs.append(
                    subprocess.Popen(
                        [sys.executable, os.fspath(script), *args],
                        env=process_env,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                    )  # fmt: skip
                )
            failure = _wait(procs, start + timeout, end_others)
        finally:
            codes = [p.returncode for p in procs]
            for p in procs:
                _end(p)
            texts = []
            for out, err in outputs:
                out.seek(0)
                err.seek(0)
                texts.append((out.read(), err.read()))
                out.close()
                err.close()
    result = LaunchResult(
        codes,
        [t[0] for t in texts],
        [t[1] for t in texts],
        round(time.monotonic() - start, 2),
    )
    if failure is not None and check:
        rank, why = failure
        tail = "\n".join(result.stderr[rank].strip().splitlines()[-15:])
        raise LaunchError(
            f"process {rank} of {num_processes} {why} (exit statuses {codes}, None: "
            f"ended by the launcher); its last lines of stderr:\n{tail}",
            result,
        )
    return result


def _wait(
    procs: list[subprocess.Popen], deadline: float, end_others: bool = True
) -> tuple[int, str] | None:
    """Waits for the processes: None, or (the first failed process, why).

    Returns at the first failure with ``end_others``, else once all ended;
    the process named is the first seen failing (the one that died first).
    Ctrl-C (the processes run in sessions of their own, so a terminal's
    SIGINT reaches only the launcher) is passed on to process 0, which stops
    every process after the round in progress, as in one process; a second
    Ctrl-C ends them all.
    """
    failed, interrupts = None, 0
    while True:
        try:
            running = False
            for rank, p in enumerate(procs):
                code = p.poll()
                if code is None:
                    running = True
                elif code != 0 and failed is None:
                    failed = rank, _died(code)
            if failed is not None and (end_others or not running):
                return failed
            if not running:
                return None
            if time.monotonic() > deadline:
                late = [rank for rank, p in enumerate(procs) if p.poll() is None]
                return failed or (late[0], f"was still running at the timeout {late}")
            time.sleep(0.05)
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts > 1:
                return 0, "was ended by a second Ctrl-C (every process was)"
            if procs[0].poll() is None:
                procs[0].send_signal(signal.SIGINT)
            print(
                "tempering.launch: Ctrl-C passed on to process 0: the run stops "
                "after the round in progress (Ctrl-C again ends every process)",
                file=sys.stderr,
                flush=True,
            )


def _died(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by {name}"
    return f"exited with status {code}"


def _end(p: subprocess.Popen) -> None:
    """Ends a process the launcher started (its session), SIGTERM then SIGKILL.

    Its process group too when it has exited itself: what it started (a data
    loader's workers) would outlive the launch.
    """
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:  # pragma: no cover
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tempering.launch -n N --devices-per-process K script.py ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m tempering.launch",
        description="Runs a script as N JAX processes with K CPU devices each "
        "(the script calls tempering.launch.initialize() first).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "-n",
        "--num-processes",
        type=int,
        default=2,
        help="JAX processes to start (>= 1)",
    )
    parser.add_argument(
        "--devices-per-process",
        type=int,
        default=1,
        help="CPU devices each process sees (>= 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds for the whole launch; past it every process is ended",
    )
    parser.add_argument(
        "--distributed-timeout",
        type=int,
        default=60,
        help="seconds the processes wait for each other "
        "(jax.distributed's own timeout)",
    )
    parser.add_argument("script", help="the Python script every process runs")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="arguments passed on to the script")  # fmt: skip
    ns = parser.parse_args(argv)
    for flag, value in (("-n/--num-processes", ns.num_processes),
                        ("--devices-per-process", ns.devices_per_process),
                        ("--distributed-timeout", ns.distributed_timeout)):  # fmt: skip
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if not (math.isfinite(ns.timeout) and ns.timeout > 0):  # nan: never timed out
        parser.error(
            f"--timeout must be a finite number of seconds > 0, got {ns.timeout}"
        )
    try:
        result = launch(
            ns.script, ns.num_processes, ns.devices_per_process, ns.args,
            timeout=ns.timeout, distributed_timeout=ns.distributed_timeout,
        )  # fmt: skip
    except LaunchError as error:
        _echo(error.result)
        print(f"tempering.launch: {error}", file=sys.stderr)
        return 1
    _echo(result)
    return 0


def _echo(result: LaunchResult) -> None:
    for rank, (out, err) in enumerate(zip(result.stdout, result.stderr, strict=True)):
        for line in out.splitlines():
            print(f"[{rank}] {line}")
        for line in err.splitlines():
            print(f"[{rank}] {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
