"""Tests for moejax/data/pipeline.py (with corpus.py, sources/, shards.py and cli/prepare.py)."""

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from moejax.data import corpus
from moejax.data import pipeline as data
from moejax.data.sources import Document
from moejax.data.sources import paths as source_paths
from moejax.data.tokenizer import BYTE_TOKENIZER
from moejax.data.tokens import tokenize
from tests.data.helpers import DOMAINS, write_corpus

SEQ_LEN = 15  # windows of 16 tokens
REPO = pathlib.Path(__file__).resolve().parents[2]


def _spec(tmp_path, **changes) -> data.DataSpec:
    values = dict(corpus="files", paths=(write_corpus(tmp_path / "corpus"),),
                  validation_every=3, num_threads=0)
    return data.DataSpec(**(values | changes))


def _take(spec, split, count, *, batch_size=1, seed=0, **kwargs):
    iterator = iter(data.make_dataset(spec, split, seq_len=SEQ_LEN, batch_size=batch_size,
                                      seed=seed, **kwargs))
    return [next(iterator) for _ in range(count)]


def _reference_validation(docs, every):
    """The stratified split restated: per domain, one name in `every` by SHA-256; a domain of
    two or more documents gets at least one validation document and keeps one for training."""
    by_domain = {}
    for doc in docs:
        by_domain.setdefault(doc.domain, []).append(doc.name)
    chosen = set()
    for names in by_domain.values():
        digest = {n: int.from_bytes(hashlib.sha256(n.encode()).digest()[:4], "little")
                  for n in names}
        picked = {n for n in names if digest[n] % every == 0}
        if len(names) > 1 and not picked:
            picked = {min(names, key=digest.get)}
        if len(names) > 1 and len(picked) == len(names):
            picked.remove(max(names, key=digest.get))
        chosen |= picked
    return chosen


def _reference_windows(spec, split):
    """The NumPy loop: EOS-joined documents of the split, cut into windows of SEQ_LEN + 1."""
    docs = corpus.documents(spec)
    ids = {name: i for i, name in enumerate(sorted({d.domain for d in docs}))}
    validation = _reference_validation(docs, spec.validation_every)
    tokens, domains = [], []
    for doc in docs:
        if (doc.name in validation) == (split == "validation"):
            for byte in doc.text:
                tokens.append(byte)
                domains.append(ids[doc.domain])
            tokens.append(data.EOS_ID)
            domains.append(ids[doc.domain])
    length = SEQ_LEN + 1
    count = len(tokens) // length
    return (np.array(tokens[:count * length], np.int32).reshape(count, length),
            np.array(domains[:count * length], np.int32).reshape(count, length))


def _rows(batches):
    return [tuple(row) for batch in batches for row in batch["tokens"].tolist()]


@pytest.mark.parametrize("split", ["train", "validation"])
def test_packing_matches_numpy_loop(tmp_path, split):
    spec = _spec(tmp_path)
    tokens, domains = _reference_windows(spec, split)
    assert len(tokens) == data.num_sequences(spec, split, seq_len=SEQ_LEN) >= 3
    batches = _take(spec, split, len(tokens))
    got_tokens = np.concatenate([b["tokens"] for b in batches])
    got_domains = np.concatenate([b["domains"] for b in batches])
    assert got_tokens.dtype == got_domains.dtype == np.int32
    assert got_tokens.shape == (len(tokens), SEQ_LEN + 1)
    if split == "train":  # shuffled: compare as sets of (tokens, domains) rows
        order, got_order = np.lexsort(tokens.T), np.lexsort(got_tokens.T)
        tokens, domains = tokens[order], domains[order]
        got_tokens, got_domains = got_tokens[got_order], got_domains[got_order]
    np.testing.assert_array_equal(got_tokens, tokens)
    np.testing.assert_array_equal(got_domains, domains)
    assert data.domain_names(spec) == list(DOMAINS)


def test_packing_edges():
    """Documents ending exactly at a window edge, empty documents and multi-window documents."""
    sizes = [SEQ_LEN, 0, 3 * SEQ_LEN + 5, SEQ_LEN - 1, 0, 0, 2 * SEQ_LEN + 1, 7]
    rng = np.random.default_rng(1)
    docs = [Document(f"d{i}", rng.integers(0, 256, n, np.uint8).tobytes(), f"x{i % 3}")
            for i, n in enumerate(sizes)]
    docs[2] = docs[2]._replace(trained=((3, 9), (20, 3 * SEQ_LEN + 5)))  # ends trained
    docs[3] = docs[3]._replace(trained=((0, 2),))  # ends untrained
    tokenized = tokenize(BYTE_TOKENIZER, docs, {"x0": 0, "x1": 1, "x2": 2})
    windows = data.PackedSequences(data.MemoryDocuments(tokenized), SEQ_LEN + 1, data.EOS_ID,
                                   train_all=False)
    stream = [t for d in docs for t in [*d.text, data.EOS_ID]]
    nbytes = [b for d in docs for b in [1] * len(d.text) + [0]]
    trained = [t for d in docs for t in
               [any(a <= j < b for a, b in d.trained) or not d.trained for j in range(len(d.text))]
               + [not d.trained or d.trained[-1][1] == len(d.text)]]
    labels = [i % 3 for i, d in enumerate(docs) for _ in range(len(d.text) + 1)]
    document = [i for i, d in enumerate(docs) for _ in range(len(d.text) + 1)]
    assert len(windows) == len(stream) // (SEQ_LEN + 1) and windows.num_tokens == len(stream)
    for i in range(len(windows)):
        edge = slice(i * (SEQ_LEN + 1), (i + 1) * (SEQ_LEN + 1))
        assert windows[i]["tokens"].tolist() == stream[edge]
        assert windows[i]["domains"].tolist() == labels[edge]
        assert windows[i]["token_bytes"].tolist() == nbytes[edge]
        assert windows[i]["trained"].tolist() == trained[edge]
        # segments number the window's documents 1, 2, ... (EOS with the document it ends)
        docs_here = document[edge]
        want = [len(set(docs_here[:j + 1])) for j in range(len(docs_here))]
        assert windows[i]["segments"].tolist() == want
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_validation_is_fixed_order_and_repeats(tmp_path):
    spec = _spec(tmp_path)
    count = data.num_sequences(spec, "validation", seq_len=SEQ_LEN)
    rows = _rows(_take(spec, "validation", 2 * count, seed=1))
    assert rows[:count] == rows[count:] == _rows(_take(spec, "validation", count, seed=2))


def test_train_order_is_deterministic_per_seed_and_reshuffled_per_epoch(tmp_path):
    spec = _spec(tmp_path)
    count = data.num_sequences(spec, "train", seq_len=SEQ_LEN)
    first = _rows(_take(spec, "train", 2 * count, seed=3))
    assert first == _rows(_take(spec, "train", 2 * count, seed=3))
    assert first[:count] != _rows(_take(spec, "train", count, seed=4))
    assert sorted(first[:count]) == sorted(first[count:]) and first[:count] != first[count:]


def test_train_and_validation_documents_are_disjoint(tmp_path):
    spec = _spec(tmp_path)
    train = {d.name for d in corpus.documents(spec, "train")}
    validation = {d.name for d in corpus.documents(spec, "validation")}
    assert train and validation and not train & validation
    assert train | validation == {d.name for d in corpus.documents(spec)}


