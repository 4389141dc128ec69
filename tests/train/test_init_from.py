"""train.init_from: a fresh run starts from an export's or an HF directory's weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.models import weights
from moejax.models.convert_hf import from_hf
from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.models.hf_dir import read_hf_dir, write_hf_dir
from moejax.models.layout import stack_params
from moejax.train.config_files import load_config
from moejax.train.init_from import init_from
from moejax.train.trainer import train_and_evaluate
from tests.models.hf_helpers import FIXTURES, SPEC, hf_state_dict
from tests.train.helpers import tiny_config as _tiny

ROOT = FIXTURES.parents[1]


def test_hf_weights_load_into_a_scanned_model_and_other_models_are_named(tmp_path):
    spec = dataclasses.replace(SPEC, d_ff=SPEC.moe.d_hidden, scan_layers=True)
    tensors = hf_state_dict(6)
    write_hf_dir(tensors, spec, tmp_path / "hf")
    model = Decoder(dataclasses.replace(spec, remat="full"), rngs=nnx.Rngs(0))  # may differ
    init_from(model, tmp_path / "hf")
    want = stack_params(spec, from_hf(tensors, spec))
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(g, w)
    other = Decoder(dataclasses.replace(spec, moe=dataclasses.replace(spec.moe, top_k=1),
                                        rope_theta=10.0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"holds another model: model\.moe\.top_k=2 there, 1 "
                                         r"here; model\.rope_theta=500\.0 there, 10\.0 here"):
        init_from(other, tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="neither a moejax export"):
        init_from(other, tmp_path)


def test_finetune_config_takes_a_qwen3_directorys_model_and_weights():
    """configs/finetune_hf.py:DIR on transformers' Qwen3-MoE fixture: the run's model is the
    directory's (q/k norms, a dense first layer) and init_from loads its weights exactly."""
    source = FIXTURES / "qwen3_moe"
    config = load_config(ROOT / "configs" / "finetune_hf.py", str(source))
    spec, tensors = read_hf_dir(source)
    assert decoder_spec_from_config(config.model) == spec and spec.qk_norm
    assert config.train.init_from == str(source.resolve())
    model = Decoder(spec, rngs=nnx.Rngs(0))
    init_from(model, config.train.init_from)
    dense_up = model.stacks[0].layers[0].ffn.ffn.w_up[...]  # [1, D, F]: the dense layer 0
    np.testing.assert_array_equal(dense_up[0], np.asarray(
        tensors["model.layers.0.mlp.up_proj.weight"]).T)
    k_norm = model.stacks[1].layers[0].attn.k_norm.weight[...]  # layers 1, 2
    np.testing.assert_array_equal(k_norm[1], tensors["model.layers.2.self_attn.k_norm.weight"])


def test_a_fresh_run_starts_from_the_export(tmp_path, capsys):
    """With a learning rate of 1e-9 the fine-tuned weights stay the source's (a random init
    would be far off); a run that resumes ignores init_from. The source's Hugging Face record
    (context length, special ids) is kept with the run's checkpoints, so an HF export of the
    fine-tuned run writes it back."""
    config = _tiny(steps=1, learning_rate=1e-9)
    spec = decoder_spec_from_config(config.model)
    source = tmp_path / "a_export"  # seed 1: far from the run's own (seed 0) init
    params = nnx.to_pure_dict(nnx.state(Decoder(spec, rngs=nnx.Rngs(1)), nnx.Param))
    record = {"max_position_embeddings": 40960, "bos_token_id": 257, "eos_token_id": 258,
              "pad_token_id": None}
    weights.write_export(source, {"model": dataclasses.asdict(spec), "hf": record}, params,
                         overwrite=False)
    config.train.init_from = str(source)
    train_and_evaluate(config, tmp_path / "b")
    assert f"initialised from {source}" in capsys.readouterr().out
    _, want = weights.load_exported(source)
    _, got = weights.load_exported(weights.export(tmp_path / "b", tmp_path / "b_export"))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(jnp.asarray(g), jnp.asarray(w), atol=1e-6)
    assert weights.hf_record(tmp_path / "b_export") == record
    config.train.steps = 2
    train_and_evaluate(config, tmp_path / "b")  # resumes: its own checkpoint wins
    assert "initialised from" not in capsys.readouterr().out
    assert weights.hf_record(tmp_path / "b") == record  # the resumed run's step 2 keeps it


def test_a_vocabulary_smaller_than_the_byte_corpus_is_refused(tmp_path):
    config = _tiny(steps=1)
    config.model.vocab_size = 64  # e.g. an imported model trained on another tokenizer
    with pytest.raises(ValueError, match=r"model\.vocab_size=64 cannot embed every id of "
                                         r"data\.tokenizer='bytes' \(ids 0\.\.258\)"):
        train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
