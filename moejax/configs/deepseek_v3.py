"""DeepSeek-V3-shaped (deepseek-ai/DeepSeek-V3, without its multi-token prediction module):
61 layers (the first 3 dense), d=7168, 128 heads of Multi-head Latent Attention (latent 512,
query low-rank 1536, RoPE 64 + 128 per head, YaRN x40), 256 routed experts of width 2048
(top-8 within the best 4 of 8 groups, sigmoid scores, gates x2.5) plus 1 shared one
(671,026,404,352 parameters, 37,552,282,624 active: the published 671B / 37B, DeepSeek's
active count leaving out the embedding table), bf16 compute, sequence 4096, mesh fsdp=8 x
expert=8 (64 devices: its AdamW state alone, 8 TB, needs 128+ devices of 80 GB).

The model options are the hub's config.json read by `spec_from_hf_config`, so the shapes are
the released model's. A shape for planning, not the weights (those come in through
`moejax-hf import`). Plan it on 64 fake devices:
  JAX_NUM_CPU_DEVICES=64 moejax-train --config configs/deepseek_v3.py --workdir /tmp/v3 --dry-run
Its plans are in docs/plans.md.
"""

from moejax.models.hf_config import spec_from_hf_config
from moejax.train.config_files import default_config_for

HF_CONFIG = {  # deepseek-ai/DeepSeek-V3 config.json (the keys that shape the model)
    "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
    "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
    "n_routed_experts": 256, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
    "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128, "v_head_dim": 128, "n_group": 8, "topk_group": 4,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "routed_scaling_factor": 2.5,
    "norm_topk_prob": True, "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
    "max_position_embeddings": 163840}


def get_config(arg=None):
    spec = spec_from_hf_config(HF_CONFIG, dtype="bfloat16", remat="full")
    config = default_config_for(spec)
    config.train.update(batch_size=64, seq_len=4096, learning_rate=2.2e-4,
                        warmup_steps=2000, steps=100000)
    config.mesh.update(data=1, fsdp=8, expert=8, tensor=1)
    return config
