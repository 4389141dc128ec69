"""Weighted mixtures (`data.mixture`): the training split's token share of each group of domains.

`data.mixture` maps domain patterns (shell patterns, as `data.domains`) to weights. Every
selected domain must match exactly one pattern, and every pattern at least one domain: nothing
is mixed or dropped silently. Pattern g, holding T_g of the split's T tokens, gets the share
p_g = w_g / sum(w). The split's documents are repeated to reach it: group g by the factor
f_g = (p_g / (T_g / T)) / min_h (p_h / (T_h / T)) >= 1 (no document is left out), every
document floor(f_g) times and, for the fraction, the first documents of a fixed permutation of
the group until their tokens come closest to (f_g - floor(f_g)) T_g. The repeats are whole
extra passes (`order`), which the training shuffle then spreads. `Mixture.shares` are the
realised token shares (documents are whole, so they differ from p_g by at most one document's
tokens); the trainer logs them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Mixture(NamedTuple):
    """The training split's documents as mixed.

    Attributes:
      order: int64 [M'] document indices of the mixed stream (each document once per pass it
        is in; passes one after another).
      patterns: the mixture's patterns, in `data.mixture` order.
      targets: [patterns] float64 wanted token shares (the normalised weights).
      shares: [patterns] float64 realised token shares of the mixed stream.
    """

    order: np.ndarray
    patterns: tuple[str, ...]
    targets: np.ndarray
    shares: np.ndarray


def _groups(mixture: Sequence[tuple[str, float]], domain_names: Sequence[str],
            present: Sequence[int]) -> np.ndarray:
    """[domains] the pattern index of each domain id (-1 where the split has none).

    Raises:
      ValueError: a present domain matched by no pattern or by two, or a pattern that
        matches no present domain.
    """
    patterns = [p for p, _ in mixture]
    group = np.full(len(domain_names), -1, np.int64)
    for d in present:
        hits = [g for g, p in enumerate(patterns) if fnmatch.fnmatchcase(domain_names[d], p)]
        if len(hits) != 1:
            what = "no pattern" if not hits else f"{[patterns[g] for g in hits]}"
            raise ValueError(f"data.mixture: domain {domain_names[d]!r} is matched by {what}; "
                             f"each selected domain needs exactly one of {patterns}")
        group[d] = hits[0]
    unused = [p for g, p in enumerate(patterns) if g not in set(group.tolist())]
    if unused:
        raise ValueError(f"data.mixture: pattern(s) {unused} match no selected domain of the "
                         f"training split (domains: {[domain_names[d] for d in present]})")
    return group


def _extra(sizes: np.ndarray, wanted: float) -> np.ndarray:
    """Indices into `sizes` (a fixed permutation's prefix) whose sum comes closest to
    `wanted`."""
    order = np.random.default_rng(0).permutation(sizes.size)
    total = np.concatenate([[0], np.cumsum(sizes[order])])
    return order[:int(np.argmin(np.abs(total - wanted)))]


def mix(mixture: Sequence[tuple[str, float]], lengths: np.ndarray, domains: np.ndarray,
        domain_names: Sequence[str]) -> Mixture:
    """The mixed order of a split's documents (see the module docstring).

    Args:
      mixture: (pattern, weight > 0) pairs, `DataSpec.mixture`.
      lengths: int [M] tokens of each document (its EOS is added here).
      domains: int [M] domain id of each document.
      domain_names: the corpus's domain names (index = id).
    """
    tokens = np.asarray(lengths, np.int64) + 1
    group = _groups(mixture, domain_names, np.unique(domains).tolist())[domains]
    count = len(mixture)
    targets = np.asarray([w for _, w in mixture], np.float64)
    targets /= targets.sum()
    natural = np.bincount(group, tokens, minlength=count) / tokens.sum()
    factor = targets / natural
    factor /= factor.min()
    repeats = np.floor(factor[group]).astype(np.int64)
    for g in range(count):
        members = np.flatnonzero(group == g)
        extra = _extra(tokens[members], (factor[g] - np.floor(factor[g])) * tokens[members].sum())
        repeats[members[extra]] += 1
    order = np.concatenate([np.flatnonzero(repeats > k) for k in range(int(repeats.max()))])
    shares = np.bincount(group[order], tokens[order], minlength=count) / tokens[order].sum()
    return Mixture(order, tuple(p for p, _ in mixture), targets, shares)


class MixedDocuments:
    """`docs` in a mixture's order: the documents interface of the packing (`len`,
    `lengths`, `document(i)`)."""

    def __init__(self, docs, order: np.ndarray):
        self._docs, self._order = docs, order
        self.lengths = np.asarray(docs.lengths)[order]

    def __len__(self) -> int:
        return self._order.size

    def document(self, index: int):
        return self._docs.document(int(self._order[index]))
