import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    NAN,
    PROPERTY_SETTINGS,
    Case,
    T,
    TinyMLP,
    V,
    bad_input_params,
    check_raises_before_compiling,
    hand_ladder,
    pt,
)
from hypothesis import given
from hypothesis import strategies as st

import tempering as tp
from tempering.hyperparams import LIMITS


def test_learning_rate_temperature_is_lr_and_sorted():
    ladder = tp.make_ladder(learning_rate=[0.04, 0.01, 0.02])
    np.testing.assert_allclose(ladder.temperatures, [0.01, 0.02, 0.04])
    np.testing.assert_allclose(ladder.values["learning_rate"], [0.01, 0.02, 0.04])
    np.testing.assert_allclose(ladder.betas, [100.0, 50.0, 25.0], rtol=1e-6)
    assert ladder.num_rungs == 3


def test_dropout_temperature_is_inverse_keep_probability():
    ladder = tp.make_ladder(dropout_rate=[0.5, 0.1], learning_rate=0.01)
    np.testing.assert_allclose(ladder.temperatures, [1 / 0.9, 1 / 0.5], rtol=1e-6)
    np.testing.assert_allclose(ladder.values["dropout_rate"], [0.1, 0.5])
    np.testing.assert_allclose(ladder.values["learning_rate"], [0.01, 0.01])


def test_explicit_temperatures_pair_with_the_rungs_as_given():
    # rung r gets temperatures[r]: the rungs are not re-sorted by them
    ladder = tp.make_ladder(
        learning_rate=[0.2, 0.3, 0.1],
        dropout_rate=[0.2, 0.1, 0.3],
        temperatures=[1, 2, 3],
    )
    np.testing.assert_allclose(ladder.temperatures, [1, 2, 3])
    np.testing.assert_allclose(
        ladder.values["learning_rate"], [0.2, 0.3, 0.1], rtol=1e-6
    )
    np.testing.assert_allclose(
        ladder.values["dropout_rate"], [0.2, 0.1, 0.3], rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"temperatures \[3.0, 1.0, 2.0\] are out"):
        tp.make_ladder(
            learning_rate=[0.1, 0.2, 0.3],
            dropout_rate=[0.3, 0.2, 0.1],
            temperatures=[3, 1, 2],
        )


def test_linear_and_geometric_constructors():
    lin = tp.linear_ladder("dropout_rate", 0.47, 0.55, 5, learning_rate=0.01)
    np.testing.assert_allclose(
        lin.values["dropout_rate"], np.linspace(0.47, 0.55, 5), rtol=1e-6
    )
    geo = tp.geometric_ladder("learning_rate", 0.001, 0.1, 3)
    np.testing.assert_allclose(
        geo.values["learning_rate"], [0.001, 0.01, 0.1], rtol=1e-5
    )
    assert np.all(np.diff(np.asarray(geo.temperatures)) > 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(learning_rate=[0.1]), "at least 2 rungs"),
        (dict(learning_rate=0.1), "at least 2 rungs"),
        (dict(learning_rate=[0.1, np.nan]), "non-finite"),
        (dict(learning_rate=[0.1, np.inf]), "non-finite"),
        (
            dict(learning_rate=[0.0, 0.1]),
            r"learning_rate in the ladder must lie in \(0,",
        ),
        (
            dict(learning_rate=[-0.1, 0.1]),
            r"learning_rate in the ladder must lie in \(0,",
        ),
        (
            dict(dropout_rate=[0.1, 1.0]),
            r"dropout_rate in the ladder must lie in \[0, 1\)",
        ),
        (
            dict(dropout_rate=[-0.1, 0.2]),
            r"dropout_rate in the ladder must lie in \[0, 1\)",
        ),
        (dict(learning_rate=[0.1, 0.2], dropout_rate=[0.1, 0.2, 0.3]), "mismatched"),
        (dict(learning_rate=[0.1, 0.2], temperatures=[1, 2, 3]), "mismatched"),
        (dict(learning_rate=[0.1, 0.1, 0.2]), "duplicate temperatures"),
        (dict(learning_rate=[0.1, 0.1 + 1e-9]), "distinct in float32"),
        (
            dict(learning_rate=[0.1, 0.2], temperatures=[1.0, 1.0]),
            "duplicate temperatures",
        ),
        (
            dict(learning_rate=[0.1, 0.2], temperatures=[0.0, 1.0]),
            "temperatures must be",
        ),
        (
            dict(learning_rate=[0.1, 0.2], weight_decay=[0.1, 0.2]),
            "temperatures is required",
        ),
        (dict(momentum=[0.1, 0.2]), "no default temperature for 'momentum'"),
        (
            dict(momentum=[0.1, 1.0], temperatures=[1, 2]),
            r"momentum in the ladder must lie in \[0, 1\)",
        ),
        (dict(weight_decay=[-0.1, 0.1], temperatures=[1, 2]), "weight_decay"),
        (dict(b1=[0.9, np.nan], temperatures=[1, 2]), "non-finite"),
        (dict(), "at least one hyperparameter"),
    ],
)
def test_invalid_ladders_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tp.make_ladder(**kwargs)


