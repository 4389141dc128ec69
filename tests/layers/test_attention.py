"""Grouped-query causal attention with RoPE against a loop reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from moejax.layers.attention import (
    Attention,
    attention,
    empty_kv_cache,
    positions_from_segments,
)
from moejax.layers.mla_spec import RopeScaling
from tests.gradcheck import assert_directional_derivative
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


YARN = RopeScaling(factor=4.0, original_max_position_embeddings=4, beta_fast=8.0, beta_slow=2.0,
                   mscale=0.8, mscale_all_dim=1.0, truncate=False)
# (name, option kwargs): Qwen2-MoE biases; OLMoE full-width q/k norms and clipping; YaRN
VARIANTS = [("bias", {"bias": True}), ("olmoe", {"qk_norm_axes": "all", "clip_qkv": 0.8}),
            ("yarn", {"rope_scaling": YARN, "bias": True})]


def _variant(options, num_heads=6, num_kv=2, seed=11):
    """(weights, attention() keyword arguments, attention_ref's) for one variant, float32
    NumPy: non-zero biases [N, H], [K, H], [K, H]; norm weights in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    kwargs, ref = {}, {}
    if options.get("bias"):
        bias = tuple(rng.normal(size=(h, H)).astype(np.float32)
                     for h in (num_heads, num_kv, num_kv))
        kwargs["bias"] = ref["bias"] = bias
    if "qk_norm_axes" in options:
        norms = tuple(rng.uniform(0.5, 1.5, h * H).astype(np.float32) for h in (num_heads, num_kv))
        kwargs.update(qk_norm=(*norms, 1e-5), qk_norm_axes="all")
        ref.update(qk_norm=norms, qk_norm_axes="all")
    if "clip_qkv" in options:
        kwargs["clip_qkv"] = ref["clip"] = options["clip_qkv"]
    if "rope_scaling" in options:
        kwargs["rope_scaling"] = ref["scaling"] = options["rope_scaling"]
    return _weights(num_heads, num_kv, seed), kwargs, ref


def _jitted(kwargs, dtype):
    """attention() with the variant's options, jitted; arrays cast to `dtype`."""
    arrays = {k: v for k, v in kwargs.items() if k in ("bias", "qk_norm")}
    static = {k: v for k, v in kwargs.items() if k not in arrays}
    cast = jax.tree.map(lambda a: jnp.asarray(a, dtype) if isinstance(a, np.ndarray) else a,
                        arrays)
    return jax.jit(lambda x, w, pos, seg=None, cache=None: attention(
        x, *w, pos, 1e4, seg, cache=cache, **cast, **static))


@pytest.mark.parametrize("name, options", VARIANTS)
def test_new_options_match_reference(name, options):
    """Biases, full-width q/k norms with clipping, YaRN (tables, factor and softmax scale) on
    packed documents: float64 to 1e-9, float32 fused path to 1e-4; each option matters."""
    weights, kwargs, ref = _variant(options)
    x = np.random.default_rng(12).normal(size=(B, S, D))
    segments = np.array([[1, 1, 1, 2, 2, 3, 3], [1, 2, 2, 2, 2, 2, 2]], np.int32)
    positions = positions_from_segments(jnp.asarray(segments))
    fused = _jitted(kwargs, jnp.float32)(jnp.asarray(x, jnp.float32),
                                         [jnp.asarray(w) for w in weights], positions,
                                         jnp.asarray(segments))
    with jax.enable_x64(True):
        plain = _jitted(kwargs, jnp.float64)(jnp.asarray(x), [jnp.asarray(w, jnp.float64)
                                                              for w in weights], positions,
                                             jnp.asarray(segments))
    for b in range(B):
        want = attention_ref(x[b], *weights, 1e4, segments=segments[b], **ref)
        np.testing.assert_allclose(np.asarray(plain[b]), want, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(np.asarray(fused[b], np.float64), want, rtol=1e-4, atol=1e-5)
    plain_ref = attention_ref(x[0], *weights, 1e4, segments=segments[0])
    assert not np.allclose(attention_ref(x[0], *weights, 1e4, segments=segments[0], **ref),
                           plain_ref, atol=1e-3)
    if name == "olmoe":  # the clipping alone changes the output too
        no_clip = {k: v for k, v in ref.items() if k != "clip"}
        assert not np.allclose(attention_ref(x[0], *weights, 1e4, segments=segments[0],
                                             **no_clip), want, atol=1e-3)


def test_new_options_decode_through_the_cache():
    """All options at once: a 4-token prefill then one token per call equals the full pass."""
    weights, kwargs, _ = _variant({"bias": True, "qk_norm_axes": "all", "clip_qkv": 0.8,
                                   "rope_scaling": YARN}, seed=13)
    run = _jitted(kwargs, jnp.float32)
    weights = [jnp.asarray(w) for w in weights]
    x = jnp.asarray(np.random.default_rng(14).normal(size=(B, S, D)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(S), (B, S))
    full = run(x, weights, positions)
    cache = empty_kv_cache(B, S, 2, H, jnp.float32)
    outs = []
    for start, stop in [(0, 4), *((s, s + 1) for s in range(4, S))]:
        out, cache = run(x[:, start:stop], weights, positions[:, start:stop], cache=cache)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-6)


def test_new_options_gradients():
    """Directional derivative through biases, full-width norms, clipping and YaRN."""
    weights, kwargs, _ = _variant({"bias": True, "qk_norm_axes": "all", "clip_qkv": 0.8,
                                   "rope_scaling": YARN}, seed=15)
    x = np.random.default_rng(16).normal(size=(B, S, D))
    positions = jnp.broadcast_to(jnp.arange(S), (B, S))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                              (x, list(weights), kwargs["bias"], kwargs["qk_norm"][:2]))

        def loss(p):
            out = attention(p[0], *p[1], positions, 1e4, bias=p[2], qk_norm=(*p[3], 1e-5),
                            qk_norm_axes="all", clip_qkv=0.8, rope_scaling=YARN)
            return jnp.sum(jnp.sin(out))

        assert_directional_derivative(loss, params)


def test_attention_module_params_and_errors():
    """Param names, shapes and float32 dtype with every option (bias zeros, norms ones); the
    call is attention() of them; bad options are named."""
    layer = Attention(D, 6, 2, H, rope_theta=1e4, rngs=nnx.Rngs(0), qk_norm=True,
                      qk_norm_axes="all", qkv_bias=True, clip_qkv=0.8, rope_scaling=YARN)
    state = nnx.state(layer, nnx.Param)
    shapes = {"/".join(map(str, path)): leaf.shape for path, leaf in nnx.to_flat_state(state)}
    assert shapes == {"w_q": (D, 6, H), "w_k": (D, 2, H), "w_v": (D, 2, H), "w_o": (6, H, D),
                      "b_q": (6, H), "b_k": (2, H), "b_v": (2, H), "q_norm/weight": (6 * H,),
                      "k_norm/weight": (2 * H,)}
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state))
    assert not np.asarray(layer.b_q[...]).any()
    x = jnp.asarray(np.random.default_rng(17).normal(size=(1, 3, D)), jnp.float32)
    positions = jnp.arange(3)[None]
    got = nnx.jit(lambda m, x: m(x, positions))(layer, x)
    weights = [getattr(layer, n)[...] for n in ("w_q", "w_k", "w_v", "w_o")]
    want = attention(x, *weights, positions, 1e4, bias=(layer.b_q[...], layer.b_k[...],
                                                        layer.b_v[...]),
                     qk_norm=(layer.q_norm.weight[...], layer.k_norm.weight[...], 1e-5),
                     qk_norm_axes="all", clip_qkv=0.8, rope_scaling=YARN)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for kwargs, named in [({"qk_norm_axes": "both"}, "model.qk_norm_axes='both'; allowed: "
                                                      "head, all"),
                          ({"clip_qkv": 0.0}, r"model.clip_qkv=0.0; allowed: a finite number > 0"),
                          ({"rope_scaling": {"factor": 2.0}},
                           "model.rope_scaling=.*; allowed: None or a RopeScaling")]:
        with pytest.raises(ValueError, match=named):
            Attention(D, 6, 2, H, rope_theta=1e4, rngs=nnx.Rngs(0), **kwargs)
