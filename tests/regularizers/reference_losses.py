"""Independent NumPy oracle (float64, plain loops) for the regularizers and routing metrics.

Nothing here imports moejax: it restates docs/methods.md sections 5 and 6 directly. Every function
takes a list with one entry per router, each entry unpadded (router r has its own E_r experts
and K_r choices), so that the padding of a stacked RoutingRecord is never part of the oracle.
Losses return `(mean over routers, [per-router values])`; the coupling loss is per adjacent pair.
"""

from __future__ import annotations

import math

import numpy as np


def routers(x):
    """A list of per-router float64/int arrays from a stacked array or a list."""
    return [np.asarray(a) for a in x]


def _f64(a):
    return np.asarray(a, np.float64)


def _mean(values):
    return sum(values) / len(values), list(values)


def subset(num_tokens, max_tokens):
    """The evenly spaced token subset: indices (i * T) // n, i < n (all tokens if n >= T)."""
    if max_tokens is None or max_tokens >= num_tokens:
        return list(range(num_tokens))
    return [(i * num_tokens) // max_tokens for i in range(max_tokens)]


# ----------------------------------------------------------------------------- load balance


def _load_balance_one(probs, expert_idx, extra=None):
    """E * sum_e f_e P_e with f_e = count_e / (k T) (extra counts join the global batch)."""
    tokens, num_experts = probs.shape
    counts = [0.0] * num_experts
    for t in range(tokens):
        for e in expert_idx[t]:
            counts[int(e)] += 1.0
    slots = float(tokens * len(expert_idx[0]))
    if extra is not None:
        counts = [c + float(x) for c, x in zip(counts, extra)]
        slots += float(sum(extra))
    value = 0.0
    for e in range(num_experts):
        fraction = counts[e] / slots
        mean_prob = sum(probs[t][e] for t in range(tokens)) / tokens
        value += fraction * mean_prob
    return num_experts * value


def load_balance(probs, expert_idx, *, sequence_length=None, extra_tokens_per_expert=None):
    """Switch/GShard load balance per router; sequence-wise when sequence_length is given."""
    per_router = []
    for r, (p, idx) in enumerate(zip(routers(probs), routers(expert_idx))):
        p = _f64(p)
        extra = None if extra_tokens_per_expert is None else extra_tokens_per_expert[r]
        if sequence_length is None:
            per_router.append(_load_balance_one(p, idx, extra))
            continue
        values = [_load_balance_one(p[s:s + sequence_length], idx[s:s + sequence_length])
                  for s in range(0, p.shape[0], sequence_length)]
        per_router.append(sum(values) / len(values))
    return _mean(per_router)


# ----------------------------------------------------------------------------- z-loss


def _logsumexp(row):
    finite = [float(v) for v in row if math.isfinite(v)]
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))


def z_loss(logits):
    """mean_t (logsumexp_e r_te)^2 per router (-inf entries ignored)."""
    per_router = []
    for lg in routers(logits):
        lg = _f64(lg)
        per_router.append(sum(_logsumexp(row) ** 2 for row in lg) / lg.shape[0])
    return _mean(per_router)


# ----------------------------------------------------------------------------- specialization


def cosine(a, b):
    """cos(a, b); 0 when either vector is zero."""
    a, b = _f64(a), _f64(b)
    norm_a = math.sqrt(sum(v * v for v in a))
    norm_b = math.sqrt(sum(v * v for v in b))
    if norm_a == 0.0 or norm_b == 0.0:
        return 0.0
    return sum(x * y for x, y in zip(a, b)) / (norm_a * norm_b)


def _penalty(c, mode):
    if mode == "square":
        return c * c
    if mode == "abs":
        return abs(c)
    raise ValueError(mode)


def _specialization_one(cos_of, tokens, top_k, mode, kept=None):
    """Mean of penalty(cos_tev) over the pairs e != v of the given tokens whose slots were
    both kept (kept[t][e]; default all): mean_t 1/(k(k-1)) sum_{e != v} without drops."""
    total, pairs = 0.0, 0
    for t in tokens:
        for e in range(top_k):
            for v in range(top_k):
                if e != v and (kept is None or (kept[t][e] and kept[t][v])):
                    total += _penalty(cos_of(t, e, v), mode)
                    pairs += 1
    return total / max(pairs, 1)


def specialization(z, *, mode="square", max_tokens=None, kept=None):
    """R_sp from activations z: per router [T, K, F]; kept: per router [T, K] bool."""
    per_router = []
    for r, zr in enumerate(routers(z)):
        zr = _f64(zr)
        tokens = subset(zr.shape[0], max_tokens)
        per_router.append(_specialization_one(lambda t, e, v: cosine(zr[t, e], zr[t, v]),
                                              tokens, zr.shape[1], mode,
                                              None if kept is None else kept[r]))
    return _mean(per_router)


def specialization_from_cosine(cos, *, mode="square", max_tokens=None):
    """R_sp from per-token cosine matrices: per router [T, K, K]."""
    per_router = []
    for cr in routers(cos):
        cr = _f64(cr)
        tokens = subset(cr.shape[0], max_tokens)
        per_router.append(_specialization_one(lambda t, e, v: cr[t, e, v], tokens,
                                              cr.shape[1], mode))
    return _mean(per_router)


def pair_cosines(z):
    """[T, K, F] -> [T, K, K] cosines (loops)."""
    z = _f64(z)
    tokens, slots, _ = z.shape
    out = np.zeros((tokens, slots, slots))
    for t in range(tokens):
        for e in range(slots):
            for v in range(slots):
                out[t, e, v] = cosine(z[t, e], z[t, v])
    return out


