"""Reads an NNX block's parameters as float64 NumPy arrays for the oracle."""

import numpy as np


def f64(variable):
    return np.asarray(variable[...], np.float64)


def routed_params(block):
    """TopKMoE -> (w_router, w_gate, w_up, w_down)."""
    return (f64(block.router.kernel), f64(block.experts.w_gate), f64(block.experts.w_up),
            f64(block.experts.w_down))


def shared_params(shared):
    """SharedExperts -> (w_gate, w_up, w_down), mix_kernel or None, mix_bias or None."""
    ffn = shared.ffn
    weights = (f64(ffn.w_gate), f64(ffn.w_up), f64(ffn.w_down))
    if shared.mix_kernel is None:
        return weights, None, None
    bias = None if shared.mix_bias is None else f64(shared.mix_bias)
    return weights, f64(shared.mix_kernel), bias


def assert_record_matches(record, router, info, rtol=1e-5):
    """Router `router` of a RoutingRecord equals the oracle's `info` (from `moe_ref`): logits,
    probs, choices, gates of the kept slots, kept, loads, drops, sizes and, if recorded, the
    cosine of the kept slots' activations."""
    np.testing.assert_allclose(record.logits[router], info["logits"], rtol=rtol, atol=1e-5)
    np.testing.assert_allclose(record.probs[router], info["probs"], rtol=rtol, atol=1e-6)
    np.testing.assert_array_equal(record.expert_idx[router], info["expert_idx"])
    np.testing.assert_array_equal(record.tokens_per_expert[router], info["tokens_per_expert"])
    np.testing.assert_array_equal(record.kept[router], info["kept"])
    assert int(record.dropped[router]) == info["dropped"]
    num_experts, top_k = info["probs"].shape[1], info["expert_idx"].shape[1]
    assert int(record.num_experts[router]) == num_experts and int(record.top_k[router]) == top_k
    gates_ref = np.where(info["kept"], info["gates"], 0.0)
    np.testing.assert_allclose(record.gates[router], gates_ref, rtol=rtol, atol=1e-6)
    assert np.all(np.asarray(record.gates[router])[~info["kept"]] == 0)
    if record.pair_cos is not None:
        kept = info["kept"]
        cos_ref = np.where(kept[:, :, None] & kept[:, None, :], info["pair_cos"], 0)
        np.testing.assert_allclose(record.pair_cos[router], cos_ref, rtol=1e-4, atol=1e-5)
