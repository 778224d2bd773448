"""Data sources: streams checked batch by batch, and resumed where they were."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    CrashError,
    TinyMLP,
    crash_at,
    leaves_equal,
    refuse_unpickling,
)

import tempering as tp
from tempering.batches import batch_crc
from tempering.sources import (
    ArraySource,
    BatchError,
    BatchReader,
    IterableSource,
    as_eval_source,
    as_train_source,
)

LADDER = tp.make_ladder(learning_rate=[0.02, 0.05, 0.1, 0.2])

grain = pytest.importorskip("grain")


@pytest.fixture(scope="module")
def state(tx, blobs):
    (x, _), _ = blobs
    return tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LADDER)


def history_equal(a, b):
    return leaves_equal(
        (a.step, a.train_loss, a.val_loss, a.rungs, a.hyperparams),
        (b.step, b.train_loss, b.val_loss, b.rungs, b.hyperparams),
    )


def pt(state, blobs, train_data, **kwargs):
    settings = dict(
        train_data=train_data, validation_data=blobs[1], num_steps=40,
        exchange_interval=10, burn_in=0, c=0.1, batch_size=32,
    )  # fmt: skip
    settings.update(kwargs)
    return tp.pt_train(state, LADDER, jax.random.key(1), **settings)


def stream(x, y, bad_at=None, change=None):
    """Batches of 32 in a fixed cyclic order; ``change`` spoils batch ``bad_at``."""
    index = 0
    while True:
        for i in range(0, len(y) - 31, 32):
            batch = (x[i : i + 32], y[i : i + 32])
            yield change(*batch) if index == bad_at else batch
            index += 1


# --- resume where the stream was --------------------------------------------------


def grain_dataset(blobs):
    (x, y), _ = blobs
    records = [{"image": x[i], "label": y[i]} for i in range(len(y))]
    return grain.MapDataset.source(records).shuffle(seed=0).repeat().batch(32)


def grain_loader(blobs):
    (x, y), _ = blobs
    records = [{"image": x[i], "label": y[i]} for i in range(len(y))]
    sampler = grain.samplers.IndexSampler(
        num_records=len(records), shuffle=True, seed=0, num_epochs=None
    )
    loader = grain.DataLoader(
        data_source=records, sampler=sampler, worker_count=0,
        operations=[grain.transforms.Batch(32, drop_remainder=True)],
    )  # fmt: skip
    return iter(loader)  # its get_state() is bytes


def iter_dataset(blobs):
    # no read-ahead threads: the tests share two cores
    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return grain_dataset(blobs).to_iter_dataset(options)


STREAMS = {
    "iter_dataset": iter_dataset,  # re-iterable
    "dataset_iterator": lambda blobs: iter(iter_dataset(blobs)),
    "data_loader": grain_loader,
}


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_a_grain_stream_resumes_bit_for_bit(state, blobs, tmp_path, kind, monkeypatch):
    make = STREAMS[kind]
    reference = pt(state, blobs, make(blobs))
    with pytest.raises(CrashError):
        pt(state, blobs, make(blobs), checkpoint_dir=tmp_path, callback=crash_at(2))
    refuse_unpickling(monkeypatch)  # nothing a resume loads is unpickled
    rounds_seen = []
    resumed = pt(
        state, blobs, make(blobs), checkpoint_dir=tmp_path,
        callback=lambda r: rounds_seen.append(r.round),
    )  # fmt: skip
    assert rounds_seen[0] == 2  # resumed after round 1, from a fresh stream
    assert leaves_equal(resumed.state.params, reference.state.params)
    assert leaves_equal(resumed.state.opt_state, reference.state.opt_state)
    assert history_equal(resumed.history, reference.history)


def test_the_saved_position_ignores_a_peeked_batch(blobs):
    dataset = iter_dataset(blobs)
    reader = BatchReader(as_train_source(dataset, "train_data", 32), "train_data")
    reader.peek()  # read ahead, not taken
    start = reader.position()
    assert start["batches"] == 0
    taken = reader.take(3)
    again = BatchReader(as_train_source(dataset, "train_data", 32), "train_data")
    again.take(5)
    again.set_position(start)
    assert leaves_equal(again.take(3), taken)
    middle = reader.position()
    assert middle["batches"] == 3
    assert leaves_equal(again.take(2), reader.take(2))
    assert again.position() == reader.position() != middle


def test_a_generator_has_no_position(blobs):
    (x, y), _ = blobs
    reader = BatchReader(as_train_source(stream(x, y), "train_data", 32), "train_data")
    reader.peek()
    # a checkpointed run asks for it at every round: one warning says why not
    with pytest.warns(RuntimeWarning, match="one-pass iterator .* cannot be rewound"):
        assert reader.position() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reader.position() is None
    reader.set_position(None)  # reads on from wherever it is
    with pytest.raises(ValueError, match="has no set_state"):
        reader.set_position({"batches": 2, "state": {"json": {}}})


def list_of_batches(x, y, size=48):
    """One pass as a list; of 256 examples, the short last batch (dropped)."""
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


class Reshuffled:
    """A re-iterable whose every pass is another order (as tf.data reshuffles).

    Pass p (from 1) rotates the full batches by p; the short one stays last.
    """

    def __init__(self, batches):
        self.full, self.short, self.passes = batches[:-1], batches[-1:], 0

    def __iter__(self):
        self.passes += 1
        turn = self.passes % len(self.full)
        return iter(self.full[turn:] + self.full[:turn] + self.short)


def test_a_list_of_batches_saves_its_place_in_the_pass(state, blobs):
    (x, y), _ = blobs
    batches = list_of_batches(x, y)
    reader = BatchReader(as_train_source(batches, "train_data", 48), "train_data")
    reader.expect(tp.sources.BatchSpec(((48, 5), x.dtype), ((48,), y.dtype), 3))
    reader.take(4)
    reader.peek()  # read ahead, not taken: not part of the position
    position = reader.position()
    assert {k: position[k] for k in ("batches", "skip")} == {"batches": 4, "skip": 4}
    expected = 0  # the CRC of the elements read in the pass: a resume compares it
    for batch in batches[:4]:
        expected = batch_crc(batch, expected)
    assert position["pass_crc"] == expected
    with pytest.warns(RuntimeWarning, match="batch 5 .* is dropped"):
        reader.take(3)  # batch 4, then the short batch 5 dropped, a new pass
    saved = reader.position()
    assert {k: saved[k] for k in ("batches", "skip")} == {"batches": 8, "skip": 2}
    again = BatchReader(as_train_source(batches, "train_data", 48), "train_data")
    again.expect(reader._spec)
    again.take(1)
    again.set_position(saved)
    assert again.batches_read == 8
    with pytest.warns(RuntimeWarning, match="is dropped"):
        assert leaves_equal(again.take(9), reader.take(9))
    assert again.position() == reader.position()
    with pytest.raises(ValueError, match="this call's is a one-pass iterator"):
        BatchReader(
            as_train_source(iter(batches), "train_data", 48), "train_data"
        ).set_position(saved)


@pytest.mark.filterwarnings("ignore:train_data batch")
@pytest.mark.parametrize("size", [48, 40])  # saved at a pass's end; inside one
def test_a_list_of_batches_resumes_bit_for_bit(state, blobs, tmp_path, size):
    """Before, a re-iterable without get_state resumed from its first batch."""
    (x, y), _ = blobs
    batches = list_of_batches(x, y, size)
    reference = pt(state, blobs, batches, batch_size=size)
    with pytest.raises(CrashError):
        pt(state, blobs, batches, batch_size=size, checkpoint_dir=tmp_path,
           callback=crash_at(2))  # fmt: skip
    rounds_seen = []
    resumed = pt(
        state, blobs, list_of_batches(x, y, size), batch_size=size,
        checkpoint_dir=tmp_path, callback=lambda r: rounds_seen.append(r.round),
    )  # fmt: skip
    assert rounds_seen == [2, 3]  # from the saved round, 20 batches trained
    assert leaves_equal(resumed.state.params, reference.state.params)
    assert leaves_equal(resumed.state.opt_state, reference.state.opt_state)
    assert history_equal(resumed.history, reference.history)


@pytest.mark.filterwarnings("ignore:train_data batch")
def test_a_re_iterable_reshuffled_each_pass_is_refused_on_resume(
    state, blobs, tmp_path
):
    (x, y), _ = blobs
    with pytest.raises(CrashError):  # saved 2 batches into its fourth pass
        pt(state, blobs, Reshuffled(list_of_batches(x, y, 40)), batch_size=40,
           checkpoint_dir=tmp_path, callback=crash_at(2))  # fmt: skip
    # 20 trained and 3 short ones dropped: element 23 of the stream
    with pytest.raises(ValueError, match=r"batch 23\).*differ in: train_data"):
        pt(state, blobs, Reshuffled(list_of_batches(x, y, 40)), batch_size=40,
           checkpoint_dir=tmp_path)  # fmt: skip


def test_a_continuing_call_warns_that_a_re_iterable_starts_again(state, blobs):
    """A list of batches restarts in every call: a split run differed from one
    call silently, where the docs said runs continue across calls exactly."""
    import warnings

    (x, y), _ = blobs
    batches = list_of_batches(x, y, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the first call: nothing to say
        first = pt(state, blobs, batches, num_steps=30)
    with pytest.warns(UserWarning, match="at step 30 but not its stream"):
        pt(first.state, blobs, batches, num_steps=10)
    shared = stream(x, y)
    first = pt(state, blobs, shared, num_steps=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one iterator, and arrays, continue
        pt(first.state, blobs, shared, num_steps=10)
        pt(first.state, blobs, blobs[0], num_steps=10)


# --- every batch checked before it trains ---------------------------------------


@pytest.fixture(scope="module")
def after_two_rounds(state, blobs):
    (x, y), _ = blobs
    return pt(state, blobs, stream(x, y), num_steps=20)


def nan_inputs(x, y):
    x = np.array(x, copy=True)
    x[3, 1] = np.nan
    return x, y


BAD_BATCHES = {
    "label_99": (lambda x, y: (x, np.full_like(y, 99)), r"labels must lie in \[0, 3\)"),
    "label_-1": (lambda x, y: (x, np.where(y == 0, -1, y)), r"got values in \[-1, 2\]"),
    "float_labels": (
        lambda x, y: (x, y.astype(np.float32)),
        r"labels must be integers \(class indices\).*got float32",
    ),
    "one_hot_float": (
        lambda x, y: (x, np.eye(3, dtype=np.float32)[y]),
        r"integers \(class indices\).*one-hot or soft labels pass loss_fn=",
    ),
    "one_hot_int": (
        lambda x, y: (x, np.eye(3, dtype=y.dtype)[y]),
        r"labels of shape \(32, 3\) look one-hot.*loss_fn=",
    ),
    "shape": (lambda x, y: (x[:16], y[:16]), r"inputs have shape \(16, 5\)"),
    "dtype": (lambda x, y: (x.astype(np.float64), y), r"dtype float64"),
    "nan": (nan_inputs, r"inputs hold 1 non-finite values"),
}


@pytest.mark.parametrize("bad", sorted(BAD_BATCHES))
def test_a_bad_batch_is_named_and_refused_before_it_trains(
    state, blobs, after_two_rounds, bad
):
    (x, y), _ = blobs
    change, match = BAD_BATCHES[bad]
    seen = []
    with pytest.raises(BatchError, match=rf"train_data batch 25 .*{match}") as caught:
        pt(state, blobs, stream(x, y, 25, change), callback=seen.append)
    error = caught.value
    assert isinstance(error, ValueError) and error.index == 25
    assert [r.round for r in seen] == [0, 1]  # batch 25 is in round 2's segment
    # It carries what trained: the state after the last round, bit for bit.
    assert int(error.state.step) == 20
    assert leaves_equal(error.state.params, after_two_rounds.state.params)
    assert history_equal(error.history, after_two_rounds.history)
    np.testing.assert_array_equal(
        error.move_state.rungs, after_two_rounds.move_state.rungs
    )


def test_nan_in_batch_200_of_a_generator_keeps_the_rounds_done(state, blobs):
    (x, y), _ = blobs
    kwargs = dict(num_steps=250, exchange_interval=50)
    with pytest.raises(BatchError, match="train_data batch 200 .*non-finite") as caught:
        pt(state, blobs, stream(x, y, 200, nan_inputs), **kwargs)
    clean = pt(state, blobs, stream(x, y), **dict(kwargs, num_steps=200))
    error = caught.value
    assert int(error.state.step) == 200
    assert leaves_equal(error.state.params, clean.state.params)
    assert history_equal(error.history, clean.history)


class Rewindable:
    """A stream of :func:`stream`'s batches that can save its position (JSON)."""

    def __init__(self, x, y, bad_at=None, change=None):
        self.batches = (x, y, bad_at, change)
        self.set_state({"index": 0})

    def __iter__(self):
        return self

    def __next__(self):
        self.index += 1
        return next(self.stream)

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = state["index"]
        self.stream = stream(*self.batches)
        for _ in range(self.index):
            next(self.stream)


