"""Hugging Face directories (moejax/models/hf_dir.py) and `moejax-hf import / export`.

The tensors are the random HF-layout state dict of test_convert_hf.py, whose converter is
checked there against a NumPy forward written from HF's modeling code.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import moejax
from moejax.cli import hf as hf_cli
from moejax.models import hf_dir
from moejax.models.convert_hf import from_hf_mixtral
from moejax.models.decoder import Decoder, stack_params
from moejax.train import checkpoint
from tests.models.test_convert_hf import SPEC, _hf_state_dict

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"  # make_hf_fixtures.py


def _spec():
    return dataclasses.replace(SPEC, d_ff=SPEC.moe.d_hidden)  # Mixtral has no dense FFN


def test_config_both_ways_and_what_is_refused():
    spec = _spec()
    hf = hf_dir.hf_config_from_spec(spec)
    assert hf["num_key_value_heads"] == 2 and hf["head_dim"] == 4 and hf["rope_theta"] == 500.0
    assert hf_dir.spec_from_hf_config(hf, scan_layers=False) == spec
    v5 = {k: v for k, v in hf.items() if k != "rope_theta"}  # transformers 5 keeps it here
    assert hf_dir.spec_from_hf_config(v5).rope_theta == 500.0
    for change, named in [({"model_type": "qwen3_moe"}, "model_type='qwen3_moe'"),
                          ({"sliding_window": 4096}, "sliding_window=4096"),
                          ({"tie_word_embeddings": True}, "tie_word_embeddings=True"),
                          ({"rope_parameters": {"rope_type": "yarn"}}, "rope type 'yarn'")]:
        with pytest.raises(ValueError, match=named):
            hf_dir.spec_from_hf_config({**hf, **change})
    with pytest.raises(ValueError, match="model.block='deepseek' has no HF Mixtral"):
        hf_dir.hf_config_from_spec(dataclasses.replace(spec, block="deepseek"))


def _fused(tensors, spec):
    """The transformers 5 in-memory layout of per-expert tensors."""
    out = {k: v for k, v in tensors.items() if ".block_sparse_moe." not in k}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}.block_sparse_moe."
        experts = range(spec.moe.num_experts)
        out[f"model.layers.{i}.mlp.gate.weight"] = tensors[p + "gate.weight"]
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = np.stack(
            [np.concatenate([tensors[f"{p}experts.{e}.w1.weight"],
                             tensors[f"{p}experts.{e}.w3.weight"]]) for e in experts])
        out[f"model.layers.{i}.mlp.experts.down_proj"] = np.stack(
            [tensors[f"{p}experts.{e}.w2.weight"] for e in experts])
    return out


def test_directory_round_trip_is_bit_exact_sharded_fused_and_bf16(tmp_path):
    spec, tensors = _spec(), _hf_state_dict(3)
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "sharded", max_shard_bytes=2000)
    index = json.loads((tmp_path / "sharded" / hf_dir.INDEX).read_text())
    assert set(index["weight_map"]) == set(tensors) and len(set(index["weight_map"].values())) > 3
    read_spec, read = hf_dir.read_hf_dir(tmp_path / "sharded", scan_layers=False)
    assert read_spec == spec and read.keys() == tensors.keys()
    assert all(read[k].dtype == np.float32 and np.array_equal(read[k], tensors[k])
               for k in tensors)
    fused = hf_dir.per_expert_layout(_fused(tensors, spec))
    assert fused.keys() == tensors.keys()
    assert all(np.array_equal(fused[k], tensors[k]) for k in tensors)
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "bf16", dtype="bfloat16")
    assert not (tmp_path / "bf16" / hf_dir.INDEX).exists()
    _, halves = hf_dir.read_hf_dir(tmp_path / "bf16")
    name = "lm_head.weight"
    assert halves[name].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(halves[name], tensors[name].astype(ml_dtypes.bfloat16))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_cli_import_of_a_sharded_directory_gives_its_parameters(tmp_path, capsys):
    spec, tensors = _spec(), _hf_state_dict(4)
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "hf", max_shard_bytes=3000)
    argv = ["moejax-hf", "import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ex")]
    assert hf_cli.main(argv) == 0
    assert hf_cli.main(argv) == 1  # not empty
    assert "--out" in capsys.readouterr().err
    loaded_spec, params = checkpoint.load_exported(tmp_path / "ex")
    assert loaded_spec.scan_layers and loaded_spec.num_layers == spec.num_layers
    want = stack_params(loaded_spec, nnx.to_pure_dict(from_hf_mixtral(tensors, spec)))
    for got, wanted in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(got, wanted)  # logits: the fixture tests below
    assert hf_cli.main(["moejax-hf", "convert"]) == 2
    assert hf_cli.main(["moejax-hf", "import", "--hf", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "x")]) == 1
    assert "config.json does not exist" in capsys.readouterr().err


def test_transformers_loads_the_export(tmp_path):
    """Live check, when transformers and torch are installed: from_pretrained on the
    written directory computes moejax's logits."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    spec, tensors = _spec(), _hf_state_dict(5)
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokens = np.arange(14).reshape(2, 7) % spec.vocab_size
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(tokens)).logits.numpy()
    model = Decoder(spec, rngs=nnx.Rngs(0))
    nnx.update(model, from_hf_mixtral(tensors, spec))
    np.testing.assert_allclose(model(jnp.asarray(tokens))[0], hf_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["mixtral", "mixtral_fused"])
def test_transformers_fixture_logits_routing_and_greedy_output(layout):
    """A tiny MixtralForCausalLM saved by transformers 5.24 (per-expert files, and its fused
    in-memory state dict): moejax reproduces its logits, router logits and greedy output."""
    spec, tensors = hf_dir.read_hf_dir(FIXTURES / layout)
    model = Decoder(spec, rngs=nnx.Rngs(0))
    nnx.update(model, from_hf_mixtral(tensors, spec))
    want = np.load(FIXTURES / "mixtral_outputs.npz")
    logits, record = model(jnp.asarray(want["ids"]))
    np.testing.assert_allclose(logits, want["logits"], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(record.logits, want["router_logits"], rtol=1e-5, atol=1e-5)
    greedy = moejax.generate(model, want["ids"], max_new_tokens=5).tokens
    np.testing.assert_array_equal(greedy, want["greedy"])


def test_fixture_import_export_round_trip_is_bit_exact(tmp_path):
    _, v4 = hf_dir.read_hf_dir(FIXTURES / "mixtral")
    _, fused = hf_dir.read_hf_dir(FIXTURES / "mixtral_fused")
    assert fused.keys() == v4.keys() and all(np.array_equal(fused[k], v4[k]) for k in v4)
    assert hf_cli.main(["moejax-hf", "import", "--hf", str(FIXTURES / "mixtral_fused"),
                        "--out", str(tmp_path / "ex")]) == 0
    assert hf_cli.main(["moejax-hf", "export", "--from", str(tmp_path / "ex"), "--out",
                        str(tmp_path / "hf")]) == 0
    _, back = hf_dir.read_hf_dir(tmp_path / "hf")
    assert back.keys() == v4.keys() and all(np.array_equal(back[k], v4[k]) for k in v4)
