"""Fine-grained baseline of equal cost to cartesian_base (arXiv 2410.16077, Table 1).

32 half-width (1536) experts per MoE layer, top-4, plus one shared expert of width 3072 (the
same active size as CartesianMoE's 2 + 2 picks and two half-width shared experts), mixed by
the same learned 2-way softmax, so that only the routing structure differs.

Launch:
  moejax-train --config configs/finegrained_base.py --workdir workdir/finegrained_base
  (":small" after the path: the CPU-sized version)
"""

from moejax.train.config_files import sibling_module


def get_config(arg=None):
    base = sibling_module(__file__, "cartesian_base")
    config = base.get_config()
    config.model.block = "deepseek"  # routed + shared experts in one layer
    config.model.moe.num_experts = 32  # half-width experts
    config.model.moe.top_k = 4  # experts per token
    config.model.moe.d_hidden = 1536  # half width
    config.model.moe.shared_d_hidden = 3072  # one full-width shared expert
    return base.shrink(config) if arg == "small" else config
