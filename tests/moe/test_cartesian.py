"""CartesianMoE against a NumPy reference of the whole layer (docs/methods.md section 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.moe.cartesian import CartesianMoE
from moejax.moe.dispatch import capacity_for
from moejax.moe.spec import MoESpec
from tests.gradcheck import assert_directional_derivative
from tests.moe.block_params import assert_record_matches, f64, routed_params, shared_params
from tests.reference import dense_swiglu_ref, moe_ref, rms_norm_ref, shared_mix_ref

T, D, N, K = 37, 10, 6, 2


def _randomize_mix(layer, seed):
    rng = np.random.default_rng(seed)
    for sub in (layer.sub_a, layer.sub_b):
        if sub.shared is not None:
            sub.shared.mix_kernel[...] = jnp.asarray(rng.normal(size=(D, 2)).astype(np.float32))
            sub.shared.mix_bias[...] = jnp.asarray(rng.normal(size=(2,)).astype(np.float32))
            sub.norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, D).astype(np.float32))


def _sub_layer_ref(x, sub, top_k, capacity=None, **router_options):
    u = rms_norm_ref(x, f64(sub.norm.weight))
    m, info = moe_ref(u.astype(np.float32), *routed_params(sub.routed), top_k=top_k,
                      capacity=capacity, **router_options)
    if sub.shared is not None:
        weights, mix_kernel, mix_bias = shared_params(sub.shared)
        m = shared_mix_ref(m, dense_swiglu_ref(u, *weights), u, mix_kernel, mix_bias)
    return x + m, info


def cartesian_ref(x, layer, top_k, capacity=None, **router_options):
    h, info_a = _sub_layer_ref(np.asarray(x, np.float64), layer.sub_a, top_k, capacity,
                               **router_options)
    y, info_b = _sub_layer_ref(h, layer.sub_b, top_k, capacity, **router_options)
    return y, (info_a, info_b)


@pytest.mark.parametrize("shared", [0, 1])
@pytest.mark.parametrize("engine, capacity_factor", [
    ("dense", 1.0), ("dropless", 1.0), ("capacity", 0.5), ("capacity", float(N)),
])
def test_layer_and_record_match_reference(shared, engine, capacity_factor):
    """Output and both routers' whole records, with and without capacity drops."""
    spec = MoESpec(num_experts=N, top_k=K, d_hidden=16, num_shared_experts=shared,
                   shared_mix="softmax", engine=engine, capacity_factor=capacity_factor,
                   record_cosine=True)
    layer = CartesianMoE(D, spec, rngs=nnx.Rngs(0))
    _randomize_mix(layer, 1)
    x = np.random.default_rng(2).normal(size=(T, D)).astype(np.float32)
    y, record = layer(jnp.asarray(x))
    capacity = capacity_for(T, K, N, capacity_factor) if engine == "capacity" else None
    y_ref, infos = cartesian_ref(x, layer, K, capacity)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=2e-4, atol=2e-4)
    assert layer.sub_a.routed.experts.w_gate.shape == (N, D, 8)  # half-width sub-experts
    assert record.expert_idx.shape == (2, T, K)  # two routers, A then B
    for router, info in enumerate(infos):
        assert_record_matches(record, router, info, rtol=1e-4)
    assert (infos[0]["dropped"] > 0 and infos[1]["dropped"] > 0) == (capacity_factor < 1)


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


def test_disable_top1_reaches_both_routers():
    """Each sub-layer re-picks without each token's first choice, as the oracle does."""
    spec = MoESpec(num_experts=N, top_k=K, d_hidden=16, num_shared_experts=1)
    layer = CartesianMoE(D, spec, rngs=nnx.Rngs(5))
    x = np.random.default_rng(6).normal(size=(T, D)).astype(np.float32)
    _, normal = layer(jnp.asarray(x))
    y, robust = layer(jnp.asarray(x), disable_top1=True)
    y_ref, infos = cartesian_ref(x, layer, K, disable_top1=True)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=2e-4, atol=2e-4)
    for router, info in enumerate(infos):
        assert_record_matches(record=robust, router=router, info=info, rtol=1e-4)
    first_a = np.asarray(normal.expert_idx[0, :, 0])
    assert not np.any(np.asarray(robust.expert_idx[0]) == first_a[:, None])


def test_gradients_finite_difference():
    spec = MoESpec(num_experts=N, top_k=K, d_hidden=16, num_shared_experts=1,
                   shared_mix="softmax")
    layer = CartesianMoE(D, spec, rngs=nnx.Rngs(7))
    graphdef, params = nnx.split(layer, nnx.Param)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(np.random.default_rng(8).normal(size=(T, D)))

        def loss(params):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x)[0]))

        assert_directional_derivative(loss, params, seed=9)


def test_losses_on_mixed_cartesian_and_topk_records_match_numpy():
    """A top-k layer (E=8, K=3) then a Cartesian layer (N=6, k=2): three routers, padded."""
    from moejax.moe.topk import TopKMoE
    from moejax.record import concat_records
    from moejax.regularizers import coupling_loss, specialization_loss_from_cosine

    x = np.random.default_rng(10).normal(size=(T, D)).astype(np.float32)
    topk = TopKMoE(D, MoESpec(num_experts=8, top_k=3, d_hidden=8, record_cosine=True),
                   rngs=nnx.Rngs(11))
    cartesian = CartesianMoE(D, MoESpec(num_experts=N, top_k=K, d_hidden=16,
                                        record_cosine=True), rngs=nnx.Rngs(12))
    y, record_topk = topk(jnp.asarray(x))
    _, record_cart = cartesian(jnp.asarray(x) + y)
    record = concat_records([record_topk, record_cart])
    assert record.probs.shape == (3, T, 8) and record.expert_idx.shape == (3, T, 3)

    _, info_topk = moe_ref(x, *routed_params(topk), top_k=3)
    h = x.astype(np.float64) + np.asarray(y, np.float64)
    h_a, info_a = _sub_layer_ref(h, cartesian.sub_a, K)
    _, info_b = _sub_layer_ref(h_a, cartesian.sub_b, K)
    infos = [info_topk, info_a, info_b]
    mass = [np.array([info["probs"][t, info["expert_idx"][t]].sum() for t in range(T)])
            for info in infos]
    coupling_ref = [-np.mean(mass[i] * mass[i + 1]) for i in range(2)]
    special_ref = []
    for info in infos:
        k = info["expert_idx"].shape[1]
        cos = info["pair_cos"]
        special_ref.append(np.mean([(cos[t] ** 2).sum() - np.trace(cos[t] ** 2)
                                    for t in range(T)]) / (k * (k - 1)))
    cp, cp_pairs = coupling_loss(record.probs, record.expert_idx)
    sp, sp_routers = specialization_loss_from_cosine(record.pair_cos, top_k=record.top_k)
    np.testing.assert_allclose(cp_pairs, coupling_ref, rtol=1e-4)
    np.testing.assert_allclose(sp_routers, special_ref, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(float(cp), np.mean(coupling_ref), rtol=1e-4)
    np.testing.assert_allclose(float(sp), np.mean(special_ref), rtol=1e-3, atol=1e-6)
