"""bfloat16 parameters with float32 master weights (`train.master_weights`, optim.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from moejax.cli import train as train_cli
from moejax.models import weights
from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.regularizers import LossSpec
from moejax.train import checkpoint, plan, step, trainer
from moejax.train.init_from import init_from
from moejax.train.optim import MasterWeightsOptimizer, state_bytes_per_parameter
from moejax.train.specs import TrainSpec, specs_from_config, uses_master_weights
from moejax.train.state import abstract_state, mesh_and_engine, model_and_optimizer
from tests.train.helpers import tiny_config

# one dense layer (no routers): the step compiles in about a second
MODEL = {"vocab_size": 19, "d_model": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
         "d_ff": 24, "first_dense_layers": 1, "param_dtype": "bfloat16"}
TRAIN = TrainSpec(learning_rate=1e-2, warmup_steps=0, steps=10)
F32, BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)
TOKENS = jnp.asarray((np.arange(4 * 9).reshape(4, 9) * 7) % 19, jnp.int32)


def _build(param_dtype="bfloat16", train=TRAIN, seed=0):
    spec = decoder_spec_from_config({**MODEL, "param_dtype": param_dtype})
    return model_and_optimizer(spec, train, seed)


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _master(optimizer):
    return nnx.to_pure_dict(nnx.state(optimizer))["master"]


def _assert_params_are_master_rounded(model, optimizer):
    params, master = _params(model), _master(optimizer)
    assert {p.dtype for p in jax.tree.leaves(params)} == {BF16}
    assert {m.dtype for m in jax.tree.leaves(master)} == {F32}
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(master), strict=True):
        np.testing.assert_array_equal(p, m.astype(jnp.bfloat16))


def test_none_means_on_exactly_for_bfloat16_and_true_with_float32_is_an_error():
    spec = decoder_spec_from_config(MODEL)
    full = dataclasses.replace(spec, param_dtype="float32")
    assert uses_master_weights(spec, TRAIN) and not uses_master_weights(full, TRAIN)
    assert not uses_master_weights(spec, dataclasses.replace(TRAIN, master_weights=False))
    config = tiny_config(master_weights=True)
    with pytest.raises(ValueError, match=r"^train.master_weights=True keeps float32 copies of "
                       r"bfloat16 parameters; model.param_dtype='float32' has nothing to "
                       r"round; allowed: None or False"):
        specs_from_config(config)
    assert state_bytes_per_parameter("bfloat16", True) == (2, 12)
    assert state_bytes_per_parameter("bfloat16", False) == (2, 4)
    assert state_bytes_per_parameter("float32", False) == (4, 8)


def test_master_weights_are_the_float32_init_and_the_params_stay_them_rounded():
    model, optimizer = _build()
    assert isinstance(optimizer, MasterWeightsOptimizer)
    # the same seed's float32 init: the master weights
    full = Decoder(dataclasses.replace(model.spec, param_dtype="float32"), rngs=nnx.Rngs(0))
    for m, f in zip(jax.tree.leaves(_master(optimizer)), jax.tree.leaves(_params(full)),
                    strict=True):
        np.testing.assert_array_equal(m, f)
    moments = nnx.to_pure_dict(nnx.state(optimizer))["opt_state"]
    assert {leaf.dtype for leaf in jax.tree.leaves(moments) if leaf.ndim} == {F32}
    _assert_params_are_master_rounded(model, optimizer)
    before = _master(optimizer)
    for _ in range(2):
        step.train_step(model, optimizer, TOKENS, LossSpec())
    _assert_params_are_master_rounded(model, optimizer)
    assert not np.array_equal(before["head"]["kernel"], _master(optimizer)["head"]["kernel"])


class _One(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((4,), jnp.bfloat16))


@nnx.jit
def _ascend(optimizer, module):
    """One step on the loss -sum(w): every gradient is -1, so SGD adds its learning rate."""
    optimizer.update(module, nnx.grad(lambda m: -m.w[...].astype(jnp.float32).sum())(module))


def test_updates_below_bfloat16_resolution_add_up_in_the_master_weights():
    # bfloat16 steps by 2**-7 at 1.0: an update of 2**-9 is a quarter step, lost when the
    # bfloat16 parameter itself is updated; three of them are 0.75 of a step in the master
    # weight (exact in float32), which rounds to the next bfloat16 value 1 + 2**-7
    lr = 2.0**-9
    master_module, plain_module = _One(), _One()
    master = MasterWeightsOptimizer(master_module, optax.sgd(lr), wrt=nnx.Param)
    plain = nnx.Optimizer(plain_module, optax.sgd(lr), wrt=nnx.Param)
    for _ in range(3):
        _ascend(master, master_module)
        _ascend(plain, plain_module)
    np.testing.assert_array_equal(master.master["w"][...], np.full(4, 1 + 3 * lr, np.float32))
    np.testing.assert_array_equal(master_module.w[...].astype(jnp.float32),
                                  np.full(4, 1 + 2.0**-7, np.float32))
    np.testing.assert_array_equal(plain_module.w[...].astype(jnp.float32), np.ones(4))


def test_checkpoints_restore_the_master_weights_bitwise_and_the_run_goes_on_the_same(tmp_path):
    model, optimizer = _build()
    for _ in range(2):
        step.train_step(model, optimizer, TOKENS, LossSpec())
    config = ml_collections.ConfigDict({"model": MODEL, "train": {"steps": 3}})
    with checkpoint.Checkpointer(tmp_path, async_save=False) as saver:
        saver.save(2, model=model, optimizer=optimizer, config=config)
    resumed_model, resumed = _build(seed=1)  # other values, restored over
    with checkpoint.Checkpointer(tmp_path, async_save=False) as reader:
        assert reader.restore_latest(resumed_model, resumed).step == 2
    for a, b in zip(jax.tree.leaves(nnx.state((model, optimizer))),
                    jax.tree.leaves(nnx.state((resumed_model, resumed))), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    step.train_step(model, optimizer, TOKENS, LossSpec())
    step.train_step(resumed_model, resumed, TOKENS, LossSpec())
    for a, b in zip(jax.tree.leaves(_master(optimizer)), jax.tree.leaves(_master(resumed)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    loaded = weights.load_decoder(tmp_path)  # sampling a bf16 run: bf16 on the device
    assert {p.dtype for p in jax.tree.leaves(_params(loaded))} == {BF16}


def test_init_from_restarts_the_master_weights_from_the_loaded_parameters(tmp_path):
    source, _ = _build("float32", seed=3)
    spec = dataclasses.replace(source.spec, param_dtype="float32")
    weights.write_export(tmp_path / "export", {"model": dataclasses.asdict(spec)},
                         _params(source), overwrite=False)
    model, optimizer = _build()
    init_from(model, tmp_path / "export", optimizer)
    _assert_params_are_master_rounded(model, optimizer)
    np.testing.assert_array_equal(_params(model)["head"]["kernel"],
                                  _params(source)["head"]["kernel"].astype(jnp.bfloat16))


def test_a_short_bfloat16_run_follows_the_float32_run():
    # benchmarks/bf16_params.py measures 20 steps of the default config (largest difference
    # 0.0035 with master weights, 0.011 without); here 6 steps differ by at most 0.0018 and
    # 0.010: loose bounds
    pure = dataclasses.replace(TRAIN, master_weights=False)
    losses = {}
    for name, dtype, train in (("float32", "float32", TRAIN), ("master", "bfloat16", TRAIN),
                               ("pure", "bfloat16", pure)):
        model, optimizer = _build(dtype, train)
        losses[name] = [float(step.train_step(model, optimizer, TOKENS, LossSpec())["loss"])
                        for _ in range(6)]
    assert losses["float32"][-1] < losses["float32"][0] - 1.0  # it trains
    np.testing.assert_allclose(losses["master"], losses["float32"], atol=0.05)
    np.testing.assert_allclose(losses["pure"], losses["float32"], atol=0.1)
    moments = nnx.to_pure_dict(nnx.state(optimizer))["opt_state"]  # pure bfloat16: no master
    assert {leaf.dtype for leaf in jax.tree.leaves(moments) if leaf.ndim} == {BF16}
    assert "master" not in nnx.to_pure_dict(nnx.state(optimizer))


@pytest.mark.parametrize("param_dtype, master, param_bytes, state_bytes", [
    ("float32", False, 4, 8), ("bfloat16", True, 2, 12), ("bfloat16", False, 2, 4)])
def test_the_dry_run_shows_bytes_per_parameter_and_the_state_per_device(
        param_dtype, master, param_bytes, state_bytes):
    config = tiny_config(master_weights=None if master else False)
    config.model.param_dtype = param_dtype
    specs = specs_from_config(config)
    mesh, engine = mesh_and_engine(specs)
    state = plan.state_bytes(*abstract_state(specs.model, specs.train, 0, mesh, engine))
    count = state["parameters"]
    assert state["bytes_per_parameter"] == param_bytes and state["master_weights"] == master
    assert state["param_bytes_per_device"] == param_bytes * count
    # and three 4-byte step counters: the optimizer's, AdamW's and the schedule's
    assert state["optimizer_bytes_per_device"] == state_bytes * count + 12
    line = plan._state_line(state)  # noqa: SLF001 - the line format_plan prints
    assert f"at {param_bytes} bytes per parameter" in line
    assert ("float32 master weights" in line) == master
    text = train_cli.dry_run(config, specs, compile_step=False)
    assert (f"bytes per parameter: {param_bytes} ({param_dtype}) + {state_bytes} of optimizer "
            f"state") in text


def test_a_resume_with_another_master_weights_is_refused_before_the_restore(tmp_path):
    # the optimizer state's structure differs: the restore would fail on every step
    saved = checkpoint.config_json(tiny_config())
    with pytest.raises(ValueError, match=r"train.master_weights=None there, False here.*"
                                         r"train.master_weights, or use another --workdir"):
        trainer._check_resume_config(saved, tiny_config(master_weights=False), tmp_path)  # noqa: SLF001
