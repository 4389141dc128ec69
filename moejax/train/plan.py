"""A plan before a run: the train step lowered and compiled on the configured mesh, nothing run.

`compile_plan(config)` builds the model and optimizer from shapes only (`nnx.eval_shape`: a
model larger than one device's memory is never allocated), places their abstract state on the
mesh's shardings, and compiles one train step for the global batch. It reports per-device
memory from XLA's `memory_analysis()` (arguments, outputs, temporaries, generated code), the
compiled step's FLOPs per device (`cost_analysis()`), the model's FLOPs per step
(`model_flops_per_token`), the compile time, and the parameters' and the optimizer state's
bytes per device from their shapes and shardings (`state_bytes`: bfloat16 parameters at 2
bytes, float32 master weights and moments in the optimizer). Fake CPU devices make 8-device
plans on one machine: `JAX_NUM_CPU_DEVICES=8 moejax-train ... --dry-run`. XLA:CPU's memory
figures are for its own buffers, a guide to a GPU's, not a promise. The plan also gives one
device's memory (`device_memory`) and whether the step fits it.

`check_memory(specs)`, which the trainer calls before it reads any data, refuses a batch the
devices cannot hold, without compiling the step a second time on an ordinary run (see its
docstring).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.models.generate import device_memory_bytes
from moejax.models.param_count import count_parameters, model_flops_per_token
from moejax.parallel import batch_sharding
from moejax.train import step
from moejax.train.optim import MasterWeightsOptimizer, state_bytes_per_parameter
from moejax.train.specs import RunSpecs, uses_master_weights
from moejax.train.state import abstract_state, mesh_and_engine


def abstract_train_step(specs: RunSpecs):
    """The trainer's train step, jitted with its state donated, and its abstract arguments on
    the run's mesh, from shapes alone -> (jitted step, (state, tokens, segments), mesh,
    graphdef): `.lower(*args)` compiles the program a run executes."""
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

    return jax.jit(train_step, donate_argnums=0), (abstract, tokens, tokens), mesh, graphdef


def compile_plan(specs: RunSpecs) -> dict:
    """Compiles one train step of a config's specs on its mesh; returns the plan's numbers.

    Returns:
      {"devices", "mesh", "compile_s", "argument_bytes", "output_bytes", "temp_bytes",
      "code_bytes", "peak_bytes" (arguments + outputs + temporaries - aliased, per device),
      "xla_flops_per_device", "model_flops_per_step", "device_bytes" and "device_memory"
      (`device_memory`: one device's memory, None where unknown, and what it is), and
      `state_bytes`'s keys}.
    """
    model_spec, train = specs.model, specs.train
    train_step, args, mesh, graphdef = abstract_train_step(specs)
    abstract = args[0]
    started = time.perf_counter()
    compiled = train_step.lower(*args).compile()
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
        **dict(zip(("device_bytes", "device_memory"), device_memory(mesh), strict=True)),
        **state_bytes(graphdef, abstract),
    }


def _device_bytes(leaf) -> int:
    """Bytes of one device's shard of an abstract array that carries its sharding."""
    return math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize


def state_bytes(graphdef, abstract) -> dict:
    """The parameters' and the optimizer state's memory, from the abstract (model, optimizer)
    state of `abstract_state` (ShapeDtypeStructs carrying their shardings).

    Returns:
      {"parameters": the count, "bytes_per_parameter": their bytes / count,
      "param_bytes_per_device", "optimizer_bytes_per_device" (moments, master weights, step
      counters: one device's shards), "master_weights": whether the optimizer keeps float32
      master weights}.
    """
    model, optimizer = nnx.merge(graphdef, abstract)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    count = sum(math.prod(leaf.shape) for leaf in params)
    return {
        "parameters": count,
        "bytes_per_parameter": sum(math.prod(p.shape) * p.dtype.itemsize for p in params) / count,
        "param_bytes_per_device": sum(map(_device_bytes, params)),
        "optimizer_bytes_per_device": sum(map(_device_bytes,
                                              jax.tree.leaves(nnx.state(optimizer)))),
        "master_weights": isinstance(optimizer, MasterWeightsOptimizer),
    }


def _size(nbytes: float) -> str:
    return f"{nbytes / 2.0**30:.2f} GiB" if nbytes >= 2.0**30 else f"{nbytes / 2.0**20:.2f} MiB"


def _state_line(plan: dict) -> str:
    """The parameters' and optimizer state's bytes per device, as `format_plan` prints them."""
    params, optimizer = plan["param_bytes_per_device"], plan["optimizer_bytes_per_device"]
    kept = "float32 master weights and moments" if plan["master_weights"] else "moments"
    return (f"  state per device: {_size(params + optimizer)} (parameters {_size(params)} at "
            f"{plan['bytes_per_parameter']:g} bytes per parameter, optimizer {_size(optimizer)}:"
            f" {kept})")


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
        _state_line(plan),
        f"  FLOPs per step: {plan['model_flops_per_step']:.3e} (model), "
        f"{plan['xla_flops_per_device']:.3e} per device (XLA's count)",
        *_fit_line(plan),
    ])


