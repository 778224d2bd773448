"""The quick start runs end to end at a tiny size and records its provenance."""

import json

import pytest

pytest.importorskip("mnist1d")
pytest.importorskip("matplotlib")


def test_quickstart_tiny(tmp_path, monkeypatch):
    from experiments import quickstart

    # MNIST-1D at a fifth of its size (1,000 examples; the generator's cost):
    # the run's records, table and figure do not depend on it
    real = quickstart.load_mnist1d
    monkeypatch.setattr(quickstart, "load_mnist1d", lambda: real(num_samples=1000))
    argv = [
        "--seeds",
        "2",
        "--steps",
        "40",
        "--burn-in",
        "10",
        "--exchange-interval",
        "10",
        "--replicas",
        "4",
        "--out-dir",
        str(tmp_path),
        "--name",
        "tiny",
    ]
    payload = quickstart.main(argv)
    record = json.loads((tmp_path / "tiny.json").read_text())
    for field in ("command", "git_commit", "machine", "seeds"):
        assert record[field], field
    assert record["seeds"] == [0, 1]
    assert set(record["runs"][0]) == {"grid", "PT", "PT-random-pair"}
    assert (tmp_path / "tiny.png").stat().st_size > 10_000
    table = (tmp_path / "tiny.md").read_text()
    assert "| grid |" in table and "| PT |" in table
    assert "MLP 128-128, 4 replicas," in table  # the run's, not always 8
    grid = payload["runs"][0]["grid"]
    assert grid["rungs"].shape == (3, 4)  # (40 - 10) / 10 rounds, 4 replicas
    c = payload["runs"][0]["PT"]["c"]  # adapted in the first round, then frozen
    assert c.shape == (3,) and c[0] > 0 and c[1] == c[2] == c[0]


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--seeds", "0"], "number of seeds must be >= 1"),
        (["--steps", "20", "--burn-in", "100"], "less than one --exchange-interval"),
        (["--steps", "150", "--burn-in", "100"], "less than one --exchange-interval"),
        (["--c", "-1"], "--c must be > 0"),
    ],
)
def test_bad_arguments_stop_before_training(argv, says, tmp_path, capsys):
    """--seeds 0 wrote a table of 0 seeds then crashed; --steps 20 --burn-in
    100 trained every run, then crashed in the table."""
    from experiments import quickstart

    with pytest.raises(SystemExit):
        quickstart.main([*argv, "--out-dir", str(tmp_path)])
    assert says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
