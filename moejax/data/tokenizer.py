"""Data stage 1, tokens: text <-> int32 ids, by bytes or by a Hugging Face `tokenizer.json`.

`load_tokenizer(data.tokenizer)` gives a `Tokenizer`:

    vocab_size                 ids lie in 0..vocab_size-1 (a model's vocabulary must cover them)
    eos_id, bos_id, pad_id     the special ids (the pipeline ends every document with eos_id)
    fingerprint                names the tokenizer in shard indexes, workdirs and exports
    encode(text) -> int32 [N]  no specials added
    encode_documents(texts)    [(ids int32 [n], token_bytes int32 [n])]: the UTF-8 bytes each
                               token covers, summing to the text's bytes (bits per byte)
    decode(ids [N]) -> str     specials dropped

- `"bytes"` (the default): ids 0..255 are the UTF-8 bytes of the text and 256, 257, 258 the
  specials (PAD_ID, BOS_ID, EOS_ID), so every text encodes and no file is needed; each token
  covers one byte.
- a path to a `tokenizer.json`, or to a directory holding one (a Hugging Face model or
  tokenizer directory), read by the `tokenizers` library. The special tokens come from the
  `tokenizer_config.json` beside it (`eos_token`, `bos_token`, `pad_token`), else from its
  `special_tokens_map.json`, else from `generation_config.json`'s `eos_token_id`; a tokenizer
  whose end-of-document token none of these names is an error. A token's bytes are the UTF-8
  bytes between its end offset and the previous token's (`Encoding.offsets`), so a document's
  tokens cover its bytes exactly once.

`TOKENIZER_FILES` are the files a workdir or an export keeps so that the model's text can be
encoded and decoded later (`save_tokenizer`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np

PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 259
BYTES = "bytes"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "TOKENIZER_FILES", "VOCAB_SIZE", "Tokenizer", "decode",
           "encode", "load_tokenizer", "save_tokenizer", "tokenizer_files", "train_bpe"]


def encode(text: str | bytes) -> np.ndarray:
    """Byte-level tokens: UTF-8 bytes of `text` as int32 ids [N] in 0..255 (no specials added)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, np.uint8).astype(np.int32)


def decode(ids) -> str:
    """Text of byte-level token ids [N] (any int array or sequence); PAD/BOS/EOS are dropped.

    Invalid UTF-8 (e.g. a multi-byte character cut at a sequence edge) decodes to U+FFFD.
    Raises ValueError for ids outside 0..VOCAB_SIZE-1.
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise ValueError(f"token ids must lie in 0..{VOCAB_SIZE - 1}; got min={ids.min()}, "
                         f"max={ids.max()}")
    return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A tokenizer as the pipeline, `moejax-prepare` and `moejax-sample` use it.

    Attributes:
      name: "bytes", or the resolved path of the `tokenizer.json`.
      vocab_size: every id `encode` can give is below it.
      eos_id: the end-of-document id the pipeline puts after every document.
      bos_id, pad_id: the other special ids, or None.
      fingerprint: "bytes", or the SHA-256 of the tokenizer.json and the special ids.
      directory: where the tokenizer's files are (None for bytes).
    """

    name: str
    vocab_size: int
    eos_id: int
    bos_id: int | None
    pad_id: int | None
    fingerprint: str
    directory: pathlib.Path | None = None
    _hf: object | None = dataclasses.field(default=None, compare=False, repr=False)

    def encode(self, text: str | bytes) -> np.ndarray:
        """int32 [N] ids of `text`, no specials added."""
        return self.encode_documents([text])[0][0].astype(np.int32)

    def encode_documents(self, texts: Sequence[str | bytes]) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(ids [n], token_bytes [n])] per text: the ids and each token's UTF-8 bytes, in the
        smallest unsigned integer dtypes that hold them (bytes: a view of the text and a
        broadcast 1, no copy), so that a corpus in memory stays about its size."""
        data = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
        if self._hf is None:
            return [(np.frombuffer(d, np.uint8), np.broadcast_to(np.uint8(1), (len(d),)))
                    for d in data]
        strings = [d.decode("utf-8", errors="replace") for d in data]
        encodings = self._hf.encode_batch(strings, add_special_tokens=False)
        return [(_compact(np.asarray(e.ids, np.int64)), _compact(_token_bytes(s, e.offsets)))
                for s, e in zip(strings, encodings, strict=True)]

    def decode(self, ids) -> str:
        """Text of ids [N]; special tokens dropped.

        Raises:
          ValueError: an id outside 0..vocab_size-1.
        """
        if self._hf is None:
            return decode(ids)
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in 0..{self.vocab_size - 1} ({self.name}); "
                             f"got min={ids.min()}, max={ids.max()}")
        return self._hf.decode(ids.tolist(), skip_special_tokens=True)


BYTE_TOKENIZER = Tokenizer(BYTES, VOCAB_SIZE, EOS_ID, BOS_ID, PAD_ID, BYTES)


def _compact(values: np.ndarray) -> np.ndarray:
    """`values` (non-negative integers) in uint8, uint16 or uint32, the smallest that holds
    them."""
    top = int(values.max()) if values.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    raise ValueError(f"value {top} does not fit 32 bits")


def _token_bytes(text: str, offsets) -> np.ndarray:
    """int32 [n]: the UTF-8 bytes of `text` between each token's end offset (characters) and
    the previous token's (running maximum), so that the counts sum to the bytes covered."""
    if not offsets:
        return np.zeros(0, np.int32)
    data = np.frombuffer(text.encode("utf-8"), np.uint8)
    char_start = np.flatnonzero((data & 0xC0) != 0x80)  # the byte offset of each character
    char_start = np.append(char_start, data.size)
    ends = np.maximum.accumulate(np.asarray([end for _, end in offsets], np.int64))
    byte_ends = char_start[np.minimum(ends, char_start.size - 1)]
    return np.diff(byte_ends, prepend=0).astype(np.int32)


