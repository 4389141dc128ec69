"""Random routing inputs of awkward sizes for the regularizer tests, and small test helpers.

`random_routers` draws R routers (each with its own E_r and K_r) over the same T tokens and
returns both their unpadded NumPy arrays (what `reference_losses` reads) and the padded, stacked
`RoutingRecord` built with `moejax.record.concat_records` (what moejax reads).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from moejax.record import RoutingRecord, concat_records

R, T, E, K, F = 3, 37, 6, 3, 5
SAME_SHAPES = ((E, K),) * R
PADDED_SHAPES = ((6, 3), (4, 2), (5, 3))  # (E_r, K_r) per router: padding in the middle
NUM_DEVICES = 8


def softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def top_k(scores, k):
    """[T, k] int32 indices of the k largest scores per row, best first."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")[..., :k].astype(np.int32)


@dataclasses.dataclass
class Routers:
    """Per-router unpadded arrays (lists of length R) and the padded stacked record."""

    logits: list
    probs: list
    expert_idx: list
    z: list
    cos: list
    tokens_per_expert: list
    dropped: list
    record: RoutingRecord


def _one_router(rng, tokens, experts, k, dead):
    logits = rng.normal(size=(tokens, experts)) * 1.5
    logits[:, :dead] -= 20.0  # the first `dead` experts are never chosen
    logits = logits.astype(np.float32)
    probs = softmax(logits).astype(np.float32)
    expert_idx = top_k(probs, k)
    z = rng.normal(size=(tokens, k, F)).astype(np.float32)
    unit = z / np.linalg.norm(z, axis=-1, keepdims=True)
    cos = np.einsum("tkf,tjf->tkj", unit, unit).astype(np.float32)
    counts = np.bincount(expert_idx.reshape(-1), minlength=experts).astype(np.int32)
    kept = np.ones((tokens, k), bool)
    dropped = int(rng.integers(0, 6))
    kept.reshape(-1)[rng.choice(tokens * k, dropped, replace=False)] = False
    picked = np.take_along_axis(probs, expert_idx, -1)
    gates = np.where(kept, picked / picked.sum(-1, keepdims=True), 0.0).astype(np.float32)
    record = RoutingRecord(
        logits=jnp.asarray(logits[None]), probs=jnp.asarray(probs[None]),
        expert_idx=jnp.asarray(expert_idx[None]), gates=jnp.asarray(gates[None]),
        kept=jnp.asarray(kept[None]), tokens_per_expert=jnp.asarray(counts[None]),
        dropped=jnp.asarray([dropped], jnp.int32), num_experts=jnp.asarray([experts], jnp.int32),
        top_k=jnp.asarray([k], jnp.int32), pair_cos=jnp.asarray(cos[None]))
    return logits, probs, expert_idx, z, cos, counts, dropped, record


def random_routers(seed, shapes=SAME_SHAPES, tokens=T, dead=0) -> Routers:
    """R = len(shapes) routers with (E_r, K_r) = shapes[r] over `tokens` tokens."""
    rng = np.random.default_rng(seed)
    parts = [_one_router(rng, tokens, e, k, dead) for e, k in shapes]
    columns = list(zip(*parts))
    return Routers(*[list(c) for c in columns[:-1]], record=concat_records(columns[-1]))


def stack(arrays, dtype=None):
    """Stacks equal-shaped per-router arrays into one [R, ...] jax array."""
    return jnp.asarray(np.stack(arrays), dtype)


def float64_direction(seed, shape):
    return np.random.default_rng(seed).normal(size=shape)


def assert_directional(grad, direction, fd_value, rtol=1e-4):
    """<grad, direction> matches a float64 finite difference, relative to sum |grad * dir|."""
    grad, direction = np.asarray(grad, np.float64), np.asarray(direction, np.float64)
    analytic = float((grad * direction).sum())
    scale = float(np.abs(grad * direction).sum())
    assert scale > 0, "the gradient is zero along the test direction"
    assert abs(analytic - fd_value) <= rtol * scale, (analytic, fd_value, scale)


def central_difference(fn, x, direction, step=1e-6):
    x = np.asarray(x, np.float64)
    return (fn(x + step * direction) - fn(x - step * direction)) / (2 * step)


def data_mesh():
    return jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def check_mean_and_per_router(values, reference, rtol=1e-5):
    """values = (mean, per-router) from moejax; reference = the same from the NumPy oracle."""
    mean, per_router = values
    np.testing.assert_allclose(np.asarray(per_router), reference[1], rtol=rtol)
    np.testing.assert_allclose(float(mean), reference[0], rtol=rtol)
