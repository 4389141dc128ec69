"""Config -> specs: the losses must fit the model, with errors naming the options."""

import pathlib

import pytest

from moejax.train.config_files import load_config
from moejax.train.specs import specs_from_config

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def _tiny():
    return load_config(CONFIGS / "tiny.py")


@pytest.mark.parametrize("edit, match", [
    (lambda c: (setattr(c.model.moe, "top_k", 1), setattr(c.loss, "sp", 1e-3)), "top_k >= 2"),
    (lambda c: (setattr(c.model, "num_layers", 1), setattr(c.loss, "cp", 1e-3)), "loss.cp"),
    (lambda c: setattr(c.loss, "bias_rate", 1e-3), "use_bias"),
    (lambda c: setattr(c.loss, "lb_variant", "micro"), "loss.lb_variant"),
    (lambda c: (setattr(c.loss, "sp", 1e-3), setattr(c.loss, "orth", 1e-3)), "one at a time"),
])
def test_losses_that_do_not_fit_are_errors(edit, match):
    config = _tiny()
    edit(config)
    with pytest.raises(ValueError, match=match):
        specs_from_config(config)


def test_blocks_record_the_cosine_the_losses_read():
    config = _tiny()
    config.loss.sp, config.loss.orth = 0.0, 1e-3
    model, _ = specs_from_config(config)
    assert model.moe.record_cosine and model.moe.cosine_source == "output"
    config.loss.orth = 0.0
    model, _ = specs_from_config(config)
    assert not model.moe.record_cosine
