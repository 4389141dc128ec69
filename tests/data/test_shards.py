"""Tests for moejax/data/shards.py and moejax/cli/prepare.py: shard format 2 with any tokenizer."""

import json
import sys

import numpy as np
import pytest

from moejax.cli import prepare as prepare_cli
from moejax.data import corpus, shards, tokens
from moejax.data.tokenizer import load_tokenizer
from tests.data.helpers import DOMAINS, write_corpus, write_tokenizer

UNICODE = "café ✓ 日本語 🙂 def f(x):\n    return x\n"  # multi-byte characters across tokens


def _bpe_spec(tmp_path, kind: str = "files") -> corpus.DataSpec:
    """A files corpus (plain text: every token trained), or JSONL instruction records (the
    completions trained), and a tiny BPE."""
    tokenizer = str(write_tokenizer(tmp_path / "tokenizer"))
    if kind == "files":
        pattern = write_corpus(tmp_path / "corpus")
        (tmp_path / "corpus" / "beta" / "unicode.txt").write_text(UNICODE * 3)
        return corpus.DataSpec(corpus="files", paths=(pattern,), validation_every=3,
                               tokenizer=tokenizer)
    for d, domain in enumerate(DOMAINS):
        (tmp_path / "corpus" / domain).mkdir(parents=True)
        lines = [json.dumps({"prompt": f"Q{i}: {UNICODE[:5 + i]}?", "completion": f" A {i}✓"})
                 for i in range(3 + d)]
        (tmp_path / "corpus" / domain / "r.jsonl").write_text("\n".join(lines) + "\n")
    return corpus.DataSpec(corpus="jsonl", paths=(str(tmp_path / "corpus" / "*" / "*.jsonl"),),
                           validation_every=3, tokenizer=tokenizer, prompt_field="prompt",
                           completion_field="completion", loss_on="completion")


