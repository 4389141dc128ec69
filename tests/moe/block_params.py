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
    return weights, f64(shared.mix_kernel), f64(shared.mix_bias)
