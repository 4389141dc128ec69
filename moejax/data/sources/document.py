"""Data stage 1, sources: `Document`, what every source yields."""

from __future__ import annotations

from typing import NamedTuple


class Document(NamedTuple):
    """One document of a source: relative name, raw text bytes and domain name.

    `name` is machine-independent and decides the train/validation split; `domain` labels the
    document for per-domain statistics (its id is its position among the source's sorted
    domain names).
    """

    name: str
    text: bytes
    domain: str
