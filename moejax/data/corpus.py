"""Data stage 1, documents: `DataSpec`, and a text source's documents chunked, selected and split.

A source (`moejax.data.sources`, chosen by `DataSpec.corpus`) yields documents
`(name, text, domain)` sorted by `name`. A document longer than `data.chunk_bytes` is cut into
chunks named `<name>#<i>` first, so that a few large files still give validation data. The
split is stratified by domain (`validation_names`): within a domain, one document in
`validation_every` by name hash, at least one when the domain has two or more, never all of
them. "arrayrecord" (pre-tokenized shards written by `moejax.data.shards.prepare`, `paths` the
one directory holding them) keeps the split made when they were prepared.

`data.domains` / `data.exclude_domains` (shell patterns) keep a text source's documents of some
domains only, in both splits; a document's split does not depend on the selection (it is
stratified within each domain), and domain ids stay those of the whole source, so runs on
different domain mixes of one corpus (pretraining, then fine-tuning) share ids and splits.

Two ways to read: `iter_documents` streams (one document in memory at a time; each call reads
the source again), and `document_table` reads the whole source once per `DataSpec` object and
keeps it on the spec, so the trainer (one spec per run) reads its corpus once per run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from moejax.data.sources import RECORD_SOURCES, SOURCES, Document
from moejax.data.tokenizer import Tokenizer, load_tokenizer
from moejax.data.tokens import TokenizedDocument, tokenize
from moejax.options import check_choice, spec_from_mapping

CORPORA = (*SOURCES, "arrayrecord")
LOSS_ON = ("all", "completion")
SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which corpus to read and how to split it; `config.data` maps one to one onto it.

    Attributes:
      corpus: one of CORPORA: a text source of `moejax.data.sources.SOURCES` ("stdlib",
        "files", "jsonl"), or "arrayrecord".
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
      validation_seed: the shuffle seed of the validation split's windows (its evaluation
        sample) whatever seed the reader is given; None: the reader's (the run's) seed.
      tokenizer: "bytes", or a Hugging Face `tokenizer.json` or a directory holding one
        (`moejax.data.tokenizer.load_tokenizer`).
      prompt_field, completion_field: record keys of an instruction record (JSONL, parquet,
        a saved dataset): the text is prompt + completion, the completion its trained span.
      messages_field: record key of a chat (a list of {"role", "content"}), rendered with the
        tokenizer's chat template; the assistant turns are its trained spans.
      loss_on: "all" (every token is a target) or "completion" (only the trained spans of
        instruction records and chats; plain documents still train on every token).
      mixture: {domain pattern: weight} or ((pattern, weight), ...): the training split's
        token share of the domains each pattern matches, relative to one another; every
        selected domain must match exactly one pattern (`moejax.data.mixture`); empty: the
        corpus's own proportions.
      accept_changed_data: resume although the data files changed since the checkpoint.
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
    validation_seed: int | None = None
    tokenizer: str = "bytes"
    prompt_field: str | None = None
    completion_field: str | None = None
    messages_field: str | None = None
    loss_on: str = "all"
    mixture: tuple[tuple[str, float], ...] = ()
    accept_changed_data: bool = False

    def __post_init__(self):
        paths = (self.paths,) if isinstance(self.paths, str | os.PathLike) else self.paths
        object.__setattr__(self, "paths", tuple(os.fspath(p) for p in paths))
        for name in ("domains", "exclude_domains"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        check_choice("data.corpus", self.corpus, CORPORA)
        check_choice("data.loss_on", self.loss_on, LOSS_ON)
        mixture = self.mixture.items() if hasattr(self.mixture, "items") else self.mixture
        object.__setattr__(self, "mixture", tuple(sorted((str(k), float(v)) for k, v in mixture)))
        bad = [f"{k}={v}" for k, v in self.mixture if not (v > 0 and v < float("inf"))]
        if bad:
            raise ValueError(f"data.mixture weights must be finite and > 0: {', '.join(bad)}")
        if (self.prompt_field is None) != (self.completion_field is None):
            raise ValueError(f"data.prompt_field={self.prompt_field!r}, data.completion_field="
                             f"{self.completion_field!r}: set both or neither")
        if self.corpus == "stdlib" and self.paths:
            raise ValueError(f"data.paths={self.paths} is not used by data.corpus='stdlib'; "
                             f"leave it empty or pick another corpus ({', '.join(CORPORA[1:])})")
        one_directory = self.corpus in ("arrayrecord", "hf_dataset")
        if self.corpus != "stdlib" and not self.paths:
            raise ValueError(f"data.paths is empty; data.corpus={self.corpus!r} needs files or "
                             "globs" + (" (one directory)" if one_directory else ""))
        if one_directory and len(self.paths) != 1:
            raise ValueError(f"data.paths={self.paths}; data.corpus={self.corpus!r} takes exactly "
                             "one directory (written by moejax-prepare, or by a dataset's "
                             "save_to_disk)")
        if self.corpus == "arrayrecord" and (self.domains or self.exclude_domains):
            raise ValueError("data.domains / data.exclude_domains select documents of a text "
                             "corpus; for data.corpus='arrayrecord' set them when preparing "
                             "the directory (moejax-prepare)")
        for name in ("domain_field", "prompt_field", "completion_field", "messages_field"):
            if getattr(self, name) is not None and self.corpus not in RECORD_SOURCES:
                raise ValueError(f"data.{name}={getattr(self, name)!r} is only used by the "
                                 f"record corpora ({', '.join(RECORD_SOURCES)}), not "
                                 f"data.corpus={self.corpus!r}")
        if self.messages_field is not None and self.prompt_field is not None:
            raise ValueError(f"data.messages_field={self.messages_field!r} and "
                             f"data.prompt_field={self.prompt_field!r}: a record is a chat or a "
                             "prompt and completion, set one")
        if self.messages_field is not None and self.tokenizer == "bytes":
            raise ValueError(f"data.messages_field={self.messages_field!r} renders chats with the "
                             "tokenizer's chat template: set data.tokenizer to a Hugging Face "
                             "tokenizer directory, not 'bytes'")
        if self.validation_every < 2:
            raise ValueError(f"data.validation_every={self.validation_every}; allowed: >= 2")
        if self.chunk_bytes < 1024:
            raise ValueError(f"data.chunk_bytes={self.chunk_bytes}; allowed: >= 1024")
        if self.validation_seed is not None and not 0 <= self.validation_seed < 2**32:
            raise ValueError(f"data.validation_seed={self.validation_seed}; allowed: "
                             "0..2**32-1 or None")
        if self.num_threads < 0 or self.prefetch_buffer_size < 0:
            raise ValueError(f"data.num_threads={self.num_threads}, data.prefetch_buffer_size="
                             f"{self.prefetch_buffer_size}; allowed: >= 0")

    @functools.cached_property
    def _tokenizer(self) -> Tokenizer:
        """`data.tokenizer` loaded once for this spec object (`pipeline.tokenizer_of`)."""
        return load_tokenizer(self.tokenizer)

    @functools.cached_property
    def _tokenized(self) -> dict[str, list[TokenizedDocument]]:
        """Both splits of the selected documents tokenized once for this spec object."""
        table = self._document_table
        ids = {name: i for i, name in enumerate(table.domain_names)}
        return {split: tokenize(self._tokenizer, table.select(self, split), ids)
                for split in SPLITS}

    @functools.cached_property
    def _document_table(self) -> DocumentTable:
        """The source read once for this spec object (not a field: not compared, not copied
        by `dataclasses.replace`); see `document_table`."""
        return read_table(self)


def data_spec_from_config(data_config) -> DataSpec:
    """`config.data` (a mapping, or None for the defaults) -> DataSpec; an unset (None)
    option takes the DataSpec default.

    An unknown key raises ValueError naming it.
    """
    values = {k: v for k, v in dict(data_config or {}).items() if v is not None}
    return spec_from_mapping(DataSpec, values, "data")


def check_split(split: str) -> None:
    """Raises ValueError naming `split` unless it is one of SPLITS."""
    check_choice("split", split, SPLITS)


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


def _keeps(spec: DataSpec, doc: Document, validation: frozenset[str] | None,
           split: str | None) -> bool:
    """Whether `doc` is of a selected domain and (unless `split` is None) of `split`."""
    in_split = split is None or (doc.name in validation) == (split == "validation")
    return in_split and selects_domain(spec, doc.domain)


def _chunks(doc: Document, chunk_bytes: int) -> Iterator[Document]:
    """`doc`, or its chunks `<name>#<i>` of at most `chunk_bytes` bytes, each cut at a UTF-8
    character boundary, with the trained spans that fall into each."""
    if len(doc.text) <= chunk_bytes:
        yield doc
        return
    start, i = 0, 0
    while start < len(doc.text):
        end = min(start + chunk_bytes, len(doc.text))
        while end < len(doc.text) and end > start + 1 and doc.text[end] & 0xC0 == 0x80:
            end -= 1  # not inside a multi-byte character
        spans = tuple((max(a, start) - start, min(b, end) - start) for a, b in doc.trained
                      if a < end and b > start)
        # a chunk of an instruction record without a trained span trains on nothing
        trained = spans or (((0, 0),) if doc.trained else ())
        yield Document(f"{doc.name}#{i}", doc.text[start:end], doc.domain, trained)
        start, i = end, i + 1


def _source_chunks(spec: DataSpec) -> Iterator[Document]:
    """Every document of the source (every domain), large ones as chunks, in name order.

    Raises:
      ValueError: the source yields no document, or `spec.corpus` is "arrayrecord".
    """
    if spec.corpus not in SOURCES:
        raise ValueError("data.corpus='arrayrecord' holds token records, not documents; "
                         "read it with moejax.data.pipeline.make_dataset")
    source = SOURCES[spec.corpus]
    empty = True
    for whole in source.documents(spec):
        empty = False
        yield from _chunks(whole, spec.chunk_bytes)
    if empty:
        raise ValueError(f"empty corpus: no documents in {source.describe(spec)}")


def iter_documents(spec: DataSpec, split: str | None = None) -> Iterator[Document]:
    """The source's selected documents (large ones as chunks) in a fixed order, read lazily;
    only `split`'s unless it is None (then one more pass first, for the split's names).

    The order is by name; JSONL documents are ordered by file name, then line number. Files are
    read as the iterator advances, so a pass over a large corpus holds one document at a time.

    Raises:
      ValueError: naming `data.paths` (or the stdlib root) when the corpus is empty or a file
        cannot be read; FileNotFoundError when a path or glob matches no file.
    """
    if split is not None:
        check_split(split)
    validation = None if split is None else validation_names(_source_chunks(spec),
                                                             spec.validation_every)
    for doc in _source_chunks(spec):
        if _keeps(spec, doc, validation, split):
            yield doc


def documents(spec: DataSpec, split: str | None = None) -> list[Document]:
    """`iter_documents` as a list (the selected documents in memory; the source is read again)."""
    return list(iter_documents(spec, split))


class DocumentTable(NamedTuple):
    """A text source read in one pass: every document of every domain, and its split.

    Attributes:
      documents: the documents (large ones as chunks) sorted by name, whatever the selection.
      domain_names: sorted domain names of the whole source; position = domain id.
      validation: names of the documents that go to validation (`validation_names`).
    """

    documents: tuple[Document, ...]
    domain_names: tuple[str, ...]
    validation: frozenset[str]

    def select(self, spec: DataSpec, split: str | None = None) -> list[Document]:
        """The documents `spec`'s domain selection keeps, of `split` (None: both splits)."""
        if split is not None:
            check_split(split)
        return [d for d in self.documents if _keeps(spec, d, self.validation, split)]

    def tokenized(self, spec: DataSpec, split: str) -> list[TokenizedDocument]:
        """`select(spec, split)` tokenized with `data.tokenizer`, once per spec object."""
        check_split(split)
        return spec._tokenized[split]  # noqa: SLF001 - kept on the spec