def _read_files(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("kind", ["files", "instructions"])
def test_round_trip_equals_tokenize_and_index_counts(tmp_path, kind):
    spec = _bpe_spec(tmp_path, kind)
    out = tmp_path / "prepared"
    index = shards.prepare(spec, out, workers=0)
    tokenizer = load_tokenizer(spec.tokenizer)
    assert index == json.loads((out / shards.INDEX_FILE).read_text())
    assert index["format"] == shards.FORMAT == "moejax-arrayrecord/2"
    assert index["tokenizer"] == {"name": spec.tokenizer, "fingerprint": tokenizer.fingerprint}
    assert len(tokenizer.fingerprint) == 16 and tokenizer.fingerprint != "bytes"
    assert (index["vocab_size"], index["eos_id"]) == (tokenizer.vocab_size, tokenizer.eos_id)
    assert index["domain_names"] == list(DOMAINS)
    domain_ids = {name: i for i, name in enumerate(DOMAINS)}
    for split in corpus.SPLITS:
        docs = corpus.documents(spec, split)
        want = tokens.tokenize(tokenizer, docs, domain_ids)
        got = shards.RecordDocuments(out, split)
        assert len(got) == len(want) > 0 and got.index == index
        np.testing.assert_array_equal(got.lengths, [w.tokens.size for w in want])
        for i, expected in enumerate(want):
            doc = got.document(i)
            assert doc.domain == expected.domain
            for field in ("tokens", "token_bytes", "trained"):
                np.testing.assert_array_equal(getattr(doc, field), getattr(expected, field))
                assert getattr(doc, field).dtype == (bool if field == "trained" else np.int32)
        entry = index["splits"][split]
        assert entry["documents"] == len(docs)
        assert entry["tokens"] == sum(w.tokens.size for w in want)
        assert entry["bytes"] == sum(len(d.text) for d in docs)
        assert entry["trained_tokens"] == sum(int(w.trained.sum()) for w in want)
        if kind == "files":
            assert entry["trained_tokens"] == entry["tokens"]
        else:  # the prompts are not trained, whatever loss_on (the pipeline applies it)
            assert 0 < entry["trained_tokens"] < entry["tokens"]
    assert index["splits"]["train"]["bytes"] > index["splits"]["train"]["tokens"]  # merges
    with pytest.raises(FileExistsError, match="overwrite"):
        shards.prepare(spec, out, workers=0)


@pytest.mark.parametrize("ids, nbytes, trained", [
    ([5, 1, 258], [1, 1, 1], [True, True, True]),  # bytes: uint16 ids, no bytes, no mask
    ([70000, 3, 0, 9], [2, 0, 300, 1], [False, True, True, False]),  # int32 everywhere
    ([7, 8, 9, 10, 11, 12, 13, 14, 15], [3, 1, 4, 1, 5, 9, 2, 6, 5], [True] * 8 + [False]),
    ([], [], []),
])
def test_record_codec_round_trip(ids, nbytes, trained):
    doc = tokens.TokenizedDocument(np.array(ids, np.int32), np.array(nbytes, np.int32),
                                   np.array(trained, bool), 4)
    record = shards.encode_record(doc)
    back = shards.decode_record(record)
    assert back.domain == 4
    for field in ("tokens", "token_bytes", "trained"):
        np.testing.assert_array_equal(getattr(back, field), getattr(doc, field))
    if ids == [5, 1, 258]:
        assert len(record) == 12 + 2 * 3  # the header and uint16 ids only
    with pytest.raises(ValueError, match="header says"):
        shards.decode_record(record + b"\0")


def test_workers_give_identical_shards(tmp_path, monkeypatch):
    """One process pool per worker count (the only test that starts processes): the files are
    those of the in-process run, byte for byte."""
    monkeypatch.setattr(shards, "_BATCH_DOCUMENTS", 2)  # several batches in flight
    spec = _bpe_spec(tmp_path)
    files = {}
    for workers in (0, 1, 2):
        shards.prepare(spec, tmp_path / f"w{workers}", workers=workers, progress=False)
        files[workers] = _read_files(tmp_path / f"w{workers}")
    assert files[1] == files[0] and files[2] == files[0]
    assert set(files[0]) == {"index.json", "train.array_record", "train_lengths.npy",
                             "train_domains.npy", "validation.array_record",
                             "validation_lengths.npy", "validation_domains.npy"}


def test_older_format_is_refused_in_one_line(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "index.json").write_text(json.dumps({"format": "moejax-arrayrecord/1"}))
    with pytest.raises(ValueError, match="older moejax") as info:
        shards.RecordDocuments(old, "train")
    message = str(info.value)
    assert str(old) in message and "moejax-prepare again" in message and "\n" not in message
    (old / "index.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="has format 'other/9'"):
        shards.read_index(old)


def _config_file(path, paths, tokenizer):
    path.write_text("import ml_collections\n\ndef get_config(arg=None):\n"
                    "    config = ml_collections.ConfigDict()\n"
                    f"    config.data = dict(corpus='files', paths={paths!r}, "
                    f"tokenizer={tokenizer!r})\n"
                    "    return config\n")
    return path


def test_prepare_command_takes_the_tokenizer_override(tmp_path, capsys, monkeypatch):
    spec = _bpe_spec(tmp_path)
    config = _config_file(tmp_path / "cfg.py", spec.paths, "bytes")
    out = tmp_path / "out"

    def command(*args):
        argv = ["moejax-prepare", f"--out={out}", "--workers=0", *args]
        monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
        return prepare_cli.run_command("moejax-prepare", prepare_cli.USAGE, prepare_cli.FLAGS,
                                       prepare_cli.main, argv)

    assert command(f"--config={config}", f"--config.data.tokenizer={spec.tokenizer}") == 0
    index = shards.read_index(out)
    assert index["tokenizer"]["name"] == spec.tokenizer
    lines = capsys.readouterr().out.splitlines()
    train = index["splits"]["train"]
    assert lines[0] == (f"train: {train['documents']} documents, {train['tokens']} tokens, "
                        f"{train['bytes']} bytes, {train['bytes'] / train['tokens']:.2f} "
                        "bytes/token -> train.array_record")
    assert lines[1].startswith("validation: ") and index["tokenizer"]["fingerprint"] in lines[2]
    missing = _config_file(tmp_path / "missing.py", spec.paths, str(tmp_path / "missing"))
    assert command(f"--config={missing}", "--overwrite") == 2
    error = capsys.readouterr().err
    assert error.startswith("moejax-prepare: data.tokenizer=") and error.count("\n") == 1


def test_windows_end_documents_with_the_tokenizer_s_eos_and_shards_name_their_tokenizer(
        tmp_path):
    """The packing puts the tokenizer's EOS after every document (never the byte EOS 258),
    from text and from shards alike; shards prepared with one tokenizer are refused under
    another, naming both."""
    from moejax.data import pipeline

    spec = _bpe_spec(tmp_path)
    eos = load_tokenizer(spec.tokenizer).eos_id
    shards.prepare(spec, tmp_path / "p", workers=0)
    prepared = corpus.DataSpec(corpus="arrayrecord", paths=(str(tmp_path / "p"),),
                               tokenizer=spec.tokenizer)
    for source in (spec, prepared):
        windows = pipeline.packed_sequences(source, "train", seq_len=15)
        ends = np.concatenate([windows[i]["tokens"] for i in range(len(windows))])
        documents = pipeline.load_documents(source, "train")
        assert (ends == eos).sum() >= len(documents) - 1 and not (ends == 258).any()
    with pytest.raises(ValueError, match=r"data.paths='.*p' was prepared with tokenizer '.*"
                                         r"tokenizer' \(fingerprint [0-9a-f]{16}\), but "
                                         r"data.tokenizer='bytes' has fingerprint bytes"):
        pipeline.check_tokenizer(corpus.DataSpec(corpus="arrayrecord",
                                                 paths=(str(tmp_path / "p"),)), 320)
