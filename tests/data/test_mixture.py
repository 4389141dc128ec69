"""data.mixture: the training split's token shares follow the weights, every document kept."""

import dataclasses

import numpy as np
import pytest

from moejax.data import pipeline as data
from moejax.data.mixture import mix
from tests.data.helpers import DOMAINS, write_corpus

NAMES = ("code", "email", "http", "web")


def test_shares_follow_the_weights_and_no_document_is_left_out():
    """Loop check: the realised shares are the tokens (EOS included) of the mixed order per
    pattern, within one document of the targets, and every document appears at least once."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, 200)
    domains = rng.integers(0, 4, 200)
    mixture = (("code", 1.0), ("email", 3.0), ("h*", 0.5), ("web", 2.0))
    got = mix(mixture, lengths, domains, NAMES)
    group = {"code": 0, "email": 1, "http": 2, "web": 3}
    tokens = np.zeros(4)
    for i in got.order:
        tokens[group[NAMES[domains[i]]]] += lengths[i] + 1
    np.testing.assert_allclose(got.shares, tokens / tokens.sum())
    np.testing.assert_allclose(got.targets, np.asarray([1.0, 3.0, 0.5, 2.0]) / 6.5)
    assert np.abs(got.shares - got.targets).max() < 61 / tokens.sum() * 4
    assert set(got.order.tolist()) == set(range(200))
    # the group that is least over-represented by its weight is not repeated
    assert np.bincount(got.order, minlength=200).min() == 1


@pytest.mark.parametrize("mixture, message", [
    ((("code", 1.0), ("e*", 1.0), ("web", 1.0)), "domain 'http' is matched by no pattern"),
    ((("*", 1.0), ("code", 1.0)), r"domain 'code' is matched by \['\*', 'code'\]"),
    ((("*", 1.0), ("ftp", 2.0)), r"pattern\(s\) \['ftp'\] match no selected domain"),
])
def test_every_domain_one_pattern_and_every_pattern_a_domain(mixture, message):
    with pytest.raises(ValueError, match=message):
        mix(mixture, np.ones(8, np.int64), np.arange(8) % 4, NAMES)


def test_weights_must_be_positive():
    with pytest.raises(ValueError, match="data.mixture weights must be finite and > 0: a=0.0"):
        data.DataSpec(mixture={"a": 0.0})


def test_the_training_stream_has_the_realised_shares(tmp_path):
    """One epoch of the mixed training windows holds each pattern's tokens in the realised
    shares (up to the tail shorter than a window); validation is not mixed."""
    spec = data.DataSpec(corpus="files", paths=(write_corpus(tmp_path, num_files=24),),
                         validation_every=4, num_threads=0,
                         mixture={"alpha": 4.0, "beta": 1.0, "gamma": 1.0})
    mixture = data.mixture_of(spec)
    windows = data.packed_sequences(spec, "train", seq_len=7)
    domains = np.concatenate([windows[i]["domains"] for i in range(len(windows))])
    counts = np.bincount(domains, minlength=3)
    np.testing.assert_allclose(counts / counts.sum(), mixture.shares, atol=8 / counts.sum())
    assert mixture.patterns == ("alpha", "beta", "gamma") and mixture.shares[0] > 0.5
    plain = data.DataSpec(corpus="files", paths=spec.paths, validation_every=4, num_threads=0)
    assert data.num_sequences(plain, "validation", seq_len=7) == data.num_sequences(
        spec, "validation", seq_len=7)
    assert list(DOMAINS) == data.domain_names(spec)


def test_prepared_shards_mix_as_the_text_does(tmp_path):
    """The same mixture over shards gives the text's order (the shards keep each record's
    domain)."""
    text = data.DataSpec(corpus="files", paths=(write_corpus(tmp_path / "c", num_files=24),),
                         validation_every=4, num_threads=0)
    data.prepare(text, tmp_path / "p", progress=False)
    mixture = {"alpha": 4.0, "beta": 1.0, "gamma": 1.0}
    shards = data.DataSpec(corpus="arrayrecord", paths=(str(tmp_path / "p"),), num_threads=0,
                           mixture=mixture)
    mixed_text = data.mixture_of(dataclasses.replace(text, mixture=mixture))
    np.testing.assert_array_equal(data.mixture_of(shards).order, mixed_text.order)
