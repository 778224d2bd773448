"""The engine against golden outputs recorded at a fixed commit, bit for bit.

``tests/golden/golden_configs.py`` holds the configurations,
``tests/golden/record_golden.py`` recorded ``golden.npz`` and ``golden.json``
(versions, commit, platform). Float bits may change across XLA releases, so the
comparison is skipped when the installed jax or jaxlib differs from the
recorded one, or the backend does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import jax
import jaxlib
import numpy as np
import pytest

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def _load_configs() -> ModuleType:
    """Imports ``golden/golden_configs.py`` by file path (no sys.path change)."""
    name = "golden_configs"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GOLDEN_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


golden_configs = _load_configs()
META = json.loads((GOLDEN_DIR / "golden.json").read_text())


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, np.ndarray]]:
    """The recorded arrays, grouped by configuration."""
    if (jax.__version__, jaxlib.__version__) != (META["jax"], META["jaxlib"]):
        pytest.skip(
            f"golden outputs recorded with jax {META['jax']} / jaxlib "
            f"{META['jaxlib']}, installed {jax.__version__} / {jaxlib.__version__}: "
            "float bits may differ across XLA releases"
        )
    if jax.default_backend() != META["backend"]:
        pytest.skip(
            f"golden outputs recorded on {META['backend']}, running on "
            f"{jax.default_backend()}"
        )
    flag = bool(jax.config.read("jax_disable_most_optimizations"))
    assert flag == META["jax_disable_most_optimizations"], (
        "jax_disable_most_optimizations differs from the recording "
        f"({META['jax_disable_most_optimizations']}); see tests/conftest.py"
    )
    grouped: dict[str, dict[str, np.ndarray]] = {}
    with np.load(GOLDEN_DIR / "golden.npz", allow_pickle=False) as data:
        for key in data.files:
            config, field = key.split("/", 1)
            grouped.setdefault(config, {})[field] = data[key]
    return grouped


def test_configs_match_recording(golden: dict[str, dict[str, np.ndarray]]) -> None:
    assert sorted(golden) == sorted(golden_configs.CONFIGS)
    assert META["configs"] == list(golden_configs.CONFIGS)


# Changed on purpose by the one-driver rewrite: diffusion_test's segments draw
# their dropout keys from split(fold_in(key, r))[0], as every other run does,
# instead of fold_in(key, r) itself. Only replicas with dropout > 0 see other
# masks: the dropout-free replica 0 must still match bit for bit.
DROPOUT_KEYS_CHANGED = {
    "diffusion_dropout": ("diffusion.distance", "diffusion.train_loss")
}


@pytest.mark.parametrize("name", golden_configs.CONFIGS)
def test_golden(name: str, golden: dict[str, dict[str, np.ndarray]]) -> None:
    expected = dict(golden[name])
    actual = golden_configs.RUNNERS[name]()
    for key in DROPOUT_KEYS_CHANGED.get(name, ()):
        assert not np.array_equal(actual[key][:, 1:], expected[key][:, 1:])
        expected[key], actual[key] = expected[key][:, :1], actual[key][:, :1]
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing and not extra, f"{name}: missing {missing}, unexpected {extra}"
    failures = []
    for key in sorted(expected):
        got, want = np.asarray(actual[key]), expected[key]
        try:
            assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
            np.testing.assert_array_equal(got, want)  # NaN equals NaN
        except AssertionError as error:
            failures.append(f"{name}/{key}: {error}")
    assert not failures, "\n".join(failures)
