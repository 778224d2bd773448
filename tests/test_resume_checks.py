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


def test_a_refused_resume_leaves_the_callers_generator_where_it_was(
    blobs, tx, tmp_path
):
    """The first batch was peeked before the checkpoint was read: a refusal
    (no intact step, other arrays) had taken batch 0 from the generator, so
    starting afresh with it trained on another stream, silently."""
    import optax

    def generator():
        yield from batches_of(blobs) * 4

    with pytest.raises(CrashError):
        pt_on_list(blobs, tx, generator(), tmp_path, callback=crash_at(1))
    first = batches_of(blobs)[0][0]
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)
    fresh = generator()
    with pytest.raises(ValueError, match="holds other arrays than this call's"):
        pt_on_list(blobs, adam, fresh, tmp_path,
                   resume_allowing=("optimizer", "initial_state"))  # fmt: skip
    np.testing.assert_array_equal(next(fresh)[0], first)
    for meta in tmp_path.glob("*/meta/metadata"):
        meta.write_text("{broken")
    fresh = generator()
    with pytest.raises(ValueError, match="holds no intact checkpoint"):
        pt_on_list(blobs, tx, fresh, tmp_path)
    np.testing.assert_array_equal(next(fresh)[0], first)


def test_a_bad_batch_at_the_resumed_position_is_refused_by_its_index(
    blobs, tx, tmp_path
):
    """Batches read at the resumed position are checked as the run's were."""
    stream = batches_of(blobs) * 4
    with pytest.raises(CrashError):
        pt_on_list(blobs, tx, stream, tmp_path, callback=crash_at(1))
    changed = stream[:8] + [(x, y[:5]) for x, y in stream[8:]]
    with pytest.raises(ValueError, match=r"train_data batch 10 \(counting from 0\) "
                       "is refused before it trains: it holds 32 inputs but 5"):  # fmt: skip
        pt_on_list(blobs, tx, changed, tmp_path, resume_allowing=("train_data",))


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


# --- resume_allowing: other settings, never arrays that do not fit ----------------


def pt_run(blobs, tx, directory, model=None, ladder=LADDER, cast=None, **kwargs):
    """A PT run of 30 steps in rounds of 10 on the in-memory blobs."""
    (x, y), val = blobs
    state = tp.create_replicas(
        jax.random.key(0), model or TinyMLP(), tx, x[:2], ladder=ladder
    )
    if cast is not None:
        state = state.replace(params=jax.tree.map(cast, state.params))
    settings = dict(
        train_data=(x, y), validation_data=val, num_steps=30, exchange_interval=10,
        burn_in=0, batch_size=32, checkpoint_dir=directory,
    )  # fmt: skip
    return tp.pt_train(state, ladder, jax.random.key(1), **{**settings, **kwargs})


@pytest.fixture
def crashed(blobs, tx, tmp_path):
    """A folder holding the checkpoint of a run stopped after its first round."""
    with pytest.raises(CrashError):
        pt_run(blobs, tx, tmp_path, c=0.1, callback=crash_at(1))
    return tmp_path


def test_another_width_allowed_is_refused_naming_the_arrays(blobs, tx, crashed):
    """Before, a Flax shape error said the model could not take its inputs."""
    with pytest.raises(ValueError) as error:
        pt_run(blobs, tx, crashed, model=TinyMLP(features=8), c=0.1,
               resume_allowing=("model", "initial_state"))  # fmt: skip
    message, kernel = str(error.value), "['carry'][0].params['Dense_0']['kernel']"
    assert (
        f"{kernel} is saved as float32[2, 5, 16], this call's is float32[2, 5, 8]"
        in (message)
    )
    assert "resume_allowing=('model', 'initial_state')" in message


def test_another_dtype_allowed_is_refused(blobs, tx, crashed):
    """Before, bfloat16 weights silently came back as float32."""
    import jax.numpy as jnp

    with pytest.raises(
        ValueError, match=r"saved as float32\[2, 16\], this call's is bfloat16\[2, 16\]"
    ):
        pt_run(blobs, tx, crashed, cast=lambda a: a.astype(jnp.bfloat16), c=0.1,
               resume_allowing=("initial_state",))  # fmt: skip


def test_another_optimizer_allowed_is_refused_naming_the_paths(blobs, crashed):
    """Before: 'made by another version of tempering?'."""
    import optax

    adam = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)
    with pytest.raises(ValueError) as error:
        pt_run(blobs, adam, crashed, c=0.1,
               resume_allowing=("optimizer", "initial_state"))  # fmt: skip
    message = str(error.value)
    assert "only in the checkpoint: ['carry'][0].opt_state" in message
    assert "only in this call: " in message and "another version" not in message


def test_metrics_of_other_names_allowed_are_refused_before_a_round(blobs, tx, crashed):
    """Before, the call trained a round, then failed with a pytree error."""
    import jax.numpy as jnp

    def error_rate(outputs, targets):
        return {"error": (jnp.argmax(outputs, -1) != targets).astype(jnp.float32)}

    def accuracy(outputs, targets):  # the default's name, computed anew
        return {"accuracy": (jnp.argmax(outputs, -1) == targets).astype(jnp.float32)}

    rounds_seen = []
    with pytest.raises(ValueError, match=r"metrics \['accuracy'\].*metrics_fn gives"):
        pt_run(blobs, tx, crashed, c=0.1, metrics_fn=error_rate,
               resume_allowing=("metrics_fn",), callback=rounds_seen.append)  # fmt: skip
    assert rounds_seen == []
    pt_run(blobs, tx, crashed, c=0.1, metrics_fn=accuracy,
           resume_allowing=("metrics_fn",), callback=rounds_seen.append)  # fmt: skip
    assert [r.round for r in rounds_seen] == [1, 2]  # the same names resume


def test_a_move_state_the_move_refuses_is_not_resumed(blobs, tx, tmp_path):
    """Before, an adapted ladder of other ends resumed into the call's move."""
    with pytest.raises(CrashError):
        pt_run(blobs, tx, tmp_path, c="auto", callback=crash_at(1))
    other_ends = tp.make_ladder(learning_rate=[0.01, 0.1])
    with pytest.raises(ValueError, match="move state does not fit.*other ends"):
        pt_run(blobs, tx, tmp_path, ladder=other_ends, c="auto",
               resume_allowing=("move", "initial_move_state", "initial_state"))  # fmt: skip


def test_a_move_whose_records_differ_allowed_is_refused_before_a_round(
    blobs, tx, tmp_path
):
    """Before, the call trained a round, then failed writing its record."""
    import jax.numpy as jnp

    def info_move(size):
        def move(key, state, scores, round_index):
            return state, jnp.zeros(size)

        return move

    (x, y), val = blobs
    state = tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:2], ladder=LADDER)

    def run(size, **kwargs):
        config = tp.RunConfig(num_steps=30, interval=10, batch_size=32,
                              checkpoint_dir=tmp_path, **kwargs)  # fmt: skip
        data = tp.RunData((x, y), validation=val)
        return tp.train(state, jax.random.key(1), info_move(size), data, config)

    with pytest.raises(CrashError):
        run(3, callback=crash_at(1))
    rounds_seen = []
    with pytest.raises(ValueError, match=r"shape \(3,\) per round.*records \(4,\)"):
        run(4, resume_allowing=("move",), callback=rounds_seen.append)
    assert rounds_seen == []
