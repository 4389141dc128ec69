"""Shardings of parameters, optimizer state and batches from the logical axis rules.

Each parameter gets logical axes from the end of its path and its rank (`_PARAMETER_AXES`:
"parent/name" first, e.g. router/kernel, else "name"), the rules map those to mesh axes, and
every sharded dimension must divide evenly: a mismatch is a ValueError naming the parameter,
the dimension and the mesh axis (e.g. an expert axis that does not divide E). A parameter the
table does not name is a ValueError naming it, never silently replicated. Optimizer moments
follow their parameters because their paths end with the parameter's path; rank-0 leaves (step
counters, RNG keys and counts) have nothing to shard and are replicated. Stacked layers (the
scanned layout) add a leading "layers" axis that stays unsharded.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from moejax.parallel import axes

# (end of the parameter's path, rank in one layer) -> its logical axes
_PARAMETER_AXES = MappingProxyType({
    ("embedding", 2): (axes.VOCAB, axes.EMBED),  # Embed [V, D]
    ("head/kernel", 2): (axes.EMBED, axes.VOCAB),  # LMHead [D, V]
    ("w_q", 3): (axes.EMBED, axes.HEADS, axes.HEAD_DIM),  # attention [D, N, H]
    ("w_k", 3): (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM),  # [D, K, H]
    ("w_v", 3): (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM),
    ("w_o", 3): (axes.HEADS, axes.HEAD_DIM, axes.EMBED),  # [N, H, D]
    ("b_q", 2): (axes.HEADS, axes.HEAD_DIM),  # q/k/v biases [N, H], [K, H] (Qwen2-MoE)
    ("b_k", 2): (axes.KV_HEADS, axes.HEAD_DIM),
    ("b_v", 2): (axes.KV_HEADS, axes.HEAD_DIM),
    # Multi-head Latent Attention: the low ranks stay whole, the heads are split like w_q
    ("w_q_a", 2): (axes.EMBED, None),  # [D, A]
    ("w_q_b", 3): (None, axes.HEADS, axes.HEAD_DIM),  # [A, N, Q]
    ("w_kv_a", 2): (axes.EMBED, None),  # [D, C + R]
    ("w_kv_b", 3): (None, axes.HEADS, axes.HEAD_DIM),  # [C, N, nope + V]
    ("weight", 1): (None,),  # RMSNorm: [D], or [H] for the q/k norms
    ("w_gate", 3): (axes.EXPERT, axes.EMBED, axes.EXPERT_MLP),  # routed experts [E, D, F]
    ("w_up", 3): (axes.EXPERT, axes.EMBED, axes.EXPERT_MLP),
    ("w_down", 3): (axes.EXPERT, axes.EXPERT_MLP, axes.EMBED),  # [E, F, D]
    ("w_gate", 2): (axes.EMBED, axes.MLP),  # dense FFN and shared experts [D, F]
    ("w_up", 2): (axes.EMBED, axes.MLP),
    ("w_down", 2): (axes.MLP, axes.EMBED),  # [F, D]
    ("router/kernel", 2): (axes.EMBED, axes.ROUTER_EXPERTS),  # [D, E]
    ("router/bias", 1): (axes.ROUTER_EXPERTS,),  # RouterBias [E]
    ("mix_kernel", 2): (axes.EMBED, None),  # shared-expert gate [D, 2] or [D, 1]
    ("mix_bias", 1): (None,),  # [2]
})


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
    never sharded) and the rest is named as in one layer. Raises ValueError naming the path
    when `_PARAMETER_AXES` does not know the parameter (a rank-0 leaf needs no rule).
    """
    names = [n for n in map(_key_name, path) if n != "value"]
    if "stacks" in names and ndim > 0:
        return (axes.LAYERS,) + _layer_axes(names, ndim - 1)
    return _layer_axes(names, ndim)


def _layer_axes(names: list, ndim: int) -> tuple:
    """Logical axes of a rank-`ndim` parameter of one layer whose path is `names`."""
    if ndim == 0:
        return ()
    for key in ("/".join(names[-2:]), names[-1]) if names else ():
        if (key, ndim) in _PARAMETER_AXES:
            return _PARAMETER_AXES[key, ndim]
    known = ", ".join(f"{name} (rank {rank})" for name, rank in _PARAMETER_AXES)
    raise ValueError(f"parameter {'/'.join(names)} (rank {ndim} in one layer) has no "
                     f"sharding rule; allowed: {known} (moejax/parallel/sharding.py)")


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
    """NamedShardings for every leaf of an nnx State (model or optimizer); a parameter the
    rules do not know, or a dimension its mesh axes do not divide, raises ValueError."""

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
