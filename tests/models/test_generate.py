"""moejax.generate: the KV-cache decoder against the cache-free forward, and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import moejax
from moejax.layers.attention import KVCache
from moejax.layers.mla import MLACache
from moejax.models.decoder import Decoder, decoder_spec_from_config, layer_stacks
from moejax.models.generate import cache_bytes, init_cache, top_p_filter

SPEC = {"vocab_size": 23, "d_model": 16, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2,
        "d_ff": 24, "first_dense_layers": 1,
        "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8}}


@pytest.mark.parametrize("block, scan_layers", [("topk", True), ("cartesian", False)])
def test_greedy_equals_argmax_of_the_cache_free_forward(block, scan_layers):
    """Each new token is the argmax of the full forward over everything before it, and its
    expert choices are the full forward's at its position (a dense first layer included)."""
    spec = decoder_spec_from_config(dict(SPEC, block=block, scan_layers=scan_layers))
    model = Decoder(spec, rngs=nnx.Rngs(1))
    before = nnx.state(model)
    prompt = np.random.default_rng(0).integers(0, 23, (2, 5))
    out = moejax.generate(model, prompt, max_new_tokens=6)
    np.testing.assert_array_equal(out.tokens[:, :5], prompt)
    # causal: the full forward over the output sees at each position only what came before
    logits, record = nnx.jit(lambda m, t: m(t))(model, out.tokens)
    np.testing.assert_array_equal(out.tokens[:, 5:], jnp.argmax(logits[:, 4:-1], -1))
    routers = spec.num_routers
    want = np.asarray(record.expert_idx).reshape(routers, 2, 11, -1)[:, :, 5:]
    assert out.expert_idx.shape == (2, 6, routers, want.shape[-1])
    np.testing.assert_array_equal(out.expert_idx, want.transpose(1, 2, 0, 3))
    # the cache was an argument: the model holds none afterwards and is unchanged
    assert jax.tree.structure(nnx.state(model)) == jax.tree.structure(before)
    for got, was in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(got, was)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_prefill_through_an_explicit_cache_equals_the_cache_free_forward(scan_layers):
    """`Decoder.__call__(..., cache=init_cache(...))` returns the cache-free logits and the
    cache filled up to the prompt: one KVCache per layer, stacked like the parameters when
    scanned; a cache of the wrong structure is named."""
    spec = decoder_spec_from_config(dict(SPEC, scan_layers=scan_layers))
    model = Decoder(spec, rngs=nnx.Rngs(2))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 23, (2, 5)), jnp.int32)
    logits, record, cache = model(tokens, cache=init_cache(spec, 2, 8, jnp.float32))
    want_logits, want_record = model(tokens)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(record.expert_idx, want_record.expert_idx)
    if scan_layers:  # per stack, per layer of its unit: [repeats, B, M, K, H]
        shapes = [[(repeats, 2, 8, 2, 4)] * unit for _, unit, repeats in layer_stacks(spec)]
        assert [[c.k.shape for c in stack] for stack in cache] == shapes
    else:
        assert [c.k.shape for c in cache] == [(2, 8, 2, 4)] * spec.num_layers
    for layer in jax.tree.leaves(cache, is_leaf=lambda c: isinstance(c, KVCache)):
        assert (np.asarray(layer.index) == 5).all()
        assert np.abs(np.asarray(layer.k)[..., :5, :, :]).min() > 0
        assert not np.asarray(layer.v)[..., 5:, :, :].any()
    with pytest.raises(ValueError, match="cache has 1 entries; allowed: "):
        model(tokens, cache=cache[:1])


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.random.default_rng(2).normal(size=(3, 9)).astype(np.float32) * 2
    got = np.asarray(top_p_filter(jnp.asarray(logits), 0.7))
    for row, kept in zip(logits, got, strict=True):
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        total, want = 0.0, np.full(row.shape, -np.inf)
        for i in sorted(range(len(row)), key=lambda i: -probs[i]):  # plain loop reference
            if total >= 0.7:
                break
            want[i], total = row[i], total + probs[i]
        np.testing.assert_allclose(kept, want, rtol=1e-6)


def test_sampling_is_seeded_and_bad_options_are_named():
    model = Decoder(decoder_spec_from_config(SPEC), rngs=nnx.Rngs(0))
    prompt = jnp.zeros((2, 3), jnp.int32)
    a = moejax.generate(model, prompt, 8, temperature=1.0, top_p=0.9, seed=4).tokens
    b = moejax.generate(model, prompt, 8, temperature=1.0, top_p=0.9, seed=4).tokens
    c = moejax.generate(model, prompt, 8, temperature=1.0, top_p=0.9, seed=5).tokens
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.shape == (2, 11) and int(a.max()) < 23
    for kwargs, named in [({"max_new_tokens": 0}, "max_new_tokens=0"),
                          ({"temperature": -1.0}, "temperature=-1.0"),
                          ({"top_p": 0.0}, "top_p=0.0")]:
        with pytest.raises(ValueError, match=named):
            moejax.generate(model, prompt, **{"max_new_tokens": 2, **kwargs})
    with pytest.raises(ValueError, match=r"prompt ids must lie in \[0, 23\)"):
        moejax.generate(model, jnp.full((1, 2), 23), 2)
    assert jax.tree.leaves(nnx.state(model, nnx.Cache)) == []


MLA_SPEC = dict(SPEC, num_layers=1, first_dense_layers=1, d_ff=8,
                mla={"kv_lora_rank": 6, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4,
                     "v_head_dim": 3, "q_lora_rank": 5},
                rope_scaling={"factor": 4.0, "original_max_position_embeddings": 4,
                              "mscale": 1.0, "mscale_all_dim": 1.0})


@pytest.mark.parametrize("scan_layers", [True, False])
def test_mla_greedy_decoding_reads_the_latent_cache(scan_layers):
    """Multi-head Latent Attention with YaRN (dense layers): each new token is the argmax of
    the cache-free forward; the caches are MLACaches of C + R per token, as cache_bytes
    counts them (GQA: 2 K H)."""
    spec = decoder_spec_from_config(dict(MLA_SPEC, scan_layers=scan_layers))
    model = Decoder(spec, rngs=nnx.Rngs(4))
    prompt = np.random.default_rng(5).integers(0, 23, (2, 4))
    out = moejax.generate(model, prompt, max_new_tokens=4)
    logits, _ = nnx.jit(lambda m, t: m(t))(model, out.tokens)
    np.testing.assert_array_equal(out.tokens[:, 4:], jnp.argmax(logits[:, 3:-1], -1))
    assert out.expert_idx is None
    for current, per_token in ((spec, 6 + 4), (decoder_spec_from_config(SPEC), 2 * 2 * 4)):
        leaves = jax.tree.leaves(init_cache(current, 2, 8, jnp.float32),
                                 is_leaf=lambda c: isinstance(c, KVCache | MLACache))
        kind = MLACache if current.mla is not None else KVCache
        assert all(isinstance(c, kind) for c in leaves)
        data = sum(a.nbytes for c in leaves for a in c[:2])  # without the slot indices
        assert cache_bytes(current, 2, 8, 4) == data == current.num_layers * 2 * 8 * per_token * 4
    mla_leaves = jax.tree.leaves(init_cache(spec, 2, 8, jnp.float32),
                                 is_leaf=lambda c: isinstance(c, MLACache))
    lead = (1,) if scan_layers else ()  # a stack of one repeat of one dense layer
    assert [(c.latent.shape, c.k_rope.shape) for c in mla_leaves] == (
        [((*lead, 2, 8, 6), (*lead, 2, 8, 4))])
