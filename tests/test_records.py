"""tempering.records: one History for every driver, concatenated across calls."""

import re

import chex
import jax
import numpy as np
import pytest
from conftest import TinyMLP

import tempering as tp
from tempering import diagnostics as dg
from tempering.data import Dataset, Split

LADDER = tp.geometric_ladder("learning_rate", 0.02, 0.2, 4)


@pytest.fixture(scope="module")
def state(tx, blobs):
    (x, _), _ = blobs
    return tp.create_replicas(jax.random.key(0), TinyMLP(), tx, x[:4], ladder=LADDER)


def _pt(state, blobs, num_steps, move_state=None):
    train, val = blobs
    return tp.pt_train(
        state, LADDER, jax.random.key(1), train_data=train, validation_data=val,
        num_steps=num_steps, exchange_interval=5, burn_in=5, batch_size=32,
        adapt_rounds=2, move_state=move_state,
    )  # fmt: skip


def test_continued_calls_concatenate_to_the_one_call(state, blobs):
    whole = _pt(state, blobs, 40)
    first = _pt(state, blobs, 20)
    second = _pt(first.state, blobs, 20, move_state=first.move_state)
    joined = tp.History.concatenate([first.history, second.history])
    chex.assert_trees_all_equal(joined, whole.history)  # every field, bit for bit
    assert (joined.first_step, joined.num_steps, joined.burn_in) == (0, 40, 5)
    with pytest.raises(ValueError, match="consecutive calls of one run"):
        tp.History.concatenate([first.history, first.history])
    with pytest.raises(ValueError, match="at least one History"):
        tp.History.concatenate([])


def test_pt_and_pbt_histories_are_one_type_reading_their_move_info(state, blobs):
    train, val = blobs
    pt = _pt(state, blobs, 20).history
    config = tp.pbt_config({"learning_rate": tp.Prior(0.01, 0.2, log=True)})
    pbt = tp.pbt_train(
        state, jax.random.key(2), config=config, train_data=train,
        validation_data=val, num_steps=20, ready_interval=5, batch_size=32,
    ).history  # fmt: skip
    assert type(pt) is type(pbt) is tp.History
    np.testing.assert_array_equal(pt.accepted, pt.move.accepted)
    np.testing.assert_array_equal(pbt.parent, pbt.move.parent)
    np.testing.assert_array_equal(pt.val_loss, pt.validation.loss)
    assert np.isnan(pt.test_loss).all() and pt.test_metrics == {}
    with pytest.raises(AttributeError, match=r"History has no 'parent'.*'accepted'"):
        pt.parent  # noqa: B018
    # the exchange diagnostics name the fix (before: History has no 'proposed')
    for diagnostic in (dg.acceptance_rate, dg.acceptance_over_time, dg.c_over_time):
        with pytest.raises(ValueError, match="need an exchange's history .pt_train"):
            diagnostic(pbt)


def test_a_historys_properties_keep_their_own_messages(state, blobs):
    """Before, __getattr__ replaced them with 'History has no ...'."""
    history = _pt(state, blobs, 20).history
    with pytest.raises(AttributeError, match="this run had no validation data"):
        history._replace(validation=None).val_loss  # noqa: B018
    no_accuracy = history._replace(validation=history.validation._replace(metrics={}))
    with pytest.raises(AttributeError, match="no accuracy in val_metrics"):
        no_accuracy.val_accuracy  # noqa: B018


def test_a_zero_round_history_without_validation_keeps_its_test_metrics(state, blobs):
    """The names came from the final validation, which such a call has not."""
    train, test = blobs
    data = tp.RunData(train, None, test)

    def call(start, num_steps):
        config = tp.RunConfig(num_steps=num_steps, interval=5, burn_in=4,
                              batch_size=32, progress=False)  # fmt: skip
        return tp.train(start, jax.random.key(1), tp.identity_move(), data, config)

    first = call(state, 3)  # within the burn-in: no round
    chex.assert_shape(first.history.test_accuracy, (0, 4))
    second = call(first.state, 11)
    whole = call(state, 14)
    joined = tp.History.concatenate([first.history, second.history])
    chex.assert_trees_all_equal(joined.test, whole.history.test)


def test_a_result_prints_in_a_few_lines(pt_run):
    """A notebook cell ending with pt_train(...) printed 1,161 lines (every
    replica's weights and every round's records)."""
    _, result = pt_run
    state, history = repr(result.state), repr(result.history)
    assert state.startswith("ReplicaState(4 replicas of MLP (linen), ")
    assert "step=60, hyperparams: dropout_rate=0, learning_rate=0.01..0.5, " in state
    assert history == (
        "History(10 rounds x 4 replicas, steps 15..60, move=ExchangeMoveInfo("
        "proposed, accepted, acceptance_prob, log_ratio, c, temperatures), "
        "validation=['loss', 'accuracy'], test=None, "
        "hyperparams=['dropout_rate', 'learning_rate'], "
        "scheme='even_odd')"
    )
    assert state in repr(result) and history in repr(result)
    assert "\n" not in state + history
    seen = []
    jax.eval_shape(lambda s: seen.append(repr(s)) or s, result.state)  # traced
    assert seen == ["ReplicaState(model=MLP)"]


def test_summaries_and_datasets_print_in_a_few_lines(pt_run):
    """A PT result printed 4,467 characters for 8 replicas, 2,923 of them the
    move state's adaptation arrays; a loaded dataset 5,400 of raw arrays."""
    _, result = pt_run
    summary = repr(result.summary)
    assert summary.startswith("PTSummary(acceptance_rate=[")
    assert "move_state=ExchangeState(...)" in summary
    assert "log_ratios" not in summary and "\n" not in summary
    assert summary in repr(result)
    many = np.linspace(0.0, 1.0, 100)
    wide = result.summary._replace(
        final_val_loss=many, ladder=tp.geometric_ladder("learning_rate", 0.01, 1, 100)
    )
    # three arrays elided, and the move state
    assert repr(wide).count("...") == 4 and len(repr(wide)) < len(summary) + 250
    assert re.search(r", c=\d*\.\d+,", summary)  # a float (1.0, never an int's 1)
    final = tp.EvalMetrics(many, {"accuracy": many})
    run = tp.RunResult(result.state, result.history, final, many, np.zeros(4, bool),
                       move_state=result.summary.move_state)  # fmt: skip
    assert "move_state=ExchangeState(...)" in repr(run)
    assert repr(run).count("...") == 4 and "\n" not in repr(run)  # 3 and the state
    split = Split(np.zeros((3600, 40), np.float32), np.zeros(3600, np.int32))
    data = Dataset(split, split, split, 10, "mnist1d")
    assert repr(split) == "Split(inputs=(3600, 40) float32, labels=(3600,) int32)"
    assert len(repr(data)) < 300
