"""The decoder's two parameter layouts and its abstract model: pure functions, no disk.

Parameter dicts (`nnx.to_pure_dict` structure) come in two layouts, the decoder's
`model.scan_layers`: unrolled (`{"layers": {i: layer}}`) and scanned (`{"stacks": {s:
{"layers": {j: stacked}}}}`, `decoder.layer_stacks`). `stack_params` / `unstack_params` move
a dict between them. `abstract_decoder` / `abstract_params` give a spec's model from shapes
alone (a restore target), traced once per spec object. `weights.py`, the one home of weights
on disk, and the HF conversion build on these.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec, layer_stacks

EXPORTED = nnx.Not(nnx.RngState)  # what an export holds of a Decoder's variables


def _stack_trees(trees, count: int):
    """Stacks `count` trees of equal structure leaf-wise on a new axis 0. NumPy leaves (a
    checkpoint being converted) are copied into one preallocated array as each tree arrives,
    so the layers never exist twice on the host; device arrays are stacked on device."""
    trees = iter(trees)
    first = next(trees)
    if not isinstance(jax.tree.leaves(first)[0], np.ndarray):
        return jax.tree.map(lambda *a: jnp.stack(a), first, *trees)
    out = jax.tree.map(lambda a: np.empty((count, *a.shape), a.dtype), first)
    for r, tree in enumerate(itertools.chain([first], trees)):
        for stacked, leaf in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
            stacked[r] = leaf
    return out


def unstack_params(spec: DecoderSpec, params: dict) -> dict:
    """A Decoder parameter dict in either layout -> the unrolled one (`{"layers": {i: layer},
    ...}`); arrays are sliced, not copied to the host."""
    if "stacks" not in params:
        return params
    out = {k: v for k, v in params.items() if k != "stacks"}
    out["layers"] = {}
    for s, (first, unit, repeats) in enumerate(layer_stacks(spec)):
        stack = params["stacks"][s]["layers"]
        for r in range(repeats):
            for j in range(unit):
                out["layers"][first + r * unit + j] = jax.tree.map(lambda a, r=r: a[r],
                                                                   stack[j])
    return out


def stack_params(spec: DecoderSpec, params: dict) -> dict:
    """A Decoder parameter dict in either layout -> the layout of `spec.scan_layers`.

    `params["layers"]` may be any mapping (e.g. layers converted on access): each layer is
    read once, in depth order within each stack position."""
    params = unstack_params(spec, params)
    if not spec.scan_layers:
        return params
    out = {k: v for k, v in params.items() if k != "layers"}
    layers = params["layers"]
    out["stacks"] = {
        s: {"layers": {j: _stack_trees((layers[first + r * unit + j] for r in range(repeats)),
                                       repeats)
                       for j in range(unit)}}
        for s, (first, unit, repeats) in enumerate(layer_stacks(spec))}
    return out


def abstract_decoder(spec: DecoderSpec) -> Decoder:
    """`Decoder(spec)` with ShapeDtypeStructs for arrays (nothing allocated); traced once
    per spec object, a fresh module at every call (updating it leaves the kept one alone)."""
    graphdef, state = spec._abstract_split  # noqa: SLF001 - the spec keeps it for this module
    return nnx.merge(graphdef, state, copy=True)


def abstract_params(spec: DecoderSpec, what=EXPORTED) -> dict:
    """The variables `what` (default: an export's) of `Decoder(spec)` as ShapeDtypeStructs,
    a pure dict in the layout of `spec.scan_layers`: a restore target."""
    return nnx.to_pure_dict(nnx.state(abstract_decoder(spec), what))
