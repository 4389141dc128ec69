"""From a config file's ConfigDict to the typed specs, with the cross-section checks.

`specs_from_config(config)` builds every spec of a run once (`RunSpecs`: model, loss, train,
data, mesh, seed, the evaluators); the trainer, the compile plan, the step timing and the
CLI take that object. `TrainSpec` is `config.train`: every training option with its
default, checked when built.
"""

from __future__ import annotations

import dataclasses
import math

from moejax.data import pipeline
from moejax.models.decoder import DecoderSpec, decoder_spec_from_config
from moejax.options import check_choice, check_int, spec_from_mapping
from moejax.parallel import MeshSpec
from moejax.regularizers import LossSpec
from moejax.reporting.writers import check_trackers, tracker_options

SCHEDULES = ("cosine", "wsd")  # train.schedule: the learning rate after the warmup


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Training options (`config.train`).

    Attributes:
      steps: optimizer steps.
      batch_size: sequences per optimizer step (the global batch, all hosts and micro-steps).
      seq_len: tokens per sequence.
      grad_accumulation: micro-batches per optimizer step; batch_size is split into this
        many equal micro-batches whose gradients are averaged.
      learning_rate: peak learning rate.
      warmup_steps: linear warmup from 0 to learning_rate, then the schedule's decay.
      min_lr_ratio: final learning rate / peak.
      schedule: the learning rate after the warmup (`moejax/train/optim.py`): "cosine"
        (None: the default) decays along a cosine to learning_rate * min_lr_ratio at step
        `decay_steps`; "wsd" (warmup-stable-decay) holds learning_rate, then decays linearly
        over the last `cooldown_steps` before `decay_steps`. Both hold the final learning
        rate after `decay_steps`.
      decay_steps: the step at which the decay ends, apart from `steps`. None: the
        `train.steps` of the run that started the workdir. The trainer resolves it when the
        run starts (`optim.resolve_decay_steps`) and the checkpoints keep it in their config,
        so a resume that changes `train.steps` changes no step's learning rate: a longer run
        holds the final learning rate after the original horizon (the trainer warns, naming
        the steps), a shorter one stops part way down. Setting it on a resume moves the
        horizon (named in the resume warning); with "wsd", raising it before the cooldown
        starts lengthens the stable phase and leaves every trained step's rate as it was.
      cooldown_steps: "wsd" only: steps of the final linear decay (None: a fifth of
        `decay_steps`, at least 1); it starts no earlier than the end of the warmup.
      weight_decay: AdamW weight decay (matrices only).
      b1, b2: AdamW betas.
      grad_clip: global-norm gradient clipping (0 = off).
      log_every: steps between metrics.jsonl rows.
      eval_every: steps between evaluations (and at the end).
      eval_batches: validation batches per evaluation.
      eval_top1_disabled: also evaluate with each token's top-1 expert disabled.
      checkpoint_every: steps between checkpoints (and at the end).
      max_to_keep: checkpoints kept.
      async_checkpoint: write checkpoints in the background.
      tensorboard: also write TensorBoard events (needs tensorboardX).
      wandb: also log to this Weights & Biases project (None: off; needs wandb); W&B's
        variables choose the rest, e.g. WANDB_MODE=offline (`reporting/writers.py`).
      mlflow: also log to this MLflow tracking URI (None: off; needs mlflow), e.g.
        http://host:5000 (sqlite: needs the full mlflow); experiment MLFLOW_EXPERIMENT_NAME.
      progress: progress bar on the terminal.
      report: write plots and report.md at the end.
      peak_tflops: peak TFLOP/s per device for `mfu` (None: from the device kind,
        `moejax/train/accounting.py`; a device not in its table logs no mfu).
      profile_steps: (first, last) steps to trace with `jax.profiler` into
        DIR/profile (TensorBoard / Perfetto format); () for none.
      init_from: a moejax export or a Hugging Face model directory whose weights start a
        fresh run (fine-tuning; `moejax/train/init_from.py`); None: random init. A run that
        resumes from its own checkpoint ignores it.
      master_weights: float32 master weights for bfloat16 parameters (`model.param_dtype`),
        as Megatron's bf16 training and MaxText's `weight_dtype` with a float32 optimizer copy
        do: the optimizer state keeps a float32 copy of every parameter and AdamW's moments in
        float32, applies each float32 update to the copy, and the model's parameters are the
        copy rounded to bfloat16 (an update smaller than half a bfloat16 step accumulates
        instead of being lost; `optim.MasterWeightsOptimizer`): 2 + 12 bytes per parameter
        (parameter + optimizer state; float32 training: 4 + 8). Checkpoints keep the copy,
        `init_from` restarts it from the loaded weights. None (default): on exactly when
        model.param_dtype is "bfloat16". False with bfloat16: pure bfloat16 training (moments
        and updates in bfloat16 too, 2 + 4 bytes). True with "float32" or "float64" parameters
        is an error (nothing to round; float64 would lose precision). A resume must keep it.
    """

    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    grad_accumulation: int = 1
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    schedule: str | None = None
    decay_steps: int | None = None
    cooldown_steps: int | None = None
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 25
    eval_every: int = 100
    eval_batches: int = 4
    eval_top1_disabled: bool = False
    checkpoint_every: int = 100
    max_to_keep: int = 3
    async_checkpoint: bool = True
    tensorboard: bool = False
    wandb: str | None = None
    mlflow: str | None = None
    progress: bool = True
    report: bool = False
    peak_tflops: float | None = None
    profile_steps: tuple = ()
    init_from: str | None = None
    master_weights: bool | None = None

    def __post_init__(self):
        at_least_one = ("steps", "batch_size", "seq_len", "grad_accumulation", "log_every",
                        "eval_every", "eval_batches", "checkpoint_every", "max_to_keep")
        for name in at_least_one:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name}={value!r}; allowed: an integer >= 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"train.learning_rate={self.learning_rate}; allowed: finite and > 0")
        ranges = dict(warmup_steps=(0, math.inf), min_lr_ratio=(0, 1), weight_decay=(0, math.inf),
                      b1=(0, 1), b2=(0, 1), grad_clip=(0, math.inf))
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not low <= value <= high or (name in ("b1", "b2") and value == 1):
                raise ValueError(f"train.{name}={value}; allowed: [{low}, {high}"
                                 f"{')' if name in ('b1', 'b2') else ']'}")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"train.peak_tflops={self.peak_tflops}; allowed: > 0 or None")
        steps = tuple(self.profile_steps)
        if steps and not (len(steps) == 2 and all(isinstance(s, int) for s in steps)
                          and 1 <= steps[0] <= steps[1]):
            raise ValueError(f"train.profile_steps={self.profile_steps!r}; allowed: () or "
                             "(first, last) with 1 <= first <= last")
        self._check_schedule()
        if self.batch_size % self.grad_accumulation:
            raise ValueError(f"train.batch_size={self.batch_size} is not divisible by "
                             f"train.grad_accumulation={self.grad_accumulation}")
        if self.master_weights not in (None, True, False):
            raise ValueError(f"train.master_weights={self.master_weights!r}; allowed: None, "
                             "True or False")

    def _check_schedule(self) -> None:
        """schedule None -> "cosine"; decay_steps and cooldown_steps None or >= 1, a cooldown
        for "wsd" only."""
        if self.schedule is None:
            object.__setattr__(self, "schedule", "cosine")
        check_choice("train.schedule", self.schedule, SCHEDULES)
        check_int("train.decay_steps", self.decay_steps, optional=True)
        check_int("train.cooldown_steps", self.cooldown_steps, optional=True)
        if self.cooldown_steps is not None and self.schedule != "wsd":
            raise ValueError(f"train.cooldown_steps={self.cooldown_steps} is the final decay "
                             "of train.schedule='wsd'; train.schedule="
                             f"{self.schedule!r} has none")


def uses_master_weights(model: DecoderSpec, train: TrainSpec) -> bool:
    """Whether the optimizer keeps float32 master weights (`train.master_weights`; None: when
    `model.param_dtype` is "bfloat16").

    Raises:
      ValueError: train.master_weights=True with float32 or float64 parameters.
    """
    narrow = model.param_dtype == "bfloat16"
    if train.master_weights and not narrow:
        raise ValueError("train.master_weights=True keeps float32 copies of bfloat16 "
                         f"parameters; model.param_dtype={model.param_dtype!r} has nothing to "
                         "round; allowed: None or False, or model.param_dtype='bfloat16'")
    return narrow if train.master_weights is None else train.master_weights


def train_spec_from_config(config) -> TrainSpec:
    """`config.train` -> TrainSpec; an unknown key or a bad value raises ValueError naming it."""
    return spec_from_mapping(TrainSpec, config.get("train"), "train")


def loss_spec_from_config(loss_config) -> LossSpec:
    """`config.loss` -> LossSpec; an unknown key raises ValueError naming it."""
    return spec_from_mapping(LossSpec, loss_config, "loss")


@dataclasses.dataclass(frozen=True)
class RunSpecs:
    """Every typed spec of one run's config, built and cross-checked once.

    Attributes:
      model: `config.model`, the blocks told to record the cosine the losses read.
      loss: `config.loss`.
      train: `config.train`.
      data: `config.data` (`moejax.data.pipeline.data_spec_from_config`).
      mesh: `config.mesh`.
      seed: `config.seed`.
      evals: `config.evals` (`evaluators.EvalSpec`s; an empty one: the default set).
    """

    model: DecoderSpec
    loss: LossSpec
    train: TrainSpec
    data: object
    mesh: MeshSpec
    seed: int
    evals: tuple = ()


def specs_from_config(config) -> RunSpecs:
    """Builds every spec of `config` and checks that the losses fit the model and that the
    model's vocabulary covers the tokenizer's (and prepared shards were written by it); an
    unknown key or a bad value anywhere raises ValueError naming it, before any work."""
    model, loss = _model_and_loss(decoder_spec_from_config(config.model),
                                  loss_spec_from_config(config.get("loss")))
    data = pipeline.data_spec_from_config(config.get("data"))
    pipeline.check_tokenizer(data, model.vocab_size)
    train = train_spec_from_config(config)
    uses_master_weights(model, train)  # its error before any work
    check_trackers(tracker_options(train))  # a tracker's missing package, too
    from moejax.train.evaluators import evals_from_config  # it imports run_data, which imports us

    return RunSpecs(model=model, loss=loss, train=train, data=data,
                    mesh=spec_from_mapping(MeshSpec, config.get("mesh"), "mesh"),
                    seed=config.get("seed", 0), evals=evals_from_config(config.get("evals"),
                                                                        train))


def _model_and_loss(model: DecoderSpec, loss: LossSpec) -> tuple[DecoderSpec, LossSpec]:
    """Checks that the losses fit the model; the blocks are told to record the per-token
    cosine that the chosen losses read."""
    k = model.moe.routed_top_k
    if (loss.sp > 0 or loss.orth > 0) and k < 2:
        raise ValueError(f"loss.sp={loss.sp} / loss.orth={loss.orth} compare pairs of "
                         f"co-activated experts and need top_k >= 2, but the model picks k={k}")
    if loss.cp > 0 and model.num_routers < 2:
        raise ValueError(f"loss.cp={loss.cp} couples adjacent routers and needs >= 2 routers, "
                         f"but the model has {model.num_routers}")
    if loss.bias_rate > 0 and not model.moe.router.use_bias:
        raise ValueError(f"loss.bias_rate={loss.bias_rate} needs model.moe.router.use_bias=True")
    source = loss.needs_cosine
    # the losses' needs, or an explicit model.moe.record_cosine (to measure specialization)
    moe = dataclasses.replace(model.moe, record_cosine=source is not None or
                              model.moe.record_cosine,
                              cosine_source=source or model.moe.cosine_source,
                              cosine_max_tokens=loss.sp_max_tokens)
    return dataclasses.replace(model, moe=moe), loss
