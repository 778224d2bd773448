"""Data sources: in-memory arrays or any iterable of host batches.

Training data is either

- in memory: a ``Split``, or an ``(inputs, targets)`` pair of arrays with a
  leading example axis. The batches are gathered on device from seeded epoch
  permutations, so the batch of global step s depends only on the run's key;
- a stream: any iterable of batches (a Python generator, a grain dataset or
  ``DataLoader``, ``tfds.data_source(...)`` batched by grain, or
  ``tfds.as_numpy(...)``, which needs TensorFlow; a re-iterable starts a new
  pass when one ends, a generator must last the run). Each element is an
  ``(inputs, targets)`` pair, a ``Split``, or a dict with one of the key pairs
  in :data:`BATCH_KEYS`. The driver pulls a segment's batches in chunks of at
  most :data:`tempering.loops.STREAM_CHUNK` (32) steps and sends each chunk to
  the device at once (padded to 32 steps for the device loop, so one program
  serves every segment length), so there is no host-to-device transfer per
  step.
  Streamed batches keep their own size: ``batch_size`` is for in-memory data,
  and one given with a stream must equal the stream's batch size (else a
  ValueError before anything compiles).

Every streamed training batch is checked on the host before it trains: it
must have the first batch's shapes and dtypes, finite float values, and, with
the default loss (:func:`tempering.state.cross_entropy`), integer class
indices in ``[0, num_classes)`` (the model's output size). The one exception
is a pass's short last batch (fewer examples than the first, e.g. a dataset
batched without ``drop_remainder``): it is dropped, with one warning naming
it. A bad batch is a :class:`BatchError` (a ValueError) naming its index,
raised before it trains;
:func:`tempering.train` attaches to it the replicas after the last round that
ended finite and the history, so nothing trained is lost.

A stream whose iterator can save its position (``get_state()`` and
``set_state()``, as grain's ``DataLoader`` and dataset iterators can) is
checkpointed with the run: ``BatchReader.position`` is the iterator's state
(JSON) before the next batch to train, whatever the reader has peeked, and a
resumed call sets it, so it trains on the same batches, bit for bit. A
re-iterable whose iterator cannot (a list of batches, a ``tf.data`` dataset)
saves the count of elements read in the current pass; a resumed call starts a
fresh pass and reads that many first (at most one pass of reading), and checks
the batch it reaches against the one the run read there, so a re-iterable whose
passes differ (reshuffled each pass) is refused rather than trained on other
batches. A one-pass iterator (a generator) cannot be rewound: a resumed call
reads on from wherever the given iterator is.

Evaluation data (validation, test) is in memory, or a *re-iterable* of batches
(a list, a ``tf.data`` / tfds dataset, a grain loader) or a function returning
a fresh iterator: it is read once per round (an endless one that says so by
its length, such as a repeated dataset, is refused; one without a length,
such as a ``while True`` generator, cannot be told from a long one, and a
warning says so once a pass has read a million examples). Its batches may differ in size; each is cut
into chunks of ``eval_batch_size`` examples (or of the first batch's size, if
smaller), the last chunk padded and masked. Every batch is checked like the
first when it is read (its shape per example and dtype, finite values, class
indices), and a bad one is a :class:`BatchError` naming its index.

A call reads no training batch before every check that needs none has
passed: a refused call leaves the caller's generator where it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tempering import sharding
from tempering.batches import (
    BATCH_KEYS,
    BatchError,
    BatchReader,
    BatchSpec,
    IterableSource,
    _is_array,
    _layout,
    batch_pair,
    batch_problem,
    check_batch,
    check_labels,
    checkable,
    examples_problem,
)
from tempering.data import Dataset, Split
from tempering.state import EvalMetrics, ReplicaState, cross_entropy
from tempering.step import check_model_takes, check_per_example, per_example_shapes

if TYPE_CHECKING:
    from tempering.config import RunConfig, RunData

__all__ = [
    "BATCH_KEYS",
    "ArraySource",
    "BatchError",
    "BatchReader",
    "BatchSpec",
    "IterableSource",
    "RunSources",
    "as_eval_source",
    "as_train_source",
    "batch_pair",
    "check_batch",
    "check_first_batch",
    "prepare_sources",
]


class ArraySource(NamedTuple):
    """A dataset held in memory."""

    inputs: Any  # shape=(N, ...)
    targets: Any  # shape=(N, ...)


def _in_memory(data: Any, name: str = "data") -> ArraySource | None:
    """``data`` as an in-memory source (Python lists as numpy arrays), else None."""
    if isinstance(data, Split):
        return ArraySource(*data)
    if isinstance(data, Dataset):  # a NamedTuple: it would read as a stream
        raise ValueError(
            f"{name} is a whole tempering.data.Dataset (its train, validation and "
            f"test splits); give one split: train_data=data.train, "
            "validation_data=data.validation, test_data=data.test (in a "
            "RunData: RunData(data.train, data.validation, data.test))"
        )
    if (
        isinstance(data, tuple)
        and len(data) not in (0, 2)
        and all(_is_array(part) for part in data)
    ):  # not a stream either: its batches would be bare arrays
        raise ValueError(
            f"{name} must be an (inputs, targets) pair of arrays, got a tuple of "
            f"{len(data)} arrays: give (x, y)"
        )
    if not (isinstance(data, tuple | list) and len(data) == 2):
        return None
    if all(_is_array(part) for part in data):
        return ArraySource(*data)
    # inputs and labels as Python lists: each a rectangular array of numbers,
    # as many of each (a stream of two batches of lists is neither)
    inputs, targets = (part if _is_array(part) else _numbers(part) for part in data)
    if inputs is None or targets is None or len(inputs) != len(targets):
        return None
    if len(inputs) == 2 and not any(map(_is_array, data)):
        raise ValueError(
            f"{name} given as two lists of two items each reads two ways: "
            "(inputs, targets) of two examples, or a stream of two (inputs, "
            "targets) batches; give numpy arrays: (np.asarray(inputs), "
            "np.asarray(targets)), or a list of batches of arrays"
        )
    return ArraySource(inputs, targets)


def _numbers(part: Any) -> np.ndarray | None:
    """A nested list (or tuple) of numbers as a numeric array; None otherwise."""
    leaf = part
    while isinstance(leaf, list | tuple) and leaf:
        leaf = leaf[0]
    if not isinstance(leaf, int | float | np.number) or isinstance(leaf, bool):
        return None
    try:
        array = np.asarray(part)
    except ValueError:  # ragged: a batch's (inputs, targets) pair of lists
        return None
    return array if array.dtype.kind in "iuf" and array.ndim >= 1 else None


def _check_arrays(source: ArraySource, name: str, min_size: int) -> ArraySource:
    inputs, targets = source
    if np.ndim(inputs) < 1 or np.ndim(targets) < 1:
        raise ValueError(
            f"{name} needs a leading example axis: inputs (N, ...) and targets "
            f"(N, ...), got shapes {np.shape(inputs)} and {np.shape(targets)}"
        )
    if len(targets) == 0:
        raise ValueError(
            f"{name} is empty: it needs at least {min_size} "
            + ("example" if min_size == 1 else "examples")
        )
    if len(targets) != len(inputs):
        raise ValueError(
            f"{name} has {len(inputs)} inputs but {len(targets)} targets; they "
            "must match"
        )
    if len(targets) < min_size:
        raise ValueError(
            f"{name} has {len(targets)} examples, fewer than batch_size={min_size}; "
            "lower batch_size or give more data"
        )
    return source


def as_train_source(
    data: Any, name: str, batch_size: int
) -> ArraySource | IterableSource:
    """The training source of ``data`` (arrays, or an iterable of batches)."""
    if (arrays := _in_memory(data, name)) is not None:
        return _check_arrays(arrays, name, batch_size)
    if isinstance(data, Iterator):
        return IterableSource(lambda: data, restartable=False)
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | dict):
        return IterableSource(lambda: iter(data), restartable=True)
    raise TypeError(
        f"{name} must be a tempering.data.Split, an (inputs, targets) pair of "
        f"arrays (or lists), or an iterable of (inputs, targets) batches; got "
        f"{type(data).__name__}"
    )


# A re-iterable this long is endless (grain's repeat() says sys.maxsize // 16).
_ENDLESS = 1 << 48


def as_eval_source(data: Any, name: str) -> ArraySource | IterableSource:
    """The evaluation source of ``data`` (arrays, a re-iterable, or a factory)."""
    if (arrays := _in_memory(data, name)) is not None:
        return _check_arrays(arrays, name, 1)
    try:
        length = len(data)
    except TypeError:  # no length: read until it ends
        length = 0
    if length >= _ENDLESS:
        raise ValueError(
            f"{name} is endless (its len() is {length}, e.g. a repeated dataset), "
            "but every round evaluates one whole pass of it: give one pass "
            "(drop .repeat())"
        )
    if isinstance(data, Iterator):
        raise TypeError(
            f"{name} is a one-pass iterator (e.g. a generator), but it is read "
            "every round; pass a list of batches, a re-iterable dataset, or a "
            "function that returns a fresh iterator"
        )
    if callable(data):
        return IterableSource(lambda: iter(data()), restartable=True)
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | dict):
        return IterableSource(lambda: iter(data), restartable=True)
    raise TypeError(
        f"{name} must be a tempering.data.Split, an (inputs, targets) pair of "
        "arrays, a re-iterable of batches or a function returning an iterator; "
        f"got {type(data).__name__}"
    )


# A run's data, validated against the model and placed before anything compiles.


def _check_compatible(
    state: ReplicaState, inputs: Any, targets: Any, name: str, metrics_fn: Any
) -> Any:
    """Model, loss and metrics accept one example of ``name``; the model's output.

    Checked before compiling; the output is a ``jax.ShapeDtypeStruct`` of
    shape ``(1, ...)``.
    """
    out = check_model_takes(state, inputs, name, axis=0)
    y = jax.ShapeDtypeStruct((1, *np.shape(targets)[1:]), jnp.result_type(targets))
    classification = state.loss_fn is cross_entropy
    if classification:
        check_labels(targets, out, name)
    try:
        shapes = per_example_shapes(state, out, y, metrics_fn)
    except Exception as error:  # noqa: BLE001 - re-raised with the fix
        raise ValueError(
            f"{name}: loss_fn or metrics_fn cannot take model outputs {out.shape[1:]} "
            f"with targets {y.shape[1:]} per example ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})"
        ) from error
    check_per_example(shapes, name)
    return out


def metric_names(
    state: ReplicaState, source: ArraySource | IterableSource, metrics_fn: Any
) -> list[str]:
    """The names ``metrics_fn`` gives on ``source`` (traced on one example)."""
    if metrics_fn is None:
        return []
    if isinstance(source, ArraySource):
        x, y = source.inputs, source.targets
    else:
        x, y = _first_batch(source, "the evaluation data")
    out = check_model_takes(state, x, "the evaluation data", axis=0)
    target = jax.ShapeDtypeStruct((1, *np.shape(y)[1:]), jnp.result_type(y))
    return list(jax.eval_shape(metrics_fn, out, target))


def _first_batch(source: IterableSource, name: str) -> tuple[np.ndarray, np.ndarray]:
    for element in source.make_iterator():
        return batch_pair(element, name)
    raise ValueError(f"{name} yielded no batches")


def _eval_source(source: Any, name: str, state: ReplicaState, metrics_fn: Any):
    """An :func:`as_eval_source`, checked against the model and placed.

    An iterable's first batch is checked against the model here; every batch
    is checked like it when read (:func:`_checked_batches`).
    """
    if isinstance(source, ArraySource):
        _check_finite(source, name)
        _check_compatible(state, *source, name, metrics_fn)
        return _on_devices(source, state)
    x, y = _first_batch(source, name)
    _check_examples(x, y, f"{name}'s first batch", 0)
    out = _check_compatible(state, x, y, name, metrics_fn)
    classes = out.shape[-1] if state.loss_fn is cross_entropy else None
    return _checked_batches(source, BatchSpec(_layout(x), _layout(y), classes), name)


def _checked_batches(
    source: IterableSource, spec: BatchSpec, name: str
) -> IterableSource:
    """``source`` whose batches raise a :class:`BatchError` unless they fit ``spec``.

    An evaluation batch may hold fewer examples than the first; nothing else
    may differ (NaN or inf, labels out of range, another shape per example).
    """

    def make_iterator() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for index, element in enumerate(source.make_iterator()):
            x, y = batch_pair(element, name)
            problem = batch_problem(x, y, spec, evaluated=True)
            if problem is not None:
                raise BatchError(
                    f"{name} batch {index} (counting from 0) is refused before it is "
                    f"evaluated: {problem}",
                    index,
                )
            yield x, y

    return IterableSource(make_iterator, source.restartable)


def _check_finite(source: ArraySource, name: str) -> None:
    """In-memory data with NaN or inf would poison every replica: refused up front."""
    for part, array in (("inputs", source.inputs), ("targets", source.targets)):
        dtype = getattr(array, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        values = checkable(array)
        xp = np if isinstance(values, np.ndarray) else jnp
        bad = int(values.size - xp.count_nonzero(xp.isfinite(values)))
        if bad:
            raise ValueError(
                f"{name} {part} hold {bad} non-finite values (NaN or inf); every "
                "replica would train or be scored on them. Clean or drop them first"
            )


def _on_devices(source: ArraySource, state: ReplicaState) -> ArraySource:
    """In-memory data on the device, or on every device of a sharded state.

    Placed as :func:`tempering.sharding.replicate` does, without its check
    that every process holds the same arrays: :func:`prepare_sources` made
    it first.
    """
    mesh = sharding.mesh_of(state)
    if mesh is None:
        return ArraySource(jnp.asarray(source.inputs), jnp.asarray(source.targets))
    placed = sharding.put_global(
        (source.inputs, source.targets), NamedSharding(mesh, P())
    )
    return ArraySource(*placed)


def _check_stream_batch_size(
    config: RunConfig, size: tuple[int, ...], per_replica_sizes: bool
) -> None:
    """A ValueError when ``batch_size`` was set and the stream's batches differ.

    Streamed batches keep the size they have; ``batch_size`` is for in-memory
    data. Not given (None), or equal to the stream's batch size, it is fine.
    With a per-replica ``batch_size`` hyperparameter (``per_replica_sizes``)
    ``config.batch_size`` is the largest size a step needs: the stream's
    batches must hold at least that many examples.
    """
    if not size:
        return
    if per_replica_sizes:
        if size[0] < (config.batch_size or 0):
            raise ValueError(
                f"train_data is a stream whose batches hold {size[0]} examples, but "
                f"a step needs {config.batch_size} (the largest per-replica "
                "batch_size hyperparameter: of the state, burn_in_hyperparams, "
                "the upper bound of a batch_size pbt_config explores, or "
                "batch_size=): batch the stream to at least that many"
            )
        return
    if config.batch_size in (None, size[0]):
        return
    raise ValueError(
        f"batch_size={config.batch_size} is given, but train_data is a stream whose "
        f"batches hold {size[0]} examples: streamed batches keep their own size "
        "(batch_size only batches in-memory data). Drop batch_size, or batch the "
        f"stream to {config.batch_size} examples (e.g. grain's "
        f".batch({config.batch_size}, drop_remainder=True))"
    )


class RunSources(NamedTuple):
    """A call's data, validated and placed: what the segments and evaluations read."""

    train: ArraySource | BatchReader  # in-memory data on device, or a reader
    validation: ArraySource | IterableSource | None
    test: ArraySource | IterableSource | None
    sample: Any  # training inputs shaped like a batch (for the loop's "auto")


