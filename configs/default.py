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
    config.model.head_dim = ml_collections.config_dict.placeholder(int)  # None: d_model // heads
    config.model.d_ff = 512  # hidden width of dense FFN layers
    config.model.rope_theta = 10000.0  # RoPE base
    config.model.norm_eps = 1e-5  # RMSNorm epsilon
    config.model.first_dense_layers = 0  # leading dense-FFN layers
    config.model.moe_every = 1  # 1: every layer MoE; 2: every other layer
    config.model.block = "topk"  # "topk" (Mixtral) or "deepseek" (shared experts)
    config.model.dtype = "float32"  # compute dtype: float32 or bfloat16
    config.model.attention = "xla"  # jax.nn.dot_product_attention: "xla" or "cudnn" (GPU)
    config.model.remat = "none"  # per layer: "none", "full" or "save_dots_except_experts"
    # stack the layers over depth and run them with nnx.scan (compile time flat in depth)
    config.model.scan_layers = True

    config.model.moe = ml_collections.ConfigDict()  # maps onto moejax.MoESpec
    config.model.moe.num_experts = 8  # routed experts E
    config.model.moe.top_k = 2  # experts per token k
    config.model.moe.d_hidden = 256  # expert hidden width F
    config.model.moe.granularity = 1  # fine-grained factor m (DeepSeekMoE)
    config.model.moe.num_shared_experts = 0  # always-on shared experts S
    # width of each shared expert (None: F / m)
    config.model.moe.shared_d_hidden = ml_collections.config_dict.placeholder(int)
    config.model.moe.shared_mix = "sum"  # shared experts: "sum" or learned 2-way "softmax"
    # CartesianMoE sub-expert width (None: d_hidden // 2)
    config.model.moe.sub_d_hidden = ml_collections.config_dict.placeholder(int)
    config.model.moe.engine = "dropless"  # "dense", "capacity" or "dropless"
    # dropless engine's grouped matmul: "auto" (tiled on CPU; tokamax on GPU when installed,
    # else ragged_dot), "tiled", "ragged_dot" or "tokamax"
    config.model.moe.grouped_matmul = "auto"
    # fused top-k dispatch and pairwise-cosine kernels: "auto" (jnp until checked on a GPU),
    # "pallas" (interpret mode on CPU: slow) or "jnp"
    config.model.moe.implementation = "auto"
    config.model.moe.capacity_factor = 1.25  # capacity engine: C = ceil(cf * T * k / E)
    config.model.moe.record_cosine = False  # per-token cosine in the record (on if a loss needs it)
    config.model.moe.cosine_source = "activation"  # cosine of "activation" z or "output"

    config.model.moe.router = ml_collections.ConfigDict()  # maps onto moejax.RouterSpec
    config.model.moe.router.kind = "softmax_topk"  # softmax_topk, topk_softmax or sigmoid
    config.model.moe.router.normalize_gates = True  # renormalise the k gates to sum 1
    config.model.moe.router.scaling_factor = 1.0  # multiplies the gates
    config.model.moe.router.num_groups = 1  # group-limited routing (1 = off)
    config.model.moe.router.top_groups = 1  # groups kept per token
    config.model.moe.router.use_bias = False  # selection-only bias (aux-loss-free balancing)
    config.model.moe.router.jitter = 0.0  # multiplicative input jitter in training

    config.data = ml_collections.ConfigDict()  # maps onto moejax.data.pipeline.DataSpec
    # "stdlib", "files" (text, .gz/.zst too), "jsonl" (.gz/.zst too), "parquet", "hf_dataset"
    # (a dataset's save_to_disk directory) or "arrayrecord" (moejax-prepare's shards)
    config.data.corpus = "stdlib"
    config.data.paths = ()  # files/globs, or the one directory ("hf_dataset", "arrayrecord")
    config.data.text_field = "text"  # record key of the document text
    # record key of the domain name; None: the file's parent directory name
    config.data.domain_field = ml_collections.config_dict.placeholder(str)
    config.data.domains = ()  # shell patterns of the domains to read (both splits); (): all
    config.data.exclude_domains = ()  # shell patterns of domains to leave out
    config.data.validation_every = 20  # one document in this many (per domain) is validation
    config.data.chunk_bytes = 1 << 20  # longer documents are cut into chunks before the split
    config.data.num_threads = 1  # grain reader threads preparing batches ahead (0: synchronous)
    config.data.prefetch_buffer_size = 4  # batches prepared ahead
    # unset (None) options below take their moejax.data.corpus.DataSpec defaults
    # "bytes" (default) or a Hugging Face tokenizer.json / a directory holding one
    config.data.tokenizer = ml_collections.config_dict.placeholder(str)
    # record keys of instruction data: prompt + completion, or a chat rendered with the
    # tokenizer's chat template
    config.data.prompt_field = ml_collections.config_dict.placeholder(str)
    config.data.completion_field = ml_collections.config_dict.placeholder(str)
    config.data.messages_field = ml_collections.config_dict.placeholder(str)
    # "all" (default: every token is a target) or "completion" (instruction data's answers)
    config.data.loss_on = ml_collections.config_dict.placeholder(str)
    # ((domain pattern, weight), ...): the training split's token shares; (): the corpus's own
    config.data.mixture = ()
    # resume although the data files changed since the checkpoint (default False)
    config.data.accept_changed_data = ml_collections.config_dict.placeholder(bool)

    config.mesh = ml_collections.ConfigDict()  # maps onto moejax.parallel.MeshSpec
    config.mesh.data = -1  # data-parallel axis (-1: all devices not used by the others)
    config.mesh.fsdp = 1  # fully sharded data parallel: batch and parameter model width
    config.mesh.expert = 1  # expert weights over this axis; must divide num_experts
    config.mesh.tensor = 1  # attention heads and hidden widths over this axis
    config.mesh.devices = -1  # devices the mesh uses (-1: all; else the first N)
    # how routed experts run over mesh.expert: "none" (XLA partitions them), or shard_map
    # "all_to_all" (needs moe.engine="capacity"), "ring" (dropless, any device), "ragged"
    # (dropless, GPU/TPU only)
    config.mesh.expert_parallel = "none"
    # all_to_all: rows per device pair as a multiple of the balanced load (None: never drops)
    config.mesh.pair_capacity_factor = ml_collections.config_dict.placeholder(float)

    config.loss = ml_collections.ConfigDict()  # maps onto moejax.regularizers.LossSpec
    config.loss.lb = 1e-2  # load-balance weight
    config.loss.lb_variant = "batch"  # "batch", "sequence" or "global"
    config.loss.z = 0.0  # router z-loss weight
    config.loss.sp = 2e-3  # intra-layer specialization weight (paper A)
    config.loss.sp_mode = "square"  # "square" or "abs" cosine penalty
    # evaluate sp on an evenly spaced subset of this many tokens (None: all)
    config.loss.sp_max_tokens = ml_collections.config_dict.placeholder(int)
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
    config.train.min_lr_ratio = 0.1  # final learning rate / peak
    config.train.b1 = 0.9  # AdamW beta1
    config.train.b2 = 0.95  # AdamW beta2
    config.train.grad_clip = 1.0  # global-norm gradient clipping (0 = off)
    config.train.grad_accumulation = 1  # micro-steps per optimizer update
    config.train.log_every = 25  # steps between metrics.jsonl rows
    config.train.eval_every = 100  # steps between evaluations (and at the end)
    config.train.eval_batches = 4  # validation batches per evaluation
    config.train.eval_top1_disabled = True  # also evaluate with each token's top-1 expert off
    config.train.checkpoint_every = 100  # steps between checkpoints (and at the end)
    config.train.max_to_keep = 3  # checkpoints kept
    config.train.async_checkpoint = True  # write checkpoints in the background
    config.train.tensorboard = False  # also write TensorBoard events (needs tensorboardX)
    config.train.progress = True  # progress bar on the terminal
    config.train.report = True  # write plots and report.md at the end
    # peak TFLOP/s per device for mfu (None: from the device kind; CPUs log no mfu)
    config.train.peak_tflops = ml_collections.config_dict.placeholder(float)
    config.train.profile_steps = ()  # (first, last): jax.profiler trace into workdir/profile
    # a moejax export or Hugging Face directory to start from (fine-tuning); None: random
    config.train.init_from = ml_collections.config_dict.placeholder(str)
    return config
