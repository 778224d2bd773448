"""tempering.enable_compilation_cache: entries written, found by a new process.

The cache is process-wide JAX state, so every call that turns it on runs in a
fresh Python process (a subprocess); only the bad-input checks, which raise
before any setting changes, run in the test process. Hits and writes are
counted with JAX's monitoring events (``/jax/compilation_cache/cache_hits``,
and ``cache_misses``, recorded when an entry is written), never by timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import tempering as tp
from tempering import compilation_cache

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh process: counts JAX's cache events while it turns the cache
# on (argv[1]: the folder, "-" for the default) and trains 2 replicas of a
# 2-layer MLP for 10 steps; prints one JSON line.
PT_WORKER = """
import collections, json, sys
import flax.linen as nn
import jax
import numpy as np
import tempering as tp

events = collections.Counter()
jax.monitoring.register_event_listener(
    lambda event, **kwargs: events.update([event.rsplit("/", 1)[-1]])
)
folder = tp.enable_compilation_cache(None if sys.argv[1] == "-" else sys.argv[1])
entries_after_enable = len(list(folder.iterdir()))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


rng = np.random.default_rng(0)
x = rng.normal(size=(64, 5)).astype(np.float32)
y = rng.integers(0, 3, size=64).astype(np.int32)
ladder = tp.make_ladder(learning_rate=[0.05, 0.1])
state = tp.create_replicas(jax.random.key(0), MLP(), tp.sgd(0.1), x[:4], ladder=ladder)
result = tp.pt_train(
    state, ladder, jax.random.key(1), train_data=(x, y),
    validation_data=(x[:32], y[:32]), num_steps=10, exchange_interval=5,
    c=0.1, batch_size=16,
)
print(json.dumps({
    "folder": str(folder),
    "entries_after_enable": entries_after_enable,
    "hits": events["cache_hits"],
    "writes": events["cache_misses"],
    "requests": events["compile_requests_use_cache"],
    "loss": float(result.history.train_loss[-1].mean()),
}))
"""

# Runs in a fresh process: JAX work before the cache is on, then two folders.
SWITCH_WORKER = """
import json, sys, warnings
import jax, jax.numpy as jnp
import tempering as tp

first, second = sys.argv[1], sys.argv[2]
jax.jit(lambda v: v - 1)(jnp.ones(3)).block_until_ready()  # before: not cached
with warnings.catch_warnings():
    warnings.simplefilter("error")  # the first folder, and the same one again
    a = tp.enable_compilation_cache(first)
    assert tp.enable_compilation_cache(first) == a
    a_before = sorted(p.name for p in a.iterdir())
    jax.jit(lambda v: v + 1)(jnp.ones(3)).block_until_ready()
    a_after_one = sorted(p.name for p in a.iterdir())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    b = tp.enable_compilation_cache(second)
jax.jit(lambda v: v * 2)(jnp.ones(3)).block_until_ready()
print(json.dumps({
    "a_before": a_before,
    "a_after_one": a_after_one,
    "a_after_switch": sorted(p.name for p in a.iterdir()),
    "b": sorted(p.name for p in b.iterdir()),
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
}))
"""


def run_worker(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Runs ``code`` in a fresh Python process; its last stdout line as JSON."""
    environ = {k: v for k, v in os.environ.items() if k != "TEMPERING_CACHE_DIR"}
    environ.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cache_entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith("-cache")}


def test_a_second_process_finds_every_program_of_pt_train(tmp_path):
    folder = tmp_path / "cache" / "jax"  # created, parents too
    cold = run_worker(PT_WORKER, str(folder))
    assert cold["folder"] == str(folder.resolve())
    assert cold["entries_after_enable"] == 0  # turning it on compiles nothing
    assert cold["hits"] == 0 and cold["writes"] > 0
    assert cold["writes"] == cold["requests"]  # every program written
    written = cache_entries(folder)
    assert len(written) == cold["writes"]

    warm = run_worker(PT_WORKER, str(folder))
    assert warm["writes"] == 0  # nothing compiled again
    assert warm["hits"] == warm["requests"] == cold["requests"]
    assert cache_entries(folder) == written
    assert warm["loss"] == cold["loss"]  # the same programs, the same run
    # the same folder through a symlink: before, its path made other keys
    link = tmp_path / "link"
    link.symlink_to(folder)
    linked = run_worker(PT_WORKER, str(link))
    assert linked["writes"] == 0 and linked["hits"] == cold["requests"]


