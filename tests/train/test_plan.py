"""The compile plan of --dry-run: the train step compiled on a mesh of 8 CPU devices from
shapes alone, with per-device memory that follows the sharding."""

from moejax.train.config_files import load_config
from moejax.train.plan import compile_plan, format_plan
from moejax.train.specs import specs_from_config
from tests.train.helpers import CONFIGS


def test_plan_compiles_on_the_mesh_and_sharding_divides_the_state():
    config = load_config(CONFIGS / "tiny.py")
    config.train.update(batch_size=8)
    plans = {}
    for name, mesh in (("one", {"devices": 1}), ("fsdp8", {"devices": 8, "fsdp": 8})):
        config.mesh.update(data=1, fsdp=1, expert=1, tensor=1)
        config.mesh.update(mesh)
        plans[name] = compile_plan(specs_from_config(config))
    one, fsdp = plans["one"], plans["fsdp8"]
    assert fsdp["mesh"] == {"data": 1, "fsdp": 8, "expert": 1, "tensor": 1}
    assert one["model_flops_per_step"] == fsdp["model_flops_per_step"] > 0
    # the parameters and AdamW moments are split 8 ways (the tiny model's small vectors
    # such as norms stay whole), so each device holds well under half of them
    assert fsdp["argument_bytes"] < 0.5 * one["argument_bytes"]
    assert one["peak_bytes"] >= one["argument_bytes"] > 0 and fsdp["compile_s"] > 0
    text = format_plan(fsdp)
    assert text.startswith("plan: 8 x cpu, mesh {'data': 1, 'fsdp': 8,") and "GiB" in text
