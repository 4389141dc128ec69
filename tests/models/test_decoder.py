"""The whole decoder against the NumPy reference; records in depth order; gradients; configs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.models.decoder import (
    CartesianFeedForward,
    Decoder,
    DenseFeedForward,
    decoder_spec_from_config,
    layer_stacks,
)
from moejax.models.layout import stack_params, unstack_params
from moejax.moe.deepseek import DeepSeekMoE
from tests.gradcheck import assert_directional_derivative
from tests.moe.block_params import assert_record_matches, f64, routed_params, shared_params
from tests.reference_decoder import decoder_ref

B, S = 2, 7
BASE = {"vocab_size": 19, "d_model": 12, "num_layers": 4, "num_heads": 6, "num_kv_heads": 2,
        "d_ff": 20, "first_dense_layers": 1, "moe_every": 2}


def _spec(block, **overrides):
    moe = {"num_experts": 6, "top_k": 3, "d_hidden": 8}
    if block == "deepseek":
        moe.update(num_experts=3, top_k=1, granularity=2, d_hidden=16, num_shared_experts=1)
    if block == "cartesian":
        moe.update(top_k=2, d_hidden=16, num_shared_experts=1, shared_mix="softmax")
    return decoder_spec_from_config({**BASE, "scan_layers": False, "block": block, "moe": moe,
                                     **overrides})


def _in_layout(model, scan_layers: bool):
    """A copy of `model` (any layout) with the same parameters in the other layout."""
    spec = dataclasses.replace(model.spec, scan_layers=scan_layers)
    other = Decoder(spec, rngs=nnx.Rngs(0))
    state = nnx.state(other, nnx.Param)
    nnx.replace_by_pure_dict(state, stack_params(spec, nnx.to_pure_dict(nnx.state(model,
                                                                                   nnx.Param))))
    nnx.update(other, state)
    return other


def _cartesian_sub_layer_np(sub, rng):
    """A Cartesian sub-layer's weights; the norm and the mix are first made non-trivial."""
    sub.norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, BASE["d_model"]), jnp.float32)
    entry = {"norm": f64(sub.norm.weight), "routed": routed_params(sub.routed), "shared": None}
    if sub.shared is not None:
        sub.shared.mix_kernel[...] = jnp.asarray(rng.normal(size=(BASE["d_model"], 2)),
                                                 jnp.float32)
        sub.shared.mix_bias[...] = jnp.asarray(rng.normal(size=(2,)), jnp.float32)
        entry["shared"], entry["mix_kernel"], entry["mix_bias"] = shared_params(sub.shared)
    return entry


def _params_np(model):
    rng = np.random.default_rng(0)
    layers = []
    for layer in model.layers:
        attn = layer.attn
        entry = {"attn_norm": f64(layer.attn_norm.weight),
                 "attn": tuple(f64(w) for w in (attn.w_q, attn.w_k, attn.w_v, attn.w_o))}
        if attn.q_norm is not None:  # made non-trivial first
            for norm in (attn.q_norm, attn.k_norm):
                norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, norm.weight.shape))
            entry["qk_norm"] = (f64(attn.q_norm.weight), f64(attn.k_norm.weight))
        if isinstance(layer.ffn, CartesianFeedForward):
            entry.update(kind="cartesian",
                         sub_a=_cartesian_sub_layer_np(layer.ffn.block.sub_a, rng),
                         sub_b=_cartesian_sub_layer_np(layer.ffn.block.sub_b, rng))
        elif isinstance(layer.ffn, DenseFeedForward):
            ffn = layer.ffn.ffn
            entry.update(kind="dense", ffn_norm=f64(layer.ffn.norm.weight),
                         ffn=(f64(ffn.w_gate), f64(ffn.w_up), f64(ffn.w_down)))
        elif isinstance(layer.ffn.block, DeepSeekMoE):
            entry.update(kind="deepseek", ffn_norm=f64(layer.ffn.norm.weight),
                         routed=routed_params(layer.ffn.block.routed),
                         shared=shared_params(layer.ffn.block.shared)[0])
        else:
            entry.update(kind="topk", ffn_norm=f64(layer.ffn.norm.weight),
                         routed=routed_params(layer.ffn.block))
        layers.append(entry)
    return {"embed": f64(model.embed.embedding), "final_norm": f64(model.final_norm.weight),
            "head": f64(model.head.kernel), "layers": layers}


