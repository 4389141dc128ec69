"""Router variants against the NumPy loop oracle (tests/reference.py) and transformers' routers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from moejax.moe.router import Router, RouterSpec, route
from moejax.moe.spec import MoESpec
from tests.reference import route_ref, sigmoid, softmax

T, D, E, K = 37, 10, 6, 3

CASES = {
    "softmax_topk": dict(kind="softmax_topk"),
    "softmax_topk_raw": dict(kind="softmax_topk", normalize_gates=False),
    "topk_softmax": dict(kind="topk_softmax"),
    "sigmoid_bias": dict(kind="sigmoid", scaling_factor=2.5, use_bias=True),
    "grouped": dict(kind="sigmoid", num_groups=3, top_groups=2, use_bias=True),
    "grouped_softmax": dict(kind="softmax_topk", num_groups=2, top_groups=1),
    "grouped_max": dict(kind="softmax_topk", num_groups=3, top_groups=2, group_score="max",
                        normalize_gates=False, scaling_factor=16.0),
    "grouped_sigmoid_max": dict(kind="sigmoid", num_groups=3, top_groups=2, group_score="max",
                                use_bias=True),
}


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, D)).astype(np.float32)
    w = rng.normal(size=(D, E)).astype(np.float32)
    bias = (0.3 * rng.normal(size=(E,))).astype(np.float32)
    return x, w, bias


def _ref_options(options, bias):
    ref = {k: v for k, v in options.items() if k != "use_bias"}
    return dict(ref, bias=bias.astype(np.float64) if options.get("use_bias") else None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_route_matches_reference(name):
    options = CASES[name]
    x, w, bias = _inputs()
    spec = RouterSpec(**options)
    out = route(jnp.asarray(x), jnp.asarray(w), spec, K,
                bias=jnp.asarray(bias) if spec.use_bias else None)
    logits, probs, idx, gates = route_ref(x, w, top_k=K, **_ref_options(options, bias))
    np.testing.assert_allclose(np.asarray(out.logits, np.float64), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.probs, np.float64), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.expert_idx), idx)
    np.testing.assert_allclose(np.asarray(out.gates, np.float64), gates, rtol=1e-5, atol=1e-6)


def test_bias_changes_selection_not_gates():
    x, w, _ = _inputs(1)
    bias = np.zeros(E, np.float32)
    bias[5] = 10.0  # expert 5 always selected
    spec = RouterSpec(kind="sigmoid", normalize_gates=False)
    out = route(jnp.asarray(x), jnp.asarray(w), spec, K, bias=jnp.asarray(bias))
    assert (np.asarray(out.expert_idx)[:, 0] == 5).all()
    scores = 1 / (1 + np.exp(-(x.astype(np.float64) @ w)))
    picked = np.take_along_axis(scores, np.asarray(out.expert_idx), axis=1)
    np.testing.assert_allclose(np.asarray(out.gates, np.float64), picked, rtol=1e-5)


TIE_CASES = {
    "softmax_topk": dict(kind="softmax_topk"),
    "topk_softmax": dict(kind="topk_softmax"),
    "sigmoid": dict(kind="sigmoid"),
    "grouped": dict(kind="softmax_topk", num_groups=2, top_groups=1),
}


@pytest.mark.parametrize("name", sorted(TIE_CASES))
def test_ties_pick_lowest_index(name):
    x, w, _ = _inputs(2)
    w_tied = np.concatenate([w[:, :3], w[:, :3]], axis=1)  # experts e and e+3 tie exactly
    spec = RouterSpec(**TIE_CASES[name])
    out = route(jnp.asarray(x), jnp.asarray(w_tied), spec, 2)
    _, _, idx, gates = route_ref(x, w_tied, top_k=2, **TIE_CASES[name])
    picked = np.asarray(out.expert_idx)
    np.testing.assert_array_equal(picked, idx)
    np.testing.assert_allclose(np.asarray(out.gates, np.float64), gates, rtol=1e-5, atol=1e-6)
    if spec.num_groups > 1:
        assert (picked < 3).all()  # tied groups {0, 1, 2} and {3, 4, 5}: the first wins
    else:
        np.testing.assert_array_equal(picked[:, 1], picked[:, 0] + 3)  # the tied twin, second


def test_disable_top1():
    x, w, _ = _inputs(3)
    first = route(jnp.asarray(x), jnp.asarray(w), RouterSpec(), K)
    exclude = np.zeros((T, E), bool)
    exclude[np.arange(T), np.asarray(first.expert_idx)[:, 0]] = True
    switched = route(jnp.asarray(x), jnp.asarray(w), RouterSpec(), K, disable_top1=True)
    _, _, idx, gates = route_ref(x, w, top_k=K, exclude=exclude)
    np.testing.assert_array_equal(np.asarray(switched.expert_idx), idx)
    np.testing.assert_allclose(np.asarray(switched.gates, np.float64), gates, rtol=1e-5)


@pytest.mark.parametrize("name", ["softmax_topk_raw", "topk_softmax", "sigmoid_bias", "grouped"])
def test_disable_top1_matches_reference_for_every_kind(name):
    """The first choice (as the reference picks it, bias and groups included) is banned and
    top-k re-picked from the rest."""
    options = CASES[name]
    x, w, bias = _inputs(6)
    spec = RouterSpec(**options)
    _, _, first, _ = route_ref(x, w, top_k=K, **_ref_options(options, bias))
    exclude = np.zeros((T, E), bool)
    exclude[np.arange(T), first[:, 0]] = True
    out = route(jnp.asarray(x), jnp.asarray(w), spec, K,
                bias=jnp.asarray(bias) if spec.use_bias else None, disable_top1=True)
    _, _, idx, gates = route_ref(x, w, top_k=K, exclude=exclude, **_ref_options(options, bias))
    np.testing.assert_array_equal(np.asarray(out.expert_idx), idx)
    np.testing.assert_allclose(np.asarray(out.gates, np.float64), gates, rtol=1e-5, atol=1e-6)
    assert not np.take_along_axis(exclude, idx, axis=1).any()


def test_router_module_matches_reference():
    spec = RouterSpec(kind="sigmoid", use_bias=True, scaling_factor=2.5, num_groups=3,
                      top_groups=2)
    router = Router(D, E, K, spec, rngs=nnx.Rngs(3))
    x, _, bias = _inputs(8)
    router.bias[...] = jnp.asarray(bias)
    out = router(jnp.asarray(x))
    w = np.asarray(router.kernel[...], np.float64)
    logits, probs, idx, gates = route_ref(x, w, top_k=K, kind="sigmoid", scaling_factor=2.5,
                                          num_groups=3, top_groups=2, bias=bias)
    np.testing.assert_allclose(np.asarray(out.logits, np.float64), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.probs, np.float64), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.expert_idx), idx)
    np.testing.assert_allclose(np.asarray(out.gates, np.float64), gates, rtol=1e-5, atol=1e-6)
    unbiased = route_ref(x, w, top_k=K, kind="sigmoid", num_groups=3, top_groups=2)[2]
    assert (unbiased != idx).any()  # the bias did change some selections


def test_bfloat16_input_routes_in_float32():
    x, w, _ = _inputs(9)
    out = route(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w), RouterSpec(), K)
    assert out.logits.dtype == out.probs.dtype == out.gates.dtype == jnp.float32
    assert out.expert_idx.dtype == jnp.int32
    x16 = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)  # what the router sees
    logits, _, _, gates = route_ref(x16, w, top_k=K)
    np.testing.assert_allclose(np.asarray(out.logits, np.float64), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.gates, np.float64), gates, rtol=1e-5, atol=1e-6)


def test_disable_top1_with_ties():
    x, w, _ = _inputs(4)
    w_tied = np.concatenate([w[:, :2], w[:, :2], w[:, :2]], axis=1)  # e, e+2, e+4 tie
    out = route(jnp.asarray(x), jnp.asarray(w_tied), RouterSpec(), 2, disable_top1=True)
    first = route_ref(x, w_tied, top_k=1)[2][:, 0]
    exclude = np.zeros((T, E), bool)
    exclude[np.arange(T), first] = True
    np.testing.assert_array_equal(np.asarray(out.expert_idx),
                                  route_ref(x, w_tied, top_k=2, exclude=exclude)[2])


def test_jitter_in_training_only():
    spec = RouterSpec(jitter=0.5)
    router = Router(D, E, K, spec, rngs=nnx.Rngs(0))
    x = jnp.asarray(_inputs()[0])
    a, b = router(x).logits, router(x).logits
    assert not np.allclose(a, b)
    router.eval()
    c, d = router(x).logits, router(x).logits
    np.testing.assert_array_equal(c, d)
    np.testing.assert_allclose(c, x @ router.kernel[...], rtol=1e-5, atol=1e-5)


def test_jitter_multiplies_the_input_within_its_bounds():
    """Switch jitter: each input element times uniform noise in [1 - a, 1 + a]. With D = 1,
    logits[t, e] = x[t] * noise[t] * w[e], so the noise can be read back from the logits."""
    amplitude, tokens = 0.3, 400
    router = Router(1, E, K, RouterSpec(jitter=amplitude), rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).uniform(0.5, 2.0, (tokens, 1)).astype(np.float32)
    logits = np.asarray(router(jnp.asarray(x)).logits, np.float64)
    clean = x.astype(np.float64) @ np.asarray(router.kernel[...], np.float64)  # [T, E]
    noise = logits / clean
    np.testing.assert_allclose(noise, noise[:, :1].repeat(E, 1), rtol=1e-5)  # on the input
    assert 1 - amplitude - 1e-6 <= noise.min() and noise.max() <= 1 + amplitude + 1e-6
    # it spans the whole interval (400 draws: each end within 0.1 a, all but surely)
    assert noise.min() < 1 - 0.9 * amplitude and noise.max() > 1 + 0.9 * amplitude


@pytest.mark.parametrize("name", sorted(CASES))
def test_gate_gradients(name):
    options = CASES[name]
    x, w, bias = _inputs(5)
    spec = RouterSpec(**options)
    with jax.enable_x64(True):
        b = jnp.asarray(bias, jnp.float64) if spec.use_bias else None

        def gates(x, w):
            return route(x, w, spec, K, bias=b).gates

        check_grads(jax.jit(gates), (jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)),
                    order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_experts=4, top_k=5), "top_k=5"),
    (dict(router=RouterSpec(num_groups=4, top_groups=1), num_experts=6), "num_groups=4"),
    (dict(router=RouterSpec(num_groups=3, top_groups=1), num_experts=6, top_k=3),
     "top_groups=1"),
    (dict(d_hidden=10, granularity=4), "granularity=4"),
    (dict(engine="bogus"), "moe.engine"),
])
def test_invalid_moe_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoESpec(**kwargs)


def test_router_module_checks_sizes():
    with pytest.raises(ValueError, match="top_k=5"):
        Router(D, 4, 5, RouterSpec(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_groups=4"):
        Router(D, 6, 2, RouterSpec(num_groups=4), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="bogus"), "router.kind"),
    (dict(num_groups=2, top_groups=3), "top_groups=3"),
    (dict(jitter=1.5), "router.jitter"),
    (dict(group_score="sum"), r"router.group_score='sum'; allowed: top2_sum, max"),
])
def test_invalid_router_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RouterSpec(**kwargs)


# --- Hugging Face transformers 5.18 routers, transcribed to NumPy float64 plain loops -------
# Each returns the k picks in descending order of the score top-k was taken of (HF's torch.topk
# has sorted=False: its picks are a set) and their weights. weight: [E, D] (HF layout).


def _top(values, k):
    """Indices of the k largest values, largest first; asserts no near-tie at the cut."""
    order = sorted(range(len(values)), key=lambda e: -values[e])
    if k < len(values):
        assert values[order[k - 1]] - values[order[k]] > 1e-6, "near-tie: pick other inputs"
    return order[:k]


def _group_mask(scores, num_group, topk_group, group_score):
    """HF's group mask: [E] bool, True in the topk_group groups of best group_score."""
    size = len(scores) // num_group
    groups = [group_score(scores[g * size:(g + 1) * size]) for g in range(num_group)]
    kept = _top(groups, topk_group)
    return [e // size in kept for e in range(len(scores))]


def _logits(x_t, weight):
    return np.array([sum(x_t[d] * weight[e, d] for d in range(len(x_t)))
                     for e in range(weight.shape[0])])


def hf_deepseek_v3_router(x, weight, bias, top_k, n_group, topk_group, norm_topk_prob,
                          routed_scaling_factor):
    """DeepseekV3TopkRouter.forward per token -> (topk_indices [T, K], topk_weights [T, K])."""
    indices, weights = [], []
    for x_t in np.asarray(x, np.float64):
        scores = sigmoid(_logits(x_t, weight))
        for_choice = scores + bias
        keep = _group_mask(for_choice, n_group, topk_group, lambda g: sum(sorted(g)[-2:]))
        for_choice = np.where(keep, for_choice, -np.inf)
        idx = _top(for_choice, top_k)
        w = scores[idx]
        if norm_topk_prob:
            w = w / (w.sum() + 1e-20)
        indices.append(idx)
        weights.append(w * routed_scaling_factor)
    return np.array(indices), np.array(weights)


def hf_deepseek_v2_router(x, weight, top_k, topk_method, n_group, topk_group,
                          routed_scaling_factor):
    """DeepseekV2TopkRouter.forward per token -> (topk_indices [T, K], topk_weights [T, K])."""
    indices, weights = [], []
    for x_t in np.asarray(x, np.float64):
        scores = softmax(_logits(x_t, weight))
        if topk_method == "group_limited_greedy":
            keep = _group_mask(scores, n_group, topk_group, max)
            scores = np.where(keep, scores, 0.0)  # 0.0, not -inf
        idx = _top(scores, top_k)
        indices.append(idx)
        weights.append(scores[idx] * routed_scaling_factor)
    return np.array(indices), np.array(weights)


def hf_qwen2_moe_router(x, weight, top_k, norm_topk_prob):
    """Qwen2MoeTopKRouter.forward per token -> (router_indices [T, K], router_scores [T, K])."""
    indices, weights = [], []
    for x_t in np.asarray(x, np.float64):
        probs = softmax(_logits(x_t, weight))
        idx = _top(probs, top_k)
        w = probs[idx]
        indices.append(idx)
        weights.append(w / w.sum() if norm_topk_prob else w)
    return np.array(indices), np.array(weights)


HF_E, HF_K = 8, 3


def _hf_inputs(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, D)).astype(np.float32)
    weight = rng.normal(size=(HF_E, D)).astype(np.float32)  # HF [E, D]
    bias = (0.3 * rng.normal(size=(HF_E,))).astype(np.float32)
    return x, weight, bias


