"""moejax: Mixture-of-Experts language models in JAX/Flax NNX whose experts specialize."""

from moejax.models import Decoder, DecoderSpec, decoder_spec_from_config
from moejax.models.generate import Generation, generate
from moejax.moe import CartesianMoE, DeepSeekMoE, MoESpec, RouterSpec, TopKMoE
from moejax.record import RoutingRecord, concat_records

__version__ = "0.1.0"

__all__ = [
    "CartesianMoE", "Decoder", "DecoderSpec", "DeepSeekMoE", "Generation", "MoESpec",
    "RouterSpec", "RoutingRecord", "TopKMoE", "__version__", "concat_records",
    "decoder_spec_from_config", "generate",
]
