"""The sigmoid-gated shared expert (Qwen2-MoE) and the regularizers' gradients under sigmoid
routing and gating, against the NumPy oracle."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.moe.combine import mix_shared
from moejax.moe.deepseek import DeepSeekMoE
from moejax.moe.router import RouterSpec
from moejax.moe.shared import SharedExperts
from moejax.moe.spec import MoESpec
from moejax.record import concat_records
from moejax.regularizers import LossSpec, aux_total
from tests.gradcheck import assert_directional_derivative
from tests.moe.block_params import f64, routed_params
from tests.reference import dense_swiglu_ref, moe_ref, rms_norm_ref, shared_mix_ref
from tests.reference_decoder import _ffn_ref

T, D = 23, 10
ROUTED_K = 2  # top_k 1 x granularity 2, over 3 x 2 = 6 routed experts


def _spec(**overrides):
    options = dict(num_experts=3, top_k=1, d_hidden=16, granularity=2, num_shared_experts=2,
                   shared_mix="sigmoid")
    return MoESpec(**{**options, **overrides})


def _x(seed=2):
    return np.random.default_rng(seed).normal(size=(T, D)).astype(np.float32)


def _gated_block(seed=0, **overrides):
    """A sigmoid-gated DeepSeekMoE block whose gate weights are not zero."""
    block = DeepSeekMoE(D, _spec(**overrides), rngs=nnx.Rngs(seed))
    kernel = np.random.default_rng(seed + 1).normal(size=(D, 1)).astype(np.float32)
    block.shared.mix_kernel[...] = jnp.asarray(kernel)
    return block


def _shared_weights(shared):
    return tuple(f64(w) for w in (shared.ffn.w_gate, shared.ffn.w_up, shared.ffn.w_down))


def test_sigmoid_gate_parameters():
    """mix_kernel [D, 1] without bias, zeros at init (a gate of 1/2); nothing for "sum"."""
    shared = SharedExperts(D, 8, "sigmoid", rngs=nnx.Rngs(0))
    assert shared.mix_kernel[...].shape == (D, 1) and shared.mix_bias is None
    assert not np.asarray(shared.mix_kernel[...]).any()
    summed = SharedExperts(D, 8, "sum", rngs=nnx.Rngs(0))
    assert summed.mix_kernel is None and summed.mix_bias is None
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(shared, nnx.Param))}
    assert "mix_kernel" in paths and not any("mix_bias" in p for p in paths)


def test_sigmoid_gated_block_matches_reference():
    """y = routed + sigmoid(u w_c) * shared(u), the routed part with a DeepSeek-V3 router."""
    router = RouterSpec(kind="sigmoid", use_bias=True, num_groups=3, top_groups=2,
                        scaling_factor=2.5)
    block = _gated_block(router=router, engine="dense")
    bias = (0.3 * np.random.default_rng(4).normal(size=(6,))).astype(np.float32)
    block.routed.router.bias[...] = jnp.asarray(bias)
    x = _x()
    y, record = nnx.jit(lambda block, x: block(x))(block, jnp.asarray(x))  # one compile
    routed, info = moe_ref(x, *routed_params(block.routed), top_k=ROUTED_K, kind="sigmoid",
                           bias=bias, num_groups=3, top_groups=2, scaling_factor=2.5)
    shared = dense_swiglu_ref(x, *_shared_weights(block.shared))
    y_ref = shared_mix_ref(routed, shared, x, f64(block.shared.mix_kernel))
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(record.expert_idx[0], info["expert_idx"])
    np.testing.assert_allclose(record.probs[0], info["probs"], rtol=1e-5, atol=1e-6)
    gate = 1 / (1 + np.exp(-(x.astype(np.float64) @ f64(block.shared.mix_kernel))))
    assert gate.min() < 0.2 and gate.max() > 0.8  # the gate really varies per token
    np.testing.assert_allclose(y_ref, routed + gate * shared, rtol=1e-12)


def test_ffn_ref_deepseek_layer_with_mix_kernel():
    """The decoder oracle's MoE sub-layer x + block(RMSNorm(x)) with the sigmoid gate."""
    block = _gated_block(3)
    norm = np.random.default_rng(5).uniform(0.5, 1.5, D)
    x = _x(6)
    u = rms_norm_ref(x, norm)
    y, _ = nnx.jit(lambda block, u: block(u))(block, jnp.asarray(u, jnp.float32))
    layer = {"kind": "deepseek", "ffn_norm": norm, "routed": routed_params(block.routed),
             "shared": _shared_weights(block.shared), "mix_kernel": f64(block.shared.mix_kernel)}
    spec = types.SimpleNamespace(moe=block.routed.spec)
    out, infos = _ffn_ref(layer, x, spec, False)
    np.testing.assert_allclose(out, x + np.asarray(y, np.float64), rtol=1e-4, atol=1e-5)
    del layer["mix_kernel"]  # without it: the plain sum, which differs
    assert np.abs(_ffn_ref(layer, x, spec, False)[0] - out).max() > 1e-2