def _fit_line(plan: dict) -> list[str]:
    """[the device's memory and whether the planned step fits it], or [] where unknown."""
    if plan.get("device_bytes") is None:
        return []
    fits = plan["peak_bytes"] <= plan["device_bytes"]
    return [f"  device memory: {plan['device_bytes'] / 2.0**30:.2f} GiB ({plan['device_memory']})"
            f": {'the step fits' if fits else 'the step does NOT fit; lower train.batch_size'}"]


def device_memory(mesh) -> tuple[int | None, str]:
    """(bytes one device of `mesh` may use or None where unknown, what they are): an
    accelerator's `bytes_limit`; for CPU devices the machine's physical RAM split evenly
    between the mesh's devices in this process (fake CPU devices share it)."""
    device = mesh.devices.flat[0]
    memory = device_memory_bytes(device)
    if memory is None or device.platform != "cpu":
        return memory, f"{device.device_kind} bytes_limit"
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    return memory // local, f"this machine's RAM shared by {local} CPU device(s)"


def memory_estimate(specs: RunSpecs) -> tuple[int, int]:
    """(floor, estimate): bytes the train step needs over all devices, from the specs alone.

    floor: what must be in memory at once: the parameters and the optimizer state
    (`optim.state_bytes_per_parameter`: AdamW's two moments, and float32 master weights),
    the int32 tokens and segments [B, S + 1], and for one micro-batch of T = B / A * S tokens
    the logits [T, V] and each layer's input [T, D] (kept for the backward pass even under
    full rematerialisation) in the compute dtype.
    estimate: the floor plus the gradients and a transformer layer's activations for the
    backward pass, (34 D + 5 N S) bytes per token at 16 bits (Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models", section 4.1; one layer
    under rematerialisation), and two more float32 copies of the logits (softmax, gradient).
    A rough figure, which only decides whether XLA's plan is worth compiling.
    """
    model, train = specs.model, specs.train
    params = count_parameters(model).total
    itemsize = jnp.dtype(model.dtype).itemsize
    micro_tokens = train.batch_size // train.grad_accumulation * train.seq_len
    state = sum(state_bytes_per_parameter(model.param_dtype, uses_master_weights(model, train)))
    floor = (state * params + 2 * 4 * train.batch_size * (train.seq_len + 1)
             + micro_tokens * itemsize * (model.vocab_size + model.d_model * model.num_layers))
    layer = (34 * model.d_model + 5 * model.num_heads * train.seq_len) * itemsize // 2
    kept = layer * (model.num_layers if model.remat == "none" else 1)
    return floor, floor + 4 * params + micro_tokens * (kept + 8 * model.vocab_size)


def check_memory(specs: RunSpecs) -> None:
    """Refuses a train step larger than the devices' memory, before any data is read.

    Cheap on an ordinary run: `memory_estimate` from the specs alone, compared with one
    device's memory (`device_memory`; its share of the total, the state and batch sharded
    evenly over the mesh). Only when the rough estimate exceeds it is the step compiled from
    shapes (`compile_plan`, nothing allocated; a second compile, as the trainer compiles its
    own) and XLA's peak compared; when even the floor exceeds it, nothing is compiled.

    Raises:
      ValueError: naming train.batch_size, train.seq_len, the bytes needed per device and the
        device's memory.
    """
    mesh, _ = mesh_and_engine(specs)
    memory, where = device_memory(mesh)
    if memory is None:
        return
    floor, estimate = (value / mesh.devices.size for value in memory_estimate(specs))
    if floor > memory:
        needed = f"at least {floor / 2.0**30:.2f} GiB per device (the state, the batch, the logits)"
    elif estimate <= memory:
        return
    else:
        peak = compile_plan(specs)["peak_bytes"]
        if peak <= memory:
            return
        needed = f"{peak / 2.0**30:.2f} GiB per device (XLA's plan of the train step)"
    train = specs.train
    raise ValueError(f"train.batch_size={train.batch_size} with train.seq_len={train.seq_len} "
                     f"needs {needed}, more than the {memory / 2.0**30:.2f} GiB of a device "
                     f"({where}); lower train.batch_size or train.seq_len, or raise "
                     "train.grad_accumulation")


