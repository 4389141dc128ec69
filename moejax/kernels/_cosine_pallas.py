"""Pallas kernels behind `pairwise_cosine` and `pairwise_cosine_sorted` (see pairwise_cosine.py).

The specialization loss's kernel (docs/methods.md section 5). Forward: one pass over z per block of
tokens; for every pair i <= j of the K slots it accumulates <z_i, z_j> over feature chunks in
float32 (bf16 inputs are widened chunk by chunk), then normalises:
cos_ij = <z_i, z_j> / (n_i n_j) with n_i = sqrt(max(|z_i|^2, eps^2)). The norms [T, K] and the
cosines [T, K, K] are the only residuals besides z itself. Backward, with G = dcos + dcos^T:
  dz_i = sum_j G_ij z_j / (n_i n_j) - [|z_i| > eps] (sum_j G_ij cos_ij) z_i / n_i^2,
i.e. dz = A z per token with a [K, K] matrix A formed in jnp, applied by a second kernel in
one more pass over z. The expert-sorted variant gathers slot (t, j)'s row
expert_sorted_index[t, j] of z_sorted inside the kernel (rows out of range are zero vectors)
and its backward scatters each slot's gradient to that row (every valid index must be
distinct, as in a dispatch plan: the kernel writes rows, it does not add to them).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from moejax.kernels import _common

EPS = 1e-12  # the smallest norm: a zero vector has cosine 0 and a finite gradient


@dataclasses.dataclass(frozen=True)
class CosineConfig:
    """Static options (hashable: a custom_vjp non-differentiable argument)."""

    block_tokens: int
    block_features: int
    interpret: object  # pallas_call's: a bool or pltpu.InterpretParams


def _pairs(num_slots: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(num_slots) for j in range(i, num_slots)]


def _accumulate_dots(load_row, num_slots: int, num_chunks: int, block: int, dtype) -> dict:
    """Dot products of every slot pair over all feature chunks.

    Args:
      load_row: (slot i, chunk c) -> [BT, BF] rows of slot i, features of chunk c, in dtype.

    Returns:
      {(i, j): [BT] <z_i, z_j>} for i <= j.
    """
    pairs = _pairs(num_slots)

    def body(chunk, acc):
        rows = [load_row(i, chunk) for i in range(num_slots)]
        return tuple(a + jnp.sum(rows[i] * rows[j], axis=1) for a, (i, j) in zip(acc, pairs))

    init = tuple(jnp.zeros((block,), dtype) for _ in pairs)
    return dict(zip(pairs, jax.lax.fori_loop(0, num_chunks, body, init)))


def _store_cosines(dots: dict, cos_ref, norm_ref) -> None:
    """Writes cos [BT, K, K] and the clamped norms [BT, K] from the pair dot products."""
    num_slots = norm_ref.shape[1]
    norms = [jnp.sqrt(jnp.maximum(dots[i, i], EPS**2)) for i in range(num_slots)]
    for i, norm in enumerate(norms):
        norm_ref[:, i] = norm
    for (i, j), dot in dots.items():
        cos = dot / (norms[i] * norms[j])
        cos_ref[:, i, j] = cos
        if i != j:
            cos_ref[:, j, i] = cos


def _columns(chunk, block_features: int):
    return pl.ds(pl.multiple_of(chunk * block_features, block_features), block_features)


def _cosine_kernel(z_ref, cos_ref, norm_ref, *, block_features: int):
    """Refs: z [BT, K, Fp]; out cos [BT, K, K], norm [BT, K]."""
    block, num_slots, features = z_ref.shape
    dtype = cos_ref.dtype

    def load_row(i, chunk):
        return z_ref[:, i, _columns(chunk, block_features)].astype(dtype)

    dots = _accumulate_dots(load_row, num_slots, features // block_features, block, dtype)
    _store_cosines(dots, cos_ref, norm_ref)


def _slot_rows(idx_ref, num_rows: int):
    """Per slot: a safe row index [BT] (0 where invalid) and the validity mask [BT, 1]."""
    safe, valid = [], []
    for i in range(idx_ref.shape[1]):
        index = idx_ref[:, i]
        ok = (index >= 0) & (index < num_rows)
        safe.append(jnp.where(ok, index, 0))
        valid.append(ok[:, None])
    return safe, valid


def _sorted_cosine_kernel(idx_ref, z_ref, cos_ref, norm_ref, *, block_features: int,
                          num_rows: int):
    """Refs: idx [BT, K]; z_sorted [M, Fp] (whole); out cos [BT, K, K], norm [BT, K]."""
    block, num_slots = idx_ref.shape
    dtype = cos_ref.dtype
    safe, valid = _slot_rows(idx_ref, num_rows)

    def load_row(i, chunk):
        row = z_ref[safe[i], _columns(chunk, block_features)].astype(dtype)
        return jnp.where(valid[i], row, 0.0)

    num_chunks = z_ref.shape[1] // block_features
    dots = _accumulate_dots(load_row, num_slots, num_chunks, block, dtype)
    _store_cosines(dots, cos_ref, norm_ref)


def _coefficient_columns(coef_ref) -> list:
    """coef [BT, K, K] ref -> nested lists [i][j] of [BT, 1] arrays."""
    num_slots = coef_ref.shape[1]
    return [[coef_ref[:, i, j][:, None] for j in range(num_slots)] for i in range(num_slots)]


def _cosine_grad_kernel(z_ref, coef_ref, dz_ref, *, block_features: int):
    """dz_i = sum_j A_ij z_j.  Refs: z [BT, K, Fp], coef A [BT, K, K]; out dz [BT, K, Fp]."""
    num_slots, features = z_ref.shape[1:]
    coef = _coefficient_columns(coef_ref)

    def body(chunk, carry):
        cols = _columns(chunk, block_features)
        rows = [z_ref[:, j, cols].astype(coef_ref.dtype) for j in range(num_slots)]
        for i in range(num_slots):
            grad = sum(coef[i][j] * rows[j] for j in range(num_slots))
            dz_ref[:, i, cols] = grad.astype(dz_ref.dtype)
        return carry

    jax.lax.fori_loop(0, features // block_features, body, 0)


def _sorted_cosine_grad_kernel(idx_ref, z_ref, coef_ref, dz_init_ref, dz_ref, *,
                               block_features: int, num_rows: int):
    """Writes slot (t, i)'s gradient to row idx[t, i] of dz (invalid slots: row M, discarded).

    Refs: idx [BT, K]; z_sorted [M, Fp]; coef [BT, K, K]; dz [M + 1, Fp] (zeros, aliased).
    """
    del dz_init_ref  # the same buffer as dz_ref
    num_slots = idx_ref.shape[1]
    safe, valid = _slot_rows(idx_ref, num_rows)
    target = [jnp.where(ok[:, 0], index, num_rows) for index, ok in zip(safe, valid)]
    coef = _coefficient_columns(coef_ref)

    def body(chunk, carry):
        cols = _columns(chunk, block_features)
        rows = [jnp.where(valid[j], z_ref[safe[j], cols].astype(coef_ref.dtype), 0.0)
                for j in range(num_slots)]
        for i in range(num_slots):
            grad = sum(coef[i][j] * rows[j] for j in range(num_slots))
            dz_ref[target[i], cols] = grad.astype(dz_ref.dtype)
        return carry

    jax.lax.fori_loop(0, z_ref.shape[1] // block_features, body, 0)


# ----------------------------------------------------------------------------- wrappers


def _feature_layout(num_features: int, block_features: int) -> tuple[int, int]:
    """(feature chunk, padded feature count): the chunk is a power of two <= block_features."""
    chunk = min(block_features, _common.next_power_of_2(num_features))
    return chunk, _common.round_up(num_features, chunk)


def _pad(x: jax.Array, widths, value=0) -> jax.Array:
    """jnp.pad at the end of each axis, skipped when nothing is added."""
    if not any(widths):
        return x
    return jnp.pad(x, [(0, w) for w in widths], constant_values=value)


def grad_coefficients(d_cos: jax.Array, cos: jax.Array, norm: jax.Array) -> jax.Array:
    """A [T, K, K] with dz_i = sum_j A_ij z_j (see the module docstring).

    Args:
      d_cos: [T, K, K] cotangent of the cosines.
      cos: [T, K, K] forward cosines; norm: [T, K] clamped norms (compute dtype).
    """
    d_cos = d_cos.astype(cos.dtype)
    sym = d_cos + jnp.swapaxes(d_cos, 1, 2)
    inv = 1.0 / norm
    projection = jnp.where(norm > EPS, (sym * cos).sum(-1) * inv * inv, 0.0)  # [T, K]
    eye = jnp.eye(norm.shape[1], dtype=cos.dtype)
    return sym * inv[:, :, None] * inv[:, None, :] - eye * projection[:, :, None]


def _call(kernel, config: CosineConfig, grid: int, in_specs, out_specs, out_shape, **kwargs):
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(grid,), in_specs=in_specs, out_specs=out_specs,
        interpret=config.interpret, compiler_params=_common.compiler_params(config.interpret),
        **kwargs,
    )


def _cosine_forward(z: jax.Array, config: CosineConfig):
    """z [T, K, F] -> (cos [T, K, K], norm [T, K]) in the compute dtype."""
    tokens, num_slots, features = z.shape
    block = config.block_tokens
    chunk, padded_features = _feature_layout(features, config.block_features)
    padded_tokens = _common.round_up(tokens, block)
    z = _pad(z, (padded_tokens - tokens, 0, padded_features - features))
    dtype = _common.compute_dtype(z.dtype)
    cos, norm = _call(
        functools.partial(_cosine_kernel, block_features=chunk), config, padded_tokens // block,
        in_specs=[pl.BlockSpec((block, num_slots, padded_features), lambda b: (b, 0, 0))],
        out_specs=(pl.BlockSpec((block, num_slots, num_slots), lambda b: (b, 0, 0)),
                   pl.BlockSpec((block, num_slots), lambda b: (b, 0))),
        out_shape=(jax.ShapeDtypeStruct((padded_tokens, num_slots, num_slots), dtype),
                   jax.ShapeDtypeStruct((padded_tokens, num_slots), dtype)),
    )(z)
    return cos[:tokens], norm[:tokens]


def _cosine_backward(z, norm, cos, d_cos, config: CosineConfig) -> jax.Array:
    """dz [T, K, F] in z's dtype."""
    tokens, num_slots, features = z.shape
    block = config.block_tokens
    chunk, padded_features = _feature_layout(features, config.block_features)
    padded_tokens = _common.round_up(tokens, block)
    coef = _pad(grad_coefficients(d_cos, cos, norm), (padded_tokens - tokens, 0, 0))
    z = _pad(z, (padded_tokens - tokens, 0, padded_features - features))
    dz = _call(
        functools.partial(_cosine_grad_kernel, block_features=chunk), config,
        padded_tokens // block,
        in_specs=[pl.BlockSpec((block, num_slots, padded_features), lambda b: (b, 0, 0)),
                  pl.BlockSpec((block, num_slots, num_slots), lambda b: (b, 0, 0))],
        out_specs=pl.BlockSpec((block, num_slots, padded_features), lambda b: (b, 0, 0)),
        out_shape=jax.ShapeDtypeStruct(z.shape, z.dtype),
    )(z, coef)
    return dz[:tokens, :, :features]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def pairwise_cosine_pallas(z: jax.Array, config: CosineConfig) -> jax.Array:
    """z [T, K, F] -> cos [T, K, K]; see pairwise_cosine.pairwise_cosine."""
    return _cosine_forward(z, config)[0]


