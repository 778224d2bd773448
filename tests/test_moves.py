"""The moves between rounds: exchange_move."""

import numpy as np
import pytest
from conftest import Case, T, V, bad_input_params, check_raises_before_compiling

import tempering as tp

# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- exchange_move / multi_exchange_move ----------------------------------
    Case("move-ladder-not-ladder", lambda c: tp.exchange_move([0.1, 0.2]), T, r"ladder must be a tempering.Ladder"),
    Case("move-c-0", lambda c: tp.exchange_move(c.ladder, c=0.0), V, r"c must be finite and > 0"),
    Case("move-c-word", lambda c: tp.exchange_move(c.ladder, c="automatic"), V, r"c must be a number > 0 or 'auto'"),
    Case("move-c-bool", lambda c: tp.exchange_move(c.ladder, c=True), T, r"c must be one number or 'auto'"),
    Case("move-c-none", lambda c: tp.exchange_move(c.ladder, c=None), T, r"c must be one number or 'auto', got None", fixed=True),
    Case("move-c-complex", lambda c: tp.exchange_move(c.ladder, c=1 + 0j), T, r"c must be one number or 'auto'", fixed=True),
    Case("move-c-complex64", lambda c: tp.exchange_move(c.ladder, c=np.complex64(2 + 3j)), T, r"c must be one number or 'auto'", fixed=True),
    Case("move-c-rounds-to-0", lambda c: tp.exchange_move(c.ladder, c=1e-50), V, r"c must be .*finite in float32", fixed=True),
    Case("move-c-overflows-float32", lambda c: tp.exchange_move(c.ladder, c=1e39), V, r"c must be .*finite in float32", fixed=True),
    Case("move-enabled-string", lambda c: tp.exchange_move(c.ladder, enabled="False"), T, r"enabled must be a bool"),
    Case("move-target-0", lambda c: tp.exchange_move(c.ladder, c="auto", target_acceptance=0.0), V, r"target_acceptance must be a number in \(0, 1\)"),
    Case("move-target-1.5", lambda c: tp.exchange_move(c.ladder, c="auto", target_acceptance=1.5), V, r"target_acceptance must be a number in \(0, 1\)"),
    Case("move-adapt-rounds-negative", lambda c: tp.exchange_move(c.ladder, c="auto", adapt_rounds=-1), V, r"adapt_rounds must be >= 1"),
    Case("move-adapt-rounds-float", lambda c: tp.exchange_move(c.ladder, c="auto", adapt_rounds=2.5), T, r"adapt_rounds must be an int"),
    Case("move-adapt-ladder-string", lambda c: tp.exchange_move(c.ladder, adapt_ladder="yes"), T, r"adapt_ladder must be True or False"),
    Case("move-adapt-ladder-grid", lambda c: tp.exchange_move(c.ladder, enabled=False, adapt_ladder=True), V, r"adapt_ladder=True .*enabled=False .*the grid", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)
