"""A plan before a run: the train step lowered and compiled on the configured mesh, nothing run.

`compile_plan(config)` builds the model and optimizer from shapes only (`nnx.eval_shape`: a
model larger than one device's memory is never allocated), places their abstract state on the
mesh's shardings, and compiles one train step for the global batch. It reports per-device
memory from XLA's `memory_analysis()` (arguments, outputs, temporaries, generated code), the
compiled step's FLOPs per device (`cost_analysis()`), the model's FLOPs per step
(`model_flops_per_token`) and the compile time. Fake CPU devices make 8-device plans on one
machine: `JAX_NUM_CPU_DEVICES=8 moejax-train ... --dry-run`. XLA:CPU's memory figures are for
its own buffers, a guide to a GPU's, not a promise.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.models.param_count import model_flops_per_token
from moejax.parallel import batch_sharding
from moejax.train import step
from moejax.train.specs import RunSpecs
from moejax.train.state import abstract_state, mesh_and_engine


def compile_plan(specs: RunSpecs) -> dict:
    """Compiles one train step of a config's specs on its mesh; returns the plan's numbers.

    Returns:
      {"devices", "mesh", "compile_s", "argument_bytes", "output_bytes", "temp_bytes",
      "code_bytes", "peak_bytes" (arguments + outputs + temporaries - aliased, per device),
      "xla_flops_per_device", "model_flops_per_step"}.
    """
    model_spec, loss_spec, train = specs.model, specs.loss, specs.train
    mesh, engine = mesh_and_engine(specs)
    graphdef, abstract = abstract_state(model_spec, train, specs.seed, mesh, engine)
    tokens = jax.ShapeDtypeStruct((train.batch_size, train.seq_len + 1), jnp.int32,
                                  sharding=batch_sharding(mesh))

    def train_step(state, tokens, segments):
        model, optimizer = nnx.merge(graphdef, state)
        metrics = step.train_step(model, optimizer, tokens, loss_spec, train.grad_accumulation,
                                  False, segments=segments)
        return nnx.state((model, optimizer)), metrics

    started = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=0).lower(abstract, tokens, tokens).compile()
    seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    sizes = {name: int(getattr(memory, f"{name}_size_in_bytes", 0) or 0)
             for name in ("argument", "output", "temp", "generated_code", "alias")}
    return {
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "mesh": dict(zip(mesh.axis_names, mesh.devices.shape)),
        "compile_s": seconds,
        "argument_bytes": sizes["argument"],
        "output_bytes": sizes["output"],
        "temp_bytes": sizes["temp"],
        "code_bytes": sizes["generated_code"],
        "peak_bytes": sizes["argument"] + sizes["output"] + sizes["temp"] - sizes["alias"],
        "xla_flops_per_device": float((cost or {}).get("flops", float("nan"))),
        "model_flops_per_step": model_flops_per_token(model_spec, train.seq_len)
        * train.batch_size * train.seq_len,
    }


def format_plan(plan: dict) -> str:
    """The plan as the lines `moejax-train --dry-run` prints."""
    gib = 2.0**30
    return "\n".join([
        f"plan: {plan['devices']}, mesh {plan['mesh']}",
        f"  compile: {plan['compile_s']:.1f} s",
        f"  memory per device: {plan['peak_bytes'] / gib:.2f} GiB (arguments "
        f"{plan['argument_bytes'] / gib:.2f}, outputs {plan['output_bytes'] / gib:.2f}, "
        f"temporaries {plan['temp_bytes'] / gib:.2f}, code {plan['code_bytes'] / gib:.3f}; "
        "donated arguments counted once)",
        f"  FLOPs per step: {plan['model_flops_per_step']:.3e} (model), "
        f"{plan['xla_flops_per_device']:.3e} per device (XLA's count)",
    ])


