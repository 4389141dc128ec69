"""Models: the decoder LM, parameter counts and Hugging Face checkpoint conversion."""

from moejax.models.convert_hf import from_hf_mixtral, to_hf_mixtral
from moejax.models.decoder import Decoder, DecoderSpec, decoder_spec_from_config
from moejax.models.param_count import count_parameters

__all__ = [
    "Decoder", "DecoderSpec", "count_parameters", "decoder_spec_from_config",
    "from_hf_mixtral", "to_hf_mixtral",
]
