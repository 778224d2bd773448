"""A PT run with checkpoints, in its own process, for tests/test_checkpoint.py.

    python tests/resume_worker.py CHECKPOINT_DIR OUT.npz [--kill-in-save N]
        [--reference]

Prints ``round <r>`` after every round (flushed), so the test can kill it at
chosen moments. ``--kill-in-save N`` SIGKILLs the process inside its N-th save,
after orbax wrote the checkpoint's files and before the rename that commits it.
At the end it writes the final state and history to OUT.npz; ``--reference``
runs the same call without checkpoints instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import tempering as tp  # noqa: E402


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.tanh(nn.Dense(16)(x))
        x = tp.Dropout()(x, dropout_rate, deterministic=not train)
        return nn.Dense(3)(x)


class NetRelu(nn.Module):
    """Net with relu: the same parameter shapes and name, other code."""

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.relu(nn.Dense(16)(x))
        x = tp.Dropout()(x, dropout_rate, deterministic=not train)
        return nn.Dense(3)(x)


NetRelu.__name__ = NetRelu.__qualname__ = "Net"


def smoothed(outputs, targets):
    """Cross entropy with label smoothing 0.1."""
    import optax

    labels = optax.smooth_labels(jax.nn.one_hot(targets, outputs.shape[-1]), 0.1)
    return optax.softmax_cross_entropy(outputs, labels)


def by_accuracy(validation):
    return -validation.metrics["accuracy"]


def log_round(record) -> None:
    print(f"round {record.round}", flush=True)


# One object per optimiser: the compiled programs are cached on it, so the many
# runs of one test process compile once (a new but equal optimiser describes
# the same in a checkpoint's fingerprint, yet misses JAX's cache).
OPTIMIZERS = {
    None: tp.sgd(0.1, momentum=0.9),
    "momentum": tp.sgd(0.1, momentum=0.5),
    "nesterov": tp.sgd(0.1, momentum=0.9, nesterov=True),
}


def run(
    checkpoint_dir: str | None, callback=log_round, variant=None, **kwargs
) -> tp.PTResult:
    """The run; ``variant`` swaps in another model, optimiser, loss or function."""
    variant = variant or {}
    model = NetRelu() if variant.get("model") == "relu" else Net()
    tx = OPTIMIZERS[variant.get("tx")]
    loss = {"smoothed": smoothed}.get(variant.get("loss_fn"), tp.state.cross_entropy)
    if "metrics_fn" in variant:
        kwargs["metrics_fn"] = variant["metrics_fn"]
    if variant.get("score_fn") == "accuracy":
        kwargs["score_fn"] = by_accuracy
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)
    state = tp.create_replicas(
        jax.random.key(0), model, tx, x[:2], num_replicas=4, loss_fn=loss
    )
    ladder = tp.geometric_ladder("learning_rate", 0.02, 0.4, 4, dropout_rate=0.1)
    settings = dict(
        train_data=(x, y), validation_data=(x[:128], y[:128]), num_steps=130,
        burn_in=10, exchange_interval=6, batch_size=32, shared_batch=False,
        callback=callback,
    )  # fmt: skip
    if checkpoint_dir is not None:
        settings["checkpoint_dir"] = checkpoint_dir
    return tp.pt_train(state, ladder, jax.random.key(7), **{**settings, **kwargs})


def arrays(result: tp.PTResult) -> dict[str, np.ndarray]:
    """The final state and every history field, flat."""
    flat = {
        f"state/{i}": np.asarray(leaf)
        for i, leaf in enumerate(jax.tree.leaves(result.state))
    }
    for name, value in result.history._asdict().items():
        for i, leaf in enumerate(jax.tree.leaves(value)):
            flat[f"history/{name}/{i}"] = np.asarray(leaf)
    return flat


def kill_in_save(n: int) -> None:
    """SIGKILL during the n-th checkpoint commit (orbax's atomic rename)."""
    from orbax.checkpoint._src.path import atomicity

    rename, calls = atomicity.async_path.rename, [0]

    async def killing_rename(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            print("killed in save", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return await rename(*args, **kwargs)

    atomicity.async_path.rename = killing_rename


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint_dir")
    p.add_argument("out")
    p.add_argument("--kill-in-save", type=int, default=0)
    p.add_argument("--reference", action="store_true")
    args = p.parse_args()
    if args.kill_in_save:
        kill_in_save(args.kill_in_save)
    result = run(None if args.reference else args.checkpoint_dir)
    np.savez(args.out, **arrays(result))
    print("done", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