def prepare_sources(
    state: ReplicaState, data: RunData, config: RunConfig
) -> RunSources:
    """Validated sources, checked against the model before anything compiles.

    A training stream is wrapped but not read (``sample`` is None): its first
    batch is checked by :func:`check_first_batch`, which the driver calls once
    nothing else can refuse the call (a checkpoint of another run included),
    so a refused call has taken no batch from the caller's generator.
    """
    metrics_fn = config.metrics_fn
    if jax.process_count() > 1:  # before any check that one process could fail
        sharding.check_same_on_processes(
            {
                name: _in_memory(part, name)
                for name, part in (
                    ("train_data", data.train),
                    ("validation_data", data.validation),
                    ("test_data", data.test),
                )
            },  # fmt: skip
            "data",
        )
    validation = test = None
    if data.validation is not None:
        validation = as_eval_source(data.validation, "validation_data")
    if data.test is not None:
        test = as_eval_source(data.test, "test_data")
    given = as_train_source(data.train, "train_data", config.array_batch_size)
    train: ArraySource | BatchReader
    sample = None
    if isinstance(given, ArraySource):
        _check_finite(given, "train_data")
        _check_compatible(state, *given, "train_data", metrics_fn)
        batch = (config.array_batch_size, *np.shape(given.inputs)[1:])
        _check_augment(config.augment, batch, jnp.result_type(given.inputs))
        train = _on_devices(given, state)
        sample = train.inputs
    else:
        train = BatchReader(given, "train_data")
    if validation is not None:
        validation = _eval_source(validation, "validation_data", state, metrics_fn)
    if test is not None:
        test = _eval_source(test, "test_data", state, metrics_fn)
    if validation is not None and config.score_fn is not None:
        names = metric_names(state, validation, metrics_fn)
        _check_score_fn(config.score_fn, names, state.num_replicas)
    return RunSources(train, validation, test, sample)


