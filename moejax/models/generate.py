"""Autoregressive generation with a KV cache: `generate(model, prompt, ...)`.

The prompt [B, S] runs once (prefill), writing every layer's keys and values into a cache of
S + max_new_tokens slots; then a jitted one-token step (a `lax.scan` over the new tokens)
attends to the cache. The cache is a pytree of `KVCache`s (`MLACache`s for Multi-head Latent
Attention: the latent and RoPE key per token, read in the absorbed form) that `init_cache`
builds in the structure `Decoder.__call__(..., cache=)` takes (stacked over depth in the
scanned layout, so the stacks' `nnx.scan` carries it) and that every call returns updated:
the model holds no cache and is not changed. Routing is deterministic (router jitter off, on
a copy of the model inside the jit) and each new token's expert choices come back per router.

Checked before anything is compiled or allocated (`ValueError` naming the value): the prompt's
ids lie in [0, vocab_size); max_new_tokens >= 1 and prompt + new tokens fit the model's
positions (`max_positions`: a Hugging Face model's `max_position_embeddings`, else
MAX_POSITIONS, 32768, the context length an HF export declares by default) and, with the
weights, the device's memory (`device_memory_bytes`); temperature is 0 (greedy) or a finite
number >= MIN_TEMPERATURE (1e-4; a far smaller one, e.g. 1e-40, is flushed to 0 in float32
or overflows the logits / temperature to inf, and the samples were garbage); top_p in (0, 1];
seed in [0, 2**32 - 1].
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moejax.layers.attention import KVCache, empty_kv_cache
from moejax.layers.mla import MLACache, empty_mla_cache
from moejax.models.decoder import DecoderSpec, layer_stacks
from moejax.models.hf_families import COMMON_WRITTEN
from moejax.options import check_int

# prompt + new tokens when the model declares no context length (an HF export's default)
MAX_POSITIONS = COMMON_WRITTEN["max_position_embeddings"]
MIN_TEMPERATURE = 1e-4  # the smallest sampling temperature (0 is greedy)


class Generation(NamedTuple):
    """tokens: [B, S + N] the prompt then the N new tokens; expert_idx: [B, N, R, k] each
    new token's experts per router (depth order, as the routing record), None without MoE."""

    tokens: jax.Array
    expert_idx: jax.Array | None