def _special(directory: pathlib.Path, hf) -> dict[str, int | None]:
    """{"eos", "bos", "pad"}: ids named by the files beside the tokenizer.json."""
    names = {}
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / file
        if path.is_file():
            config = json.loads(path.read_text())
            for kind in ("eos", "bos", "pad"):
                token = config.get(f"{kind}_token")
                token = token.get("content") if isinstance(token, dict) else token
                if token is not None and kind not in names:
                    names[kind] = token
    ids = {kind: hf.token_to_id(token) for kind, token in names.items()}
    for kind, token in names.items():
        if ids[kind] is None:
            raise ValueError(f"data.tokenizer={str(directory)!r}: its {kind}_token {token!r} is "
                             "not in its vocabulary")
    generation = directory / "generation_config.json"
    if "eos" not in ids and generation.is_file():
        eos = json.loads(generation.read_text()).get("eos_token_id")
        ids["eos"] = eos[0] if isinstance(eos, list) else eos
    return {kind: ids.get(kind) for kind in ("eos", "bos", "pad")}


def load_tokenizer(name: str | pathlib.Path = BYTES) -> Tokenizer:
    """`data.tokenizer` -> Tokenizer: "bytes", a tokenizer.json or a directory holding one.

    Raises:
      FileNotFoundError: the path holds no tokenizer.json.
      ValueError: the tokenizer names no end-of-document token, or names one it lacks.
    """
    if str(name) == BYTES:
        return BYTE_TOKENIZER
    from tokenizers import Tokenizer as HFTokenizer  # only where a subword tokenizer is used

    path = pathlib.Path(name).expanduser().resolve()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"data.tokenizer={str(name)!r}: no tokenizer.json there (allowed: "
                                "'bytes', a tokenizer.json, or a directory holding one)")
    hf = HFTokenizer.from_file(str(file))
    special = _special(file.parent, hf)
    if special["eos"] is None:
        raise ValueError(f"data.tokenizer={str(name)!r} names no end-of-document token: put a "
                         "tokenizer_config.json with eos_token beside its tokenizer.json")
    vocab_size = max(hf.get_vocab(with_added_tokens=True).values()) + 1
    digest = hashlib.sha256(file.read_bytes())
    digest.update(json.dumps(special, sort_keys=True).encode())
    return Tokenizer(str(file), vocab_size, special["eos"], special["bos"], special["pad"],
                     digest.hexdigest()[:16], file.parent, hf)


def tokenizer_files(where) -> list[pathlib.Path]:
    """The files of the tokenizer at `where`: a tokenizer.json itself, or the `TOKENIZER_FILES`
    a directory holds (what an export keeps beside its config.json)."""
    where = pathlib.Path(where)
    if where.is_file():
        return [where]
    return [where / name for name in TOKENIZER_FILES if (where / name).is_file()]


def save_tokenizer(tokenizer: Tokenizer, out: pathlib.Path) -> list[str]:
    """Copies the tokenizer's files (`TOKENIZER_FILES` that exist) into directory `out`;
    returns their names (none for bytes, which needs no file)."""
    if tokenizer.directory is None:
        return []
    copied = []
    for name in TOKENIZER_FILES:
        source = tokenizer.directory / name
        if name == "tokenizer.json":
            source = pathlib.Path(tokenizer.name)
        if source.is_file():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out / name)
            copied.append(name)
    return copied


def train_bpe(texts, directory, vocab_size: int, *, eos: str = "<|endoftext|>",
              pad: str | None = None) -> pathlib.Path:
    """Trains a byte-level BPE on `texts` (an iterable of str) with the `tokenizers` library
    and writes it where `load_tokenizer` reads it: `directory/tokenizer.json` and a
    tokenizer_config.json naming `eos` (and `pad`) as its special tokens. For examples, tests
    and benchmarks; real runs bring the tokenizer of their model. Returns `directory`."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [eos] + ([pad] if pad is not None else [])
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"eos_token": eos, "tokenizer_class": "PreTrainedTokenizerFast"}
    if pad is not None:
        config["pad_token"] = pad
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory
