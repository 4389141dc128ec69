"""Config -> specs: the losses must fit the model, with errors naming the options."""

import pathlib

import pytest

from moejax.regularizers.total import LOSSES
from moejax.train.config_files import load_config
from moejax.train.specs import TrainSpec, specs_from_config, train_spec_from_config

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


@pytest.mark.parametrize("name", [*LOSSES, "bias_rate"])
def test_every_loss_weight_must_be_non_negative(name):
    config = _tiny()
    setattr(config.loss, name, -1e-3)
    with pytest.raises(ValueError, match=f"loss weights must be >= 0: loss.{name}=-0.001"):
        specs_from_config(config)


def test_blocks_record_the_cosine_the_losses_read():
    config = _tiny()
    config.loss.sp, config.loss.orth = 0.0, 1e-3
    model = specs_from_config(config).model
    assert model.moe.record_cosine and model.moe.cosine_source == "output"
    config.loss.orth = 0.0
    model = specs_from_config(config).model
    assert not model.moe.record_cosine


@pytest.mark.parametrize("key, value, match", [
    ("steps", 0, r"^train.steps=0; allowed: an integer >= 1$"),
    ("log_every", 0, r"^train.log_every=0; allowed: an integer >= 1$"),
    ("checkpoint_every", -1, r"^train.checkpoint_every=-1; allowed: an integer >= 1$"),
    ("learning_rate", -1.0, r"^train.learning_rate=-1.0; allowed: finite and > 0$"),
    ("b2", 1.0, r"^train.b2=1.0; allowed: \[0, 1\)$"),
    ("grad_accumulation", 3, r"^train.batch_size=2 is not divisible by train.grad_accumulation=3$"),
    ("stepz", 1, r"^unknown option\(s\) train.stepz; allowed: "),
    ("peak_tflops", 0.0, r"^train.peak_tflops=0.0; allowed: > 0 or None$"),
    ("profile_steps", (3, 2), r"^train.profile_steps=\(3, 2\); allowed: \(\) or \(first, last\)"),
])
def test_train_options_are_checked_with_errors_naming_them(key, value, match):
    config = _tiny()
    config.train[key] = value
    with pytest.raises(ValueError, match=match):
        train_spec_from_config(config)


def test_train_spec_reads_the_config_and_keeps_defaults_for_missing_keys():
    config = _tiny()
    del config.train["b1"]
    train = train_spec_from_config(config)
    assert (train.steps, train.batch_size, train.b1) == (4, 2, TrainSpec().b1)
