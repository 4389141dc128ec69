"""The metrics schema: the readers `last_value` / `series` and each key's list reduction."""

import math

import numpy as np

from moejax.reporting.metrics import last_value, reduce_values, reduced, series

NAN = float("nan")
# step 2 logs no routing entropy, step 0 logs it with another shape (a scalar)
ROWS = [
    {"step": 0, "routing/entropy": 0.7},
    {"step": 1, "loss": 3.0, "routing/entropy": [1.0, 2.0]},
    {"step": 2, "loss": 2.5},
    {"step": 3, "loss": 2.0, "routing/entropy": [0.5, 1.5], "val_loss": 2.25},
]


def test_last_value_and_series_read_the_rows_that_have_the_key():
    assert last_value(ROWS, "loss") == (2.0, ROWS[3])
    assert last_value(ROWS, "val_loss") == (2.25, ROWS[3])
    assert last_value(ROWS[:3], "val_loss") == (None, None)
    steps, values = series(ROWS, "loss")
    np.testing.assert_array_equal(steps, [1, 2, 3])
    np.testing.assert_array_equal(values, [3.0, 2.5, 2.0])
    assert values.dtype == np.float64
    steps, values = series(ROWS, "routing/entropy")  # the rows of the last value's shape [2]
    np.testing.assert_array_equal(steps, [1, 3])
    np.testing.assert_array_equal(values, [[1.0, 2.0], [0.5, 1.5]])
    assert series(ROWS, "val_bits_per_byte") == (None, None)


def test_lists_reduce_by_their_keys_schema():
    assert reduced("routing/entropy", [1.0, 2.0, 4.5]) == 2.5  # per router: the mean
    total = reduced("routing/dead_experts", [1, 0, 3])  # dead experts: the total, an int
    assert total == 4 and isinstance(total, int)
    assert reduced("eval/domain_loss", [1.0, NAN, 3.0]) == 2.0  # NaN gaps left out
    assert reduced("eval/domain_loss", [NAN, NAN]) is None
    assert reduced("eval/docs/domain_loss", [1.0, NAN, 3.0]) == 2.0  # a configured evaluator
    assert reduced("loss", 2.5) == 2.5 and reduced("eval/domain_names", ["a", "b"]) is None
    assert math.isnan(reduced("routing/load_cv", [0.5, NAN]))  # a per-router NaN shows
    np.testing.assert_array_equal(
        reduce_values("eval/domain_loss", [[1.0, NAN, 3.0], [NAN, NAN, NAN], [2.0, 2.0, 5.0]]),
        [2.0, NAN, 3.0])
    np.testing.assert_array_equal(reduce_values("routing/dead_experts", [[1, 2], [0, 0]]),
                                  [3.0, 0.0])
    np.testing.assert_array_equal(reduce_values("loss", [3.0, 2.5]), [3.0, 2.5])
