"""moejax/layers/attention.py against the float64 NumPy oracle (HF Mixtral RoPE and GQA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.layers.attention import Attention, apply_rope, attention, rope_tables
from tests.reference_decoder import attention_ref, rope_ref

B, S, D, H = 2, 7, 10, 4
THETA = 500.0  # a small base makes every frequency turn visibly over 7 positions
HEADS = {"gqa": (6, 2), "mha": (3, 3), "mqa": (4, 1)}  # (N query heads, K kv heads)
_attention = jax.jit(attention, static_argnums=6)  # one compile per shape instead of per op


def _weights(seed, num_heads, num_kv_heads):
    """Float64 x [B, S, D], w_q [D, N, H], w_k/w_v [D, K, H], w_o [N, H, D]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, S, D))
    w_q = rng.normal(size=(D, num_heads, H)) * D**-0.5
    w_k = rng.normal(size=(D, num_kv_heads, H)) * D**-0.5
    w_v = rng.normal(size=(D, num_kv_heads, H)) * D**-0.5
    w_o = rng.normal(size=(num_heads, H, D)) * (num_heads * H) ** -0.5
    return x, w_q, w_k, w_v, w_o


def _positions(offset=0):
    """[B, S] positions; the second row starts later (as in a continued sequence)."""
    return np.stack([np.arange(S), np.arange(S) + offset])


def _f32(arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


def test_rope_matches_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, S, 3, H))
    positions = _positions(offset=11)
    cos, sin = rope_tables(jnp.asarray(positions), H, THETA)
    out = apply_rope(jnp.asarray(x, jnp.float32), cos, sin)
    expected = np.stack([rope_ref(x[b], positions[b], THETA) for b in range(B)])
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-5, atol=1e-5)
    # position 0 is the identity; the rotation keeps the norm of each (h, h + H/2) pair
    np.testing.assert_allclose(np.asarray(out[0, 0], np.float64), x[0, 0], rtol=1e-6)
    assert not np.allclose(np.asarray(out[1], np.float64), x[1], atol=1e-2)


@pytest.mark.parametrize("heads", sorted(HEADS))
@pytest.mark.parametrize("offset", [0, 5])
def test_attention_matches_reference(heads, offset):
    num_heads, num_kv_heads = HEADS[heads]
    arrays = _weights(1, num_heads, num_kv_heads)
    positions = _positions(offset)
    out = _attention(*_f32(arrays), jnp.asarray(positions), THETA)
    assert out.shape == (B, S, D) and out.dtype == jnp.float32
    expected = attention_ref(*arrays, positions, THETA)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-4, atol=1e-5)


def test_attention_is_causal():
    """Changing the last token leaves every earlier output unchanged."""
    x, *weights = _weights(2, 6, 2)
    changed = x.copy()
    changed[:, -1] += 1.0
    positions = jnp.asarray(_positions())
    out = _attention(*_f32([x, *weights]), positions, THETA)
    out_changed = _attention(*_f32([changed, *weights]), positions, THETA)
    np.testing.assert_array_equal(np.asarray(out[:, :-1]), np.asarray(out_changed[:, :-1]))
    assert not np.allclose(np.asarray(out[:, -1]), np.asarray(out_changed[:, -1]))


def test_kv_head_grouping_is_contiguous():
    """Query head n reads kv head n // (N // K): zeroing kv head 1's values only changes the
    output of query heads 3..5 (N=6, K=2)."""
    x, w_q, w_k, w_v, w_o = _weights(3, 6, 2)
    positions = jnp.asarray(_positions())
    w_v_zeroed = w_v.copy()
    w_v_zeroed[:, 1] = 0.0
    for head in range(6):
        w_o_one = np.zeros_like(w_o)
        w_o_one[head] = w_o[head]  # keep one query head's contribution
        base = _attention(*_f32([x, w_q, w_k, w_v, w_o_one]), positions, THETA)
        zeroed = _attention(*_f32([x, w_q, w_k, w_v_zeroed, w_o_one]), positions, THETA)
        changed = not np.allclose(np.asarray(base), np.asarray(zeroed))
        assert changed == (head >= 3), head


@pytest.mark.parametrize("heads", ["gqa", "mha"])
def test_attention_gradients_match_reference_finite_differences(heads):
    """Reverse-mode gradients (float32) of each argument along a random direction against a
    float64 central difference of the reference. (A float64 check_grads cannot work here:
    jax.nn.dot_product_attention always runs its softmax in float32.)"""
    num_heads, num_kv_heads = HEADS[heads]
    arrays = _weights(4, num_heads, num_kv_heads)
    positions = _positions(offset=3)
    rng = np.random.default_rng(5)
    cotangent = rng.normal(size=(B, S, D))

    def scalar(*args):
        out = _attention(*args, jnp.asarray(positions), THETA)
        return jnp.sum(jnp.asarray(cotangent, jnp.float32) * out)

    grads = jax.jit(jax.grad(scalar, argnums=tuple(range(5))))(*_f32(arrays))
    step = 1e-6
    for i, (array, grad) in enumerate(zip(arrays, grads, strict=True)):
        direction = rng.normal(size=array.shape)

        def scalar_ref(sign, i=i, direction=direction):
            moved = [a + sign * step * direction if j == i else a for j, a in enumerate(arrays)]
            return float((cotangent * attention_ref(*moved, positions, THETA)).sum())

        finite_difference = (scalar_ref(1.0) - scalar_ref(-1.0)) / (2 * step)
        terms = np.asarray(grad, np.float64) * direction
        assert abs(terms.sum() - finite_difference) <= 1e-4 * np.abs(terms).sum(), i


def test_attention_module_casts_to_the_compute_dtype():
    # eval_shape: no eager random init (seconds of compilation on CPU); weights set below
    module = nnx.eval_shape(lambda: Attention(D, 6, 2, H, rope_theta=THETA, rngs=nnx.Rngs(0)))
    abstract = nnx.to_pure_dict(nnx.split(module, nnx.Param)[1])
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == {
        "w_q": ((D, 6, H), jnp.float32), "w_k": ((D, 2, H), jnp.float32),
        "w_v": ((D, 2, H), jnp.float32), "w_o": ((6, H, D), jnp.float32)}
    x, *weights = _weights(6, 6, 2)
    nnx.update(module, dict(zip(("w_q", "w_k", "w_v", "w_o"), _f32(weights), strict=True)))
    positions = jnp.asarray(_positions())
    expected = attention_ref(x, *weights, np.asarray(positions), THETA)
    call = nnx.jit(lambda m, x, p: m(x, p))
    out32 = call(module, jnp.asarray(x, jnp.float32), positions)
    np.testing.assert_allclose(np.asarray(out32, np.float64), expected, rtol=1e-4, atol=1e-5)
    # jax.nn.dot_product_attention itself promotes bfloat16 with float32 (its logits dtype),
    # which strict promotion refuses: standard promotion for this call only
    with jax.numpy_dtype_promotion("standard"):
        out16 = call(module, jnp.asarray(x, jnp.bfloat16), positions)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float64), expected, rtol=0.1, atol=0.1)


def test_attention_rejects_ungrouped_heads():
    with pytest.raises(ValueError, match="num_heads=6 is not a multiple of num_kv_heads=4"):
        Attention(D, 6, 4, H, rope_theta=THETA, rngs=nnx.Rngs(0))
