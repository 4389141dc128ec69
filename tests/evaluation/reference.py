"""Shared by the evaluation tests: a tiny decoder, its float64 NumPy parameters, and the
log-probabilities of a sequence's targets computed in plain NumPy loops."""

import functools
import math

import jax
import numpy as np
from flax import nnx

from moejax.models.decoder import decoder_spec_from_config
from moejax.models.layout import abstract_params
from moejax.models.live_params import decoder_with_params
from tests.models.test_decoder import _params_np
from tests.reference_decoder import decoder_ref

SPEC = {"vocab_size": 23, "d_model": 12, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
        "d_ff": 16, "first_dense_layers": 1, "scan_layers": False,
        "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8}}


@functools.cache
def tiny_model(vocab_size: int = 23, seed: int = 0):
    """(Decoder, its float64 params for decoder_ref): one dense layer, one top-2 MoE layer,
    random weights drawn in NumPy (a random init would compile for a second; this takes
    0.1 s), norms around 1."""
    spec = decoder_spec_from_config(dict(SPEC, vocab_size=vocab_size))
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        if "norm" in str(path[-2]):
            return (1 + 0.1 * rng.normal(size=shape.shape)).astype(np.float32)
        return (0.5 * rng.normal(size=shape.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, abstract_params(spec, nnx.Param))
    model = decoder_with_params(spec, params)
    return model, _params_np(model)


def target_logprobs_ref(model, params, seq):
    """float64 [n - 1] log p(seq[j] | seq[:j]) for j = 1..n-1, and bool [n - 1] whether seq[j]
    is the argmax, from one float64 forward of seq[:-1] and a log-softmax written as loops."""
    seq = np.asarray(seq)
    logits = decoder_ref(seq[None, :-1], params, model.spec)[0][0]
    logprobs, greedy = np.zeros(len(seq) - 1), np.zeros(len(seq) - 1, bool)
    for p in range(len(seq) - 1):
        row = logits[p]
        top = max(row)
        total = 0.0
        for value in row:
            total += math.exp(value - top)
        target = seq[p + 1]
        logprobs[p] = row[target] - top - math.log(total)
        greedy[p] = all(row[target] > row[v] for v in range(target)) and all(
            row[target] >= row[v] for v in range(target + 1, len(row)))
    return logprobs, greedy


def continuation_ref(model, params, context, continuation):
    """(sum of the continuation's log-probabilities, every token greedy) in float64."""
    logprobs, greedy = target_logprobs_ref(model, params, list(context) + list(continuation))
    n = len(continuation)
    total = 0.0
    for p in range(len(logprobs) - n, len(logprobs)):
        total += logprobs[p]
    return total, bool(greedy[-n:].all())


def greedy_continuation_ref(model, params, context, length):
    """The `length` tokens the float64 reference picks greedily after `context`."""
    seq = list(context)
    for _ in range(length):
        logits = decoder_ref(np.asarray(seq)[None], params, model.spec)[0][0][-1]
        seq.append(int(np.argmax(logits)))
    return seq[len(context):]
