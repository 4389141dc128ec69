"""Held-out perplexity: documents and their domains from moejax's sources, totals equal to
the rolling log-likelihood of every document, bits per UTF-8 byte, the units."""

import json
import math

import numpy as np
import pytest

from moejax.data.tokenizer import load_tokenizer
from moejax.evaluation import (
    Totals,
    evaluate_documents,
    heldout_documents,
    prefix_token_id,
    rates,
    rolling_logprob,
)
from tests.evaluation.reference import tiny_model

TEXTS = {"code/a.py": "def f(x):\n    return x * 2\n" * 3,
         "code/b.py": "import numpy as np\n",
         "prose/c.txt": "The café served crème brûlée. Ünïcödé 日本語 🙂",
         "prose/empty.txt": ""}


def _write(root):
    for name, text in TEXTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return [str(root / "**" / "*.*")]


def test_documents_are_whole_with_a_domain_per_file_or_the_source_s(tmp_path):
    paths = _write(tmp_path)
    by_file = heldout_documents(paths)
    assert [d.domain for d in by_file] == list(TEXTS)
    assert [d.text.decode() for d in by_file] == list(TEXTS.values())
    assert [d.domain for d in heldout_documents(paths, domain_by="source")] == [
        "code", "code", "prose", "prose"]
    lines = [{"text": "one", "lang": "en"}, {"text": "deux", "lang": "fr"}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    records = heldout_documents([str(tmp_path / "r.jsonl")], "jsonl", domain_by="source",
                                domain_field="lang")
    assert [(d.domain, d.text) for d in records] == [("en", b"one"), ("fr", b"deux")]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"paths": ["/no/such.txt"]}, FileNotFoundError, "data.paths: no file '/no/such.txt'"),
    ({"paths": ["x"], "corpus": "stdlib"}, ValueError, "corpus='stdlib'; allowed: files"),
    ({"paths": ["x"], "domain_by": "dir"}, ValueError, "domain_by='dir'; allowed: file, source"),
    ({"paths": ["x"], "domain_field": "d"}, ValueError, "domain_field='d' is read by the record"),
])
def test_bad_options_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        heldout_documents(**kwargs)


def test_totals_are_each_document_s_rolling_log_likelihood_over_its_utf8_bytes(tmp_path):
    """Through the trainer's eval_step, per domain: minus the sum of every document's
    rolling_logprob after the prefix token, its tokens, and its UTF-8 bytes (a BPE: fewer
    tokens than bytes)."""
    from tests.data.helpers import write_tokenizer

    tokenizer = load_tokenizer(write_tokenizer(tmp_path / "tok"))
    model, _ = tiny_model(vocab_size=300)
    docs = heldout_documents(_write(tmp_path / "data"), domain_by="source")
    results, total = evaluate_documents(model, tokenizer, docs, window=8, stride=6)
    assert [r.domain for r in results] == ["code", "prose"]
    for result in results:
        texts = [t for name, t in TEXTS.items() if name.startswith(result.domain)]
        scores = [rolling_logprob(model, tokenizer.encode(t).tolist(), window=8, stride=6,
                                  prefix_token=prefix_token_id(tokenizer)) for t in texts]
        got = result.totals
        assert got.documents == len(texts)
        assert got.tokens == sum(s.num_tokens for s in scores) < got.bytes
        assert got.bytes == sum(len(t.encode()) for t in texts)
        np.testing.assert_allclose(got.nats, -sum(s.logprob for s in scores), rtol=1e-5)
        assert result.top1_disabled is None
    assert total.totals == results[0].totals + results[1].totals


def test_rates_are_labelled_by_unit():
    totals = Totals(documents=2, tokens=4, bytes=10, nats=8 * math.log(2.0))
    assert rates(totals) == pytest.approx({"nats_per_token": 2 * math.log(2.0),
                                           "bits_per_token": 2.0, "bits_per_byte": 0.8,
                                           "perplexity": 4.0})
    assert set(rates(Totals())) == set(rates(totals)) and not any(rates(Totals()).values())
