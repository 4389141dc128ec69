"""Reliability: the cases that lost or mixed work, each with a clear error or a correct result.

Cases covered elsewhere: a second trainer on a busy workdir (tests/train/test_workdir_lock.py
and test_trainer.py), flipped bytes in a checkpoint (tests/train/test_checkpoint.py, restore and
export), SIGTERM (test_trainer.py: saves without evaluating, exit 143), options out of range
(tests/cli/test_train.py).
"""

import json
import logging

import jax
import numpy as np
import pytest
from flax import nnx

from moejax.models.decoder import Decoder
from moejax.train.checkpoint import Checkpointer
from moejax.train.specs import specs_from_config
from moejax.train.trainer import NonFiniteError, train_and_evaluate
from tests.train.helpers import interrupted_after_two_steps as _interrupted_after_two_steps
from tests.train.helpers import logged_steps as _logged_steps
from tests.train.helpers import tiny_config as _tiny


def test_diverging_run_stops_and_leaves_only_finite_complete_checkpoints(tmp_path):
    """learning_rate=1e6 without clipping, async saves: the run stops with one clear error;
    the step it names is on disk, complete (no temporary directory left) and finite."""
    config = _tiny(steps=8, learning_rate=1e6, grad_clip=0.0, async_checkpoint=True)
    message = r"non-finite .* at step \d+; stopped without saving it\. The last good checkpoint"
    with pytest.raises(NonFiniteError, match=message + " is step ") as error:
        train_and_evaluate(config, tmp_path)
    named = int(str(error.value).split("The last good checkpoint is step ")[1].split()[0])
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert steps and steps[-1] == named, (steps, str(error.value))
    model_spec = specs_from_config(config).model
    model = Decoder(model_spec, rngs=nnx.Rngs(1))
    with Checkpointer(tmp_path) as checkpointer:
        assert checkpointer.restore_latest(model).step == named
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_killed_run_resumes_with_every_step_logged_once(tmp_path, caplog):
    """Killed after logging step 3 with step 2 saved and a row cut off mid-write: the resumed
    run drops the rows after step 2, logs 3 and 4 once, and its report is written."""
    _interrupted_after_two_steps(_tiny(steps=4), tmp_path)  # steps 1, 2 logged and saved
    metrics = tmp_path / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    row_three = dict(json.loads(rows[-1]), step=3)  # what a killed run logged past its save
    metrics.write_text("\n".join([*rows, json.dumps(row_three)]) + '\n{"step": 4, "lo')
    with caplog.at_level(logging.WARNING):
        last = train_and_evaluate(_tiny(steps=4, report=True), tmp_path)
    assert last["step"] == 4 and (tmp_path / "report.md").is_file()
    assert _logged_steps(tmp_path) == [1, 2, 3, 4]
    assert "dropped 2 rows after step 2" in caplog.text


def test_changed_model_is_named_by_its_config_keys(tmp_path):
    """Resuming a workdir with another model: the keys that differ, both values, no tensor
    shapes; before the restore touches anything."""
    train_and_evaluate(_tiny(steps=1), tmp_path)
    changed = _tiny(steps=2)
    changed.model.update(d_model=48)
    changed.model.moe.update(top_k=2)
    with pytest.raises(ValueError, match=r"written with another config: model.d_model=32 there, "
                                         r"48 here; model.moe.top_k=3 there, 2 here\. Resume"):
        train_and_evaluate(changed, tmp_path)
    assert _logged_steps(tmp_path) == [1]


def test_binary_files_are_skipped_and_a_corpus_too_small_is_refused(tmp_path, caplog):
    """A NUL-byte file among the data files is skipped with a warning naming it; a corpus too
    small for one batch stops the run before any work."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("plain text " * 20)
    (data / "program").write_bytes(bytes(range(256)) * 4)
    config = _tiny(steps=1)
    config.data.update(corpus="files", paths=(str(data / "*"),), validation_every=2)
    with caplog.at_level(logging.WARNING), pytest.raises(
            ValueError, match=r"the (train|validation) split (is empty|holds \d+ windows)"):
        train_and_evaluate(config, tmp_path / "work")
    assert f"skipping {data / 'program'}: it holds NUL bytes" in caplog.text
    assert not (tmp_path / "work" / "metrics.jsonl").exists()
    assert not (tmp_path / "work" / "checkpoints").exists()
