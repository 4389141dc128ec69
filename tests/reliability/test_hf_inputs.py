"""Reliability: Hugging Face checkpoints are untrusted input (issue "Reliability, round three").

Each case is a tiny HF directory (`hf_helpers.SPEC` written by `hf_dir.write_hf_dir`, then
edited) that `moejax-hf import`, `moejax-sample --export` or `train.init_from` must refuse
with one line naming the key, the value, the tensor or the file, before anything is sized by
the config; and the `--dtype auto` export of a relative `--from`.
"""

import dataclasses
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from moejax.cli import hf as hf_cli
from moejax.cli import sample
from moejax.models import hf_config, weights
from moejax.models.hf_dir import INDEX, write_hf_dir
from tests.models.hf_helpers import SPEC, hf_state_dict

ROOT = pathlib.Path(__file__).resolve().parents[2]
MIXTRAL = dataclasses.replace(SPEC, d_ff=SPEC.moe.d_hidden)  # Mixtral has no dense FFN
LAYERS = "model.layers.0.self_attn.q_proj.weight"


def _hf(tmp_path, name="hf", **write) -> pathlib.Path:
    return write_hf_dir(hf_state_dict(0), MIXTRAL, tmp_path / name, **write)


def _edit_config(directory: pathlib.Path, change) -> None:
    config = json.loads((directory / "config.json").read_text())
    config = change(config) if callable(change) else {**config, **change}
    (directory / "config.json").write_text(json.dumps(config))


def _edit_tensors(directory: pathlib.Path, change) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def _import(tmp_path, directory, capsys) -> tuple[int, str]:
    argv = ["moejax-hf", "import", "--hf", str(directory), "--out", str(tmp_path / "export")]
    status = hf_cli.main(argv)
    return status, capsys.readouterr().err


def _bounded(code: str) -> list[str]:
    """Runs `code` in a child Python limited to 3 GiB of address space and 120 s -> its
    stdout lines. A case that used to hang and grow (to 7.5 GB and beyond) fails here with a
    MemoryError or the timeout instead of taking the machine; stderr comes with a failure."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120, preexec_fn=limit)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


@pytest.mark.parametrize("key, value, message", [
    ("num_hidden_layers", 10**6, "HF Mixtral config num_hidden_layers=1000000 (model.num_layers)"
                                 " but the tensors hold 2 layers (indices 0 to 1)"),
    ("num_local_experts", 10**8, "HF Mixtral config num_local_experts=100000000 (model.moe."
                                 "num_experts) but the tensors hold 5 experts (indices 0 to 4)"),
])
def test_a_config_larger_than_its_tensors_fails_at_once(tmp_path, key, value, message):
    """A 1,000,000-layer or 100,000,000-expert config beside a 15 KB weights file: import and
    init_from stop in well under a second (they used to hang, growing to 7.5 / 13.2 GB)."""
    directory = _hf(tmp_path)
    _edit_config(directory, {key: value})
    lines = _bounded(f"""
        import dataclasses, time
        from flax import nnx
        from moejax.cli import hf
        from moejax.models.decoder import Decoder
        from moejax.train.init_from import init_from
        from tests.models.hf_helpers import SPEC
        model = Decoder(dataclasses.replace(SPEC, d_ff=SPEC.moe.d_hidden), rngs=nnx.Rngs(0))
        started = time.perf_counter()
        status = hf.main(["moejax-hf", "import", "--hf", {str(directory)!r}, "--out",
                          {str(tmp_path / "export")!r}])
        print(status, time.perf_counter() - started, flush=True)
        started = time.perf_counter()
        try:
            init_from(model, {str(directory)!r})
        except ValueError as error:
            print(time.perf_counter() - started, error, sep=chr(10))
    """)
    status, import_seconds = lines[0].split()
    assert status == "1" and float(import_seconds) < 1.0
    assert float(lines[1]) < 1.0 and lines[2:] == [message]
    assert not (tmp_path / "export").exists()


def test_expected_names_are_made_lazily_whatever_the_config_says(tmp_path):
    """100,000,000 experts beside a file without expert tensors (so no expert count to
    compare with): the expected names are compared one at a time and the first 20 missing
    ones named, never a list of 300,000,000 names."""
    directory = tmp_path / "hf"
    tensors = {k: v for k, v in hf_state_dict(0).items() if ".experts." not in k}
    write_hf_dir(tensors, MIXTRAL, directory)
    _edit_config(directory, {"num_local_experts": 10**8})
    lines = _bounded(f"""
        import time
        from moejax.models.convert_hf import from_hf
        from moejax.models.hf_dir import read_hf_dir
        started = time.perf_counter()
        try:
            from_hf(*reversed(read_hf_dir({str(directory)!r})))
        except ValueError as error:
            print(time.perf_counter() - started, error, sep=chr(10))
    """)
    assert float(lines[0]) < 1.0
    expert = "model.layers.0.block_sparse_moe.experts.{}.w1.weight"
    assert lines[1:] == [
        "HF Mixtral state dict does not match the spec (E=100000000, layers=2): missing "
        f"{[expert.format(e) for e in range(20)]} and more"]


def test_a_qwen_config_of_a_billion_layers_reads_in_constant_time():
    """Qwen's dense-layer pattern is worked out without a list as long as the model."""
    spec = dataclasses.replace(MIXTRAL, hf_family="qwen3_moe", qk_norm=True)
    config = {**hf_config.hf_config_from_spec(spec), "num_hidden_layers": 10**9,
              "mlp_only_layers": [0, 1], "decoder_sparse_step": 1}
    lines = _bounded(f"""
        import time
        from moejax.models.hf_config import spec_from_hf_config
        config = {config!r}
        started = time.perf_counter()
        got = spec_from_hf_config(config)
        print(time.perf_counter() - started, got.num_layers, got.first_dense_layers,
              got.moe_every)
        config["mlp_only_layers"] = [0, 5]
        try:
            spec_from_hf_config(config)
        except ValueError as error:
            print(error)
    """)
    seconds, *layout = lines[0].split()
    assert float(seconds) < 1.0 and layout == [str(10**9), "2", "1"]
    assert "puts MoE layers at [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13]...; moejax needs" in \
        lines[1]


