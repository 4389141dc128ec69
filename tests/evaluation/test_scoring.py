"""score_continuations against a float64 NumPy forward: sums, greedy flags, batching and
order, truncation from the left, errors naming the request."""

import numpy as np
import pytest

from moejax.evaluation import Score, score_continuations
from moejax.evaluation.scoring import MIN_BUCKET, Row, batches, bucket_length
from tests.evaluation.reference import (
    continuation_ref,
    greedy_continuation_ref,
    tiny_model,
)


def _requests(seed=0, count=7):
    """Requests of at most 15 tokens: one padded shape, [batch, MIN_BUCKET + 1]."""
    rng = np.random.default_rng(seed)
    contexts = [rng.integers(0, 23, int(rng.integers(1, 11))).tolist() for _ in range(count)]
    continuations = [rng.integers(0, 23, int(rng.integers(1, 6))).tolist()
                     for _ in range(count)]
    return contexts, continuations


def test_scores_and_greedy_flags_match_numpy():
    """Seven random requests and one whose continuation is the reference's greedy choice
    (is_greedy True; False once its last token changes)."""
    model, params = tiny_model()
    contexts, continuations = _requests()
    greedy = greedy_continuation_ref(model, params, [3, 1, 4], 3)
    contexts += [[3, 1, 4], [3, 1, 4]]
    continuations += [greedy, greedy[:-1] + [(greedy[-1] + 1) % 23]]
    scores = score_continuations(model, contexts, continuations, batch_size=3)
    for score, context, continuation in zip(scores, contexts, continuations, strict=True):
        want, want_greedy = continuation_ref(model, params, context, continuation)
        assert isinstance(score, Score) and score.num_tokens == len(continuation)
        np.testing.assert_allclose(score.logprob, want, rtol=1e-4, atol=1e-4)
        assert score.is_greedy == want_greedy
    assert scores[-2].is_greedy and not scores[-1].is_greedy


def test_batch_size_and_order_do_not_change_a_score():
    model, _ = tiny_model()
    contexts, continuations = _requests(seed=1)
    one = score_continuations(model, contexts, continuations, batch_size=1)
    order = np.random.default_rng(2).permutation(len(contexts))
    three = score_continuations(model, [contexts[i] for i in order],
                                [continuations[i] for i in order], batch_size=3)
    for got, i in zip(three, order, strict=True):
        np.testing.assert_allclose(got.logprob, one[i].logprob, rtol=1e-6, atol=1e-6)
        assert (got.is_greedy, got.num_tokens) == (one[i].is_greedy, one[i].num_tokens)


def test_a_long_request_loses_context_from_the_left():
    """max_length=6: the model reads the last 6 tokens of context + continuation (7 tokens,
    the last only a target), as lm-eval cuts `(context + continuation)[-(max_length + 1):]`."""
    model, params = tiny_model()
    context, continuation = list(range(10)), [11, 12, 13]
    (cut,) = score_continuations(model, [context], [continuation], max_length=6, batch_size=3)
    want, _ = continuation_ref(model, params, context[-4:], continuation)
    np.testing.assert_allclose(cut.logprob, want, rtol=1e-4, atol=1e-4)
    (whole,) = score_continuations(model, [context[-4:]], [continuation], batch_size=3)
    np.testing.assert_allclose(cut.logprob, whole.logprob, rtol=1e-6, atol=1e-6)


def test_rows_are_padded_to_a_few_bucketed_shapes():
    assert [bucket_length(n, 1 << 20) for n in (1, 16, 17, 33, 100)] == [
        MIN_BUCKET, 16, 32, 64, 128]
    assert bucket_length(100, 70) == 70
    rows = [Row(np.arange(n, dtype=np.int32), n - 2) for n in (3, 40, 5)]
    got = list(batches(rows, 2, 1 << 20))
    assert [chunk for chunk, _ in got] == [[1, 2], [0]]  # longest first
    first = got[0][1]
    assert first["tokens"].shape == (2, 65)
    assert first["trained"][0].tolist() == [0] * 39 + [1] + [0] * 25
    assert got[1][1]["tokens"][1].sum() == 0  # the pad row


@pytest.mark.parametrize("contexts, continuations, kwargs, match", [
    ([[1], [2], [3]], [[1], [2], []], {}, r"continuations\[2\] is empty \(request 2\)"),
    ([[1], []], [[1], [2]], {}, r"contexts\[1\] is empty \(request 1\)"),
    ([[1], [2]], [[1], [23]], {}, r"continuations\[1\] holds id 23; allowed: \[0, 23\)"),
    ([[1]], [[1, 2, 3]], {"max_length": 2}, r"continuations\[0\] has 3 tokens"),
    ([[1]], [[1], [2]], {}, "one continuation per context"),
    ([[1]], [[1]], {"batch_size": 0}, "batch_size=0; allowed: an integer >= 1"),
])
def test_bad_requests_are_named_before_any_work(contexts, continuations, kwargs, match):
    model, _ = tiny_model()
    with pytest.raises(ValueError, match=match):
        score_continuations(model, contexts, continuations, **kwargs)
