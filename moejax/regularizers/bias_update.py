"""Aux-loss-free balancing (DeepSeek-V3): the selection bias update, applied after each step.

Not a loss: `b_e += rate * sign(mean_load - load_e)`, loads counted over the whole global
batch (summed over data shards with `axis_name`). The bias only changes which experts are
selected (see `RouterSpec.use_bias`), never the gates, and is no trainable parameter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def updated_bias(bias, tokens_per_expert, rate, *, num_experts=None, axis_name=None):
    """The new selection biases.

    Args:
      bias: [R, E] or [E] float32 current biases.
      tokens_per_expert: [R, E] or [E] slots routed to each expert in this step's local batch.
      rate: update speed (DeepSeek-V3: 1e-3).
      num_experts: true E per router (int or [R]) when E is padded; padded entries stay put.
      axis_name: data-parallel mesh axis name(s) to sum loads over inside shard_map.

    Returns:
      Biases of bias's shape; identical on every shard.
    """
    bias = jnp.asarray(bias, jnp.float32)
    load = jnp.asarray(tokens_per_expert, jnp.float32)
    if axis_name is not None:
        load = jax.lax.psum(load, axis_name)
    size = bias.shape[-1]
    true_e = jnp.asarray(size if num_experts is None else num_experts, jnp.float32)
    true_e = true_e[..., None] if true_e.ndim else true_e
    valid = jnp.arange(size, dtype=jnp.float32) < true_e
    total_load = jnp.where(valid, load, 0.0).sum(-1, keepdims=True)
    # sign(mean load - load), without the division: exact for integer loads, so an expert at
    # exactly the mean load stays put however the compiler rounds a quotient
    step = rate * jnp.sign(total_load - true_e * load)
    return jnp.where(valid, bias + step, bias)
