"""Logical axis names and the default logical -> mesh axis rules.

Parameters and activations are described by logical axes (what a dimension *is*); one table
maps them to the (data, fsdp, expert, tensor) mesh. Batch goes over (data, fsdp, expert): outside
the expert layers the expert axis is one more data-parallel axis (as in MaxText and
DeepSpeed-MoE), so attention is not recomputed on every expert shard, and inside them the
expert-parallel engines exchange tokens along it. Parameters are fully sharded over fsdp along
their model-width dimension, expert weights over expert, and attention heads and hidden widths
over tensor.
"""

from types import MappingProxyType

MESH_AXES = ("data", "fsdp", "expert", "tensor")

BATCH = "batch"
EMBED = "embed"
VOCAB = "vocab"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
EXPERT = "expert"
EXPERT_MLP = "expert_mlp"
ROUTER_EXPERTS = "router_experts"
LAYERS = "layers"  # the depth axis of scanned layer stacks

# the config options that set each logical axis's size (for errors a user can act on)
CONFIG_KEYS = MappingProxyType({
    EMBED: "model.d_model",
    VOCAB: "model.vocab_size",
    HEADS: "model.num_heads",
    KV_HEADS: "model.num_kv_heads",
    MLP: "model.d_ff (or a shared expert's width)",
    EXPERT: "model.moe.num_experts x model.moe.granularity",
    EXPERT_MLP: "model.moe.d_hidden / model.moe.granularity (CartesianMoE: its sub-expert width)",
})

DEFAULT_RULES = MappingProxyType({
    BATCH: ("data", "fsdp", "expert"),
    EMBED: "fsdp",
    VOCAB: "tensor",
    HEADS: "tensor",
    KV_HEADS: "tensor",
    HEAD_DIM: None,
    MLP: "tensor",
    EXPERT: "expert",
    EXPERT_MLP: "tensor",
    ROUTER_EXPERTS: None,
    LAYERS: None,
})
