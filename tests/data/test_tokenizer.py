"""Tests for moejax/data/tokenizer.py: the byte-level tokenizer."""

import numpy as np
import pytest

from moejax.data import tokenizer


def test_tokenizer_round_trip():
    text = "def f(x):\n    return 'héllo ✓'\n"
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text.encode()),)
    assert tokenizer.encode(text.encode()).tolist() == ids.tolist()
    with_specials = np.concatenate([[tokenizer.BOS_ID], ids[:5], [tokenizer.PAD_ID], ids[5:],
                                    [tokenizer.EOS_ID]])
    assert tokenizer.decode(with_specials) == text
    with pytest.raises(ValueError, match="0..258"):
        tokenizer.decode([1, tokenizer.VOCAB_SIZE])
