"""Tests for moejax/data/sources/ (compressed inputs, parquet, saved datasets, records),
moejax/data/chat.py and moejax/data/fingerprint.py, on tiny files made in tmp_path."""

import dataclasses
import gzip
import json
import pathlib
import types

import pytest
import zstandard

from moejax.data import chat, fingerprint, sources
from moejax.data.corpus import DataSpec
from moejax.data.sources import hf_dataset, parquet
from tests.data.helpers import write_tokenizer

TEXTS = ("first line\nsecond é line\n", "short", "日本語 🙂 " * 40)
RECORDS = (
    {"text": "plain é", "prompt": "Q: 2+2?\n", "completion": "A: 4 ✓", "topic": "math"},
    {"text": "another", "prompt": "Übersetze: cat\n", "completion": "Katze", "topic": "words"},
    {"text": "三", "prompt": "", "completion": "only a completion", "topic": "math"},
)
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello é"}, {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Bye"}]
# a ChatML-like template; the assistant turn inside {% generation %} (transformers' marker)
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>"
            "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{{ eos_token }}"
            "{% endgeneration %}{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
EOS = "<|endoftext|>"


def _texts(docs):
    return [(d.text, d.domain, d.trained) for d in docs]


def _write_texts(root: pathlib.Path, suffix: str = "", compress=lambda data: data) -> str:
    for i, text in enumerate(TEXTS):
        folder = root / ("alpha" if i % 2 == 0 else "beta")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc{i}.txt{suffix}").write_bytes(compress(text.encode()))
    return str(root / "**" / f"*.txt{suffix}")


def _zstd_two_frames(data: bytes) -> bytes:
    """Two concatenated frames (as `zstd` of a concatenated file, or pzstd, writes)."""
    half = len(data) // 2
    return b"".join(zstandard.ZstdCompressor().compress(part) for part in (data[:half],
                                                                            data[half:]))


def _jsonl(records) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _spec(**fields):
    """A spec-like namespace for the options DataSpec does not allow with a corpus yet."""
    return types.SimpleNamespace(**{**dataclasses.asdict(DataSpec()), **fields})


def test_the_source_table_has_the_record_sources():
    assert sources.SOURCES["parquet"] is parquet
    assert sources.SOURCES["hf_dataset"] is hf_dataset
    assert set(sources.RECORD_SOURCES) <= set(sources.SOURCES)


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress),
                                              (".zst", _zstd_two_frames)])
def test_compressed_files_and_jsonl_read_as_the_uncompressed(tmp_path, suffix, compress):
    plain = _write_texts(tmp_path / "plain")
    packed = _write_texts(tmp_path / "packed", suffix, compress)
    expected = list(sources.SOURCES["files"].documents(DataSpec(corpus="files", paths=plain)))
    got = list(sources.SOURCES["files"].documents(DataSpec(corpus="files", paths=packed)))
    assert _texts(got) == _texts(expected)
    assert [d.name for d in got] == [d.name + suffix for d in expected]
    (tmp_path / "a.jsonl").write_bytes(_jsonl(RECORDS))
    (tmp_path / f"b.jsonl{suffix}").write_bytes(compress(_jsonl(RECORDS)))
    read = [list(sources.SOURCES["jsonl"].documents(DataSpec(corpus="jsonl", paths=str(p))))
            for p in (tmp_path / "a.jsonl", tmp_path / f"b.jsonl{suffix}")]
    assert _texts(read[1]) == _texts(read[0]) and len(read[0]) == len(RECORDS)


def test_a_file_that_is_not_what_its_suffix_says_names_file_and_compression(tmp_path):
    cases = {"gzipped.jsonl": gzip.compress(_jsonl(RECORDS)),  # gzip without the suffix
             "plain.jsonl.zst": _jsonl(RECORDS),  # zstd suffix, plain content
             "cut.jsonl.gz": gzip.compress(_jsonl(RECORDS) * 50)[:-40],  # truncated
             "cut.jsonl.zst": zstandard.ZstdCompressor().compress(_jsonl(RECORDS) * 50)[:-9]}
    messages = {"gzipped.jsonl": "gzip-compressed but its name does not end in .gz",
                "plain.jsonl.zst": "is not zstd-compressed", "cut.jsonl.gz": "not valid gzip",
                "cut.jsonl.zst": "not valid zstd"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}.*") as caught:
            list(sources.SOURCES["jsonl"].documents(DataSpec(corpus="jsonl",
                                                             paths=str(tmp_path / name))))
        assert messages[name] in str(caught.value) and "\n" not in str(caught.value)


def _write_records(root: pathlib.Path, records) -> dict[str, str]:
    """The records as JSONL, parquet and a saved dataset; {corpus: path}."""
    import datasets
    import pyarrow
    import pyarrow.parquet

    root.mkdir(parents=True, exist_ok=True)
    (root / "r.jsonl").write_bytes(_jsonl(records))
    table = pyarrow.Table.from_pylist(list(records))
    pyarrow.parquet.write_table(table, root / "r.parquet", row_group_size=2)  # 2 row groups
    datasets.Dataset.from_list(list(records)).save_to_disk(str(root / "saved"))
    return {"jsonl": str(root / "r.jsonl"), "parquet": str(root / "r.parquet"),
            "hf_dataset": str(root / "saved")}


