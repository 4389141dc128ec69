"""Test set-up: 8 CPU devices before any JAX operation; strict dtype promotion for moejax code.

Strict promotion is not applied under tests/train/ and tests/parallel/, which run optax
updates: optax's own code mixes Python floats with int32 step counters.
"""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
    if {"train", "parallel"} & set(request.node.path.parts):
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield
