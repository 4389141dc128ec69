"""Multi-head Latent Attention against the NumPy loop reference; absorbed decoding; gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.layers.attention import positions_from_segments
from moejax.layers.mla import MLAttention, MLAWeights, empty_mla_cache, mla_attention
from moejax.layers.mla_spec import MLASpec, RopeScaling
from tests.gradcheck import assert_directional_derivative
from tests.reference_decoder import mla_ref

B, S, D, N = 2, 7, 12, 3
SEGMENTS = np.array([[1, 1, 1, 2, 2, 3, 3], [1, 2, 2, 2, 2, 2, 2]], np.int32)
YARN = RopeScaling(factor=8.0, original_max_position_embeddings=4, beta_fast=8.0,
                   beta_slow=2.0, mscale=0.7, mscale_all_dim=1.0, truncate=False)
# V < Q with a query LoRA and YaRN (V3-like); V > Q, full query projection (V2-Lite-like)
SPECS = [
    (MLASpec(kv_lora_rank=5, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=3,
             q_lora_rank=6), YARN),
    (MLASpec(kv_lora_rank=6, qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=6,
             rope_interleave=False), None),
]


MLA = jax.jit(mla_attention, static_argnums=(3, 4, 5))  # (mla, theta, rope_scaling) static


def _weights(mla, seed=0) -> MLAWeights:
    """Random float32 MLAWeights (scaled by fan-in), norm weights in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    q_dim, rank, lora = mla.qk_head_dim, mla.kv_lora_rank, mla.q_lora_rank

    def normal(*shape):
        return (rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32)

    def norm(width):
        return rng.uniform(0.5, 1.5, width).astype(np.float32)

    return MLAWeights(
        w_q=normal(D, N, q_dim) if lora is None else None,
        w_q_a=None if lora is None else normal(D, lora),
        q_a_norm=None if lora is None else norm(lora),
        w_q_b=None if lora is None else normal(lora, N, q_dim),
        w_kv_a=normal(D, rank + mla.qk_rope_head_dim), kv_a_norm=norm(rank),
        w_kv_b=normal(rank, N, mla.qk_nope_head_dim + mla.v_head_dim),
        w_o=normal(N, mla.v_head_dim, D))


def _ref_params(weights: MLAWeights) -> dict:
    return {name: np.asarray(w, np.float64) for name, w in weights._asdict().items()
            if w is not None}


def _as(weights: MLAWeights, dtype) -> MLAWeights:
    return jax.tree.map(lambda w: jnp.asarray(w, dtype), weights)


