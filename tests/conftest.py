import os

# The tests check numerics and behaviour, not speed: XLA's optimisation passes
# cost far more compile time than these tiny programs ever run (2.4x less CPU
# time for the compile-bound tests on 2 cores). Set before JAX reads its config;
# the environment variable also reaches subprocesses (the notebook's kernel).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import importlib  # noqa: E402
import logging  # noqa: E402
import pkgutil  # noqa: E402
import re  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:  # the oldest-versions subset of .ci/run installs no hypothesis
    from hypothesis import settings
except ImportError:  # pragma: no cover
    settings = None

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


def leaves_equal(a: Any, b: Any) -> bool:
    """Whether two trees' leaves are bitwise equal.

    Raises:
        ValueError: if the trees have different numbers of leaves, so that
            ``assert not leaves_equal(...)`` cannot pass on a wrong tree.
    """
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


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


train_step = jax.jit(tp.train_step, static_argnames=("per_replica_batch", "vectorize"))
"""``tp.train_step`` compiled once for the whole session (eager, it would run op by op)."""


class CrashError(BaseException):
    """Raised by :func:`crash_at`'s callback: a run that stops mid-way.

    A hard crash, as a killed process: not an ``Exception``, so nothing on its
    way out saves (the driver checkpoints the last round on an ``Exception``).
    """


def crash_at(round_index):
    """A callback that raises :class:`CrashError` at round ``round_index``."""

    def callback(record):
        if record.round == round_index:
            raise CrashError

    return callback


def refuse_unpickling(monkeypatch):
    """Makes every loader of pickle raise: a resume must not run one."""
    import _pickle
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a resume must not unpickle")

    for module in (pickle, _pickle):
        for name in ("loads", "load", "Unpickler"):
            monkeypatch.setattr(module, name, refuse)


@pytest.fixture(scope="session")
def pt_run(blobs, tx):
    """A PT run on the blobs (4 rungs, 10 rounds), shared by the diagnostics' tests."""
    train, val = blobs
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.5, 4)
    from tempering.zoo.models import MLP

    state = tp.create_replicas(
        jax.random.key(0), MLP((8,), 3), tx, train[0][:2], ladder=ladder
    )
    result = tp.pt_train(
        state, ladder, jax.random.key(1), train_data=train, validation_data=val,
        num_steps=60, exchange_interval=5, burn_in=10,
    )  # fmt: skip
    return ladder, result


@pytest.fixture
def key():
    return jax.random.key(0)


# --- property tests (hypothesis) ----------------------------------------------------

# Property tests of the exchange (test_exchange.py), the ladders (test_ladder.py)
# and PBT's operators (test_pbt.py): shapes are fixed (M = 6 replicas) and the
# functions jitted with their settings static, so the examples reuse a handful of
# compiled programs. Few examples, no deadline and no example database: the tests
# stay fast and write nothing. No subnormal floats: XLA on CPU flushes them to
# zero, NumPy does not.
PROPERTY_SETTINGS = (
    None
    if settings is None
    else settings(max_examples=30, deadline=None, database=None)
)


# --- bad inputs (issue 17): the table's shared harness ------------------------------

BAD_INPUTS_DOC = """No silent bad input (issue 17): a table of 323 bad inputs to the public API.

Each case makes one bad call (``create_replicas``, ``set_hyperparams``,
``get_hyperparams``, the ladders and hand-built ``Ladder``, ``exchange``,
``exchange_move``, ``multi_exchange_move``, ``pt_train``, ``pbt_config``,
``pbt_step``, ``pbt_train``, ``train``, ``diffusion_test``, ``evaluate``,
``train_step``, the data loaders, the ensembles) and asserts the exception
class (ValueError or TypeError) and a message that names the argument, most with the fix. The
error must come before anything compiles: no program of the package (init,
segment, evaluation, move) is compiled during a case (``compiled`` fixture,
``jax.log_compiles``); ``create_replicas`` gets a fresh model each time, so its
init is never a cache hit. Shared replicas (M = 4, one Dense layer on 8
features) are built once; nothing trains. Each module's cases are the
``BAD_INPUTS`` table of its test file (``BAD_INPUT_FILES``).

Counts: 143 of them needed a library fix when they were added (``fixed=True``:
they ran silently, failed with another library's message, or raised only
after compiling, measured against the commit before with this table); 0 still
wait for a fix in a module this change did not touch (``pending``, strict
xfail with the exact change). Three more calls run to a result the caller did not
ask for and warn (``WARNING_CASES``, test_training.py). Property tests of the
same checks and of the exchange and PBT operators are in test_exchange.py,
test_ladder.py and test_pbt.py.
"""

# The test files holding a ``BAD_INPUTS`` table (and maybe ``WARNING_CASES``).
BAD_INPUT_FILES = (
    "test_state", "test_hyperparams", "test_ladder", "test_exchange", "test_moves",
    "test_multi", "test_training", "test_pbt", "test_config", "test_driver",
    "test_diffusion", "test_step", "test_data",
)  # fmt: skip

NAN = float("nan")
INF = float("inf")
REPLICAS = 4
FEATURES = 8
CLASSES = 3


class DropNet(nn.Module):
    """One Dense layer on 8 features, with a per-replica dropout rate."""

    tag: int = 0  # another tag, another model: its init is never cached

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.Dense(CLASSES)(x)
        return tp.Dropout()(x, dropout_rate, deterministic=not train)


