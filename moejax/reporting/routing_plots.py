"""Run-report routing plots: where tokens go, per router and between routers (docs/methods.md
section 6).

Tokens per expert, routing entropy and specialization per router, top-1 expert transitions
between adjacent routers and expert vs document domain. Like plots.py (whose helpers these
use: Agg canvas, capped sizes, sampled panels, fitted colour scales), each `plot_*` function
takes the logged rows and the PNG path and returns None, or writes nothing and returns why the
plot cannot be drawn; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import pathlib

import numpy as np

from moejax.reporting.metrics import (
    EVAL_DOMAIN_NAMES,
    EVAL_ROUTING_DOMAIN_COUNTS,
    EVAL_ROUTING_DOMAIN_NMI,
    ROUTING_ENTROPY,
    ROUTING_PATHWAY_ENTROPY,
    ROUTING_SPECIALIZATION,
    ROUTING_TOKENS_PER_EXPERT,
    ROUTING_TRANSITIONS,
    STEP,
    last_value,
    series,
)
from moejax.reporting.plots import (
    MAX_PANELS,
    _colorbar,
    _figure,
    _heatmap,
    _normalise_rows,
    _save,
    _suptitle,
    colour_limit,
    sampled,
)

_MAX_LEGEND_ROUTERS = 8  # more routers get a depth colour bar instead of legend entries


def plot_tokens_per_expert(rows: list[dict], path: pathlib.Path) -> str | None:
    """Heat map routers x experts of the tokens each expert received at the last logged step."""
    counts, row = last_value(rows, ROUTING_TOKENS_PER_EXPERT)
    if counts is None:
        return f"no `{ROUTING_TOKENS_PER_EXPERT}` logged"
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.size == 0:
        return f"`{ROUTING_TOKENS_PER_EXPERT}` has shape {counts.shape}, expected [R, E]"
    num_routers, num_experts = counts.shape
    fig, (ax,) = _figure(width=min(max(5.0, 0.6 * num_experts + 2.5), 16.0),
                         height=min(max(3.0, 0.45 * num_routers + 1.8), 12.0))
    image = _heatmap(ax, counts, title=f"Tokens per expert (step {row[STEP]})",
                     xlabel="expert", ylabel="router (depth order)", vmax=colour_limit(counts),
                     digits=0)
    _colorbar(fig, image, ax, "tokens routed (top-k slots)", counts)
    _save(fig, path)
    return None


def _plot_per_router(rows, path, key, *, title, ylabel) -> str | None:
    """One line per router (coloured by depth) and their mean, vs step."""
    import matplotlib

    steps, values = series(rows, key)
    if steps is None:
        return f"no `{key}` logged"
    values = values.reshape(len(steps), -1)  # [N, R]
    num_routers = values.shape[1]
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, num_routers))
    fig, (ax,) = _figure()
    few = num_routers <= _MAX_LEGEND_ROUTERS
    for router in range(num_routers):
        ax.plot(steps, values[:, router], color=colours[router], linewidth=1.0, alpha=0.85,
                label=f"router {router}" if few else None)
    ax.plot(steps, values.mean(1), color="black", linewidth=2.5, label="mean over routers")
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncols=2)
    if not few:
        norm = matplotlib.colors.Normalize(0, (num_routers - 1) / 0.9)
        mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis")
        fig.colorbar(mappable, ax=ax, label="router (depth order)")
    _save(fig, path)
    return None


def plot_entropy(rows: list[dict], path: pathlib.Path) -> str | None:
    """Routing entropy H(s_t) per router and mean, vs step."""
    return _plot_per_router(rows, path, ROUTING_ENTROPY,
                            title="Routing entropy (lower = more decisive)",
                            ylabel="entropy of router scores (nats, token mean)")


def plot_specialization(rows: list[dict], path: pathlib.Path) -> str | None:
    """Mean squared cosine of co-activated experts per router and mean, vs step."""
    reason = _plot_per_router(
        rows, path, ROUTING_SPECIALIZATION,
        title="Specialization diagnostic (lower = more distinct co-activated experts)",
        ylabel="mean squared cosine of co-activated z")
    return None if reason is None else f"{reason} (it needs top_k >= 2)"


def plot_transitions(rows: list[dict], path: pathlib.Path) -> str | None:
    """Per adjacent router pair, P(top-1 expert at l+1 | top-1 expert at l), last logged step.

    Up to MAX_PANELS pairs: one map each. More: a summary map over every pair, P(the most
    likely next expert | expert) (1: that expert always hands on to the same one; 1/E:
    uniformly), beside the maps of MAX_PANELS - 1 sampled pairs. Colour scales are fitted to
    the values drawn (`colour_limit`): one for the summary, one for the pairs' maps.
    """
    counts, row = last_value(rows, ROUTING_TRANSITIONS)
    if counts is None:
        return f"no `{ROUTING_TRANSITIONS}` logged (it needs >= 2 routers)"
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 3 or counts.shape[0] == 0:
        return (f"`{ROUTING_TRANSITIONS}` has shape {counts.shape}, expected [R-1, E, E] "
                "with R >= 2")
    probs = _normalise_rows(counts)
    num_pairs, num_experts = probs.shape[:2]
    pathway = row.get(ROUTING_PATHWAY_ENTROPY)
    pathway = pathway if pathway is not None and len(pathway) == num_pairs else None
    summary = num_pairs > MAX_PANELS
    pairs = sampled(num_pairs, MAX_PANELS - 1) if summary else list(range(num_pairs))
    size = min(max(3.5, 0.35 * num_experts + 2.0), 6.5)
    fig, axes = _figure(len(pairs) + summary, width=size + 0.4, height=size, max_cols=3)
    if summary:  # its own colour scale: another quantity
        hops = np.where(counts.sum(-1) > 0, probs.max(-1), np.nan)  # [pairs, E]
        ax = axes.pop(0)
        image = _heatmap(ax, hops, vmax=colour_limit(hops), xlabel="top-1 expert at router l",
                         ylabel="router pair l -> l+1",
                         title=f"All {num_pairs} pairs: P(most likely next expert)")
        _colorbar(fig, image, ax, "P(most likely next expert | expert)", hops)
    drawn = probs[pairs]
    for pair, ax in zip(pairs, axes):
        title = f"router {pair} -> {pair + 1}"
        if pathway is not None:
            title += f" (H = {pathway[pair]:.2f})"
        image = _heatmap(ax, probs[pair], title=title, vmax=colour_limit(drawn),
                         xlabel=f"top-1 expert at router {pair + 1}",
                         ylabel=f"top-1 expert at router {pair}")
    _colorbar(fig, image, axes, "P(next expert | expert), rows normalised", drawn)
    shown = f"; maps of pairs {', '.join(map(str, pairs))}" if summary else ""
    _suptitle(fig, f"Top-1 expert transitions (step {row[STEP]}{shown}; H = normalised pathway "
                   f"entropy; uniform = 1/{num_experts})")
    _save(fig, path)
    return None


MAX_DOMAINS = 24


def unseen_domains(rows: list[dict]) -> list[str]:
    """Domains with no token in the last evaluation's batches ([] without domain counts)."""
    counts, row = last_value(rows, EVAL_ROUTING_DOMAIN_COUNTS)
    if counts is None or np.ndim(counts) != 3:
        return []
    seen = np.asarray(counts, dtype=np.float64).sum((0, 1)) > 0
    names = row.get(EVAL_DOMAIN_NAMES) or last_value(rows, EVAL_DOMAIN_NAMES)[0]
    if names is None or len(names) != len(seen):
        names = [f"domain {d}" for d in range(len(seen))]
    return [str(name) for name, kept in zip(names, seen, strict=True) if not kept]


