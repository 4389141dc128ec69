"""The mesh, the model and the optimizer of a config: built one way for the trainer, the
compile plan (`plan.py`, under `nnx.eval_shape`) and the step timing (`step_time.py`)."""

from __future__ import annotations

from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec
from moejax.options import spec_from_mapping
from moejax.parallel import MeshSpec, make_expert_parallel, make_mesh
from moejax.train.optim import make_optimizer
from moejax.train.specs import TrainSpec


def mesh_and_engine(config, model_spec: DecoderSpec, train: TrainSpec):
    """(mesh, expert-parallel engine or None) of `config.mesh`; checks that the batch splits
    over the batch axes first."""
    mesh_spec = spec_from_mapping(MeshSpec, config.get("mesh"), "mesh")
    mesh = make_mesh(mesh_spec)
    _check_batch_fits_mesh(train, mesh)
    engine = make_expert_parallel(mesh_spec.expert_parallel, mesh,
                                  pair_capacity_factor=mesh_spec.pair_capacity_factor,
                                  moe_engine=model_spec.moe.engine)
    return mesh, engine


def model_and_optimizer(model_spec: DecoderSpec, train: TrainSpec, seed: int, engine=None):
    """(Decoder, its nnx.Optimizer over the parameters)."""
    model = Decoder(model_spec, rngs=nnx.Rngs(seed), engine=engine)
    return model, nnx.Optimizer(model, make_optimizer(train), wrt=nnx.Param)


def _check_batch_fits_mesh(train: TrainSpec, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
    if train.batch_size % (shards * train.grad_accumulation):
        raise ValueError(f"train.batch_size={train.batch_size} is not divisible by "
                         f"train.grad_accumulation x mesh.data x mesh.fsdp x mesh.expert = "
                         f"{train.grad_accumulation} x {shards} (each micro-batch spans the "
                         "batch axes)")
