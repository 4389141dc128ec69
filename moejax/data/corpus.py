"""Data stage 1, sources: the byte tokenizer, `DataSpec` and the raw-text corpora.

A source yields documents `(name, text, domain)` sorted by `name`, where `name` is a relative,
machine-independent name that decides the train/validation split, `text` is the raw bytes and
`domain` labels the document for per-domain statistics. A document longer than
`data.chunk_bytes` is cut into chunks named `<name>#<i>` first, so that a few large files
still give validation data. The split is stratified by domain (`validation_names`): within a
domain, one document in `validation_every` by name hash, at least one when the domain has two
or more, never all of them. Corpora (`DataSpec.corpus`):

- "stdlib": the running Python's standard library `*.py` under `sysconfig.get_paths()["stdlib"]`
  (site-packages excluded); name = path relative to that root, domain = top-level package, or
  the file stem for a top-level module.
- "files": `paths` are files or globs (`**` allowed) of text files; name = path relative to the
  deepest directory containing every match, domain = the file's parent directory name.
- "jsonl": `paths` are files or globs of JSON-lines files, one object per line with the text under
  `text_field`; name = "<file name as for files>:<line number>", domain = the object's
  `domain_field` when set, otherwise the file's parent directory name.
- "arrayrecord": pre-tokenized shards written by `moejax.data.shards.prepare`; `paths` is the
  one directory holding them. The split is the one made when they were prepared.

`data.domains` / `data.exclude_domains` (shell patterns) keep a text source's documents of some
domains only, in both splits; a document's split does not depend on the selection (it is
stratified within each domain), and domain ids stay those of the whole source, so runs on
different domain mixes of one corpus (pretraining, then fine-tuning) share ids and splits.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import glob
import hashlib
import json
import logging
import os
import pathlib
import sysconfig
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from moejax.options import spec_from_mapping

PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 259
CORPORA = ("stdlib", "files", "jsonl", "arrayrecord")
SPLITS = ("train", "validation")


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


class Document(NamedTuple):
    """One document of a source: relative name, raw text bytes and domain name."""

    name: str
    text: bytes
    domain: str


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which corpus to read and how to split it; `config.data` maps one to one onto it.

    Attributes:
      corpus: one of CORPORA ("stdlib", "files", "jsonl", "arrayrecord").
      paths: files or globs ("files", "jsonl"), or the one prepared directory ("arrayrecord");
        must be empty for "stdlib". A single string is taken as a 1-tuple.
      text_field: JSONL key holding the document text.
      domain_field: JSONL key holding the domain name; None: the file's parent directory.
      domains: shell patterns (fnmatch) of the domains to read; empty: every domain.
      exclude_domains: shell patterns of domains not to read (applied after `domains`).
      validation_every: one document in `validation_every` (by name hash, per domain) goes to
        validation; see `validation_names`.
      chunk_bytes: documents longer than this are cut into chunks of this many bytes before
        the split (each chunk is a document of its own).
      num_threads: grain reader threads that prepare batches ahead (0: synchronous).
      prefetch_buffer_size: batches prepared ahead of the consumer.
    """

    corpus: str = "stdlib"
    paths: tuple[str, ...] = ()
    text_field: str = "text"
    domain_field: str | None = None
    domains: tuple[str, ...] = ()
    exclude_domains: tuple[str, ...] = ()
    validation_every: int = 20
    chunk_bytes: int = 1 << 20
    num_threads: int = 1
    prefetch_buffer_size: int = 4

    def __post_init__(self):
        paths = (self.paths,) if isinstance(self.paths, str | os.PathLike) else self.paths
        object.__setattr__(self, "paths", tuple(os.fspath(p) for p in paths))
        for name in ("domains", "exclude_domains"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.corpus not in CORPORA:
            raise ValueError(f"data.corpus={self.corpus!r}; allowed: {', '.join(CORPORA)}")
        if self.corpus == "stdlib" and self.paths:
            raise ValueError(f"data.paths={self.paths} is not used by data.corpus='stdlib'; "
                             "leave it empty or pick corpus 'files', 'jsonl' or 'arrayrecord'")
        if self.corpus != "stdlib" and not self.paths:
            raise ValueError(f"data.paths is empty; data.corpus={self.corpus!r} needs files or "
                             "globs" + (" (one directory)" if self.corpus == "arrayrecord" else ""))
        if self.corpus == "arrayrecord" and len(self.paths) != 1:
            raise ValueError(f"data.paths={self.paths}; data.corpus='arrayrecord' takes exactly "
                             "one directory written by moejax-prepare")
        if self.corpus == "arrayrecord" and (self.domains or self.exclude_domains):
            raise ValueError("data.domains / data.exclude_domains select documents of a text "
                             "corpus; for data.corpus='arrayrecord' set them when preparing "
                             "the directory (moejax-prepare)")
        if self.domain_field is not None and self.corpus != "jsonl":
            raise ValueError(f"data.domain_field={self.domain_field!r} is only used by "
                             f"data.corpus='jsonl', not {self.corpus!r}")
        if self.validation_every < 2:
            raise ValueError(f"data.validation_every={self.validation_every}; allowed: >= 2")
        if self.chunk_bytes < 1024:
            raise ValueError(f"data.chunk_bytes={self.chunk_bytes}; allowed: >= 1024")
        if self.num_threads < 0 or self.prefetch_buffer_size < 0:
            raise ValueError(f"data.num_threads={self.num_threads}, data.prefetch_buffer_size="
                             f"{self.prefetch_buffer_size}; allowed: >= 0")


def data_spec_from_config(data_config) -> DataSpec:
    """`config.data` (a mapping, or None for the defaults) -> DataSpec.

    An unknown key raises ValueError naming it.
    """
    return spec_from_mapping(DataSpec, data_config, "data")


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def is_validation(name: str, every: int = 20) -> bool:
    """The hash rule: one name in `every` (by SHA-256 of the name) is a validation name."""
    return _name_hash(name) % every == 0


def validation_names(docs: Iterable[Document], every: int) -> frozenset[str]:
    """The stratified split: names of the documents (or chunks) that go to validation.

    Within each domain, the names that `is_validation` picks; a domain of two or more
    documents that it left without one sends its document of smallest hash, and one whose
    documents it picked all keeps its document of largest hash for training. A domain of one
    document follows the hash rule alone.
    """
    by_domain: dict[str, list[str]] = {}
    for doc in docs:
        by_domain.setdefault(doc.domain, []).append(doc.name)
    chosen = set()
    for names in by_domain.values():
        picked = [name for name in names if is_validation(name, every)]
        if len(names) >= 2 and len(picked) in (0, len(names)):
            ranked = sorted(names, key=_name_hash)
            picked = ranked[:1] if not picked else ranked[:-1]
        chosen.update(picked)
    return frozenset(chosen)


def selects_domain(spec: DataSpec, domain: str) -> bool:
    """Whether `data.domains` / `data.exclude_domains` keep documents of `domain`."""
    included = not spec.domains or any(fnmatch.fnmatchcase(domain, p) for p in spec.domains)
    return included and not any(fnmatch.fnmatchcase(domain, p) for p in spec.exclude_domains)


def check_domain_selection(spec: DataSpec) -> None:
    """Every pattern of `data.domains` / `data.exclude_domains` matches a domain of the source,
    and the selection keeps at least one.

    Raises:
      ValueError: naming the option and pattern, and the source's domains.
    """
    if not (spec.domains or spec.exclude_domains):
        return
    names = source_domain_names(spec)
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    for option in ("domains", "exclude_domains"):
        for pattern in getattr(spec, option):
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                raise ValueError(f"data.{option}: {pattern!r} matches no domain of "
                                 f"data.corpus={spec.corpus!r}; its domains: {shown}")
    if not any(selects_domain(spec, name) for name in names):
        raise ValueError(f"data.domains={spec.domains} with data.exclude_domains="
                         f"{spec.exclude_domains} keeps no domain; the source's: {shown}")


def domains_without_validation(spec: DataSpec) -> list[str]:
    """Domains of a text source whose documents all train (one document each, unchunked)."""
    docs = list(iter_documents(spec))
    chosen = validation_names(docs, spec.validation_every)
    seen = {d.domain for d in docs if d.name in chosen}
    return sorted({d.domain for d in docs} - seen)


def _chunks(doc: Document, chunk_bytes: int) -> Iterator[Document]:
    if len(doc.text) <= chunk_bytes:
        yield doc
        return
    for i, start in enumerate(range(0, len(doc.text), chunk_bytes)):
        yield Document(f"{doc.name}#{i}", doc.text[start:start + chunk_bytes], doc.domain)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {', '.join(SPLITS)}")


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def _stdlib_documents(root: str) -> tuple[Document, ...]:
    """All `*.py` documents under `root` (site-packages excluded), sorted by name.

    Cached per process (about 30 MB): the standard library does not change while we run.
    """
    base = pathlib.Path(root)
    docs = []
    for path in base.rglob("*.py"):
        relative = path.relative_to(base)
        if "site-packages" in relative.parts:
            continue
        domain = relative.parts[0] if len(relative.parts) > 1 else path.stem
        docs.append(Document(relative.as_posix(), _read(path), domain))
    return tuple(sorted(docs))


def _read(path: pathlib.Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"data.paths: cannot read {path}: {err}") from err


def expand_paths(patterns: tuple[str, ...]) -> list[pathlib.Path]:
    """Files named or matched by `patterns` (globs, `**` recursive), sorted and unique.

    Raises FileNotFoundError naming `data.paths` for a pattern that matches no file, and
    ValueError for a directory (pass a glob such as "dir/**/*.txt").
    """
    found = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = [p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p)]
            if not matches:
                raise FileNotFoundError(f"data.paths: the glob {pattern!r} matches no file "
                                        f"(searched from {os.getcwd()})")
        elif os.path.isdir(expanded):
            raise ValueError(f"data.paths: {pattern!r} is a directory; give files or a glob "
                             f"such as {os.path.join(pattern, '**', '*.txt')!r}")
        elif not os.path.isfile(expanded):
            raise FileNotFoundError(f"data.paths: no file {pattern!r} "
                                    f"(searched from {os.getcwd()})")
        else:
            matches = [expanded]
        found.update(pathlib.Path(p).resolve() for p in matches)
    return sorted(found)


