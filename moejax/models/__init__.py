"""Models: the decoder LM, parameter counts and Hugging Face checkpoint conversion."""

from moejax.models.convert_hf import from_hf, to_hf
from moejax.models.decoder import Decoder, DecoderSpec, decoder_spec_from_config
from moejax.models.param_count import count_parameters
from moejax.models.weights import load_decoder, load_params, load_weights

__all__ = [
    "Decoder", "DecoderSpec", "count_parameters", "decoder_spec_from_config", "from_hf",
    "load_decoder", "load_params", "load_weights", "to_hf",
]
