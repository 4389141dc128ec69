"""Checkpointer round trips, pruning, corruption fallback, async saves and the export."""

import json
import logging
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from moejax.cli import export as export_cli
from moejax.models import checksums, weights
from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.train import checkpoint

MODEL = {"vocab_size": 19, "d_model": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
         "d_ff": 24, "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8,
                             "router": {"use_bias": True}}}
TOKENS = (np.arange(2 * 7).reshape(2, 7) * 5) % 19
DATA_STATE = {"next_index": 12, "epoch": 1, "order": [3, 1, 2]}


def _config(**router):
    model = json.loads(json.dumps(MODEL))
    model["moe"]["router"].update(router)
    return ml_collections.ConfigDict({"seed": 0, "model": model, "train": {"steps": 3}})


def _build(config, seed=0):
    """A tiny Decoder and its adamw optimizer."""
    model = Decoder(decoder_spec_from_config(config.model), rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)


@nnx.jit
def _update(optimizer, model, scale):
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) * scale + p * 0.1,
                         nnx.state(model, nnx.Param))
    optimizer.update(model, grads)


@nnx.jit
def _logits(model, tokens):
    return model(tokens)[0]


def _trained(config, seed=0, updates=2):
    """Model with non-zero router biases after `updates` optimizer steps."""
    model, optimizer = _build(config, seed)
    rows = jnp.arange(1, model.spec.num_routers + 1, dtype=jnp.float32)[:, None]
    model.set_router_biases(jnp.array([4.0, -3.0, 0.5, -1.5]) * rows + seed)
    for i in range(updates):
        _update(optimizer, model, float(i + 1))
    return model, optimizer


def _leaves(obj):
    return nnx.to_flat_state(nnx.state(obj))


def _assert_same_state(a, b):
    flat_a, flat_b = dict(_leaves(a)), dict(_leaves(b))
    assert flat_a.keys() == flat_b.keys()
    for path, variable in flat_a.items():
        x, y = variable.get_value(), flat_b[path].get_value()
        assert type(variable) is type(flat_b[path]), path
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y), path
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and np.array_equal(x, y), path


def _save(checkpointer, step, model, optimizer, config, **kwargs):
    kwargs = {"rng_key": jax.random.key(step), "data_state": DATA_STATE, **kwargs}
    assert checkpointer.save(step, model=model, optimizer=optimizer, config=config, **kwargs)


def test_round_trip_is_bitwise_exact(tmp_path):
    config = _config()
    model, optimizer = _trained(config)
    key = jax.random.split(jax.random.key(42))[1]
    with checkpoint.Checkpointer(tmp_path, async_save=False) as checkpointer:
        _save(checkpointer, 7, model, optimizer, config, rng_key=key)
    fresh_model, fresh_optimizer = _build(config, seed=1)
    assert not np.array_equal(fresh_model.head.kernel[...], model.head.kernel[...])
    with checkpoint.Checkpointer(tmp_path) as checkpointer:
        info = checkpointer.restore_latest(fresh_model, fresh_optimizer)
    _assert_same_state(fresh_model, model)
    _assert_same_state(fresh_optimizer, optimizer)
    assert int(fresh_optimizer.step[...]) == 2
    biases = fresh_model.router_biases()
    assert biases.shape == (2, 4) and np.all(np.any(biases != 0, axis=1))
    assert info.step == 7 and info.directory == tmp_path / "checkpoints" / "7"
    assert jax.random.key_impl(info.rng_key) == jax.random.key_impl(key)
    assert np.array_equal(jax.random.key_data(info.rng_key), jax.random.key_data(key))
    assert info.data_state == DATA_STATE
    assert info.config == json.loads(config.to_json_best_effort())
    assert ml_collections.ConfigDict(info.config).model.moe.router.use_bias