def test_parquet_and_a_saved_dataset_read_as_the_equivalent_jsonl(tmp_path):
    paths = _write_records(tmp_path / "data", RECORDS)
    for fields in ({}, {"prompt_field": "prompt", "completion_field": "completion"}):
        read = {corpus: list(sources.SOURCES[corpus].documents(
                    DataSpec(corpus=corpus, paths=path, **fields)))
                for corpus, path in paths.items()}
        assert _texts(read["parquet"]) == _texts(read["jsonl"])
        assert [d.text for d in read["hf_dataset"]] == [d.text for d in read["jsonl"]]
        assert [d.trained for d in read["hf_dataset"]] == [d.trained for d in read["jsonl"]]
    assert [d.name for d in read["parquet"]] == ["r.parquet:0", "r.parquet:1", "r.parquet:2"]
    assert [d.name for d in read["hf_dataset"]] == ["0", "1", "2"]
    assert {d.domain for d in read["hf_dataset"]} == {"saved"}
    by_topic = list(parquet.documents(_spec(corpus="parquet", paths=(paths["parquet"],),
                                            domain_field="topic")))
    assert [d.domain for d in by_topic] == [r["topic"] for r in RECORDS]


def test_instruction_records_train_on_the_completion_bytes(tmp_path):
    (tmp_path / "i.jsonl").write_bytes(_jsonl(RECORDS))
    spec = DataSpec(corpus="jsonl", paths=str(tmp_path / "i.jsonl"), prompt_field="prompt",
                    completion_field="completion")
    for doc, record in zip(sources.SOURCES["jsonl"].documents(spec), RECORDS, strict=True):
        prompt, completion = record["prompt"].encode(), record["completion"].encode()
        assert doc.text == prompt + completion
        assert doc.trained == ((len(prompt), len(prompt) + len(completion)),)
        (start, end), = doc.trained
        assert doc.text[start:end] == completion


def test_malformed_records_name_the_file_the_line_or_row_and_the_option(tmp_path):
    lines = [b'{"text": "ok"}', b"{not json", b'{"body": "x"}', b'{"text": 3}',
             b'{"text": "bad \xff byte"}', b'{"text": "\\ud800"}']
    for number, line in enumerate(lines[1:], start=2):
        path = tmp_path / f"bad{number}.jsonl"
        path.write_bytes(lines[0] + b"\n" + line + b"\n")
        with pytest.raises(ValueError, match=rf"{path.name} line 2\b") as caught:
            list(sources.SOURCES["jsonl"].documents(DataSpec(corpus="jsonl", paths=str(path))))
        option = "data.paths" if number in (2, 5) else "data.text_field='text'"
        assert str(caught.value).startswith(option) and "\n" not in str(caught.value)
    paths = _write_records(tmp_path / "nulls", [{"text": "ok"}, {"text": None}])
    for corpus, where in (("parquet", "r.parquet row 1"), ("hf_dataset", "saved row 1")):
        spec = DataSpec(corpus=corpus, paths=paths[corpus])
        with pytest.raises(ValueError, match=f"data.text_field='text': .*{where}: .* null"):
            list(sources.SOURCES[corpus].documents(spec))
        with pytest.raises(ValueError, match="data.text_field='body': .* no column 'body'"):
            list(sources.SOURCES[corpus].documents(dataclasses.replace(spec, text_field="body")))


def test_a_saved_dataset_dict_asks_for_one_split(tmp_path):
    import datasets

    rows = datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}])
    datasets.DatasetDict({"train": rows, "test": rows}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"DatasetDict with splits \['test', 'train'\]"):
        list(hf_dataset.documents(DataSpec(corpus="hf_dataset", paths=str(tmp_path / "dd"))))
    docs = hf_dataset.documents(DataSpec(corpus="hf_dataset", paths=str(tmp_path / "dd/test")))
    assert [d.text for d in docs] == [b"a", b"b"]


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"moejax\[parquet\]"):
        list(parquet.documents(DataSpec(corpus="parquet", paths=str(tmp_path / "x.parquet"))))


