"""The run report: DIR/metrics.jsonl -> DIR/plots/*.png and DIR/report.md (`moejax-report`).

Writes DIR/plots/*.png (loss, validation loss per domain, learning rate / gradient norm /
throughput, tokens per expert, routing entropy, specialization, expert transitions, expert vs
domain; plots.py, routing_plots.py) and DIR/report.md with the final numbers of the run
(docs/methods.md section 6), a table of the validation loss per domain and links to the plots.
Plots whose metrics were not logged are skipped and the report says why.
"""

from __future__ import annotations

import pathlib

import numpy as np

from moejax.reporting import plots, routing_plots
from moejax.reporting.metrics import (
    AUX,
    EVAL_DOMAIN_TOKENS,
    EVAL_ROUTING_DOMAIN_NMI,
    GRAD_NORM,
    LEARNING_RATE,
    LOSS,
    METRICS_FILE,
    MFU,
    ROUTING_DEAD_EXPERTS,
    ROUTING_DROPPED_FRACTION,
    ROUTING_ENTROPY,
    ROUTING_LOAD_CV,
    ROUTING_PATHWAY_ENTROPY,
    ROUTING_SPECIALIZATION,
    ROUTING_TOPK_MASS,
    STEP,
    STEP_MS,
    TFLOPS_PER_DEVICE,
    TOKENS_PER_S,
    VAL_BITS_PER_BYTE,
    VAL_LOSS,
    VAL_LOSS_TOP1_DISABLED,
    last_value,
    read_metrics,
    reduced,
)

REPORT_FILE = "report.md"
PLOT_DIR = "plots"

# (file name under plots/, caption, function(rows, path) -> None or why it was skipped)
PLOTS = (
    ("loss.png", "Train and validation loss", plots.plot_loss),
    ("val_loss_domains.png", "Validation loss per domain", plots.plot_domain_loss),
    ("training.png", "Learning rate, gradient norm and throughput", plots.plot_training),
    ("tokens_per_expert.png", "Tokens per expert (last logged step)",
     routing_plots.plot_tokens_per_expert),
    ("entropy.png", "Routing entropy per router", routing_plots.plot_entropy),
    ("specialization.png", "Specialization per router", routing_plots.plot_specialization),
    ("transitions.png", "Top-1 expert transitions between adjacent routers",
     routing_plots.plot_transitions),
    ("expert_domain.png", "Expert vs document domain (last eval)",
     routing_plots.plot_expert_domain),
)

# (key, label, what each value belongs to); a list is summarised by `metrics.reduced`
_ROUTING_NUMBERS = (
    (ROUTING_ENTROPY, "routing entropy, nats", "router"),
    (ROUTING_TOPK_MASS, "top-k mass", "router"),
    (ROUTING_SPECIALIZATION, "specialization, mean squared cosine", "router"),
    (ROUTING_LOAD_CV, "load CV", "router"),
    (ROUTING_DEAD_EXPERTS, "dead experts", "router"),
    (ROUTING_DROPPED_FRACTION, "dropped fraction", "router"),
    (ROUTING_PATHWAY_ENTROPY, "pathway entropy, normalised", "router pair"),
    (EVAL_ROUTING_DOMAIN_NMI, "domain NMI, eval", "router"),
)


