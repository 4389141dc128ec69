"""moejax.generate: the KV-cache decoder against the cache-free forward, and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import moejax
from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.models.generate import top_p_filter

SPEC = {"vocab_size": 23, "d_model": 16, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2,
        "d_ff": 24, "first_dense_layers": 1,
        "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8}}


@pytest.mark.parametrize("block, scan_layers", [("topk", True), ("cartesian", False)])
def test_greedy_equals_argmax_of_the_cache_free_forward(block, scan_layers):
    """Each new token is the argmax of the full forward over everything before it, and its
    expert choices are the full forward's at its position (a dense first layer included)."""
    spec = decoder_spec_from_config(dict(SPEC, block=block, scan_layers=scan_layers))
    model = Decoder(spec, rngs=nnx.Rngs(1))
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
    assert not any(hasattr(node, "cache_k") for _, node in nnx.iter_graph(model))


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
