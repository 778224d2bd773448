import jax.numpy as jnp
import numpy as np
import pytest

import tempering as tp


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


def test_explicit_temperatures_reorder_every_hyperparameter():
    ladder = tp.make_ladder(
        learning_rate=[0.1, 0.2, 0.3],
        dropout_rate=[0.3, 0.2, 0.1],
        temperatures=[3, 1, 2],
    )
    np.testing.assert_allclose(ladder.temperatures, [1, 2, 3])
    np.testing.assert_allclose(
        ladder.values["learning_rate"], [0.2, 0.3, 0.1], rtol=1e-6
    )
    np.testing.assert_allclose(
        ladder.values["dropout_rate"], [0.2, 0.1, 0.3], rtol=1e-6
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
        weight_decay=[1e-3, 1e-4, 1e-2], learning_rate=0.1, temperatures=[2, 1, 3]
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
    assert set(tp.ladder.HYPERPARAMETERS) == {"learning_rate", "dropout_rate"}


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