def test_a_bad_batch_checkpoints_the_last_finite_round_first(
    state, blobs, tmp_path, monkeypatch
):
    (x, y), _ = blobs
    with pytest.raises(BatchError):  # batch 25 is in round 2; no checkpoint was due
        pt(
            state, blobs, Rewindable(x, y, 25, nan_inputs), checkpoint_dir=tmp_path,
            checkpoint_every=100,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["20"]
    refuse_unpickling(monkeypatch)
    rounds_seen = []
    resumed = pt(
        state, blobs, Rewindable(x, y), checkpoint_dir=tmp_path,
        callback=lambda r: rounds_seen.append(r.round),
    )  # fmt: skip
    assert rounds_seen == [2, 3]  # from the saved round, the stream at batch 20
    reference = pt(state, blobs, Rewindable(x, y))
    assert leaves_equal(resumed.state.params, reference.state.params)
    assert history_equal(resumed.history, reference.history)


@pytest.mark.parametrize("stop", ["crash", "callback"])
def test_a_stream_of_other_batches_is_refused_on_resume(state, blobs, tmp_path, stop):
    """Streams are fingerprinted by kind; the batch at the saved position tells."""
    (x, y), _ = blobs
    if stop == "crash":  # resumes from the periodic checkpoint of round 1
        with pytest.raises(CrashError):
            pt(state, blobs, Rewindable(x, y), checkpoint_dir=tmp_path,
               callback=crash_at(2))  # fmt: skip
    else:  # a truthy callback stops after round 1: the call's last checkpoint
        pt(state, blobs, Rewindable(x, y), checkpoint_dir=tmp_path,
           callback=lambda r: r.round == 1)  # fmt: skip
    other = Rewindable(x[::-1].copy(), y[::-1].copy())
    with pytest.raises(ValueError, match=r"batch 20\).*differ in: train_data"):
        pt(state, blobs, other, checkpoint_dir=tmp_path)
    rounds_seen = []
    pt(
        state, blobs, Rewindable(x[::-1].copy(), y[::-1].copy()),
        checkpoint_dir=tmp_path, resume_allowing=("train_data",),
        callback=lambda r: rounds_seen.append(r.round),
    )  # fmt: skip
    assert rounds_seen == [2, 3]  # resumed anyway, as asked


def test_a_call_stopped_early_leaves_its_next_batch_in_the_stream(
    state, blobs, tmp_path
):
    """With checkpoint_dir, a call stopped by its callback took one batch more
    from the caller's iterator (fingerprinted for the resume, never trained):
    the next call given that iterator skipped it."""
    (x, y), _ = blobs
    ends = {}
    for folder in (None, tmp_path):
        stream_ = Rewindable(x, y)
        first = pt(state, blobs, stream_, checkpoint_dir=folder,
                   callback=lambda r: r.round == 1)  # fmt: skip
        ends[folder] = stream_.get_state()
        second = pt(
            first.state, blobs, stream_, num_steps=20, move_state=first.move_state
        )
        ends[folder, "params"] = second.state.params
    assert ends[None] == ends[tmp_path] == {"index": 20}
    assert leaves_equal(ends[None, "params"], ends[tmp_path, "params"])


# --- evaluation streams: every batch checked and chunked; reads after checks ------


@pytest.mark.parametrize(
    "spoil, match",
    [
        (lambda x, y: (x, y * 3), r"labels must lie in \[0, 3\)"),
        (nan_inputs, r"inputs hold 1 non-finite values .*is scored on"),
    ],
)
def test_a_bad_later_evaluation_batch_is_named(state, blobs, spoil, match):
    """Not a divergence of every replica, nor a silent inf: the batch, named."""
    _, (xv, yv) = blobs
    batches = [(xv[:16], yv[:16]), spoil(xv[16:32], yv[16:32])]
    for name in ("validation_data", "test_data"):
        with pytest.raises(
            BatchError, match=rf"{name} batch 1 \(counting from 0\) .*{match}"
        ):
            pt(state, blobs, blobs[0], **{name: batches}, num_steps=10)


def test_evaluation_batches_are_cut_to_eval_batch_size(state, blobs, monkeypatch):
    from tempering import loops

    _, (xv, yv) = blobs
    shapes = []
    add = loops._host_add_chunk

    def recording(state, totals, x, y, mask, **static):
        shapes.append(x.shape)
        return add(state, totals, x, y, mask, **static)

    monkeypatch.setattr(loops, "_host_add_chunk", recording)
    whole = tp.evaluate(state, xv, yv)
    one_batch = loops.run_evaluate(
        state, as_eval_source([(xv, yv)], "validation_data"), batch_size=20,
        metrics_fn=tp.state.default_metrics,
    )  # fmt: skip
    assert set(shapes) == {(20, *xv.shape[1:])} and len(shapes) == -(-len(yv) // 20)
    np.testing.assert_allclose(one_batch.loss, whole.loss, rtol=1e-5)
    np.testing.assert_allclose(
        one_batch.metrics["accuracy"], whole.metrics["accuracy"], rtol=1e-6
    )


def test_an_endless_evaluation_dataset_is_refused(blobs):
    endless = grain_dataset(blobs)  # repeat(): len() is sys.maxsize // 16
    with pytest.raises(ValueError, match=r"validation_data is endless .*drop \.repeat"):
        as_eval_source(endless, "validation_data")


def test_a_refused_call_takes_no_batch_from_the_training_generator(state, blobs):
    (x, y), _ = blobs
    batches = stream(x, y)
    with pytest.raises(TypeError, match="validation_data is a one-pass iterator"):
        pt(state, blobs, batches, validation_data=iter([blobs[1]]))
    first = next(batches)
    np.testing.assert_array_equal(first[0], x[:32])  # batch 0 is still there


def test_a_refused_resume_takes_no_batch_from_the_training_generator(
    state, blobs, tmp_path
):
    (x, y), _ = blobs
    with (
        pytest.raises(CrashError),
        pytest.warns(RuntimeWarning, match="train_data: it is a one-pass iterator"),
    ):
        pt(state, blobs, stream(x, y), checkpoint_dir=tmp_path, callback=crash_at(2))
    batches = stream(x, y)
    with pytest.raises(ValueError, match=r"other settings \(they differ in: move\)"):
        pt(state, blobs, batches, checkpoint_dir=tmp_path, c=0.2)
    np.testing.assert_array_equal(next(batches)[0], x[:32])  # batch 0 is still there


def test_a_stream_for_a_batch_size_ladder_holds_the_largest_size(tx, blobs):
    (x, y), val = blobs
    ladder = tp.make_ladder(batch_size=[8, 4])
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=ladder)

    def sized(size):
        return ((x[i : i + size], y[i : i + size]) for i in range(0, 256, size))

    settings = dict(validation_data=val, num_steps=4, exchange_interval=2, burn_in=0)
    result = tp.pt_train(
        state, ladder, jax.random.key(1), train_data=sized(16), **settings
    )  # fmt: skip (each replica: its first 8 or 4)
    assert np.isfinite(result.history.val_loss).all()
    with pytest.raises(
        ValueError, match=r"batches hold 4 examples, but a step needs 8"
    ):
        tp.pt_train(state, ladder, jax.random.key(1), train_data=sized(4), **settings)
    # the burn-in's batch_size counts too: its steps need 32 examples
    config = tp.RunConfig(
        num_steps=4, interval=2, burn_in_hyperparams={"batch_size": 32}
    )
    assert config.for_batch_sizes(np.array([8.0, 4.0])).batch_size == 32


def test_per_replica_stream_batches_need_one_batch_per_replica(state, blobs):
    (x, y), _ = blobs
    flat = ((x[i : i + 8], y[i : i + 8]) for i in range(0, 256, 8))
    with pytest.raises(
        ValueError, match=r"shared_batch=False takes a batch per replica"
    ):
        pt(state, blobs, flat, shared_batch=False)


def test_a_diverged_replica_is_never_accurate():
    outputs = jnp.asarray([[[0.1, 0.9, 0.0]] * 4, [[jnp.nan] * 3] * 4])
    metrics = jax.vmap(tp.state.default_metrics, (0, None))(
        outputs, jnp.asarray([1, 1, 0, 0])
    )
    np.testing.assert_array_equal(metrics["accuracy"], [[1, 1, 0, 0], [0, 0, 0, 0]])


def test_one_hot_labels_in_memory_say_they_must_be_class_indices(state, blobs):
    (x, y), val = blobs
    with pytest.raises(TypeError, match=r"class indices.*one-hot or soft labels"):
        pt(state, blobs, (x, np.eye(3, dtype=np.float32)[y]))
    with pytest.raises(ValueError, match=r"look one-hot"):
        pt(state, blobs, (x, np.eye(3, dtype=np.int32)[y]))


# --- data edges: a short last batch, batch_size with a stream, tfds without TF ---


def batches_of(x, y, size, stop=None):
    """A re-iterable (a list) of batches of ``size``; the last one may be short."""
    x, y = x[:stop], y[:stop]
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def test_a_short_last_batch_of_each_pass_is_dropped_with_one_warning(state, blobs):
    (x, y), _ = blobs
    short = batches_of(x, y, 32, stop=240)  # 7 batches of 32, then one of 16
    assert len(short[-1][1]) == 16
    with pytest.warns(RuntimeWarning) as caught:
        result = pt(state, blobs, short)  # 40 steps: almost 6 passes
    dropped = [w for w in caught if "is dropped" in str(w.message)]
    assert len(dropped) == 1, [str(w.message) for w in caught]  # warned once
    assert (
        "train_data batch 7 (counting from 0) has 16 examples, fewer than the "
        "first batch's 32, and ends a pass" in str(dropped[0].message)
    )
    # exactly the run on the full batches alone: the short ones never trained
    full = pt(state, blobs, short[:-1])
    assert leaves_equal(result.state.params, full.state.params)
    assert history_equal(result.history, full.history)


def test_a_short_batch_within_a_pass_is_refused_by_its_index(state, blobs):
    (x, y), _ = blobs
    batches = batches_of(x, y, 32, stop=224)
    batches.insert(3, (x[:16], y[:16]))  # not a pass's last: refused, named
    with pytest.raises(BatchError, match=r"train_data batch 3 .*shape \(16, 5\)"):
        pt(state, blobs, batches)


def test_a_grain_dataset_without_drop_remainder_trains(state, blobs):
    (x, y), _ = blobs
    records = [{"image": x[i], "label": y[i]} for i in range(240)]
    dataset = grain.MapDataset.source(records).batch(32)  # ... 32, 16 per pass
    with pytest.warns(RuntimeWarning, match=r"batch 7 .* 16 examples.*dropped"):
        result = pt(state, blobs, dataset, num_steps=20)
    exact = grain.MapDataset.source(records).batch(32, drop_remainder=True)
    reference = pt(state, blobs, exact, num_steps=20)
    assert leaves_equal(result.state.params, reference.state.params)


def test_the_reader_drops_short_last_batches_of_per_replica_batches(blobs):
    # unshared batches (M, B, ...): the examples' axis is 1
    from tempering.sources import BatchSpec

    (x, y), _ = blobs
    full = (np.stack([x[:8]] * 4), np.stack([y[:8]] * 4))
    short = (np.stack([x[:3]] * 4), np.stack([y[:3]] * 4))
    reader = BatchReader(as_train_source([full, full, short], "t", 8), "t")
    first = reader.peek()
    layouts = [(a.shape, a.dtype) for a in first]
    reader.expect(BatchSpec(*layouts, None, batch_axis=1))
    with pytest.warns(
        RuntimeWarning, match=r"t batch 2 .* 3 examples.* first batch's 8"
    ):
        taken = reader.take(5)  # batches 0, 1, 3, 4, 6: 2 and 5 are dropped
    assert [b[0].shape for b in taken] == [(4, 8, 5)] * 5
    assert reader.count == 7  # the stream's indices count the dropped batches


def test_an_evaluation_iterable_with_a_short_last_batch_is_evaluated_whole(
    state, blobs
):
    (x, y), (xv, yv) = blobs
    in_memory = pt(state, blobs, stream(x, y), num_steps=20)
    for validation in (
        batches_of(xv, yv, 24),  # 24, 24, 16
        grain.MapDataset.source([{"x": xv[i], "y": yv[i]} for i in range(64)]).batch(
            28
        ),  # 28, 28, 8
    ):
        result = pt(
            state, blobs, stream(x, y), num_steps=20, validation_data=validation
        )
        np.testing.assert_allclose(
            result.history.val_loss, in_memory.history.val_loss, rtol=1e-5
        )
        np.testing.assert_allclose(
            result.summary.final_val_loss, in_memory.summary.final_val_loss, rtol=1e-5
        )


def test_batch_size_with_a_stream_is_refused_before_anything_compiles(
    state, blobs, compiled
):
    from conftest import ENGINE_PROGRAMS

    (x, y), _ = blobs
    with pytest.raises(
        ValueError,
        match=r"batch_size=64 is given, but train_data is a stream whose batches "
        r"hold 32 examples: streamed batches keep their own size.*Drop batch_size",
    ):
        pt(state, blobs, stream(x, y), batch_size=64)
    engine = sorted(set(compiled) & ENGINE_PROGRAMS)
    assert not engine, f"compiled {engine} before raising"
    # 128 given explicitly is refused too: only None (not given) means "default"
    with pytest.raises(ValueError, match=r"batch_size=128 is given"):
        pt(state, blobs, stream(x, y), batch_size=128)
    # the stream's own size, or batch_size not given, is fine
    sized = pt(state, blobs, stream(x, y), num_steps=10, batch_size=32)
    default = pt(state, blobs, stream(x, y), num_steps=10, batch_size=None)
    assert leaves_equal(sized.state.params, default.state.params)


def test_tfds_data_source_and_grain_train_without_tensorflow():
    """The TensorFlow-free path the docs show (guides/engine.md)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import sys

    from tempering.zoo.models import MLP

    def normalise(example):
        return {
            "image": example["image"].astype(np.float32) / 255,
            "label": example["label"],
        }

    with tfds.testing.mock_data(num_examples=80):
        train = (
            grain.MapDataset.source(tfds.data_source("mnist", split="train"))
            .shuffle(seed=0)
            .map(normalise)
            .batch(16, drop_remainder=True)
        )
        test = grain.MapDataset.source(tfds.data_source("mnist", split="test"))
        test = test.map(normalise).batch(32)  # 32, 32, 16: the last one short
        ladder = tp.make_ladder(learning_rate=[0.01, 0.1])
        state = tp.create_replicas(
            jax.random.key(0), MLP(features=(8,)), tp.sgd(0.05),
            np.zeros((1, 28, 28, 1), np.float32), ladder=ladder,
        )  # fmt: skip
        result = tp.pt_train(
            state, ladder, jax.random.key(1), train_data=train,
            validation_data=test, num_steps=12, exchange_interval=4,
        )  # fmt: skip
    assert int(result.state.step) == 12
    assert np.isfinite(result.summary.final_val_loss).all()
    assert "tensorflow" not in sys.modules


# --- every batch pairs its inputs with as many targets -----------------------------


def test_unpaired_or_empty_batches_are_refused_naming_the_batch(state, blobs):
    (x, y), (xv, yv) = blobs
    with pytest.raises(ValueError, match=r"validation_data's first batch .*20 inputs"):
        pt(state, blobs, blobs[0], validation_data=[(xv[:20], yv[:10])])
    later = [(xv[:10], yv[:10]), (xv[10:20], yv[10:25])]
    with pytest.raises(BatchError, match=r"validation_data batch 1 .*10 inputs but"):
        pt(state, blobs, blobs[0], validation_data=later, num_steps=10)
    empty = [(xv[:10], yv[:10]), (xv[:0], yv[:0])]
    with pytest.raises(BatchError, match=r"validation_data batch 1 .*no examples"):
        pt(state, blobs, blobs[0], validation_data=empty, num_steps=10)
    for shared, batch in (
        (True, (x[:8], y[:4])),
        (False, (np.stack([x[:8]] * 4), np.stack([y[:0]] * 4))),
    ):
        with pytest.raises(ValueError, match=r"train_data's first batch is refused"):
            pt(state, blobs, iter([batch] * 50), shared_batch=shared)


class Bf16Net(nn.Module):
    """TinyMLP computing in bfloat16."""

    @nn.compact
    def __call__(self, x, *, train=False, dropout_rate=0.0):
        x = nn.tanh(nn.Dense(16, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)(x))
        return nn.Dense(3, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)(x)


def test_a_bf16_models_evaluation_loss_does_not_depend_on_the_chunk_size(tx, blobs):
    (x, y), _ = blobs
    bf16 = tp.create_replicas(jax.random.key(0), Bf16Net(), tx, x[:4], ladder=LADDER)
    losses = [
        np.asarray(tp.evaluate(bf16, x, y, batch_size=size).loss)
        for size in (1, len(y))
    ]
    np.testing.assert_allclose(losses[1], losses[0], rtol=5e-4)  # summed in float32


def test_inputs_that_are_not_numbers_are_a_short_type_error(state, blobs):
    (x, y), _ = blobs
    for inputs in (x.astype(object), x.astype(str)):
        with pytest.raises(TypeError, match=r"^train_data must be numeric arrays, got"):
            pt(state, blobs, (inputs, y))


def test_inputs_and_labels_as_python_lists_train_as_arrays(state, blobs):
    """A pair of lists was read as a stream of two batches: "a batch of
    train_data must be an (inputs, targets) pair ..., got list"."""
    (x, y), (xv, yv) = blobs
    as_lists = pt(state, blobs, (x.tolist(), y.tolist()), num_steps=20,
                  validation_data=(xv.tolist(), list(yv)))  # fmt: skip
    as_arrays = pt(state, blobs, (x, y), num_steps=20)
    assert history_equal(as_lists.history, as_arrays.history)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 64, 32)]
    assert isinstance(as_train_source(batches, "train_data", 32), IterableSource)


