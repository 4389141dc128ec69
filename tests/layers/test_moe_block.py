"""TopKMoE against the oracle: output, routing record, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.layers.dispatch import capacity_for
from moejax.layers.moe_block import MoESpec, TopKMoE
from tests.layers.block_params import routed_params
from tests.reference import moe_ref

T, D, E, K, F = 37, 10, 6, 3, 12


def _x(seed=0):
    return np.random.default_rng(seed).normal(size=(T, D)).astype(np.float32)


@pytest.mark.parametrize("engine", ["dense", "capacity", "dropless"])
@pytest.mark.parametrize("capacity_factor", [0.6, 4.0])
def test_block_and_record_match_reference(engine, capacity_factor):
    spec = MoESpec(num_experts=E, top_k=K, d_hidden=F, engine=engine,
                   capacity_factor=capacity_factor, record_cosine=True)
    block = TopKMoE(D, spec, rngs=nnx.Rngs(1))
    x = _x()
    y, record = block(jnp.asarray(x))
    capacity = capacity_for(T, K, E, capacity_factor) if engine == "capacity" else None
    y_ref, info = moe_ref(x, *routed_params(block), top_k=K, capacity=capacity)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=1e-4, atol=1e-5)
    assert record.logits.shape == (1, T, E) and record.pair_cos.shape == (1, T, K, K)
    np.testing.assert_allclose(record.probs[0], info["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(record.expert_idx[0], info["expert_idx"])
    np.testing.assert_array_equal(record.tokens_per_expert[0], info["tokens_per_expert"])
    np.testing.assert_array_equal(record.kept[0], info["kept"])
    assert int(record.dropped[0]) == info["dropped"]
    assert int(record.num_experts[0]) == E and int(record.top_k[0]) == K
    gates_ref = np.where(info["kept"], info["gates"], 0.0)
    np.testing.assert_allclose(record.gates[0], gates_ref, rtol=1e-5, atol=1e-6)
    cos_ref = np.where(info["kept"][:, :, None] & info["kept"][:, None, :], info["pair_cos"], 0)
    np.testing.assert_allclose(record.pair_cos[0], cos_ref, rtol=1e-4, atol=1e-5)


def test_output_cosine_source():
    spec = MoESpec(num_experts=E, top_k=K, d_hidden=F, record_cosine=True,
                   cosine_source="output")
    block = TopKMoE(D, spec, rngs=nnx.Rngs(2))
    x = _x(1)
    _, record = block(jnp.asarray(x))
    w_router, w_gate, w_up, w_down = routed_params(block)
    _, info = moe_ref(x, w_router, w_gate, w_up, w_down, top_k=K)
    outs = np.einsum("tkf,tkfd->tkd", info["z"], w_down[info["expert_idx"]])
    unit = outs / np.linalg.norm(outs, axis=-1, keepdims=True)
    np.testing.assert_allclose(record.pair_cos[0], np.einsum("tkd,tjd->tkj", unit, unit),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", ["capacity", "dropless"])
def test_block_gradients_float64(engine):
    spec = MoESpec(num_experts=E, top_k=K, d_hidden=F, engine=engine, capacity_factor=0.8)
    block = TopKMoE(D, spec, rngs=nnx.Rngs(3))
    graphdef, params = nnx.split(block, nnx.Param)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(_x(2), jnp.float64)
        direction = jax.tree.map(lambda a: jnp.asarray(
            np.random.default_rng(4).normal(size=a.shape)), params)
        dx = jnp.asarray(np.random.default_rng(5).normal(size=x.shape))

        def loss(params, x):
            y, _ = nnx.merge(graphdef, params)(x)
            return jnp.sum(jnp.sin(y))

        grads = jax.grad(loss, argnums=(0, 1))(params, x)
        eps = 1e-6
        shift = lambda s: (jax.tree.map(lambda p, d: p + s * d, params, direction), x + s * dx)
        numeric = (loss(*shift(eps)) - loss(*shift(-eps))) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads[0]),
                                                      jax.tree.leaves(direction)))
        analytic = analytic + jnp.vdot(grads[1], dx)
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


def test_bfloat16_close_to_float32():
    spec = MoESpec(num_experts=E, top_k=K, d_hidden=F)
    block = TopKMoE(D, spec, rngs=nnx.Rngs(4))
    x = jnp.asarray(_x(3))
    y32, record32 = block(x)
    y16, record16 = block(x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16 and record16.probs.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=0.1, atol=0.1)
