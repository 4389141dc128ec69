"""Grouped-query causal attention with RoPE against a loop reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moejax.layers.attention import attention, empty_kv_cache, positions_from_segments
from tests.reference_decoder import attention_ref

B, S, D, H = 2, 7, 12, 4


def _weights(num_heads, num_kv, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) / np.sqrt(shape[0])
            for shape in ((D, num_heads, H), (D, num_kv, H), (D, num_kv, H), (num_heads, H, D))]


@pytest.mark.parametrize("num_heads, num_kv", [(6, 2), (3, 3), (4, 1)])
def test_attention_matches_reference(num_heads, num_kv):
    weights = _weights(num_heads, num_kv)
    x = np.random.default_rng(1).normal(size=(B, S, D)).astype(np.float32)
    positions = jnp.broadcast_to(jnp.arange(S), (B, S))
    out = attention(jnp.asarray(x), *map(jnp.asarray, weights), positions, 10000.0)
    for b in range(B):
        np.testing.assert_allclose(np.asarray(out[b], np.float64),
                                   attention_ref(x[b], *weights, 10000.0), rtol=1e-4, atol=1e-5)


def test_float64_path_matches_fused_path():
    weights = _weights(6, 2, seed=5)
    x = np.random.default_rng(6).normal(size=(B, S, D))
    positions = jnp.broadcast_to(jnp.arange(S), (B, S))
    fused = attention(jnp.asarray(x, jnp.float32), *map(jnp.asarray, weights), positions, 1e4)
    with jax.enable_x64(True):
        plain = attention(jnp.asarray(x), *(jnp.asarray(w, jnp.float64) for w in weights),
                          positions, 1e4)
        np.testing.assert_allclose(np.asarray(plain), np.asarray(fused, np.float64), rtol=1e-4,
                                   atol=1e-5)


def test_attention_is_causal():
    weights = list(map(jnp.asarray, _weights(6, 2)))
    x = np.random.default_rng(2).normal(size=(1, S, D)).astype(np.float32)
    changed = x.copy()
    changed[0, -1] += 1.0
    positions = jnp.arange(S)[None]
    a = attention(jnp.asarray(x), *weights, positions, 10000.0)
    b = attention(jnp.asarray(changed), *weights, positions, 10000.0)
    np.testing.assert_allclose(a[0, :-1], b[0, :-1], rtol=1e-6)
    assert not np.allclose(a[0, -1], b[0, -1])


def test_attention_gradients():
    weights = _weights(6, 2, seed=3)
    x = np.random.default_rng(4).normal(size=(B, S, D))
    with jax.enable_x64(True):
        positions = jnp.broadcast_to(jnp.arange(S), (B, S))
        w = [jnp.asarray(a, jnp.float64) for a in weights]
        check_grads(jax.jit(lambda x, w_q, w_k: attention(x, w_q, w_k, w[2], w[3], positions,
                                                          1e4)),
                    (jnp.asarray(x), w[0], w[1]), order=1, modes=["rev"])
        segments = jnp.asarray([[1, 1, 1, 2, 2, 3, 3], [1, 2, 2, 2, 2, 2, 2]])  # packed
        check_grads(jax.jit(lambda x, w_q, w_k: attention(
            x, w_q, w_k, w[2], w[3], positions_from_segments(segments), 1e4, segments)),
                    (jnp.asarray(x), w[0], w[1]), order=1, modes=["rev"])


def test_packed_documents_are_masked_and_restart_positions():
    """Segments (packed documents, as the pipeline numbers them): each query attends only to
    its own document's earlier keys, with RoPE positions counted from the document's start,
    against the NumPy loop; float32 fused path and float64 plain path."""
    weights = _weights(6, 2, seed=7)
    x = np.random.default_rng(8).normal(size=(B, S, D))
    segments = np.array([[1, 1, 1, 2, 2, 3, 3], [1, 2, 2, 2, 2, 2, 2]], np.int32)
    positions = positions_from_segments(jnp.asarray(segments))
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 0, 1, 2, 3, 4, 5]]
    fused = attention(jnp.asarray(x, jnp.float32), *map(jnp.asarray, weights), positions, 1e4,
                      jnp.asarray(segments))
    with jax.enable_x64(True):
        plain = attention(jnp.asarray(x), *(jnp.asarray(w, jnp.float64) for w in weights),
                          positions, 1e4, jnp.asarray(segments))
    for b in range(B):
        want = attention_ref(x[b], *weights, 1e4, segments=segments[b])
        np.testing.assert_allclose(np.asarray(fused[b], np.float64), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(plain[b]), want, rtol=1e-9, atol=1e-10)
    # the reference without segments differs: the mask matters for these inputs
    assert not np.allclose(attention_ref(x[B - 1], *weights, 1e4), want)


def test_decoding_through_a_kv_cache_equals_the_full_causal_pass():
    """A 4-token prefill, then one token per call through the KVCache (one slot more than
    needed, left empty): every output equals the full pass's at its position, and the cache
    holds each call's keys at its slots, its index advanced."""
    weights = list(map(jnp.asarray, _weights(6, 2, seed=9)))
    x = jnp.asarray(np.random.default_rng(10).normal(size=(B, S, D)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(S), (B, S))
    full = attention(x, *weights, positions, 1e4)
    cache = empty_kv_cache(B, S + 1, 2, H, jnp.float32)
    outs = []
    for start, stop in [(0, 4), *((s, s + 1) for s in range(4, S))]:
        out, cache = attention(x[:, start:stop], *weights, positions[:, start:stop], 1e4,
                               cache=cache)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-6)
    assert int(cache.index) == S and cache.k.shape == (B, S + 1, 2, H)
    assert np.abs(np.asarray(cache.k[:, :S])).min() > 0 and not np.asarray(cache.v[:, S:]).any()
    with pytest.raises(ValueError, match="segments with a KV cache; allowed: segments=None"):
        attention(x, *weights, positions, 1e4, jnp.ones((B, S), jnp.int32), cache=cache)
