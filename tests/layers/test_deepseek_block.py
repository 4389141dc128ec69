"""DeepSeekMoE: fine-grained routed experts plus shared experts, against the oracle."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.layers.deepseek_block import DeepSeekMoE
from moejax.layers.moe_block import MoESpec
from tests.layers.block_params import routed_params, shared_params
from tests.reference import dense_swiglu_ref, moe_ref, shared_mix_ref

T, D = 37, 10


@pytest.mark.parametrize("mix", ["sum", "softmax"])
def test_matches_reference(mix):
    spec = MoESpec(num_experts=3, top_k=1, d_hidden=16, granularity=2, num_shared_experts=2,
                   shared_mix=mix)
    block = DeepSeekMoE(D, spec, rngs=nnx.Rngs(0))
    if mix == "softmax":  # non-trivial mix weights
        block.shared.mix_kernel[...] = jnp.asarray(
            np.random.default_rng(1).normal(size=(D, 2)).astype(np.float32))
    x = np.random.default_rng(2).normal(size=(T, D)).astype(np.float32)
    y, record = block(jnp.asarray(x))
    w_router, w_gate, w_up, w_down = routed_params(block.routed)
    assert w_gate.shape == (6, D, 8) and record.expert_idx.shape == (1, T, 2)
    routed, _ = moe_ref(x, w_router, w_gate, w_up, w_down, top_k=2)
    (s_gate, s_up, s_down), mix_kernel, mix_bias = shared_params(block.shared)
    assert s_gate.shape == (D, 16)  # two shared experts of width 8
    y_ref = shared_mix_ref(routed, dense_swiglu_ref(x, s_gate, s_up, s_down), x,
                           mix_kernel, mix_bias)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=1e-4, atol=1e-5)


def test_needs_shared_experts():
    with pytest.raises(ValueError, match="num_shared_experts"):
        DeepSeekMoE(D, MoESpec(num_shared_experts=0), rngs=nnx.Rngs(0))
