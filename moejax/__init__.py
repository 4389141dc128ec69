"""moejax: Mixture-of-Experts language models in JAX/Flax NNX whose experts specialize."""

from moejax.layers import Decoder, DecoderSpec, MoESpec, RouterSpec, decoder_spec_from_config
from moejax.record import RoutingRecord, concat_records

__version__ = "0.1.0"

__all__ = [
    "Decoder", "DecoderSpec", "MoESpec", "RouterSpec", "RoutingRecord", "__version__",
    "concat_records", "decoder_spec_from_config",
]