def _chat_tokenizer(directory: pathlib.Path, template: str | None = TEMPLATE) -> str:
    write_tokenizer(directory)
    config = {"eos_token": EOS, "pad_token": "<|pad|>", "bos_token": EOS}
    if template is not None:
        config["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return str(directory)


def test_a_chat_is_rendered_with_its_assistant_turns_as_trained_spans(tmp_path):
    tokenizer = _chat_tokenizer(tmp_path / "tok")
    (tmp_path / "c.jsonl").write_bytes(_jsonl([{"messages": CHAT}, {"messages": CHAT[:2]}]))
    spec = DataSpec(corpus="jsonl", paths=str(tmp_path / "c.jsonl"), tokenizer=tokenizer,
                    messages_field="messages")
    full, no_reply = sources.SOURCES["jsonl"].documents(spec)
    # trim_blocks drops the newline after {% endif %}, as transformers renders it
    expected = EOS + "".join(f"<|{m['role']}|>{m['content']}{EOS}" for m in CHAT)
    assert full.text == expected.encode()
    assert [full.text[a:b] for a, b in full.trained] == [f"Hello é{EOS}".encode(),
                                                          f"Bye{EOS}".encode()]
    assert no_reply.trained == chat.NO_SPAN  # a chat without an assistant turn trains nothing
    template = chat.load_chat_template(tokenizer)
    assert template.special_tokens["eos_token"] == EOS
    assert template.render(CHAT[:2], add_generation_prompt=True).endswith("<|assistant|>")
    paths = _write_records(tmp_path / "rows", [{"messages": CHAT}])
    for corpus in ("parquet", "hf_dataset"):
        spec = DataSpec(corpus=corpus, paths=paths[corpus], tokenizer=tokenizer,
                        messages_field="messages")
        (row,) = sources.SOURCES[corpus].documents(spec)
        assert (row.text, row.trained) == (full.text, full.trained)


def test_chat_template_errors_name_the_options_and_the_record(tmp_path):
    (tmp_path / "c.jsonl").write_bytes(_jsonl([{"messages": CHAT}]))
    spec = DataSpec(corpus="jsonl", paths=str(tmp_path / "c.jsonl"), messages_field="messages",
                    tokenizer=_chat_tokenizer(tmp_path / "none", template=None))
    with pytest.raises(ValueError, match="data.tokenizer=.* no chat template.*messages_field"):
        list(sources.SOURCES["jsonl"].documents(spec))
    with pytest.raises(ValueError, match="data.messages_field='messages' renders chats with the "
                       "tokenizer's chat template: set data.tokenizer"):
        dataclasses.replace(spec, tokenizer="bytes")
    last_only = ("{% for m in messages %}{{ m['content'] }}{% if loop.last %}<end>{% endif %}"
                 "{% endfor %}")
    for template, message in ((last_only, "not incremental"),
                              ("{{ raise_exception('no system role') }}", "no system role")):
        directory = tmp_path / f"t{len(template)}"
        directory.mkdir()
        (directory / "tokenizer.json").write_bytes(
            (pathlib.Path(spec.tokenizer) / "tokenizer.json").read_bytes())
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
        (directory / chat.CHAT_TEMPLATE_FILE).write_text(template)  # the file wins
        with pytest.raises(ValueError, match=rf"data.messages_field: .*c.jsonl line 1: .*"
                                             f"{message}"):
            list(sources.SOURCES["jsonl"].documents(
                dataclasses.replace(spec, tokenizer=str(directory))))
    (tmp_path / "c.jsonl").write_bytes(_jsonl([{"messages": "hi"}]))
    with pytest.raises(ValueError, match="data.messages_field='messages': .* line 1: .*list"):
        list(sources.SOURCES["jsonl"].documents(
            dataclasses.replace(spec, tokenizer=_chat_tokenizer(tmp_path / "ok"))))


def test_the_fingerprint_follows_the_files_contents(tmp_path):
    pattern = _write_texts(tmp_path / "c", ".gz", gzip.compress)
    spec = DataSpec(corpus="files", paths=pattern)
    before = fingerprint.data_fingerprint(spec)
    assert sorted(before) == ["alpha/doc0.txt.gz", "alpha/doc2.txt.gz", "beta/doc1.txt.gz"]
    data = (tmp_path / "c/beta/doc1.txt.gz").read_bytes()
    assert before["beta/doc1.txt.gz"].startswith(f"{len(data)}:")
    assert fingerprint.data_fingerprint(spec) == before and not fingerprint.changed_files(
        before, before)
    (tmp_path / "c/beta/doc1.txt.gz").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size
    (tmp_path / "c/alpha/doc2.txt.gz").unlink()
    (tmp_path / "c/beta/doc3.txt.gz").write_bytes(gzip.compress(b"new"))
    after = fingerprint.data_fingerprint(spec)
    assert fingerprint.changed_files(before, after) == [
        "alpha/doc2.txt.gz (removed)", "beta/doc1.txt.gz (changed)", "beta/doc3.txt.gz (added)"]
    assert fingerprint.data_fingerprint(DataSpec()) == {}  # stdlib: the running Python's


def test_directory_corpora_fingerprint_every_file_under_the_directory(tmp_path):
    paths = _write_records(tmp_path / "data", RECORDS)
    saved = fingerprint.data_fingerprint(DataSpec(corpus="hf_dataset",
                                                  paths=paths["hf_dataset"]))
    assert any(name.endswith(".arrow") for name in saved) and "state.json" in saved
    shards = tmp_path / "shards"
    (shards / "sub").mkdir(parents=True)
    (shards / "index.json").write_text("{}")
    (shards / "sub" / "train.array_record").write_bytes(b"x" * 10)
    assert fingerprint.data_fingerprint(DataSpec(corpus="arrayrecord", paths=str(shards))) == {
        "index.json": fingerprint.file_fingerprint(shards / "index.json"),
        "sub/train.array_record": fingerprint.file_fingerprint(shards / "sub/train.array_record")}
