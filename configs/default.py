"""Default config: a small top-2 MoE decoder trained on the built-in byte-level corpus.

Launch:
  moejax-train --config configs/default.py --workdir workdir/default
Override any field, e.g. `--config.train.steps=100 --config.model.moe.engine=capacity`.
"""

import ml_collections


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.seed = 0  # PRNG seed for parameters and data order

    config.model = ml_collections.ConfigDict()  # maps one to one onto moejax.DecoderSpec
    config.model.vocab_size = 259  # 256 bytes + pad, bos, eos
    config.model.d_model = 128  # model width D
    config.model.num_layers = 4  # decoder layers
    config.model.num_heads = 4  # query heads N
    config.model.num_kv_heads = 2  # key/value heads (grouped-query attention)
    config.model.head_dim = None  # None: d_model // num_heads
    config.model.d_ff = 512  # hidden width of dense FFN layers
    config.model.rope_theta = 10000.0  # RoPE base
    config.model.norm_eps = 1e-5  # RMSNorm epsilon
    config.model.first_dense_layers = 0  # leading dense-FFN layers
    config.model.moe_every = 1  # 1: every layer MoE; 2: every other layer
    config.model.block = "topk"  # "topk" (Mixtral) or "deepseek" (shared experts)
    config.model.dtype = "float32"  # compute dtype: float32 or bfloat16

    config.model.moe = ml_collections.ConfigDict()  # maps onto moejax.MoESpec
    config.model.moe.num_experts = 8  # routed experts E
    config.model.moe.top_k = 2  # experts per token k
    config.model.moe.d_hidden = 256  # expert hidden width F
    config.model.moe.granularity = 1  # fine-grained factor m (DeepSeekMoE)
    config.model.moe.num_shared_experts = 0  # always-on shared experts S
    config.model.moe.shared_d_hidden = None  # width of each shared expert (None: F / m)
    config.model.moe.engine = "dropless"  # "dense", "capacity" or "dropless"
    config.model.moe.capacity_factor = 1.25  # capacity engine: C = ceil(cf * T * k / E)
    config.model.moe.record_cosine = False  # record per-token cosine (set by the trainer)
    config.model.moe.cosine_source = "activation"  # cosine of "activation" z or "output"

    config.model.moe.router = ml_collections.ConfigDict()  # maps onto moejax.RouterSpec
    config.model.moe.router.kind = "softmax_topk"  # softmax_topk, topk_softmax or sigmoid
    config.model.moe.router.normalize_gates = True  # renormalise the k gates to sum 1
    config.model.moe.router.scaling_factor = 1.0  # multiplies the gates
    config.model.moe.router.num_groups = 1  # group-limited routing (1 = off)
    config.model.moe.router.top_groups = 1  # groups kept per token
    config.model.moe.router.use_bias = False  # selection-only bias (aux-loss-free balancing)
    config.model.moe.router.jitter = 0.0  # multiplicative input jitter in training

    config.loss = ml_collections.ConfigDict()  # maps onto moejax.regularizers.LossSpec
    config.loss.lb = 1e-2  # load-balance weight
    config.loss.lb_variant = "batch"  # "batch", "sequence" or "global"
    config.loss.z = 0.0  # router z-loss weight
    config.loss.sp = 2e-3  # intra-layer specialization weight (paper A)
    config.loss.sp_mode = "square"  # "square" or "abs" cosine penalty
    config.loss.sp_max_tokens = None  # evaluate sp on an evenly spaced token subset
    config.loss.cp = 1e-3  # cross-layer coupling weight (paper A)
    config.loss.cp_form = "product"  # "product" or "log"
    config.loss.cp_stop_gradient_deeper = False  # deeper router as a fixed teacher
    config.loss.orth = 0.0  # orthogonality baseline weight
    config.loss.var = 0.0  # router-score variance baseline weight
    config.loss.bias_rate = 0.0  # aux-loss-free bias update rate (needs router.use_bias)

    config.train = ml_collections.ConfigDict()
    config.train.steps = 300  # optimizer steps
    config.train.batch_size = 16  # sequences per step
    config.train.seq_len = 128  # tokens per sequence
    config.train.learning_rate = 3e-3  # peak learning rate
    config.train.warmup_steps = 30  # linear warmup, then cosine decay
    config.train.weight_decay = 0.1  # AdamW weight decay
    config.train.log_every = 25  # steps between progress lines
    config.train.eval_batches = 4  # validation batches per evaluation
    return config