def _relative_names(files: list[pathlib.Path]) -> list[str]:
    """Names relative to the deepest directory containing every file (posix separators)."""
    common = pathlib.Path(os.path.commonpath([f.parent for f in files]))
    return [f.relative_to(common).as_posix() for f in files]


def _file_documents(spec: DataSpec) -> Iterator[Document]:
    """Text files; a file with a NUL byte is binary, not text: skipped with a warning."""
    files = expand_paths(spec.paths)
    for name, path in zip(_relative_names(files), files, strict=True):
        text = _read(path)
        if b"\0" in text:
            logging.getLogger(__name__).warning(
                "data.paths: skipping %s: it holds NUL bytes (a binary file, not text)", path)
            continue
        yield Document(name, text, path.parent.name)


def _jsonl_documents(spec: DataSpec) -> Iterator[Document]:
    files = expand_paths(spec.paths)
    for name, path in zip(_relative_names(files), files, strict=True):
        try:
            with open(path, "rb") as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        yield _jsonl_document(spec, f"{name}:{number}", line, path.parent.name)
        except OSError as err:
            raise ValueError(f"data.paths: cannot read {path}: {err}") from err


def _jsonl_document(spec: DataSpec, name: str, line: bytes, default_domain: str) -> Document:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"data.paths: {name} is not valid JSON: {err}") from err
    fields = {"data.text_field": spec.text_field}
    if spec.domain_field is not None:
        fields["data.domain_field"] = spec.domain_field
    values = {}
    for option, key in fields.items():
        value = record.get(key) if isinstance(record, dict) else None
        if not isinstance(value, str):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{option}={key!r}: {name} has no string field {key!r} "
                             f"(found: {keys})")
        values[option] = value
    domain = values.get("data.domain_field", default_domain)
    return Document(name, values["data.text_field"].encode("utf-8"), domain)


