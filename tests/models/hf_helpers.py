"""Shared by the HF tests: a tiny Mixtral spec and a random state dict in HF's layout."""

import pathlib

import numpy as np

from moejax.models.decoder import DecoderSpec
from moejax.moe.spec import MoESpec

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"  # make_hf_fixtures.py
B, S = 2, 7
SPEC = DecoderSpec(vocab_size=13, d_model=12, num_layers=2, num_heads=6, num_kv_heads=2,
                   head_dim=4, rope_theta=500.0, norm_eps=1e-5, scan_layers=False,
                   moe=MoESpec(num_experts=5, top_k=2, d_hidden=8))
N, K, H, D, E, F = 6, 2, 4, 12, 5, 8


def hf_state_dict(seed=0, spec=SPEC, num_experts=E):
    """Random float32 tensors with HF MixtralForCausalLM names and torch [out, in] shapes."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.3):
        return (scale * rng.normal(size=shape)).astype(np.float32)

    d, v = spec.d_model, spec.vocab_size
    sd = {"model.embed_tokens.weight": normal(v, d, scale=1.0)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1.0 + normal(d, scale=0.2)
        sd[p + "self_attn.q_proj.weight"] = normal(N * H, d)
        sd[p + "self_attn.k_proj.weight"] = normal(K * H, d)
        sd[p + "self_attn.v_proj.weight"] = normal(K * H, d)
        sd[p + "self_attn.o_proj.weight"] = normal(d, N * H)
        sd[p + "post_attention_layernorm.weight"] = 1.0 + normal(d, scale=0.2)
        sd[p + "block_sparse_moe.gate.weight"] = normal(num_experts, d, scale=1.0)
        for e in range(num_experts):
            q = f"{p}block_sparse_moe.experts.{e}."
            sd[q + "w1.weight"], sd[q + "w3.weight"] = normal(F, d), normal(F, d)
            sd[q + "w2.weight"] = normal(d, F)
    sd["model.norm.weight"] = 1.0 + normal(d, scale=0.2)
    sd["lm_head.weight"] = normal(v, d)
    return sd
