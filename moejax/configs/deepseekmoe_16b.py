"""DeepSeekMoE-16B-shaped: 28 layers (the first dense), d=2048, 16 heads, 64 fine-grained
routed experts of width 1408 (top-6) plus 2 shared ones, bf16 compute, sequence 4096
(16.4B parameters, 2.8B active).

A shape for planning and scaling tests, not the released weights. Plan it on 8 fake devices:
  JAX_NUM_CPU_DEVICES=8 moejax-train --config configs/deepseekmoe_16b.py --workdir /tmp/d --dry-run
Its plan for 8 x H100 80 GB is in docs/plans.md.
"""

from moejax.train.config_files import sibling_config


def get_config(arg=None):
    config = sibling_config(__file__, "default")
    config.model.update(vocab_size=102400, d_model=2048, num_layers=28, num_heads=16,
                        num_kv_heads=16, head_dim=128, d_ff=10944, first_dense_layers=1,
                        block="deepseek", dtype="bfloat16", remat="full")
    config.model.moe.update(num_experts=64, top_k=6, d_hidden=1408, num_shared_experts=2,
                            shared_d_hidden=1408)
    config.train.update(batch_size=8, seq_len=4096, learning_rate=4.2e-4,
                        warmup_steps=2000, steps=100000)
    config.mesh.update(data=1, fsdp=8, expert=1, tensor=1)
    return config