@pytest.mark.parametrize("process_count", [2, 3])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_host_shards_are_disjoint_and_cover(tmp_path, process_count, split):
    spec = _spec(tmp_path)
    total = data.num_sequences(spec, split, seq_len=SEQ_LEN)
    everything = collections.Counter(_rows(_take(spec, split, total)))
    union = collections.Counter()
    for index in range(process_count):
        shard = _rows(_take(spec, split, len(range(index, total, process_count)),
                            process_index=index, process_count=process_count))
        assert not union.keys() & set(shard)
        union.update(shard)
    assert union == everything


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_together_read_the_single_process_batches(tmp_path, process_count):
    """Global batch i of P processes (host batch 4/P each) holds the windows of batch i of one
    process (batch 4), over more than one epoch."""
    spec = _spec(tmp_path)
    steps = data.num_sequences(spec, "train", seq_len=SEQ_LEN) // 2  # two epochs of batch 4
    single = _take(spec, "train", steps, batch_size=4, seed=5)
    hosts = [_take(spec, "train", steps, batch_size=4 // process_count, seed=5,
                   process_index=index, process_count=process_count)
             for index in range(process_count)]
    for step_number, batch in enumerate(single):
        together = [row for host in hosts for row in _rows([host[step_number]])]
        assert sorted(together) == sorted(_rows([batch]))


@pytest.mark.parametrize("skip", [1, 3])  # 3 batches of 2 cross the epoch boundary
def test_resume_gives_the_identical_next_batch(tmp_path, skip):
    spec = _spec(tmp_path, num_threads=2,
                 paths=(write_corpus(tmp_path / "odd", num_files=11),))
    assert data.num_sequences(spec, "train", seq_len=SEQ_LEN) % 2 == 1  # batches straddle epochs
    dataset = data.make_dataset(spec, "train", seq_len=SEQ_LEN, batch_size=2, seed=7)
    iterator = iter(dataset)
    for _ in range(skip):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = [next(iterator) for _ in range(4)]
    resumed = iter(data.make_dataset(spec, "train", seq_len=SEQ_LEN, batch_size=2, seed=7))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_array_equal(got["domains"], want["domains"])


def test_jsonl_source(tmp_path):
    (tmp_path / "web").mkdir()
    (tmp_path / "code").mkdir()
    (tmp_path / "web" / "a.jsonl").write_text(
        json.dumps({"text": "hello", "topic": "greet"}) + "\n\n"
        + json.dumps({"text": "wörld", "topic": "noun"}) + "\n")
    (tmp_path / "code" / "b.jsonl").write_text(json.dumps({"text": "x = 1", "topic": "py"}))
    pattern = str(tmp_path / "*" / "*.jsonl")
    spec = data.DataSpec(corpus="jsonl", paths=(pattern,), validation_every=2, num_threads=0)
    docs = corpus.documents(spec)
    assert docs == [Document("code/b.jsonl:1", b"x = 1", "code"),
                    Document("web/a.jsonl:1", b"hello", "web"),
                    Document("web/a.jsonl:3", "wörld".encode(), "web")]
    topics = data.DataSpec(corpus="jsonl", paths=(pattern,), domain_field="topic")
    assert data.domain_names(topics) == ["greet", "noun", "py"]
    missing = data.DataSpec(corpus="jsonl", paths=(pattern,), text_field="body")
    with pytest.raises(ValueError, match=r"data.text_field='body'.*b.jsonl line 1"):
        corpus.documents(missing)