class PlainNet(nn.Module):
    """One Dense layer, no dropout rate."""

    tag: int = 0

    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(CLASSES)(x)


def _arrays(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=num).astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def ctx():
    """Everything the bad-input cases share, built once per test file (two tiny
    inits, nothing trained)."""
    x, y = _arrays(32, 0)
    xv, yv = _arrays(16, 1)
    tx = tp.sgd(0.05)
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, REPLICAS)
    key = jax.random.key(0)
    return types.SimpleNamespace(
        x=x, y=y, xv=xv, yv=yv, tx=tx, ladder=ladder, key=jax.random.key(1),
        state=tp.create_replicas(key, DropNet(), tx, x[:1], ladder=ladder),
        plain=tp.create_replicas(key, PlainNet(), tx, x[:1], num_replicas=REPLICAS),
        rungs=jnp.arange(REPLICAS, dtype=jnp.int32),
        losses=jnp.linspace(1.0, 2.0, REPLICAS),
        betas=ladder.betas,
        config=tp.pbt_config({"learning_rate": (0.01, 0.1)}),
        dropout=tp.linear_ladder("dropout_rate", 0.0, 0.3, REPLICAS),
    )  # fmt: skip


# the calls the cases of several files make bad, one argument at a time


def pt(ctx: Any, /, **overrides: Any) -> Any:
    """``pt_train`` on the shared state and data, with ``overrides``."""
    kwargs = dict(
        train_data=(ctx.x, ctx.y), validation_data=(ctx.xv, ctx.yv), num_steps=20,
        exchange_interval=5, batch_size=8, c=1.0,
    )  # fmt: skip
    kwargs.update(overrides)
    state = kwargs.pop("state", ctx.state)
    ladder = kwargs.pop("ladder", ctx.ladder)
    key = kwargs.pop("key", ctx.key)
    return tp.pt_train(state, ladder, key, **kwargs)


def run(ctx: Any, /, **overrides: Any) -> Any:
    """``tp.train`` with the identity move on the shared state and data."""
    kwargs = dict(num_steps=20, interval=5, batch_size=8)
    kwargs.update(overrides)
    move = kwargs.pop("move", tp.identity_move())
    move_state = kwargs.pop("move_state", None)
    data = tp.RunData(
        kwargs.pop("train_data", (ctx.x, ctx.y)),
        kwargs.pop("validation_data", (ctx.xv, ctx.yv)),
        kwargs.pop("test_data", None),
    )
    config = tp.RunConfig(**kwargs)
    return tp.train(ctx.state, ctx.key, move, data, config, move_state=move_state)


def hand_ladder(temps: Any, lr: Any = None) -> tp.Ladder:
    """A ``tp.Ladder`` built by hand, as arrays (no make_ladder checks)."""
    temps = np.asarray(temps, np.float32)
    lr = temps if lr is None else np.asarray(lr, np.float32)
    return tp.Ladder(values={"learning_rate": lr}, temperatures=temps)


class Case(NamedTuple):
    id: str
    call: Callable[[Any], Any]  # makes the bad call on the shared ctx
    error: type[Exception]
    match: str  # regex the message must contain: names the argument (and the fix)
    fixed: bool = False  # needed a library fix in this change
    pending: str | None = None  # a fix needed in a module this change left alone
    trains: bool = False  # (pending) runs training before it fails: not run


V, T = ValueError, TypeError
DRIVER = "tempering/driver.py: train() must check it before anything compiles"


def bad_input_params(cases: list[Case]) -> list[Any]:
    """The cases as ``pytest.param``s, a pending one as a strict xfail."""
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[
                pytest.mark.xfail(strict=True, run=not case.trains, reason=case.pending)
            ]
            if case.pending
            else [],
        )
        for case in cases
    ]


def bad_input_tables() -> tuple[list[Case], list[Case]]:
    """Every file's ``BAD_INPUTS`` and ``WARNING_CASES``, in ``BAD_INPUT_FILES`` order."""
    cases, warning_cases = [], []
    for name in BAD_INPUT_FILES:
        module = importlib.import_module(name)
        cases += module.BAD_INPUTS
        warning_cases += getattr(module, "WARNING_CASES", [])
    return cases, warning_cases


# nothing compiles before the error


def _engine_programs() -> frozenset[str]:
    """Names of every function the package defines (what its programs are named)."""
    names = set()
    for info in pkgutil.walk_packages(tp.__path__, "tempering."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (equinox; nnx in old flax)
            continue
        for name, obj in vars(module).items():
            if callable(obj) and getattr(obj, "__module__", "").startswith("tempering"):
                names.update({name, getattr(obj, "__name__", name)})
    return frozenset(names)


ENGINE_PROGRAMS = _engine_programs()
_COMPILING = re.compile(r"Compiling (?:jit\()?([^\s()]+)")


class _Compiles(logging.Handler):
    """Collects the names of the programs XLA compiles (``jax.log_compiles``)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _COMPILING.match(record.getMessage())
        if match:
            self.names.append(match.group(1))


@pytest.fixture
def compiled():
    """Names of the programs compiled while the test runs."""
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield handler.names
    finally:
        logger.removeHandler(handler)


def check_raises_before_compiling(ctx: Any, compiled: list[str], case: Case) -> None:
    """The body of each file's ``test_bad_input_raises_before_anything_compiles``."""
    with pytest.raises(case.error, match=case.match):
        case.call(ctx)
    engine = sorted(set(compiled) & ENGINE_PROGRAMS)
    assert not engine, f"compiled {engine} before raising"


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
