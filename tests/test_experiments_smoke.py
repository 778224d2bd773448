"""Smoke tests: every experiment script runs end to end at a tiny size.

The data are small raw files written here (the format of shared/data), so
these tests need neither the network nor ../shared.
"""

import json
import math
import types

import numpy as np
import pytest
from test_data import make_cifar, make_idx_dataset

pytest.importorskip("matplotlib")

from experiments import (  # noqa: E402
    common,
    fig1_diffusion,
    fig2_lenet,
    fig2_resnet,
    fig2_table,
)

TINY = ["--seeds", "0", "--replicas", "2", "--batch-size", "8"]


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


def test_fig2_lenet_and_table_smoke(data_dir, tmp_path, capsys):
    # 28 steps of the Fashion-MNIST stand-in, the authors' dropout ladder and
    # beta, interval 3 (not the paper's 1000, so a stated C rule is required)
    argv = ["--dataset", "fashion_mnist", "--steps", "28", "--exchange-interval",
            "3", "--data-dir", str(data_dir), "--out-dir", str(tmp_path),
            *TINY]  # fmt: skip
    with pytest.raises(SystemExit):  # before the data load, as a usage error
        fig2_lenet.main(argv)  # a changed interval never keeps C silently
    assert "--c-rule keep" in capsys.readouterr().err
    out = fig2_lenet.main([*argv, "--c-rule", "keep"])  # fmt: skip
    name = "fig2_lenet_fashion_mnist_dropout_26steps_every3"
    folder = tmp_path / "fig2" / name
    assert sorted(p.name for p in folder.iterdir()) == [
        "seed0_grid.json", "seed0_pt.json"
    ]  # fmt: skip
    result = json.loads((folder / "seed0_pt.json").read_text())
    proto, run = result["protocol"], result["run"]
    assert result["kind"] == "pt" and result["seed"] == 0
    assert proto["dropout_temperature"] == "authors"
    assert proto["ladder_dropout_temperature"] == "authors"
    np.testing.assert_allclose(proto["betas"], [0.95 / 0.05, 0.88 / 0.12], rtol=1e-5)
    assert proto["c"] == 500 and proto["c_rule"] == "keep"
    assert proto["exchange_interval"] == 3
    assert proto["paper_exchange_interval"] == 1000
    assert proto["paper_num_steps"] == 351_200
    assert proto["scheme"] == "random_pair"
    assert proto["validation_size"] == 8  # the whole (tiny) validation split
    # schedule points scaled by 28 / 351200: burn-in 25k -> 2 steps, lr
    # 0.1 -> 0.01 at 62k -> 5 steps (the end of the first round, here)
    sched = proto["schedule"]
    assert sched["burn_in"] == 2 and sched["lr_drop_step"] == 5
    assert sched["learning_rate"] == [
        {"from_step": 0, "learning_rate": 0.1},
        {"from_step": 5, "learning_rate": 0.01},
    ]
    assert sched["evaluation_dropout"].startswith("off")
    assert proto["exchange_attempts"] == run["exchange_attempts"] == 8
    assert run["step"] == list(range(5, 27, 3))
    assert run["pairs_proposed"] == 8  # one random pair per round
    errors = np.asarray(run["test_error_by_replica"])
    assert errors.shape == (8, 2)
    stat = run["authors_statistic"]
    assert 0 <= stat["value"] <= 1 and stat["sigma"] == 3
    assert stat["raw_min"] == pytest.approx(errors.min())
    assert run["best_test_error"] == run["final_test_error"][run["best_replica"]]
    assert len(out["runs"]["pt"]) == len(out["runs"]["grid"]) == 1
    grid = json.loads((folder / "seed0_grid.json").read_text())["run"]
    assert grid["pairs_proposed"] == 0 and grid["exchange_attempts"] == 8
    text = fig2_table.main(["--results-dir", str(tmp_path)])
    assert name in text and "authors: β = p/(1−p)" in text
    assert "ours: PT (%)" in text and "authors': PT (%)" in text
    assert f"{name} (ours): one seed so far, no verdict" in text  # and no "± 0.00"
    assert f"{name} (authors'): one seed so far, no verdict" in text
    assert "± 0.00" not in text.split("**Earlier protocol**")[0]
    # model, commit and machine of the runs, in the protocol table
    machine = fig2_table.machine_name(result["provenance"])
    isa = result["provenance"]["machine"]["cpu_isa"]
    assert machine.endswith(f"(CPU, {isa})") and f"| {machine} |" in text
    assert f"| {result['model']} |" in text
    gpu = {"machine": {"backend": "gpu", "devices": ["NVIDIA H100 80GB HBM3"]}}
    assert fig2_table.machine_name(gpu) == "NVIDIA H100 80GB HBM3"
    assert (tmp_path / "fig2" / f"{name}.png").exists()
    assert (tmp_path / "fig2_table.md").exists()
    summary = (tmp_path / "fig2_summary.md").read_text()  # the README's block
    assert f"- {name} (ours): one seed so far" in summary
    assert "without their twin" not in summary


