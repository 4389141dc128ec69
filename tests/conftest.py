"""Test set-up: 8 CPU devices before any JAX operation; strict dtype promotion for moejax code.

Strict promotion is not applied under tests/train/, tests/parallel/ and tests/reliability/,
which run optax updates: optax's own code mixes Python floats with int32 step counters.

The tests' programs are tiny, so compiling dominates their time: XLA compiles them without
its expensive optimisation passes and with XLA:CPU's loop emitters rather than its MLIR fusion
emitters (the flags `moejax-experiment --quick` uses): a toy train step compiles in 7 s, not 16,
and a compilation cache shared by the session's processes (xdist
workers and the tests' subprocesses, through the environment) compiles each program once
however small (many tests train the same tiny config). Results are the same functions.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    "--xla_backend_optimization_level=0",
                                    "--xla_llvm_disable_expensive_passes=true",
                                    "--xla_cpu_use_fusion_emitters=false"]).strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # set once: xdist workers inherit it
    _cache = tempfile.mkdtemp(prefix="moejax-tests-jit-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)  # by the process that made it
    os.environ.update({
        "JAX_COMPILATION_CACHE_DIR": _cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})

import jax  # noqa: E402 - after XLA_FLAGS
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
    if {"train", "parallel", "reliability"} & set(request.node.path.parts):
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield
