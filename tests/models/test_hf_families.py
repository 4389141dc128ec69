"""Every Hugging Face family against fixtures written by transformers itself
(tests/fixtures/make_hf_fixtures.py): logits, router logits, greedy tokens through the decode
cache, a bit-exact import -> export (from transformers' fused in-memory state dict, exported in
shards), and (where transformers is installed) transformers loading moejax's export."""

import json
import logging
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

import moejax
from moejax.cli import hf as hf_cli
from moejax.models import hf_config, hf_dir
from moejax.models.convert_hf import from_hf
from moejax.models.decoder import Decoder
from moejax.models.weights import load_params
from tests.models.hf_helpers import FIXTURES

FAMILIES = ("mixtral", "qwen3_moe", "olmoe", "qwen2_moe", "deepseek_v2", "deepseek_v3")
# what each fixture exercises, read back from its config (a changed reader fails here first)
SHAPES = {
    "mixtral": lambda s: (s.block == "topk" and not s.qk_norm
                          and s.moe.router.normalize_gates),
    "qwen3_moe": lambda s: (s.qk_norm and s.qk_norm_axes == "head" and s.head_dim == 8
                            and s.first_dense_layers == 1
                            and not s.moe.router.normalize_gates),
    "deepseek_v3": lambda s: (s.mla.q_lora_rank == 12 and s.mla.rope_interleave
                              and s.rope_scaling.mscale_all_dim == 1.0
                              and s.moe.router.kind == "sigmoid" and s.moe.router.use_bias
                              and s.moe.router.num_groups == 4 and s.first_dense_layers == 1),
    "deepseek_v2": lambda s: (s.mla.q_lora_rank is None and s.moe.router.group_score == "max"
                              and s.moe.num_shared_experts == 2
                              and s.moe.router.scaling_factor == 1.5),
    "olmoe": lambda s: s.qk_norm and s.qk_norm_axes == "all" and s.clip_qkv == 0.5,
    "qwen2_moe": lambda s: (s.qkv_bias and s.moe.shared_mix == "sigmoid"
                            and s.first_dense_layers == 1),
}


def _load(directory):
    spec, tensors = hf_dir.read_hf_dir(directory)
    model = Decoder(spec, rngs=nnx.Rngs(0))
    load_params(model, from_hf(tensors, spec))
    return spec, tensors, model