def iter_documents(spec: DataSpec, split: str | None = None) -> Iterator[Document]:
    """The source's documents (large ones as chunks) in a fixed order, read lazily; only
    `split`'s unless it is None (then one more pass first, for the split's names).

    The order is by name; JSONL documents are ordered by file name, then line number. Files are
    read as the iterator advances, so a pass over a large corpus holds one document at a time.

    Raises:
      ValueError: naming `data.paths` (or the stdlib root) when the corpus is empty or a file
        cannot be read; FileNotFoundError when a path or glob matches no file.
    """
    if split is not None:
        check_split(split)
    if spec.corpus == "stdlib":
        root = stdlib_root()
        docs, where = iter(_stdlib_documents(str(root))), f"the standard library at {root}"
    elif spec.corpus == "files":
        docs, where = _file_documents(spec), f"data.paths={spec.paths}"
    elif spec.corpus == "jsonl":
        docs, where = _jsonl_documents(spec), f"data.paths={spec.paths}"
    else:
        raise ValueError("data.corpus='arrayrecord' holds token records, not documents; "
                         "read it with moejax.data.pipeline.make_dataset")
    chosen = None if split is None else validation_names(iter_documents(spec),
                                                         spec.validation_every)
    selected = spec.domains or spec.exclude_domains
    empty = True
    for whole in docs:
        empty = False
        if selected and not selects_domain(spec, whole.domain):
            continue
        for doc in _chunks(whole, spec.chunk_bytes):
            if chosen is None or (doc.name in chosen) == (split == "validation"):
                yield doc
    if empty:
        raise ValueError(f"empty corpus: no documents in {where}")


def documents(spec: DataSpec, split: str | None = None) -> list[Document]:
    """`iter_documents` as a list (the whole corpus in memory)."""
    return list(iter_documents(spec, split))


def source_domain_names(spec: DataSpec) -> list[str]:
    """Sorted domain names over both splits of a text source, whatever `data.domains` selects;
    index = domain id.

    One streaming pass over the corpus (cached for "stdlib").
    """
    whole = dataclasses.replace(spec, domains=(), exclude_domains=())
    return sorted({d.domain for d in iter_documents(whole)})
