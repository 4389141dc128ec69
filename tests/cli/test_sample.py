"""moejax-sample: loads an export, prints the continuation and the ids; errors named."""

import dataclasses

import numpy as np
from flax import nnx

from moejax.cli import sample
from moejax.models import weights
from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.models.generate import generate

SPEC = {"vocab_size": 259, "d_model": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
        "d_ff": 24, "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8}}


def _export(path, spec):
    model = Decoder(spec, rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    weights.write_export(path, {"model": dataclasses.asdict(spec)}, params, overwrite=False)
    return model


def test_prints_the_greedy_continuation_of_text_and_of_ids(tmp_path, capsys):
    spec = decoder_spec_from_config(SPEC)
    model = _export(tmp_path / "ex", spec)
    want = np.asarray(generate(model, np.frombuffer(b"def ", np.uint8)[None].astype(np.int32),
                               5).tokens[0])
    assert want[:4].tolist() == [100, 101, 102, 32]
    assert sample.main(["moejax-sample", "--export", str(tmp_path / "ex"), "--prompt", "def ",
                        "--max_new_tokens", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "ids: " + ",".join(map(str, want))
    assert sample.main(["moejax-sample", "--export", str(tmp_path / "ex"), "--prompt_ids",
                        "100,101,102,32", "--max_new_tokens", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == lines[-1]


def test_errors_name_the_option(tmp_path, capsys):
    spec = decoder_spec_from_config(dict(SPEC, vocab_size=32))
    _export(tmp_path / "ex", spec)
    assert sample.main(["moejax-sample", "--export", str(tmp_path / "ex"), "--prompt", "x"]) == 1
    assert "--prompt needs a byte-level model" in capsys.readouterr().err
    assert sample.main(["moejax-sample", "--export", "a", "--workdir", "b", "--prompt",
                        "x"]) == 2
    assert sample.main(["moejax-sample", "--export", str(tmp_path / "ex"), "--prompt_ids", "3",
                        "--top_p", "0"]) == 1
    assert "top_p=0.0" in capsys.readouterr().err


def test_prompt_text_goes_through_the_exports_tokenizer(tmp_path, capsys):
    """An export with a subword tokenizer in its root: --prompt is encoded with it and the
    continuation decoded with it; --prompt_ids gives the same text."""
    from moejax.data.tokenizer import load_tokenizer
    from tests.data.helpers import write_tokenizer

    spec = decoder_spec_from_config(dict(SPEC, vocab_size=300))
    model = _export(tmp_path / "ex", spec)
    write_tokenizer(tmp_path / "ex")
    tokenizer = load_tokenizer(tmp_path / "ex")
    text = "def main():"
    prompt = tokenizer.encode(text)
    assert len(prompt) < len(text.encode())  # subwords, not bytes
    want = np.asarray(generate(model, prompt[None], 3).tokens[0])
    argv = ["moejax-sample", "--export", str(tmp_path / "ex"), "--max_new_tokens", "3"]
    assert sample.main([*argv, "--prompt", text]) == 0
    printed = capsys.readouterr().out.splitlines()
    ids = [int(i) for i in printed[-1].removeprefix("ids: ").split(",")]
    assert ids == want.tolist() and tokenizer.decode(ids[:len(prompt)]) == text
    assert "\n".join(printed[:-1]) == tokenizer.decode(want[len(prompt):])
    assert sample.main([*argv, "--prompt_ids", ",".join(map(str, prompt))]) == 0
    assert capsys.readouterr().out.splitlines() == printed


def test_a_tokenizer_the_model_cannot_use_or_find_is_named(tmp_path, capsys):
    from tests.data.helpers import write_tokenizer

    _export(tmp_path / "ex", decoder_spec_from_config(SPEC))  # 259 < the tokenizer's 300
    write_tokenizer(tmp_path / "ex")
    assert sample.main(["moejax-sample", "--export", str(tmp_path / "ex"), "--prompt",
                        "def main():"]) == 1
    assert "beyond the model's vocab_size=259" in capsys.readouterr().err
    spec = decoder_spec_from_config(dict(SPEC, vocab_size=300))
    model = Decoder(spec, rngs=nnx.Rngs(3))
    config = {"model": dataclasses.asdict(spec), "data": {"tokenizer": str(tmp_path / "gone")}}
    weights.write_export(tmp_path / "lost", config,
                         nnx.to_pure_dict(nnx.state(model, nnx.Param)), overwrite=False)
    argv = ["moejax-sample", "--export", str(tmp_path / "lost"), "--max_new_tokens", "2"]
    assert sample.main([*argv, "--prompt", "x"]) == 1
    assert "data.tokenizer=" in capsys.readouterr().err
    assert sample.main([*argv, "--prompt_ids", "5,6"]) == 0  # ids only
    assert capsys.readouterr().out.splitlines()[0].startswith("ids: 5,6,")
