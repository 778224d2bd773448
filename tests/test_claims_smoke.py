"""experiments.claims: the paper's three claims from the records, on a hand-built case."""

import json
import platform
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from experiments import claims, common  # noqa: E402

STEPS = [10, 20, 30, 40]
# (kind, seed): validation loss and test error per round (4 rounds, 2 replicas),
# the replica the run reports (lowest final validation loss), its final test error
RUNS = {
    ("grid", 0): (
        [[1.0, 2.0], [0.8, 1.5], [0.6, 1.2], [0.7, 1.1]],
        [[0.5, 0.6], [0.4, 0.5], [0.3, 0.5], [0.35, 0.45]],
        0, 0.30,
    ),
    ("pt", 0): (
        [[0.9, 2.0], [0.6, 1.5], [0.5, 1.2], [0.5, 1.0]],
        [[0.5, 0.6], [0.3, 0.5], [0.3, 0.5], [0.3, 0.5]],
        0, 0.28,
    ),
    ("grid", 1): (
        [[1.0, 2.0], [0.9, 1.5], [0.8, 1.2], [0.7, 1.1]],
        [[0.5, 0.6], [0.4, 0.5], [0.3, 0.4], [0.2, 0.3]],
        0, 0.20,
    ),
    ("pt", 1): (
        [[1.0, 0.7], [0.9, 1.5], [0.8, 1.2], [0.75, 1.1]],
        [[0.5, 0.6], [0.4, 0.5], [0.3, 0.4], [0.32, 0.4]],
        0, 0.19,
    ),
    ("pt", 2): (  # no grid run: not paired, left out
        [[1.0, 2.0]] * 4, [[0.5, 0.5]] * 4, 0, 0.5,
    ),
}  # fmt: skip


def write_records(root):
    folder = root / "fig2" / "fig2_tiny_40steps"
    folder.mkdir(parents=True)
    for (kind, seed), (val, test, best, final) in RUNS.items():
        record = {
            "provenance": {"git_commit": "abc"},
            "kind": kind,
            "seed": seed,
            "config": {"num_steps": 40},
            "run": {
                "step": STEPS,
                "val_loss": val,
                "test_error_by_replica": test,
                "best_replica": best,
                "best_test_error": final,
            },
        }
        (folder / f"seed{seed}_{kind}.json").write_text(json.dumps(record))


def test_hand_built_two_seed_case(tmp_path):
    write_records(tmp_path / "records")
    out = tmp_path / "out"
    payload = claims.main(
        ["--records-dir", str(tmp_path / "records"), "--out-dir", str(out)]
    )
    assert {p.name for p in out.iterdir()} == {"claims.json", "claims.md", "claims.png"}
    (a,) = payload["settings"]
    assert a["seeds"] == [0, 1] and a["label"] == "fig2_tiny_40steps, 40 steps"
    seed0, seed1 = a["per_seed"][0], a["per_seed"][1]
    # the target is the grid's selected replica's minimum: 0.6 and 0.7
    assert (seed0["target"], seed1["target"]) == (0.6, 0.7)
    # seed 0: the grid reaches 0.6 at step 30, PT at 20 (selected and population)
    assert seed0["grid"]["steps_selected"] == 30 and seed0["pt"]["steps_selected"] == 20
    assert seed0["pt"]["steps_population"] == 20
    # seed 1: the grid at 40; PT's selected replica never (censored), its
    # population minimum at step 10 (replica 1's first round)
    assert (
        seed1["grid"]["steps_selected"] == 40 and seed1["pt"]["steps_selected"] is None
    )
    assert seed1["pt"]["steps_population"] == 10
    p = a["paired"]
    assert p["steps_selected"]["n"] == 1 and p["steps_selected"]["pt_censored"] == 1
    assert p["steps_selected"]["sign"] is None  # no verdict from one paired seed
    # population: -10 and -30: mean -20, s.e. 10, exactly 2 s.e.: within noise
    pop = p["steps_population"]
    assert pop["diffs"] == [-10.0, -30.0] and pop["mean"] == -20.0
    assert pop["sem"] == pytest.approx(10.0) and pop["sign"] == 0
    assert a["verdicts"]["faster"] == "within noise; PT never reaches it on 1/2 seeds"
    # rises, final minus minimum: grid seed 0 validation 0.7 - 0.6, test 35 - 30 points
    assert seed0["grid"]["val_rise_selected"] == pytest.approx(0.1)
    assert seed0["grid"]["test_rise_selected"] == pytest.approx(5.0)
    assert seed1["pt"]["test_rise_selected"] == pytest.approx(2.0)
    assert seed1["pt"]["test_rise_mean"] == pytest.approx(1.0)  # mean 0.35 -> 0.36
    assert p["test_rise_selected"]["diffs"] == pytest.approx([-5.0, 2.0])
    assert p["test_rise_selected"]["sign"] == 0
    # final test error: -2 and -1 points, mean -1.5, s.e. 0.5: PT lower beyond 2 s.e.
    assert p["test_error"]["diffs"] == pytest.approx([-2.0, -1.0])
    assert p["test_error"]["sem"] == pytest.approx(0.5)
    assert a["verdicts"]["test"] == "PT lower beyond 2 s.e."
    table = (out / "claims.md").read_text()
    left_out = "2 (**left out: [2]**)"  # seed 2 has no grid run
    assert f"| fig2_tiny_40steps, 40 steps | {left_out} | **−1.50 ± 0.50** |" in table
    assert "−1.50 ± 0.50 points, n = 2" in payload["sentences"][0]
    assert payload["provenance"]["machine"]["cpu_isa"]
    generation = payload["provenance"]["machine"]["cpu_generation"]
    if Path("/proc/cpuinfo").exists() and platform.machine() == "x86_64":
        assert generation.startswith("family "), generation
    (entry,) = payload["inputs"]
    assert entry["produced_at"] == ["abc"] and len(entry["files"]) == 5


