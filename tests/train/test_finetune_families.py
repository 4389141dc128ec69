"""Fine-tuning each Hugging Face family with paper A's losses (configs/finetune_hf.py:DIR): the
lb + sp + cp gradients reach every MoE layer's router and experts (sigmoid routers included;
the last layer's down projections excepted: nothing the losses read comes after them), and a
DeepSeek-V3 fine-tune runs end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.models.decoder import Decoder
from moejax.train import step
from moejax.train.config_files import load_config
from moejax.train.init_from import init_from
from moejax.train.specs import specs_from_config
from moejax.train.trainer import train_and_evaluate
from tests.models.hf_helpers import FIXTURES
from tests.train.helpers import metrics_rows

ROOT = FIXTURES.parents[1]
FAMILIES = ("mixtral", "qwen3_moe", "olmoe", "qwen2_moe", "deepseek_v2", "deepseek_v3")


def _config(family, **train):
    config = load_config(ROOT / "configs" / "finetune_hf.py", str(FIXTURES / family))
    config.loss.update(lb=1e-2, sp=2e-3, cp=1e-3)
    config.train.update(batch_size=8, seq_len=16, **train)
    return config


def _moe_parts(params: dict):
    """(path, array) of every router kernel and routed-expert weight in a params dict."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        if "router']['kernel" in name or "experts']['w_" in name:
            yield name, leaf


@pytest.mark.parametrize("family", FAMILIES)
def test_the_specialization_losses_reach_every_router_and_expert(family):
    """The gradient of lb + sp + cp alone (the LM loss taken out) is finite and nonzero on
    each MoE layer's router and on its experts' gate, up and down weights."""
    specs = specs_from_config(_config(family))
    assert specs.model.hf_family == family and specs.loss.sp > 0 and specs.loss.cp > 0
    model = Decoder(specs.model, rngs=nnx.Rngs(0))
    init_from(model, FIXTURES / family)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 259, (2, 17)), jnp.int32)

    def regularizers(model):
        total, (metrics, _) = step._loss_fn(model, tokens, specs.loss)
        return total - metrics["loss"]

    grads = nnx.grad(regularizers)(model)
    parts = dict(_moe_parts(nnx.to_pure_dict(grads)))
    kinds = {name.rsplit("['", 1)[-1].rstrip("']") for name in parts}
    assert kinds == {"kernel", "w_gate", "w_up", "w_down"}, kinds
    for name, grad in parts.items():  # [L, ...]: one row per MoE layer of the stack
        largest = np.abs(np.asarray(grad)).reshape(grad.shape[0], -1).max(axis=-1)
        assert np.isfinite(largest).all(), name
        # sp reads the experts' activations (gate and up); a down projection reaches the
        # losses only through the later layers' routers: every MoE layer's but the last
        reached = largest[:-1] if name.endswith("['w_down']") else largest
        assert (reached > 0).all(), f"no gradient reaches {name}: {largest}"


def test_a_deepseek_v3_fine_tune_runs_with_the_losses(tmp_path):
    """configs/finetune_hf.py on transformers' DeepSeek-V3 (MLA, sigmoid router with the
    selection bias, a shared expert, a dense first layer): 2 steps with lb + sp + cp log the
    three losses, finite."""
    config = _config("deepseek_v3", steps=2, log_every=1, eval_every=2, checkpoint_every=2,
                     report=False)
    train_and_evaluate(config, tmp_path / "run")
    rows = metrics_rows(tmp_path / "run")
    last = [row for row in rows if "aux/sp" in row][-1]
    for key in ("aux/lb", "aux/sp", "aux/cp", "loss"):
        assert np.isfinite(last[key]) and last[key] != 0, key
    assert last["aux/cp"] < 0 < last["aux/lb"]  # R_cp = -mean P^l P^(l+1)
