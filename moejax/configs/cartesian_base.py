"""CartesianMoE Base (arXiv 2410.16077): 842M total / 247M active parameters.

Llama-style: vocab 32000, untied embeddings, no biases, d=768, 12 layers, 12 heads (no
grouping), dense FFN 3072 in the non-MoE layers, MoE every other layer; each Cartesian layer
has two sub-layers of N=16 half-width (1536) experts, top-2 each, plus a half-width shared
expert per sub-layer mixed by a learned 2-way softmax.

Launch:
  moejax-train --config configs/cartesian_base.py --workdir workdir/cartesian_base
  moejax-train --config configs/cartesian_base.py:small --workdir workdir/cartesian_small
The ":small" argument gives the CPU-sized version (see `shrink`).
"""

from moejax.train.config_files import sibling_config


def get_config(arg=None):
    config = sibling_config(__file__, "default")
    config.model.vocab_size = 32000  # the paper's tokenizer size (bytes use ids < 259)
    config.model.d_model = 768  # model width D
    config.model.num_layers = 12  # decoder layers
    config.model.num_heads = 12  # query heads
    config.model.num_kv_heads = 12  # no grouped-query attention
    config.model.d_ff = 3072  # dense FFN width of the non-MoE layers
    config.model.moe_every = 2  # MoE in layers 0, 2, 4, ...
    config.model.block = "cartesian"  # two routed sub-layers per MoE layer
    config.model.moe.num_experts = 16  # N sub-experts per sub-layer
    config.model.moe.top_k = 2  # k per sub-layer (2 + 2)
    config.model.moe.d_hidden = 3072  # full expert width f; sub-experts are f / 2 = 1536
    config.model.moe.num_shared_experts = 1  # one shared expert per sub-layer
    config.model.moe.shared_d_hidden = 1536  # shared expert width (half-width)
    config.model.moe.shared_mix = "softmax"  # learned 2-way softmax mix (c0, c1)
    config.train.batch_size = 8  # sequences per step
    config.train.seq_len = 1024  # tokens per sequence
    config.train.learning_rate = 3e-4  # peak learning rate
    return shrink(config) if arg == "small" else config


def shrink(config):
    """CPU size: every width divided by 6 (d 768 -> 128), 4 layers; expert counts and k kept."""
    config.model.vocab_size = 259  # byte-level tokenizer
    config.model.d_model = 128  # model width
    config.model.num_layers = 4  # two MoE layers
    config.model.num_heads = 4  # query heads
    config.model.num_kv_heads = 4  # no grouping
    config.model.d_ff = 512  # dense FFN width
    config.model.moe.d_hidden //= 6  # expert width
    config.model.moe.shared_d_hidden //= 6  # shared expert width
    config.train.batch_size = 16  # sequences per step
    config.train.seq_len = 128  # tokens per sequence
    config.train.learning_rate = 3e-3  # peak learning rate
    return config
