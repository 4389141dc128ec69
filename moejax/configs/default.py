"""Default config: a small top-2 MoE decoder trained on the built-in byte-level corpus.

Launch:
  moejax-train --config configs/default.py --workdir workdir/default
Override any field, e.g. `--config.train.steps=100 --config.model.moe.engine=capacity`.
"""

import ml_collections


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.seed = 0  # PRNG seed for parameters and data order
    config.model = _model()
    config.data = _data()
    config.mesh = _mesh()
    config.loss = _loss()
    config.train = _train()
    # evaluators in training: config.evals.<name> = dict(kind=..., every=..., options), kinds
    # validation, heldout (paths=...), top1_disabled, routing, lm_eval (tasks=...), default;
    # empty: the default set (val_loss, eval/domain_loss, ... every train.eval_every steps)
    config.evals = ml_collections.ConfigDict()
    return config


def _model():
    """The model options (`config.model`)."""
    model = ml_collections.ConfigDict()  # maps one to one onto moejax.DecoderSpec
    model.vocab_size = 259  # 256 bytes + pad, bos, eos
    model.d_model = 128  # model width D
    model.num_layers = 4  # decoder layers
    model.num_heads = 4  # query heads N
    model.num_kv_heads = 2  # key/value heads (grouped-query attention)
    model.head_dim = ml_collections.config_dict.placeholder(int)  # None: d_model // heads
    model.d_ff = 512  # hidden width of dense FFN layers
    model.rope_theta = 10000.0  # RoPE base
    model.norm_eps = 1e-5  # RMSNorm epsilon
    model.first_dense_layers = 0  # leading dense-FFN layers
    model.moe_every = 1  # 1: every layer MoE; 2: every other layer
    model.block = "topk"  # "topk" (Mixtral) or "deepseek" (shared experts)
    model.dtype = "float32"  # compute dtype: float32 or bfloat16
    # parameters in memory: None (float32) or "bfloat16" (float32 master weights in training)
    model.param_dtype = ml_collections.config_dict.placeholder(str)
    model.attention = "xla"  # jax.nn.dot_product_attention: "xla" or "cudnn" (GPU)
    model.remat = "none"  # per layer: "none", "full" or "save_dots_except_experts"
    # stack the layers over depth and run them with nnx.scan (compile time flat in depth)
    model.scan_layers = True

    model.moe = ml_collections.ConfigDict()  # maps onto moejax.MoESpec
    model.moe.num_experts = 8  # routed experts E
    model.moe.top_k = 2  # experts per token k
    model.moe.d_hidden = 256  # expert hidden width F
    model.moe.granularity = 1  # fine-grained factor m (DeepSeekMoE)
    model.moe.num_shared_experts = 0  # always-on shared experts S
    # width of each shared expert (None: F / m)
    model.moe.shared_d_hidden = ml_collections.config_dict.placeholder(int)
    # shared experts: "sum", a learned 2-way "softmax" or a "sigmoid" gate (Qwen2-MoE)
    model.moe.shared_mix = "sum"
    # CartesianMoE sub-expert width (None: d_hidden // 2)
    model.moe.sub_d_hidden = ml_collections.config_dict.placeholder(int)
    model.moe.engine = "dropless"  # "dense", "capacity" or "dropless"
    # dropless engine's grouped matmul: "auto" (tiled on CPU; tokamax on GPU when installed,
    # else ragged_dot), "tiled", "ragged_dot" or "tokamax"
    model.moe.grouped_matmul = "auto"
    # fused top-k dispatch and pairwise-cosine kernels: "auto" (jnp until checked on a GPU),
    # "pallas" (interpret mode on CPU: slow) or "jnp"
    model.moe.implementation = "auto"
    model.moe.capacity_factor = 1.25  # capacity engine: C = ceil(cf * T * k / E)
    model.moe.record_cosine = False  # per-token cosine in the record (on if a loss needs it)
    model.moe.cosine_source = "activation"  # cosine of "activation" z or "output"

    model.moe.router = ml_collections.ConfigDict()  # maps onto moejax.RouterSpec
    model.moe.router.kind = "softmax_topk"  # softmax_topk, topk_softmax or sigmoid
    model.moe.router.normalize_gates = True  # renormalise the k gates to sum 1
    model.moe.router.scaling_factor = 1.0  # multiplies the gates
    model.moe.router.num_groups = 1  # group-limited routing (1 = off)
    model.moe.router.top_groups = 1  # groups kept per token
    model.moe.router.use_bias = False  # selection-only bias (aux-loss-free balancing)
    model.moe.router.jitter = 0.0  # multiplicative input jitter in training
    return model