def test_committed_compare_record_agrees():
    """The paired test errors equal those compare.py wrote into its record."""
    settings = {s.name: s for s in claims.load_settings(common.RECORDS_DIR)}
    if "compare_mnist1d" not in settings:
        pytest.skip("no committed compare_mnist1d record")
    a = claims.analyse(settings["compare_mnist1d"])
    record = json.loads((common.RECORDS_DIR / "compare_mnist1d.json").read_text())
    assert a["paired"]["test_error"]["mean"] == pytest.approx(
        record["paired"]["pt-grid"]["mean"], abs=1e-6
    )
    assert a["paired"]["test_error"]["sem"] == pytest.approx(
        record["paired"]["pt-grid"]["sem"], abs=1e-6
    )
    assert a["paired"]["steps_selected"] is None  # compare keeps no per-replica curve


def test_a_missing_seed_is_named_not_averaged_away(tmp_path):
    """A seed file deleted (or a method's run missing) was left out silently:
    the table then averaged fewer seeds, which can flip a verdict."""
    records = common.RECORDS_DIR
    name = "compare_mnist1d"
    folder = tmp_path / "compare" / name
    folder.mkdir(parents=True)
    for seed in (0, 2):
        source = records / "compare" / name / f"seed{seed}.json"
        (folder / source.name).write_text(source.read_text())
    (tmp_path / f"{name}.json").write_text(
        json.dumps({"provenance": {"seeds": [0, 1, 2, 3]}})
    )
    setting = claims.load_compare(folder)
    assert sorted(setting.runs) == [0, 2] and setting.unpaired == [1, 3]
    assert claims._seeds_cell(claims.analyse(setting)) == "2 (**left out: [1, 3]**)"


def test_records_of_other_settings_are_never_merged(tmp_path, capsys):
    """load_compare and load_fig2_folder merged files whatever their settings;
    only fig2_table refused a mixed folder."""
    write_records(tmp_path)
    folder = tmp_path / "fig2" / "fig2_tiny_40steps"
    path = folder / "seed1_pt.json"
    record = json.loads(path.read_text())
    record["config"] = {"num_steps": 60}
    path.write_text(json.dumps(record))
    with pytest.raises(
        ValueError, match=r"seed1_pt.json and .* different \['config'\]"
    ):
        claims.load_fig2_folder(folder)
    with pytest.raises(SystemExit):  # main: a usage error naming the folder
        claims.main(["--records-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    assert "different ['config']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # compare's seed files: the settings they were run with
    name = "compare_mnist1d"
    compare = tmp_path / "compare" / name
    compare.mkdir(parents=True)
    for seed in (0, 1):
        source = common.RECORDS_DIR / "compare" / name / f"seed{seed}.json"
        record = json.loads(source.read_text())
        record["settings"]["momentum"] = 0.9 - 0.9 * seed
        (compare / source.name).write_text(json.dumps(record))
    with pytest.raises(
        ValueError, match=r"seed1.json and seed0.json .* \['momentum'\]"
    ):
        claims.load_compare(compare)
