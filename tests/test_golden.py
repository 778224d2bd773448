"""The engine against golden outputs recorded at a fixed commit.

``tests/golden/golden_configs.py`` holds the configurations,
``tests/golden/record_golden.py`` recorded ``golden.npz`` and ``golden.json``
(the commit and the platform's fingerprint), and ``tests/golden/golden_compare.py``
says how they are compared: bit for bit where this platform's fingerprint equals
the recording's, elsewhere every float output within a tolerance derived from
the configuration's steps and every discrete outcome exactly. Nothing is
skipped: the mode in force is printed at the end of the test session
(``conftest.py``) and named in every failure.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def _load(name: str) -> ModuleType:
    """Imports ``golden/<name>.py`` by file path (no sys.path change)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GOLDEN_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


golden_compare = _load("golden_compare")
golden_configs = _load("golden_configs")
META = json.loads((GOLDEN_DIR / "golden.json").read_text())


def comparison_mode() -> tuple[bool, list[str]]:
    """(bit for bit?, the fingerprint entries that differ from the recording)."""
    differences = golden_compare.fingerprint_differences(META["fingerprint"])
    return not differences, differences


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, np.ndarray]]:
    """The recorded arrays, grouped by configuration."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    with np.load(GOLDEN_DIR / "golden.npz", allow_pickle=False) as data:
        for key in data.files:
            config, field = key.split("/", 1)
            grouped.setdefault(config, {})[field] = data[key]
    return grouped


def test_configs_match_recording(golden: dict[str, dict[str, np.ndarray]]) -> None:
    assert sorted(golden) == sorted(golden_configs.CONFIGS)
    assert META["configs"] == list(golden_configs.CONFIGS)
    assert sorted(golden_configs.NUM_STEPS) == sorted(golden_configs.CONFIGS)


@pytest.mark.parametrize("name", golden_configs.CONFIGS)
def test_golden(name: str, golden: dict[str, dict[str, np.ndarray]]) -> None:
    bitwise, differences = comparison_mode()
    failures = golden_compare.compare(
        golden_configs.run(name),
        golden[name],
        bitwise=bitwise,
        num_steps=golden_configs.NUM_STEPS[name],
        gains=golden_configs.gains(name, golden[name]),
    )
    mode = (
        "bit for bit (this platform is the recording's)"
        if bitwise
        else "within tolerance (this platform differs: " + "; ".join(differences) + ")"
    )
    assert not failures, f"{name}, compared {mode}:\n" + "\n".join(failures)


# The comparison itself, on the recorded outputs: it must fail on what it guards.


def _recorded(golden, name="pt_even_odd"):
    return {key: np.array(value) for key, value in golden[name].items()}


def test_tolerance_mode_accepts_last_bit_differences(golden):
    actual = _recorded(golden)
    for key, value in actual.items():
        if value.dtype == np.float32 and not golden_compare.is_discrete(key, value):
            actual[key] = np.nextafter(value, np.float32(np.inf))  # one ulp up
    assert golden_compare.compare(actual, golden["pt_even_odd"], bitwise=False, num_steps=88) == []  # fmt: skip
    failures = golden_compare.compare(actual, golden["pt_even_odd"], bitwise=True, num_steps=88)  # fmt: skip
    assert any(line.startswith("state.params:") for line in failures)


@pytest.mark.parametrize(
    "key, change",
    [
        ("state.params", lambda a: a * (1 + 1e-3)),  # e.g. a learning rate off by 0.1%
        ("history.val_loss", lambda a: a + 1e-3),
        ("history.rungs", lambda a: a[:, ::-1]),  # the swaps came out otherwise
        ("history.accepted", lambda a: ~a),
        ("summary.best_replica", lambda a: a + 1),
        ("evaluate.metrics.accuracy", lambda a: a + np.float32(1 / 64)),  # one input
    ],
)
def test_tolerance_mode_catches_changed_outputs(golden, key, change):
    actual = _recorded(golden)
    actual[key] = change(actual[key])
    failures = golden_compare.compare(actual, golden["pt_even_odd"], bitwise=False, num_steps=88)  # fmt: skip
    assert [line.split(":")[0] for line in failures] == [key]


def test_missing_outputs_fail(golden):
    actual = _recorded(golden)
    del actual["state.params"]
    actual["state.extra"] = np.zeros(2)
    (line,) = golden_compare.compare(actual, golden["pt_even_odd"], bitwise=False, num_steps=88)  # fmt: skip
    assert "['state.params']" in line and "['state.extra']" in line


def test_fingerprint_names_what_differs(monkeypatch):
    here = golden_compare.fingerprint()
    assert golden_compare.fingerprint_differences(here) == []
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=SSE3")
    (line,) = golden_compare.fingerprint_differences(here)
    assert line.startswith("xla_cpu_max_isa:") and "here 'SSE3'" in line
    recorded = dict(META["fingerprint"], jaxlib="0.0.1")
    assert any(
        line.startswith("jaxlib: recorded '0.0.1'")
        for line in golden_compare.fingerprint_differences(recorded)
    )