def test_fig2_run_resumes_from_its_checkpoints(data_dir, tmp_path):
    # A finished (or killed) run started again with the same command restores
    # its checkpoints instead of training: the same records, marked resumed.
    argv = ["--dataset", "fashion_mnist", "--steps", "28", "--exchange-interval",
            "3", "--c-rule", "keep", "--kinds", "pt", "--data-dir", str(data_dir),
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "2",
            *TINY]  # fmt: skip
    first = fig2_lenet.main([*argv, "--out-dir", str(tmp_path / "a")])["runs"]["pt"][0]
    name = "fig2_lenet_fashion_mnist_dropout_26steps_every3"
    run_dir = tmp_path / "ckpt" / name / "seed0_pt"
    assert sorted(p.name for p in run_dir.iterdir()) == ["phase0", "phase1"]
    again = fig2_lenet.main([*argv, "--out-dir", str(tmp_path / "b")])["runs"]["pt"][0]
    assert not first["resumed_from_checkpoint"] and again["resumed_from_checkpoint"]
    for field in ("val_loss", "rungs", "test_error_by_replica", "final_test_error"):
        np.testing.assert_array_equal(again[field], first[field])


def test_fig2_settings_follow_the_authors():
    import argparse

    from experiments import fig2_common

    parser = argparse.ArgumentParser()
    fig2_common.add_common_args(parser)

    def config(dataset, ladder, *argv):
        paper = fig2_lenet.paper_config(dataset, ladder)
        return fig2_common.apply_overrides(paper, parser.parse_args(list(argv)))

    full = config("cifar10", "dropout")
    assert full.name == "fig2_lenet_cifar10_dropout" and full.c_rule == "paper"
    assert (full.num_steps, full.burn_in, full.rounds) == (140_800, 10_000, 218)
    assert fig2_common.phases(full) == [(0, 25_000, 0.1), (25_000, 140_800, 0.01)]
    ladder = fig2_common.make_ladder(full)
    assert ladder.dropout_temperature == "authors" and set(ladder.values) == {
        "dropout_rate"
    }  # fmt: skip
    # lr runs: every replica at 0.1 until the ladder, fixed keep 0.6 / 0.95
    lr = config("cifar10", "lr")
    assert lr.name == "fig2_lenet_cifar10_lr"  # 25k + 144 x 800 of 140,800
    assert lr.burn_in == 25_000 and fig2_common.phases(lr) == [(0, 140_200, None)]
    assert fig2_common.schedule(lr)["fixed_dropout_rate"] == 0.4
    assert config("fashion_mnist", "lr").burn_in == 62_000
    assert config("fashion_mnist", "lr").dropout_rate == 0.05
    # --scale: length and schedule points scaled, C and interval kept
    half = config("cifar10", "lr", "--scale", "0.5")
    assert (half.exchange_interval, half.c, half.burn_in) == (800, 3e5, 12_500)
    assert half.rounds == (70_400 - 12_500) // 800
    assert half.name == f"fig2_lenet_cifar10_lr_{half.num_steps}steps_every800"
    short = config("fashion_mnist", "dropout", "--steps", "20000",
                   "--exchange-interval", "150", "--c-rule", "keep")  # fmt: skip
    assert (short.burn_in, short.lr_drop_step) == (1424, 3531)
    assert short.rounds == (20_000 - 1424) // 150 >= 100
    assert (short.c, short.c_rule) == (500.0, "keep")
    with pytest.raises(ValueError, match="--c-rule"):
        config("cifar10", "lr", "--exchange-interval", "80")
    auto = config("cifar10", "lr", "--exchange-interval", "80", "--c-rule", "auto")
    assert auto.c_rule == "auto" and auto.name.endswith("_cauto")
    library = config("cifar10", "dropout", "--dropout-temperature", "library")
    assert library.name == "fig2_lenet_cifar10_dropout_betalibrary"
    assert fig2_common.make_ladder(library).dropout_temperature == "library"


