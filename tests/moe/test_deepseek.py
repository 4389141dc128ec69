"""DeepSeekMoE: fine-grained routed experts plus shared experts, against the oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.moe.deepseek import DeepSeekMoE
from moejax.moe.spec import MoESpec
from tests.moe.block_params import assert_record_matches, routed_params, shared_params
from tests.reference import dense_swiglu_ref, moe_ref, shared_mix_ref

T, D = 37, 10
NUM_EXPERTS, TOP_K, D_HIDDEN, GRANULARITY, NUM_SHARED = 3, 1, 16, 2, 2
ROUTED_E, ROUTED_K, ROUTED_F = 6, 2, 8  # m*E experts of width F/m, m*k chosen


def _spec(**overrides):
    options = dict(num_experts=NUM_EXPERTS, top_k=TOP_K, d_hidden=D_HIDDEN,
                   granularity=GRANULARITY, num_shared_experts=NUM_SHARED)
    return MoESpec(**{**options, **overrides})


def _x(seed=2):
    return np.random.default_rng(seed).normal(size=(T, D)).astype(np.float32)


def _reference(block, x, capacity=None, **router_options):
    """Oracle output: routed experts (moe_ref) joined with the shared SwiGLU sum."""
    routed, info = moe_ref(x, *routed_params(block.routed), top_k=ROUTED_K, capacity=capacity,
                           **router_options)
    (s_gate, s_up, s_down), mix_kernel, mix_bias = shared_params(block.shared)
    shared = dense_swiglu_ref(x, s_gate, s_up, s_down)
    return shared_mix_ref(routed, shared, x, mix_kernel, mix_bias), info


@pytest.mark.parametrize("mix", ["sum", "softmax"])
def test_matches_reference(mix):
    block = DeepSeekMoE(D, _spec(shared_mix=mix), rngs=nnx.Rngs(0))
    if mix == "softmax":  # non-trivial mix weights
        block.shared.mix_kernel[...] = jnp.asarray(
            np.random.default_rng(1).normal(size=(D, 2)).astype(np.float32))
        block.shared.mix_bias[...] = jnp.asarray([0.3, -0.2], jnp.float32)
    x = _x()
    y, record = block(jnp.asarray(x))
    y_ref, info = _reference(block, x)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(record.expert_idx[0], info["expert_idx"])
    np.testing.assert_allclose(record.gates[0], info["gates"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(record.tokens_per_expert[0], info["tokens_per_expert"])
    # the shared experts really contribute: without them the output differs
    routed_only = moe_ref(x, *routed_params(block.routed), top_k=ROUTED_K)[0]
    assert np.abs(y_ref - routed_only).max() > 1e-2


def test_disable_top1_reaches_the_routed_experts():
    """The robustness test on DeepSeekMoE: routed experts re-picked without each token's
    first choice, shared experts unchanged (the whole record against the oracle)."""
    block = DeepSeekMoE(D, _spec(), rngs=nnx.Rngs(7))
    x = _x(3)
    _, normal = block(jnp.asarray(x))
    y, record = block(jnp.asarray(x), disable_top1=True)
    y_ref, info = _reference(block, x, disable_top1=True)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=1e-4, atol=1e-5)
    assert_record_matches(record, 0, info)
    first = np.asarray(normal.expert_idx[0, :, :1])
    assert not np.any(np.asarray(record.expert_idx[0]) == first)


def test_fine_grained_and_shared_sizes():
    spec = _spec()
    assert (spec.routed_experts, spec.routed_top_k, spec.routed_d_hidden) == (
        NUM_EXPERTS * GRANULARITY, TOP_K * GRANULARITY, D_HIDDEN // GRANULARITY)
    block = DeepSeekMoE(D, spec, rngs=nnx.Rngs(3))
    assert block.routed.experts.w_gate[...].shape == (ROUTED_E, D, ROUTED_F)
    assert block.routed.experts.w_down[...].shape == (ROUTED_E, ROUTED_F, D)
    assert block.routed.router.kernel[...].shape == (D, ROUTED_E)
    ffn = block.shared.ffn  # S shared experts stored as one SwiGLU of width S * F/m
    assert ffn.w_gate[...].shape == ffn.w_up[...].shape == (D, NUM_SHARED * ROUTED_F)
    assert ffn.w_down[...].shape == (NUM_SHARED * ROUTED_F, D)
    _, record = block(jnp.asarray(_x()))
    assert record.expert_idx.shape == record.gates.shape == (1, T, ROUTED_K)
    assert record.probs.shape == (1, T, ROUTED_E)
    assert int(record.num_experts[0]) == ROUTED_E and int(record.top_k[0]) == ROUTED_K


def test_shared_d_hidden_and_capacity():
    spec = _spec(shared_d_hidden=5, engine="capacity", capacity_factor=0.5)
    block = DeepSeekMoE(D, spec, rngs=nnx.Rngs(4))
    assert block.shared.ffn.w_gate[...].shape == (D, NUM_SHARED * 5)
    x = _x(5)
    y, record = block(jnp.asarray(x))
    capacity = int(np.ceil(0.5 * T * ROUTED_K / ROUTED_E))
    y_ref, info = _reference(block, x, capacity)
    assert info["dropped"] > 0 and int(record.dropped[0]) == info["dropped"]
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=1e-4, atol=1e-5)


def test_needs_shared_experts():
    with pytest.raises(ValueError, match="num_shared_experts"):
        DeepSeekMoE(D, MoESpec(num_shared_experts=0), rngs=nnx.Rngs(0))


def test_gradients_float64():
    block = DeepSeekMoE(D, _spec(), rngs=nnx.Rngs(6))
    graphdef, params = nnx.split(block, nnx.Param)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(_x(8), jnp.float64)
        rng = np.random.default_rng(9)
        direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
        dx = jnp.asarray(rng.normal(size=x.shape))

        def loss(params, x):
            y, _ = nnx.merge(graphdef, params)(x)
            return jnp.sum(jnp.sin(y))

        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
        loss = jax.jit(loss)
        eps = 1e-6
        plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
        minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
        numeric = (loss(plus, x + eps * dx) - loss(minus, x - eps * dx)) / (2 * eps)
        analytic = jnp.vdot(grads[1], dx) + sum(
            jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(direction)))
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-8)
        # every parameter gets a gradient (the shared experts and the router included)
        for path, g in jax.tree_util.tree_leaves_with_path(grads[0]):
            assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)