@pytest.mark.parametrize("block, disable_top1, qk_norm", [
    ("topk", False, False), ("deepseek", False, False), ("cartesian", False, False),
    ("topk", True, True), ("cartesian", True, False),
])
def test_decoder_matches_reference(block, disable_top1, qk_norm):
    """Logits and every router's record in depth order (two per Cartesian layer), also with
    each router's top-1 expert disabled, and with Qwen3's per-head q/k norms (head_dim 4,
    not d_model / num_heads)."""
    spec = _spec(block, **({"qk_norm": True, "head_dim": 4} if qk_norm else {}))
    model = Decoder(spec, rngs=nnx.Rngs(0))
    params = _params_np(model)
    tokens = np.random.default_rng(1).integers(0, spec.vocab_size, (B, S))
    logits_ref, infos = decoder_ref(tokens, params, spec, disable_top1=disable_top1)
    assert [spec.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    routers = 4 if block == "cartesian" else 2
    for layout in (model, _in_layout(model, scan_layers=True)):
        logits, record = layout(jnp.asarray(tokens), disable_top1=disable_top1)
        np.testing.assert_allclose(np.asarray(logits, np.float64), logits_ref, rtol=2e-4,
                                   atol=2e-4)
        assert record.expert_idx.shape[0] == routers == len(infos) == spec.num_routers
        for r, info in enumerate(infos):  # depth order
            assert_record_matches(record, r, info, rtol=1e-4)


def test_scanned_layers_equal_unrolled(block="cartesian"):
    """Six layers = one dense, two repeats of (MoE, dense), one MoE: the scanned stacks give
    the unrolled model's logits, records in depth order (two routers per Cartesian layer)
    and gradients; the parameter dict converts both ways exactly."""
    spec = _spec(block, num_layers=6)
    assert layer_stacks(dataclasses.replace(spec, scan_layers=True)) == (
        (0, 1, 1), (1, 2, 2), (5, 1, 1))
    unrolled = Decoder(spec, rngs=nnx.Rngs(0))
    scanned = _in_layout(unrolled, scan_layers=True)
    assert scanned.stacks[1].layers[0].attn.w_q.shape == (2, 12, 6, 2)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, spec.vocab_size, (B, S)))

    def loss(model):
        logits, record = model(tokens)
        return jnp.mean(jnp.sin(logits)) + jnp.mean(record.probs**2), (logits, record)

    grad_fn = nnx.jit(nnx.grad(loss, has_aux=True))
    (grads_u, (logits_u, record_u)), (grads_s, (logits_s, record_s)) = (
        grad_fn(unrolled), grad_fn(scanned))
    np.testing.assert_allclose(logits_s, logits_u, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(record_s), jax.tree.leaves(record_u), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    grads_s = unstack_params(spec, nnx.to_pure_dict(grads_s))
    for path, want in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads_u)):
        got = functools.reduce(lambda tree, key: tree[key.key], path, grads_s)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=str(path))
    back = unstack_params(spec, nnx.to_pure_dict(nnx.state(scanned, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, back,
                 nnx.to_pure_dict(nnx.state(unrolled, nnx.Param)))


def test_decoder_gradient_finite_difference():
    spec = decoder_spec_from_config({**BASE, "dtype": "float64", "qk_norm": True,
                                     "moe": {"num_experts": 6, "top_k": 3, "d_hidden": 8}})
    model = Decoder(spec, rngs=nnx.Rngs(2))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 19, (B, S)))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)

        def loss(params):
            logits, record = nnx.merge(graphdef, params)(tokens)
            return jnp.mean(jnp.sin(logits)) + jnp.mean(record.probs**2)

        assert_directional_derivative(loss, params, seed=4, eps=1e-5)


