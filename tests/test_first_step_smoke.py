"""Smoke test of experiments/first_step.py at its tiniest size (no timings checked)."""

import json

import pytest

from experiments import first_step

VARIANTS = ["loop", "fused", "cold", "warm"]


def test_first_step_smoke(tmp_path, monkeypatch):
    # One real fresh process (the hand loop: the child's code and the timing
    # plumbing); the other variants reuse its timings, for speed: the cache's
    # cold and warm processes are tests/test_compilation_cache.py's.
    real = first_step.measure
    measured = {}

    def measure(variant, model, num, batch, cache_dir, timeout):
        if "loop" not in measured:
            measured["loop"] = real("loop", model, num, batch, None, timeout)
        run = dict(measured["loop"])
        if variant in ("cold", "warm"):
            writes = 3 if variant == "cold" else 0
            run.update(cache_hits=3 - writes, cache_writes=writes, cache_requests=3)
        if variant == "warm":  # a quarter of the time after imports
            run.update(build_s=run["build_s"] / 4, step_s=run["step_s"] / 4)
        return run

    monkeypatch.setattr(first_step, "measure", measure)
    result = first_step.main(
        ["--models", "mlp", "--M", "2", "--batch", "4", "--repeats", "1",
         "--out", str(tmp_path)]
    )  # fmt: skip
    saved = json.loads((tmp_path / "first_step.json").read_text())
    assert saved["statistic"].startswith("median over fresh processes")
    assert saved["provenance"]["git_commit"]
    assert saved["settings"]["models"] == ["mlp"]
    assert saved["settings"]["repeats"] == 1
    (row,) = saved["rows"]
    assert row == json.loads(json.dumps(result["rows"][0]))
    assert row["model"] == "mlp" and row["M"] == 2 and row["batch"] == 4
    assert list(row["median_s"]) == VARIANTS
    assert all(len(row["runs"][v]) == 1 for v in VARIANTS)
    (run,) = row["runs"]["loop"]
    assert set(run) >= {"first_step_s", "process_s", "import_s", "build_s", "step_s"}
    assert 0 < run["import_s"] < run["first_step_s"] <= run["process_s"]
    assert set(row["ratios"]) == {
        "fused/loop", "warm/cold", "warm/loop", "cold/fused", "warm/cold after imports"
    }  # fmt: skip
    assert row["paired"]["warm/cold"]["n"] == 1
    (cold,), (warm,) = row["runs"]["cold"], row["runs"]["warm"]
    after = {
        "cold": cold["build_s"] + cold["step_s"],
        "warm": warm["build_s"] + warm["step_s"],
    }
    assert row["after_imports_median_s"] == pytest.approx(after)
    assert row["ratios"]["warm/cold after imports"] == pytest.approx(0.25)
    assert row["paired"]["warm/cold after imports"]["median"] == pytest.approx(0.25)
    assert row["cache"]["cold"]["cache_writes"] == [3]
    assert row["cache"]["warm"]["cache_hits"] == [3]
    assert saved["summary"]["warm/cold"]["models"] == 1
    table = (tmp_path / "first_step.md").read_text()
    assert "the median over fresh processes" in table
    assert "| mlp | 2 | 1 |" in table


def test_first_step_refuses_unknown_models(tmp_path):
    with pytest.raises(SystemExit):
        first_step.main(["--models", "vgg", "--out", str(tmp_path)])
