"""Platform gates shared by the kernel tests."""

import re

import jax
import jaxlib
import pytest

# GPU-only tests: `pytest -m gpu tests/kernels` on a GPU machine; skipped elsewhere.
requires_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")


def skip_unless_triton_lowering_runs_here() -> None:
    """Skips when lowering for CUDA cannot run on this machine.

    Pallas's Triton backend is needed; and after jaxlib 0.10.2 lowering a Triton kernel also
    compiles it (jax/_src/pallas/triton/pallas_call_registration.py), which needs a GPU.
    """
    pytest.importorskip("jax.experimental.pallas.triton", exc_type=ImportError)
    version = tuple(int(part) for part in re.findall(r"\d+", jaxlib.__version__)[:3])
    if version > (0, 10, 2) and jax.default_backend() != "gpu":
        pytest.skip(f"jaxlib {jaxlib.__version__} compiles Triton while lowering: needs a GPU")
