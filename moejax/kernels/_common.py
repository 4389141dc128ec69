"""Shared plumbing of the kernels: implementation choice, interpret mode, padding, prefix sums.

Not a data-path stage. The Pallas kernels of this package are written once, in a subset of
Pallas that interpret mode, the Triton lowering and the Mosaic (TPU) lowering accept: every
load and store moves a power-of-two number of elements, inputs are padded in the wrapper so
that no block reads past an array, no kernel slices or concatenates register values, and the
last two dimensions of every block are whole array dimensions or multiples of (8, 128).
- CPU: interpret mode (tested), or Pallas's TPU interpret mode (`interpret=
  pltpu.InterpretParams()`, tested with the TPU code paths).
- GPU: Pallas's Triton backend (`compiler_params=pltriton.CompilerParams`, deprecated in jax
  0.11 in favour of Mosaic GPU): lowering to Triton IR is tested on CPU; compiling and running
  on a GPU is NOT tested.
- TPU: Mosaic, with its default compiler parameters; the expert-sorted cosine gathers its rows
  in jnp first there (Mosaic has no vector gather from a ref). Lowering to Mosaic is tested on
  CPU; compiling and running on a TPU is NOT tested.
"auto" picks the jnp references everywhere until a platform's checks have run on it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.options import check_choice

try:  # Pallas's TPU (Mosaic) module, for its interpret mode's parameters
    from jax.experimental.pallas import tpu as _pltpu
except ImportError:  # pragma: no cover - depends on the installed jax
    _pltpu = None

try:  # Pallas's Triton backend; absent from some jax builds, removed in a future jax
    from jax.experimental.pallas import triton as _pltriton
except ImportError:  # pragma: no cover - depends on the installed jax
    _pltriton = None

KERNEL_IMPLEMENTATIONS = ("auto", "pallas", "jnp")
# Where implementation="auto" picks the Pallas kernel: nowhere until the GPU tests
# (`pytest -m gpu tests/kernels`) have passed on a GPU, or the kernel tests on a TPU; then
# ("gpu",) or ("tpu",).
_AUTO_PALLAS_BACKENDS = ()
_TRITON_NUM_WARPS = 4  # untuned: no GPU was available when the kernels were written


def backend() -> str:
    """The platform the kernels are traced for (`jax.default_backend()`; the TPU lowering
    tests set it to "tpu" on CPU)."""
    return jax.default_backend()


def check_implementation(implementation: str) -> None:
    """Raises ValueError unless `implementation` is one of KERNEL_IMPLEMENTATIONS."""
    check_choice("implementation", implementation, KERNEL_IMPLEMENTATIONS)


def use_pallas(implementation: str) -> bool:
    """True when the Pallas kernel runs: "pallas", or "auto" on a GPU backend."""
    check_implementation(implementation)
    if implementation == "auto":
        return backend() in _AUTO_PALLAS_BACKENDS
    return implementation == "pallas"


def resolve_interpret(interpret):
    """pallas_call's `interpret`: None -> interpret mode on CPU, compiled elsewhere (Triton on
    GPU, Mosaic on TPU); a bool or a `pltpu.InterpretParams` (TPU interpret mode) as given."""
    if interpret is None:
        return backend() == "cpu"
    if _pltpu is not None and isinstance(interpret, _pltpu.InterpretParams):
        return interpret
    return bool(interpret)


def compiler_params(interpret):
    """None in interpret mode and on TPU (Mosaic's defaults), else the Triton backend's
    parameters (GPU)."""
    if interpret or backend() == "tpu":
        return None
    if _pltriton is None:
        raise NotImplementedError(
            "the Pallas GPU path needs jax.experimental.pallas.triton, which this jax lacks; "
            "use implementation='jnp'"
        )
    return _pltriton.CompilerParams(num_warps=_TRITON_NUM_WARPS, num_stages=1)


def check_block(name: str, value: int, minimum: int = 16) -> None:
    """Raises ValueError unless value is a power of two >= minimum (Triton needs both)."""
    if value < minimum or value & (value - 1):
        raise ValueError(f"{name}={value} must be a power of two >= {minimum}")


def next_power_of_2(value: int) -> int:
    """The smallest power of two >= value (value >= 1)."""
    return 1 << (max(value, 1) - 1).bit_length()


def round_up(value: int, multiple: int) -> int:
    """value rounded up to a multiple of `multiple`."""
    return -(-value // multiple) * multiple


def compute_dtype(dtype) -> jnp.dtype:
    """float32, or float64 for float64 inputs (gradient checks run in float64)."""
    dtype = jnp.dtype(dtype)
    return dtype if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def check_float(name: str, x: jax.Array) -> None:
    """Raises ValueError unless x has a floating dtype."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype; got {x.dtype}")


def exclusive_cumsum(counts: jax.Array, axis: int = 0) -> jax.Array:
    """Where each group starts: out[i] = sum(counts[:i]) along `axis` (0 for the first).

    Args:
      counts: [..., G, ...] integer group sizes (e.g. tokens_per_expert [E]).
      axis: the axis of the groups.

    Returns:
      counts' shape and dtype.
    """
    return jnp.cumsum(counts, axis=axis, dtype=counts.dtype) - counts