def _data():
    """The data options (`config.data`)."""
    data = ml_collections.ConfigDict()  # maps onto moejax.data.pipeline.DataSpec
    # "stdlib", "files" (text, .gz/.zst too), "jsonl" (.gz/.zst too), "parquet", "hf_dataset"
    # (a dataset's save_to_disk directory) or "arrayrecord" (moejax-prepare's shards)
    data.corpus = "stdlib"
    data.paths = ()  # files/globs, or the one directory ("hf_dataset", "arrayrecord")
    data.text_field = "text"  # record key of the document text
    # record key of the domain name; None: the file's parent directory name
    data.domain_field = ml_collections.config_dict.placeholder(str)
    data.domains = ()  # shell patterns of the domains to read (both splits); (): all
    data.exclude_domains = ()  # shell patterns of domains to leave out
    data.validation_every = 20  # one document in this many (per domain) is validation
    data.chunk_bytes = 1 << 20  # longer documents are cut into chunks before the split
    data.num_threads = 1  # grain reader threads preparing batches ahead (0: synchronous)
    data.prefetch_buffer_size = 4  # batches prepared ahead
    # seed of the evaluation's sample of validation windows (None: the run's seed, so each seed
    # evaluates its own sample); set, every run evaluates the same windows in the same order
    data.validation_seed = ml_collections.config_dict.placeholder(int)
    # unset (None) options below take their moejax.data.corpus.DataSpec defaults
    # "bytes" (default) or a Hugging Face tokenizer.json / a directory holding one
    data.tokenizer = ml_collections.config_dict.placeholder(str)
    # record keys of instruction data: prompt + completion, or a chat rendered with the
    # tokenizer's chat template
    data.prompt_field = ml_collections.config_dict.placeholder(str)
    data.completion_field = ml_collections.config_dict.placeholder(str)
    data.messages_field = ml_collections.config_dict.placeholder(str)
    # "all" (default: every token is a target) or "completion" (instruction data's answers)
    data.loss_on = ml_collections.config_dict.placeholder(str)
    # ((domain pattern, weight), ...): the training split's token shares; (): the corpus's own
    data.mixture = ()
    # resume although the data files changed since the checkpoint (default False)
    data.accept_changed_data = ml_collections.config_dict.placeholder(bool)
    return data


def _mesh():
    """The device mesh (`config.mesh`)."""
    mesh = ml_collections.ConfigDict()  # maps onto moejax.parallel.MeshSpec
    mesh.data = -1  # data-parallel axis (-1: all devices not used by the others)
    mesh.fsdp = 1  # fully sharded data parallel: batch and parameter model width
    mesh.expert = 1  # expert weights over this axis; must divide num_experts
    mesh.tensor = 1  # attention heads and hidden widths over this axis
    mesh.devices = -1  # devices the mesh uses (-1: all; else the first N)
    # how routed experts run over mesh.expert: "none" (XLA partitions them), or shard_map
    # "all_to_all" (needs moe.engine="capacity"), "ring" (dropless, any device), "ragged"
    # (dropless, GPU/TPU only)
    mesh.expert_parallel = "none"
    # all_to_all: rows per device pair as a multiple of the balanced load (None: never drops)
    mesh.pair_capacity_factor = ml_collections.config_dict.placeholder(float)
    return mesh


