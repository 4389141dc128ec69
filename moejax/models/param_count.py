"""Total and active parameter counts of a DecoderSpec, without allocating parameters.

Active parameters per token: every parameter except the routed experts a token does not
use, i.e. each routed-expert stack counts k/E of its size (embeddings and head included).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec
from moejax.moe.topk import TopKMoE


class ParameterCount(NamedTuple):
    total: int
    active: int


def _size(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def count_parameters(spec: DecoderSpec) -> ParameterCount:
    """Counts parameters of `Decoder(spec)` from shapes alone (`nnx.eval_shape`)."""
    model = nnx.eval_shape(lambda: Decoder(spec, rngs=nnx.Rngs(0)))
    total = _size(nnx.state(model, nnx.Param))
    inactive = 0.0
    for _, node in nnx.iter_graph(model):
        if isinstance(node, TopKMoE):
            experts = _size(nnx.state(node.experts, nnx.Param))
            num_experts = node.experts.w_gate.shape[-3]  # [(L,) E, D, F]
            inactive += experts * (1 - node.router.top_k / num_experts)
    return ParameterCount(total=total, active=round(total - inactive))


def model_flops_per_token(spec: DecoderSpec, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), the MFU numerator.

    6 x (active parameters used in matmuls: all active ones but the embedding table, a
    lookup) + the causal attention products: per layer, QK^T over the query/key head width
    Q and AV over the value head width V, each over on average S/2 keys, 2 x (S/2) x N x
    (Q + V) forward, so 3 x L x S x N x (Q + V) in all (GQA: Q = V = H, 6 x L x S x N x H;
    MLA: Q = qk_nope_head_dim + qk_rope_head_dim, V = v_head_dim). Norms, softmax, routing
    and the activation function are left out, as usual.
    """
    matmul_params = count_parameters(spec).active - spec.vocab_size * spec.d_model
    qk, v = ((spec.mla.qk_head_dim, spec.mla.v_head_dim) if spec.mla is not None
             else (spec.resolved_head_dim, spec.resolved_head_dim))
    attention = 3 * spec.num_layers * seq_len * spec.num_heads * (qk + v)
    return float(6 * matmul_params + attention)