def test_round_trip_of_rng_streams_raw_keys_and_bytes(tmp_path):
    config = _config(jitter=0.1)  # each router then owns an RNG stream (key and count)
    model, optimizer = _trained(config, updates=1)
    rngs = model.stacks[0].layers[0].ffn.block.router.rngs  # stacked: one per layer
    _logits(model, TOKENS), _logits(model, TOKENS)  # jitter in training advances the counts
    raw_key, data_state = jax.random.PRNGKey(3), b"\x00grain\xffstate"
    with checkpoint.Checkpointer(tmp_path, async_save=False) as checkpointer:
        _save(checkpointer, 1, model, optimizer, config, rng_key=raw_key, data_state=data_state)
        fresh_model, fresh_optimizer = _build(config, seed=5)
        fresh_rngs = fresh_model.stacks[0].layers[0].ffn.block.router.rngs
        assert np.array_equal(fresh_rngs.jitter.count[...] + 2, rngs.jitter.count[...])
        info = checkpointer.restore_latest(fresh_model, fresh_optimizer)
    _assert_same_state(fresh_model, model)
    assert np.array_equal(fresh_rngs.jitter.count[...], rngs.jitter.count[...])
    assert info.rng_key.dtype == jnp.uint32 and np.array_equal(info.rng_key, raw_key)
    assert info.data_state == data_state


def test_empty_workdir_restores_none_and_max_to_keep_prunes(tmp_path):
    config = _config()
    model, optimizer = _build(config)
    with checkpoint.Checkpointer(tmp_path, max_to_keep=2, async_save=False) as checkpointer:
        assert checkpointer.restore_latest(model, optimizer) is None
        for step in (1, 2, 3):
            _save(checkpointer, step, model, optimizer, config, rng_key=None, data_state=None)
        assert checkpointer.all_steps() == [2, 3]
        info = checkpointer.restore_latest(model, optimizer)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
    assert (info.step, info.rng_key, info.data_state) == (3, None, None)


