"""Data stage 1, tokens: the byte-level tokenizer (text <-> int32 ids).

The interface a tokenizer gives the pipeline, `moejax-prepare` and `moejax-sample`:

    VOCAB_SIZE                 number of ids; ids lie in 0..VOCAB_SIZE-1
    PAD_ID, BOS_ID, EOS_ID     the special ids (the pipeline ends every document with EOS_ID)
    encode(text) -> int32 [N]  no specials added
    decode(ids [N]) -> str     specials dropped

Bytes: ids 0..255 are the UTF-8 bytes of the text, and 256, 257, 258 the specials, so every
text encodes and no vocabulary file is needed. A subword tokenizer would be a sibling module
giving the same names.
"""

from __future__ import annotations

import numpy as np

PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 259

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "VOCAB_SIZE", "decode", "encode"]


def encode(text: str | bytes) -> np.ndarray:
    """Byte-level tokens: UTF-8 bytes of `text` as int32 ids [N] in 0..255 (no specials added)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, np.uint8).astype(np.int32)


def decode(ids) -> str:
    """Text of token ids [N] (any int array or sequence); PAD/BOS/EOS are dropped.

    Invalid UTF-8 (e.g. a multi-byte character cut at a sequence edge) decodes to U+FFFD.
    Raises ValueError for ids outside 0..VOCAB_SIZE-1.
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise ValueError(f"token ids must lie in 0..{VOCAB_SIZE - 1}; got min={ids.min()}, "
                         f"max={ids.max()}")
    return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")
