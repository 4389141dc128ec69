"""RoPE: YaRN frequencies and factors against transformers' numbers; the two layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.layers.mla_spec import RopeScaling
from moejax.layers.rope import (
    apply_rope,
    apply_rope_interleaved,
    rope_tables,
    softmax_scale,
    yarn_inv_freq,
)
from tests.reference_decoder import rope_ref, softmax_scale_ref, yarn_ref

# (head dim, theta, RopeScaling, HF inv_freq, HF attention factor): computed once with
# transformers 5.18's `_compute_yarn_parameters` (LlamaConfig, head_dim set, rope_type "yarn")
HF_YARN = [
    (8, 10000.0, RopeScaling(factor=4.0, original_max_position_embeddings=32, mscale=1.0,
                             mscale_all_dim=1.0),
     [1.0, 0.02500000037252903, 0.0024999999441206455, 0.0002500000118743628], 1.0),
    (16, 500.0, RopeScaling(factor=8.0, original_max_position_embeddings=64, beta_fast=16.0,
                            beta_slow=2.0, mscale=0.707, mscale_all_dim=1.0, truncate=False),
     [1.0, 0.26784446835517883, 0.03486943244934082, 0.01215615589171648,
      0.005590170156210661, 0.0025707141030579805, 0.0011821769876405597,
      0.0005436398205347359], 0.9495608824621653),
    (12, 10000.0, RopeScaling(factor=40.0, original_max_position_embeddings=16),
     [1.0, 0.00538608618080616, 0.001160397077910602, 0.0002500000118743628,
      5.386085467762314e-05, 1.1603973689489067e-05], 1.3688879454113936),
]
# (head dim, RopeScaling or None, HF DeepSeek `yarn_apply_mscale(rope_parameters, dim**-0.5)`)
HF_SCALE = [
    (12, RopeScaling(factor=8.0, original_max_position_embeddings=64, mscale=0.707,
                     mscale_all_dim=1.0), 0.42121428344144607),
    (192, RopeScaling(factor=40.0, original_max_position_embeddings=64, mscale=1.0,
                      mscale_all_dim=0.707), 0.1147213867929261),
    (12, RopeScaling(factor=4.0, original_max_position_embeddings=64), 0.28867513459481287),
    (12, None, 0.28867513459481287),
]


@pytest.mark.parametrize("dim, theta, scaling, inv_freq, factor", HF_YARN)
def test_yarn_matches_transformers(dim, theta, scaling, inv_freq, factor):
    """float32 (as HF computes them) and float64, and the NumPy reference, all give HF's
    frequencies and attention factor."""
    got, got_factor = yarn_inv_freq(dim, theta, scaling)
    np.testing.assert_allclose(np.asarray(got), inv_freq, rtol=1e-6)
    assert got.dtype == jnp.float32 and got_factor == pytest.approx(factor, rel=1e-12)
    with jax.enable_x64(True):
        np.testing.assert_allclose(np.asarray(yarn_inv_freq(dim, theta, scaling,
                                                            jnp.float64)[0]), inv_freq, rtol=1e-6)
    ref, ref_factor = yarn_ref(dim, theta, scaling)
    np.testing.assert_allclose(ref, inv_freq, rtol=1e-6)
    assert ref_factor == pytest.approx(factor, rel=1e-12)


@pytest.mark.parametrize("dim, scaling, scale", HF_SCALE)
def test_softmax_scale_matches_deepseek(dim, scaling, scale):
    assert softmax_scale(dim, scaling) == pytest.approx(scale, rel=1e-12)
    assert softmax_scale_ref(dim, scaling) == pytest.approx(scale, rel=1e-12)


def test_attention_factor_override_and_tables():
    """`attention_factor` replaces the mscale ratio; the tables are cos/sin of position times
    the YaRN frequencies, times the factor (against the NumPy rotation of unit vectors)."""
    scaling = RopeScaling(factor=8.0, original_max_position_embeddings=64, beta_fast=16.0,
                          beta_slow=2.0, attention_factor=0.5)
    assert yarn_inv_freq(16, 500.0, scaling)[1] == 0.5
    positions = np.arange(5)
    with jax.enable_x64(True):
        cos, sin = rope_tables(jnp.asarray(positions), 16, 500.0, jnp.float64, scaling)
        eye = np.zeros((5, 1, 16))
        eye[:, 0, 0] = 1.0  # rotating e_0 gives (cos, ..., sin at i + H/2) of frequency 0
        rotated = np.asarray(apply_rope(jnp.asarray(eye)[None], cos[None], sin[None]))[0]
    np.testing.assert_allclose(rotated, rope_ref(eye, positions, 500.0, scaling), atol=1e-14)
    inv_freq, factor = yarn_ref(16, 500.0, scaling)
    angles = positions[:, None] * inv_freq
    np.testing.assert_allclose(np.asarray(cos)[:, :8], factor * np.cos(angles), atol=1e-14)
    np.testing.assert_allclose(np.asarray(sin)[:, 8:], factor * np.sin(angles), atol=1e-14)


def test_interleaved_rope_is_the_complex_pair_rotation_de_interleaved():
    """apply_rope_interleaved (HF's interleave form) = DeepSeek-V2's complex rotation of
    adjacent pairs with even then odd outputs, = rotate-half RoPE of the de-interleaved
    vector; scores between rotated queries and keys equal the complex form's."""
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 1, 6, 3, 8))
    positions = np.array([0, 1, 2, 5, 9, 40])
    with jax.enable_x64(True):
        cos, sin = rope_tables(jnp.asarray(positions)[None], 8, 1e4, jnp.float64)
        got_q = np.asarray(apply_rope_interleaved(jnp.asarray(q), cos, sin))[0]
        got_k = np.asarray(apply_rope_interleaved(jnp.asarray(k), cos, sin))[0]
        de_interleaved = np.concatenate([q[..., 0::2], q[..., 1::2]], axis=-1)
        half = np.asarray(apply_rope(jnp.asarray(de_interleaved), cos, sin))[0]
    pairs = np.stack([q[0, ..., 0::2], q[0, ..., 1::2]], -1)
    angles = positions[:, None, None] * 1e4 ** (-np.arange(0, 8, 2) / 8)
    complex_q = (pairs[..., 0] + 1j * pairs[..., 1]) * np.exp(1j * angles)
    np.testing.assert_allclose(got_q, np.concatenate([complex_q.real, complex_q.imag], -1),
                               atol=1e-12)
    np.testing.assert_allclose(got_q, half, atol=1e-12)
    want_q = rope_ref(q[0], positions, 1e4, interleave=True)  # interleaved output
    want_k = rope_ref(k[0], positions, 1e4, interleave=True)
    np.testing.assert_allclose(np.einsum("snh,tnh->nst", got_q, got_k),
                               np.einsum("snh,tnh->nst", want_q, want_k), atol=1e-12)


def test_rope_scaling_options_are_named():
    with pytest.raises(ValueError, match="model.rope_scaling.kind='ntk'; allowed: yarn"):
        RopeScaling(factor=2.0, original_max_position_embeddings=16, kind="ntk")
    with pytest.raises(ValueError, match="model.rope_scaling.factor=0.0; allowed: a finite"):
        RopeScaling(factor=0.0, original_max_position_embeddings=16)
