"""Model FLOP counts (experiments/flops.py) and the zoo benchmark's FLOP column."""

import jax
import jax.numpy as jnp
import pytest

from experiments import bench_zoo
from experiments.flops import jaxpr_flops, peak_tflops


@pytest.fixture(scope="module")
def bench_mlp(tmp_path_factory):
    """One zoo benchmark run (the MLP, M = 2, batch 4, one repeat) for the tests
    of its FLOP column: the step's FLOPs are counted once, when the variants
    are built (``bench_zoo.step_variants``), whatever is timed; only the fused
    step and the loop are timed, and no memory is compiled."""
    out = tmp_path_factory.mktemp("bench_zoo_flops")
    argv = ["--models", "mlp", "--ms", "2", "--batch", "4", "--reps", "1"]
    argv += ["--policies", "", "--skip", "mlp:vmap,mlp:hand_vmap", "--no-memory"]
    return bench_zoo.main([*argv, "--out-dir", str(out)]), out


def test_mlp_step_flops_match_the_layer_arithmetic(bench_mlp):
    # The zoo's MLP (256, 256) on 28x28 inputs, 10 classes, batch 4: forward
    # and weight gradients are one matrix product per layer each, input
    # gradients exist for every layer but the first (the data is not
    # differentiated). The count is step_variants' (the benchmark's row).
    layers = [(784, 256), (256, 256), (256, 10)]
    forward = sum(2 * 4 * i * o for i, o in layers)
    input_grads = sum(2 * 4 * i * o for i, o in layers[1:])
    (row,) = bench_mlp[0]["rows"]
    assert (row["model"], row["M"], row["batch"]) == ("mlp", 2, 4)
    assert row["flops_per_replica_step"] == 2 * forward + input_grads


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


def test_bench_zoo_records_model_flops(bench_mlp):
    result, out = bench_mlp
    (row,) = result["rows"]
    assert row["flops_per_replica_step"] > 0
    assert row["fused_gflops_per_s"] == pytest.approx(
        2 * row["flops_per_replica_step"] / row["timing"]["fused"]["median_s"] / 1e9
    )
    assert "fused_mfu" not in row  # no peak is tabulated for a CPU
    assert "fused model GFLOP/s" in (out / "bench_zoo.md").read_text()


def test_profile_dense_times_each_convolution_of_the_lenet_step(tmp_path, monkeypatch):
    from experiments import profile_dense

    # a batch of 8, not 128: the "sequential" step (a loop over the replicas)
    # runs seconds per call at 128 on 2 CPU cores; the rows do not depend on it
    monkeypatch.setattr(profile_dense, "BATCH", 8)
    argv = ["--model", "lenet_emnist", "--primitive", "conv_general_dilated"]
    argv += ["--replicas", "2", "--reps", "1", "--out-dir", str(tmp_path)]
    prof = profile_dense.main(argv)["profile"]
    # LeNet-5 has two convolutions: two forward passes, two kernel gradients and
    # one input gradient (the first layer's input needs none).
    assert len(prof["rows"]) == 5
    assert prof["rows"][0]["single"]["lhs"] == [8, 28, 28, 1]
    assert all(r["loop_s"] > 0 and r["fused_s"] > 0 for r in prof["rows"])
    assert (
        "each convolution of the step"
        in (tmp_path / "profile_dense_cpu.md").read_text()
    )