def test_gate_math_runs_in_float32_for_bfloat16():
    block = _gated_block(7)
    u = jnp.asarray(_x(8), jnp.bfloat16)
    assert block.shared.mix_logits(u).dtype == jnp.float32
    y, _ = nnx.jit(lambda block, u: block(u))(block, u)
    assert y.dtype == jnp.bfloat16


@pytest.mark.parametrize("mix, width, match", [
    ("sigmoid", 2, "mix='sigmoid' needs mix_logits of width 1"),
    ("sum", 1, "mix='sum' needs mix_logits of width 0"),
    ("gelu", 1, "mix='gelu'; allowed: sum, softmax, sigmoid"),
])
def test_mix_shared_checks_its_logits(mix, width, match):
    ones = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=match):
        mix_shared(ones, ones, jnp.ones((3, width)), mix)


def test_shared_mix_option_error():
    with pytest.raises(ValueError, match="moe.shared_mix='gelu'; allowed: sum, softmax, sigmoid"):
        _spec(shared_mix="gelu")


def test_sigmoid_gated_block_gradients_float64():
    """Every parameter, the gate's included, against a central difference in float64."""
    block = _gated_block(9, engine="dense")
    graphdef, params, rest = nnx.split(block, nnx.Param, ...)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(_x(10), jnp.float64)

        def loss(params):
            y, _ = nnx.merge(graphdef, params, rest)(x)
            return jnp.sum(jnp.sin(y))

        assert_directional_derivative(loss, params, rtol=1e-7)

        def gate_loss(kernel):  # a direction along the gate's weights only
            return loss({**params, "shared": {**params["shared"], "mix_kernel": kernel}})

        assert_directional_derivative(gate_loss, params["shared"]["mix_kernel"], rtol=1e-7)


class _TwoLayers(nnx.Module):
    """Two DeepSeekMoE blocks with residuals: the smallest stack the coupling loss reads."""

    def __init__(self, spec: MoESpec, rngs: nnx.Rngs):
        self.first = DeepSeekMoE(D, spec, rngs=rngs)
        self.second = DeepSeekMoE(D, spec, rngs=rngs)

    def __call__(self, x):
        y1, record1 = self.first(x)
        _, record2 = self.second(x + y1)
        return concat_records([record1, record2])


AUX_CASES = {
    "sigmoid_router": dict(shared_mix="sum", router=RouterSpec(
        kind="sigmoid", use_bias=True, num_groups=3, top_groups=2, scaling_factor=2.5)),
    "sigmoid_gate": dict(shared_mix="sigmoid"),
}


@pytest.mark.parametrize("name", sorted(AUX_CASES))
def test_aux_loss_gradients_reach_routers_and_experts(name):
    """lb + sp + cp, assembled as the trainer does (`aux_total`): finite gradients, nonzero on
    both router kernels and on the routed experts' W_gate and W_up. W_down gets one only where
    a later router reads the block's output: sp compares the activations z, its input."""
    model = _TwoLayers(_spec(record_cosine=True, engine="dense", **AUX_CASES[name]),
                       nnx.Rngs(11))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_spec = LossSpec(lb=1e-2, sp=2e-3, cp=1e-3)
    x = jnp.asarray(_x(12))

    def aux(params):
        total, terms = aux_total(nnx.merge(graphdef, params, rest)(x), loss_spec)
        return total, terms

    grads, terms = jax.jit(jax.grad(aux, has_aux=True))(params)
    assert {"aux/lb", "aux/sp", "aux/cp"} <= set(terms)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.isfinite(np.asarray(g)).all(), jax.tree_util.keystr(path)
    for layer in ("first", "second"):
        routed = grads[layer]["routed"]
        for weight in (routed["router"]["kernel"], routed["experts"]["w_gate"],
                       routed["experts"]["w_up"]):
            assert np.abs(np.asarray(weight[...])).max() > 0, layer
    assert np.abs(np.asarray(grads["first"]["routed"]["experts"]["w_down"][...])).max() > 0
    assert not np.asarray(grads["second"]["routed"]["experts"]["w_down"][...]).any()
