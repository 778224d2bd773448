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


def _tiny(monkeypatch, out_dir, *extra):
    """A compare call at the smallest size: 2 replicas, grid and PT, 2 rounds."""
    small = functools.cache(functools.partial(datasets.load_mnist1d, num_samples=1000))
    monkeypatch.setattr(datasets, "load_mnist1d", small)
    return ["mnist1d", "--steps", "20", "--interval", "10", "--burn-in", "0",
            "--replicas", "2", "--methods", "grid,pt", "--train-subset", "256",
            "--batch-size", "16", "--val-subset", "32", "--test-subset", "32",
            "--out-dir", str(out_dir), *extra]  # fmt: skip


def test_seeds_of_other_settings_are_never_merged(tmp_path, monkeypatch, capsys):
    """Only the seeds of --seed-list had their settings checked: a seed 0 run
    at momentum 0.9 was merged with a seed 1 at 0.0 into one record that said
    0.0 for both (and other --steps crashed in the figure after the record)."""
    assert compare.main(_tiny(monkeypatch, tmp_path, "--seeds", "2", "--seed-list", "0",
                              "--momentum", "0.9")) is None  # fmt: skip
    seed1 = tmp_path / "compare" / "compare_mnist1d" / "seed1.json"
    for other in (["--momentum", "0.0"], ["--steps", "30"]):
        argv = _tiny(monkeypatch, tmp_path, "--seeds", "2", "--seed-list", "1", *other)
        with pytest.raises(SystemExit):
            compare.main(argv)
        err = capsys.readouterr().err
        assert "seed0.json was made with other settings" in err
        assert other[0][2:] in err  # the key that differs is named
        assert not seed1.exists()  # refused before running anything
        assert not (tmp_path / "compare_mnist1d.json").exists()


def test_bad_arguments_stop_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(compare, "load", lambda *a: pytest.fail("data loaded"))
    cases = {
        ("--seeds", "0"): "--seeds",
        ("--seeds", "2", "--seed-list", "0,x"): "--seed-list",
        ("--seeds", "1", "--seed-list", "5"): "--seed-list",
        ("--steps", "10", "--burn-in", "10"): "--burn-in",
        ("--c", "0"): "--c",
    }
    for extra, flag in cases.items():
        with pytest.raises(SystemExit):
            compare.main(["mnist1d", "--out-dir", str(tmp_path), *extra])
        assert flag in capsys.readouterr().err, extra
    with pytest.raises(SystemExit):  # the folder named, with both ways to set it
        compare.main(["fashion_mnist", "--data-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert "--data-dir" in err and "TEMPERING_DATA_DIR" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_tables_show_dirty_commits(capsys):
    from experiments.common import short_commit, warn_dirty

    clean, dirty = "cb19844" + "0" * 33, "cb19844" + "0" * 33 + "-dirty"
    assert short_commit(clean) == "cb19844" and short_commit(dirty) == "cb19844-dirty"
    assert short_commit("unknown") == "unknown"
    machine = {"platform": "Linux-fc-v1252", "cpu_isa": "avx2"}
    records = [{"provenance": {"grid,pt": {"git_commit": dirty, "machine": machine},
                               "pbt": {"git_commit": clean, "machine": machine}}}]  # fmt: skip
    produced = compare.produced_by(records)
    assert produced["pt"] == ["cb19844-dirty (fc-v1252, avx2)"]
    assert produced["pbt"] == ["cb19844 (fc-v1252, avx2)"]
    assert not warn_dirty([clean], "x") and not capsys.readouterr().err
    assert warn_dirty([clean, dirty], "the table")
    assert "cb19844-dirty" in capsys.readouterr().err


def _git_repo(root: Path) -> Path:
    import subprocess

    root.mkdir()
    (root / "code.py").write_text("x = 1\n")
    (root / "experiments").mkdir()
    (root / "experiments" / "lib.py").write_text("y = 2\n")
    for command in (["init", "-q"], ["add", "."],
                    ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):  # fmt: skip
        subprocess.run(["git", *command], cwd=root, check=True, capture_output=True)
    return root


def test_a_runs_own_outputs_do_not_make_its_commit_dirty(tmp_path, monkeypatch):
    """Seed 0's file in --out-dir (inside the clone) made seed 1's record dirty."""
    from experiments import common

    repo = _git_repo(tmp_path / "repo")
    monkeypatch.setattr(common, "REPO_ROOT", repo)
    out = repo / "my-results"
    for seed in ("0", "1"):
        argv = _tiny(monkeypatch, out, "--seeds", "2", "--seed-list", seed)
        compare.main(argv)
    folder = out / "compare" / "compare_mnist1d"
    for seed in (0, 1):
        record = json.loads((folder / f"seed{seed}.json").read_text())
        (prov,) = record["provenance"].values()
        assert common.is_clean_commit(prov["git_commit"]), prov["git_commit"]
    merged = json.loads((out / "compare_mnist1d.json").read_text())
    assert common.is_clean_commit(merged["provenance"]["git_commit"])
    # untracked code elsewhere still counts, and so does an output folder that
    # holds code (the clone's root, experiments/)
    (repo / "experiments" / "new.py").write_text("z = 3\n")
    assert common.git_commit([out]).endswith("-dirty")
    (repo / "experiments" / "new.py").unlink()
    assert common.is_clean_commit(common.git_commit([out]))
    (repo / "experiments" / "out.json").write_text("{}")
    assert common.git_commit([repo / "experiments"]).endswith("-dirty")
    assert common.git_commit([repo]).endswith("-dirty")
