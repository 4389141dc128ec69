"""The inference suite's measurement: a trained run's routing traces, replayed offloaded.

Paper A's inference claim: specialized experts take "more stable expert pathways", so an
inference system that keeps only some experts in fast memory fetches fewer. For one finished
run this module
1. records the routing of text, token by token: the experts each token chose in every router,
   in depth order (a causal model routes token t from tokens <= t only, so the forward pass over
   a window routes exactly as decoding it one token at a time with a KV cache does: tested for
   `moejax.generate`);
2. learns the router-to-next-router transition matrix on training-split traces;
3. replays validation-split traces (`offload.simulate`) with every router caching M of its E
   experts, M/E in CACHE_FRACTIONS, under LRU and under LRU plus prefetch;
4. returns hit rates, experts fetched per token, prefetch precision and the link-bound decode
   rate of `offload.decode_tokens_per_s` for each link of `offload.LINKS`, with experts in
   bfloat16 (3 D F 2 bytes each).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from flax import nnx

from moejax.data import pipeline
from moejax.experiments import offload
from moejax.models.weights import load_decoder

CACHE_FRACTIONS = (0.25, 0.5)  # M / E
OFFLOAD_FILE = "offload.json"


def routing_traces(model, data_spec, split: str, *, seq_len: int, batch_size: int,
                   batches: int, seed: int) -> np.ndarray:
    """[N, R, k] the experts each token of `batches` batches chose per router (tokens in order
    within each window, windows one after another)."""
    data = iter(pipeline.make_dataset(data_spec, split, seq_len=seq_len, batch_size=batch_size,
                                      seed=seed, shuffle=True))
    route = nnx.jit(lambda model, tokens, segments: model(tokens, segments=segments)[1])
    out = []
    for _ in range(batches):
        batch = next(data)
        record = route(model, batch["tokens"][:, :-1], batch["segments"][:, :-1])
        out.append(np.asarray(record.expert_idx).transpose(1, 0, 2))  # [R, T, k] -> [T, R, k]
    return np.concatenate(out)


def offload_metrics(model, data_spec, *, seq_len: int, batch_size: int, batches: int,
                    seed: int) -> dict:
    """{metric name: value} for one trained model (see the module docstring)."""
    spec = model.spec
    num_experts = spec.moe.routed_experts
    options = dict(seq_len=seq_len, batch_size=batch_size, batches=batches, seed=seed)
    learned = offload.transition_matrix(
        routing_traces(model, data_spec, "train", **options), num_experts)
    held_out = routing_traces(model, data_spec, "validation", **options)
    expert_bytes = 3 * spec.d_model * spec.moe.routed_d_hidden * 2
    out = {}
    for fraction in CACHE_FRACTIONS:
        capacity = max(held_out.shape[2], round(fraction * num_experts))
        for policy in offload.POLICIES:
            stats = offload.simulate(held_out, num_experts, capacity, policy=policy,
                                     transitions=learned)
            tag = f"{policy}@{fraction:g}"
            out[f"hit_rate {tag}"] = stats.hit_rate
            out[f"fetched/token {tag}"] = stats.fetched_per_token
            if policy == "prefetch":
                out[f"prefetch_precision {tag}"] = stats.prefetch_precision
            for link, bandwidth in offload.LINKS.items():
                out[f"tokens/s {link} {tag}"] = offload.decode_tokens_per_s(
                    stats, expert_bytes, bandwidth)
    return out


def measure_run(directory: pathlib.Path, config) -> dict:
    """`offload_metrics` of the finished run in `directory`, kept in its offload.json (measured
    once: a later call reads the file)."""
    path = pathlib.Path(directory) / OFFLOAD_FILE
    if path.exists():
        return json.loads(path.read_text())
    model = load_decoder(directory)
    train = config.train
    metrics = offload_metrics(model, pipeline.data_spec_from_config(config.get("data")),
                              seq_len=train.seq_len, batch_size=train.batch_size,
                              batches=train.eval_batches, seed=config.seed)
    path.write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics
