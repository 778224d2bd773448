"""Smoke tests of the zoo benchmark (experiments/bench_zoo.py) at a tiny size."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_zoo, zoo


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_every_zoo_model_trains_as_a_user_writes_it(name):
    # Shapes only (jax.eval_shape: traced, not compiled): the user's init and
    # SGD step take the model as written, with its train keyword.
    entry = zoo.ZOO[name]
    x = jnp.zeros((2, *entry.input_shape), jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    init, step = zoo.hand_step(entry)
    key = jax.random.key(0)
    variables, opt_state = jax.eval_shape(init, key, x)
    new, _, loss = jax.eval_shape(step, variables, opt_state, key, x, y)
    assert loss.shape == () and jax.tree.structure(new) == jax.tree.structure(variables)
    assert zoo.has_batch_stats(variables) == (name in ("cnn_bn", "resnet20"))
    assert bench_zoo.param_count(entry) > 0


def test_bench_zoo_smoke(tmp_path):
    result = bench_zoo.main(
        ["--models", "mlp", "--ms", "2", "--batch", "4", "--reps", "2",
         "--skip", "mlp:vmap", "--out", str(tmp_path)]
    )  # fmt: skip
    (row,) = result["rows"]
    # an MLP: "auto" is "broadcast" products, "patches" plain vmap (nothing
    # to rewrite: not timed again, and vmap is skipped); "sequential" is timed
    assert result["policies"] == ["patches", "sequential"]
    assert set(row["timing"]) == {"fused", "sequential", "hand_vmap", "loop"}
    assert row["hand_vmap_vs_fused"] > 0
    assert len(row["timing"]["loop"]["times_s"]) == 2
    assert all(t["page_faults_per_call"] >= 0 for t in row["timing"].values())
    assert row["loop_vs_paired"]["fused"]["n"] == 2
    assert set(row["memory"]) == {"fused", "sequential", "one_replica"}
    assert row["memory_vs_m_times_one"]["fused"] > 0
    saved = json.loads((tmp_path / "bench_zoo.json").read_text())
    assert saved["statistic"].startswith("median over interleaved repeats")
    assert saved["provenance"]["git_commit"]
    assert saved["summary"]["2"]["fused"]["models"] == 1
    table = (tmp_path / "bench_zoo.md").read_text()
    assert "Statistic: the median over interleaved repeats" in table
    assert "| mlp | 2 | 2 |" in table and "hand vmap / fused" in table
    assert "page faults fused / loop |" in table
    assert saved["provenance"]["machine"]["allocator_env"] == {
        k: v for k, v in os.environ.items() if k.startswith("MALLOC_")
        or k in ("GLIBC_TUNABLES", "LD_PRELOAD")
    }  # fmt: skip
    short = (tmp_path / "bench_zoo_short.md").read_text()
    assert "the median of interleaved repeats" in short and "| mlp | 2 |" in short


def test_bench_zoo_times_a_driver_segment_per_step(tmp_path):
    # the segment against the fused step and the loop (vmap variants not timed)
    result = bench_zoo.main(
        ["--models", "mlp", "--ms", "2", "--batch", "4", "--reps", "2",
         "--policies", "", "--skip", "mlp:vmap,mlp:hand_vmap", "--segment", "3",
         "--no-memory", "--out", str(tmp_path)]
    )  # fmt: skip
    (row,) = result["rows"]
    segment = row["timing"]["segment"]
    assert result["segment_steps"] == 3 and segment["steps_per_call"] == 3
    assert segment["median_s"] == pytest.approx(np.median(segment["times_s"]))
    assert row["loop_vs"]["segment"] > 0
    table = (tmp_path / "bench_zoo.md").read_text()
    assert "a segment of 3 steps" in table
    assert "page faults fused / segment / loop |" in table


def test_bench_zoo_variants_train_on_from_their_own_last_step():
    # Each timed variant donates its state: a second call must continue from
    # the first one's result (a lower loss on the same batch at this rate),
    # never from a donated, deleted buffer.
    variants, _, _ = bench_zoo.step_variants(zoo.ZOO["mlp"], 2, 8, (), segment=2)
    assert "segment" in variants
    for name, run in variants.items():
        losses = [np.asarray(jax.device_get(run())).ravel() for _ in range(3)]
        assert np.all(losses[2] < losses[0]), (name, losses)


def test_bench_zoo_refuses_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        bench_zoo.main(["--models", "vgg", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench_zoo.main(["--skip", "mlp:loop", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown vectorize policy"):
        bench_zoo.main(["--models", "mlp", "--policies", "fastest", "--out", str(tmp_path)])  # fmt: skip


def test_profile_dense_smoke(tmp_path):
    from experiments import profile_dense

    result = profile_dense.main(
        ["--replicas", "2", "--reps", "1", "--out", str(tmp_path)]
    )["profile"]
    # forward, input and weight gradients of the MLP's three layers (the first
    # layer's input gradient is not needed): the same products in both steps
    assert len(result["rows"]) == 8
    assert all(r["loop_s"] > 0 and r["fused_s"] > 0 for r in result["rows"])
    assert set(result["steps"]) == {"loop", "hand", "vmap", "sequential"}
    table = (tmp_path / "profile_dense_cpu.md").read_text()
    assert "median of interleaved repeats" in table and "| **all** |" in table
