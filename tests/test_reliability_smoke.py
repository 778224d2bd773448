"""Smoke test: experiments/reliability.py injects two cheap faults end to end.

The script runs as a child process (``python -m experiments.reliability``), as
from the command line: it caches XLA programs on disk for its own processes
(a JAX setting of the whole process) and its exit status says whether every
row met its expectation. A shortened run (46 steps, 6 rounds) keeps it fast.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_reliability_smoke(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p
    )
    command = [
        sys.executable, "-m", "experiments.reliability", "--faults", "stray_folder",
        "pickle_disabled", "--steps", "46", "--out-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "reliability.json").read_text())
    for entry in ("command", "git_commit", "machine", "seeds"):
        assert record[entry], entry
    assert record["seeds"] == [0]
    assert "--faults stray_folder pickle_disabled" in record["command"]
    rows = {row["details"]["name"]: row for row in record["rows"]}
    assert list(rows) == ["stray_folder", "pickle_disabled"]
    assert all(row["passed"] for row in rows.values())
    assert record["passed"] == 2 and record["failed"] == 0
    stray = rows["stray_folder"]
    assert "ValueError" in stray["observed"] and "['999']" in stray["observed"]
    assert stray["details"]["kept"] and stray["details"]["lock_released"]
    no_pickle = rows["pickle_disabled"]
    assert no_pickle["details"]["unpickle_attempts"] == 0
    assert "resumed after round 4 of 6; result bit for bit" in no_pickle["observed"]
    table = (tmp_path / "reliability.md").read_text()
    assert "**2 of 2 rows pass**" in table
    assert "| fault | injected | what the library did (measured) |" in table
    assert "| stray folder 999 |" in table
