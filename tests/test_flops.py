"""Model FLOP counts (experiments/flops.py) and the benchmark's FLOP columns."""

import json

import jax
import jax.numpy as jnp
import pytest

from experiments import benchmark, profile_step
from experiments.flops import jaxpr_flops, peak_tflops


def test_mlp_step_flops_match_the_layer_arithmetic():
    # MLP (256, 256) on 40 inputs, 10 classes: forward and weight gradients
    # are one matrix product per layer each, input gradients exist for every
    # layer but the first (the data is not differentiated).
    layers = [(40, 256), (256, 256), (256, 10)]
    forward = sum(2 * benchmark.BATCH * i * o for i, o in layers)
    input_grads = sum(2 * benchmark.BATCH * i * o for i, o in layers[1:])
    expected = 2 * forward + input_grads
    assert benchmark.replica_step_flops("mlp") == expected


def test_strided_conv_backward_counts_twice_the_forward():
    x = jnp.ones((2, 16, 16, 3))
    w = jnp.ones((3, 3, 3, 8))

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    forward = jaxpr_flops(jax.make_jaxpr(conv)(x, w))
    assert forward == 2 * (2 * 8 * 8 * 8) * (3 * 3 * 3)
    both = jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1))
    assert jaxpr_flops(jax.make_jaxpr(both)(x, w)) == 3 * forward


def test_batched_dot_counts_every_batch_element():
    a, b = jnp.ones((4, 5, 6)), jnp.ones((4, 6, 7))
    flops = jaxpr_flops(jax.make_jaxpr(lambda a, b: a @ b)(a, b))
    assert flops == 2 * 4 * 5 * 6 * 7


def test_loops_are_refused_not_undercounted():
    def scanned(x):
        return jax.lax.scan(lambda c, _: (c @ c, None), x, length=3)[0]

    with pytest.raises(ValueError, match="scan"):
        jaxpr_flops(jax.make_jaxpr(scanned)(jnp.ones((4, 4))))


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 494.7),
        ("NVIDIA H100 PCIe", 378.0),
        ("NVIDIA H200", 494.7),
        ("NVIDIA A100-SXM4-40GB", 156.0),
        ("cpu", None),
    ],
)
def test_peak_by_device_kind(kind, peak):
    assert peak_tflops(kind) == peak


def test_benchmark_records_model_flops(tmp_path):
    argv = ["--models", "mlp", "--ms", "2", "--reps", "1", "--skip-pt"]
    argv += ["--skip", "unroll,lax_map,sequential", "--segment-models", ""]
    benchmark.main([*argv, "--name", "bench", "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "bench.json").read_text())["throughput"]
    assert row["flops_per_replica_step"] == benchmark.replica_step_flops("mlp")
    seconds = row["timing"]["fused"]["min_s"]
    assert row["fused_tflops_per_s"] == pytest.approx(
        2 * row["flops_per_replica_step"] / seconds / 1e12
    )
    assert "fused_mfu" not in row  # no peak is tabulated for a CPU
    table = (tmp_path / "bench.md").read_text()
    assert "Fused replica step on CPU" in table
    assert "fused model GFLOP/s" in table
    assert (tmp_path / "bench.png").exists()


def test_profile_step_times_each_convolution_of_the_lenet_step(tmp_path):
    result = profile_step.main(
        [
            "--models",
            "lenet_emnist",
            "--reps",
            "1",
            "--name",
            "prof",
            "--out",
            str(tmp_path),
        ]
    )
    (prof,) = result["profiles"]
    # LeNet-5 has two convolutions: two forward passes, two kernel gradients and
    # one input gradient (the first layer's input needs none).
    assert len(prof["convs"]) == 5
    assert [c["lhs"] for c in prof["convs"]][0] == [128, 28, 28, 1]
    conv_flops = sum(c["flops"] for c in prof["convs"])
    assert 0 < conv_flops < benchmark.replica_step_flops("lenet_emnist")
    assert all(c["seconds"] > 0 for c in prof["convs"])
    assert prof["conv_share"] == pytest.approx(
        sum(c["seconds"] for c in prof["convs"]) / prof["step_s"]
    )
    assert "**all convolutions**" in (tmp_path / "prof.md").read_text()


def test_benchmark_pt_only_records_paired_pt_grid_ratios(tmp_path):
    argv = ["--pt-only", "--pt-runs", "mlp:4:2", "--pt-reps", "3"]
    result = benchmark.main([*argv, "--name", "pt", "--out", str(tmp_path)])
    assert result["throughput"] == []
    (run,) = result["pt_overhead"]
    assert (run["exchange_interval"], run["rounds"]) == (4, 2)
    pt, grid = run["timing"]["pt"]["times_s"], run["timing"]["grid"]["times_s"]
    paired = run["pt_vs_grid_paired"]
    ratios = sorted(p / g for p, g in zip(pt, grid, strict=True))
    assert paired["n"] == 3
    assert paired["median"] == pytest.approx(ratios[1])
    assert paired["q25"] <= paired["median"] <= paired["q75"]
    table = (tmp_path / "pt.md").read_text()
    assert "PT / grid paired" in table
    assert "Fused replica step" not in table
    assert not (tmp_path / "pt.png").exists()
