"""Run-report plots: one PNG per view of the logged metrics (docs/methods.md section 6).

Each `plot_*` function takes the logged rows (one dict per logged step, in order, each with a
"step") and the PNG path; it writes the figure and returns None, or writes nothing and returns
why the plot cannot be drawn. Figures are drawn on matplotlib's Agg canvas directly, without
pyplot, so no backend or global figure state is touched; matplotlib is imported only when a
figure is drawn.
"""

from __future__ import annotations

import pathlib

import numpy as np

from moejax.reporting.metrics import (
    EVAL_DOMAIN_NAMES,
    EVAL_ROUTING_DOMAIN_COUNTS,
    EVAL_ROUTING_DOMAIN_NMI,
    LOSS,
    ROUTING_ENTROPY,
    ROUTING_PATHWAY_ENTROPY,
    ROUTING_SPECIALIZATION,
    ROUTING_TOKENS_PER_EXPERT,
    ROUTING_TRANSITIONS,
    STEP,
    VAL_LOSS,
    VAL_LOSS_TOP1_DISABLED,
    last_value,
    reduce_values,
    series,
)

_MAX_ANNOTATED_CELLS = 64  # heat maps with at most this many cells print their values
_MAX_LEGEND_ROUTERS = 8  # more routers get a depth colour bar instead of legend entries