def _corrupt(step_dir: pathlib.Path, how: str) -> None:
    if how == "truncate":  # every OCDBT data file to half its size
        for data in (step_dir / "model").rglob("d/*"):
            os.truncate(data, data.stat().st_size // 2)
    elif how == "delete":
        (step_dir / "optimizer" / "_METADATA").unlink()
    elif how == "flip":  # 10 bytes of the largest data file changed, its size kept
        data = max((step_dir / "model").rglob("d/*"), key=lambda p: p.stat().st_size)
        raw = bytearray(data.read_bytes())
        middle = len(raw) // 2
        raw[middle:middle + 10] = bytes(b ^ 0xFF for b in raw[middle:middle + 10])
        data.write_bytes(bytes(raw))
    else:  # an interrupted write that left an empty step directory
        for child in step_dir.iterdir():
            (child.unlink if child.is_file() else shutil.rmtree)(child)


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A workdir with steps 1 and 2 (different states), and the step-1 model and optimizer."""
    workdir = tmp_path_factory.mktemp("two_steps")
    config = _config()
    first, first_optimizer = _trained(config, updates=1)
    second, second_optimizer = _trained(config, seed=1, updates=2)
    with checkpoint.Checkpointer(workdir, async_save=False) as checkpointer:
        _save(checkpointer, 1, first, first_optimizer, config)
        _save(checkpointer, 2, second, second_optimizer, config)
    return workdir, config, first, first_optimizer


def _copy(two_steps, tmp_path):
    workdir, config, first, first_optimizer = two_steps
    shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
    return config, first, first_optimizer


@pytest.mark.parametrize("how", ["truncate", "delete", "empty", "flip"])
def test_corrupt_latest_falls_back_with_a_warning(two_steps, tmp_path, caplog, how):
    config, first, first_optimizer = _copy(two_steps, tmp_path)
    _corrupt(tmp_path / "checkpoints" / "2", how)
    model, optimizer = _build(config, seed=3)
    with checkpoint.Checkpointer(tmp_path, async_save=False) as checkpointer:
        with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
            info = checkpointer.restore_latest(model, optimizer)
        assert info.step == 1 and info.rng_key is not None
        _assert_same_state(model, first)
        _assert_same_state(optimizer, first_optimizer)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("step 2" in m and "does not restore" in m for m in warnings), warnings
        if how == "flip":  # Orbax would read the altered bytes: the checksums catch them
            assert any("checksum mismatch" in m and "was altered" in m for m in warnings)
        assert (tmp_path / "checkpoints.corrupt" / "2").is_dir()
        # the resumed run can write step 2 again
        _save(checkpointer, 2, model, optimizer, config)
        assert checkpointer.all_steps() == [1, 2]


def test_altered_step_is_not_exported(two_steps, tmp_path):
    """Flipped bytes in a step: its export is refused, naming the checksum mismatch; the
    default export falls back to the newest intact step."""
    _copy(two_steps, tmp_path)
    _corrupt(tmp_path / "checkpoints" / "2", "flip")
    with pytest.raises(RuntimeError, match="checksum mismatch: .* was altered"):
        weights.export(tmp_path, tmp_path / "out", step=2)
    weights.export(tmp_path, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["train"]["steps"] == 3
    every_file = checksums.verify_checksums(tmp_path / "checkpoints" / "1")
    assert every_file  # written with the step, and intact


def test_leftover_tmp_directory_is_ignored(two_steps, tmp_path, caplog):
    config, _, _ = _copy(two_steps, tmp_path)
    leftover = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234"
    leftover.mkdir()
    (leftover / "junk").write_bytes(b"partial")
    model, optimizer = _build(config, seed=3)
    with checkpoint.Checkpointer(tmp_path) as checkpointer:
        assert checkpointer.restore_latest(model, optimizer).step == 2
        _save(checkpointer, 3, model, optimizer, config)  # Orbax removes the leftover first
        assert checkpointer.all_steps() == [1, 2, 3] and not leftover.exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name in (checkpoint.__name__, weights.__name__)]


def test_all_corrupt_is_a_runtime_error_and_nothing_is_moved(two_steps, tmp_path):
    config, _, _ = _copy(two_steps, tmp_path)
    for step in ("1", "2"):
        _corrupt(tmp_path / "checkpoints" / step, "truncate")
    model, optimizer = _build(config)
    with checkpoint.Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(RuntimeError, match=str(tmp_path / "checkpoints")):
            checkpointer.restore_latest(model, optimizer)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_other_model_structure_is_a_runtime_error(two_steps, tmp_path):
    _copy(two_steps, tmp_path)
    model, optimizer = _build(_config(use_bias=False))
    with checkpoint.Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(RuntimeError, match="no readable checkpoint"):
            checkpointer.restore_latest(model, optimizer)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def _host_copy(obj) -> dict:
    return {path: np.array(v.get_value()) for path, v in _leaves(obj)}


def test_forced_save_is_synchronous_and_async_save_survives_donation(tmp_path):
    config = _config()
    model, optimizer = _trained(config)
    checkpointer = checkpoint.Checkpointer(tmp_path, async_save=True)
    _save(checkpointer, 1, model, optimizer, config, force=True)
    assert os.listdir(tmp_path / "checkpoints") == ["1"]  # finished: no tmp directory left
    assert not checkpointer.save(1, model=model, optimizer=optimizer, config=config, force=True)
    _update(optimizer, model, 3.0)
    expected_model, expected_optimizer = _host_copy(model), _host_copy(optimizer)
    _save(checkpointer, 2, model, optimizer, config)
    for obj in (model, optimizer):  # what a donating train step does to the saved buffers
        for _, variable in _leaves(obj):
            variable.get_value().delete()
    checkpointer.wait()
    assert checkpointer.all_steps() == [1, 2]
    fresh_model, fresh_optimizer = _build(config, seed=2)
    assert checkpointer.restore_latest(fresh_model, fresh_optimizer).step == 2
    checkpointer.close()
    for expected, fresh in ((expected_model, fresh_model), (expected_optimizer, fresh_optimizer)):
        restored = _host_copy(fresh)
        assert restored.keys() == expected.keys()
        assert all(np.array_equal(restored[k], v) for k, v in expected.items())


def test_export_reads_back_with_plain_orbax(tmp_path):
    config = _config()
    model, optimizer = _trained(config)
    with checkpoint.Checkpointer(tmp_path / "work") as checkpointer:
        _save(checkpointer, 4, model, optimizer, config)
    # the last async save of a run is sealed too (it was not before 2026-12-03)
    assert (tmp_path / "work" / "checkpoints" / "4" / checksums.CHECKSUMS).is_file()
    out = weights.export(tmp_path / "work", tmp_path / "export")
    assert json.loads((out / "config.json").read_text()) == json.loads(
        config.to_json_best_effort())
    plain = ocp.StandardCheckpointer().restore(out / "params")  # no target, no moejax
    assert set(plain["stacks"]["0"]["layers"]["0"]["ffn"]["block"]["router"]) == {"kernel",
                                                                                "bias"}
    fresh, _ = _build(config, seed=9)
    expected = _logits(model, TOKENS)
    assert not np.array_equal(_logits(fresh, TOKENS), expected)
    state = nnx.state(fresh)
    nnx.replace_by_pure_dict(state, plain)
    nnx.update(fresh, state)
    assert np.array_equal(_logits(fresh, TOKENS), expected)
    spec, params = weights.load_exported(out)
    assert spec == decoder_spec_from_config(config.model)
    loaded = Decoder(spec, rngs=nnx.Rngs(4))
    nnx.update(loaded, params)
    assert np.array_equal(_logits(loaded, TOKENS), expected)
    spec, params = weights.load_exported(out, scan_layers=False)  # the other layout
    assert not spec.scan_layers and "layers" in params and "stacks" not in params
    loaded = Decoder(spec, rngs=nnx.Rngs(4))
    nnx.update(loaded, params)
    np.testing.assert_allclose(_logits(loaded, TOKENS), expected, rtol=1e-5, atol=1e-6)


def test_export_without_router_biases_would_change_the_logits(tmp_path):
    """Why the export keeps RouterBias: the selection bias changes the chosen experts."""
    config = _config()
    model, _ = _trained(config)
    fresh, _ = _build(config, seed=9)
    nnx.update(fresh, nnx.state(model, nnx.Param))
    assert not np.array_equal(_logits(fresh, TOKENS), _logits(model, TOKENS))


def test_export_errors_and_cli(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        weights.export(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        weights.export(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="config.json"):
        weights.load_exported(tmp_path / "nope")
    config = _config()
    model, optimizer = _build(config)
    with checkpoint.Checkpointer(tmp_path / "work", async_save=False) as checkpointer:
        _save(checkpointer, 1, model, optimizer, config)
    argv = ["moejax-export", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "o")]
    assert export_cli.main(argv) == 0
    assert (tmp_path / "o" / "config.json").is_file()
    assert export_cli.main(argv) == 1  # not empty: the message names the flag
    assert capsys.readouterr().err == (f"moejax-export: --out {tmp_path / 'o'} is not empty; "
                                       "pass --overwrite to replace it\n")
    assert export_cli.main([*argv, "--overwrite", "--step", "1"]) == 0
    assert export_cli.main(["moejax-export", "--out", str(tmp_path / "o")]) == 2
    assert "workdir" in capsys.readouterr().err


def test_the_tokenizer_travels_with_the_export(tmp_path):
    """A run with a subword data.tokenizer keeps its files in <workdir>/tokenizer (as the
    trainer does); the export copies them into its root; `tokenizer_dir` finds them there,
    falls back to the path the config names, and is None for a byte-level run."""
    from moejax.data.tokenizer import load_tokenizer, save_tokenizer
    from tests.data.helpers import write_tokenizer

    tokenizer = load_tokenizer(write_tokenizer(tmp_path / "tok"))
    config = _config()
    config.data = ml_collections.ConfigDict({"tokenizer": str(tmp_path / "tok")})
    model, optimizer = _build(config)
    with checkpoint.Checkpointer(tmp_path / "work", async_save=False) as checkpointer:
        _save(checkpointer, 1, model, optimizer, config)
    work = tmp_path / "work"
    assert save_tokenizer(tokenizer, work / weights.TOKENIZER) == ["tokenizer.json",
                                                                   "tokenizer_config.json"]
    assert weights.tokenizer_dir(work) == work / weights.TOKENIZER
    assert weights.tokenizer_dir(work / "checkpoints" / "1") == work / weights.TOKENIZER
    assert weights.run_config(work) == json.loads(config.to_json_best_effort())
    out = weights.export(work, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "params", "tokenizer.json",
                                                     "tokenizer_config.json"]
    assert weights.tokenizer_dir(out) == out
    assert load_tokenizer(out).fingerprint == tokenizer.fingerprint
    shutil.rmtree(work / weights.TOKENIZER)  # a workdir from before the trainer kept them
    assert weights.tokenizer_dir(work) == tmp_path / "tok"
    shutil.rmtree(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="data.tokenizer="):
        weights.tokenizer_dir(work)
    assert weights.tokenizer_dir(out) == out  # the export has its own copy


def test_a_byte_level_run_has_no_tokenizer_dir(two_steps, tmp_path):
    _copy(two_steps, tmp_path / "work")  # its config has no data section
    assert weights.tokenizer_dir(tmp_path / "work") is None
    out = weights.export(tmp_path / "work", tmp_path / "export")
    assert weights.tokenizer_dir(out) is None
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "data": {"tokenizer": "bytes"}}))
    (out / "tokenizer.json").write_text("{}")  # stale: the config says bytes
    assert weights.tokenizer_dir(out) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        weights.tokenizer_dir(tmp_path)