def test_arrayrecord_round_trip_equals_in_memory(tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "prepared"
    index = data.prepare(spec, out)
    assert index["domain_names"] == list(DOMAINS)
    prepared = data.DataSpec(corpus="arrayrecord", paths=(str(out),), num_threads=0)
    assert data.domain_names(prepared) == list(DOMAINS)
    for split in ("train", "validation"):
        count = data.num_sequences(spec, split, seq_len=SEQ_LEN)
        assert data.num_sequences(prepared, split, seq_len=SEQ_LEN) == count
        for want, got in zip(_take(spec, split, count + 2, batch_size=2, seed=5),
                             _take(prepared, split, count + 2, batch_size=2, seed=5), strict=True):
            np.testing.assert_array_equal(got["tokens"], want["tokens"])
            np.testing.assert_array_equal(got["domains"], want["domains"])
    with pytest.raises(FileExistsError, match="overwrite"):
        data.prepare(spec, out)


def test_domain_selection_keeps_ids_and_splits(tmp_path):
    """data.domains / data.exclude_domains keep whole domains in both splits: each kept
    document falls in the split it has without the selection, domain ids are the whole
    source's (in memory and prepared), and a pattern that matches nothing is an error."""
    spec = _spec(tmp_path)
    for changes, kept in ((dict(domains=("b*", "gamma")), {"beta", "gamma"}),
                          (dict(exclude_domains="beta"), {"alpha", "gamma"}),
                          (dict(domains=("?????",), exclude_domains=("alpha",)), {"gamma"})):
        chosen = dataclasses.replace(spec, **changes)
        assert data.domain_names(chosen) == list(DOMAINS)
        for split in ("train", "validation"):
            want = [d for d in corpus.documents(spec, split) if d.domain in kept]
            assert corpus.documents(chosen, split) == want, (changes, split)
            ids = {DOMAINS.index(d) for d in kept}
            seen = {int(i) for b in _take(chosen, split, 6, batch_size=2) for i in
                    b["domains"].ravel()}
            assert seen <= ids and seen, (changes, split)
    gamma = dataclasses.replace(spec, domains=("gamma",))
    prepared = data.DataSpec(corpus="arrayrecord", paths=(str(tmp_path / "p"),), num_threads=0)
    assert data.prepare(gamma, tmp_path / "p")["domain_names"] == list(DOMAINS)
    assert {int(i) for b in _take(prepared, "train", 4) for i in b["domains"].ravel()} == {2}
    for changes, message in (
            (dict(domains=("gama",)), r"data.domains: 'gama' matches no domain of "
                                      r"data.corpus='files'; its domains: alpha, beta, gamma"),
            (dict(exclude_domains=("*",)), r"keeps no domain"),
            (dict(domains=("alpha",), exclude_domains=("zeta",)), "data.exclude_domains: 'zeta'")):
        with pytest.raises(ValueError, match=message):
            data.check_domain_selection(dataclasses.replace(spec, **changes))
    with pytest.raises(ValueError, match="set them when preparing"):
        data.DataSpec(corpus="arrayrecord", paths=("x",), domains=("alpha",))


def test_prepare_console_script(tmp_path):
    pattern = write_corpus(tmp_path / "corpus")
    config = tmp_path / "cfg.py"
    config.write_text("import ml_collections\n\ndef get_config(arg=None):\n"
                      "    config = ml_collections.ConfigDict()\n"
                      f"    config.data = dict(corpus='files', paths=({pattern!r},))\n"
                      "    return config\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "moejax.cli.prepare",
                             f"--config={config}", f"--out={out}"],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "train:" in result.stdout
    assert data.domain_names(data.DataSpec(corpus="arrayrecord", paths=(str(out),))) == list(
        DOMAINS)


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="data.paths is empty"):
        data.DataSpec(corpus="files")
    with pytest.raises(ValueError, match="data.corpus='web'; allowed: stdlib"):
        data.DataSpec(corpus="web")
    with pytest.raises(ValueError, match=r"unknown option\(s\) data.bogus; allowed"):
        data.data_spec_from_config({"corpus": "stdlib", "bogus": 1})
    nothing = str(tmp_path / "none" / "*.txt")
    with pytest.raises(FileNotFoundError, match=r"data.paths: the glob .*none/\*.txt"):
        corpus.documents(data.DataSpec(corpus="files", paths=(nothing,)))
    with pytest.raises(FileNotFoundError, match="data.paths: no file .*missing.txt"):
        corpus.documents(data.DataSpec(corpus="files", paths=(str(tmp_path / "missing.txt"),)))
    with pytest.raises(ValueError, match="data.paths: .* is a directory"):
        corpus.documents(data.DataSpec(corpus="files", paths=(str(tmp_path),)))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty corpus: no documents in data.paths"):
        corpus.documents(data.DataSpec(corpus="jsonl", paths=(str(tmp_path / "empty.jsonl"),)))
    with pytest.raises(FileNotFoundError, match="data.paths: no index.json"):
        data.domain_names(data.DataSpec(corpus="arrayrecord", paths=(str(tmp_path),)))

    spec = _spec(tmp_path)
    with pytest.raises(ValueError, match=r"seq_len \+ 1 = 100001"):
        data.make_dataset(spec, "train", seq_len=100_000, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="split='test'; allowed: train, validation"):
        data.make_dataset(spec, "test", seq_len=SEQ_LEN, batch_size=1, seed=0)
    one = data.DataSpec(corpus="files", paths=(str(next((tmp_path / "corpus").rglob("*.txt"))),))
    split = "train" if corpus.documents(one, "validation") else "validation"
    with pytest.raises(ValueError, match=f"the {split} split is empty.*validation_every=20"):
        data.make_dataset(one, split, seq_len=2, batch_size=1, seed=0)

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(source_paths, "open", unreadable, raising=False)  # the sources' open
    with pytest.raises(ValueError, match="data.paths: cannot read .*Permission denied"):
        corpus.documents(spec)