def _normalise_rows(counts: np.ndarray) -> np.ndarray:
    """counts [..., N, M] -> each row divided by its sum (rows summing to 0 stay 0)."""
    totals = counts.sum(-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _figure(num_axes: int = 1, *, width: float = 6.4, height: float = 4.0, max_cols: int = 4):
    """A Figure on an Agg canvas with num_axes axes in a grid of at most max_cols columns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(num_axes, max_cols)
    grid_rows = -(-num_axes // cols)
    fig = Figure(figsize=(width * cols, height * grid_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(grid_rows, cols, squeeze=False).ravel()
    for unused in axes[num_axes:]:
        fig.delaxes(unused)
    return fig, list(axes[:num_axes])


def _save(fig, path: pathlib.Path) -> None:
    fig.savefig(path, dpi=110)


def _integer_ticks(axis, size: int) -> None:
    from matplotlib.ticker import MaxNLocator

    if size <= 16:
        axis.set_ticks(range(size))
    else:
        axis.set_major_locator(MaxNLocator(integer=True))


def _heatmap(ax, matrix, *, title, xlabel, ylabel, vmax=None, xticklabels=None):
    """imshow of matrix [rows, cols] with integer (or named) ticks; small maps print values."""
    image = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis",
                      vmin=0.0, vmax=vmax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    _integer_ticks(ax.yaxis, matrix.shape[0])
    if xticklabels is None:
        _integer_ticks(ax.xaxis, matrix.shape[1])
    else:
        ax.set_xticks(range(len(xticklabels)), xticklabels, rotation=30, ha="right")
    if matrix.size <= _MAX_ANNOTATED_CELLS:
        top = vmax if vmax is not None else max(float(matrix.max()), 1e-12)
        for (i, j), value in np.ndenumerate(matrix):
            text = f"{value:.2f}" if vmax is not None else f"{value:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize="small",
                    color="black" if value > 0.6 * top else "white")
    return image


def plot_loss(rows: list[dict], path: pathlib.Path) -> str | None:
    """Train loss, val loss and (when logged) val loss with the top-1 expert disabled vs step."""
    steps, loss = series(rows, LOSS)
    if steps is None or loss.ndim != 1:
        return f"no scalar `{LOSS}` logged"
    fig, (ax,) = _figure()
    ax.plot(steps, loss, label="train loss")
    for key, label, style in ((VAL_LOSS, "val loss", "o-"),
                              (VAL_LOSS_TOP1_DISABLED, "val loss, top-1 expert disabled", "x--")):
        key_steps, values = series(rows, key)
        if key_steps is not None and values.ndim == 1:
            ax.plot(key_steps, values, style, label=label)
    ax.set(title="Loss", xlabel="step", ylabel="cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return None


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
                     xlabel="expert", ylabel="router (depth order)")
    fig.colorbar(image, ax=ax, label="tokens routed (top-k slots)")
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
    """Per adjacent router pair, P(top-1 expert at l+1 | top-1 expert at l), last logged step."""
    counts, row = last_value(rows, ROUTING_TRANSITIONS)
    if counts is None:
        return f"no `{ROUTING_TRANSITIONS}` logged (it needs >= 2 routers)"
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 3 or counts.shape[0] == 0:
        return (f"`{ROUTING_TRANSITIONS}` has shape {counts.shape}, expected [R-1, E, E] "
                "with R >= 2")
    probs = _normalise_rows(counts)
    pathway = row.get(ROUTING_PATHWAY_ENTROPY)
    size = min(max(3.5, 0.35 * counts.shape[-1] + 2.0), 6.5)
    fig, axes = _figure(len(probs), width=size + 0.4, height=size)
    for pair, (ax, matrix) in enumerate(zip(axes, probs)):
        title = f"router {pair} -> {pair + 1}"
        if pathway is not None and len(pathway) == len(probs):
            title += f" (H = {pathway[pair]:.2f})"
        image = _heatmap(ax, matrix, title=title, vmax=1.0,
                         xlabel=f"top-1 expert at router {pair + 1}",
                         ylabel=f"top-1 expert at router {pair}")
    fig.colorbar(image, ax=axes, label="P(next expert | expert), rows normalised")
    fig.suptitle(f"Top-1 expert transitions (step {row[STEP]}; H = normalised pathway entropy)")
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
    domain's size (uniform routing is 1/E everywhere). Panels wrap at three per row. With more
    than MAX_DOMAINS domains, only the most frequent ones are drawn.
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
    fig, axes = _figure(num_routers, width=min(max(3.5, 0.8 * num_domains + 2.0), 10.0),
                        height=min(max(3.0, 0.35 * num_experts + 1.8), 7.0), max_cols=3)
    names = [str(name) for name in names]
    given_domain = _normalise_rows(counts.transpose(0, 2, 1)).transpose(0, 2, 1)  # [R, E, dom]
    vmax = max(float(given_domain.max()), 1e-12)
    for router, ax in enumerate(axes):
        title = f"router {router}"
        if nmi is not None and len(nmi) == num_routers:
            title += f" (NMI {nmi[router]:.2f})"
        image = _heatmap(ax, given_domain[router], title=title, vmax=vmax,
                         xlabel="domain", ylabel="top-1 expert", xticklabels=names)
    fig.colorbar(image, ax=axes, label=f"P(expert | domain), columns sum to 1 "
                                       f"(uniform: 1/{num_experts})")
    missing = f"; {len(empty)} domains not in the evaluated batches: {', '.join(empty[:6])}" + (
        ", ..." if len(empty) > 6 else "") if empty else ""
    fig.suptitle(f"Expert vs document domain (eval at step {row[STEP]}{missing})")
    _save(fig, path)
    return None


_COMPARED = ((LOSS, "train loss (nats / token)"), (ROUTING_ENTROPY, "routing entropy (nats)"),
             (ROUTING_SPECIALIZATION, "specialization (mean squared cosine)"))


def seed_band(curves: list) -> tuple:
    """(steps [N], mean [N], std [N]) of several seeds' curves [(steps, values)] on the steps
    they all logged; std is the sample std over seeds (0 for one seed)."""
    steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
    values = np.asarray([[dict(zip(s.tolist(), v))[t] for t in steps] for s, v in curves])
    std = values.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
    return np.asarray(steps), values.mean(0), std


def plot_variants(runs: dict, path: pathlib.Path) -> str | None:
    """Side by side: train loss, routing entropy and specialization vs step, one line per
    variant (the mean over seeds) with a band of ± one std over seeds.

    Args:
      runs: variant name -> list of logged rows of each seed; a seed's per-router values are
        reduced over routers (`metrics.reduce_values`: the mean), then the seeds' curves are
        combined on their common steps.
      path: the PNG to write.
    """
    fig, axes = _figure(len(_COMPARED), width=5.2, height=3.8)
    drawn = False
    for ax, (key, label) in zip(axes, _COMPARED):
        for name, seeds in runs.items():
            curves = [series(rows, key) for rows in seeds]
            curves = [(s, reduce_values(key, v)) for s, v in curves if s is not None]
            if not curves:
                continue
            steps, mean, std = seed_band(curves)
            (line,) = ax.plot(steps, mean, label=name)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                            linewidth=0)
            drawn = True
        ax.set(title=label, xlabel="step")
        ax.grid(alpha=0.3)
    if not drawn:
        return "no loss or routing metrics logged"
    axes[0].legend(fontsize="small")
    _save(fig, path)
    return None


def plot_points(lines: dict, path: pathlib.Path, *, title: str, xlabel: str,
                ylabel: str) -> None:
    """One line per label through (x, mean over seeds), with ± one std error bars.

    lines: label -> (xs [N], per-x lists of the seeds' values).
    """
    fig, (ax,) = _figure(1, width=6.4, height=4.4)
    for label, (xs, values) in lines.items():
        values = [np.asarray(v, np.float64) for v in values]
        std = [float(v.std(ddof=1)) if v.size > 1 else 0.0 for v in values]
        ax.errorbar(xs, [float(v.mean()) for v in values], yerr=std, label=label, marker="o",
                    capsize=3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
