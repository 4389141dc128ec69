"""CartesianMoE (arXiv 2410.16077): two routed MoE sub-layers in sequence, A then B.

Forward pass as in the authors' released model (docs/methods.md section 3):

    u   = RMSNorm_1(x)
    m_A = c0 * sum_{a in TopK(p_A)} w_a FFN^A_a(u) + c1 * Shared_A(u),  c = softmax(W_cA u + b_cA)
    h   = x + m_A
    v   = RMSNorm_2(h)
    m_B = c0' * sum_{b in TopK(p_B)} w_b FFN^B_b(v) + c1' * Shared_B(v)
    y   = h + m_B

Each token thereby uses one of N*N composite experts (a, b) per pair of picks; sub-expert a
is shared by every composite (a, *), the "multiplicative" knowledge sharing. Sub-experts are
half-width by default (`MoESpec.sub_d_hidden`). The layer owns its norms and residuals, so in
the decoder it replaces the whole FFN sub-layer. It returns one record with two routers, A
then B, so that every regularizer sees them in depth order with the other layers.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from moejax.layers.norms import RMSNorm
from moejax.moe.shared import SharedExperts
from moejax.moe.spec import MoESpec
from moejax.moe.topk import TopKMoE
from moejax.record import concat_records


def sub_layer_spec(spec: MoESpec) -> MoESpec:
    """The MoESpec of one sub-layer: sub-expert width, fine-graining already applied."""
    width = spec.sub_d_hidden or spec.routed_d_hidden // 2
    if width < 1:
        raise ValueError(f"CartesianMoE sub-expert width {width} < 1: set moe.sub_d_hidden")
    return dataclasses.replace(
        spec, num_experts=spec.routed_experts, top_k=spec.routed_top_k, d_hidden=width,
        granularity=1, sub_d_hidden=None,
        shared_d_hidden=spec.shared_d_hidden or width,
    )


class CartesianSubLayer(nnx.Module):
    """x [T, D] -> (x + m [T, D], record with R = 1): norm, routed experts, optional shared."""

    def __init__(self, d_model: int, spec: MoESpec, *, norm_eps: float, rngs: nnx.Rngs,
                 engine=None):
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.routed = TopKMoE(d_model, spec, rngs=rngs, engine=engine)
        self.shared = (SharedExperts(d_model, spec.shared_width, spec.shared_mix, rngs=rngs)
                       if spec.num_shared_experts else None)

    def __call__(self, x: jax.Array, *, disable_top1: bool = False):
        u = self.norm(x)
        m, record = self.routed(u, disable_top1=disable_top1)
        if self.shared is not None:
            m = self.shared(u, m)
        return x + m, record


class CartesianMoE(nnx.Module):
    """One Cartesian layer: x [T, D] -> (y [T, D], record with R = 2, A then B)."""

    def __init__(self, d_model: int, spec: MoESpec, *, norm_eps: float = 1e-5,
                 rngs: nnx.Rngs, engine=None):
        sub = sub_layer_spec(spec)
        self.sub_a = CartesianSubLayer(d_model, sub, norm_eps=norm_eps, rngs=rngs, engine=engine)
        self.sub_b = CartesianSubLayer(d_model, sub, norm_eps=norm_eps, rngs=rngs, engine=engine)

    def __call__(self, x: jax.Array, *, disable_top1: bool = False):
        h, record_a = self.sub_a(x, disable_top1=disable_top1)
        y, record_b = self.sub_b(h, disable_top1=disable_top1)
        return y, concat_records([record_a, record_b])

    def routers(self):
        """Router A, then router B."""
        return self.sub_a.routed.routers() + self.sub_b.routed.routers()
