"""Data stage 1, sources: `Document`, what every source yields."""

from __future__ import annotations

from typing import NamedTuple


class Document(NamedTuple):
    """One document of a source: relative name, raw text bytes, domain name, trained spans.

    `name` is machine-independent and decides the train/validation split; `domain` labels the
    document for per-domain statistics (its id is its position among the source's sorted
    domain names). `trained` lists the byte spans `(start, end)` of `text` whose tokens the
    loss reads (an instruction record's completion, a chat's assistant turns); empty: all of
    it (plain text).
    """

    name: str
    text: bytes
    domain: str
    trained: tuple[tuple[int, int], ...] = ()