# ----------------------------------------------------------------------------- coupling


def topk_mass(probs, expert_idx):
    """P_t = sum_{e in TopK_t} s_te for one router: [T]."""
    probs = _f64(probs)
    return np.array([sum(probs[t][int(e)] for e in expert_idx[t]) for t in range(len(probs))])


def coupling(probs, expert_idx, *, form="product", teacher_probs=None):
    """R_cp per adjacent pair: -mean_t P^l P^{l+1} (or -mean_t log(P^l P^{l+1})).

    teacher_probs: if given, the deeper router of each pair reads these probs instead (a
      constant under finite differences: the stop-gradient variant).
    """
    probs, expert_idx = routers(probs), routers(expert_idx)
    deep_probs = probs if teacher_probs is None else routers(teacher_probs)
    per_pair = []
    for layer in range(len(probs) - 1):
        shallow = topk_mass(probs[layer], expert_idx[layer])
        deep = topk_mass(deep_probs[layer + 1], expert_idx[layer + 1])
        if form == "product":
            terms = [-a * b for a, b in zip(shallow, deep)]
        else:
            terms = [-math.log(a * b) for a, b in zip(shallow, deep)]
        per_pair.append(sum(terms) / len(terms))
    return _mean(per_pair)


# ----------------------------------------------------------------------------- baselines


def orthogonality(expert_out, *, max_tokens=None):
    """Squared cosine of co-activated experts' outputs: per router [T, K, D]."""
    return specialization(expert_out, mode="square", max_tokens=max_tokens)


def score_variance(probs):
    """-mean_t Var_e s_te (population variance over the router's E experts)."""
    per_router = []
    for p in routers(probs):
        p = _f64(p)
        tokens, experts = p.shape
        total = 0.0
        for t in range(tokens):
            mean = sum(p[t]) / experts
            total += sum((v - mean) ** 2 for v in p[t]) / experts
        per_router.append(-total / tokens)
    return _mean(per_router)


# ----------------------------------------------------------------------------- bias update


def updated_bias(bias, tokens_per_expert, rate):
    """b_e + rate * sign(mean_load - load_e), per router (lists of length E_r)."""
    out = []
    for b, load in zip(bias, tokens_per_expert):
        b, load = _f64(b), _f64(load)
        mean_load = sum(load) / len(load)
        out.append(np.array([b[e] + rate * float(np.sign(mean_load - load[e]))
                             for e in range(len(b))]))
    return out


# ----------------------------------------------------------------------------- metrics


def _entropy(distribution):
    return -sum(p * math.log(p) for p in distribution if p > 0)


def entropy(probs):
    """mean_t H(s_t) in nats, per router."""
    return [sum(_entropy(row) for row in _f64(p)) / len(p) for p in routers(probs)]


def mean_topk_mass(probs, expert_idx):
    return [float(topk_mass(p, idx).mean()) for p, idx in zip(routers(probs), routers(expert_idx))]


def counts(expert_idx, num_experts):
    """Token-slots per expert of one router: [E] (loops)."""
    out = np.zeros(num_experts)
    for row in expert_idx:
        for e in row:
            out[int(e)] += 1
    return out


def load_stats(load):
    """min, max, coefficient of variation (population std / mean), dead experts of one router."""
    load = _f64(load)
    mean = sum(load) / len(load)
    std = math.sqrt(sum((v - mean) ** 2 for v in load) / len(load))
    return {"load_min": min(load), "load_max": max(load), "load_cv": std / mean,
            "dead_experts": sum(1 for v in load if v == 0)}


def transitions(idx_shallow, idx_deep, experts_shallow, experts_deep):
    """[E_l, E_{l+1}] counts of (top-1 of router l, top-1 of router l+1)."""
    out = np.zeros((experts_shallow, experts_deep))
    for a, b in zip(idx_shallow, idx_deep):
        out[int(a[0]), int(b[0])] += 1
    return out


def pathway_entropy(idx_shallow, idx_deep, experts_deep):
    """H(e^{l+1} | e^l) of top-1 choices / log E_{l+1}, from empirical frequencies."""
    tokens = len(idx_shallow)
    joint, marginal = {}, {}
    for a, b in zip(idx_shallow, idx_deep):
        joint[(int(a[0]), int(b[0]))] = joint.get((int(a[0]), int(b[0])), 0) + 1
        marginal[int(a[0])] = marginal.get(int(a[0]), 0) + 1
    conditional = 0.0
    for (a, _), n in joint.items():
        conditional -= (n / tokens) * math.log(n / marginal[a])
    return conditional / math.log(experts_deep)


def domain_nmi(expert_idx, domains):
    """2 I(e; d) / (H(e) + H(d)) with e the top-1 expert; 0 when either entropy is 0."""
    tokens = len(domains)
    experts = [int(row[0]) for row in expert_idx]
    domains = [int(d) for d in domains]

    def frequencies(keys):
        table = {}
        for key in keys:
            table[key] = table.get(key, 0) + 1
        return [n / tokens for n in table.values()]

    h_expert, h_domain = _entropy(frequencies(experts)), _entropy(frequencies(domains))
    h_joint = _entropy(frequencies(list(zip(experts, domains))))
    if h_expert == 0 or h_domain == 0:
        return 0.0
    return 2 * (h_expert + h_domain - h_joint) / (h_expert + h_domain)