def test_fig2_table_refuses_mixed_settings(tmp_path):
    folder = tmp_path / "fig2" / "setting"
    folder.mkdir(parents=True)
    for seed, c in ((0, 500.0), (1, 600.0)):
        payload = {"kind": "pt", "seed": seed, "run": {}, "provenance": {},
                   "config": {"c": c}, "protocol": {"c": c}}  # fmt: skip
        (folder / f"seed{seed}_pt.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"record different \['config', 'protocol'\]"):
        fig2_table.merge_setting(folder)


@pytest.mark.parametrize(
    "pt, grid, says",
    [
        ([0.10], [0.11], "one seed so far, no verdict"),
        ([0.100, 0.200, 0.300], [0.102, 0.203, 0.301], "PT is lower by 0.20 ± 0.10"),
        ([0.100, 0.200, 0.300], [0.101, 0.199, 0.302], "not beat the grid beyond seed"),
        # a mean gain of 1.13 standard deviations: under 2 s.e. with 3 seeds
        ([0.100, 0.200, 0.300], [0.103, 0.201, 0.3005], "not beat the grid beyond"),
        ([0.102, 0.203, 0.301], [0.100, 0.200, 0.300], "the grid is lower** by 0.20"),
        ([0.101, 0.199, 0.302], [0.100, 0.200, 0.300], "does not beat the grid** here"),
    ],
)
def test_fig2_verdict_calls_a_gain_or_a_loss_only_beyond_seed_noise(pt, grid, says):
    line = fig2_table.verdict("s", "ours", np.array(pt), np.array(grid))
    assert says in line


def test_fig2_table_merges_runs_that_differ_in_the_last_bit_only():
    # the same ladder's betas on a CPU (jax 0.10) and a GPU (jax 0.11)
    cpu = {
        "protocol": {"betas": [19.0, 15.666666984558105], "c": 500.0, "rule": "keep"}
    }
    gpu = {
        "protocol": {"betas": [19.0, 15.666666030883789], "c": 500.0, "rule": "keep"}
    }
    same = common.same_record
    assert same(cpu, gpu)
    assert not same(cpu, {"protocol": {**gpu["protocol"], "c": 500.1}})
    assert not same(cpu, {"protocol": {**gpu["protocol"], "rule": "auto"}})
    assert not same(cpu, {"protocol": {**gpu["protocol"], "betas": [19.0]}})


def test_authors_statistic_is_the_smoothed_minimum_over_time_and_replicas():
    from experiments.fig2_common import authors_statistic

    errors = np.full((40, 3), 0.5)
    errors[10, 1] = 0.1  # one low point: smoothed away mostly
    errors[12:, 2] = 0.3  # a lasting low: what the smoothed minimum finds
    stat = authors_statistic(errors)
    assert stat["replica"] == 2 and stat["value"] == pytest.approx(0.3)
    assert stat["raw_min"] == pytest.approx(0.1)
    assert authors_statistic(errors, sigma=0)["value"] == pytest.approx(0.1)


def test_fig2_resnet_smoke(data_dir, tmp_path):
    fig2_resnet.main(
        ["--depth", "8", "--scale", "0.00003", "--burn-in", "2",
         "--exchange-interval", "1", "--c-rule", "keep", "--rounds", "2",
         "--final-test-size", "7",
         "--data-dir", str(data_dir), "--out-dir", str(tmp_path), *TINY]
    )  # fmt: skip
    folder = tmp_path / "fig2" / "fig2_resnet8_4steps_every1"
    result = json.loads((folder / "seed0_pt.json").read_text())
    assert result["config"]["hyperparameter"] == "learning_rate"
    assert result["config"]["burn_in"] == 2
    assert result["config"]["exchange_interval"] == 1
    assert result["protocol"]["final_test_size"] == 7
    errors = np.asarray(result["run"]["final_test_error"])
    assert errors.shape == (2,)
    np.testing.assert_allclose(errors * 7, np.round(errors * 7), atol=1e-5)


def test_authors_cifar10_net_is_the_network_their_code_builds():
    import jax
    import jax.numpy as jnp

    from experiments.flops import jaxpr_flops
    from tempering.zoo.models import lenet5_cifar10

    # init and apply jitted (one program each, not one per operation); the
    # other networks' parameters and FLOPs need their shapes only
    x = jnp.ones((2, 32, 32, 3))
    net = fig2_lenet.AuthorsCifar10Net()
    params = jax.jit(net.init)(jax.random.key(0), x)["params"]
    shapes = {k: v["kernel"].shape for k, v in params.items()}
    assert shapes == {
        "Conv_0": (5, 5, 3, 16),  # on the image: their conv2 reads x
        "Conv_1": (5, 5, 16, 120),
        "Dense_0": (10 * 10 * 120, 10),  # their 84-unit layer is overwritten
    }
    count = lambda tree: sum(math.prod(a.shape) for a in jax.tree.leaves(tree))  # noqa: E731
    assert count(params) == 169_346
    assert count(jax.eval_shape(lenet5_cifar10().init, jax.random.key(0), x)) == 62_006

    def flops(net):  # of the forward pass: its convolutions and matrix products
        variables = jax.eval_shape(net.init, jax.random.key(0), x)
        return jaxpr_flops(jax.make_jaxpr(lambda v: net.apply(v, x))(variables))

    ratio = flops(fig2_lenet.AuthorsCifar10Net()) / flops(lenet5_cifar10())
    assert 8.9 < ratio < 9.1  # "nine times LeNet-5's multiply-adds"
    apply = jax.jit(net.apply, static_argnames="train")
    rngs = {"dropout": jax.random.key(1)}
    evaluated = apply({"params": params}, x, dropout_rate=0.5)
    trained = apply({"params": params}, x, train=True, dropout_rate=0.5, rngs=rngs)
    assert evaluated.shape == trained.shape == (2, 10)
    assert not np.allclose(evaluated, trained)  # dropout acts in training only
    again = apply({"params": params}, x, train=True, dropout_rate=0.0, rngs=rngs)
    np.testing.assert_allclose(again, evaluated, rtol=1e-6)


def test_fig2_lenet_runs_the_authors_network(data_dir, tmp_path):
    argv = ["--dataset", "cifar10", "--model", "authors", "--steps", "28",
            "--exchange-interval", "3", "--c-rule", "keep", "--kinds", "pt",
            "--data-dir", str(data_dir), "--out-dir", str(tmp_path), *TINY]  # fmt: skip
    fig2_lenet.main(argv)
    folder = tmp_path / "fig2" / "fig2_lenet_cifar10_dropout_26steps_every3_authorsnet"
    result = json.loads((folder / "seed0_pt.json").read_text())
    assert result["model"].startswith("AuthorsCifar10Net")
    assert fig2_table.paper_numbers(folder.name) == "22.3 vs 23.0"
    # another seed of other settings into that folder: refused before it trains
    # (no table would merge the folder; before, the run wrote its files anyway)
    with pytest.raises(ValueError, match=r"record different \['protocol'\]"):
        fig2_lenet.main([*argv, "--seeds", "1", "--val-size", "2"])
    assert sorted(p.name for p in folder.iterdir()) == ["seed0_pt.json"]
    fashion = ["--dataset", "fashion_mnist", *argv[2:]]
    fig2_lenet.main(fashion)
    folder = (
        tmp_path / "fig2" / "fig2_lenet_fashion_mnist_dropout_26steps_every3_authorsnet"
    )
    result = json.loads((folder / "seed0_pt.json").read_text())
    assert result["model"].startswith("AuthorsEmnistNet")


def test_authors_emnist_net_is_their_lenet5():
    import jax
    import jax.numpy as jnp

    # init and apply jitted: one program each, not one per operation
    x = jnp.linspace(0.0, 1.0, 2 * 28 * 28).reshape(2, 28, 28)
    net = fig2_lenet.AuthorsEmnistNet()
    params = jax.jit(net.init)(jax.random.key(0), x)["params"]
    shapes = {k: jax.tree.map(jnp.shape, v) for k, v in params.items()}
    assert shapes["Conv_0"]["kernel"] == (5, 5, 1, 6)  # on the padded 32x32 image
    assert shapes["Conv_2"]["kernel"] == (5, 5, 16, 120)
    assert shapes["Dense_0"]["kernel"] == (120, 84)
    assert shapes["pool_scale_6"] == shapes["pool_bias_6"] == (6,)
    assert shapes["rbf_centres"] == (84, 26)  # no bias
    assert sum(a.size for a in jax.tree.leaves(params)) == 63_084
    apply = jax.jit(net.apply, static_argnames="train")
    logits = apply({"params": params}, x, dropout_rate=0.1)
    # logit k is the squared distance between the 84 features and centre k
    _, captured = jax.jit(
        lambda v, x: net.apply(
            v, x, capture_intermediates=True, mutable=["intermediates"]
        )
    )({"params": params}, x)
    features = jnp.tanh(captured["intermediates"]["Dense_0"]["__call__"][0])
    expected = ((features[..., None] - params["rbf_centres"]) ** 2).sum(1)
    np.testing.assert_allclose(logits, expected, rtol=1e-5)
    rngs = {"dropout": jax.random.key(1)}
    trained = apply({"params": params}, x, train=True, dropout_rate=0.5, rngs=rngs)
    assert not np.allclose(trained, logits)


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


def test_round_cost_times_every_part_of_a_round(tmp_path):
    # one process (launched as the real layouts are); the driver's four parts
    # timed inside it: they exist under those names and each runs every round
    from experiments import round_cost

    round_cost.main(
        ["--replicas", "2", "--layouts", "1x1", "--rounds", "1", "--repeats", "1",
         "--interval", "2", "--width", "8", "--out-dir", str(tmp_path)]
    )  # fmt: skip
    record = json.loads((tmp_path / "round_cost.json").read_text())
    assert [(r["method"], r["replicas"]) for r in record["rows"]] == [
        ("pt", 2),
        ("pbt", 2),
    ]
    for row in record["rows"]:
        ms = row["repeats"][0]
        assert set(ms) == {*round_cost.PARTS, "other", "round", "call"}
        assert all(np.isfinite(v) for v in ms.values())
        # each part runs every round (a time per round is a difference of two
        # calls' times: on a shared machine either sign; the counts are exact)
        calls = row["calls_per_round"]
        assert calls["steps"] == calls["evaluation"] == calls["move"] == 1
        assert calls["records"] >= 1  # the losses before the move, the records
    assert "| pt | 2 | 1 x 1 |" in (tmp_path / "round_cost.md").read_text()


@pytest.mark.parametrize("name", ["round_cost", "round_cost_replicas"])
def test_round_cost_tables_are_their_records_and_show_no_negative_fixed_cost(
    tmp_path, name
):
    # The fixed cost is a difference of two noisy totals: a median below zero
    # was printed as a cost. Now its range is shown and "n/r" where it reaches 0.
    from experiments import round_cost

    committed = common.REPO_ROOT / "experiments" / "results" / f"{name}.json"
    copy = tmp_path / f"{name}.json"
    copy.write_text(committed.read_text())
    round_cost.main(["--table-from", str(copy)])
    text = copy.with_suffix(".md").read_text()
    assert text == committed.with_suffix(".md").read_text()
    record = json.loads(committed.read_text())
    for row, line in zip(record["rows"], text.splitlines()[2:], strict=False):
        cell = line.rstrip(" |").rsplit("| ", 1)[-1]
        lowest = min(repeat["call"] for repeat in row["repeats"])
        assert cell.startswith("n/r [") == (lowest <= 0), cell
        assert not cell.startswith("-"), cell


def test_bench_batch_ladder_smoke(tmp_path):
    from experiments import bench_batch_ladder

    bench_batch_ladder.main(
        ["--models", "mlp", "--replicas", "2", "--batch", "8", "--reps", "1",
         "--out-dir", str(tmp_path)]
    )  # fmt: skip
    (row,) = json.loads((tmp_path / "bench_batch_ladder.json").read_text())["rows"]
    assert row["batch_sizes"] == [8, 4] and row["used_share"] == 0.75
    assert row["plain_ms"] > 0 and row["masked_ms"] > 0


def test_ensemble_table_pairs_seeds():
    # the script's runs are tests/test_ensemble.py's engine; its table here
    from experiments import ensemble

    records = [
        {"test_error": {k: 0.3 + 0.01 * i + (0.02 if k == "pt_cold" else 0.0)
                        for k in ensemble.ROWS}}
        for i in range(4)
    ]  # fmt: skip
    args = type("Args", (), {"benchmark": "mnist1d"})()
    markdown, paired = ensemble.table(records, args, "test")
    assert paired["pt_cold-grid_final"]["mean"] == pytest.approx(2.0)
    assert paired["pt_cold-grid_final"]["sem"] == pytest.approx(0.0, abs=1e-9)
    assert paired["pt_single-grid_single"]["lower"] == 0
    assert "| PT, cold-chain ensemble | 33.50 ± 1.29 |" in markdown


def test_wait_until_idle_measures_one_window_or_none():
    waited = common.wait_until_idle(min_idle=0.0, window_s=0.05)
    assert 0.0 <= waited["idle_fraction"] <= 1.0 and waited["waited_s"] >= 0.05
    # a busy machine is waited for at most max_wait_s, then measured once more
    capped = common.wait_until_idle(min_idle=1.01, window_s=0.05, max_wait_s=0.1)
    assert 0.1 <= capped["waited_s"] < 1.0 and 0.0 <= capped["idle_fraction"] <= 1.0
    skipped = common.wait_until_idle(max_wait_s=0)
    assert skipped["waited_s"] < 0.05 and np.isnan(skipped["idle_fraction"])


def test_schemes_records_round_trips_beside_their_exact_rate(tmp_path):
    from experiments import schemes
    from tempering.diagnostics import independent_round_trip_rate

    def exact_rate(acceptance, scheme):  # the script's exact column
        return independent_round_trip_rate(1.0 - acceptance, scheme)

    # the diagnostics' formulas: 1 / (2 + 2E) even-odd, 1 / (N (N + E)) random
    # pair, E = sum r / (1 - r); at acceptance 1/2 on two pairs E = 2
    half = np.array([0.5, 0.5])
    assert exact_rate(half, "even_odd") == pytest.approx(1 / 6)
    assert exact_rate(half, "random_pair") == pytest.approx(1 / 8)
    # one pair, proposed every round by both schemes: 1 / (1 + E)
    assert exact_rate(half[:1], "even_odd") == pytest.approx(1 / 2)
    assert math.isnan(exact_rate(np.array([0.5, np.nan]), "even_odd"))
    assert exact_rate(np.array([0.5, 0.0]), "random_pair") == 0.0
    argv = [
        "--rungs",
        "3",
        "--rounds",
        "200",
        "--seeds",
        "2",
        "--out-dir",
        str(tmp_path),
    ]
    payload = schemes.main(argv)
    for scheme in ("even_odd", "random_pair"):
        row = payload["results"][f"3/{scheme}"]
        assert len(row["pair_acceptance"]) == 2 and len(row["round_trip_rate"]) == 2
        assert 0 < row["round_trip_exact"] < 0.5
        rate = np.asarray(row["round_trips_per_replica"]) * 3 / 200
        np.testing.assert_allclose(row["round_trip_rate"], rate)
    assert "exact, for the pairs' acceptance" in payload["table"]


def _fig2_config(*argv):
    import argparse

    from experiments import fig2_common

    parser = argparse.ArgumentParser()
    fig2_common.add_common_args(parser)
    paper = fig2_lenet.paper_config("fashion_mnist", "dropout")
    return fig2_common.apply_overrides(paper, parser.parse_args(list(argv)))


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--c-rule", "auto", "--c", "5"], "--c 5 fixes C and --c-rule auto"),
        (["--c-rule", "keep", "--c", "5"], "give one of them, not both"),
        (["--c", "0"], "--c must be > 0"),  # was taken as not given: the paper's C
        (["--steps", "10000", "--rounds", "3"], "--rounds sets the run's length"),
        (["--val-size", "100", "--eval-size", "500"], "--eval-size sets both"),
        (["--test-curve-size", "9", "--eval-size", "5"], "--test-curve-size, not"),
        (["--scale", "0"], "give --scale > 0"),
        (["--replicas", "0"], "--replicas must be >= 1"),
    ],
)
def test_fig2_refuses_conflicting_or_invalid_flags(argv, says):
    """Each was resolved silently: --c-rule dropped, --c 0 read as no --c,
    --steps or --eval-size ignored."""
    with pytest.raises(ValueError, match=says):
        _fig2_config(*argv)


