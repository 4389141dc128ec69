"""The suites' evaluation sample: the same validation windows for every seed and arm
(`data.validation_seed`), 256 windows at the default scale."""

import numpy as np
import pytest

from moejax.data import pipeline
from moejax.experiments.suites import SUITES, RunOptions, variant_config
from tests.data.helpers import write_corpus


def _first_windows(config, corpus: str, batches: int = 2) -> np.ndarray:
    """The evaluation's first validation batches for `config`, read as the validation
    evaluator reads them (shuffled with the run's seed), from a small files corpus."""
    data = {**config.data.to_dict(), "corpus": "files", "paths": (corpus,),
            "validation_every": 2, "num_threads": 0}
    stream = iter(pipeline.make_dataset(pipeline.data_spec_from_config(data), "validation",
                                        seq_len=7, batch_size=2, seed=config.seed,
                                        shuffle=True))
    return np.stack([next(stream)["tokens"] for _ in range(batches)])


@pytest.mark.parametrize("quick", [False, True])
def test_seeds_evaluate_the_same_windows(tmp_path, quick):
    corpus = write_corpus(tmp_path / "corpus", num_files=40, sizes=(60, 200))
    options = RunOptions(quick=quick)
    first, second = SUITES["specialization"][0], SUITES["specialization"][3]
    runs = [variant_config(v, seed=s, options=options) for v, s in ((first, 0), (first, 1),
                                                                       (second, 1))]
    assert {c.data.validation_seed for c in runs} == {0}
    windows = [_first_windows(config, corpus) for config in runs]
    np.testing.assert_array_equal(windows[0], windows[1])  # seeds 0 and 1
    np.testing.assert_array_equal(windows[0], windows[2])  # another arm
    own = runs[1].copy_and_resolve_references()
    own.data.validation_seed = None  # before the option: each seed its own sample
    assert not np.array_equal(_first_windows(own, corpus), windows[0])


def test_default_scale_evaluates_256_windows():
    config = variant_config(SUITES["specialization"][0], seed=2)
    assert config.train.eval_batches * config.train.batch_size == 256


def test_validation_seed_is_checked():
    with pytest.raises(ValueError, match=r"data.validation_seed=-1; allowed: 0..2\*\*32-1"):
        pipeline.DataSpec(validation_seed=-1)