def test_a_stream_of_single_examples_is_told_to_batch(state, blobs):
    """An unbatched dataset (a tfds data_source) read as batches of its images'
    rows: "the model cannot take inputs of shape (5,)"-like errors."""
    (x, y), _ = blobs
    examples = [(x[i], y[i]) for i in range(64)]
    with pytest.raises(ValueError, match=r"targets have no example axis.*batch it"):
        pt(state, blobs, examples)


def test_an_evaluation_pass_that_does_not_end_warns(state, blobs, monkeypatch):
    """A `while True` validation generator hung the run without a word."""
    from tempering import loops

    monkeypatch.setattr(loops, "_LONG_PASS", 40)  # the blobs' 64: "long"
    (xv, yv) = blobs[1]

    def validation():
        return iter([(xv[:32], yv[:32]), (xv[32:], yv[32:])])

    with pytest.warns(UserWarning, match=r"validation_data has yielded 64 examples"):
        pt(state, blobs, blobs[0], validation_data=validation, num_steps=10)


def test_a_sample_input_without_its_batch_axis_is_named_in_the_error(tx, blobs):
    """The error said to shape the data like the sample, the wrong way round."""
    (x, _), _ = blobs
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[0], ladder=LADDER)
    with pytest.raises(ValueError, match=r"leading batch axis \(x\[:2\], not x\[0\]"):
        pt(state, blobs, blobs[0])


