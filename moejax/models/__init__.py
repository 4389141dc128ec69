"""Models: the decoder LM, parameter counts and Hugging Face checkpoint conversion."""

from moejax.models.convert_hf import from_hf, to_hf
from moejax.models.decoder import Decoder, DecoderSpec, decoder_spec_from_config, load_params
from moejax.models.param_count import count_parameters

__all__ = [
    "Decoder", "DecoderSpec", "count_parameters", "decoder_spec_from_config", "from_hf",
    "load_params", "to_hf",
]
