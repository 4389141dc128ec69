"""grouped_matmul, every implementation, against a NumPy loop over groups, with gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moejax.kernels import grouped_matmul, resolve_grouped_matmul, tile_layout

SIZES = np.array([3, 0, 9, 1], np.int32)  # an empty group, a group over several tiles
ROWS = int(SIZES.sum()) + 2  # two rows past the groups: zeros
CASES = [("ragged_dot", None), ("tiled", 2), ("tiled", 4), ("tiled", 16)]


def _inputs(dtype=np.float64):
    rng = np.random.default_rng(0)
    lhs = rng.normal(size=(ROWS, 6)).astype(dtype)
    rhs = rng.normal(size=(4, 6, 5)).astype(dtype)
    d_out = rng.normal(size=(ROWS, 5)).astype(dtype)
    return lhs, rhs, d_out


def _reference(lhs, rhs, d_out):
    """(out, d_lhs, d_rhs) of sum(out * d_out) by plain loops in float64."""
    out, d_lhs, d_rhs = np.zeros((ROWS, 5)), np.zeros_like(lhs), np.zeros_like(rhs)
    start = 0
    for group, size in enumerate(SIZES):
        for row in range(start, start + size):
            out[row] = lhs[row] @ rhs[group]
            d_lhs[row] = rhs[group] @ d_out[row]
            d_rhs[group] += np.outer(lhs[row], d_out[row])
        start += size
    return out, d_lhs, d_rhs


@pytest.mark.parametrize("implementation,tile_rows", CASES)
def test_matches_loop_with_gradients(implementation, tile_rows):
    lhs, rhs, d_out = _inputs(np.float32)
    sizes = jnp.asarray(SIZES)

    def f(a, b):
        return grouped_matmul(a, b, sizes, implementation=implementation, tile_rows=tile_rows)

    out, pullback = jax.vjp(f, jnp.asarray(lhs), jnp.asarray(rhs))
    d_lhs, d_rhs = pullback(jnp.asarray(d_out))
    want = _reference(*(a.astype(np.float64) for a in (lhs, rhs, d_out)))
    for got, ref in zip((out, d_lhs, d_rhs), want):
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(out)[SIZES.sum():] == 0)


def test_tiled_check_grads_float64():
    with jax.enable_x64(True):
        lhs, rhs, _ = (jnp.asarray(a) for a in _inputs())
        sizes = jnp.asarray(SIZES)
        check_grads(lambda a, b: grouped_matmul(a, b, sizes, implementation="tiled",
                                                tile_rows=4),
                    (lhs, rhs), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_tile_layout_pads_each_group_to_whole_tiles():
    layout = tile_layout(jnp.asarray(SIZES), ROWS, 4)
    # groups of 3, 0, 9, 1 rows take 1, 0, 3, 1 tiles; the bound is ROWS // 4 + 4 = 7 tiles
    assert layout.tile_group.tolist() == [0, 2, 2, 2, 3, 3, 3]
    assert int(layout.used_tiles) == 5
    source = np.asarray(layout.row_source).reshape(7, 4)
    assert source[0].tolist() == [0, 1, 2, ROWS]  # group 0 and its padding
    assert source[3].tolist() == [11, ROWS, ROWS, ROWS]  # group 2's last row
    assert source[4].tolist() == [12, ROWS, ROWS, ROWS]
    assert np.all(source[5:] == ROWS)  # trailing tiles hold nothing
    assert np.asarray(layout.padded_row)[-2:].tolist() == [28, 28]  # past the groups


def test_implementation_choice_and_errors():
    assert resolve_grouped_matmul("auto") == "tiled"  # on CPU
    with pytest.raises(ValueError, match="grouped_matmul='bogus'; allowed: auto, tiled"):
        resolve_grouped_matmul("bogus")