def test_the_data_checks_reduce_on_the_device_where_the_data_lives(monkeypatch):
    """Data on an accelerator was copied whole to the host at every call for
    the finiteness and label checks; there the checks take the jax array
    (``checkable``) and read back only their reductions."""
    from tempering import batches, sources

    labels = jnp.asarray([0, 2, 3])
    assert isinstance(batches.checkable(labels), np.ndarray)  # CPU: no copy
    monkeypatch.setattr(sources, "checkable", lambda array: array)  # as on a GPU
    problem = batches._label_problem(labels, 3, 1)
    assert problem == (ValueError, problem[1]) and "got values in [0, 3]" in problem[1]
    bad = ArraySource(jnp.asarray([[0.0], [jnp.nan]]), labels[:2])
    with pytest.raises(ValueError, match="inputs hold 1 non-finite values"):
        sources._check_finite(bad, "train_data")
    sources._check_finite(ArraySource(jnp.ones((2, 1)), labels[:2]), "train_data")


def test_a_stream_of_batches_of_lists_stays_a_stream(state, blobs):
    """Two batches as (inputs, labels) pairs of lists read as one in-memory
    pair of lists (their first leaf a number) and failed converting."""
    (xv, yv) = blobs[1]
    batches = [
        (xv[:32].tolist(), yv[:32].tolist()),
        (xv[32:].tolist(), yv[32:].tolist()),
    ]
    assert isinstance(as_eval_source(batches, "validation_data"), IterableSource)
    listed = pt(state, blobs, blobs[0], validation_data=batches, num_steps=10)
    arrays = pt(state, blobs, blobs[0], num_steps=10)
    np.testing.assert_allclose(listed.history.val_loss, arrays.history.val_loss,
                               rtol=1e-6)  # fmt: skip


def test_two_lists_of_two_items_are_refused_as_ambiguous():
    """Two batches of lists whose inputs and targets had one shape read as an
    in-memory pair: batch 1 became the inputs, batch 2 the targets."""
    batches = [([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]),
               ([0.5, 0.6, 0.7, 0.8], [5.0, 6.0, 7.0, 8.0])]  # fmt: skip
    with pytest.raises(ValueError, match=r"validation_data given as two lists of "
                       r"two items each reads two ways.*np\.asarray"):  # fmt: skip
        as_eval_source(batches, "validation_data")
