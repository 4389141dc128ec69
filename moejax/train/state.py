"""The mesh, the model and the optimizer of a config: built one way for the trainer, the
compile plan (`plan.py`, under `nnx.eval_shape`) and the step timing (`step_time.py`)."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec
from moejax.parallel import make_expert_parallel, make_mesh, state_shardings
from moejax.train.optim import MasterWeightsOptimizer, make_optimizer
from moejax.train.specs import RunSpecs, TrainSpec, uses_master_weights


def mesh_and_engine(specs: RunSpecs):
    """(mesh, expert-parallel engine or None) of `specs.mesh`; checks that the batch splits
    over the batch axes first."""
    mesh = make_mesh(specs.mesh)
    _check_batch_fits_mesh(specs.train, mesh)
    engine = make_expert_parallel(specs.mesh.expert_parallel, mesh,
                                  pair_capacity_factor=specs.mesh.pair_capacity_factor,
                                  moe_engine=specs.model.moe.engine)
    return mesh, engine


def model_and_optimizer(model_spec: DecoderSpec, train: TrainSpec, seed, engine=None):
    """(Decoder, its nnx.Optimizer over the parameters), built eagerly on the default device;
    `seed`: an int, or the key `jax.random.key(seed)` (the same parameters).

    With master weights (`specs.uses_master_weights`) the optimizer is a
    `MasterWeightsOptimizer` whose master weights are the float32 init that the model's
    bfloat16 parameters are rounded from (the same init as a float32 run of the seed)."""
    model = Decoder(model_spec, rngs=nnx.Rngs(seed), engine=engine)
    if not uses_master_weights(model_spec, train):
        return model, nnx.Optimizer(model, make_optimizer(train), wrt=nnx.Param)
    full = Decoder(dataclasses.replace(model_spec, param_dtype="float32"), rngs=nnx.Rngs(seed),
                   engine=engine)
    return model, MasterWeightsOptimizer(model, make_optimizer(train), wrt=nnx.Param,
                                         master=nnx.state(full, nnx.Param))


def abstract_state(model_spec: DecoderSpec, train: TrainSpec, seed: int, mesh, engine=None):
    """(graphdef, state) of `model_and_optimizer` from shapes only (`nnx.eval_shape`: nothing
    allocated); the state's leaves are ShapeDtypeStructs carrying their NamedShardings."""
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: model_and_optimizer(model_spec, train, seed, engine)))
    return graphdef, jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        state, state_shardings(state, mesh))


def sharded_model_and_optimizer(model_spec: DecoderSpec, train: TrainSpec, seed: int, mesh,
                                engine=None):
    """`model_and_optimizer` initialised straight into its shardings: one jit whose
    out_shardings are `abstract_state`'s computes the initial values, each device only its
    shards (a model larger than one device initialises); the values equal the eager build's."""
    graphdef, abstract = abstract_state(model_spec, train, seed, mesh, engine)
    shardings = jax.tree.map(lambda leaf: leaf.sharding, abstract)
    # The seed is an argument, not a constant: every seed of a config runs one program (one
    # compile, where a compilation cache is kept).
    state = jax.jit(lambda key: nnx.split(model_and_optimizer(model_spec, train, key, engine))[1],
                    out_shardings=shardings)(jax.random.key(seed))
    return nnx.merge(graphdef, state)


def _check_batch_fits_mesh(train: TrainSpec, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
    if train.batch_size % (shards * train.grad_accumulation):
        raise ValueError(f"train.batch_size={train.batch_size} is not divisible by "
                         f"train.grad_accumulation x mesh.data x mesh.fsdp x mesh.expert = "
                         f"{train.grad_accumulation} x {shards} (each micro-batch spans the "
                         "batch axes)")
