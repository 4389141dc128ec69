"""Training on real text: a subword tokenizer, instruction records, a mixture, and data that
changes under a resumed run."""

import json
import math
import pathlib

import numpy as np
import pytest

from moejax.train.trainer import train_and_evaluate
from tests.data.helpers import write_tokenizer
from tests.train.helpers import metrics_rows, tiny_config

PROMPTS = ("Translate: café", "def main():", "What is 2 + 2?", "Say hello", "日本語?")


def _records():
    return [{"prompt": f"{p} #{i}\n", "completion": f"Answer {i}: {p[::-1]} done.\n" * 2}
            for i, p in enumerate(PROMPTS * 8)]


def _instruction_corpus(root: pathlib.Path) -> str:
    """Two domains of prompt/completion records; returns a glob over them."""
    for domain in ("chat", "code"):
        (root / domain).mkdir(parents=True, exist_ok=True)
        (root / domain / "part.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _records()))
    return str(root / "**" / "*.jsonl")


def _config(tmp_path, steps=2):
    config = tiny_config(steps=steps)
    config.model.vocab_size = 320
    config.data.update(corpus="jsonl", paths=(_instruction_corpus(tmp_path / "corpus"),),
                       prompt_field="prompt", completion_field="completion",
                       loss_on="completion", validation_every=4, num_threads=0,
                       tokenizer=str(write_tokenizer(tmp_path / "tok", texts=tuple(
                           r["prompt"] + r["completion"] for r in _records()))))
    config.data.mixture = (("chat", 3.0), ("code", 1.0))
    return config


def test_a_tokenizer_instruction_records_and_a_mixture_train(tmp_path):
    """The run keeps its tokenizer, trains on completions only, logs the mixture's realised
    shares, and reports bits per byte from the bytes the evaluated tokens cover."""
    config = _config(tmp_path)
    train_and_evaluate(config, tmp_path / "run")
    rows = metrics_rows(tmp_path / "run")
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    step_tokens = config.train.batch_size * config.train.seq_len
    trained = [row["trained_tokens"] for row in rows]
    assert all(t > 0 for t in trained) and sum(trained) < len(rows) * step_tokens
    last = rows[-1]
    assert last["data/mixture_patterns"] == ["chat", "code"]
    np.testing.assert_allclose(last["data/mixture_targets"], [0.75, 0.25])
    np.testing.assert_allclose(last["data/mixture_shares"], [0.75, 0.25], atol=0.02)
    assert 0 < last["eval/tokens"] < last["eval/bytes"]  # a BPE token covers several bytes
    want = last["val_loss"] * last["eval/tokens"] / last["eval/bytes"] / math.log(2.0)
    assert last["val_bits_per_byte"] == pytest.approx(want, rel=1e-6)


def test_a_resume_on_changed_data_stops_naming_the_file(tmp_path):
    config = _config(tmp_path, steps=1)
    train_and_evaluate(config, tmp_path / "run")
    changed = tmp_path / "corpus" / "code" / "part.jsonl"
    changed.write_text(changed.read_text().replace("done", "DONE"))
    config.train.steps = 2
    with pytest.raises(ValueError, match=r"the data files changed since the checkpoint .*: "
                                         r".*code/part.jsonl \(changed\).*accept_changed_data"):
        train_and_evaluate(config, tmp_path / "run")
    config.data.accept_changed_data = True
    assert train_and_evaluate(config, tmp_path / "run")["step"] == 2


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused_before_work(tmp_path):
    config = _config(tmp_path)
    config.model.vocab_size = 259
    with pytest.raises(ValueError, match=r"model.vocab_size=259 cannot embed every id of "
                                         r"data.tokenizer='.*tok' \(ids 0..299\)"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