def test_fig2_flags_are_checked_before_the_data_loads(data_dir, tmp_path, capsys):
    base = ["--dataset", "fashion_mnist", "--out-dir", str(tmp_path), *TINY]
    for extra, flag in ((["--exchange-interval", "50"], "--c-rule"),
                        (["--scale", "0"], "--scale")):  # fmt: skip
        with pytest.raises(SystemExit):
            fig2_lenet.main([*base, *extra, "--data-dir", str(tmp_path / "none")])
        assert flag in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fig2_resnet.main(["--c", "-1", "--data-dir", str(data_dir), *TINY])
    assert "--c must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fig2_lenet.main(
            ["--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), *TINY]
        )
    assert "--data-dir" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["fig1_l2", "fig1_diffusion", "ensemble"])
def test_a_missing_data_folder_names_the_flag_and_the_variable(
    script, tmp_path, capsys
):
    """FileNotFoundError: IDX file not found named neither --data-dir nor
    TEMPERING_DATA_DIR."""
    import importlib

    module = importlib.import_module(f"experiments.{script}")
    argv = ["--data-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit):
        module.main(["fashion_mnist", *argv] if script == "ensemble" else argv)
    err = capsys.readouterr().err
    assert "--data-dir" in err and common.DATA_DIR_ENV in err
    empty = tmp_path / "empty"
    empty.mkdir()  # a folder without the dataset's raw files
    argv = ["--data-dir", str(empty), "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit):
        module.main(["fashion_mnist", *argv] if script == "ensemble" else argv)
    assert "lacks the raw files of fashion_mnist" in capsys.readouterr().err


def test_seed_lists_refuse_repeated_seeds_and_say_what_they_are(capsys):
    """fig1_l2 --seeds 0 0 reported "2 seeds" with ± 0.00."""
    from experiments import fig1_l2

    with pytest.raises(SystemExit):
        fig1_l2.parse_args(["--seeds", "0", "0"])
    assert "seeds [0] given more than once" in capsys.readouterr().err
    assert fig1_l2.parse_args(["--seeds", "2", "0"]).seeds == [2, 0]
    with pytest.raises(SystemExit):
        fig1_l2.parse_args(["--seeds", "-1"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        fig1_l2.parse_args(["--help"])
    assert "seed numbers to run, each once" in capsys.readouterr().out


def test_counts_below_one_and_unknown_names_are_usage_errors(tmp_path, capsys):
    from experiments import bench_batch_ladder, schemes

    with pytest.raises(SystemExit):  # was a ZeroDivisionError
        schemes.main(["--seeds", "0", "--out-dir", str(tmp_path)])
    assert "number of seeds must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # was a KeyError
        bench_batch_ladder.main(["--models", "mlp,nosuch", "--out-dir", str(tmp_path)])
    assert "unknown models ['nosuch']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_ensemble_refuses_runs_with_no_snapshot(monkeypatch, tmp_path, capsys):
    """--steps 100 recorded "-1 rounds", 0 snapshots and a cold-chain row;
    --after 2 no snapshot either; --seeds 0 ran the default 10 seeds."""
    from experiments import compare, ensemble

    monkeypatch.setattr(ensemble, "load", lambda *a: pytest.fail("data loaded"))
    bench = compare.BENCHMARKS
    # the committed records' snapshots: 18 rounds from 9 (the last one has no
    # move), 20 from 10
    assert ensemble.snapshots(2000, 0.5, bench["mnist1d"]) == 8
    assert ensemble.snapshots(1200, 0.5, bench["fashion_mnist"]) == 9
    out = ["--out-dir", str(tmp_path)]
    for argv, says in (
        (["--steps", "100"], "no snapshot"), (["--steps", "400"], "no snapshot"),
        (["--after", "2"], "--after must be in [0, 1)"),
        (["--after", "-0.1"], "--after must be in [0, 1)"),
        (["--seeds", "0"], "number of seeds must be >= 1"),
    ):  # fmt: skip
        with pytest.raises(SystemExit):
            ensemble.main(["mnist1d", *argv, *out])
        assert says in capsys.readouterr().err, argv
    # a run that takes no snapshot all the same (rung 0 diverged) is not recorded
    monkeypatch.setattr(ensemble, "load", lambda *a: types.SimpleNamespace(
        _replace=lambda **k: None, validation=None, test=None))  # fmt: skip
    monkeypatch.setattr(ensemble, "run_method", lambda *a: {
        "single_test_error": 0.1, "cold_test_error": float("nan"),
        "final_test_error": 0.1, "snapshots": 0})  # fmt: skip
    with pytest.raises(RuntimeError, match="took no snapshot"):
        ensemble.main(["mnist1d", "--seeds", "1", *out])
    assert not list(tmp_path.rglob("*.json"))


def test_ensemble_keeps_the_seed_files_of_each_name_apart(monkeypatch, tmp_path):
    """Every --name shared results/ensemble/<benchmark>/: a second variant
    (another --after) was refused for the first one's seed files."""
    from experiments import ensemble

    monkeypatch.setattr(ensemble, "load", lambda *a: types.SimpleNamespace(
        _replace=lambda **k: None, validation=None, test=None))  # fmt: skip
    monkeypatch.setattr(ensemble, "run_method", lambda *a: {
        "single_test_error": 0.2, "cold_test_error": 0.1,
        "final_test_error": 0.15, "snapshots": 3})  # fmt: skip
    out = ["--seeds", "2", "--out-dir", str(tmp_path)]
    ensemble.main(["mnist1d", *out])
    ensemble.main(["mnist1d", "--after", "0.25", "--name", "early", *out])
    folder = tmp_path / "ensemble"
    assert sorted(p.name for p in folder.iterdir()) == ["early", "ensemble_mnist1d"]
    for name, after in (("ensemble_mnist1d", 0.5), ("early", 0.25)):
        record = json.loads((folder / name / "seed1.json").read_text())
        assert record["settings"]["after"] == after
    assert (tmp_path / "early.json").exists()


def test_write_outputs_writes_nothing_when_the_figure_fails(tmp_path):
    """The record was written before the table and figure existed."""
    import argparse

    args = argparse.Namespace(out_dir=tmp_path / "out", name="x")

    def broken(path):
        path.write_bytes(b"half a figure")
        raise ValueError("inhomogeneous shape")

    with pytest.raises(ValueError, match="inhomogeneous"):
        common.write_outputs(args, {"a": 1}, "| table |\n", broken)
    assert list((tmp_path / "out").iterdir()) == []
    common.write_outputs(args, {"a": 1}, "| table |\n", lambda p: p.write_bytes(b"png"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "x.json", "x.md", "x.png"
    ]  # fmt: skip


def test_the_recorded_command_can_be_pasted_back(monkeypatch):
    import shlex

    argv = ["--note", "a note with spaces", "--name", "it's"]
    monkeypatch.setattr("sys.argv", ["experiments/x.py", *argv])
    command = common.provenance()["command"]
    assert shlex.split(command)[:2] == ["python", "-m"]
    assert shlex.split(command)[3:] == argv


def test_fig2_table_names_the_instruction_set_and_dirty_commits(tmp_path, capsys):
    machine = {"backend": "cpu", "cpu": "AMD EPYC", "cpu_isa": "avx512"}
    assert fig2_table.machine_name({"machine": machine}) == "AMD EPYC (CPU, avx512)"
    old = {"machine": {"backend": "cpu", "cpu": "AMD EPYC"}}
    assert fig2_table.machine_name(old) == "AMD EPYC (CPU, ISA unrecorded)"
    folder = tmp_path / "fig2" / "setting"
    folder.mkdir(parents=True)
    config = {
        "hyperparameter": "learning_rate",
        "low": 0.1,
        "high": 0.2,
        "num_steps": 30,
        "burn_in": 10,
        "rounds": 2,
        "exchange_interval": 10,
    }
    schedule = {"learning_rate": [{"from_step": 0, "learning_rate": 0.1}]}
    protocol = {
        "schedule": schedule,
        "c_rule": "keep",
        "c": 5.0,
        "exchange_interval": 10,
        "paper_exchange_interval": 10,
        "paper_num_steps": 30,
        "scheme": "random_pair",
        "validation_size": 8,
        "test_curve_size": 8,
        "final_test_size": 8,
    }
    commits = ("a" * 40, "b" * 40 + "-dirty")
    for seed, commit in enumerate(commits):
        payload = {
            "kind": "pt",
            "seed": seed,
            "run": {},
            "config": config,
            "protocol": protocol,
            "dataset": "d",
            "provenance": {"git_commit": commit, "machine": machine},
        }
        (folder / f"seed{seed}_pt.json").write_text(json.dumps(payload))  # fmt: skip
    row = fig2_table.protocol_row(fig2_table.merge_setting(folder))
    assert "bbbbbbb-dirty" in capsys.readouterr().err  # warned at merge time
    assert "| aaaaaaa, bbbbbbb-dirty | AMD EPYC (CPU, avx512) |" in row
