"""Smoke test of experiments/bench_raytune.py at a tiny size (needs ray[tune])."""

import json

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("ray.tune")

from experiments import bench_raytune  # noqa: E402


def test_bench_raytune_main_tiny(tmp_path):
    payload = bench_raytune.main(
        [
            "--trials",
            "2",
            "--steps",
            "20",
            "--interval",
            "10",
            "--burn-in",
            "0",
            "--seeds",
            "1",
            "--ray-modes",
            "synch",
            "--idle-wait",
            "0",
            "--out-dir",
            str(tmp_path),
        ]
    )
    stored = json.loads((tmp_path / "bench_raytune.json").read_text())
    assert (tmp_path / "bench_raytune.md").read_text().startswith("**Ray Tune PBT")
    assert stored["provenance"]["seeds"] == [0]
    assert {"command", "git_commit", "machine"} <= set(stored["provenance"])
    assert len(stored["loadavg_start"]) == 3 and len(stored["loadavg_end"]) == 3
    assert set(payload["runs"][0]["idle_before"]) == {"tempering", "synch"}
    run = payload["runs"][0]
    ray_run = run["ray"]["synch"]
    assert ray_run["errors"] == []
    # both sides take the same number of replica-steps
    assert ray_run["replica_steps"] == run["replica_steps"] == 2 * 20
    assert ray_run["trial_steps"] == [20, 20]
    for side in (run["tempering"], ray_run):
        for key in ("best_val_accuracy", "best_test_accuracy"):
            assert 0.0 <= side[key] <= 1.0
    for call in ("cold", "warm", "second"):
        assert np.isfinite(run["tempering"][f"wall_s_{call}"]) and ray_run["wall_s"] > 0
        assert run[f"ray_over_tempering_{call}"]["synch"] > 0