def _loss():
    """The regularizer weights (`config.loss`)."""
    loss = ml_collections.ConfigDict()  # maps onto moejax.regularizers.LossSpec
    loss.lb = 1e-2  # load-balance weight
    loss.lb_variant = "batch"  # "batch", "sequence" or "global"
    loss.z = 0.0  # router z-loss weight
    loss.sp = 2e-3  # intra-layer specialization weight (paper A)
    loss.sp_mode = "square"  # "square" or "abs" cosine penalty
    # evaluate sp on an evenly spaced subset of this many tokens (None: all)
    loss.sp_max_tokens = ml_collections.config_dict.placeholder(int)
    loss.cp = 1e-3  # cross-layer coupling weight (paper A)
    loss.cp_form = "product"  # "product" or "log"
    loss.cp_stop_gradient_deeper = False  # deeper router as a fixed teacher
    loss.orth = 0.0  # orthogonality baseline weight
    loss.var = 0.0  # router-score variance baseline weight
    loss.bias_rate = 0.0  # aux-loss-free bias update rate (needs router.use_bias)
    return loss


def _train():
    """The training options (`config.train`)."""
    train = ml_collections.ConfigDict()
    train.steps = 300  # optimizer steps
    train.batch_size = 16  # sequences per step
    train.seq_len = 128  # tokens per sequence
    train.learning_rate = 3e-3  # peak learning rate
    train.warmup_steps = 30  # linear warmup, then the schedule's decay
    train.weight_decay = 0.1  # AdamW weight decay
    train.min_lr_ratio = 0.1  # final learning rate / peak
    # the learning rate after the warmup: "cosine" (None: the default) decays to the final
    # rate at decay_steps; "wsd" (warmup-stable-decay) holds the peak, then decays linearly
    train.schedule = ml_collections.config_dict.placeholder(str)
    # the step at which the decay ends, the final rate held after it (None: train.steps of the
    # run that started the workdir; kept in its checkpoints, so a resume with more train.steps
    # changes no step's learning rate)
    train.decay_steps = ml_collections.config_dict.placeholder(int)
    # schedule="wsd" only: steps of the final linear decay (None: a fifth of decay_steps)
    train.cooldown_steps = ml_collections.config_dict.placeholder(int)
    train.b1 = 0.9  # AdamW beta1
    train.b2 = 0.95  # AdamW beta2
    train.grad_clip = 1.0  # global-norm gradient clipping (0 = off)
    train.grad_accumulation = 1  # micro-steps per optimizer update
    train.log_every = 25  # steps between metrics.jsonl rows
    train.eval_every = 100  # steps between evaluations (and at the end)
    train.eval_batches = 4  # validation batches per evaluation
    train.eval_top1_disabled = True  # also evaluate with each token's top-1 expert off
    train.checkpoint_every = 100  # steps between checkpoints (and at the end)
    train.max_to_keep = 3  # checkpoints kept
    train.async_checkpoint = True  # write checkpoints in the background
    train.tensorboard = False  # also write TensorBoard events (needs tensorboardX)
    # also log to this Weights & Biases project (None: off; pip install 'moejax[wandb]'); W&B's
    # variables choose the rest (WANDB_MODE=offline: files under workdir/wandb only)
    train.wandb = ml_collections.config_dict.placeholder(str)
    # also log to this MLflow tracking URI (None: off; pip install 'moejax[mlflow]'), e.g.
    # http://host:5000; the experiment is MLFLOW_EXPERIMENT_NAME, else "moejax"
    train.mlflow = ml_collections.config_dict.placeholder(str)
    train.progress = True  # progress bar on the terminal
    train.report = True  # write plots and report.md at the end
    # peak TFLOP/s per device for mfu (None: from the device kind; CPUs log no mfu)
    train.peak_tflops = ml_collections.config_dict.placeholder(float)
    train.profile_steps = ()  # (first, last): jax.profiler trace into workdir/profile
    # a moejax export or Hugging Face directory to start from (fine-tuning); None: random
    train.init_from = ml_collections.config_dict.placeholder(str)
    # float32 master weights in the optimizer for bfloat16 parameters (model.param_dtype):
    # None: on exactly for bfloat16 (Megatron's bf16, MaxText's weight_dtype + float32 copy);
    # False with bfloat16: pure bfloat16 (moments too); True with float32 is an error
    train.master_weights = ml_collections.config_dict.placeholder(bool)
    return train
