"""Layers: routers, experts, engines, MoE blocks and the decoder LM (Flax NNX over pure functions)."""

from moejax.layers.combine import combine, mix_shared
from moejax.layers.decoder import Decoder, DecoderSpec, decoder_spec_from_config
from moejax.layers.deepseek_block import DeepSeekMoE
from moejax.layers.dispatch import DispatchPlan, capacity_for, make_plan
from moejax.layers.engines import ENGINES
from moejax.layers.experts import Experts, ExpertWeights, swiglu
from moejax.layers.ffn import SwiGLU
from moejax.layers.moe_block import MoESpec, TopKMoE
from moejax.layers.router import Router, RouterSpec, Routing, route

__all__ = [
    "ENGINES", "Decoder", "DecoderSpec", "DeepSeekMoE", "DispatchPlan", "ExpertWeights",
    "Experts", "MoESpec", "Router", "RouterSpec", "Routing", "SwiGLU", "TopKMoE",
    "capacity_for", "combine", "decoder_spec_from_config", "make_plan", "mix_shared", "route",
    "swiglu",
]