def _fmt(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _summary(key: str, values, owner: str) -> str:
    """'mean (per router: a, b, ...)' of per-router values, the mean being `key`'s reduction
    (`metrics.reduced`); a scalar is printed as is."""
    if np.ndim(values) == 0:
        return _fmt(values)
    flat = list(np.ravel(np.asarray(values, dtype=object)))
    return f"{_fmt(reduced(key, values))} (per {owner}: {', '.join(_fmt(v) for v in flat)})"


def _loss_numbers(rows: list[dict]) -> list[tuple[str, str]]:
    """Final train loss, best and final val loss and bits/byte, top-1-disabled val loss."""
    numbers = []
    loss, row = last_value(rows, LOSS)
    if loss is not None:
        numbers.append((f"final train loss (step {row[STEP]})", _fmt(loss)))
    for key, label in ((VAL_LOSS, "val loss"), (VAL_BITS_PER_BYTE, "val bits/byte")):
        evaluated = [r for r in rows if key in r]
        if evaluated:
            best = min(evaluated, key=lambda r: np.nan_to_num(r[key], nan=np.inf))
            numbers.append((f"best {label} (step {best[STEP]})", _fmt(best[key])))
            numbers.append((f"final {label} (step {evaluated[-1][STEP]})",
                            _fmt(evaluated[-1][key])))
    disabled, row = last_value(rows, VAL_LOSS_TOP1_DISABLED)
    if disabled is not None:
        text = _fmt(disabled)
        if VAL_LOSS in row:
            text += f" ({disabled - row[VAL_LOSS]:+.4f} vs val loss)"
        numbers.append((f"val loss, top-1 expert disabled (step {row[STEP]})", text))
    return numbers


# (key, label, format) of the training numbers: the last logged value of each
_TRAINING_NUMBERS = (
    (LEARNING_RATE, "learning rate", ".3g"),
    (GRAD_NORM, "gradient norm", ".4g"),
    (TOKENS_PER_S, "tokens/s", ".0f"),
    (TFLOPS_PER_DEVICE, "TFLOP/s per device", ".3g"),
    (MFU, "MFU", ".3f"),
    (STEP_MS, "median step time, ms", ".1f"),
)


def _final_numbers(rows: list[dict]) -> list[tuple[str, str]]:
    """(label, formatted value) of the final numbers of the run, in report order."""
    numbers = _loss_numbers(rows)
    for key, label, spec in _TRAINING_NUMBERS:
        value, row = last_value(rows, key)
        if value is not None and np.ndim(value) == 0:
            numbers.append((f"{label} (step {row[STEP]})", format(value, spec)))
    for key, label, owner in _ROUTING_NUMBERS:
        values, row = last_value(rows, key)
        if values is not None:
            numbers.append((f"{label} (step {row[STEP]})", _summary(key, values, owner)))
    last = rows[-1]
    for key in sorted(k for k in last if k.startswith(AUX) and np.ndim(last[k]) == 0):
        numbers.append((f"{key} (step {last[STEP]})", _fmt(last[key])))
    return numbers


MAX_DOMAIN_ROWS = 40  # the domain table's rows: those with most evaluated tokens


def _domain_table(rows: list[dict]) -> list[str]:
    """The lines of the table of validation loss per domain that an evaluation held: final and
    best loss and the last evaluation's tokens, most tokens first (at most MAX_DOMAIN_ROWS);
    [] when not logged."""
    names, steps, losses = plots.domain_losses(rows)
    if names is None:
        return []
    tokens = last_value(rows, EVAL_DOMAIN_TOKENS)[0]
    tokens = tokens if tokens is not None and len(tokens) == len(names) else [0] * len(names)
    seen = [d for d in range(len(names)) if np.isfinite(losses[:, d]).any()]
    seen.sort(key=lambda d: -tokens[d])
    lines = ["", "## Validation loss per domain", "",
             f"Nats per target token of the {len(seen)} of {len(names)} domains the evaluations "
             f"held, most tokens first; final: the last evaluation (step {steps[-1]}; - where "
             "it held none of the domain), best: the lowest, tokens: the last evaluation's.", "",
             "| domain | final | best (step) | tokens |", "|---|---|---|---|"]
    for d in seen[:MAX_DOMAIN_ROWS]:
        column = losses[:, d]
        final = _fmt(float(column[-1])) if np.isfinite(column[-1]) else "-"
        best = f"{_fmt(float(np.nanmin(column)))} ({steps[np.nanargmin(column)]})"
        lines.append(f"| {names[d]} | {final} | {best} | {tokens[d]} |")
    if len(seen) > MAX_DOMAIN_ROWS:
        lines += ["", f"{len(seen) - MAX_DOMAIN_ROWS} more domains in `{METRICS_FILE}` "
                  "(`eval/domain_loss`)."]
    return lines


def _markdown(workdir: pathlib.Path, rows, written, skipped) -> str:
    """The report text: header, final-numbers table, plots, skipped plots."""
    lines = [f"# Run report: {workdir.resolve().name}", "",
             f"{len(rows)} logged steps from `{METRICS_FILE}`, last step {rows[-1][STEP]}.", "",
             "## Final numbers", "",
             "Routing values are over routers in depth order: the mean (dead experts: the total)",
             "then each router's value; `routing/` ones come from the last logged training batch,",
             "`eval/` ones from the last evaluation.", "",
             "| quantity | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in _final_numbers(rows)]
    lines += _domain_table(rows)
    unseen = routing_plots.unseen_domains(rows)
    if unseen:
        lines += ["", f"**Warning:** {len(unseen)} domains have no token in the last "
                  "evaluation's batches, so the domain NMI and the expert-by-domain map say "
                  f"nothing about them: {', '.join(unseen[:20])}"
                  f"{', ...' if len(unseen) > 20 else ''}. A domain of one document has no "
                  "validation data (the trainer names those at the start); more "
                  "`train.eval_batches` cover more of the others."]
    lines += ["", "## Plots", ""]
    for name, caption in written:
        lines += [f"### {caption}", "", f"![{caption}]({PLOT_DIR}/{name})", ""]
    if skipped:
        lines += ["## Skipped plots", ""]
        lines += [f"- `{name}` skipped: {reason}" for name, reason in skipped]
        lines.append("")
    return "\n".join(lines)


def write_report(workdir) -> pathlib.Path:
    """Writes workdir/plots/*.png and workdir/report.md from workdir/metrics.jsonl.

    Args:
      workdir: the training run's directory (holding metrics.jsonl).

    Returns:
      The path of report.md.

    Raises:
      FileNotFoundError, ValueError: metrics.jsonl is missing, empty or malformed.
    """
    workdir = pathlib.Path(workdir)
    rows = read_metrics(workdir / METRICS_FILE)
    plot_dir = workdir / PLOT_DIR
    plot_dir.mkdir(exist_ok=True)
    written, skipped = [], []
    for name, caption, plot in PLOTS:
        path = plot_dir / name
        try:
            reason = plot(rows, path)
        except (TypeError, ValueError, IndexError) as err:  # malformed values: skip, say why
            reason = f"could not be drawn: {type(err).__name__}: {err}"
        if reason is None:
            written.append((name, caption))
        else:
            path.unlink(missing_ok=True)  # no stale PNG from an earlier report
            skipped.append((name, reason))
    report = workdir / REPORT_FILE
    report.write_text(_markdown(workdir, rows, written, skipped))
    return report
