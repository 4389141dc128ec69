"""Reliability: inputs that crashed, hung, wasted work or printed garbage, each now one line.

Every case runs a command's main in-process (`run_command` with the command's FLAGS) and
reads its exit status and stderr: moejax-sample on a tiny export, moejax-train on
configs/tiny.py, moejax-experiment on a run whose lock this test holds.
"""

import dataclasses
import os
import re
import sys

import numpy as np
import pytest
from flax import nnx

from moejax.cli import _command, experiment, sample, train
from moejax.experiments import runner
from moejax.experiments.suites import SUITES, RunOptions
from moejax.models import weights
from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.models.generate import generate
from moejax.moe.router import RouterSpec
from moejax.moe.spec import MoESpec
from moejax.train import plan
from moejax.train.config_files import load_config
from moejax.train.workdir_lock import workdir_lock
from tests.train.helpers import CONFIGS

SPEC = {"vocab_size": 259, "d_model": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
        "d_ff": 24, "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8}}
TINY = str(CONFIGS / "tiny.py")


def _export(path, hf=None, zero_head=False):
    """A tiny byte-level export; `hf`: its kept Hugging Face record; `zero_head`: every logit
    0, so greedy decoding picks id 0 (the byte NUL) every step."""
    model = Decoder(decoder_spec_from_config(SPEC), rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if zero_head:
        params["head"]["kernel"] = np.zeros_like(params["head"]["kernel"])
    config = {"model": dataclasses.asdict(model.spec), **({"hf": hf} if hf else {})}
    weights.write_export(path, config, params, overwrite=False)
    return model


def _sample(export, *args):
    return sample.main(["moejax-sample", "--export", str(export), *args])


def _error_line(capsys, command):
    """The one line the command wrote to stderr (asserting there was exactly one)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{command}: "), err
    return err.strip()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "ex"
    _export(path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--prompt_ids", "1,2", "--max_new_tokens", "2000000000"],
     "prompt length 2 + max_new_tokens=2000000000 = 2000000002 positions; allowed: at most "
     "32768 (moejax's cap for a model that declares no context length)"),
    (["--prompt_ids", "1", "--max_new_tokens", "100000000"], "allowed: at most 32768"),
    (["--prompt_ids", "1", "--max_new_tokens", "0"], "max_new_tokens=0; allowed: an integer >= 1"),
    (["--prompt_ids", "1", "--temperature", "1e-40"],
     "temperature=1e-40; allowed: 0 (greedy) or a finite number >= 0.0001"),
    (["--prompt_ids", "1", "--temperature", "inf"], "temperature=inf; allowed: 0 (greedy)"),
    (["--prompt_ids", "1", "--top_p", "nan"], "top_p=nan; allowed: in (0, 1]"),
    (["--prompt_ids", "1", "--seed", "-1"], "seed=-1; allowed: an integer in [0, 4294967295]"),
    (["--prompt_ids", "3,99999999999"],
     "--prompt_ids: '99999999999' is not a token id of this model; allowed: integers in "
     "[0, 258] (model.vocab_size=259)"),
    (["--prompt_ids", "259"], "--prompt_ids: '259' is not a token id of this model"),
    (["--prompt_ids", "x1"], "--prompt_ids: 'x1' is not a token id of this model"),
])
def test_sample_options_out_of_range_are_one_line_before_any_work(export, capsys, args,
                                                                  message):
    """Was: SIGABRT or an OOM traceback (a KV cache of 2e9 slots), garbage ids with exit 0
    (logits / 1e-40 overflow), an OverflowError traceback (an id beyond int32)."""
    assert _sample(export, *args) == 1
    assert message in _error_line(capsys, "moejax-sample")


def test_generation_is_limited_by_the_models_context_length(tmp_path, capsys):
    """An export keeping a Hugging Face max_position_embeddings: prompt + new tokens within
    it; a large id in an int64 prompt is refused, not wrapped into the int32 range."""
    model = _export(tmp_path / "ex", hf={"max_position_embeddings": 8})
    assert _sample(tmp_path / "ex", "--prompt_ids", "1,2,3", "--max_new_tokens", "6") == 1
    assert _error_line(capsys, "moejax-sample").endswith(
        "= 9 positions; allowed: at most 8 (the model's max_position_embeddings)")
    with pytest.raises(ValueError, match=r"prompt ids must lie in \[0, 259\)"):
        generate(model, np.asarray([[2**32 + 5]], np.int64), 1)


def test_sampled_control_characters_are_escaped(tmp_path, capsys):
    """Was: the bytes of the sample, NUL included, went to the terminal as they were."""
    _export(tmp_path / "ex", zero_head=True)
    assert _sample(tmp_path / "ex", "--prompt", "a", "--max_new_tokens", "3") == 0
    text, ids = capsys.readouterr().out.splitlines()
    assert ids == "ids: 97,0,0,0" and text == "\\x00" * 3
    assert sample._printable("ok\t\n\x1b[2J\x7f\u00e9") == "ok\t\n\\x1b[2J\\x7f\u00e9"


def _train(*args):
    """moejax-train's exit status for `args` (ml_collections reads --config.* overrides from
    sys.argv, so the arguments go there too)."""
    argv = ["moejax-train", *args]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        return _command.run_command("moejax-train", train.USAGE, train.FLAGS, train.main, argv)


@pytest.mark.parametrize("option, message", [
    ("--config.model.d_model=-32", "model.d_model=-32; allowed: an integer >= 1"),
    ("--config.model.moe.d_hidden=0", "moe.d_hidden=0; allowed: an integer >= 1"),
    ("--config.model.num_heads=0", "model.num_heads=0; allowed: an integer >= 1"),
    ("--config.model.rope_theta=-1.0", "model.rope_theta=-1.0; allowed: a finite number > 0"),
    ("--config.model.moe.capacity_factor=0.0",
     "moe.capacity_factor=0.0; allowed: a finite number > 0"),
    ("--config.model.moe.router.jitter=1.5",
     "router.jitter=1.5; allowed: a number in [0, 1)"),
])
def test_model_sizes_are_checked_when_the_spec_is_built(tmp_path, capsys, option, message):
    """Was: 104-line JAX tracebacks after the data was read."""
    assert _train("--config", TINY, option, "--workdir", str(tmp_path / "w")) == 2
    assert _error_line(capsys, "moejax-train") == f"moejax-train: {message}"
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("spec, message", [
    (lambda: MoESpec(top_k=True), "moe.top_k=True; allowed: an integer >= 1"),
    (lambda: MoESpec(num_shared_experts=-1), "moe.num_shared_experts=-1; allowed: an integer >= 0"),
    (lambda: MoESpec(shared_d_hidden=0),
     "moe.shared_d_hidden=0; allowed: an integer >= 1, or None"),
    (lambda: RouterSpec(scaling_factor=float("nan")), "router.scaling_factor=nan"),
    (lambda: RouterSpec(num_groups=0), "router.num_groups=0; allowed: an integer >= 1"),
    (lambda: decoder_spec_from_config({**SPEC, "vocab_size": 2.5}), "model.vocab_size=2.5"),
    (lambda: decoder_spec_from_config({**SPEC, "head_dim": 0}), "model.head_dim=0"),
    (lambda: decoder_spec_from_config({**SPEC, "norm_eps": float("inf")}), "model.norm_eps=inf"),
])
def test_specs_refuse_sizes_that_are_not_positive_integers(spec, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        spec()


def test_a_batch_larger_than_memory_is_refused_before_the_data_is_read(tmp_path, capsys):
    """Was: an OOM traceback after 87 s of reading and compiling. Even the floor (the logits
    alone: 4 TiB) exceeds any machine's memory: refused without compiling anything."""
    batch = "--config.train.batch_size=268435456"
    assert _train("--config", TINY, batch, "--workdir", str(tmp_path)) == 2
    line = _error_line(capsys, "moejax-train")
    assert line.startswith("moejax-train: train.batch_size=268435456 with train.seq_len=16 "
                           "needs at least ")
    assert "GiB of a device (this machine's RAM shared by 1 CPU device(s)); lower " in line
    assert list(tmp_path.iterdir()) == []  # no lock, no data, no metrics


def test_xla_plan_decides_when_the_estimate_exceeds_memory(tmp_path, monkeypatch):
    """A device whose memory lies between the floor and the rough estimate: the step is
    compiled from shapes and XLA's peak refuses it."""
    specs = train.specs_from_config(load_config(TINY))
    floor, _ = plan.memory_estimate(specs)
    monkeypatch.setattr(plan, "device_memory_bytes", lambda device=None: floor + 1)
    with pytest.raises(ValueError, match=r"per device \(XLA's plan of the train step\), more "
                                         r"than the 0\.00 GiB of a device"):
        plan.check_memory(specs)


def test_a_config_file_that_exits_or_never_ends_is_one_line(tmp_path, capsys, monkeypatch):
    """Was: exit 0 having done nothing (sys.exit in the file); a silent hang (a loop)."""
    exits, loops = tmp_path / "exits.py", tmp_path / "loops.py"
    exits.write_text("import sys\n\ndef get_config():\n    sys.exit(0)\n")
    loops.write_text("def get_config():\n    while True:\n        try:\n            pass\n"
                     "        except Exception:\n            pass\n")
    assert _train("--config", str(exits), "--workdir", str(tmp_path / "w")) == 2
    assert _error_line(capsys, "moejax-train") == (
        f"moejax-train: --config {exits}: the config file called sys.exit(0)")
    monkeypatch.setattr(_command, "CONFIG_SECONDS", 0.5)
    assert _train("--config", str(loops), "--workdir", str(tmp_path / "w")) == 2
    assert _error_line(capsys, "moejax-train") == (
        f"moejax-train: --config {loops}: the config file ran longer than 0.5 s; stopped")
    # a sibling config that exits: named by the file that exits
    (tmp_path / "outer.py").write_text(
        "from moejax.train.config_files import sibling_config\n\n"
        "def get_config():\n    return sibling_config(__file__, 'exits')\n")
    assert _train("--config", str(tmp_path / "outer.py"), "--workdir", str(tmp_path)) == 2
    assert _error_line(capsys, "moejax-train").endswith(
        f"ValueError: config file {exits} called sys.exit(0)")


def test_a_second_experiment_on_a_busy_run_is_one_line(tmp_path, capsys):
    """Was: a WorkdirBusyError traceback (the good message inside it)."""
    suite = "specialization"
    config = runner.suite_config(SUITES[suite][0], tmp_path, seed=0, options=RunOptions())
    busy = runner.run_dir(tmp_path, config)
    with workdir_lock(busy):
        status = _command.run_command(
            "moejax-experiment", experiment.USAGE, experiment.FLAGS, experiment.main,
            ["moejax-experiment", "--suite", suite, "--workdir", str(tmp_path), "--seeds", "1"])
    assert status == 3
    line = _error_line(capsys, "moejax-experiment")
    assert f"workdir {busy} is in use by another run" in line
    assert f"PID {os.getpid()}" in line
