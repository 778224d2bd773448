"""Smoke tests: every experiment script runs end to end at a tiny size.

The data are small raw files written here (the format of shared/data), so
these tests need neither the network nor ../shared.
"""

import json

import numpy as np
import pytest
from test_data import make_cifar, make_idx_dataset

pytest.importorskip("matplotlib")

from experiments import fig1_diffusion, fig2_lenet, fig2_resnet, fig2_table  # noqa: E402

TINY = ["--seeds", "0", "--replicas", "2", "--batch-size", "8", "--rounds", "2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_idx_dataset(root, "fashion_mnist", n_train=80, n_test=16)
    make_cifar(root, sizes=(30, 30, 30), n_test=16)
    return root


def test_fig1_diffusion_smoke(data_dir, tmp_path):
    payload = fig1_diffusion.main(
        ["--data-dir", str(data_dir), "--steps", "3", "--t0", "1", "--records", "2",
         "--batch-size", "8", "--replicas", "2", "--out-dir", str(tmp_path)]
    )  # fmt: skip
    assert set(payload["results"]) == {"dropout_rate", "learning_rate", "weight_decay"}
    assert (tmp_path / "fig1_diffusion.json").exists()
    assert (tmp_path / "fig1_diffusion.png").exists()
    table = (tmp_path / "fig1_diffusion.md").read_text()
    assert "| dropout_rate |" in table and "more dropout diffuses faster" in table


def test_fig2_lenet_and_table_smoke(data_dir, tmp_path):
    fig2_lenet.main(
        ["--dataset", "fashion_mnist", "--ladder", "lr", "--scale", "0.0002",
         "--data-dir", str(data_dir), "--out-dir", str(tmp_path), *TINY]
    )  # fmt: skip
    result = json.loads((tmp_path / "fig2_lenet_fashion_mnist_lr.json").read_text())
    assert result["config"]["num_replicas"] == 2
    assert len(result["runs"]["pt"]) == len(result["runs"]["grid"]) == 1
    assert len(result["runs"]["pt"][0]["step"]) == 2
    assert result["provenance"]["seeds"] == [0]
    assert (tmp_path / "fig2_lenet_fashion_mnist_lr.png").exists()
    text = fig2_table.main(["--results-dir", str(tmp_path)])
    assert "fig2_lenet_fashion_mnist_lr" in text
    assert "selected replica exchanged" in text
    assert (tmp_path / "fig2_table.md").exists()


def test_fig2_resnet_smoke(data_dir, tmp_path):
    fig2_resnet.main(
        ["--depth", "8", "--scale", "0.00003", "--burn-in", "2",
         "--exchange-interval", "1", "--final-test-size", "7",
         "--data-dir", str(data_dir), "--out-dir", str(tmp_path), *TINY]
    )  # fmt: skip
    result = json.loads((tmp_path / "fig2_resnet8.json").read_text())
    assert result["config"]["hyperparameter"] == "learning_rate"
    assert result["config"]["burn_in"] == 2
    assert result["config"]["exchange_interval"] == 1
    assert result["final_test_size"] == 7
    errors = np.asarray(result["runs"]["pt"][0]["final_test_error"])
    assert errors.shape == (2,)
    np.testing.assert_allclose(errors * 7, np.round(errors * 7), atol=1e-5)
    assert (tmp_path / "fig2_resnet8.png").exists()


@pytest.mark.parametrize(
    "name, paper",
    [
        ("fig2_lenet_emnist_letters_dropout", "5.65 vs 5.8"),
        ("fig2_lenet_fashion_mnist_dropout", "5.65 vs 5.8"),  # the offline stand-in
        ("fig2_lenet_fashion_mnist_dropout_scale004", "5.65 vs 5.8"),  # a rerun
        ("fig2_resnet44", "8.2 vs 8.4"),
        ("fig2_lenet_cifar10_lr", "–"),  # the paper shows no number for it
    ],
)
def test_fig2_table_finds_the_papers_numbers(name, paper):
    assert fig2_table.paper_numbers(name) == paper


def test_selected_replica_moved_reads_the_selected_replicas_path():
    run = {
        "step": [10, 20, 30],
        "rungs": [[0, 2, 1], [0, 1, 2], [1, 0, 2]],  # rounds x replicas
        "initial_rungs": [0, 1, 2],
    }
    assert not fig2_table.selected_replica_moved({**run, "best_replica": 0}, 30)
    assert fig2_table.selected_replica_moved({**run, "best_replica": 1}, 30)
    # the last exchange counts only if steps follow it
    assert fig2_table.selected_replica_moved({**run, "best_replica": 0}, 35)


def test_data_dir_defaults_follow_the_repository(monkeypatch, tmp_path):
    import argparse

    from experiments import common, fig2_common

    monkeypatch.delenv(common.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(common, "REPO_ROOT", tmp_path / "repo")
    expected = tmp_path / "shared" / "data"
    parser = argparse.ArgumentParser()
    fig2_common.add_common_args(parser)
    assert parser.parse_args([]).data_dir == expected
    assert fig1_diffusion.parse_args([]).data_dir == expected
    monkeypatch.setenv(common.DATA_DIR_ENV, str(tmp_path / "data"))
    assert fig1_diffusion.parse_args([]).data_dir == tmp_path / "data"
