"""pairwise_cosine and pairwise_cosine_sorted (Pallas in interpret mode, and jnp) against a
NumPy float64 loop: both jnp Gram paths, zero vectors, dropped slots, bf16, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.test_util import check_grads

from moejax.kernels import pairwise_cosine, pairwise_cosine_sorted
from moejax.kernels._cosine_pallas import CosineConfig, _cosine_forward, _sorted_forward
from tests.kernels.platforms import requires_gpu, skip_unless_triton_lowering_runs_here

PALLAS = dict(implementation="pallas", interpret=True, block_tokens=16, block_features=16)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def _loop_reference(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    tokens, k, _ = z.shape
    return np.array([[[_cosine(z[t, i], z[t, j]) for j in range(k)] for i in range(k)]
                     for t in range(tokens)])


def _sorted_layout(tokens: int, k: int, features: int, seed: int, dtype):
    """z_sorted [M, F] with M > T*K, a one-to-one index [T, K] with dropped slots (>= M, < 0),
    and the same activations in token layout [T, K, F] (zeros for dropped slots)."""
    rng = np.random.default_rng(seed)
    rows = tokens * k + 5
    z_sorted = rng.normal(size=(rows, features)).astype(np.float32)
    index = rng.permutation(rows)[:tokens * k].reshape(tokens, k).astype(np.int32)
    index[0, 1], index[5, 0], index[6, k - 1] = rows, rows + 7, -1
    z_sorted = np.asarray(jnp.asarray(z_sorted, dtype).astype(jnp.float32))  # dtype-rounded
    valid = (index >= 0) & (index < rows)
    z_tokens = np.where(valid[..., None], z_sorted[np.where(valid, index, 0)], 0.0)
    return jnp.asarray(z_sorted, dtype), jnp.asarray(index), z_tokens


@pytest.mark.parametrize("k", [2, 4, 6])  # 2 and 4: broadcast path; 6: einsum path
def test_jnp_matches_loop(k):
    z = np.random.default_rng(k).normal(size=(13, k, 7)).astype(np.float32)
    z[0, 1] = 0.0  # a dropped slot's activation
    out = np.asarray(pairwise_cosine(jnp.asarray(z)), np.float64)
    np.testing.assert_allclose(out, _loop_reference(z), rtol=1e-5, atol=1e-6)
    assert out[0, 1, 1] == 0.0


@pytest.mark.parametrize("tokens,k,features,dtype", [
    (37, 2, 7, jnp.float32),  # F padded to one 8-wide chunk
    (37, 8, 40, jnp.bfloat16),  # F padded to three 16-wide chunks
    (100, 3, 48, jnp.float32),
])
def test_pallas_matches_loop(tokens, k, features, dtype):
    z = np.random.default_rng(tokens + k).normal(size=(tokens, k, features))
    z[0, 1] = 0.0
    z = jnp.asarray(z, dtype)
    out = jax.jit(functools.partial(pairwise_cosine, **PALLAS))(z)
    assert out.dtype == jnp.float32 and out.shape == (tokens, k, k)
    want = _loop_reference(np.asarray(z.astype(jnp.float32)))
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)
    assert out[0, 1, 1] == 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sorted_matches_loop(dtype):
    z_sorted, index, z_tokens = _sorted_layout(37, 4, 24, seed=1, dtype=dtype)
    want = _loop_reference(z_tokens)
    for options in (PALLAS, dict(implementation="jnp")):
        out = pairwise_cosine_sorted(z_sorted, index, **options)
        assert out.dtype == jnp.float32 and out.shape == (37, 4, 4)
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)
    assert float(out[0, 1, 1]) == 0.0 and float(out[6, 3, 0]) == 0.0


def test_kernels_write_every_output_element():
    """Interpret mode starts outputs as NaN (see test_topk_dispatch): none may remain."""
    config = CosineConfig(block_tokens=16, block_features=8, interpret=True)
    z = jnp.asarray(np.random.default_rng(4).normal(size=(37, 3, 20)), jnp.float32)
    z_sorted, index, _ = _sorted_layout(37, 3, 20, seed=4, dtype=jnp.float32)
    for cos, norm in (_cosine_forward(z, config), _sorted_forward(z_sorted, index, config)):
        assert not np.isnan(np.asarray(cos)).any() and not np.isnan(np.asarray(norm)).any()


def _loss(z, *, fn, cotangent, **options):
    return jnp.sum(fn(z, **options) * cotangent)


def test_gradient_matches_jnp():
    rng = np.random.default_rng(7)
    z = jnp.asarray(rng.normal(size=(37, 5, 24)), jnp.float32).at[3, 2].set(0.0)
    cotangent = jnp.asarray(rng.normal(size=(37, 5, 5)), jnp.float32)
    loss = functools.partial(_loss, fn=pairwise_cosine, cotangent=cotangent)
    got = jax.jit(jax.grad(functools.partial(loss, **PALLAS)))(z)
    want = jax.grad(functools.partial(loss, implementation="jnp"))(z)
    assert got.dtype == z.dtype and np.isfinite(np.asarray(got)).all()
    scale = float(jnp.abs(want).max())  # the zero vector's gradient is ~1e12 (norm clamp)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6 * scale)
    rest = np.ones(z.shape[:2], bool)
    rest[3, 2] = False
    np.testing.assert_allclose(np.asarray(got)[rest], np.asarray(want)[rest], rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sorted_gradient_matches_jnp(dtype):
    z_sorted, index, _ = _sorted_layout(37, 4, 24, seed=8, dtype=dtype)
    cotangent = jnp.asarray(np.random.default_rng(8).normal(size=(37, 4, 4)), jnp.float32)
    loss = functools.partial(_loss, fn=pairwise_cosine_sorted, cotangent=cotangent,
                             expert_sorted_index=index)
    got = jax.grad(functools.partial(loss, **PALLAS))(z_sorted)
    want = jax.grad(functools.partial(loss, implementation="jnp"))(z_sorted)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)),
                               np.asarray(want.astype(jnp.float32)), rtol=tol, atol=tol)
    # 5 spare rows plus the rows of the 3 slots whose index was replaced by a dropped one
    unread = np.setdiff1d(np.arange(z_sorted.shape[0]), np.asarray(index))
    assert unread.size == 5 + 3 and not np.asarray(got.astype(jnp.float32))[unread].any()


@pytest.mark.parametrize("implementation", ["jnp", "pallas"])
def test_gradients_finite_differences(implementation):
    options = PALLAS if implementation == "pallas" else dict(implementation="jnp")
    with jax.enable_x64(True):
        z = jnp.asarray(np.random.default_rng(1).normal(size=(19, 3, 10)))
        check_grads(functools.partial(pairwise_cosine, **options), (z,), order=1, modes=["rev"])
        zero = z.at[0, 0].set(0.0)
        grad = jax.grad(lambda z: pairwise_cosine(z, **options).sum())(zero)
        assert grad.dtype == jnp.float64 and np.isfinite(np.asarray(grad)).all()
        z_sorted, index, _ = _sorted_layout(19, 3, 10, seed=2, dtype=jnp.float64)
        sorted_fn = functools.partial(pairwise_cosine_sorted, expert_sorted_index=index,
                                      **options)
        check_grads(sorted_fn, (z_sorted,), order=1, modes=["rev"])


def test_bfloat16_input_gives_float32():
    z = jnp.asarray(np.random.default_rng(2).normal(size=(4, 2, 8)), jnp.bfloat16)
    assert pairwise_cosine(z).dtype == jnp.float32


def test_lowers_to_triton_for_gpu():
    """The GPU path lowers to Triton custom calls (compiling and running them needs a GPU)."""
    skip_unless_triton_lowering_runs_here()
    options = dict(implementation="pallas", interpret=False)
    z = jnp.zeros((37, 6, 1408), jnp.bfloat16)
    z_sorted, index = jnp.zeros((300, 1400), jnp.bfloat16), jnp.zeros((37, 6), jnp.int32)
    cases = [(functools.partial(pairwise_cosine, **options), z),
             (functools.partial(pairwise_cosine_sorted, expert_sorted_index=index, **options),
              z_sorted)]
    for fn, arg in cases:
        grad = jax.grad(lambda x, fn=fn: fn(x).sum())
        text = jax.jit(grad).trace(arg).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("__gpu$xla.gpu.triton") == 2  # forward and backward kernels


def test_tpu_lowers_to_mosaic_and_its_interpret_mode_matches_loop(tpu_target):
    """TPU: both layouts and their gradients lower to Mosaic custom calls (forward and
    backward kernels; the sorted layout gathers its rows in jnp there); Pallas's TPU interpret
    mode gives the loop's cosines and jnp's gradients, dropped slots included."""
    options = dict(implementation="pallas", interpret=False)
    z, z_sorted = jnp.zeros((37, 6, 1408), jnp.bfloat16), jnp.zeros((300, 1400), jnp.bfloat16)
    index = jnp.zeros((37, 6), jnp.int32)
    for fn, arg in [(functools.partial(pairwise_cosine, **options), z),
                    (functools.partial(pairwise_cosine_sorted, expert_sorted_index=index,
                                       **options), z_sorted)]:
        grad = jax.grad(lambda x, fn=fn: fn(x).sum())
        text = jax.jit(grad).trace(arg).lower(lowering_platforms=("tpu",)).as_text()
        assert text.count("tpu_custom_call") == 2  # forward and backward kernels
    on_tpu = dict(PALLAS, interpret=pltpu.InterpretParams())
    z_sorted, index, z_tokens = _sorted_layout(37, 4, 24, seed=1, dtype=jnp.float32)
    want = _loop_reference(z_tokens)
    for fn, arg in [(pairwise_cosine, jnp.asarray(z_tokens, jnp.float32)),
                    (functools.partial(pairwise_cosine_sorted, expert_sorted_index=index),
                     z_sorted)]:
        np.testing.assert_allclose(np.asarray(fn(arg, **on_tpu)), want, rtol=1e-5, atol=1e-6)
        cotangent = jnp.asarray(np.random.default_rng(8).normal(size=(37, 4, 4)), jnp.float32)
        loss = functools.partial(_loss, fn=fn, cotangent=cotangent)
        got = jax.grad(functools.partial(loss, **on_tpu))(arg)
        expected = jax.grad(functools.partial(loss, implementation="jnp"))(arg)
        scale = float(jnp.abs(expected).max())  # a zero slot's gradient: ~1e12 (norm clamp)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6 * scale)


def test_rejects_bad_arguments():
    z = jnp.zeros((4, 2, 8), jnp.float32)
    with pytest.raises(ValueError, match="z must be"):
        pairwise_cosine(z[0])
    with pytest.raises(ValueError, match="z must have a floating dtype"):
        pairwise_cosine(jnp.zeros((4, 2, 8), jnp.int32))
    with pytest.raises(ValueError, match="implementation='cuda'; allowed: auto, pallas, jnp"):
        pairwise_cosine(z, implementation="cuda")
    with pytest.raises(ValueError, match="block_features=12"):
        pairwise_cosine(z, implementation="pallas", block_features=12)
    index = jnp.zeros((4, 2), jnp.int32)
    with pytest.raises(ValueError, match="z_sorted must be"):
        pairwise_cosine_sorted(z, index)
    with pytest.raises(ValueError, match="expert_sorted_index must be"):
        pairwise_cosine_sorted(z[0], index[0])
    with pytest.raises(ValueError, match="expert_sorted_index must be integer"):
        pairwise_cosine_sorted(z[0], index.astype(jnp.float32))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("tokens,k,features", [(1000, 8, 1408), (4096, 2, 256)])
def test_gpu_kernels_match_jnp(tokens, k, features):
    """The compiled (Triton) kernels, both layouts: values and gradients equal jnp's."""
    z_sorted, index, _ = _sorted_layout(tokens, k, features, seed=9, dtype=jnp.bfloat16)
    z = z_sorted[jnp.clip(index, 0, z_sorted.shape[0] - 1)]
    cotangent = jnp.asarray(np.random.default_rng(9).normal(size=(tokens, k, k)), jnp.float32)
    cases = [(pairwise_cosine, z, {}),
             (pairwise_cosine_sorted, z_sorted, dict(expert_sorted_index=index))]
    for fn, arg, extra in cases:
        loss = functools.partial(_loss, fn=fn, cotangent=cotangent, **extra)
        got = jax.jit(jax.value_and_grad(functools.partial(loss, implementation="pallas")))(arg)
        want = jax.value_and_grad(functools.partial(loss, implementation="jnp"))(arg)
        np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-4)
        np.testing.assert_allclose(np.asarray(got[1].astype(jnp.float32)),
                                   np.asarray(want[1].astype(jnp.float32)), rtol=2e-2, atol=2e-2)