def _set(name, value):
    def change(tensors):
        tensors[name] = value(tensors[name])
    return change


def _poke(number):
    def value(array):
        array = array.copy()
        array.flat[3] = number
        return array
    return value


@pytest.mark.parametrize("change, message", [
    (_set(LAYERS, _poke(np.nan)),
     f"HF tensor {LAYERS} holds 1 non-finite values (NaN or infinity) as float32"),
    (_set("lm_head.weight", _poke(-np.inf)),
     "HF tensor lm_head.weight holds 1 non-finite values (NaN or infinity) as float32"),
    (_set(LAYERS, lambda a: a.astype(np.int8)),
     f"HF tensor {LAYERS} has dtype int8; allowed: float16, bfloat16, float32, float64"),
    (_set("model.norm.weight", lambda a: a > 0),
     "HF tensor model.norm.weight has dtype bool; allowed: float16, bfloat16, float32, float64"),
    (_set(LAYERS, lambda a: np.full_like(a, 1e300, np.float64)),
     f"HF tensor {LAYERS} holds 288 non-finite values (NaN or infinity) as float32"),
])
def test_weights_that_are_not_finite_floats_are_refused(tmp_path, capsys, change, message):
    """NaN / infinity (also once cast to float32) and int8 / bool tensors: import and sample
    stop naming the tensor (import used to exit 0 and keep the int8 / bool dtype; sample
    printed 0,0,0,...)."""
    directory = _hf(tmp_path)
    _edit_tensors(directory, change)
    assert _import(tmp_path, directory, capsys) == (1, f"moejax-hf: {message}\n")
    argv = ["moejax-sample", "--export", str(directory), "--prompt_ids", "1,2"]
    assert sample.main(argv) == 1
    assert capsys.readouterr().err == f"moejax-sample: {message}\n"


def test_float16_and_float64_tensors_are_imported_as_float32(tmp_path, capsys):
    directory = _hf(tmp_path)
    _edit_tensors(directory, lambda t: t.update(
        {name: value.astype(np.float16 if i % 2 else np.float64)
         for i, (name, value) in enumerate(sorted(t.items()))}))
    assert _import(tmp_path, directory, capsys) == (0, "")
    assert weights.exported_dtypes(tmp_path / "export") == {"float32"}


def _without(*keys):
    return lambda config: {k: v for k, v in config.items() if k not in keys}