def _assert_routes_like_hf(out, indices, weights):
    np.testing.assert_array_equal(np.asarray(out.expert_idx), indices)
    np.testing.assert_allclose(np.asarray(out.gates, np.float64), weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_deepseek_v3_router_equals_transformers(norm_topk_prob):
    x, weight, bias = _hf_inputs(11)
    spec = RouterSpec(kind="sigmoid", use_bias=True, num_groups=4, top_groups=2,
                      group_score="top2_sum", normalize_gates=norm_topk_prob,
                      scaling_factor=2.5)
    router = Router(D, HF_E, HF_K, spec, rngs=nnx.Rngs(0))
    router.kernel[...] = jnp.asarray(weight.T)
    router.bias[...] = jnp.asarray(bias)  # e_score_correction_bias
    indices, weights = hf_deepseek_v3_router(x, weight.astype(np.float64), bias, HF_K, 4, 2,
                                             norm_topk_prob, 2.5)
    _assert_routes_like_hf(router(jnp.asarray(x)), indices, weights)
    ungrouped = hf_deepseek_v3_router(x, weight.astype(np.float64), bias, HF_K, 1, 1,
                                      norm_topk_prob, 2.5)[0]
    assert (ungrouped != indices).any()  # the groups did restrict some tokens


def test_deepseek_v2_greedy_router_equals_transformers():
    x, weight, _ = _hf_inputs(12)
    spec = RouterSpec(kind="softmax_topk", normalize_gates=False, scaling_factor=16.0)
    out = route(jnp.asarray(x), jnp.asarray(weight.T), spec, HF_K)
    _assert_routes_like_hf(out, *hf_deepseek_v2_router(x, weight.astype(np.float64), HF_K,
                                                        "greedy", 1, 1, 16.0))


def test_deepseek_v2_group_limited_router_equals_transformers():
    """group_score="max" with -inf masking picks what V2's 0.0 masking picks (softmax > 0
    and top_groups * group_size >= k); "top2_sum" would differ on some tokens."""
    x, weight, _ = _hf_inputs(13)
    spec = RouterSpec(kind="softmax_topk", normalize_gates=False, scaling_factor=16.0,
                      num_groups=4, top_groups=2, group_score="max")
    out = route(jnp.asarray(x), jnp.asarray(weight.T), spec, HF_K)
    indices, weights = hf_deepseek_v2_router(x, weight.astype(np.float64), HF_K,
                                             "group_limited_greedy", 4, 2, 16.0)
    _assert_routes_like_hf(out, indices, weights)
    top2 = route(jnp.asarray(x), jnp.asarray(weight.T),
                 dataclasses.replace(spec, group_score="top2_sum"), HF_K)
    assert (np.asarray(top2.expert_idx) != indices).any()


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_qwen2_moe_router_equals_transformers(norm_topk_prob):
    x, weight, _ = _hf_inputs(15)
    spec = RouterSpec(kind="softmax_topk", normalize_gates=norm_topk_prob)
    out = route(jnp.asarray(x), jnp.asarray(weight.T), spec, HF_K)
    _assert_routes_like_hf(out, *hf_qwen2_moe_router(x, weight.astype(np.float64), HF_K,
                                                      norm_topk_prob))


def test_sigmoid_probs_are_the_normalised_sigmoid():
    """The distribution the losses read under a sigmoid router: s / sum_e s_e, bias-free."""
    x, w, bias = _inputs(14)
    spec = RouterSpec(kind="sigmoid", use_bias=True)
    out = route(jnp.asarray(x), jnp.asarray(w), spec, K, bias=jnp.asarray(bias))
    s = sigmoid(x.astype(np.float64) @ w)
    np.testing.assert_allclose(np.asarray(out.probs, np.float64), s / s.sum(-1, keepdims=True),
                               rtol=1e-5, atol=1e-7)
    far = route(jnp.full((2, D), 50.0), -jnp.asarray(np.abs(w)), spec, K)  # sigmoid underflows
    np.testing.assert_allclose(np.asarray(far.probs).sum(-1), 1.0, rtol=1e-6)
