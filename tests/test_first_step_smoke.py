"""Smoke test of experiments/first_step.py at its tiniest size (no timings checked)."""

import json

import pytest

from experiments import first_step

VARIANTS = ["loop", "fused", "cold", "warm"]


def test_first_step_smoke(tmp_path):
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
    for v in VARIANTS:
        (run,) = row["runs"][v]
        assert set(run) >= {"first_step_s", "process_s", "import_s", "build_s",
                            "step_s"}  # fmt: skip
        assert 0 < run["import_s"] < run["first_step_s"] <= run["process_s"]
    assert set(row["ratios"]) == {"fused/loop", "warm/cold", "warm/loop", "cold/fused"}
    assert row["paired"]["warm/cold"]["n"] == 1
    # the cold process wrote every program, the warm one compiled none
    cold, warm = row["cache"]["cold"], row["cache"]["warm"]
    assert cold["cache_hits"] == [0] and cold["cache_writes"][0] > 0
    assert warm["cache_writes"] == [0]
    assert warm["cache_hits"] == warm["cache_requests"] == cold["cache_requests"]
    assert saved["summary"]["warm/cold"]["models"] == 1
    table = (tmp_path / "first_step.md").read_text()
    assert "the median over fresh processes" in table
    assert "| mlp | 2 | 1 |" in table


def test_first_step_refuses_unknown_models(tmp_path):
    with pytest.raises(SystemExit):
        first_step.main(["--models", "vgg", "--out", str(tmp_path)])
