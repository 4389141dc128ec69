"""Moonlight-16B-A3B-shaped (moonshotai/Moonlight-16B-A3B, a DeepSeek-V3 model): 27 layers
(the first dense), d=2048, 16 heads of Multi-head Latent Attention (latent 512, no query
low-rank, RoPE 64 + 128 per head), 64 routed experts of width 1408 (top-6, sigmoid scores,
gates x2.446) plus 2 shared ones (15,960,108,544 parameters, 2,914,774,528 active: the
published ~16B / ~3B), bf16 compute, sequence 4096.

The model options are the hub's config.json read by `spec_from_hf_config`, so the shapes are
the released model's. A shape for planning, not the weights (those come in through
`moejax-hf import`). Plan it on 8 fake devices:
  JAX_NUM_CPU_DEVICES=8 moejax-train --config moonlight_16b_a3b --workdir /tmp/l --dry-run
Its plan for 8 x H100 80 GB is in docs/plans.md (86.8 GiB per device: sequence 2048 fits).
"""

from moejax.models.hf_config import spec_from_hf_config
from moejax.train.config_files import default_config_for

HF_CONFIG = {  # moonshotai/Moonlight-16B-A3B config.json (the keys that shape the model)
    "model_type": "deepseek_v3", "vocab_size": 163840, "hidden_size": 2048,
    "intermediate_size": 11264, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2,
    "n_routed_experts": 64, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
    "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128, "v_head_dim": 128, "n_group": 1, "topk_group": 1,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "routed_scaling_factor": 2.446,
    "norm_topk_prob": True, "num_nextn_predict_layers": 0, "rms_norm_eps": 1e-5,
    "rope_theta": 50000.0, "rope_scaling": None, "tie_word_embeddings": False,
    "hidden_act": "silu", "attention_bias": False, "max_position_embeddings": 8192}


def get_config(arg=None):
    spec = spec_from_hf_config(HF_CONFIG, dtype="bfloat16", remat="full")
    config = default_config_for(spec)
    config.train.update(batch_size=8, seq_len=4096, learning_rate=3e-4,
                        warmup_steps=2000, steps=100000)
    config.mesh.update(data=1, fsdp=8, expert=1, tensor=1)
    return config
