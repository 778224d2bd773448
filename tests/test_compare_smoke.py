"""Smoke test of experiments/compare.py: the real harness at a tiny size."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from experiments import compare
from tempering.zoo import datasets


def test_compare_main_tiny(tmp_path, monkeypatch):
    # MNIST-1D generated once at a fifth of its size (1,000 examples; the
    # generator's cost), small batches and evaluation subsets: the harness's
    # files, table and records do not depend on the sizes
    small = functools.cache(functools.partial(datasets.load_mnist1d, num_samples=1000))
    monkeypatch.setattr(datasets, "load_mnist1d", small)
    argv = ["mnist1d", "--seeds", "2", "--steps", "40", "--interval", "10"]
    argv += ["--burn-in", "10", "--replicas", "3", "--train-subset", "512"]
    argv += ["--batch-size", "16", "--val-subset", "64", "--test-subset", "64"]
    argv += ["--out-dir", str(tmp_path)]
    payload = compare.main(argv)
    # one file per seed; a second call reruns nothing and merges the same table
    assert sorted(
        p.name for p in (tmp_path / "compare" / "compare_mnist1d").iterdir()
    ) == ["seed0.json", "seed1.json"]
    stored = json.loads((tmp_path / "compare_mnist1d.json").read_text())
    again = compare.main(argv)
    assert again["table"] == payload["table"]
    assert (tmp_path / "compare_mnist1d.md").read_text().startswith("**mnist1d**")
    assert (tmp_path / "compare_mnist1d.png").stat().st_size > 0
    assert stored["provenance"]["seeds"] == [0, 1]
    assert {"command", "git_commit", "machine"} <= set(stored["provenance"])
    assert set(payload["summary"]) == set(compare.DEFAULT_METHODS)
    for method in compare.DEFAULT_METHODS:
        errors = np.asarray(payload["summary"][method]["test_error"])
        assert errors.shape == (2,) and np.all((errors >= 0) & (errors <= 1))
        # (40 - 10) / 10 rounds; PBT does not exploit after the last segment
        rounds = 2 if method == "pbt" else 3
        assert len(stored["runs"][0][method]["curve_step"]) == rounds
    # PT adapts C with no grid run before it: a quarter of the 3 rounds
    c = np.asarray(stored["runs"][0]["pt"]["c"])
    assert c.shape == (3,) and np.all(c > 0) and c[1] == c[2]
    assert "pt-grid" in payload["paired"]


def test_data_dir_default_is_shared_data_next_to_the_repository(monkeypatch, tmp_path):
    from experiments import common

    monkeypatch.delenv(common.DATA_DIR_ENV, raising=False)
    root = Path(common.__file__).resolve().parents[1]
    assert compare.parse_args(["mnist1d"]).data_dir == root.parent / "shared" / "data"
    # resolved from wherever the repository is, not a path of one machine
    monkeypatch.setattr(common, "REPO_ROOT", tmp_path / "elsewhere" / "repo")
    default = compare.parse_args(["mnist1d"]).data_dir
    assert default == tmp_path / "elsewhere" / "shared" / "data"
    monkeypatch.setenv(common.DATA_DIR_ENV, str(tmp_path / "data"))
    assert compare.parse_args(["mnist1d"]).data_dir == tmp_path / "data"
    assert compare.parse_args(["mnist1d", "--data-dir", "x"]).data_dir == Path("x")


def test_rerun_drops_only_the_named_runs_and_their_provenance():
    record = {
        "seed": 0,
        "runs": {"grid": {"a": 1}, "pt": {"a": 2}, "pt_decay": {"a": 3}, "pbt": {}},
        "provenance": {"grid,pt": {"git_commit": "old"}, "pt_decay": {"x": 1},
                       "pbt": {"y": 2}},
    }  # fmt: skip
    kept = compare.drop_runs(record, ("pt", "pt_decay"))
    assert sorted(kept["runs"]) == ["grid", "pbt"]
    assert kept["provenance"] == {"grid": {"git_commit": "old"}, "pbt": {"y": 2}}
    assert record["runs"]["pt"] == {"a": 2}  # the loaded record is not changed
    args = compare.parse_args(["mnist1d", "--methods", "grid,pt", "--rerun", "pt"])
    assert args.rerun == ("pt",)
    with pytest.raises(SystemExit):
        compare.parse_args(["mnist1d", "--methods", "grid,pt", "--rerun", "pt_decay"])


def test_a_difference_beyond_two_standard_errors_counts_either_way():
    """Only PT lower than the other counted: ten points worse said "no"."""
    from experiments.compare import _beyond, paired

    summary = {"pt": {"test_error": [0.30, 0.31, 0.32, 0.30]},
               "grid": {"test_error": [0.20, 0.20, 0.21, 0.20]}}  # fmt: skip
    worse = paired(summary, "pt", "grid")
    assert worse["beyond_2_sem"] and _beyond(worse) == "yes, higher"
    better = paired(summary, "grid", "pt")
    assert better["beyond_2_sem"] and _beyond(better) == "yes"
    noisy = {"pt": {"test_error": [0.30, 0.20]}, "grid": {"test_error": [0.20, 0.30]}}
    assert _beyond(paired(noisy, "pt", "grid")) == "no"


def test_the_table_says_where_each_method_ran():
    """Methods run at other commits and machines (a grid on a machine with no
    recorded instruction set) sat side by side, wall times included, unsaid."""
    import json

    from experiments.common import RECORDS_DIR
    from experiments.compare import produced_by, table

    folder = RECORDS_DIR / "compare" / "compare_mnist1d"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))]
    produced = produced_by(records)
    assert set(produced) >= {"grid", "pt", "pbt"}
    for places in produced.values():
        assert all(len(place.split(" ")[0]) == 7 and "(" in place for place in places)
    runs = [{"grid": {}}]
    summary = {"grid": {"test_error": [0.1], "steps_to_target": np.array([10.0]),
                        "reached": 1, "wall_s": [1.0]}}  # fmt: skip
    text = table("x", summary, 0.1, runs, "d", produced={"grid": ["abc1234 (m, avx2)"]})
    assert "Produced at (commit, machine, instruction set): independent grid" in text
    assert "abc1234 (m, avx2)" in text
