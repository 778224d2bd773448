import os

# The tests check numerics and behaviour, not speed: XLA's optimisation passes
# cost far more compile time than these tiny programs ever run (2.4x less CPU
# time for the compile-bound tests on 2 cores). Set before JAX reads its config;
# the environment variable also reaches subprocesses (the notebook's kernel).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tempering as tp  # noqa: E402

jax.config.update(
    "jax_disable_most_optimizations",
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] not in ("0", "false", "False"),
)


class TinyMLP(nn.Module):
    """A small model following the engine's contract (train flag, dropout rate)."""

    features: int = 16
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = x.reshape((x.shape[0], -1))
        x = nn.tanh(nn.Dense(self.features)(x))
        x = tp.Dropout()(x, dropout_rate, deterministic=not train)
        return nn.Dense(self.num_classes)(x)


class TinyBNNet(nn.Module):
    """A model with BatchNorm, to check per-replica batch statistics."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = tp.Dropout()(nn.relu(x), dropout_rate, deterministic=not train)
        return nn.Dense(self.num_classes)(x)


def make_blobs(num, dim=5, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim)) * 2.0
    labels = rng.integers(0, num_classes, size=num).astype(np.int32)
    inputs = (centers[labels] + rng.normal(size=(num, dim))).astype(np.float32)
    return inputs, labels


@pytest.fixture(scope="session")
def blobs():
    train = make_blobs(256, seed=0)
    val = make_blobs(64, seed=1)
    return train, val


@pytest.fixture(scope="session")
def tx():
    # One optimiser object for the session: the compiled programs are cached on it.
    return tp.sgd(0.05, momentum=0.9)


@pytest.fixture
def key():
    return jax.random.key(0)


def pytest_terminal_summary(terminalreporter):
    """Says how the golden outputs were compared, when tests/test_golden.py ran."""
    reports = [r for rs in terminalreporter.stats.values() for r in rs]
    if not any("test_golden.py" in getattr(r, "nodeid", "") for r in reports):
        return
    import importlib.util
    import json
    from pathlib import Path

    golden = Path(__file__).resolve().parent / "golden"
    spec = importlib.util.spec_from_file_location(
        "golden_compare", golden / "golden_compare.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recorded = json.loads((golden / "golden.json").read_text())["fingerprint"]
    differences = module.fingerprint_differences(recorded)
    if differences:
        mode = "within tolerance; this platform differs: " + "; ".join(differences)
    else:
        mode = "bit for bit: this platform is the recording's"
    terminalreporter.write_line(f"golden outputs compared {mode}")
