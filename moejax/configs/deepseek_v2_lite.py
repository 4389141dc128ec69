"""DeepSeek-V2-Lite-shaped (deepseek-ai/DeepSeek-V2-Lite): 27 layers (the first dense),
d=2048, 16 heads of Multi-head Latent Attention (latent 512, no query low-rank, RoPE 64 +
128 per head, YaRN x40), 64 routed experts of width 1408 (top-6) plus 2 shared ones
(15,706,484,224 parameters, 2,661,150,208 active: the published 15.7B / 2.4B, DeepSeek's
active count leaving out the embedding table), bf16 compute, sequence 4096.

The model options are the hub's config.json read by `spec_from_hf_config`, so the shapes are
the released model's. A shape for planning, not the weights (those come in through
`moejax-hf import`). Plan it on 8 fake devices:
  JAX_NUM_CPU_DEVICES=8 moejax-train --config configs/deepseek_v2_lite.py --workdir /tmp/d --dry-run
Its plan for 8 x H100 80 GB is in docs/plans.md.
"""

from moejax.models.hf_config import spec_from_hf_config
from moejax.train.config_files import default_config_for

HF_CONFIG = {  # deepseek-ai/DeepSeek-V2-Lite config.json (the keys that shape the model)
    "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048,
    "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2,
    "n_routed_experts": 64, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
    "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128, "v_head_dim": 128, "topk_method": "greedy", "n_group": 1,
    "topk_group": 1, "routed_scaling_factor": 1.0, "norm_topk_prob": False,
    "scoring_func": "softmax", "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                     "mscale_all_dim": 0.707},
    "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
    "max_position_embeddings": 163840}


def get_config(arg=None):
    spec = spec_from_hf_config(HF_CONFIG, dtype="bfloat16", remat="full")
    config = default_config_for(spec)
    config.train.update(batch_size=8, seq_len=4096, learning_rate=4.2e-4,
                        warmup_steps=2000, steps=100000)
    config.mesh.update(data=1, fsdp=8, expert=1, tensor=1)
    return config
