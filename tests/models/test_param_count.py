"""Parameter counts from shapes; the CartesianMoE Base presets match the paper."""

import pathlib

import pytest

from moejax.models.decoder import DecoderSpec
from moejax.models.param_count import count_parameters
from moejax.moe.spec import MoESpec
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


@pytest.mark.parametrize("name", ["cartesian_base", "finegrained_base", "topk_share_base"])
def test_base_presets_match_the_paper(name):
    spec, _ = specs_from_config(load_config(CONFIGS / f"{name}.py"))
    counts = count_parameters(spec)
    assert abs(counts.total / 842e6 - 1) < 0.005, counts
    assert abs(counts.active / 247e6 - 1) < 0.005, counts


def test_base_presets_within_one_percent_of_each_other():
    counts = [count_parameters(specs_from_config(load_config(CONFIGS / f"{n}.py"))[0])
              for n in ("cartesian_base", "finegrained_base", "topk_share_base")]
    for field in ("total", "active"):
        values = [getattr(c, field) for c in counts]
        assert max(values) / min(values) < 1.01
