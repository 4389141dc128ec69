"""OLMoE-1B-7B-shaped (allenai/OLMoE-1B-7B-0924): 16 layers, d=2048, 16 heads with q/k
RMSNorm over the whole projection, 64 experts of width 1024, top-8, every layer MoE
(6,919,161,856 parameters, 1,282,017,280 active: the published 6.9B / 1.3B), bf16 compute,
sequence 4096.

The model options are the hub's config.json read by `spec_from_hf_config`, so the shapes are
the released model's. A shape for planning, not the weights (those come in through
`moejax-hf import`). Plan it on 8 fake devices:
  JAX_NUM_CPU_DEVICES=8 moejax-train --config configs/olmoe_1b_7b.py --workdir /tmp/o --dry-run
Its plan for 8 x H100 80 GB is in docs/plans.md.
"""

from moejax.models.hf_config import spec_from_hf_config
from moejax.train.config_files import default_config_for

HF_CONFIG = {  # allenai/OLMoE-1B-7B-0924 config.json (the keys that shape the model)
    "model_type": "olmoe", "vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 1024,
    "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
    "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False, "clip_qkv": None,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
    "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
    "max_position_embeddings": 4096}


def get_config(arg=None):
    spec = spec_from_hf_config(HF_CONFIG, dtype="bfloat16", remat="full")
    config = default_config_for(spec)
    config.train.update(batch_size=8, seq_len=4096, learning_rate=4e-4,
                        warmup_steps=2000, steps=100000)
    config.mesh.update(data=1, fsdp=8, expert=1, tensor=1)
    return config