def test_default_folder_from_the_environment(tmp_path):
    folder = tmp_path / "from-env"
    result = run_worker(PT_WORKER, "-", env={"TEMPERING_CACHE_DIR": str(folder)})
    assert result["folder"] == str(folder.resolve())
    assert len(cache_entries(folder)) == result["writes"] > 0


def test_on_after_other_jax_work_and_a_change_of_folder(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    result = run_worker(SWITCH_WORKER, str(first), str(second))
    # what compiled before the call is not written; after it, to the folder
    assert result["a_before"] == []
    assert len(result["a_after_one"]) >= 1
    # JAX alone would keep writing to the first folder; the call moves it
    assert result["a_after_switch"] == result["a_after_one"]
    assert len(result["b"]) >= 1
    (warning,) = result["warnings"]
    assert warning.startswith("UserWarning") and str(first) in warning


def test_default_folder_names(tmp_path, monkeypatch):
    # the folder is resolved and created without turning anything on
    tmp_path = tmp_path.resolve()
    monkeypatch.setenv("TEMPERING_CACHE_DIR", str(tmp_path / "env"))
    assert compilation_cache._checked_directory(None) == tmp_path / "env"
    monkeypatch.delenv("TEMPERING_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache._checked_directory(None) == (
        tmp_path / "xdg" / "tempering" / "jax"
    )
    assert (tmp_path / "xdg" / "tempering" / "jax").is_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache._default_directory()[0] == (
        tmp_path / "home" / ".cache" / "tempering" / "jax"
    )
    monkeypatch.chdir(tmp_path)
    assert compilation_cache._checked_directory("rel") == tmp_path / "rel"


def _settings() -> tuple:
    return (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
        jax.config.jax_persistent_cache_min_entry_size_bytes,
    )


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


BAD_INPUTS = [
    ("int", lambda tmp: 3, TypeError, "directory must be a folder's path"),
    ("bytes", lambda tmp: b"/tmp/x", TypeError, "directory must be a folder's path"),
    ("list", lambda tmp: [str(tmp)], TypeError, "got list"),
    ("empty", lambda tmp: "", ValueError, "directory must name a folder"),
    ("a file", _file, ValueError, "directory must be a folder, but .* is a file"),
    (
        "under a file",
        lambda tmp: _file(tmp) / "sub",
        ValueError,
        "directory .* cannot be created",
    ),
]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_raises_before_anything_changes(
    tmp_path, compiled, make, error, match
):
    before = _settings()
    with pytest.raises(error, match=match):
        tp.enable_compilation_cache(make(tmp_path))
    assert _settings() == before
    assert compiled == []


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_environment_variable_is_named(value, monkeypatch, compiled):
    # "" fell back to the default folder, " " made a folder named " " here
    before = _settings()
    monkeypatch.setenv("TEMPERING_CACHE_DIR", value)
    with pytest.raises(ValueError, match=r"\$TEMPERING_CACHE_DIR is set but empty"):
        tp.enable_compilation_cache()
    assert _settings() == before
    assert compiled == []


def test_bad_environment_variable_is_named(tmp_path, monkeypatch, compiled):
    before = _settings()
    monkeypatch.setenv("TEMPERING_CACHE_DIR", str(_file(tmp_path)))
    with pytest.raises(ValueError, match=r"\$TEMPERING_CACHE_DIR must be a folder"):
        tp.enable_compilation_cache()
    assert _settings() == before
    assert compiled == []
