"""Layers: the non-MoE building blocks (attention, RMSNorm, embedding and head, SwiGLU FFN)."""

from moejax.layers.attention import Attention
from moejax.layers.embed import Embed, LMHead
from moejax.layers.ffn import SwiGLU, swiglu, swiglu_activation
from moejax.layers.norms import RMSNorm

__all__ = ["Attention", "Embed", "LMHead", "RMSNorm", "SwiGLU", "swiglu", "swiglu_activation"]
