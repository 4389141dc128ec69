"""Parameter counts from shapes; the CartesianMoE Base presets match the paper, the presets of
released models match transformers' counts of the same config.json."""

import pathlib

import jax
import pytest

from moejax.layers.mla_spec import MLASpec
from moejax.models.decoder import DecoderSpec
from moejax.models.param_count import count_parameters, model_flops_per_token
from moejax.moe.spec import MoESpec
from moejax.train.accounting import peak_tflops, utilisation
from moejax.train.config_files import load_config
from moejax.train.specs import specs_from_config

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def test_counts_by_hand():
    spec = DecoderSpec(vocab_size=11, d_model=8, num_layers=2, num_heads=2, num_kv_heads=1,
                       d_ff=12, first_dense_layers=1, moe=MoESpec(num_experts=4, top_k=1,
                                                                  d_hidden=6))
    head_dim = 4
    embed = 2 * 11 * 8
    attention = 2 * (8 * 2 * head_dim + 2 * 8 * 1 * head_dim + 2 * head_dim * 8)
    norms = (2 * 2 + 1) * 8
    dense = 3 * 8 * 12
    experts = 4 * 3 * 8 * 6
    router = 8 * 4
    total = embed + attention + norms + dense + experts + router
    counts = count_parameters(spec)
    assert counts.total == total
    assert counts.active == total - experts * 3 // 4
    # training FLOPs per token at S = 10: 6 x the active matmul parameters (no embedding
    # table) + causal attention, 6 L S N H
    matmul = counts.active - 11 * 8
    assert model_flops_per_token(spec, 10) == 6 * matmul + 6 * 2 * 10 * 2 * head_dim


