"""Text level: lm-eval's pair encoding, loglikelihood and loglikelihood_rolling over the token
API, and generate_until (prompts of different lengths, EOS and stop strings)."""

import numpy as np
import pytest

from moejax.data.tokenizer import load_tokenizer
from moejax.evaluation import (
    encode_pair,
    generate_until,
    loglikelihood,
    loglikelihood_rolling,
    rolling_logprob,
    score_continuations,
)
from moejax.evaluation.text import _continuation_text, cut_at_stop
from moejax.models.generate import Generation, generate
from tests.evaluation.reference import tiny_model

BYTES = load_tokenizer("bytes")


def test_pairs_are_encoded_as_lm_eval_does(tmp_path):
    """The context's trailing space moves to the continuation; the context is encoded alone
    and the continuation is the rest of the whole; an empty context is the prefix token."""
    from tests.data.helpers import write_tokenizer

    bpe = load_tokenizer(write_tokenizer(tmp_path / "tok"))
    context, continuation = encode_pair(bpe, "def main(): ", "return 0")
    assert context.tolist() == bpe.encode("def main():").tolist()
    whole = bpe.encode("def main(): return 0")
    assert np.concatenate([context, continuation]).tolist() == whole.tolist()
    assert bpe.decode(continuation) == " return 0"
    context, continuation = encode_pair(BYTES, "", "ab")
    assert context.tolist() == [258] and continuation.tolist() == [97, 98]
    assert encode_pair(BYTES, "  ", "a")[0].tolist() == [258]


def test_text_scores_are_the_token_scores_of_their_encodings():
    model, _ = tiny_model(vocab_size=259)
    requests = [("The cat ", "sat"), ("", "x"), ("a", "bc")]
    got = loglikelihood(model, BYTES, requests)
    pairs = [encode_pair(BYTES, c, x) for c, x in requests]
    want = score_continuations(model, [p[0] for p in pairs], [p[1] for p in pairs])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.logprob, w.logprob, rtol=1e-6)
        assert (g.num_tokens, g.is_greedy) == (w.num_tokens, w.is_greedy)
    assert [g.num_tokens for g in got] == [4, 1, 2]  # " sat": the space moved
    with pytest.raises(ValueError, match=r"continuations\[1\] is empty \(request 1\)"):
        loglikelihood(model, BYTES, [("a", "b"), ("a", "")])
    texts = ["hello world, this is a long enough text", "", "z"]
    rolled = loglikelihood_rolling(model, BYTES, texts, window=8, stride=5)
    for text, score in zip(texts, rolled, strict=True):
        alone = rolling_logprob(model, BYTES.encode(text).tolist(), window=8, stride=5,
                                prefix_token=258)
        np.testing.assert_allclose(score.logprob, alone.logprob, rtol=1e-6, atol=1e-6)
        assert score.num_tokens == alone.num_tokens == len(text.encode())


def test_generation_groups_prompts_by_length_without_padding(monkeypatch):
    """Prompts of one token length go to `generate` together, batch_size at a time, never
    padded; each answer lands in its prompt's place (a stand-in generate: no compile)."""
    from moejax.evaluation import text

    calls = []

    def fake_generate(model, prompt, max_new_tokens, *args, **kwargs):
        calls.append(prompt.tolist())
        new = np.repeat(prompt[:, :1] + 1, max_new_tokens, axis=1)  # the first byte + 1
        return Generation(np.concatenate([prompt, new], axis=1), None)

    monkeypatch.setattr(text, "generate", fake_generate)
    model, _ = tiny_model(vocab_size=259)
    prompts = ["ab", "xyz", "cd", "ef", "uvw"]
    got = generate_until(model, BYTES, prompts, max_new_tokens=2, batch_size=2)
    assert got == ["bb", "yy", "dd", "ff", "vv"]
    assert [len(c) for c in calls] == [2, 2, 1] and all(
        len({len(row) for row in call}) == 1 for call in calls)


def test_generation_is_generate_cut_at_the_stop_string():
    model, _ = tiny_model(vocab_size=259)
    ids = BYTES.encode("xyz")
    new = np.asarray(generate(model, ids[None], 5).tokens[0, 3:])
    (got,) = generate_until(model, BYTES, ["xyz"], max_new_tokens=5)
    assert got == _continuation_text(BYTES, new, ()) and len(got) >= 3
    stop = got[1:3]
    assert generate_until(model, BYTES, ["xyz"], max_new_tokens=5, stop=["never", stop]) == [
        got[:got.find(stop)]]


def test_continuations_end_before_eos_and_the_first_stop_string():
    assert _continuation_text(BYTES, np.asarray([65, 66, 258, 67]), ()) == "AB"
    assert _continuation_text(BYTES, np.asarray([65, 66, 67, 66]), ["C", "B"]) == "A"
    assert cut_at_stop("abc", ["x", ""]) == "abc"


@pytest.mark.parametrize("prompts, kwargs, match", [
    (["a", ""], {}, r"prompts\[1\] encodes to no token"),
    (["a"], {"max_new_tokens": 0}, "max_new_tokens=0"),
    (["a"], {"stop": "x"}, "stop='x'; allowed: a list of strings"),
    (["a"], {"max_length": 3}, "max_length=3; allowed: an integer >= 5"),
])
def test_bad_generation_requests_are_named(prompts, kwargs, match):
    model, _ = tiny_model(vocab_size=259)
    with pytest.raises(ValueError, match=match):
        generate_until(model, BYTES, prompts, **{"max_new_tokens": 4, **kwargs})
