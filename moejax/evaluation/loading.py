"""What an evaluation needs of a model source besides its weights: its tokenizer and its
context length. A source is an export, a training workdir or a Hugging Face directory
(`moejax.models.weights.load_decoder` loads its Decoder).
"""

from __future__ import annotations

from moejax.data.tokenizer import BYTES, VOCAB_SIZE, Tokenizer, load_tokenizer
from moejax.models.weights import hf_record, run_config, tokenizer_dir


def context_length(source) -> int | None:
    """The most tokens a model of `source` was made to read: its Hugging Face
    `max_position_embeddings` (an HF directory, or the record an import keeps), else its
    training run's `train.seq_len` (an export's or a workdir's config), else None."""
    positions = (hf_record(source) or {}).get("max_position_embeddings")
    if positions:
        return int(positions)
    train = (run_config(source) or {}).get("train") or {}
    seq_len = train.get("seq_len") if isinstance(train, dict) else None
    return int(seq_len) if seq_len else None


def model_tokenizer(source, vocab_size: int, name: str | None = None) -> Tokenizer:
    """The tokenizer to evaluate a model of `source` with: `name` ("bytes", a tokenizer.json
    or a directory holding one) when given; else the one that travels with the weights
    (`tokenizer_dir`), else the byte tokenizer for the byte vocabulary (259).

    Raises:
      FileNotFoundError / ValueError: naming `tokenizer`: none found, one that does not load,
        or ids beyond the model's `vocab_size`.
    """
    if name is None:
        directory = tokenizer_dir(source)
        if directory is None and vocab_size != VOCAB_SIZE:
            raise ValueError(f"tokenizer: {source} keeps no tokenizer and its vocab_size="
                             f"{vocab_size} is not the byte-level {VOCAB_SIZE}; name one")
        tokenizer = load_tokenizer(BYTES if directory is None else directory)
    else:
        tokenizer = load_tokenizer(name)
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"tokenizer {tokenizer.name} has ids 0..{tokenizer.vocab_size - 1}; "
                         f"allowed: a tokenizer whose ids fit the model's vocab_size="
                         f"{vocab_size}")
    return tokenizer