@pytest.mark.parametrize("mla, scaling", SPECS)
def test_mla_matches_reference(mla, scaling):
    """Packed documents (masking, positions restarted): float64 to 1e-9 and the float32
    fused path (values zero-padded to the query width or the other way) to 1e-4."""
    weights = _weights(mla)
    x = np.random.default_rng(1).normal(size=(B, S, D))
    segments = jnp.asarray(SEGMENTS)
    positions = positions_from_segments(segments)
    want = [mla_ref(x[b], _ref_params(weights), mla, 100.0, scaling, SEGMENTS[b])
            for b in range(B)]
    fused = MLA(jnp.asarray(x, jnp.float32), _as(weights, jnp.float32), positions, mla, 100.0,
                scaling, segments)
    with jax.enable_x64(True):
        plain = MLA(jnp.asarray(x), _as(weights, jnp.float64), positions, mla, 100.0, scaling,
                    segments)
    for b in range(B):
        np.testing.assert_allclose(np.asarray(plain[b]), want[b], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(np.asarray(fused[b], np.float64), want[b], rtol=1e-4,
                                   atol=1e-5)
    assert fused.shape == (B, S, D) and fused.dtype == jnp.float32


def test_module_params_and_call():
    """Param names and shapes (float32), with and without the query LoRA; the module's call
    is `mla_attention` of its weights."""
    mla, scaling = SPECS[0]
    layer = MLAttention(D, N, mla, rope_theta=100.0, rope_scaling=scaling, norm_eps=1e-5,
                        rngs=nnx.Rngs(0))
    shapes = {"/".join(map(str, path)): leaf.shape for path, leaf in
              nnx.to_flat_state(nnx.state(layer, nnx.Param))}
    assert shapes == {"w_q_a": (D, 6), "q_a_norm/weight": (6,), "w_q_b": (6, N, 8),
                      "w_kv_a": (D, 5 + 4), "kv_a_norm/weight": (5,), "w_kv_b": (5, N, 4 + 3),
                      "w_o": (N, 3, D)}
    full = nnx.state(MLAttention(D, N, SPECS[1][0], rope_theta=100.0, rope_scaling=None,
                                 norm_eps=1e-5, rngs=nnx.Rngs(0)), nnx.Param)
    assert full["w_q"].shape == (D, N, 4) and "w_q_a" not in full
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(full))
    assert layer.q_a_norm.eps == layer.kv_a_norm.eps == 1e-6  # HF's, not norm_eps
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 3, D)), jnp.float32)
    positions = jnp.arange(3)[None]
    got = nnx.jit(lambda m, x: m(x, positions))(layer, x)
    np.testing.assert_allclose(got, MLA(x, layer.weights(jnp.float32), positions, mla, 100.0,
                                        scaling), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mla, scaling", SPECS)
def test_absorbed_decoding_equals_the_full_pass(mla, scaling):
    """A 3-token prefill, then one token per call through the latent cache (absorbed form):
    every output equals the uncached pass at its position; the cache holds the normalised
    latent and rotated RoPE key of each filled slot, zeros after."""
    weights = _as(_weights(mla, seed=2), jnp.float32)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(B, S, D)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(S), (B, S))
    full = MLA(x, weights, positions, mla, 100.0, scaling)
    cache = empty_mla_cache(B, S + 1, mla, jnp.float32)
    outs = []
    for start, stop in [(0, 3), *((s, s + 1) for s in range(3, S))]:
        out, cache = MLA(x[:, start:stop], weights, positions[:, start:stop], mla, 100.0,
                         scaling, cache=cache)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-6)
    assert int(cache.index) == S and cache.latent.shape == (B, S + 1, mla.kv_lora_rank)
    assert cache.k_rope.shape == (B, S + 1, mla.qk_rope_head_dim)
    assert np.abs(np.asarray(cache.latent[:, :S])).min() > 0
    assert not np.asarray(cache.latent[:, S:]).any() and not np.asarray(cache.k_rope[:, S:]).any()
    with pytest.raises(ValueError, match="segments with an MLA cache; allowed: segments=None"):
        mla_attention(x, weights, positions, mla, 100.0, scaling, jnp.ones((B, S), jnp.int32),
                      cache=cache)


def test_mla_gradients():
    """Directional derivative of every weight and the input, packed documents, YaRN."""
    mla, scaling = SPECS[0]
    x = np.random.default_rng(5).normal(size=(B, S, D))
    segments = jnp.asarray(SEGMENTS)
    positions = positions_from_segments(segments)
    with jax.enable_x64(True):
        def loss(params):
            out = mla_attention(params[0], params[1], positions, mla, 100.0, scaling, segments)
            return jnp.sum(jnp.sin(out))

        assert_directional_derivative(loss, (jnp.asarray(x), _as(_weights(mla, 4), jnp.float64)))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="model.mla.qk_rope_head_dim=3 must be even"):
        MLASpec(kv_lora_rank=4, qk_nope_head_dim=2, qk_rope_head_dim=3, v_head_dim=2)
    with pytest.raises(ValueError, match="model.attention='flash'; allowed: xla, cudnn"):
        MLAttention(D, N, SPECS[0][0], rope_theta=1e4, rope_scaling=None, norm_eps=1e-5,
                    rngs=nnx.Rngs(0), implementation="flash")
    with pytest.raises(ValueError, match="model.rope_scaling=.*; allowed: None or a RopeScaling"):
        MLAttention(D, N, SPECS[0][0], rope_theta=1e4, rope_scaling={"factor": 2.0},
                    norm_eps=1e-5, rngs=nnx.Rngs(0))
