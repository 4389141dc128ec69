"""Tests for moejax/data/corpus.py and sources/: the source table, and one read of a text
corpus per run (the split and chunking are tested through the pipeline in test_pipeline.py)."""

import pathlib

import jax
import numpy as np
import pytest

from moejax.data import corpus, pipeline, sources
from moejax.data.sources import files, hf_dataset, jsonl, parquet, stdlib
from moejax.train.config_files import load_config
from moejax.train.trainer import train_and_evaluate
from tests.data.helpers import DOMAINS, write_corpus

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
SEQ_LEN = 15


@pytest.fixture
def reads(monkeypatch):
    """Counts the passes over the "files" source: calls of `files.documents`."""
    calls = []
    read = files.documents

    def counted(spec):
        calls.append(spec)
        return read(spec)

    monkeypatch.setattr(files, "documents", counted)
    return calls


def test_the_source_table_names_each_text_corpus_once():
    assert dict(sources.SOURCES) == {"stdlib": stdlib, "files": files, "jsonl": jsonl,
                                     "parquet": parquet, "hf_dataset": hf_dataset}
    assert corpus.CORPORA == ("stdlib", "files", "jsonl", "parquet", "hf_dataset", "arrayrecord")
    for module in sources.SOURCES.values():
        assert callable(module.documents) and callable(module.describe)
    with pytest.raises(TypeError):
        sources.SOURCES["web"] = files  # a read-only table


def test_the_trainers_data_calls_read_the_corpus_once(tmp_path, reads):
    """What `train_and_evaluate` asks of one spec (checks, both splits' sizes, the domains
    without validation, the train stream, the domain names, evaluation twice) reads the files
    once; a new spec (the next run) reads them again and sees a changed file."""
    pattern = write_corpus(tmp_path / "corpus", sizes=(200, 400))
    spec = pipeline.DataSpec(corpus="files", paths=(pattern,), domains=("alpha", "beta"),
                             validation_every=3, num_threads=0)
    pipeline.check_domain_selection(spec)
    for split in ("train", "validation"):
        assert pipeline.num_sequences(spec, split, seq_len=SEQ_LEN) >= 1
    assert pipeline.domains_without_validation(spec) == []
    next(iter(pipeline.make_dataset(spec, "train", seq_len=SEQ_LEN, batch_size=2, seed=0)))
    assert pipeline.domain_names(spec) == list(DOMAINS)
    for _ in range(2):
        next(iter(pipeline.make_dataset(spec, "validation", seq_len=SEQ_LEN, batch_size=2,
                                        seed=0, shuffle=True)))
    assert len(reads) == 1
    (tmp_path / "corpus" / "alpha" / "doc00.txt").write_bytes(b"changed")
    again = pipeline.DataSpec(corpus="files", paths=(pattern,), domains=("alpha", "beta"),
                              validation_every=3, num_threads=0)
    texts = {d.text for d in corpus.document_table(again).documents}
    assert len(reads) == 2 and b"changed" in texts


def test_a_training_run_reads_its_files_corpus_once(tmp_path, reads):
    """Through `train_and_evaluate` (standard dtype promotion, as under tests/train/: optax
    mixes Python floats with int32 step counters)."""
    config = load_config(CONFIGS / "tiny.py")
    config.data.update(corpus="files", paths=(write_corpus(tmp_path / "corpus", sizes=(200, 400)),),
                       domains=("alpha", "gamma"), validation_every=3, num_threads=0)
    config.train.update(steps=2, eval_every=1, log_every=1, checkpoint_every=2,
                        async_checkpoint=False, progress=False, report=False)
    with jax.numpy_dtype_promotion("standard"):
        last = train_and_evaluate(config, tmp_path / "run")
    assert last["step"] == 2 and np.isfinite(last["val_loss"])
    assert last["eval/domain_names"] == list(DOMAINS)
    assert len(reads) == 1  # checks, both splits, domain names and two evaluations
