"""Tiny config for tests and smoke runs: two layers, six experts, a handful of steps.

Launch:
  moejax-train --config configs/tiny.py --workdir /tmp/moejax-tiny
"""

from moejax.train.config_files import sibling_config


def get_config(arg=None):
    config = sibling_config(__file__, "default")
    config.model.d_model = 32  # model width D
    config.model.num_layers = 2  # decoder layers
    config.model.num_heads = 2  # query heads
    config.model.num_kv_heads = 1  # key/value heads
    config.model.d_ff = 64  # dense FFN width
    config.model.moe.num_experts = 6  # routed experts
    config.model.moe.top_k = 3  # experts per token
    config.model.moe.d_hidden = 16  # expert width
    config.mesh.devices = 1  # one device, also under the tests' 8 fake CPU devices
    config.train.steps = 4  # optimizer steps
    config.train.batch_size = 2  # sequences per step
    config.train.seq_len = 16  # tokens per sequence
    config.train.warmup_steps = 1  # warmup steps
    config.train.log_every = 2  # steps between progress lines
    config.train.eval_batches = 1  # validation batches
    return config