def _pairwise_cosine_fwd(z, config):
    cos, norm = _cosine_forward(z, config)
    return cos, (z, norm, cos)


def _pairwise_cosine_bwd(config, residuals, d_cos):
    z, norm, cos = residuals
    return (_cosine_backward(z, norm, cos, d_cos, config),)


pairwise_cosine_pallas.defvjp(_pairwise_cosine_fwd, _pairwise_cosine_bwd)


def _sorted_forward(z_sorted: jax.Array, index: jax.Array, config: CosineConfig):
    """z_sorted [M, F], index [T, K] -> (cos [T, K, K], norm [T, K])."""
    num_rows, features = z_sorted.shape
    tokens, num_slots = index.shape
    block = config.block_tokens
    chunk, padded_features = _feature_layout(features, config.block_features)
    padded_tokens = _common.round_up(tokens, block)
    index = _pad(index.astype(jnp.int32), (padded_tokens - tokens, 0), value=num_rows)
    z_sorted = _pad(z_sorted, (0, padded_features - features))
    dtype = _common.compute_dtype(z_sorted.dtype)
    kernel = functools.partial(_sorted_cosine_kernel, block_features=chunk, num_rows=num_rows)
    cos, norm = _call(
        kernel, config, padded_tokens // block,
        in_specs=[pl.BlockSpec((block, num_slots), lambda b: (b, 0)),
                  pl.BlockSpec((num_rows, padded_features), lambda b: (0, 0))],
        out_specs=(pl.BlockSpec((block, num_slots, num_slots), lambda b: (b, 0, 0)),
                   pl.BlockSpec((block, num_slots), lambda b: (b, 0))),
        out_shape=(jax.ShapeDtypeStruct((padded_tokens, num_slots, num_slots), dtype),
                   jax.ShapeDtypeStruct((padded_tokens, num_slots), dtype)),
    )(index, z_sorted)
    return cos[:tokens], norm[:tokens]