def read_table(spec: DataSpec, *, texts: bool = True) -> DocumentTable:
    """One pass over the whole source of `spec` (`data.domains` is not applied here).

    texts=False keeps names and domains only (empty texts): the outline a streaming writer
    needs before its own pass. Raises as `iter_documents`.
    """
    docs = tuple(d if texts else d._replace(text=b"") for d in _source_chunks(spec))
    return DocumentTable(docs, tuple(sorted({d.domain for d in docs})),
                         validation_names(docs, spec.validation_every))


def document_table(spec: DataSpec) -> DocumentTable:
    """The source's `DocumentTable`, read on the first call for this spec object and kept on
    it: one read per spec (the trainer builds one per run); a new spec reads the files again."""
    return spec._document_table


def source_domain_names(spec: DataSpec) -> list[str]:
    """Sorted domain names over both splits of a text source, whatever `data.domains` selects;
    index = domain id. From `document_table` (read once per spec)."""
    return list(document_table(spec).domain_names)


def check_domain_selection(spec: DataSpec, domain_names: Sequence[str] | None = None) -> None:
    """Every pattern of `data.domains` / `data.exclude_domains` matches a domain of the source,
    and the selection keeps at least one.

    Args:
      spec: the data options.
      domain_names: the whole source's domain names; None: `source_domain_names(spec)`.

    Raises:
      ValueError: naming the option and pattern, and the source's domains.
    """
    if not (spec.domains or spec.exclude_domains):
        return
    names = list(source_domain_names(spec) if domain_names is None else domain_names)
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
    """Selected domains of a text source whose documents all train (one document each,
    unchunked). From `document_table` (read once per spec)."""
    table = document_table(spec)
    docs = table.select(spec)
    seen = {d.domain for d in docs if d.name in table.validation}
    return sorted({d.domain for d in docs} - seen)
