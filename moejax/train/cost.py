"""XLA's cost of one train step, from shapes only: FLOPs and bytes accessed, nothing run.

`step_cost(specs)` compiles the program that `plan.compile_plan` compiles (one unlogged train
step, forward + backward + optimizer, of the config's sharded abstract state, with document
segments) and returns the compiled executable's `cost_analysis()`: per device, the FLOPs,
the bytes its operations read and write ("bytes accessed", after XLA's fusion: a guide to
memory traffic) and the transcendentals, and the FLOPs of the unoptimised program
(`lowered.cost_analysis()`). Nothing is allocated (`state.abstract_state`), so a model wider
than the machine's memory is costed as cheaply as a small one.

Two things XLA's count gets wrong, which the result reports so that callers can correct or
refuse them:
- a `while` loop's body is counted once, whatever its trip count (checked on jax 0.10.2: a
  10-step `lax.scan` of a matmul reports one matmul's FLOPs). `model.scan_layers=True` and
  the dropless engine's tiled grouped matmul on CPU are loops; "while_loops" counts them in
  the compiled program, and only a program with none has a complete count.
- a `lax.cond` is charged its costliest branch, so the routing metrics, which the step
  computes only on logged steps, are counted on every step. "routing_*" is their own cost,
  compiled alone from the record's shapes (`regularizers.routing_metrics`), which callers
  may subtract ("*_unlogged").
"""

from __future__ import annotations

import re
import time

import jax
from flax import nnx

from moejax.regularizers import routing_metrics
from moejax.train.plan import abstract_train_step
from moejax.train.specs import RunSpecs

_WHILE = re.compile(r"\bwhile\(")


def _cost(analysis) -> dict:
    """One device's {name: value} of a `cost_analysis()` (a list on older jax)."""
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return dict(analysis or {})


def step_cost(specs: RunSpecs) -> dict:
    """XLA's cost of one unlogged train step of a config's specs, compiled from shapes.

    Returns:
      {"flops", "bytes_accessed", "transcendentals": the compiled step's, per device;
      "lowered_flops": the unoptimised program's FLOPs; "routing_flops", "routing_bytes":
      the routing metrics' own (see the module docstring); "flops_unlogged",
      "bytes_unlogged": the step's less the routing metrics'; "while_loops": `while` ops in
      the compiled program (0: the count is complete); "compile_s"}.
    """
    train_step, args, _, graphdef = abstract_train_step(specs)
    abstract, tokens, _ = args

    def record(state, tokens, segments):
        model, _ = nnx.merge(graphdef, state)
        return model(tokens[:, :-1], segments=segments[:, :-1])[1]

    started = time.perf_counter()
    lowered = train_step.lower(*args)
    compiled = lowered.compile()
    seconds = time.perf_counter() - started
    cost, lowered_cost = _cost(compiled.cost_analysis()), _cost(lowered.cost_analysis())
    routing = {}
    shapes = jax.eval_shape(record, abstract, tokens, tokens)
    if shapes is not None:
        routing = _cost(jax.jit(routing_metrics).lower(shapes).compile().cost_analysis())
    flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    routing_flops = float(routing.get("flops", 0.0))
    routing_bytes = float(routing.get("bytes accessed", 0.0))
    return {
        "flops": flops,
        "bytes_accessed": nbytes,
        "transcendentals": float(cost.get("transcendentals", 0.0)),
        "lowered_flops": float(lowered_cost.get("flops", 0.0)),
        "routing_flops": routing_flops,
        "routing_bytes": routing_bytes,
        "flops_unlogged": flops - routing_flops,
        "bytes_unlogged": nbytes - routing_bytes,
        "while_loops": len(_WHILE.findall(compiled.as_text() or "")),
        "compile_s": seconds,
    }
