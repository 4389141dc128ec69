"""Parameter dicts into live Decoders, in the model's dtype (`model.param_dtype`).

- `load_params(model, params)`: a dict into an existing model, each array cast to the dtype
  of the model's array and put on its sharding.
- `decoder_with_params(spec, params)`: a new Decoder holding `params`, built around them: its
  parameters are never initialised at random, so a bfloat16 model occupies 2 bytes per
  parameter on the device and no float32 copy of it is ever made (one array at a time is
  cast: on the host for NumPy arrays, on the device for device arrays).
- `stored_param_dtype(params)`: the `model.param_dtype` that keeps a dict's arrays as they
  are: "bfloat16" when every floating array is bfloat16 (a bf16 Hugging Face checkpoint),
  else "float32".

`weights.py` reads the dicts from disk; this module never touches a file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec
from moejax.models.layout import EXPORTED, abstract_decoder, stack_params


def load_params(model: Decoder, params: dict) -> None:
    """Loads a parameter dict (either layout, a subset of the model's variables allowed) into
    `model` in place: each array is cast to the dtype of the model's array and put on its
    sharding."""
    state = nnx.state(model, EXPORTED)
    params = stack_params(model.spec, params)
    current = nnx.to_pure_dict(state)
    merged = jax.tree.map(lambda old, new: jax.device_put(_cast(new, old.dtype), old.sharding),
                          _subtree(current, params), params)
    nnx.replace_by_pure_dict(state, merged)
    nnx.update(model, state)


def _subtree(current: dict, params: dict) -> dict:
    """The part of `current` with `params`'s keys (an HF source has no router biases)."""
    return {k: _subtree(current[k], v) if isinstance(v, dict) else current[k]
            for k, v in params.items()}


def _cast(array, dtype):
    """`array` as `dtype`: a NumPy array on the host, a device array on its device."""
    if isinstance(array, np.ndarray):
        return array.astype(dtype, copy=False)
    return array if array.dtype == dtype else array.astype(dtype)


def stored_param_dtype(params: dict) -> str:
    """"bfloat16" when every floating array of `params` (arrays, or array metadata with a
    dtype) is bfloat16, else "float32"."""
    dtypes = {np.dtype(leaf.dtype) for leaf in jax.tree.leaves(params)
              if getattr(leaf, "dtype", None) is not None
              and jnp.issubdtype(leaf.dtype, jnp.floating)}
    return "bfloat16" if dtypes == {np.dtype(jnp.bfloat16)} else "float32"


def _flat(tree: dict) -> dict[tuple, object]:
    """A nested dict -> {key path tuple: leaf}."""
    return {tuple(k.key for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _nested(flat: dict[tuple, object]) -> dict:
    out = {}
    for path, leaf in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return out


def _initial_values(spec: DecoderSpec, paths: list[tuple]) -> list:
    """The initial values of the Decoder(spec, rngs=nnx.Rngs(0)) variables at `paths` (the
    router biases, the RNG streams), from one jit that returns nothing else: XLA drops the
    parameters' random init, which no output needs."""
    if not paths:
        return []

    def init():
        flat = _flat(nnx.to_pure_dict(nnx.state(Decoder(spec, rngs=nnx.Rngs(0)))))
        return [flat[path] for path in paths]

    return jax.jit(init)()


def decoder_with_params(spec: DecoderSpec, params: dict) -> Decoder:
    """A Decoder of `spec` holding `params` (either layout, every parameter of the model;
    router biases may be absent), each array cast to the model's dtype (`spec.param_dtype`)
    and put on the default device; the variables `params` lacks take their initial values.

    Raises:
      ValueError: `params` lacks a parameter of the model (names the first).
    """
    model = abstract_decoder(spec)
    state = nnx.state(model)
    target, given = _flat(nnx.to_pure_dict(state)), _flat(stack_params(spec, params))
    params_paths = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    if missing := [path for path in params_paths if path not in given]:
        raise ValueError(f"the weights lack parameter {'/'.join(map(str, missing[0]))} of the "
                         f"model ({len(missing)} missing)")
    fresh = [path for path in target if path not in given]
    values = dict(zip(fresh, _initial_values(spec, fresh), strict=True))
    values.update({path: jax.device_put(_cast(given[path], target[path].dtype))
                   for path in target if path in given})
    nnx.replace_by_pure_dict(state, _nested(values))
    nnx.update(model, state)
    return model