def test_any_hyperparameter_with_explicit_temperatures():
    # Names without a default temperature (weight decay, Adam's b1, a model
    # input, ...) are allowed once the temperatures are given.
    ladder = tp.make_ladder(
        weight_decay=[1e-4, 1e-3, 1e-2], learning_rate=0.1, temperatures=[1, 2, 3]
    )
    np.testing.assert_allclose(ladder.temperatures, [1, 2, 3])
    np.testing.assert_allclose(
        ladder.values["weight_decay"], [1e-4, 1e-3, 1e-2], rtol=1e-6
    )
    np.testing.assert_allclose(ladder.values["learning_rate"], 0.1)
    custom = tp.make_ladder(my_input=[5.0, -1.0], temperatures=[1, 2])
    np.testing.assert_allclose(custom.values["my_input"], [5.0, -1.0])
    geo = tp.geometric_ladder("weight_decay", 1e-4, 1e-2, 3, temperatures=[1, 2, 3])
    np.testing.assert_allclose(
        geo.values["weight_decay"], [1e-4, 1e-3, 1e-2], rtol=1e-5
    )
    assert set(tp.ladder.HYPERPARAMETERS) == {
        "learning_rate",
        "dropout_rate",
        "batch_size",
    }


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="num_rungs"):
        tp.linear_ladder("learning_rate", 0.1, 0.2, 1)
    with pytest.raises(ValueError, match="low, high > 0"):
        tp.geometric_ladder("learning_rate", 0.0, 0.2, 4)


@pytest.mark.parametrize(
    ("values", "temperatures", "match"),
    [
        ({"learning_rate": [0.1, 0.05, 0.01]}, [0.1, 0.05, 0.01], "increase strictly"),
        ({"learning_rate": [0.01, float("nan"), 0.1]}, [1.0, 2.0, 3.0], "non-finite"),
        ({"learning_rate": [-0.01, 0.05, 0.1]}, [1.0, 2.0, 3.0], "learning_rate"),
        ({"learning_rate": [0.01, 0.05]}, [1.0, 2.0, 3.0], "one value per rung"),
        ({"dropout_rate": [0.0, 0.5, 1.0]}, [1.0, 2.0, 3.0], "dropout_rate"),
        ({"learning_rate": [0.01, 0.05, 0.1]}, [1.0, float("inf"), 3.0], "finite"),
        ({"learning_rate": [0.01, 0.05, 0.1]}, [0.0, 1.0, 3.0], "> 0"),
    ],
)
def test_hand_built_ladders_are_checked(values, temperatures, match):
    """A Ladder built by hand (not make_ladder) is refused before anything runs."""
    from tempering.moves import exchange_move

    ladder = tp.Ladder(
        {k: jnp.asarray(v, jnp.float32) for k, v in values.items()},
        jnp.asarray(temperatures, jnp.float32),
    )
    with pytest.raises(ValueError, match=match):
        exchange_move(ladder)
    with pytest.raises(ValueError, match=match):
        tp.ladder.check_sound(ladder)


