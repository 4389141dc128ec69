"""Mixtral-8x7B-shaped: 32 layers, d=4096, 32 query / 8 key-value heads, 8 experts of width
14336, top-2 (46.7B parameters, 12.9B active), bf16 compute, sequence 4096.

A shape for planning and scaling tests, not the released weights (those come in through the
Hugging Face import). Plan it on 8 fake devices before renting them:
  JAX_NUM_CPU_DEVICES=8 moejax-train --config configs/mixtral_8x7b.py --workdir /tmp/m --dry-run
Its plan for 8 x H100 80 GB is in docs/plans.md.
"""

from moejax.train.config_files import sibling_config


def get_config(arg=None):
    config = sibling_config(__file__, "default")
    config.model.update(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32,
                        num_kv_heads=8, head_dim=128, d_ff=14336, rope_theta=1e6,
                        dtype="bfloat16", remat="full")
    config.model.moe.update(num_experts=8, top_k=2, d_hidden=14336)
    config.train.update(batch_size=8, seq_len=4096, learning_rate=3e-4,
                        warmup_steps=2000, steps=100000)
    config.mesh.update(data=1, fsdp=8, expert=1, tensor=1)
    return config
