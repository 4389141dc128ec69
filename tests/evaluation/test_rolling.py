"""rolling_logprob: the windows (as lm-eval cuts them), the full-sequence log-likelihood when
one window holds the document, a NumPy loop over windows otherwise."""

import numpy as np
import pytest

from moejax.data.tokenizer import load_tokenizer
from moejax.evaluation import RollingScore, prefix_token_id, rolling_logprob
from moejax.evaluation.rolling import rolling_windows
from tests.evaluation.reference import target_logprobs_ref, tiny_model


def _targets(windows, length):
    """Each target's (window index, context size), asserting it is scored exactly once."""
    seen = {}
    for k, (begin, end, scored) in enumerate(windows):
        for target in range(scored + 1, end + 1):
            assert target not in seen and target > begin
            seen[target] = (k, target - begin)
    assert sorted(seen) == list(range(1, length + 1))
    return seen


@pytest.mark.parametrize("length", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("window, stride", [(1, 1), (4, 4), (8, 3), (8, 1), (16, 16)])
def test_windows_score_every_token_once_as_lm_eval_cuts_them(length, window, stride):
    """Every target once, from at most `window` tokens, at least window - stride + 1 after
    the first window; the windows are lm-eval's with context_len = window - stride + 1."""
    windows = rolling_windows(length, window, stride)
    seen = _targets(windows, length)
    assert all(1 <= context <= window for _, context in seen.values())
    assert all(context >= min(target, window - stride + 1)
               for target, (_, context) in seen.items())
    utils = pytest.importorskip("lm_eval.utils")
    seq = list(range(100, 101 + length))  # seq[0] plays the prefix token
    want = [utils.make_disjoint_window(pair) for pair in utils.get_rolling_token_windows(
        seq[1:], seq[0], window, window - stride + 1)]
    got = [(seq[begin:scored + 1], seq[scored + 1:end + 1]) for begin, end, scored in windows]
    assert got == want


def test_one_window_is_the_full_sequence_log_likelihood():
    model, params = tiny_model()
    tokens = np.random.default_rng(0).integers(0, 23, 21).tolist()
    logprobs, _ = target_logprobs_ref(model, params, [22] + tokens)
    with_prefix = rolling_logprob(model, tokens, window=21, prefix_token=22)
    assert with_prefix.num_tokens == 21
    np.testing.assert_allclose(with_prefix.logprob, logprobs.sum(), rtol=1e-4, atol=1e-4)
    without = rolling_logprob(model, tokens, window=64)
    assert without.num_tokens == 20  # tokens[0] is context only
    np.testing.assert_allclose(without.logprob, target_logprobs_ref(model, params, tokens)[0]
                               .sum(), rtol=1e-4, atol=1e-4)


def _windows_loop_ref(model, params, seq, window, stride):
    """The windows written as Hugging Face's perplexity guide loops, scoring each window's
    targets after the last one scored and moving the last window to the sequence's end."""
    total, scored, start = 0.0, 0, 0
    while scored < len(seq) - 1:
        end = min(start + window, len(seq) - 1)
        begin = max(0, end - window)
        logprobs, _ = target_logprobs_ref(model, params, seq[begin:end + 1])
        for target in range(scored + 1, end + 1):
            total += logprobs[target - begin - 1]
        scored, start = end, start + stride
    return total


@pytest.mark.parametrize("window, stride", [(8, 8), (8, 3)])
def test_windows_equal_a_numpy_loop_and_the_batch_size_does_not_matter(window, stride):
    model, params = tiny_model()
    tokens = np.random.default_rng(1).integers(0, 23, 30).tolist()
    want = _windows_loop_ref(model, params, [22] + tokens, window, stride)
    one = rolling_logprob(model, tokens, window=window, stride=stride, batch_size=1,
                          prefix_token=22)
    four = rolling_logprob(model, tokens, window=window, stride=stride, batch_size=4,
                           prefix_token=22)
    assert one.num_tokens == four.num_tokens == 30
    np.testing.assert_allclose(one.logprob, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(four.logprob, one.logprob, rtol=1e-6, atol=1e-6)


def test_prefix_token_is_bos_of_an_hf_tokenizer_that_names_one_else_eos(tmp_path):
    import json

    from tests.data.helpers import write_tokenizer

    assert prefix_token_id(load_tokenizer("bytes")) == 258  # EOS: moejax never trains BOS 257
    plain = load_tokenizer(write_tokenizer(tmp_path / "plain"))
    assert plain.bos_id is None and prefix_token_id(plain) == plain.eos_id
    bos = write_tokenizer(tmp_path / "bos")
    config = json.loads((bos / "tokenizer_config.json").read_text())
    (bos / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": "<|pad|>"}))
    named = load_tokenizer(bos)
    assert prefix_token_id(named) == named.bos_id != named.eos_id


def test_nothing_to_score_and_bad_options():
    model, _ = tiny_model()
    assert rolling_logprob(model, [], window=4, prefix_token=1) == RollingScore(0.0, 0)
    assert rolling_logprob(model, [5], window=4) == RollingScore(0.0, 0)
    with pytest.raises(ValueError, match="stride=5; allowed: an integer in"):
        rolling_logprob(model, [1, 2], window=4, stride=5)
    with pytest.raises(ValueError, match="window=0"):
        rolling_logprob(model, [1, 2], window=0)
    with pytest.raises(ValueError, match=r"tokens holds id 30"):
        rolling_logprob(model, [1, 30], window=4)