def test_authors_dropout_temperature_on_a_two_rung_ladder():
    # The authors' code: beta = p / (1 - p) for keep probability p = 1 - q.
    ladder = tp.make_ladder(dropout_rate=[0.5, 0.2], dropout_temperature="authors")
    keep = np.array([0.8, 0.5])  # coldest rung first (less dropout)
    np.testing.assert_allclose(ladder.betas, keep / (1 - keep), rtol=1e-6)
    np.testing.assert_allclose(ladder.temperatures, [0.25, 1.0], rtol=1e-6)
    np.testing.assert_allclose(ladder.values["dropout_rate"], [0.2, 0.5])
    assert ladder.dropout_temperature == "authors"
    assert "dropout_temperature='authors'" in repr(ladder)


def test_authors_rule_gives_the_papers_c_delta_beta():
    # DESIGN.md section 2: C * (beta_r - beta_{r+1}) is 77-101 on the CIFAR-10
    # ladder (C = 2000) and 380-1670 on the EMNIST one (C = 500).
    cifar = tp.linear_ladder(
        "dropout_rate", 0.47, 0.55, 8, dropout_temperature="authors"
    )
    gaps = 2000 * -np.diff(np.asarray(cifar.betas, np.float64))
    assert 76.5 < gaps.min() < 77.5 and 100.5 < gaps.max() < 101.5
    emnist = tp.geometric_ladder(
        "dropout_rate", 0.05, 0.12, 2, dropout_temperature="authors"
    )
    np.testing.assert_allclose(emnist.betas, [0.95 / 0.05, 0.88 / 0.12], rtol=1e-5)


def test_default_dropout_temperature_is_unchanged_and_recorded():
    rates = np.linspace(0.05, 0.12, 3)
    for ladder in (
        tp.make_ladder(dropout_rate=rates),
        tp.make_ladder(dropout_rate=rates, dropout_temperature="library"),
        tp.linear_ladder("dropout_rate", 0.05, 0.12, 3),
    ):
        np.testing.assert_array_equal(
            ladder.temperatures,
            jnp.asarray(1.0 / (1.0 - np.linspace(0.05, 0.12, 3)), jnp.float32),
        )
        assert ladder.dropout_temperature == "library"
        assert "dropout_temperature='library'" in repr(ladder)
    # no varying dropout, or explicit temperatures: no dropout rule to record
    assert tp.make_ladder(learning_rate=[0.1, 0.2]).dropout_temperature is None
    explicit = tp.make_ladder(dropout_rate=[0.1, 0.2], temperatures=[1.0, 5.0])
    assert explicit.dropout_temperature is None
    assert "dropout_temperature" not in repr(explicit)


def test_authors_rule_with_a_learning_rate_is_the_product():
    both = tp.make_ladder(
        learning_rate=[0.01, 0.02],
        dropout_rate=[0.1, 0.2],
        dropout_temperature="authors",
    )
    np.testing.assert_allclose(
        both.temperatures, [0.01 * 0.1 / 0.9, 0.02 * 0.2 / 0.8], rtol=1e-6
    )
    assert both.dropout_temperature == "authors"


def test_inverse_temperature_round_trips_both_rules():
    rates = np.array([0.05, 0.3, 0.6])
    for rule in tp.ladder.DROPOUT_TEMPERATURES:
        temps = tp.ladder.default_temperature(
            "dropout_rate", rates, dropout_temperature=rule
        )
        for back in (
            tp.ladder.inverse_temperature(
                "dropout_rate", temps, dropout_temperature=rule
            ),
            tp.ladder.inverse_temperature(
                "dropout_rate", jnp.asarray(temps), dropout_temperature=rule
            ),
        ):
            np.testing.assert_allclose(back, rates, rtol=1e-6)


