"""A ~110M-parameter MoE (8 layers, d=512, 8 experts of width 1024, top-2; 34M active) in
bf16 for the GPU check (`benchmarks/gpu_check.sh`): 200 steps of 32 x 1024 tokens.

Launch:
  moejax-train --config configs/gpu_100m.py --workdir /tmp/moejax-gpu100m
"""

from moejax.train.config_files import sibling_config


def get_config(arg=None):
    config = sibling_config(__file__, "default")
    config.model.update(d_model=512, num_layers=8, num_heads=8, num_kv_heads=8, d_ff=2048,
                        dtype="bfloat16")
    config.model.moe.update(num_experts=8, top_k=2, d_hidden=1024)
    config.train.update(steps=200, batch_size=32, seq_len=1024, warmup_steps=20, log_every=50,
                        eval_every=200, checkpoint_every=200, report=False)
    return config