def _sorted_backward(z_sorted, index, norm, cos, d_cos, config: CosineConfig) -> jax.Array:
    """dz_sorted [M, F] in z_sorted's dtype: each valid slot's gradient at its row."""
    num_rows, features = z_sorted.shape
    tokens, num_slots = index.shape
    block = config.block_tokens
    chunk, padded_features = _feature_layout(features, config.block_features)
    padded_tokens = _common.round_up(tokens, block)
    coef = _pad(grad_coefficients(d_cos, cos, norm), (padded_tokens - tokens, 0, 0))
    index = _pad(index.astype(jnp.int32), (padded_tokens - tokens, 0), value=num_rows)
    z_sorted = _pad(z_sorted, (0, padded_features - features))
    dz = jnp.zeros((num_rows + 1, padded_features), z_sorted.dtype)  # row M: invalid slots
    kernel = functools.partial(_sorted_cosine_grad_kernel, block_features=chunk,
                               num_rows=num_rows)
    whole = lambda b: (0, 0)  # noqa: E731
    dz = _call(
        kernel, config, padded_tokens // block,
        in_specs=[pl.BlockSpec((block, num_slots), lambda b: (b, 0)),
                  pl.BlockSpec((num_rows, padded_features), whole),
                  pl.BlockSpec((block, num_slots, num_slots), lambda b: (b, 0, 0)),
                  pl.BlockSpec(dz.shape, whole)],
        out_specs=pl.BlockSpec(dz.shape, whole),
        out_shape=jax.ShapeDtypeStruct(dz.shape, dz.dtype),
        input_output_aliases={3: 0},
    )(index, z_sorted, coef, dz)
    return dz[:num_rows, :features]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pairwise_cosine_sorted_pallas(z_sorted: jax.Array, index: jax.Array,
                                  config: CosineConfig) -> jax.Array:
    """z_sorted [M, F], index [T, K] -> cos [T, K, K]; see pairwise_cosine_sorted."""
    return _sorted_forward(z_sorted, index, config)[0]


def _sorted_fwd(z_sorted, index, config):
    cos, norm = _sorted_forward(z_sorted, index, config)
    return cos, (z_sorted, index, norm, cos)


def _sorted_bwd(config, residuals, d_cos):
    z_sorted, index, norm, cos = residuals
    return _sorted_backward(z_sorted, index, norm, cos, d_cos, config), None


pairwise_cosine_sorted_pallas.defvjp(_sorted_fwd, _sorted_bwd)
