"""Independent NumPy oracle (float64, plain loops) for routers, experts and MoE blocks.

Nothing here imports moejax: it restates docs/methods.md sections 1-4 directly.
"""

from __future__ import annotations

import math

import numpy as np


def softmax(v):
    v = np.asarray(v, np.float64)
    e = np.exp(v - v.max())
    return e / e.sum()


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, np.float64)))


def silu(v):
    return v * sigmoid(v)


def top_indices(values, k):
    """Indices of the k largest values, best first; ties go to the lowest index."""
    return sorted(range(len(values)), key=lambda e: (-values[e], e))[:k]


def normalised_sigmoid(v):
    """sigmoid(v_e) / sum_e' sigmoid(v_e'): the sigmoid router's distribution for the losses."""
    s = sigmoid(v)
    return s / s.sum()


# group_score -> how many of a group's best selection scores are summed
GROUP_BEST = {"top2_sum": 2, "max": 1}


def _pick(selection, top_k, num_groups, top_groups, group_score="top2_sum"):
    """The top_k experts of one token's selection scores, within its best groups."""
    if num_groups > 1:
        size = len(selection) // num_groups
        best = GROUP_BEST[group_score]
        group_score = [sum(sorted(selection[g * size:(g + 1) * size], reverse=True)[:best])
                       for g in range(num_groups)]
        keep = set(top_indices(group_score, top_groups))
        selection = [s if e // size in keep else -math.inf for e, s in enumerate(selection)]
    return top_indices(selection, top_k)


def route_ref(x, w_router, *, top_k, kind="softmax_topk", normalize_gates=True,
              scaling_factor=1.0, num_groups=1, top_groups=1, group_score="top2_sum", bias=None,
              exclude=None, disable_top1=False):
    """Returns logits [T, E], probs [T, E], expert_idx [T, K], gates [T, K] (float64 loops).

    probs: softmax(r), or the normalised sigmoid for kind="sigmoid".
    exclude: [T, E] bool experts a token may not pick; disable_top1: each token's first pick
    (as routed without it) is excluded and the k experts are picked from the rest.
    """
    x = np.asarray(x, np.float64)
    w_router = np.asarray(w_router, np.float64)
    tokens, num_experts = x.shape[0], w_router.shape[1]
    logits = np.zeros((tokens, num_experts))
    probs = np.zeros((tokens, num_experts))
    expert_idx = np.zeros((tokens, top_k), np.int64)
    gates = np.zeros((tokens, top_k))
    for t in range(tokens):
        r = np.array([sum(x[t, d] * w_router[d, e] for d in range(x.shape[1]))
                      for e in range(num_experts)])
        logits[t] = r
        probs[t] = normalised_sigmoid(r) if kind == "sigmoid" else softmax(r)
        scores = {"softmax_topk": softmax(r), "sigmoid": sigmoid(r), "topk_softmax": r}[kind]
        selection = [scores[e] + (0.0 if bias is None else bias[e]) for e in range(num_experts)]
        if exclude is not None:
            selection = [-math.inf if exclude[t][e] else s for e, s in enumerate(selection)]
        if disable_top1:
            first = _pick(selection, 1, num_groups, top_groups, group_score)[0]
            selection = [-math.inf if e == first else s for e, s in enumerate(selection)]
        chosen = _pick(selection, top_k, num_groups, top_groups, group_score)
        picked = np.array([scores[e] for e in chosen])
        if kind == "topk_softmax":
            g = softmax(picked)
        elif normalize_gates:
            g = picked / picked.sum()
        else:
            g = picked
        expert_idx[t], gates[t] = chosen, g * scaling_factor
    return logits, probs, expert_idx, gates


def swiglu_ref(x_t, w_gate, w_up, w_down):
    """One token x_t [D] through one expert; returns (y [D], z [F])."""
    z = silu(x_t @ w_gate) * (x_t @ w_up)
    return z @ w_down, z


def cosine(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def moe_ref(x, w_router, w_gate, w_up, w_down, *, top_k, capacity=None, **router_options):
    """Routed MoE layer: y [T, D] and a dict of what the router did.

    Slots are offered to an expert in token order; with a capacity C the slots past the
    first C of an expert are dropped (their output is zero).
    """
    x = np.asarray(x, np.float64)
    w_gate, w_up, w_down = (np.asarray(w, np.float64) for w in (w_gate, w_up, w_down))
    logits, probs, expert_idx, gates = route_ref(x, w_router, top_k=top_k, **router_options)
    tokens, num_experts = x.shape[0], w_gate.shape[0]
    counts = np.zeros(num_experts, np.int64)
    kept = np.zeros((tokens, top_k), bool)
    y = np.zeros_like(x)
    z = np.zeros((tokens, top_k, w_gate.shape[2]))
    for t in range(tokens):
        for j in range(top_k):
            e = expert_idx[t, j]
            kept[t, j] = capacity is None or counts[e] < capacity
            counts[e] += 1
            if kept[t, j]:
                out, z[t, j] = swiglu_ref(x[t], w_gate[e], w_up[e], w_down[e])
                y[t] += gates[t, j] * out
    pair_cos = np.array([[[cosine(z[t, i], z[t, j]) for j in range(top_k)]
                          for i in range(top_k)] for t in range(tokens)])
    return y, dict(logits=logits, probs=probs, expert_idx=expert_idx, gates=gates,
                   tokens_per_expert=counts, kept=kept, dropped=int((~kept).sum()), z=z,
                   pair_cos=pair_cos)


def rms_norm_ref(x, weight, eps=1e-5):
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * np.asarray(weight, np.float64)


def dense_swiglu_ref(x, w_gate, w_up, w_down):
    """x [T, D] through one SwiGLU FFN with weights [D, F], [D, F], [F, D]."""
    x = np.asarray(x, np.float64)
    return (silu(x @ w_gate) * (x @ w_up)) @ w_down


def shared_mix_ref(routed, shared, u, mix_kernel=None, mix_bias=None):
    """Per token: routed + shared (no mix_kernel); c0 * routed + c1 * shared with
    c = softmax(u W_c + b_c) (mix_kernel [D, 2]); routed + sigmoid(u w_c) * shared (mix_kernel
    [D, 1], no bias: Qwen2-MoE's shared_expert_gate)."""
    if mix_kernel is None:
        return routed + shared
    out = np.zeros_like(routed)
    for t in range(routed.shape[0]):
        logits = np.asarray(u[t], np.float64) @ mix_kernel
        if mix_kernel.shape[1] == 1:
            out[t] = routed[t] + sigmoid(logits[0]) * shared[t]
            continue
        c = softmax(logits + mix_bias)
        out[t] = c[0] * routed[t] + c[1] * shared[t]
    return out