def test_ladder_stays_a_pytree_of_arrays():
    import jax

    ladder = tp.make_ladder(dropout_rate=[0.2, 0.5], dropout_temperature="authors")
    assert len(jax.tree.leaves(ladder)) == 2
    betas = jax.jit(lambda lad: lad.betas)(ladder)
    np.testing.assert_allclose(betas, [4.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dropout_rate=[0.1, 0.2], dropout_temperature="paper"), "one of"),
        (
            dict(dropout_rate=[0.0, 0.2], dropout_temperature="authors"),
            r"beta = inf",
        ),
        (
            dict(
                dropout_rate=[0.1, 0.2],
                temperatures=[1, 2],
                dropout_temperature="authors",
            ),
            "not both",
        ),
    ],
)
def test_invalid_dropout_temperature_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tp.make_ladder(**kwargs)


def test_the_ladder_stores_its_rule_and_nothing_guesses_it():
    rates = jnp.asarray([0.1, 0.2, 0.4], jnp.float32)
    library = tp.make_ladder(dropout_rate=rates)
    assert library.rule == "library"
    assert tp.make_ladder(dropout_rate=rates, temperatures=[1, 2, 3]).rule is None
    # Built by hand: explicit unless it says otherwise, even when the
    # temperatures happen to follow a rule (no read-back).
    by_hand = tp.Ladder({"dropout_rate": rates}, library.temperatures)
    assert by_hand.rule is None and by_hand.dropout_temperature is None
    declared = tp.Ladder({"dropout_rate": rates}, library.temperatures, rule="library")
    tp.ladder.check_sound(declared)
    assert declared.dropout_temperature == "library"
    wrong = tp.Ladder({"dropout_rate": rates}, library.temperatures, rule="authors")
    with pytest.raises(ValueError, match="rule='authors' says the temperatures"):
        tp.ladder.check_sound(wrong)
    # The rule is static: part of the compiled program's key, not a traced leaf.
    assert len(jax.tree.leaves(library)) == 2  # the values and the temperatures
    assert jax.jit(lambda ladder: ladder.betas)(library).shape == (3,)


def test_a_respaced_product_ladder_has_explicit_temperatures():
    from tempering.adaptation import init_adaptation
    from tempering.moves import ExchangeState, exchange_move

    def start(move):  # the exchange's state before the first round
        return ExchangeState(jnp.arange(3), init_adaptation(move.ladder, 2, 1.0))

    both = tp.make_ladder(
        learning_rate=[0.01, 0.02, 0.04], dropout_rate=[0.1, 0.2, 0.3]
    )
    assert both.rule == "library"
    move = exchange_move(both, c="auto", adapt_rounds=2, adapt_ladder=True)
    assert move.current_ladder(start(move)).rule is None  # interpolated values
    lr = tp.geometric_ladder("learning_rate", 0.01, 0.1, 3)
    lr_move = exchange_move(lr, c="auto", adapt_rounds=2, adapt_ladder=True)
    assert lr_move.current_ladder(start(lr_move)).rule == "library"  # T = lr exactly


# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- ladders --------------------------------------------------------------
    Case("make-ladder-positional-list", lambda c: tp.make_ladder([0.1, 0.2]), T, r"values must map each hyperparameter to its values per rung", fixed=True),
    Case("ladder-geometric-low-string", lambda c: tp.geometric_ladder("learning_rate", "0.01", 0.1, 4), T, r"low must be a number, got '0.01'", fixed=True),
    Case("ladder-linear-high-list", lambda c: tp.linear_ladder("dropout_rate", 0.0, [0.5], 4), T, r"high must be a number", fixed=True),
    Case("ladder-empty", lambda c: tp.make_ladder(), V, r"at least one hyperparameter"),
    Case("ladder-one-rung", lambda c: tp.make_ladder(learning_rate=[0.1]), V, r"at least 2 rungs"),
    Case("ladder-scalar-only", lambda c: tp.make_ladder(learning_rate=0.1), V, r"at least 2 rungs"),
    Case("ladder-lr-negative", lambda c: tp.make_ladder(learning_rate=[-0.1, 0.1]), V, r"learning_rate.*\(0, "),
    Case("ladder-dropout-1", lambda c: tp.make_ladder(dropout_rate=[0.1, 1.0]), V, r"dropout_rate.*\[0, 1\)"),
    Case("ladder-nan", lambda c: tp.make_ladder(learning_rate=[0.1, NAN]), V, r"learning_rate.*non-finite"),
    Case("ladder-geometric-name-twice", lambda c: tp.geometric_ladder("learning_rate", 0.01, 0.1, 3, learning_rate=[0.5, 0.6, 0.7]), V, r"learning_rate is the ladder's spaced hyperparameter .*give learning_rate once", fixed=True),
    Case("ladder-name-twice", lambda c: tp.make_ladder({"learning_rate": [0.01, 0.02]}, learning_rate=[0.1, 0.2]), V, r"\['learning_rate'\] both in values and as keywords", fixed=True),
    Case("ladder-dropout-rounds-to-1", lambda c: tp.make_ladder(dropout_rate=[0.1, 0.99999999]), V, r"dropout_rate in the ladder, rounded to float32.*\[0, 1\)", fixed=True),
    Case("ladder-lr-rounds-to-0", lambda c: tp.make_ladder(learning_rate=[1e-50, 1e-3]), V, r"learning_rate in the ladder, rounded to float32", fixed=True),
    Case("ladder-duplicate-temperatures", lambda c: tp.make_ladder(weight_decay=[0.0, 1e-3], temperatures=[1.0, 1.0]), V, r"duplicate temperatures"),
    Case("ladder-nothing-varies", lambda c: tp.make_ladder(learning_rate=[0.1, 0.1]), V, r"temperatures is required when no hyperparameter varies"),
    Case("ladder-mismatched-lengths", lambda c: tp.make_ladder(learning_rate=[0.1, 0.2], dropout_rate=[0.1, 0.2, 0.3]), V, r"mismatched ladder lengths"),
    Case("ladder-2d", lambda c: tp.make_ladder(learning_rate=[[0.1, 0.2]]), V, r"learning_rate must be a scalar or 1-D"),
    Case("ladder-no-default-temperature", lambda c: tp.make_ladder(weight_decay=[0.0, 1e-3]), V, r"no default temperature.*temperatures="),
    Case("ladder-temperatures-negative", lambda c: tp.make_ladder(weight_decay=[0.0, 1e-3], temperatures=[1.0, -1.0]), V, r"temperatures must be finite and > 0"),
    Case("ladder-temperatures-length", lambda c: tp.make_ladder(learning_rate=[0.1, 0.2], temperatures=[1.0, 2.0, 3.0]), V, r"mismatched ladder lengths"),
    Case("ladder-strings", lambda c: tp.make_ladder(learning_rate=["a", "b"]), T, r"learning_rate.*numbers", fixed=True),
    Case("linear-num-rungs-1", lambda c: tp.linear_ladder("learning_rate", 0.1, 0.2, 1), V, r"num_rungs must be an int >= 2"),
    Case("linear-num-rungs-float", lambda c: tp.linear_ladder("learning_rate", 0.1, 0.2, 2.5), V, r"num_rungs must be an int >= 2"),
    Case("linear-name-not-str", lambda c: tp.linear_ladder(5, 0.1, 0.2, 4), T, r"name must be a hyperparameter name"),
    Case("linear-dropout-to-1", lambda c: tp.linear_ladder("dropout_rate", 0.0, 1.0, 4), V, r"dropout_rate.*\[0, 1\)"),
    Case("geometric-low-zero", lambda c: tp.geometric_ladder("learning_rate", 0.0, 0.1, 4), V, r"low, high > 0"),
    Case("geometric-high-negative", lambda c: tp.geometric_ladder("learning_rate", 0.1, -1.0, 4), V, r"low, high > 0"),
    Case("geometric-lr-huge", lambda c: tp.geometric_ladder("learning_rate", 0.01, 1e3, 4), V, r"learning_rate in the ladder must be at most 10", fixed=True),
    Case("ladder-temperatures-out-of-order", lambda c: tp.make_ladder(weight_decay=[1e-3, 1e-4], temperatures=[2.0, 1.0]), V, r"temperatures \[2.0, 1.0\] are out of order: rungs go coldest first", fixed=True),
    Case("ladder-temperatures-2d", lambda c: tp.make_ladder(weight_decay=[0.0, 1e-3], temperatures=[[1.0, 2.0]]), V, r"temperatures must be 1-D"),
    # --- hand-built Ladder (through exchange_move / pt_train) -----------------
    Case("hand-ladder-decreasing", lambda c: tp.exchange_move(hand_ladder([0.4, 0.3, 0.2, 0.1])), V, r"temperatures must increase strictly"),
    Case("hand-ladder-nan", lambda c: tp.exchange_move(hand_ladder([0.1, NAN, 0.3, 0.4])), V, r"temperatures must be finite"),
    Case("hand-ladder-negative", lambda c: tp.exchange_move(hand_ladder([-0.1, 0.2, 0.3, 0.4])), V, r"temperatures must be finite and > 0"),
    Case("hand-ladder-fewer-values", lambda c: tp.exchange_move(hand_ladder([0.1, 0.2, 0.3, 0.4], lr=[0.1, 0.2])), V, r"values\['learning_rate'\] must have one value per rung"),
    Case("hand-ladder-lr-negative-values", lambda c: tp.exchange_move(hand_ladder([0.1, 0.2, 0.3, 0.4], lr=[-0.1, 0.2, 0.3, 0.4])), V, r"learning_rate in the ladder"),
    Case("hand-ladder-one-rung", lambda c: tp.exchange_move(hand_ladder([0.1])), V, r"temperatures must be 1-D.*>= 2"),
    Case("hand-ladder-pt-decreasing", lambda c: pt(c, ladder=hand_ladder([0.4, 0.3, 0.2, 0.1])), V, r"temperatures must increase strictly"),
    Case("hand-ladder-pt-fewer-values", lambda c: pt(c, ladder=hand_ladder([0.1, 0.2, 0.3, 0.4], lr=[0.1, 0.2, 0.3])), V, r"one value per rung"),
    Case("hand-ladder-lists-get-to-c", lambda c: pt(c, ladder=tp.Ladder({"learning_rate": [0.1, 0.2, 0.3, 0.4]}, [0.1, 0.2, 0.3, 0.4]), c=0.0), V, r"c must be finite and > 0", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


def test_a_hand_built_ladder_of_lists_is_checked_then_used(ctx):
    lists = tp.Ladder(
        {"learning_rate": [0.01, 0.02, 0.05, 0.1]}, [0.01, 0.02, 0.05, 0.1]
    )
    move = tp.exchange_move(lists, c=2.0)
    assert move.ladder.temperatures.dtype == jnp.float32
    np.testing.assert_allclose(move.ladder.betas, 1 / np.array([0.01, 0.02, 0.05, 0.1]))
    tp.ladder.check_ladder(ctx.state, lists)


# --- properties (hypothesis, PROPERTY_SETTINGS in conftest.py): make_ladder -----------

M = 6
lr_st = st.floats(1e-4, LIMITS["learning_rate"])
dropout_st = st.floats(0.0, 0.95)


@PROPERTY_SETTINGS
@given(
    name_values=st.one_of(
        st.tuples(
            st.just("learning_rate"),
            st.lists(lr_st, min_size=2, max_size=M, unique=True),
        ),
        st.tuples(
            st.just("dropout_rate"),
            st.lists(dropout_st, min_size=2, max_size=M, unique=True),
        ),
    )
)
def test_make_ladder_sorts_valid_values_into_strictly_increasing_temperatures(
    name_values,
):
    name, values = name_values
    temps64 = (
        np.asarray(values) if name == "learning_rate" else 1 / (1 - np.asarray(values))
    )
    if np.any(np.diff(np.sort(temps64.astype(np.float32))) <= 0):
        return  # float32 merges two values: make_ladder's duplicate check owns that
    ladder = tp.make_ladder({name: values})
    temps = np.asarray(ladder.temperatures)
    assert ladder.num_rungs == len(values)
    assert np.all(np.diff(temps) > 0)
    assert np.all(np.diff(np.asarray(ladder.betas)) < 0)
    np.testing.assert_allclose(
        np.asarray(ladder.values[name]), np.sort(values), rtol=1e-6, atol=1e-7
    )


def _with_one(values: list[float], bad: float, index: int) -> list[float]:
    values = list(values)
    values[index % len(values)] = bad
    return values


@PROPERTY_SETTINGS
@given(
    values=st.lists(lr_st, min_size=2, max_size=M, unique=True),
    bad=st.floats(max_value=0.0)
    | st.floats(min_value=LIMITS["learning_rate"], exclude_min=True)
    | st.sampled_from([math.nan, math.inf]),
    index=st.integers(0, M),
)
def test_make_ladder_refuses_any_bad_learning_rate(values, bad, index):
    with pytest.raises(ValueError, match="learning_rate"):
        tp.make_ladder(learning_rate=_with_one(values, bad, index))


@PROPERTY_SETTINGS
@given(
    values=st.lists(dropout_st, min_size=2, max_size=M, unique=True),
    bad=st.floats(max_value=-1e-6)
    | st.floats(min_value=1.0)
    | st.sampled_from([math.nan, -math.inf]),
    index=st.integers(0, M),
)
def test_make_ladder_refuses_any_bad_dropout_rate(values, bad, index):
    with pytest.raises(ValueError, match="dropout_rate"):
        tp.make_ladder(dropout_rate=_with_one(values, bad, index))


def test_a_value_float32_overflows_is_a_value_error_not_a_numpy_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cast's RuntimeWarning came first
        with pytest.raises(ValueError, match="weight_decay"):
            tp.make_ladder(weight_decay=[0.0, 1e39], temperatures=[1.0, 2.0])


def test_a_geometric_batch_size_ladder_of_powers_of_two_is_whole():
    # geomspace gives 32.00000000000001: refused as "not whole" before
    ladder = tp.geometric_ladder("batch_size", 16, 128, 4)
    assert sorted(ladder.values["batch_size"].tolist()) == [16, 32, 64, 128]
    with pytest.raises(ValueError, match="whole numbers .*make_ladder"):
        tp.geometric_ladder("batch_size", 10, 1000, 4)  # 46.4...


@pytest.mark.parametrize(
    "rungs, error, match",
    [
        ([0.9, 1.9, 2.9, 3.0], TypeError, "rungs must be integers"),
        ([-1, 0, 1, 2], ValueError, r"rungs must lie in 0..3"),
        ([0, 1, 2], ValueError, r"one rung per replica, shape \(4,\)"),
    ],
)
def test_assign_rungs_refuses_rungs_that_are_no_indices(rungs, error, match):
    # They were truncated, wrapped to the hottest rung, or broadcast, silently.
    ladder = tp.geometric_ladder("learning_rate", 0.01, 0.1, 4)
    state = tp.create_replicas(
        jax.random.key(0), TinyMLP(), tp.sgd(0.1), np.zeros((1, 5), np.float32),
        ladder=ladder,
    )  # fmt: skip
    with pytest.raises(error, match=match):
        tp.ladder.assign_rungs(state, ladder, rungs)