def init_cache(spec: DecoderSpec, batch: int, length: int, dtype) -> tuple:
    """Empty KV caches of `length` slots for every layer of a Decoder of `spec`, as
    `Decoder.__call__`'s `cache` takes them: KVCaches, or MLACaches (latent [.., C] and RoPE
    key [.., R] per slot) when `spec.mla` is set.

    Unrolled: a tuple of one KVCache per layer (k, v [B, length, K, H], index []). Scanned: per
    stack of `layer_stacks(spec)`, a tuple of one KVCache per layer of its unit, stacked over
    the repeats like the parameters (k, v [repeats, B, length, K, H], index [repeats]).
    """
    def empty(lead) -> KVCache | MLACache:
        if spec.mla is not None:
            return empty_mla_cache(batch, length, spec.mla, dtype, lead)
        return empty_kv_cache(batch, length, spec.num_kv_heads, spec.resolved_head_dim, dtype,
                              lead)

    if not spec.scan_layers:
        return tuple(empty(()) for _ in range(spec.num_layers))
    return tuple(tuple(empty((repeats,)) for _ in range(unit))
                 for _, unit, repeats in layer_stacks(spec))


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """logits [..., V] -> the same with every token outside the nucleus set to -inf: the
    fewest most probable tokens whose probability reaches `top_p` (ties by index)."""
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
    before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass ahead of each token
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[
        tuple(jnp.indices(order.shape)[:-1]) + (order,)].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def sample(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """logits [B, V] -> tokens [B]: argmax at temperature 0, else nucleus sampling."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def device_memory_bytes(device=None) -> int | None:
    """Memory of `device` (default: the first local one) in bytes: an accelerator's
    `memory_stats()["bytes_limit"]`; for a CPU device the machine's physical RAM (which every
    CPU device of the process shares); None when the platform does not say."""
    device = device or jax.local_devices()[0]
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, OSError, ValueError):
            return None
    try:
        return (device.memory_stats() or {}).get("bytes_limit")
    except (NotImplementedError, RuntimeError):
        return None


def cache_bytes(spec: DecoderSpec, batch: int, length: int, itemsize: int) -> int:
    """Bytes of `init_cache(spec, batch, length, dtype)` without the slot indices: per token
    and layer 2 K H (keys and values), or C + R with MLA (latent and RoPE key)."""
    per_token = (2 * spec.num_kv_heads * spec.resolved_head_dim if spec.mla is None
                 else spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim)
    return spec.num_layers * batch * length * per_token * itemsize


def _check(prompt, max_new_tokens: int, temperature: float, top_p: float, seed: int,
           vocab: int):
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt has shape {prompt.shape}; allowed: [B, S] with S >= 1")
    if prompt.dtype.kind not in "iuO":  # "O": Python ints too large for int64
        raise ValueError(f"prompt has dtype {prompt.dtype}; allowed: integer token ids")
    check_int("max_new_tokens", max_new_tokens)
    if not (temperature == 0.0 or (math.isfinite(temperature)
                                   and temperature >= MIN_TEMPERATURE)):
        raise ValueError(f"temperature={temperature}; allowed: 0 (greedy) or a finite number "
                         f">= {MIN_TEMPERATURE:g}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}; allowed: in (0, 1]")
    check_int("seed", seed, 0, 2**32 - 1)
    if prompt.size and (int(prompt.min()) < 0 or int(prompt.max()) >= vocab):
        raise ValueError(f"prompt ids must lie in [0, {vocab}) (model.vocab_size), got "
                         f"[{int(prompt.min())}, {int(prompt.max())}]")


def _check_length(model, prompt_shape: tuple, max_new_tokens: int,
                  max_positions: int | None) -> None:
    """Raises ValueError when prompt + new tokens exceed the model's positions or, with the
    weights, the device's memory for the KV cache."""
    (batch, prompt_length), limit = prompt_shape, max_positions or MAX_POSITIONS
    length = prompt_length + max_new_tokens
    if length > limit:
        where = ("the model's max_position_embeddings" if max_positions
                 else "moejax's cap for a model that declares no context length")
        raise ValueError(f"prompt length {prompt_length} + max_new_tokens={max_new_tokens} = "
                         f"{length} positions; allowed: at most {limit} ({where})")
    itemsize = jnp.dtype(model.embed.embedding.dtype).itemsize
    cache = cache_bytes(model.spec, batch, length, itemsize)
    weights = sum(leaf.nbytes for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    memory = device_memory_bytes()
    if memory is not None and cache + weights > memory:
        gib = 2.0**30
        raise ValueError(f"{length} positions need a {cache / gib:.2f} GiB KV cache and "
                         f"{weights / gib:.2f} GiB of weights, more than the device's "
                         f"{memory / gib:.2f} GiB; ask for fewer new tokens")


def generate(model, prompt, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, *, max_positions: int | None = None) -> Generation:
    """Continues `prompt` [B, S] int by `max_new_tokens` tokens with a KV cache.

    Args:
      model: a Decoder (either layout); not modified.
      prompt: [B, S] int token ids, every row the same length.
      max_new_tokens: N, tokens to add.
      temperature: 0 picks the most probable token (greedy); >= MIN_TEMPERATURE samples
        from softmax(logits / temperature).
      top_p: nucleus sampling: sample only among the fewest most probable tokens whose
        probability reaches top_p (1: all).
      seed: the sampling PRNG seed.
      max_positions: the model's context length, which S + N may not exceed (None:
        MAX_POSITIONS).

    Returns:
      Generation(tokens [B, S + N], expert_idx [B, N, R, k] or None).
    """
    ids = np.asarray(prompt)  # checked before the int32 cast, which would wrap a large id
    _check(ids, max_new_tokens, temperature, top_p, seed, model.spec.vocab_size)
    prompt = jnp.asarray(ids, jnp.int32)
    _check_length(model, prompt.shape, max_new_tokens, max_positions)
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, prompt, jax.random.key(seed), max_new_tokens,
                     float(temperature), float(top_p))


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _generate(graphdef, state, prompt, key, max_new_tokens, temperature, top_p):
    """Prefill, then N one-token steps: step n feeds new token n (recording its experts) and
    samples token n + 1; the last sample is not needed."""
    model = nnx.merge(graphdef, state)
    model.eval()  # no router jitter
    batch, length = prompt.shape
    cache = init_cache(model.spec, batch, length + max_new_tokens, model.embed.embedding.dtype)
    positions = jnp.broadcast_to(jnp.arange(length), prompt.shape)
    logits, _, cache = model(prompt, positions, cache=cache)  # fills cache slots 0..S-1
    keys = jax.random.split(key, max_new_tokens + 1)
    first = sample(logits[:, -1], keys[0], temperature, top_p)
    step_graphdef, weights = nnx.split(model)  # eval mode: no jitter

    def one_token(carry, step_key):
        # the weights ride in the carry unchanged: the model's own nnx.scan must see them
        # at this trace level
        cache, weights, token, position = carry
        step_model = nnx.merge(step_graphdef, weights)
        logits, record, cache = step_model(token[:, None], jnp.full((batch, 1), position),
                                           cache=cache)
        following = sample(logits[:, -1], step_key, temperature, top_p)
        chosen = None if record is None else record.expert_idx  # [R, B, k]
        return (cache, weights, following, position + 1), (token, chosen)

    _, (new, chosen) = jax.lax.scan(
        one_token, (cache, weights, first, jnp.int32(length)), keys[1:])
    tokens = jnp.concatenate([prompt, new.T], axis=1)  # new: [N, B]
    return Generation(tokens, None if chosen is None else jnp.transpose(chosen, (2, 0, 1, 3)))