def test_mla_counts_and_flops_by_hand():
    """MLA: Q = 6 + 2 query/key coordinates per head, V = 3 value ones, latent C = 4, query
    rank A = 5; attention FLOPs 3 L S N (Q + V)."""
    spec = DecoderSpec(vocab_size=11, d_model=8, num_layers=2, num_heads=2, d_ff=12,
                       first_dense_layers=1, moe=MoESpec(num_experts=4, top_k=1, d_hidden=6),
                       mla=MLASpec(kv_lora_rank=4, qk_nope_head_dim=6, qk_rope_head_dim=2,
                                   v_head_dim=3, q_lora_rank=5))
    # w_q_a [D, A], q_a_norm [A], w_q_b [A, N, Q], w_kv_a [D, C + R], kv_a_norm [C],
    # w_kv_b [C, N, P + V], w_o [N, V, D]
    attention = 2 * (8 * 5 + 5 + 5 * 2 * 8 + 8 * (4 + 2) + 4 + 4 * 2 * (6 + 3) + 2 * 3 * 8)
    experts = 4 * 3 * 8 * 6
    total = 2 * 11 * 8 + attention + 5 * 8 + 3 * 8 * 12 + experts + 8 * 4
    counts = count_parameters(spec)
    assert counts == (total, total - experts * 3 // 4)
    matmul = counts.active - 11 * 8
    assert model_flops_per_token(spec, 10) == 6 * matmul + 3 * 2 * 10 * 2 * (8 + 3)


def test_device_peaks_and_utilisation():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("TPU v5 lite") == 197.0 and peak_tflops("TPU v5") == 459.0
    assert peak_tflops("cpu") is None and peak_tflops("cpu", override=2.0) == 2.0
    out = utilisation(2e9, 1e4, 100.0)  # 2e13 FLOP/s over the devices
    assert out["tflops_per_device"] == pytest.approx(20.0 / jax.device_count())
    assert out["mfu"] == pytest.approx(out["tflops_per_device"] / 100.0)
    assert "mfu" not in utilisation(2e9, 1e4, None)


def _by_hand(spec):
    """(total, active) of a DecoderSpec from its numbers: written out, no model built."""
    d, moe = spec.d_model, spec.moe
    heads, kv, head_dim = spec.num_heads, spec.num_kv_heads, spec.resolved_head_dim
    attention = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + d  # + norm
    swiglu = lambda width: 3 * d * width  # noqa: E731
    mix = 2 * d + 2 if moe.shared_mix == "softmax" else 0

    def routed(experts, top_k, width):  # router + experts; the experts a token skips
        stack = experts * swiglu(width)
        return d * experts + stack, stack * (1 - top_k / experts)

    total, inactive = 2 * spec.vocab_size * d + d, 0.0  # embedding, head, final norm
    for layer in range(spec.num_layers):
        total += attention
        if not spec.is_moe_layer(layer):
            total += d + swiglu(spec.d_ff)
            continue
        shared = swiglu(moe.num_shared_experts * (moe.shared_d_hidden or 0)) + mix
        if spec.block == "cartesian":  # two sub-layers, each with its norm
            size, skipped = routed(moe.num_experts, moe.top_k, moe.d_hidden // 2)
            total, inactive = total + 2 * (d + size + shared), inactive + 2 * skipped
        else:
            size, skipped = routed(moe.routed_experts, moe.routed_top_k, moe.routed_d_hidden)
            total, inactive = total + d + size + shared, inactive + skipped
    return total, round(total - inactive)


@pytest.mark.parametrize("name", ["cartesian_base", "finegrained_base", "topk_share_base"])
def test_base_presets_match_the_paper(name):
    """Exactly the count written out by hand, and the paper's 842M / 247M within 0.5%."""
    spec = specs_from_config(load_config(CONFIGS / f"{name}.py")).model
    counts = count_parameters(spec)
    assert (counts.total, counts.active) == _by_hand(spec)
    assert abs(counts.total / 842e6 - 1) < 0.005, counts
    assert abs(counts.active / 247e6 - 1) < 0.005, counts


def test_base_presets_within_one_percent_of_each_other():
    counts = [count_parameters(specs_from_config(load_config(CONFIGS / f"{n}.py")).model)
              for n in ("cartesian_base", "finegrained_base", "topk_share_base")]
    for field in ("total", "active"):
        values = [getattr(c, field) for c in counts]
        assert max(values) / min(values) < 1.01


@pytest.mark.parametrize("name, total, active", [
    ("mixtral_8x7b", 46.7e9, 12.9e9),  # Mixtral of Experts (Jiang et al. 2024)
    ("deepseekmoe_16b", 16.4e9, 2.8e9),  # DeepSeekMoE (Dai et al. 2024)
])
def test_real_size_presets_match_the_published_counts(name, total, active):
    """From shapes only: exactly the count by hand, and the published figures as rounded
    (to 0.1B)."""
    spec = specs_from_config(load_config(CONFIGS / f"{name}.py")).model
    counts = count_parameters(spec)
    assert (counts.total, counts.active) == _by_hand(spec)
    assert abs(counts.total - total) <= 0.05e9 and abs(counts.active - active) <= 0.05e9


# transformers' counts of each preset's HF_CONFIG (AutoModelForCausalLM.from_config on the meta
# device, the sum of its parameters' numel; the deepseek_v3 family's e_score_correction_bias
# is a buffer there, as Router.bias is no Param here) and the active count (total less the
# routed experts a token skips, (1 - k/E) of their parameters), computed with transformers 5.18
RELEASED = {
    "olmoe_1b_7b": (6_919_161_856, 1_282_017_280),
    "qwen1_5_moe_a2_7b": (14_315_784_192, 2_689_173_504),
    "deepseek_v2_lite": (15_706_484_224, 2_661_150_208),
    "moonlight_16b_a3b": (15_960_108_544, 2_914_774_528),
    "deepseek_v3": (671_026_404_352, 37_552_282_624),
}


def _published(count: int, figure: float, unit: float) -> bool:
    """`count` is `figure` rounded or truncated to `unit` (0.1B: 2.45B is "2.4B")."""
    return figure - unit / 2 <= count < figure + unit


@pytest.mark.parametrize("name, total, active, unit, without_embedding", [
    ("olmoe_1b_7b", 6.9e9, 1.3e9, 1e8, False),  # OLMoE (Muennighoff et al. 2024)
    ("qwen1_5_moe_a2_7b", 14.3e9, 2.7e9, 1e8, False),  # Qwen1.5-MoE model card
    # DeepSeek's activated counts match only without the embedding table (2.45B, 36.6B; with
    # it 2.66B, 37.55B)
    ("deepseek_v2_lite", 15.7e9, 2.4e9, 1e8, True),
    ("moonlight_16b_a3b", 16e9, 3e9, 1e9, False),  # "16B-A3B"
    ("deepseek_v3", 671e9, 37e9, 1e9, True),  # without its multi-token prediction module
])
def test_released_model_presets_match_transformers(name, total, active, unit, without_embedding):
    """From shapes only: exactly transformers' counts, and the published figures."""
    spec = specs_from_config(load_config(CONFIGS / f"{name}.py")).model
    counts = count_parameters(spec)
    assert (counts.total, counts.active) == RELEASED[name]
    embedding = spec.vocab_size * spec.d_model
    assert _published(counts.total, total, unit)
    assert _published(counts.active - embedding * without_embedding, active, unit), counts
    if name == "moonlight_16b_a3b":  # its paper's counts without embedding and head
        assert (round((counts.total - 2 * embedding) / 1e7), round(
            (counts.active - 2 * embedding) / 1e7)) == (1529, 224)
