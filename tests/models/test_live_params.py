"""Loading keeps a model's `param_dtype`: a bfloat16 export or Hugging Face directory loads
at 2 bytes per parameter, built around its arrays (moejax/models/live_params.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from moejax.models import decoder, hf_dir, weights
from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.models.live_params import decoder_with_params, stored_param_dtype
from moejax.moe.router import RouterBias
from tests.models.hf_helpers import SPEC, hf_state_dict

MODEL = {"vocab_size": 19, "d_model": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
         "d_ff": 24, "param_dtype": "bfloat16",
         "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8, "router": {"use_bias": True}}}
BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


@pytest.fixture
def eager_inits(monkeypatch):
    """The dtypes of the parameters of every Decoder initialised on the device (outside a
    trace: its random init computed), recorded as `cast_params` sees them."""
    seen = []

    def recording(module, dtype, cast=decoder.cast_params):
        seen.extend(leaf.dtype for leaf in jax.tree.leaves(nnx.state(module, nnx.Param))
                    if not isinstance(leaf, jax.core.Tracer))
        cast(module, dtype)

    monkeypatch.setattr(decoder, "cast_params", recording)
    return seen


def _dtypes(model, kind=nnx.Param):
    return {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, kind))}


def test_a_bfloat16_model_is_bfloat16_after_init_and_after_loading_its_export(
        tmp_path, eager_inits):
    spec = decoder_spec_from_config(MODEL)
    model = Decoder(spec, rngs=nnx.Rngs(0))
    model.set_router_biases(jnp.arange(8, dtype=jnp.float32).reshape(2, 4) / 8)
    assert _dtypes(model) == {BF16} and _dtypes(model, RouterBias) == {F32}
    weights.write_export(tmp_path, {"model": dataclasses.asdict(spec)},
                         nnx.to_pure_dict(nnx.state(model, weights.EXPORTED)), overwrite=True)
    assert weights.exported_dtypes(tmp_path) == {"bfloat16", "float32"}  # the router biases
    eager_inits.clear()
    loaded = weights.load_decoder(tmp_path)
    assert eager_inits == []  # never initialised on the device: no float32 copy
    assert loaded.spec.param_dtype == "bfloat16" and _dtypes(loaded) == {BF16}
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded)),
                    strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_a_bfloat16_hf_directory_and_its_old_import_load_in_bfloat16(tmp_path, eager_inits):
    spec = dataclasses.replace(SPEC, d_ff=SPEC.moe.d_hidden)
    tensors = hf_state_dict(1)
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "bf16", dtype="bfloat16")
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "f32")
    eager_inits.clear()
    model = weights.load_decoder(tmp_path / "bf16")
    assert eager_inits == []
    assert model.spec.param_dtype == "bfloat16" and _dtypes(model) == {BF16}
    np.testing.assert_array_equal(model.head.kernel[...].T,
                                  tensors["lm_head.weight"].astype(ml_dtypes.bfloat16))
    assert weights.load_decoder(tmp_path / "f32").spec.param_dtype == "float32"
    # an import written before model.param_dtype existed: its config has none
    _, params = weights.load_weights(tmp_path / "bf16")
    config = {k: v for k, v in dataclasses.asdict(spec).items() if k != "param_dtype"}
    weights.write_export(tmp_path / "export", {"model": config}, params, overwrite=False)
    assert _dtypes(weights.load_decoder(tmp_path / "export")) == {BF16}


def test_stored_dtype_and_missing_parameters():
    bf16 = {"a": np.zeros(2, ml_dtypes.bfloat16), "b": {"c": jnp.zeros(3, jnp.bfloat16)}}
    assert stored_param_dtype(bf16) == "bfloat16"
    assert stored_param_dtype({**bf16, "d": np.zeros(1, np.float32)}) == "float32"
    spec = decoder_spec_from_config(MODEL)
    params = nnx.to_pure_dict(nnx.state(Decoder(spec, rngs=nnx.Rngs(0)), nnx.Param))
    del params["head"]
    with pytest.raises(ValueError, match=r"^the weights lack parameter head/kernel of the "
                                         r"model \(1 missing\)$"):
        decoder_with_params(spec, params)
