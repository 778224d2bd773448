"""experiments/zoo_summary.py: the merged zoo table is what the records say."""

from __future__ import annotations

import copy
from pathlib import Path

from experiments import zoo_summary


def _provenance(commit):
    machine = {"cpu": "Test CPU", "cpu_isa": "avx2", "cpu_count": 2, "jax": "0.0"}
    return {"git_commit": commit, "machine": machine}


def _records():
    zoo = {
        "provenance": _provenance("a" * 40),
        "rows": [
            {"model": "mlp", "M": 8, "loop_vs": {"fused": 1.5},
             "loop_vs_paired": {"fused": {"q25": 1.4, "q75": 1.6}},
             "hand_vmap_vs_fused": 1.1, "memory_vs_m_times_one": {"fused": 0.5}},
            {"model": "cnn", "M": 8, "loop_vs": {"fused": 2.0},
             "loop_vs_paired": {}, "hand_vmap_vs_fused": None},
        ],
    }  # fmt: skip
    first = {
        "provenance": _provenance("b" * 40),
        "rows": [
            {"model": "mlp", "M": 8,
             "runs": {"loop": [{"first_step_s": t} for t in (1.0, 2.0, 4.0)],
                      "fused": [{"first_step_s": 1.0}] * 3},
             "paired": {"warm/cold after imports": {"median": 0.2}}},
        ],
    }  # fmt: skip
    many = {
        "provenance": _provenance("c" * 40),
        "segment_steps": 20,
        "rows": [
            {"model": "mlp", "M": 32, "loop_vs": {"fused": 0.9, "segment": 1.2}},
            {"model": "mlp", "M": 128, "loop_vs": {"fused": 0.7}},
        ],
    }
    return {"bench_zoo": zoo, "first_step": first, "bench_zoo_many": many}


def test_the_cells_come_from_the_records():
    text = zoo_summary.markdown(_records())
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == (
        "| model | loop / fused, M = 8 | hand vmap / fused | memory ÷ (M × one) "
        "| first step loop / fused "
        "| cache warm / cold (after imports) | M = 32 | M = 128 |"
    )
    # the first step as loop / fused per repeat (> 1: the library is faster)
    assert rows[1] == (
        "| mlp | 1.50 [1.40, 1.60] | 1.10 | 0.50 | 2.00 [1.50, 3.00] | 0.20 "
        "| 0.90 (1.20) | 0.70 |"
    )
    assert rows[2] == "| cnn | 2.00 | – | – | – | – | – | – |"
    assert "`bench_zoo` at aaaaaaa (Test CPU, avx2, 2 cores, jax 0.0)" in text
    dirty = _records()
    dirty["first_step"]["provenance"] = _provenance("b" * 40 + "-dirty")
    assert "`first_step` at bbbbbbb-dirty (" in zoo_summary.markdown(dirty)
    assert "`first_step` at bbbbbbb" in text and "`bench_zoo_many` at ccccccc" in text
    assert "a segment of 20 steps" in text


def test_only_m_8_rows_of_the_zoo_are_listed():
    records = _records()
    extra = copy.deepcopy(records["bench_zoo"]["rows"][0]) | {"M": 16}
    records["bench_zoo"]["rows"].append(extra)
    assert zoo_summary.markdown(records) == zoo_summary.markdown(_records())


def test_the_committed_table_is_what_the_committed_records_give():
    committed = (zoo_summary.RECORDS_DIR / f"{zoo_summary.NAME}.md").read_text()
    records = zoo_summary._load(zoo_summary.RECORDS_DIR)
    assert committed == zoo_summary.markdown(records), (
        "experiments/results/zoo_summary.md is stale: run python -m "
        "experiments.zoo_summary --out-dir experiments/results, then python -m "
        "experiments.update_readme"
    )


def test_it_writes_where_every_script_writes(tmp_path, monkeypatch):
    """It wrote experiments/results/zoo_summary.md, unlike every other script."""
    from experiments import common

    committed = zoo_summary.RECORDS_DIR / f"{zoo_summary.NAME}.md"
    before = committed.stat().st_mtime_ns
    assert zoo_summary.RESULTS_DIR == common.RESULTS_DIR  # every script's default
    monkeypatch.chdir(tmp_path)  # (whatever $TEMPERING_RESULTS_DIR said at import)
    monkeypatch.setattr(zoo_summary, "RESULTS_DIR", Path("tempering-results"))
    text = zoo_summary.main([])  # ./tempering-results, read from the records
    assert (
        tmp_path / "tempering-results" / f"{zoo_summary.NAME}.md"
    ).read_text() == text
    zoo_summary.main(["--out-dir", str(tmp_path / "elsewhere")])
    assert (tmp_path / "elsewhere" / f"{zoo_summary.NAME}.md").read_text() == text
    assert committed.stat().st_mtime_ns == before