def test_few_large_documents_give_validation_data_in_every_domain(tmp_path):
    """Three domains of two 5000-byte files: cut into 1024-byte chunks before the split, every
    domain has validation windows and keeps training data (the hash rule alone misses some)."""
    rng = np.random.default_rng(3)
    for domain in ("alpha", "beta", "gamma"):
        (tmp_path / domain).mkdir()
        for i in range(2):
            text = rng.integers(32, 127, 5000, np.uint8).tobytes()
            (tmp_path / domain / f"big{i}.txt").write_bytes(text)
    spec = data.DataSpec(corpus="files", paths=(str(tmp_path / "*" / "*.txt"),),
                         chunk_bytes=1024, num_threads=0)
    docs = corpus.documents(spec)
    assert len(docs) == 30 and docs[0].name == "alpha/big0.txt#0"
    assert b"".join(d.text for d in docs[:5]) == (tmp_path / "alpha" / "big0.txt").read_bytes()
    for split in ("train", "validation"):
        assert {d.domain for d in corpus.documents(spec, split)} == {"alpha", "beta", "gamma"}
        batches = _take(spec, split, 20, shuffle=True)
        domains = np.concatenate([b["domains"].ravel() for b in batches])
        assert set(domains.tolist()) == {0, 1, 2}, split
    assert corpus.domains_without_validation(spec) == []
    whole = dataclasses.replace(spec, chunk_bytes=1 << 20)  # one document per file
    hashed = {d.domain for d in corpus.documents(whole) if corpus.is_validation(d.name, 20)}
    assert len(hashed) < 3  # what the plain hash rule gave
    assert {d.domain for d in corpus.documents(whole, "validation")} == {"alpha", "beta", "gamma"}


def test_stdlib_corpus_and_default_config():
    from moejax.train.config_files import load_config

    spec = data.data_spec_from_config(load_config(REPO / "configs" / "default.py").data)
    assert spec == data.DataSpec(corpus="stdlib")
    names = data.domain_names(spec)
    assert names == sorted(names) and {"asyncio", "json", "abc"} <= set(names)
    docs = {d.name: d.domain for d in corpus.documents(spec)}
    assert docs["json/decoder.py"] == "json" and docs["abc.py"] == "abc"
    assert not any("site-packages" in name for name in docs)
    train = {d.name for d in corpus.documents(spec, "train")}
    validation = {d.name for d in corpus.documents(spec, "validation")}
    assert train and validation and not train & validation
    batch = _take(spec, "validation", 1, batch_size=2)[0]
    assert batch["tokens"].shape == batch["domains"].shape == (2, SEQ_LEN + 1)
    assert batch["tokens"].max() < data.VOCAB_SIZE and batch["domains"].max() < len(names)
