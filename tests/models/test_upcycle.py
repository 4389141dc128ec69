"""Upcycling (moejax/models/upcycle.py, moejax-upcycle): the upcycled MoE computes the dense
model's function at step 0, Drop-Upcycling redraws exactly the chosen units, the export
trains on, and the upcycle suite's variants resolve to the upcycled model."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.cli import upcycle as upcycle_cli
from moejax.experiments.suites import SUITES, RunOptions, variant_config
from moejax.models import weights
from moejax.models.decoder import Decoder, DecoderSpec, decoder_spec_from_config
from moejax.models.layout import unstack_params
from moejax.models.live_params import decoder_with_params
from moejax.models.upcycle import ffn_slices, upcycle, upcycled_dir, upcycled_spec
from moejax.train.config_files import load_config
from moejax.train.init_from import _check_same_function
from moejax.train.trainer import train_and_evaluate
from tests.train.helpers import CONFIGS, metrics_rows, tiny_config

DENSE = DecoderSpec(vocab_size=50, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1,
                    d_ff=32, first_dense_layers=2)
TOKENS = jax.random.randint(jax.random.key(1), (2, 12), 0, 50)


@pytest.fixture(scope="module")
def dense():
    """(a random dense Decoder, its logits on TOKENS)."""
    model = Decoder(DENSE, rngs=nnx.Rngs(0))
    return model, model(TOKENS)[0]


@pytest.mark.parametrize("options, granularity, scan_layers", [
    (dict(num_experts=4, top_k=2), 1, True),  # Sparse Upcycling: 4 copies, top-2
    (dict(num_experts=4, top_k=1, first_dense_layers=1, router=dict(kind="sigmoid")), 2,
     False),  # 8 halves, top-2, layer 0 kept dense
    (dict(block="deepseek", num_experts=4, top_k=2, num_shared_experts=1), 2, True),
    (dict(block="deepseek", num_experts=6, top_k=3, num_shared_experts=1,
          router=dict(kind="topk_softmax", num_groups=4, top_groups=2, use_bias=True)), 4, True),
])
def test_the_upcycled_model_computes_the_dense_function(dense, options, granularity,
                                                         scan_layers):
    """Logits equal the dense model's within float32 rounding (top-k and DeepSeek blocks,
    granularity 1, 2 and 4, three router kinds, group-limited routing, a layer kept dense);
    everything but the upcycled FFNs is copied exactly, and tokens pick different copies
    (the router is random)."""
    model, want = dense
    source = dataclasses.replace(DENSE, scan_layers=scan_layers)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if not scan_layers:
        params = unstack_params(DENSE, params)
    spec, upcycled = upcycle(params, source, options, granularity=granularity, seed=3)
    assert spec.scan_layers == scan_layers
    assert spec.num_routers == DENSE.num_layers - options.get("first_dense_layers", 0)
    assert spec.moe.router.scaling_factor == granularity - spec.moe.num_shared_experts * (
        spec.block == "deepseek")
    got, record = decoder_with_params(spec, upcycled)(TOKENS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert len({tuple(row) for row in np.asarray(record.expert_idx[0])}) > 1
    before, after = unstack_params(DENSE, params), unstack_params(spec, upcycled)
    for name in ("embed", "final_norm", "head"):
        jax.tree.map(np.testing.assert_array_equal, after[name], before[name])
    for i in range(DENSE.num_layers):
        for name in ("attn", "attn_norm"):
            jax.tree.map(np.testing.assert_array_equal, after["layers"][i][name],
                         before["layers"][i][name])
        kept = before["layers"][i]["ffn"] if i < spec.first_dense_layers else {
            "norm": before["layers"][i]["ffn"]["norm"]}
        jax.tree.map(np.testing.assert_array_equal,
                     {k: after["layers"][i]["ffn"][k] for k in kept}, kept)


def test_a_model_is_upcycled_like_its_params(dense):
    model, _ = dense
    spec, from_model = upcycle(model, None, dict(num_experts=2, top_k=1), seed=5)
    _, from_params = upcycle(nnx.to_pure_dict(nnx.state(model, nnx.Param)), DENSE,
                             dict(num_experts=2, top_k=1), seed=5)
    jax.tree.map(np.testing.assert_array_equal, from_model, from_params)
    assert spec.moe.d_hidden == DENSE.d_ff and spec.first_dense_layers == 0


def test_drop_upcycling_redraws_exactly_the_chosen_units(dense):
    """p = 0.5 of each expert's F/m = 16 units: exactly 8 redrawn per expert (their gate and
    up columns and down row), different units per expert, the other units the dense weights;
    the function then differs. p = 0: every expert is its slice exactly."""
    model, want = dense
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    options = dict(num_experts=4, top_k=1)
    spec, dropped = upcycle(params, DENSE, options, granularity=2, drop_fraction=0.5, seed=7)
    _, kept = upcycle(params, DENSE, options, granularity=2, seed=7)
    before = unstack_params(DENSE, params)["layers"]
    for i in range(DENSE.num_layers):
        slices = ffn_slices(before[i]["ffn"]["ffn"], 2)  # [2, D, 16], [2, 16, D]
        copy = {k: jnp.tile(v, (4, 1, 1)) for k, v in slices.items()}  # expert e: slice e % 2
        jax.tree.map(np.testing.assert_array_equal,
                     unstack_params(spec, kept)["layers"][i]["ffn"]["block"]["experts"], copy)
        experts = unstack_params(spec, dropped)["layers"][i]["ffn"]["block"]["experts"]
        changed = {name: np.asarray(experts[name] != copy[name])
                   for name in ("w_gate", "w_up", "w_down")}
        units = changed["w_gate"].any(axis=1)  # [E, 16]
        assert (units.sum(axis=1) == 8).all()
        for name, axis in (("w_gate", 1), ("w_up", 1), ("w_down", 2)):
            assert (changed[name].all(axis=axis) == units).all(), name  # whole units, only them
        assert len({tuple(row) for row in units}) == len(units)  # each expert its own units
        gate = np.asarray(experts["w_gate"]).transpose(0, 2, 1)[units]  # [redrawn, D]
        dense_gate = np.asarray(before[i]["ffn"]["ffn"]["w_gate"])
        assert abs(gate.std() / dense_gate.std() - 1) < 0.15  # the dense matrix's statistics
    got, _ = decoder_with_params(spec, dropped)(TOKENS)
    assert np.abs(np.asarray(got) - np.asarray(want)).max() > 1e-2


@pytest.mark.parametrize("source, options, granularity, kwargs, message", [
    (dataclasses.replace(DENSE, first_dense_layers=1), {}, 1, {},
     r"the source is not dense: model\.first_dense_layers=1; allowed: model\.num_layers=2"),
    (DENSE, {}, 3, {}, r"granularity=3 does not divide the dense model\.d_ff=32"),
    (DENSE, {"d_hidden": 8}, 1, {}, r"model\.moe\.d_hidden is set by upcycling"),
    (DENSE, {"router": {"scaling_factor": 2.0}}, 1, {},
     r"model\.moe\.router\.scaling_factor is set by upcycling"),
    (DENSE, {"no_such": 1}, 1, {}, r"unknown option\(s\) model\.moe\.no_such"),
    (DENSE, {"block": "cartesian"}, 1, {},
     r"model\.block='cartesian'; allowed: topk, deepseek"),
    (DENSE, {"router": {"normalize_gates": False}}, 1, {},
     r"model\.moe\.router\.normalize_gates=False; allowed: True"),
    (DENSE, {"block": "deepseek", "num_shared_experts": 2}, 2, {},
     r"model\.moe\.num_shared_experts=2; allowed: an integer in \[1, granularity - 1 = 1\]"),
    (DENSE, {"block": "deepseek", "num_experts": 4, "top_k": 3, "num_shared_experts": 1}, 4,
     {}, r"model\.moe\.num_experts=4: num_experts \* granularity = 16 is not a multiple of "
         r"the 3 routed slices"),
    (DENSE, {}, 1, {"drop_fraction": 1.5}, r"drop_fraction=1\.5; allowed: a number in \[0, 1\]"),
    (None, {}, 1, {}, r"dense_spec=None; allowed: a DecoderSpec"),
])
def test_bad_options_are_one_line_naming_them(source, options, granularity, kwargs, message):
    with pytest.raises(ValueError, match=message):
        upcycle({}, source, options, granularity=granularity, **kwargs)


def test_cli_upcycles_a_dense_run_that_training_continues(tmp_path, capsys):
    """A dense run (the suite's pretraining) -> moejax-upcycle -> an export with the same
    function that `configs/finetune_hf.py:EXPORT` trains one step with lb + sp + cp."""
    config = tiny_config(steps=1)
    config.model.first_dense_layers = config.model.num_layers  # every layer dense
    config.loss.update(sp=0.0, cp=0.0)  # no routers (the suite's pretrain/dense: lb alone)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32
        train_and_evaluate(config, tmp_path / "dense")
    out = tmp_path / "moe"
    argv = ["moejax-upcycle", "--from", str(tmp_path / "dense"), "--out", str(out),
            "--num_experts", "4", "--top_k", "1", "--granularity", "2"]
    assert upcycle_cli.main(argv[:-1] + ["3"]) == 1  # 3 does not divide d_ff = 64
    assert "moejax-upcycle: granularity=3 does not divide" in capsys.readouterr().err
    assert not out.exists()
    assert upcycle_cli.main(argv) == 0, capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())
    assert saved["upcycle"]["granularity"] == 2 and saved["model"]["first_dense_layers"] == 0
    assert saved["data"] == json.loads(json.dumps(config.data.to_dict()))  # the run's own
    tokens = TOKENS % config.model.vocab_size
    want = weights.load_decoder(tmp_path / "dense")(tokens)[0]
    np.testing.assert_allclose(weights.load_decoder(out)(tokens)[0], want, rtol=1e-5,
                               atol=1e-5)

    tuned = load_config(CONFIGS / "finetune_hf.py", str(out))
    tuned.mesh.devices = 1
    tuned.train.update(steps=1, batch_size=2, seq_len=16, log_every=1, eval_every=100,
                       eval_batches=1, checkpoint_every=1, async_checkpoint=False,
                       progress=False, report=False, eval_top1_disabled=False)
    assert tuned.loss.sp > 0 and tuned.loss.cp > 0
    with jax.numpy_dtype_promotion("standard"):
        train_and_evaluate(tuned, tmp_path / "tuned")
    assert f"initialised from {out}" in capsys.readouterr().out
    row = [row for row in metrics_rows(tmp_path / "tuned") if "aux/sp" in row][-1]
    assert all(np.isfinite(row[key]) for key in ("loss", "aux/lb", "aux/sp", "aux/cp"))


@pytest.mark.parametrize("quick", [True, False])
def test_the_upcycle_suites_variants_start_from_their_upcycle(quick):
    """Each continued variant's model is exactly what its `upcycle` options make of the
    dense pretraining variant's (init_from would refuse anything else), at both scales; the
    two upcycles live in different directories."""
    options = RunOptions(quick=quick)
    variants = SUITES["upcycle"]
    for variant in variants:
        source = variant_config(variant.init_from, seed=0, options=options)
        dense_spec = decoder_spec_from_config(source.model)
        assert dense_spec.first_dense_layers == dense_spec.num_layers
        assert variant.init_from.steps_factor > 1 and variant.upcycle is not None
        up = variant.upcycle
        want = upcycled_spec(dense_spec, up["moe_spec_options"], up["granularity"])
        got = decoder_spec_from_config(variant_config(variant, seed=1, options=options).model)
        _check_same_function(want, got, variant.name)
    dirs = {upcycled_dir("/w/export", v.upcycle) for v in variants}
    assert len(dirs) == 2 and all(d.parent.as_posix() == "/w" for d in dirs)
    if quick:  # the report's "what differs" names the upcycle's options too
        from moejax.experiments.suites import config_differences

        assert config_differences("upcycle", options)["drop-upcycle/lb"] == {
            "upcycle.drop_fraction": 0.5}