@pytest.mark.parametrize("change, message", [
    ({"rope_theta": -1, "rope_parameters": None}, "HF config rope_theta=-1; allowed: a finite "
                                                  "number > 0"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}},
     "HF config rope_parameters.rope_theta=0; allowed: a finite number > 0"),
    ({"rms_norm_eps": -1}, "HF config rms_norm_eps=-1; allowed: a finite number > 0"),
    ({"rms_norm_eps": math.inf}, "HF config rms_norm_eps=inf; allowed: a finite number > 0"),
    ({"num_experts_per_tok": 2.5}, "HF config num_experts_per_tok=2.5; allowed: an integer "
                                   ">= 1"),
    ({"num_experts_per_tok": 6}, "HF config num_experts_per_tok=6 > num_local_experts=5"),
    ({"num_experts_per_tok": True}, "HF config num_experts_per_tok=True; allowed: an integer "
                                    ">= 1"),
    ({"hidden_size": "32"}, "HF config hidden_size='32'; allowed: an integer >= 1"),
    ({"num_hidden_layers": 0}, "HF config num_hidden_layers=0; allowed: an integer >= 1"),
    ({"head_dim": 4.0}, "HF config head_dim=4.0; allowed: an integer >= 1, or None"),
    ({"router_jitter_noise": 1.5}, "HF config router_jitter_noise=1.5; allowed: a number in "
                                   "[0, 1)"),
    ({"eos_token_id": -2}, "HF config eos_token_id=-2; allowed: an integer >= 0, or None"),
    ({"model_type": ["mixtral"]}, "HF config model_type=['mixtral']; allowed: mixtral, "
                                  "qwen3_moe, olmoe, qwen2_moe, deepseek_v2, deepseek_v3"),
    ({"rope_parameters": "default"}, "HF config rope_parameters='default'; allowed: an object "
                                     "or null"),
    (_without("hidden_size"), "HF config has no 'hidden_size' (moejax's model.d_model)"),
    (_without("num_experts_per_tok"), "HF config has no 'num_experts_per_tok' (moejax's "
                                      "model.moe.top_k)"),
])
def test_config_values_of_the_wrong_type_or_out_of_range_are_named(tmp_path, capsys, change,
                                                                    message):
    """Each value is checked against its key's kind: one line naming the key and the value
    (2.5 top-k used to reach the export, -1 RoPE theta and norm epsilon to exit 0)."""
    directory = _hf(tmp_path)
    _edit_config(directory, change)
    assert _import(tmp_path, directory, capsys) == (1, f"moejax-hf: {message}\n")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "holds an array, not a JSON object"),
    ('"mixtral"', "holds a string, not a JSON object"),
    ("{", "is not valid JSON (Expecting property name enclosed in double quotes: line 1 column "
          "2 (char 1))"),
])
def test_a_config_that_is_not_a_json_object_names_the_file(tmp_path, capsys, text, message):
    directory = _hf(tmp_path)
    (directory / "config.json").write_text(text)
    assert _import(tmp_path, directory, capsys) == (
        1, f"moejax-hf: {directory / 'config.json'} {message}\n")


def test_weights_files_that_do_not_read_or_hold_empty_tensors_are_named(tmp_path, capsys):
    """Not a safetensors file (a SafetensorError traceback before) or a tensor with no
    elements (a fused [E, 0, D] one would make E per-expert names)."""
    directory = _hf(tmp_path)
    weights_file = directory / "model.safetensors"
    _edit_tensors(directory, lambda t: t.update({"lm_head.weight": np.zeros((0, 12),
                                                                            np.float32)}))
    assert _import(tmp_path, directory, capsys) == (
        1, f"moejax-hf: HF tensor lm_head.weight in {weights_file} has shape (0, 12): no "
           "elements\n")
    weights_file.write_bytes(b"\xff" * 100)
    assert _import(tmp_path, directory, capsys) == (
        1, f"moejax-hf: {weights_file} is not a readable safetensors file (Error while "
           "deserializing header: header too large)\n")


def _sharded(tmp_path) -> tuple[pathlib.Path, dict]:
    directory = _hf(tmp_path, max_shard_bytes=3000)
    return directory, json.loads((directory / INDEX).read_text())


@pytest.mark.parametrize("index", [{"metadata": {}}, {"weight_map": ["a.safetensors"]},
                                   {"weight_map": {"lm_head.weight": 3}}])
