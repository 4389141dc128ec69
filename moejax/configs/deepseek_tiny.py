"""Tiny DeepSeekMoE: one dense layer, then fine-grained routed experts plus shared experts.

Launch:
  moejax-train --config configs/deepseek_tiny.py --workdir /tmp/moejax-deepseek
"""

from moejax.train.config_files import sibling_config


def get_config(arg=None):
    config = sibling_config(__file__, "tiny")
    config.model.num_layers = 3  # decoder layers
    config.model.first_dense_layers = 1  # layer 0 is a dense FFN
    config.model.block = "deepseek"  # shared + fine-grained routed experts
    config.model.moe.num_experts = 4  # experts before fine-graining
    config.model.moe.top_k = 1  # choices before fine-graining
    config.model.moe.granularity = 2  # 8 experts of width 8, top-2
    config.model.moe.num_shared_experts = 1  # one shared expert of width 8
    return config
