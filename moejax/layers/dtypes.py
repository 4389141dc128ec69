"""Compute dtypes: router math, norms statistics and mixing gates run in float32 or wider."""

from __future__ import annotations

import jax.numpy as jnp


def at_least_float32(dtype):
    """float32 for bf16/f16/f32 inputs; float64 stays float64 (used by float64 gradient tests)."""
    return jnp.float64 if dtype == jnp.float64 else jnp.float32