def _check_score_fn(score_fn: Any, metric_names: list[str], num: int) -> None:
    """A ValueError unless ``score_fn`` gives one score per replica (traced).

    The driver calls it on the metrics' values, not traced: one that needs
    them (numpy, a Python branch on a value) is checked there, each round.
    """
    column: Any = jax.ShapeDtypeStruct((num,), jnp.float32)  # traced, not computed
    metrics = EvalMetrics(loss=column, metrics=dict.fromkeys(metric_names, column))
    try:
        scores = jax.eval_shape(lambda m: jnp.asarray(score_fn(m)), metrics)
    except jax.errors.JAXTypeError:  # needs concrete values: checked when called
        return
    except Exception as error:  # noqa: BLE001 - re-raised with the fix
        raise ValueError(
            f"score_fn fails on the validation metrics ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}): it takes a tempering.EvalMetrics "
            f"of ({num},) loss and metrics {metric_names} (from metrics_fn) and "
            "returns a score per replica, lower is better, e.g. "
            "score_fn=lambda m: -m.metrics['accuracy']"
        ) from error
    check_scores_shape(scores.shape, num)


def check_scores_shape(shape: tuple[int, ...], num: int) -> None:
    """A ValueError unless ``score_fn``'s scores have shape ``(num,)``."""
    if shape != (num,):
        raise ValueError(
            f"score_fn must return one score per replica, shape ({num},), got "
            f"shape {shape}"
        )