def plot_expert_domain(rows: list[dict], path: pathlib.Path) -> str | None:
    """Per router, P(top-1 expert | domain) over experts x domains, from the last eval.

    Each domain's column sums to 1, so a domain's favourite experts stand out whatever the
    domain's size (uniform routing is 1/E everywhere). Panels wrap at three per row; with more
    than MAX_PANELS routers, MAX_PANELS evenly spaced ones are drawn. With more than
    MAX_DOMAINS domains, only the most frequent ones are drawn.
    """
    counts, row = last_value(rows, EVAL_ROUTING_DOMAIN_COUNTS)
    if counts is None:
        return f"no `{EVAL_ROUTING_DOMAIN_COUNTS}` logged (no eval with domain labels ran)"
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 3 or counts.size == 0:
        return (f"`{EVAL_ROUTING_DOMAIN_COUNTS}` has shape {counts.shape}, "
                "expected [R, E, domains]")
    num_routers, num_experts, num_domains = counts.shape
    names = row.get(EVAL_DOMAIN_NAMES) or last_value(rows, EVAL_DOMAIN_NAMES)[0]
    if names is None or len(names) != num_domains:
        names = [f"domain {d}" for d in range(num_domains)]
    seen = counts.sum((0, 1)) > 0  # a domain the evaluation did not see has no column
    empty = unseen_domains(rows)
    counts, names = counts[:, :, seen], [name for name, kept in zip(names, seen) if kept]
    num_domains = len(names)
    if num_domains == 0:
        return "the evaluated batches hold no tokens with a domain label"
    if num_domains > MAX_DOMAINS:  # keep the most frequent domains readable
        keep = np.sort(np.argsort(-counts.sum((0, 1)), kind="stable")[:MAX_DOMAINS])
        counts, names = counts[:, :, keep], [names[d] for d in keep]
        num_domains = MAX_DOMAINS
    nmi = row.get(EVAL_ROUTING_DOMAIN_NMI)
    routers = sampled(num_routers)
    fig, axes = _figure(len(routers), width=min(max(3.5, 0.8 * num_domains + 2.0), 10.0),
                        height=min(max(3.0, 0.35 * num_experts + 1.8), 7.0), max_cols=3)
    names = [str(name) for name in names]
    given_domain = _normalise_rows(counts.transpose(0, 2, 1)).transpose(0, 2, 1)  # [R, E, dom]
    shown = given_domain[routers]
    vmax = colour_limit(shown)
    for router, ax in zip(routers, axes):
        title = f"router {router}"
        if nmi is not None and len(nmi) == num_routers:
            title += f" (NMI {nmi[router]:.2f})"
        image = _heatmap(ax, given_domain[router], title=title, vmax=vmax,
                         xlabel="domain", ylabel="top-1 expert", xticklabels=names)
    _colorbar(fig, image, axes, f"P(expert | domain), columns sum to 1 (uniform: "
                                f"1/{num_experts})", shown)
    sample = (f"; routers {', '.join(map(str, routers))} of {num_routers}, every router's NMI "
              "in report.md" if len(routers) < num_routers else "")
    missing = f"; {len(empty)} domains not in the evaluated batches: {', '.join(empty[:6])}" + (
        ", ..." if len(empty) > 6 else "") if empty else ""
    _suptitle(fig, f"Expert vs document domain (eval at step {row[STEP]}{sample}{missing})")
    _save(fig, path)
    return None
