"""Qwen1.5-MoE-A2.7B-shaped (Qwen/Qwen1.5-MoE-A2.7B): 24 layers, d=2048, 16 heads with q/k/v
biases, 60 experts of width 1408 (top-4) plus one shared expert of width 5632 under a sigmoid
gate, every layer MoE (14,315,784,192 parameters, 2,689,173,504 active: the published 14.3B /
2.7B), bf16 compute, sequence 4096.

The model options are the hub's config.json read by `spec_from_hf_config`, so the shapes are
the released model's. A shape for planning, not the weights (those come in through
`moejax-hf import`). Plan it on 8 fake devices:
  JAX_NUM_CPU_DEVICES=8 moejax-train --config qwen1_5_moe_a2_7b --workdir /tmp/q --dry-run
Its plan for 8 x H100 80 GB is in docs/plans.md.
"""

from moejax.models.hf_config import spec_from_hf_config
from moejax.train.config_files import default_config_for

HF_CONFIG = {  # Qwen/Qwen1.5-MoE-A2.7B config.json (the keys that shape the model)
    "model_type": "qwen2_moe", "vocab_size": 151936, "hidden_size": 2048,
    "intermediate_size": 5632, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24,
    "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 60,
    "num_experts_per_tok": 4, "norm_topk_prob": False, "decoder_sparse_step": 1,
    "rms_norm_eps": 1e-6, "rope_theta": 1e6, "use_sliding_window": False,
    "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 8192}


def get_config(arg=None):
    spec = spec_from_hf_config(HF_CONFIG, dtype="bfloat16", remat="full")
    config = default_config_for(spec)
    config.train.update(batch_size=8, seq_len=4096, learning_rate=3e-4,
                        warmup_steps=2000, steps=100000)
    config.mesh.update(data=1, fsdp=8, expert=1, tensor=1)
    return config