def _check_augment(augment: Any, batch: tuple[int, ...], dtype: Any) -> None:
    """A ValueError unless ``augment(key, inputs)`` keeps the batch's shape (traced)."""
    if augment is None:
        return
    inputs = jax.ShapeDtypeStruct(batch, dtype)
    key = jax.eval_shape(lambda: jax.random.key(0))
    try:
        out = jax.eval_shape(augment, key, inputs)
    except Exception as error:  # noqa: BLE001 - re-raised with the fix
        raise ValueError(
            f"augment fails on a batch of inputs {batch} {dtype} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}): it is "
            "called as augment(key, inputs) with a PRNG key and the batch's "
            "inputs (not the (inputs, targets) pair) and returns the inputs"
        ) from error
    if np.shape(out) != batch:
        raise ValueError(
            f"augment must return inputs of the shape it takes, {batch}, got "
            f"{np.shape(out)}"
        )


def check_first_batch(
    state: ReplicaState, sources: RunSources, config: RunConfig
) -> RunSources:
    """``sources`` with a training stream's first batch checked (peeked, not taken).

    Its shapes, dtypes and labels are checked against the model and become
    what every later batch must match; ``sample`` is its inputs.
    """
    train = sources.train
    if not isinstance(train, BatchReader) or sources.sample is not None:
        return sources
    x, y = first = train.peek()
    if not config.shared_batch:  # (M, B, ...) batches: check one replica's
        _check_per_replica_layout(x, y, state.num_replicas)
        x, y = x[0], y[0]
    _check_examples(x, y, "train_data's first batch", 0)
    per_replica_sizes = "batch_size" in state.hyperparams
    _check_stream_batch_size(config, np.shape(y)[:1], per_replica_sizes)
    out = _check_compatible(state, x, y, "train_data", config.metrics_fn)
    _check_augment(config.augment, np.shape(x), jnp.result_type(x))
    classes = out.shape[-1] if state.loss_fn is cross_entropy else None
    axis = 0 if config.shared_batch else 1
    train.expect(BatchSpec(_layout(first[0]), _layout(first[1]), classes, axis))
    return sources._replace(sample=x)


def _check_examples(x: Any, y: Any, what: str, axis: int) -> None:
    """A ValueError unless a batch pairs as many inputs as targets, at least one."""
    problem = examples_problem(x, y, axis)
    if problem is not None:
        raise ValueError(f"{what} is refused: {problem}")


def _check_per_replica_layout(x: Any, y: Any, num: int) -> None:
    """``shared_batch=False`` streams yield ``(M, B, ...)`` batches: one per replica."""
    if np.ndim(x) >= 2 and np.ndim(y) >= 2 and len(x) == len(y) == num:
        return
    raise ValueError(
        f"train_data's batches have inputs of shape {np.shape(x)} and targets of "
        f"shape {np.shape(y)}, but shared_batch=False takes a batch per replica, "
        f"shapes ({num}, batch, ...): stack one batch per replica, or keep "
        "shared_batch=True (every replica trains on the same batch)"
    )
