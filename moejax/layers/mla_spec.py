"""Options of Multi-head Latent Attention (DeepSeek-V2/V3) and of YaRN RoPE scaling.

Kept apart from the layers so that `DecoderSpec` can hold them without importing the layers.
"""

from __future__ import annotations

import dataclasses

from moejax.options import check_choice, check_int, check_range


@dataclasses.dataclass(frozen=True)
class MLASpec:
    """Multi-head Latent Attention (docs/methods.md, "Multi-head Latent Attention").

    Attributes:
      kv_lora_rank: C, the width of the compressed key/value latent (what the decode cache
        holds per token, with the RoPE key).
      qk_nope_head_dim: each head's query/key coordinates without position (from the latent).
      qk_rope_head_dim: R, the decoupled RoPE coordinates: per head for queries, one key shared
        by all heads.
      v_head_dim: each head's value width.
      q_lora_rank: the width of the low-rank query projection (with its RMSNorm); None: one
        full query projection (DeepSeek-V2-Lite).
      rope_interleave: RoPE rotates adjacent pairs (x0, x1), (x2, x3), ... (DeepSeek's
        layout); False: the two halves (HF Llama's "rotate half").
    """

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    rope_interleave: bool = True

    def __post_init__(self):
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            check_int(f"model.mla.{name}", getattr(self, name))
        check_int("model.mla.q_lora_rank", self.q_lora_rank, optional=True)
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"model.mla.qk_rope_head_dim={self.qk_rope_head_dim} must be even "
                             "(RoPE rotates pairs of coordinates)")

    @property
    def qk_head_dim(self) -> int:
        """Each head's query/key width: qk_nope_head_dim + qk_rope_head_dim."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim


ROPE_SCALINGS = ("yarn",)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """YaRN RoPE scaling (HF `rope_parameters` with rope_type "yarn"; docs/methods.md).

    Attributes:
      kind: "yarn".
      factor: s, the context extension factor.
      original_max_position_embeddings: the pretraining context length.
      beta_fast, beta_slow: the ramp's rotation bounds (HF defaults 32 and 1).
      mscale, mscale_all_dim: DeepSeek's magnitude corrections: cos/sin are multiplied by
        `attention_factor` (default mscale(s, mscale) / mscale(s, mscale_all_dim), or
        mscale(s, 1) without both), and with `mscale_all_dim` the softmax scale by
        mscale(s, mscale_all_dim)^2, where mscale(s, m) = 0.1 m ln s + 1 for s > 1, else 1.
      attention_factor: overrides the cos/sin factor above.
      truncate: round the ramp's bounds to whole dimensions (HF default True).
    """

    factor: float
    original_max_position_embeddings: int
    kind: str = "yarn"
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self):
        check_choice("model.rope_scaling.kind", self.kind, ROPE_SCALINGS)
        check_range("model.rope_scaling.factor", self.factor, 0.0, low_open=True)
        check_int("model.rope_scaling.original_max_position_embeddings",
                  self.original_max_position_embeddings)
        for name in ("beta_fast", "beta_slow"):
            check_range(f"model.rope_scaling.{name}", getattr(self, name), 0.0, low_open=True)
        for name in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(self, name) is not None:
                check_range(f"model.rope_scaling.{name}", getattr(self, name), 0.0)
