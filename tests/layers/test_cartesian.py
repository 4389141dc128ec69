"""CartesianMoE against a NumPy reference of the whole layer (methods.md section 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.layers.cartesian import CartesianMoE
from moejax.layers.moe_block import MoESpec
from tests.layers.block_params import f64, routed_params, shared_params
from tests.reference import dense_swiglu_ref, moe_ref, rms_norm_ref, shared_mix_ref

T, D, N, K = 37, 10, 6, 2


def _randomize_mix(layer, seed):
    rng = np.random.default_rng(seed)
    for sub in (layer.sub_a, layer.sub_b):
        if sub.shared is not None:
            sub.shared.mix_kernel[...] = jnp.asarray(rng.normal(size=(D, 2)).astype(np.float32))
            sub.shared.mix_bias[...] = jnp.asarray(rng.normal(size=(2,)).astype(np.float32))
            sub.norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, D).astype(np.float32))


def _sub_layer_ref(x, sub, top_k, **router_options):
    u = rms_norm_ref(x, f64(sub.norm.weight))
    m, info = moe_ref(u.astype(np.float32), *routed_params(sub.routed), top_k=top_k,
                      **router_options)
    if sub.shared is not None:
        weights, mix_kernel, mix_bias = shared_params(sub.shared)
        m = shared_mix_ref(m, dense_swiglu_ref(u, *weights), u, mix_kernel, mix_bias)
    return x + m, info


def cartesian_ref(x, layer, top_k):
    h, info_a = _sub_layer_ref(np.asarray(x, np.float64), layer.sub_a, top_k)
    y, info_b = _sub_layer_ref(h, layer.sub_b, top_k)
    return y, (info_a, info_b)


@pytest.mark.parametrize("shared", [0, 1])
@pytest.mark.parametrize("engine", ["dense", "dropless"])
def test_layer_matches_reference(shared, engine):
    spec = MoESpec(num_experts=N, top_k=K, d_hidden=16, num_shared_experts=shared,
                   shared_mix="softmax", engine=engine)
    layer = CartesianMoE(D, spec, rngs=nnx.Rngs(0))
    _randomize_mix(layer, 1)
    x = np.random.default_rng(2).normal(size=(T, D)).astype(np.float32)
    y, record = layer(jnp.asarray(x))
    y_ref, (info_a, info_b) = cartesian_ref(x, layer, K)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=2e-4, atol=2e-4)
    assert layer.sub_a.routed.experts.w_gate.shape == (N, D, 8)  # half-width sub-experts
    assert record.expert_idx.shape == (2, T, K)  # two routers, A then B
    np.testing.assert_array_equal(record.expert_idx[0], info_a["expert_idx"])
    np.testing.assert_array_equal(record.expert_idx[1], info_b["expert_idx"])


def test_top1_without_shared_is_the_explicit_composite():
    spec = MoESpec(num_experts=N, top_k=1, d_hidden=16)
    layer = CartesianMoE(D, spec, rngs=nnx.Rngs(3))
    x = np.random.default_rng(4).normal(size=(T, D)).astype(np.float32)
    y, record = layer(jnp.asarray(x))

    def expert(sub, e, v):
        _, w_gate, w_up, w_down = routed_params(sub.routed)
        return dense_swiglu_ref(v, w_gate[e], w_up[e], w_down[e])

    for t in range(T):
        a, b = int(record.expert_idx[0, t, 0]), int(record.expert_idx[1, t, 0])
        x_t = x[t:t + 1].astype(np.float64)
        h = x_t + expert(layer.sub_a, a, rms_norm_ref(x_t, f64(layer.sub_a.norm.weight)))
        y_t = h + expert(layer.sub_b, b, rms_norm_ref(h, f64(layer.sub_b.norm.weight)))
        np.testing.assert_allclose(np.asarray(y[t], np.float64), y_t[0], rtol=1e-4, atol=1e-5)


def test_disable_top1_picks_the_next_experts():
    spec = MoESpec(num_experts=N, top_k=K, d_hidden=16, num_shared_experts=1)
    layer = CartesianMoE(D, spec, rngs=nnx.Rngs(5))
    x = np.random.default_rng(6).normal(size=(T, D)).astype(np.float32)
    _, normal = layer(jnp.asarray(x))
    _, robust = layer(jnp.asarray(x), disable_top1=True)
    first_a = np.asarray(normal.expert_idx[0, :, 0])
    exclude = np.zeros((T, N), bool)
    exclude[np.arange(T), first_a] = True
    y_a, info = _sub_layer_ref(x.astype(np.float64), layer.sub_a, K, exclude=exclude)
    np.testing.assert_array_equal(robust.expert_idx[0], info["expert_idx"])
    assert not np.any(np.asarray(robust.expert_idx[0]) == first_a[:, None])


def test_gradients_finite_difference():
    spec = MoESpec(num_experts=N, top_k=K, d_hidden=16, num_shared_experts=1,
                   shared_mix="softmax")
    layer = CartesianMoE(D, spec, rngs=nnx.Rngs(7))
    graphdef, params = nnx.split(layer, nnx.Param)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(np.random.default_rng(8).normal(size=(T, D)))
        direction = jax.tree.map(
            lambda a: jnp.asarray(np.random.default_rng(9).normal(size=a.shape)), params)

        def loss(params):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x)[0]))

        grads = jax.grad(loss)(params)
        eps = 1e-6
        numeric = (loss(jax.tree.map(lambda p, d: p + eps * d, params, direction))
                   - loss(jax.tree.map(lambda p, d: p - eps * d, params, direction))) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                      jax.tree.leaves(direction)))
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)
