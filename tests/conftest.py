"""Test set-up: 8 CPU devices and strict dtype promotion, before any JAX operation."""

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