def test_bfloat16_close_to_float32():
    spec = _spec("topk")
    model = Decoder(spec, rngs=nnx.Rngs(6))
    tokens = jnp.asarray(np.random.default_rng(7).integers(0, 19, (B, S)))
    logits32, _ = model(tokens)
    model16 = Decoder(decoder_spec_from_config({**BASE, "dtype": "bfloat16", "scan_layers": False,
                                                "moe": {"num_experts": 6, "top_k": 3,
                                                        "d_hidden": 8}}), rngs=nnx.Rngs(6))
    logits16, _ = model16(tokens)
    assert logits16.dtype == jnp.float32
    error = np.abs(np.asarray(logits16) - np.asarray(logits32))
    # measured 0.034 (logits up to 3.5, median 0.8): twice that, and bf16 really ran
    assert 1e-4 < error.max() < 0.07, error.max()


@pytest.mark.parametrize("overrides, match", [
    ({"moe": {"foo": 1}}, "model.moe.foo"),
    ({"bar": 1}, "model.bar"),
    ({"moe": {"router": {"baz": 1}}}, "model.moe.router.baz"),
    ({"block": "nope"}, "model.block"),
    ({"dtype": "float16"}, "model.dtype"),
    ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads=3"),
    ({"d_model": 10, "num_heads": 4, "num_kv_heads": 1}, "d_model=10"),
    ({"head_dim": 5}, r"model.head_dim=5 must be even \(RoPE"),
    ({"first_dense_layers": 5}, "first_dense_layers=5"),
    ({"moe": {"num_experts": 4, "top_k": 5}}, "moe.top_k=5"),
    ({"remat": "dots"}, "model.remat='dots'; allowed: none, full, save_dots_except_experts"),
    ({"attention": "flash"}, "model.attention='flash'; allowed: xla, cudnn"),
])
def test_invalid_config_names_the_option(overrides, match):
    with pytest.raises(ValueError, match=match):
        decoder_spec_from_config({**BASE, **overrides})


def test_packed_documents_give_each_documents_own_logits():
    """Two documents packed in one row (segments 1, 2) give the logits, per token, of each
    document run alone: no attention across the boundary, positions restart (dropless MoE:
    routing is per token)."""
    spec = decoder_spec_from_config({**BASE, "num_layers": 2, "first_dense_layers": 0,
                                     "moe_every": 1, "moe": {"num_experts": 4, "top_k": 2,
                                                             "d_hidden": 8}})
    model = Decoder(spec, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(4)
    first, second = rng.integers(0, 19, (1, 3)), rng.integers(0, 19, (1, 4))
    packed = jnp.asarray(np.concatenate([first, second], axis=1), jnp.int32)
    segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2]], jnp.int32)
    run = nnx.jit(lambda model, tokens, segments: model(tokens, segments=segments)[0])
    logits = run(model, packed, segments)
    alone = [run(model, jnp.asarray(doc, jnp.int32), None) for doc in (first, second)]
    np.testing.assert_allclose(logits[:, :3], alone[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[:, 3:], alone[1], rtol=1e-5, atol=1e-5)
    unmasked = run(model, packed, None)  # one document: the second part sees the first
    assert not np.allclose(unmasked[:, 3:], alone[1], atol=1e-3)


def test_remat_policies_give_the_same_gradients():
    """Rematerialisation changes what the backward keeps, never what it computes: every policy
    gives the gradients of no remat, through MoE and dense layers, regularizers included."""
    from moejax.regularizers import LossSpec
    from moejax.train import step

    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 19, (2, 8)), jnp.int32)
    grads = {}
    for remat in ("none", "full", "save_dots_except_experts"):
        spec = decoder_spec_from_config({**BASE, "num_layers": 2, "remat": remat,
                                         "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8,
                                                 "record_cosine": True}})
        model = Decoder(spec, rngs=nnx.Rngs(6))
        graphdef, state = nnx.split(model)

        def loss(state):
            model = nnx.merge(graphdef, state)
            return step._loss_fn(model, tokens, LossSpec(lb=0.01, sp=0.1))[0]

        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(state))
        assert jaxpr.count("remat") == (0 if remat == "none" else 2)  # one per layer
        grads[remat] = jax.tree.leaves(jax.jit(jax.grad(loss))(state))
    for remat in ("full", "save_dots_except_experts"):
        for got, want in zip(grads[remat], grads["none"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
