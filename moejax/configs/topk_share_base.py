"""Top-2-with-shared baseline of equal cost to cartesian_base (arXiv 2410.16077, Table 1).

16 full-width (3072) experts per MoE layer, top-2, plus one full-width shared expert, mixed
by the same learned 2-way softmax as CartesianMoE.

Launch:
  moejax-train --config configs/topk_share_base.py --workdir workdir/topk_share_base
  (":small" after the path: the CPU-sized version)
"""

from moejax.train.config_files import sibling_module


def get_config(arg=None):
    base = sibling_module(__file__, "cartesian_base")
    config = base.get_config()
    config.model.block = "deepseek"  # routed + shared experts in one layer
    config.model.moe.num_experts = 16  # full-width experts
    config.model.moe.top_k = 2  # experts per token
    config.model.moe.d_hidden = 3072  # full width
    config.model.moe.shared_d_hidden = 3072  # one full-width shared expert
    return base.shrink(config) if arg == "small" else config
