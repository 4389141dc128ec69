"""Shardings of parameters, optimizer state and batches from the logical axis rules.

Each parameter gets logical axes from its name (and its parent's, for the two `kernel`s), the
rules map those to mesh axes, and every sharded dimension must divide evenly: a mismatch is a
ValueError naming the parameter, the dimension and the mesh axis (e.g. an expert axis that
does not divide E). Optimizer moments follow their parameters because their paths end with
the parameter's path; scalars and unknown leaves are replicated. Stacked layers (the scanned
layout) add a leading "layers" axis that stays unsharded.
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from moejax.parallel import axes

_BY_NAME = {
    ("embedding", 2): (axes.VOCAB, axes.EMBED),
    ("w_q", 3): (axes.EMBED, axes.HEADS, axes.HEAD_DIM),
    ("w_k", 3): (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM),
    ("w_v", 3): (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM),
    ("w_o", 3): (axes.HEADS, axes.HEAD_DIM, axes.EMBED),
    ("w_gate", 3): (axes.EXPERT, axes.EMBED, axes.EXPERT_MLP),
    ("w_up", 3): (axes.EXPERT, axes.EMBED, axes.EXPERT_MLP),
    ("w_down", 3): (axes.EXPERT, axes.EXPERT_MLP, axes.EMBED),
    ("w_gate", 2): (axes.EMBED, axes.MLP),
    ("w_up", 2): (axes.EMBED, axes.MLP),
    ("w_down", 2): (axes.MLP, axes.EMBED),
    ("mix_kernel", 2): (axes.EMBED, None),
}
_KERNELS = {"router": (axes.EMBED, axes.ROUTER_EXPERTS), "head": (axes.EMBED, axes.VOCAB)}


def _key_name(key) -> str:
    for attribute in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _path_string(path) -> str:
    return "/".join(_key_name(k) for k in path)


def logical_axes(path: tuple, ndim: int) -> tuple:
    """Logical axes of the array at `path` (a state path of names and indices).

    Under a scanned stack (a path through `stacks`) the leading axis is the depth ("layers":
    never sharded) and the rest is named as in one layer.
    """
    names = [n for n in map(_key_name, path) if n != "value"]
    if "stacks" in names and ndim > 0:
        return (axes.LAYERS,) + _layer_axes(names, ndim - 1)
    return _layer_axes(names, ndim)


def _layer_axes(names: list, ndim: int) -> tuple:
    if names and names[-1] == "kernel" and ndim == 2 and len(names) > 1:
        return _KERNELS.get(names[-2], (None, None))
    if names:
        return _BY_NAME.get((names[-1], ndim), (None,) * ndim)
    return (None,) * ndim


def partition_spec(logical: tuple, shape: tuple, mesh, rules, where: str) -> PartitionSpec:
    """Maps logical axes to mesh axes, checking that each sharded dimension divides evenly."""
    mesh_axes = []
    for dim, name in enumerate(logical):
        target = rules.get(name) if name is not None else None
        if target is not None:
            size = math.prod(mesh.shape[a] for a in (target if isinstance(target, tuple)
                                                     else (target,)))
            if shape[dim] % size:
                axes_names = target if isinstance(target, tuple) else (target,)
                meshes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes_names)
                option = axes.CONFIG_KEYS.get(name, name)
                raise ValueError(f"{option} = {shape[dim]} is not divisible by {meshes}: pick "
                                 f"sizes that divide (parameter {where}: dimension {dim} "
                                 f"({name}, size {shape[dim]}) is not divisible by mesh axis "
                                 f"{target} of size {size})")
        mesh_axes.append(target)
    return PartitionSpec(*mesh_axes)


def state_shardings(state, mesh, rules=axes.DEFAULT_RULES):
    """NamedShardings for every leaf of an nnx State (model or optimizer)."""

    def leaf_sharding(path, leaf):
        shape = getattr(leaf, "shape", ())
        where = _path_string(path)
        spec = partition_spec(logical_axes(path, len(shape)), shape, mesh, rules, where)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(leaf_sharding, state)


def batch_sharding(mesh, rules=axes.DEFAULT_RULES) -> NamedSharding:
    """Sharding of a [B, ...] batch: B over the batch rule's mesh axes."""
    return NamedSharding(mesh, PartitionSpec(rules[axes.BATCH]))


def shard_model_and_optimizer(model, optimizer, mesh, rules=axes.DEFAULT_RULES) -> None:
    """Moves the model's and optimizer's state onto their shardings, in place."""
    for node in (model, optimizer):
        state = nnx.state(node)
        nnx.update(node, jax.device_put(state, state_shardings(state, mesh, rules)))
