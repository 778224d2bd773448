"""What a resume checks beyond the fingerprint: the data read, the saved arrays."""

import jax
import numpy as np
import pytest
from conftest import CrashError, TinyMLP, crash_at, leaves_equal

import tempering as tp
from tempering import resume
from tempering.sources import BatchReader, as_train_source

LADDER = tp.make_ladder(learning_rate=[0.02, 0.1])


def batches_of(blobs, size=32):
    """One pass of the training blobs as a list of 8 batches."""
    (x, y), _ = blobs
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def pt_on_list(blobs, tx, train_data, directory, **kwargs):
    """A PT run of 30 steps in rounds of 10, on a list of batches."""
    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tx, blobs[0][0][:2], ladder=LADDER
    )
    settings = dict(
        train_data=train_data, validation_data=blobs[1], num_steps=30,
        exchange_interval=10, burn_in=0, c=0.1, checkpoint_dir=directory,
    )  # fmt: skip
    return tp.pt_train(state, LADDER, jax.random.key(1), **{**settings, **kwargs})


# --- a re-iterable's elements before the saved position --------------------------


def test_a_list_changed_before_the_saved_position_is_refused(blobs, tx, tmp_path):
    """Before, only the batch at the saved position was compared: a list whose
    earlier batches changed resumed silently on other data."""
    batches = batches_of(blobs)
    with pytest.raises(CrashError):  # saved at step 20: 4 elements into pass 3
        pt_on_list(blobs, tx, batches, tmp_path, callback=crash_at(2))
    changed = list(batches)
    changed[1] = (batches[1][0] + 1.0, batches[1][1])  # read before the position
    with pytest.raises(ValueError, match=r"4 elements .*batch 20\).*train_data"):
        pt_on_list(blobs, tx, changed, tmp_path)
    rounds_seen = []
    pt_on_list(
        blobs, tx, changed, tmp_path, resume_allowing=("train_data",),
        callback=lambda r: rounds_seen.append(r.round),
    )  # fmt: skip
    assert rounds_seen == [2]  # resumed anyway, as asked


def test_the_elements_of_the_pass_are_compared_unless_absent(blobs):
    batches = batches_of(blobs)
    reader = BatchReader(as_train_source(batches, "train_data", 32), "train_data")
    reader.take(3)
    saved = reader.position()
    same = BatchReader(as_train_source(list(batches), "train_data", 32), "train_data")
    resume._continue_stream(saved, same, ())  # the same batches: no complaint
    assert leaves_equal(same.take(2), reader.take(2))
    changed = [(batches[0][0][::-1], batches[0][1][::-1]), *batches[1:]]

    def resumed(position, allowed=()):
        reader = BatchReader(as_train_source(changed, "train_data", 32), "train_data")
        resume._continue_stream(position, reader, allowed)
        return reader

    with pytest.raises(ValueError, match="3 elements .*differ in: train_data"):
        resumed(saved)
    resumed(saved, ("train_data",))  # allowed
    older = {k: v for k, v in saved.items() if k != "pass_crc"}
    assert np.array_equal(resumed(older).take(1)[0][0], batches[3][0])  # unchecked