def test_an_index_without_a_weight_map_object_is_named(tmp_path, capsys, index):
    directory, _ = _sharded(tmp_path)
    (directory / INDEX).write_text(json.dumps(index))
    assert _import(tmp_path, directory, capsys) == (
        1, f"moejax-hf: {directory / INDEX} has no 'weight_map' object of tensor name -> file "
           "name\n")


def test_index_entries_outside_the_directory_are_refused(tmp_path, capsys):
    """`../other/x.safetensors`, `/etc/passwd` and a symlink out: refused, naming the entry
    and where it leads (the first used to be read and imported, exit 0)."""
    directory, index = _sharded(tmp_path)
    first = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / "other").mkdir()
    os.replace(directory / first, tmp_path / "other" / first)
    for entry, leads in [(f"../other/{first}", tmp_path / "other" / first),
                         ("/etc/passwd", pathlib.Path("/etc/passwd"))]:
        weight_map = {k: entry if v == first else v for k, v in index["weight_map"].items()}
        (directory / INDEX).write_text(json.dumps({**index, "weight_map": weight_map}))
        assert _import(tmp_path, directory, capsys) == (
            1, f"moejax-hf: {directory / INDEX} entry {entry!r} leads to {leads.resolve()}, "
               f"outside {directory.resolve()}\n")
    (directory / INDEX).write_text(json.dumps(index))
    (directory / first).symlink_to(tmp_path / "other" / first)
    status, err = _import(tmp_path, directory, capsys)
    assert status == 1 and f"entry {first!r} leads to {tmp_path / 'other' / first}" in err


def test_a_hub_cache_snapshot_s_symlinks_into_its_blobs_are_read(tmp_path, capsys):
    """The hub's cache keeps files in blobs/ and links them from snapshots/<revision>/."""
    source, _ = _sharded(tmp_path)
    (source / "generation_config.json").write_text('{"eos_token_id": 2}')
    repo = tmp_path / "hub" / "models--tiny--mixtral"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(source.iterdir())):
        os.replace(file, repo / "blobs" / f"blob{i}")
        (snapshot / file.name).symlink_to(f"../../blobs/blob{i}")
    assert _import(tmp_path, snapshot, capsys) == (0, "")
    kept = tmp_path / "export" / "generation_config.json"  # copied under its own name
    assert json.loads(kept.read_text()) == {"eos_token_id": 2}


def test_auto_dtype_export_of_a_relative_bf16_import_stays_bf16(tmp_path, capsys, monkeypatch):
    """`moejax-hf export --from export --dtype auto` (a relative path) used to read no stored
    dtypes and write float32."""
    directory = _hf(tmp_path, dtype="bfloat16")
    assert _import(tmp_path, directory, capsys) == (0, "")
    monkeypatch.chdir(tmp_path)
    assert hf_cli.main(["moejax-hf", "export", "--from", "export", "--out", "back"]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["torch_dtype"] == \
        "bfloat16"
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert {value.dtype for value in back.values()} == {np.dtype(ml_dtypes.bfloat16)}


def test_moejax_train_init_from_a_bad_directory_is_one_line(tmp_path):
    """The trainer's CLI reports an untrusted directory's error as one line, exit 2."""
    directory = _hf(tmp_path)
    _edit_tensors(directory, _set(LAYERS, _poke(np.nan)))
    code = ("import sys; from moejax.cli.train import run; sys.argv = ['moejax-train', "
            f"'--config', 'configs/tiny.py', '--workdir', {str(tmp_path / 'work')!r}, "
            f"'--init_from', {str(directory)!r}]; run()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"moejax-train: HF tensor {LAYERS} holds 1 non-finite values (NaN or infinity) as "
        "float32")


def test_the_finetune_config_names_a_config_json_that_is_not_an_object(tmp_path):
    """configs/finetune_hf.py:DIR reads DIR/config.json as the importer does: a JSON array is
    a one-line error naming the file, not a TypeError."""
    from moejax.train.config_files import SHIPPED, load_config

    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json holds an array, not a JSON object"):
        load_config(SHIPPED / "finetune_hf.py", str(tmp_path))
    (tmp_path / "config.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match=r"neither a Hugging Face config \(model_type\) nor"):
        load_config(SHIPPED / "finetune_hf.py", str(tmp_path))