@pytest.mark.parametrize("family", FAMILIES)
def test_fixture_logits_router_logits_and_greedy_tokens(family):
    spec, _, model = _load(FIXTURES / family)
    assert spec.hf_family == family and SHAPES[family](spec)
    want = np.load(FIXTURES / f"{family}_outputs.npz")
    logits, record = model(jnp.asarray(want["ids"]))
    np.testing.assert_allclose(logits, want["logits"], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(record.logits, want["router_logits"], rtol=1e-5, atol=1e-5)
    greedy = moejax.generate(model, want["ids"], max_new_tokens=5).tokens  # decode cache
    np.testing.assert_array_equal(greedy, want["greedy"])


@pytest.mark.parametrize("family", FAMILIES)
def test_import_export_round_trip_is_bit_exact(tmp_path, family):
    """`moejax-hf import` of transformers' fused state dict, then `export` with shards: every
    tensor back bit for bit under the hub's per-expert names, and the same spec."""
    _, per_expert = hf_dir.read_hf_dir(FIXTURES / family)
    _, fused = hf_dir.read_hf_dir(FIXTURES / f"{family}_fused")
    per_expert = {k: np.asarray(v) for k, v in per_expert.items()}
    assert fused.keys() == per_expert.keys()
    assert all(np.array_equal(fused[k], per_expert[k]) for k in per_expert)
    assert hf_cli.main(["moejax-hf", "import", "--hf", str(FIXTURES / f"{family}_fused"),
                        "--out", str(tmp_path / "ex")]) == 0
    assert hf_cli.main(["moejax-hf", "export", "--from", str(tmp_path / "ex"), "--out",
                        str(tmp_path / "hf"), "--max_shard_gb", "0.00002"]) == 0
    assert (tmp_path / "hf" / hf_dir.INDEX).is_file()  # 20 kB shards: several files
    spec, back = hf_dir.read_hf_dir(tmp_path / "hf")
    assert spec == hf_dir.read_hf_dir(FIXTURES / family)[0]
    assert back.keys() == per_expert.keys()
    assert all(np.array_equal(np.asarray(back[k]), per_expert[k]) for k in per_expert)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_the_export(tmp_path, family):
    """Live check where transformers is installed: from_pretrained on the directory moejax
    writes (its config.json included) computes the fixture's logits."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    spec, tensors = hf_dir.read_hf_dir(FIXTURES / family)
    hf_dir.write_hf_dir({k: np.asarray(v) for k, v in tensors.items()}, spec, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    want = np.load(FIXTURES / f"{family}_outputs.npz")
    with torch.no_grad():
        logits = hf_model(torch.tensor(want["ids"])).logits.numpy()
    np.testing.assert_allclose(logits, want["logits"], rtol=1e-5, atol=1e-5)


def test_deepseek_v3_mtp_layers_are_skipped_with_a_warning_naming_them(tmp_path, caplog):
    """A DeepSeek-V3 directory with `num_nextn_predict_layers=1` and a layer 3 of MTP tensors
    (as the hub's checkpoints have layer 61): the import skips them, says so, and computes the
    same model; an unexpected layer 4 is still an error."""
    source = tmp_path / "v3"
    shutil.copytree(FIXTURES / "deepseek_v3", source)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 1}))
    _, tensors = hf_dir.read_hf_dir(FIXTURES / "deepseek_v3")
    mtp = {k.replace("layers.2.", "layers.3."): np.asarray(v) for k, v in tensors.items()
           if k.startswith("model.layers.2.")}
    mtp["model.layers.3.enorm.weight"] = np.ones(16, np.float32)
    save_file(mtp, source / "mtp.safetensors")
    files = {name: "model.safetensors" for name in tensors} | {k: "mtp.safetensors" for k in mtp}
    (source / hf_dir.INDEX).write_text(json.dumps({"weight_map": files}))
    with caplog.at_level(logging.WARNING):
        spec, got = hf_dir.read_hf_dir(source)
    assert "multi-token prediction layers ['model.layers.3.']" in caplog.text
    assert got.keys() == tensors.keys() and spec.num_layers == 3
    (source / "config.json").write_text(json.dumps(config))  # 0 MTP layers: layer 3 unexpected
    with pytest.raises(ValueError, match="unexpected .*model.layers.3.enorm.weight"):
        spec, got = hf_dir.read_hf_dir(source)
        from_hf(got, spec)


@pytest.mark.parametrize(("family", "change", "message"), [
    ("deepseek_v3", {"kv_lora_rank": None}, "HF config has no 'kv_lora_rank'"),
    ("deepseek_v3", {"moe_layer_freq": 2}, "HF config moe_layer_freq=2 is not supported"),
    ("deepseek_v3", {"rope_parameters": {"rope_type": "linear", "factor": 2.0}},
     "rope type 'linear' is not supported (allowed: 'default', 'yarn')"),
    ("deepseek_v3", {"first_k_dense_replace": 9}, "first_k_dense_replace=9 > "
                                                   "num_hidden_layers=3"),
    ("deepseek_v2", {"topk_method": "noaux_tc"}, "HF config topk_method='noaux_tc'; allowed: "
                                                 "greedy, group_limited_greedy"),
    ("deepseek_v2", {"norm_topk_prob": True}, "norm_topk_prob=True is not supported"),
    ("deepseek_v3", {"scoring_func": "softmax"}, "scoring_func='softmax' is not supported "
                                                 "(allowed: 'sigmoid')"),
    ("olmoe", {"clip_qkv": -1}, "HF config clip_qkv=-1; allowed: a finite number > 0"),
    ("olmoe", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn'"),
    ("qwen2_moe", {"use_sliding_window": True}, "use_sliding_window=True is not supported"),
    ("qwen2_moe", {"qkv_bias": "yes"}, "HF config qkv_bias='yes'; allowed: true or false"),
    ("qwen2_moe", {"model_type": "gpt_oss"}, "model_type='gpt_oss'; allowed: mixtral"),
    ("qwen2_moe", {"model_type": "granitemoe"}, "model_type='granitemoe'; allowed: mixtral"),
    ("qwen2_moe", {"model_type": "phimoe"}, "model_type='phimoe'; allowed: mixtral"),
])
def test_what_a_family_cannot_honour_is_one_line_naming_it(family, change, message):
    config = {**json.loads((FIXTURES / family / "config.json").read_text()), **change}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")) as error:
        hf_config.spec_from_hf_config(config)
    assert "\n" not in str(error.value)
