"""Hugging Face directories (moejax/models/hf_dir.py) and `moejax-hf import / export`.

The tensors are the random HF-layout state dict of test_convert_hf.py, whose converter is
checked there against a NumPy forward written from HF's modeling code.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import moejax
from moejax.cli import hf as hf_cli
from moejax.models import hf_config, hf_dir, weights
from moejax.models.convert_hf import from_hf, to_hf
from moejax.models.decoder import Decoder
from moejax.models.layout import stack_params
from moejax.models.weights import load_params
from tests.models.hf_helpers import FIXTURES, SPEC, hf_state_dict


def _spec():
    return dataclasses.replace(SPEC, d_ff=SPEC.moe.d_hidden)  # Mixtral has no dense FFN


def test_config_both_ways_and_what_is_refused():
    spec = _spec()
    hf = hf_config.hf_config_from_spec(spec)
    assert hf["num_key_value_heads"] == 2 and hf["head_dim"] == 4 and hf["rope_theta"] == 500.0
    assert hf_config.spec_from_hf_config(hf, scan_layers=False) == spec
    v5 = {k: v for k, v in hf.items() if k != "rope_theta"}  # transformers 5 keeps it here
    assert hf_config.spec_from_hf_config(v5).rope_theta == 500.0
    for change, named in [({"model_type": "gpt_oss"}, "model_type='gpt_oss'"),
                          ({"sliding_window": 4096}, "sliding_window=4096"),
                          ({"tie_word_embeddings": True}, "tie_word_embeddings=True"),
                          ({"rope_parameters": {"rope_type": "yarn"}}, "rope type 'yarn'")]:
        with pytest.raises(ValueError, match=named):
            hf_config.spec_from_hf_config({**hf, **change})
    with pytest.raises(ValueError, match="model.block='deepseek' has no HF Mixtral"):
        hf_config.hf_config_from_spec(dataclasses.replace(spec, block="deepseek"))


def test_the_family_is_named_never_inferred():
    """Reading takes the family from config.json's model_type, writing from model.hf_family;
    an option such as qk_norm never picks it, and a mismatch is an error naming both."""
    with pytest.raises(ValueError, match=r"model.qk_norm=True has no HF Mixtral equivalent "
                       r"\(needs False; model.hf_family='mixtral'\)"):
        hf_config.hf_config_from_spec(dataclasses.replace(_spec(), qk_norm=True))
    qwen = dataclasses.replace(_spec(), hf_family="qwen3_moe")
    with pytest.raises(ValueError, match="model.qk_norm=False has no HF Qwen3-MoE"):
        to_hf(Decoder(qwen, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="model.hf_family='llama'; allowed: mixtral, qwen3_moe"):
        dataclasses.replace(qwen, hf_family="llama")
    qwen = dataclasses.replace(qwen, qk_norm=True)
    hf = hf_config.hf_config_from_spec(qwen)
    assert (hf["model_type"], hf["architectures"]) == ("qwen3_moe", ["Qwen3MoeForCausalLM"])
    assert hf_config.spec_from_hf_config(hf, scan_layers=False) == qwen
    mixtral = hf_config.spec_from_hf_config(hf_config.hf_config_from_spec(_spec()))
    assert (mixtral.hf_family, mixtral.qk_norm) == ("mixtral", False)
    with pytest.raises(ValueError, match="HF config has no 'num_experts_per_tok'"):
        hf_config.spec_from_hf_config({k: v for k, v in hf.items() if k != "num_experts_per_tok"})


def test_qwen3_config_both_ways_dense_layers_and_what_is_refused():
    """Qwen3-MoE: q/k norms, head_dim apart from hidden / heads, norm_topk_prob as
    normalize_gates, and its dense layers (decoder_sparse_step, mlp_only_layers) as
    first_dense_layers / moe_every, both ways."""
    moe = dataclasses.replace(SPEC.moe, router=dataclasses.replace(SPEC.moe.router,
                                                                   normalize_gates=False))
    spec = dataclasses.replace(SPEC, hf_family="qwen3_moe", qk_norm=True, num_layers=4,
                               first_dense_layers=1, moe_every=2, head_dim=8, moe=moe)
    hf = hf_config.hf_config_from_spec(spec)
    assert (hf["model_type"], hf["decoder_sparse_step"], hf["mlp_only_layers"],
            hf["norm_topk_prob"], hf["head_dim"]) == ("qwen3_moe", 2, [], False, 8)
    assert hf_config.spec_from_hf_config(hf, scan_layers=False) == spec
    step1 = {**hf, "num_hidden_layers": 3, "decoder_sparse_step": 1, "mlp_only_layers": [0]}
    got = hf_config.spec_from_hf_config(step1)
    assert (got.first_dense_layers, got.moe_every, got.num_layers) == (1, 1, 3)
    assert hf_config.spec_from_hf_config(hf_config.hf_config_from_spec(got)) == got
    odd = dataclasses.replace(spec, first_dense_layers=2, moe_every=1)  # MoE at 2, 3
    assert hf_config.hf_config_from_spec(odd)["mlp_only_layers"] == [0, 1]
    for change, named in [
            ({"decoder_sparse_step": 1, "mlp_only_layers": [2]}, r"MoE layers at \[0, 1, 3\]"),
            ({"use_sliding_window": True}, "use_sliding_window=True"),
            ({"attention_bias": True}, "attention_bias=True")]:
        with pytest.raises(ValueError, match=named):
            hf_config.spec_from_hf_config({**hf, **change})
    with pytest.raises(ValueError, match="model.moe.num_shared_experts=1 has no HF Qwen3-MoE"):
        hf_config.hf_config_from_spec(dataclasses.replace(
            spec, moe=dataclasses.replace(moe, num_shared_experts=1)))


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
    spec, tensors = _spec(), hf_state_dict(3)
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "sharded", max_shard_bytes=2000)
    index = json.loads((tmp_path / "sharded" / hf_dir.INDEX).read_text())
    assert set(index["weight_map"]) == set(tensors) and len(set(index["weight_map"].values())) > 3
    read_spec, read = hf_dir.read_hf_dir(tmp_path / "sharded", scan_layers=False)
    assert read_spec == spec and read.keys() == tensors.keys()
    assert all(np.asarray(read[k]).dtype == np.float32 and np.array_equal(read[k], tensors[k])
               for k in tensors)
    fused = hf_dir.per_expert_layout(_fused(tensors, spec))
    assert fused.keys() == tensors.keys()
    assert all(np.array_equal(fused[k], tensors[k]) for k in tensors)
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "bf16", dtype="bfloat16")
    assert not (tmp_path / "bf16" / hf_dir.INDEX).exists()
    _, halves = hf_dir.read_hf_dir(tmp_path / "bf16")
    name = "lm_head.weight"
    assert np.asarray(halves[name]).dtype == ml_dtypes.bfloat16  # read in the stored dtype
    np.testing.assert_array_equal(halves[name], tensors[name].astype(ml_dtypes.bfloat16))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_cli_import_of_a_sharded_directory_gives_its_parameters(tmp_path, capsys):
    spec, tensors = _spec(), hf_state_dict(4)
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "hf", max_shard_bytes=3000)
    argv = ["moejax-hf", "import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ex")]
    assert hf_cli.main(argv) == 0
    assert hf_cli.main(argv) == 1  # not empty
    assert "--out" in capsys.readouterr().err
    loaded_spec, params = weights.load_exported(tmp_path / "ex")
    assert loaded_spec.scan_layers and loaded_spec.num_layers == spec.num_layers
    want = stack_params(loaded_spec, from_hf(tensors, spec))
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
    spec, tensors = _spec(), hf_state_dict(5)
    hf_dir.write_hf_dir(tensors, spec, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokens = np.arange(14).reshape(2, 7) % spec.vocab_size
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(tokens)).logits.numpy()
    model = Decoder(spec, rngs=nnx.Rngs(0))
    nnx.update(model, from_hf(tensors, spec))
    np.testing.assert_allclose(model(jnp.asarray(tokens))[0], hf_logits, rtol=1e-4, atol=1e-4)


def _tokenizer_hf_dir(path, tensors, spec, *, kept=None, eos_token=None, generation=None):
    """An HF directory with a subword tokenizer (write_tokenizer: <|endoftext|> = 0,
    <|pad|> = 1), optionally another eos token and a generation_config.json."""
    from tests.data.helpers import write_tokenizer

    hf_dir.write_hf_dir(tensors, spec, path, kept=kept, generation=generation)
    write_tokenizer(path)
    if eos_token is not None:
        config = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**config,
                                                                "eos_token": eos_token}))
    return path


def _import_export(tmp_path, source):
    assert hf_cli.main(["moejax-hf", "import", "--hf", str(source), "--out",
                        str(tmp_path / "ex")]) == 0
    assert hf_cli.main(["moejax-hf", "export", "--from", str(tmp_path / "ex"), "--out",
                        str(tmp_path / "out")]) == 0
    return tmp_path / "ex", tmp_path / "out"


def test_import_export_keeps_the_tokenizer_generation_config_and_special_ids(tmp_path):
    """The tokenizer files and generation_config.json travel through an export; config.json's
    context length and special ids are kept under "hf" and written back."""
    from moejax.data.tokenizer import TOKENIZER_FILES, load_tokenizer

    spec = dataclasses.replace(_spec(), vocab_size=300)
    kept = {"max_position_embeddings": 40960, "bos_token_id": None, "eos_token_id": 0,
            "pad_token_id": 1}
    generation = {"bos_token_id": 0, "eos_token_id": [0, 1], "max_length": 77}
    source = _tokenizer_hf_dir(tmp_path / "hf", hf_state_dict(6, spec=spec), spec, kept=kept,
                               generation=generation)
    export, out = _import_export(tmp_path, source)
    assert json.loads((export / "config.json").read_text())["hf"] == kept
    assert weights.tokenizer_dir(export) == export
    assert load_tokenizer(export).eos_id == 0
    files = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    assert files == ["tokenizer.json", "tokenizer_config.json"]
    for name in (*files, hf_dir.GENERATION_CONFIG):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
    config = json.loads((out / "config.json").read_text())
    assert {k: config.get(k) for k in kept} == kept and "bos_token_id" not in config
    assert hf_dir.read_hf_dir(out, scan_layers=False)[0] == spec
    text = "def main():\n    return café"
    assert load_tokenizer(out).decode(load_tokenizer(out).encode(text)) == text
    # nothing kept and no generation_config.json: the ids come from the tokenizer, 32768 stays
    source = _tokenizer_hf_dir(tmp_path / "bare", hf_state_dict(6, spec=spec), spec)
    _, out = _import_export(tmp_path / "bare_run", source)
    assert json.loads((out / hf_dir.GENERATION_CONFIG).read_text()) == {"eos_token_id": 0,
                                                                        "pad_token_id": 1}
    config = json.loads((out / "config.json").read_text())
    assert (config["max_position_embeddings"], config["eos_token_id"],
            config["pad_token_id"]) == (32768, 0, 1)


def test_an_exported_byte_level_model_declares_the_byte_specials(tmp_path):
    """A moejax-trained byte-level model (no tokenizer, vocabulary 259) gets 257/258/256;
    an imported model without ids gets none (the fixtures' round trip keeps theirs)."""
    spec = dataclasses.replace(_spec(), vocab_size=259)
    model = Decoder(spec, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    weights.write_export(tmp_path / "ex", {"model": dataclasses.asdict(spec)}, params,
                         overwrite=False)
    assert weights.tokenizer_dir(tmp_path / "ex") is None
    assert hf_cli.main(["moejax-hf", "export", "--from", str(tmp_path / "ex"), "--out",
                        str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / hf_dir.GENERATION_CONFIG).read_text()) == {
        "bos_token_id": 257, "eos_token_id": 258, "pad_token_id": 256}
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    _, out = _import_export(tmp_path / "qwen", FIXTURES / "qwen3_moe_fused")
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 64 and "eos_token_id" not in config
    assert not (out / hf_dir.GENERATION_CONFIG).exists()


def test_transformers_generate_stops_at_the_exported_eos(tmp_path):
    """Live check: after import and export, AutoTokenizer loads the directory and greedy
    `generate` stops at the tokenizer's end-of-text token (here the token moejax's greedy
    continuation gives third), as moejax's own greedy output truncated there."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer

    from tests.data.helpers import write_tokenizer

    spec = dataclasses.replace(_spec(), vocab_size=300)
    tensors = hf_state_dict(7, spec=spec)
    prompt = Tokenizer.from_file(str(write_tokenizer(tmp_path / "t") / "tokenizer.json"))
    eos_token_of = prompt.id_to_token
    prompt = np.asarray(prompt.encode("def main").ids, np.int32)
    model = Decoder(spec, rngs=nnx.Rngs(0))
    load_params(model, from_hf(tensors, spec))
    greedy = np.asarray(moejax.generate(model, prompt[None], max_new_tokens=8).tokens[0])
    new = greedy[len(prompt):]
    eos = int(new[2])
    stop = len(prompt) + int(np.flatnonzero(new == eos)[0]) + 1
    source = _tokenizer_hf_dir(tmp_path / "hf", tensors, spec, eos_token=eos_token_of(eos))
    _, out = _import_export(tmp_path, source)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token_id == eos
    assert tokenizer.decode(tokenizer("def main")["input_ids"]) == "def main"
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf_model.generation_config.eos_token_id == eos
    with torch.no_grad():
        got = hf_model.generate(torch.tensor(prompt[None].astype(np.int64)), max_new_tokens=8,
                                do_sample=False)
    assert got[0].tolist() == greedy[:stop].tolist()
