"""Run-report plots: one PNG per view of the logged metrics (docs/methods.md section 6).

Each `plot_*` function takes the logged rows (one dict per logged step, in order, each with a
"step") and the PNG path; it writes the figure and returns None, or writes nothing and returns
why the plot cannot be drawn. Figures are drawn on matplotlib's Agg canvas directly, without
pyplot, so no backend or global figure state is touched; matplotlib is imported only when a
figure is drawn.

This module holds the loss, per-domain validation loss and training panels, the suite views
(`plot_variants`, `plot_points`) and the drawing helpers shared with routing_plots.py (the
routing views: tokens per expert, entropy, specialization, transitions, expert vs domain).

Figures scale to deep, wide models: a figure is at most MAX_FIGURE_INCHES (1760 x 1320 px at
DPI), maps of many routers switch to a summary and a few sampled routers (MAX_PANELS), colour
scales are fitted to the values drawn (`colour_limit`), and long titles and colour-bar labels
are wrapped to the figure (constrained layout keeps them inside it).
"""

from __future__ import annotations

import pathlib
import textwrap

import numpy as np

from moejax.reporting.metrics import (
    EVAL_DOMAIN_LOSS,
    EVAL_DOMAIN_NAMES,
    EVAL_DOMAIN_TOKENS,
    GRAD_NORM,
    LEARNING_RATE,
    LOSS,
    MFU,
    ROUTING_ENTROPY,
    ROUTING_SPECIALIZATION,
    STEP,
    STEP_MS,
    TOKENS_PER_S,
    VAL_LOSS,
    VAL_LOSS_TOP1_DISABLED,
    last_value,
    reduce_values,
    series,
)

DPI = 110
MAX_FIGURE_INCHES = (16.0, 12.0)  # (width, height): 1760 x 1320 px at DPI
MAX_PANELS = 6  # maps of more routers (router pairs) draw a summary and this many sampled ones
COLOUR_PERCENTILE = 99.0  # colour scales end at this percentile of the values drawn
_MAX_ANNOTATED_CELLS = 64  # heat maps with at most this many cells print their values
_MAX_DOMAIN_LINES = 12  # per-domain curves drawn (the domains with most tokens)
_FONT_POINTS = 10.0  # matplotlib's default font size, for wrapping


def _normalise_rows(counts: np.ndarray) -> np.ndarray:
    """counts [..., N, M] -> each row divided by its sum (rows summing to 0 stay 0)."""
    totals = counts.sum(-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _figure(num_axes: int = 1, *, width: float = 6.4, height: float = 4.0, max_cols: int = 4):
    """A Figure on an Agg canvas with num_axes axes (panels of width x height inches) in a grid
    of at most max_cols columns; the whole is scaled down to fit MAX_FIGURE_INCHES."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(num_axes, max_cols)
    grid_rows = -(-num_axes // cols)
    size = np.array([width * cols, height * grid_rows])
    size *= min(1.0, *(np.array(MAX_FIGURE_INCHES) / size))
    fig = Figure(figsize=tuple(size), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(grid_rows, cols, squeeze=False).ravel()
    for unused in axes[num_axes:]:
        fig.delaxes(unused)
    return fig, list(axes[:num_axes])


def _save(fig, path: pathlib.Path) -> None:
    fig.savefig(path, dpi=DPI)


def wrap(text: str, inches: float, points: float = _FONT_POINTS) -> str:
    """`text` broken into lines that fit `inches` at `points` (about 0.6 em per character)."""
    return textwrap.fill(text, width=max(16, int(inches * 72 / (0.6 * points))))


def _suptitle(fig, text: str) -> None:
    fig.suptitle(wrap(text, fig.get_figwidth(), 12.0), fontsize=12.0)


def _colorbar(fig, image, axes, label: str, values) -> None:
    """A colour bar beside axes, its label wrapped to the figure's height; an arrow at the top
    when some of `values` lie above the colour scale."""
    above = np.nanmax(values, initial=0.0) > image.get_clim()[1]
    bar = fig.colorbar(image, ax=axes, extend="max" if above else "neither")
    bar.set_label(wrap(label, 0.8 * fig.get_figheight()))


def colour_limit(values) -> float:
    """The top of a colour scale for `values` (>= 0): their COLOUR_PERCENTILE-th percentile,
    so that one outlier does not darken the rest; > 0 (1 when nothing is finite)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0
    top = float(np.percentile(values, COLOUR_PERCENTILE))
    return top if top > 0 else max(float(values.max()), 1e-12)


def sampled(count: int, limit: int = MAX_PANELS) -> list[int]:
    """All of range(count) up to `limit`, else `limit` evenly spaced (first and last kept)."""
    if count <= limit:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, limit).round()})


def _integer_ticks(axis, size: int) -> None:
    from matplotlib.ticker import MaxNLocator

    if size <= 16:
        axis.set_ticks(range(size))
    else:
        axis.set_major_locator(MaxNLocator(integer=True))


def _heatmap(ax, matrix, *, title, xlabel, ylabel, vmax=None, xticklabels=None, digits=2):
    """imshow of matrix [rows, cols] (NaN blank) from 0 to vmax (None: the largest value), with
    integer (or named) ticks; small maps print their values."""
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", interpolation="nearest",
                      cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize="medium")
    _integer_ticks(ax.yaxis, matrix.shape[0])
    if xticklabels is None:
        _integer_ticks(ax.xaxis, matrix.shape[1])
    else:
        ax.set_xticks(range(len(xticklabels)), xticklabels, rotation=30, ha="right")
    if matrix.size <= _MAX_ANNOTATED_CELLS:
        top = vmax if vmax is not None else max(float(np.nanmax(matrix)), 1e-12)
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.{digits}f}", ha="center", va="center",
                        fontsize="small", color="black" if value > 0.6 * top else "white")
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


VAL_LOSS_DOMAIN = VAL_LOSS + "/"  # prefix: val_loss/<domain>, where a run logs them so


def domain_losses(rows: list[dict]):
    """(names, steps [N], losses [N, domains]) of the per-domain validation loss: the
    `eval/domain_loss` lists (named by `eval/domain_names`; NaN where a domain had no token),
    else `val_loss/<domain>` numbers; (None, None, None) when neither was logged."""
    steps, losses = series(rows, EVAL_DOMAIN_LOSS)
    if steps is not None and losses.ndim == 2:
        names = last_value(rows, EVAL_DOMAIN_NAMES)[0]
        if names is None or len(names) != losses.shape[1]:
            names = [f"domain {d}" for d in range(losses.shape[1])]
        return [str(name) for name in names], steps, losses
    keys = sorted({k for row in rows for k in row if k.startswith(VAL_LOSS_DOMAIN)})
    picked = [row for row in rows if any(k in row for k in keys)]
    if not picked:
        return None, None, None
    losses = np.asarray([[row.get(k, np.nan) for k in keys] for row in picked], np.float64)
    return ([k[len(VAL_LOSS_DOMAIN):] for k in keys],
            np.asarray([row[STEP] for row in picked]), losses)


def _drawn_domains(rows: list[dict], losses: np.ndarray) -> list[int]:
    """The domains some evaluation held, at most _MAX_DOMAIN_LINES: those with most tokens
    in the last evaluation (`eval/domain_tokens`), in their order."""
    seen = [d for d in range(losses.shape[1]) if np.isfinite(losses[:, d]).any()]
    tokens = last_value(rows, EVAL_DOMAIN_TOKENS)[0]
    if tokens is not None and len(tokens) == losses.shape[1]:
        seen = sorted(seen, key=lambda d: -tokens[d])
    return sorted(seen[:_MAX_DOMAIN_LINES])


def plot_domain_loss(rows: list[dict], path: pathlib.Path) -> str | None:
    """Validation loss per domain vs step, and the overall val loss: the domains an evaluation
    held, at most _MAX_DOMAIN_LINES (most evaluated tokens; report.md's table has more)."""
    names, steps, losses = domain_losses(rows)
    if names is None:
        return f"no per-domain validation loss (`{EVAL_DOMAIN_LOSS}`) logged"
    shown = _drawn_domains(rows, losses)
    if not shown:
        return "no evaluation held a token of any domain"
    fig, (ax,) = _figure(width=7.5, height=4.4)
    for domain in shown:
        seen = np.isfinite(losses[:, domain])
        ax.plot(steps[seen], losses[seen, domain], "o-", markersize=3, linewidth=1.2,
                label=names[domain])
    val_steps, val = series(rows, VAL_LOSS)
    if val_steps is not None and val.ndim == 1:
        ax.plot(val_steps, val, "k-", linewidth=2.5, label="all domains")
    ax.set(title="Validation loss per domain", xlabel="step",
           ylabel="cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    note = (f"{len(shown)} of {len(names)} domains\n(evaluated, most tokens)"
            if len(shown) < len(names) else None)
    fig.legend(loc="outside right upper", fontsize="small", title=note,
               title_fontsize="small")
    _save(fig, path)
    return None


# (key, panel title, y scale): the training panels, each drawn when logged
_TRAINING_PANELS = ((LEARNING_RATE, "learning rate", "linear"),
                    (GRAD_NORM, "gradient norm (before clipping)", "log"),
                    (TOKENS_PER_S, "throughput (tokens / s)", "linear"),
                    (MFU, "model FLOPs utilisation", "linear"),
                    (STEP_MS, "step time (ms, median since the start)", "linear"))


def plot_training(rows: list[dict], path: pathlib.Path) -> str | None:
    """Learning rate, gradient norm and throughput (tokens/s, MFU, step time) vs step."""
    panels = [(key, title, scale, *series(rows, key)) for key, title, scale in _TRAINING_PANELS]
    panels = [panel for panel in panels if panel[3] is not None and panel[4].ndim == 1]
    if not panels:
        return f"none of {', '.join(k for k, _, _ in _TRAINING_PANELS)} logged"
    fig, axes = _figure(len(panels), width=4.6, height=3.2, max_cols=3)
    for ax, (key, title, scale, steps, values) in zip(axes, panels):
        ax.plot(steps, values, ".-", markersize=3)
        positive = scale == "log" and np.all(values[np.isfinite(values)] > 0)
        ax.set(xlabel="step", yscale="log" if positive else "linear")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    _save(fig, path)
    return None


_COMPARED = ((LOSS, "train loss (nats / token)"), (VAL_LOSS, "validation loss (nats / token)"),
             (ROUTING_ENTROPY, "routing entropy (nats)"),
             (ROUTING_SPECIALIZATION, "specialization (mean squared cosine)"))


def seed_band(curves: list) -> tuple:
    """(steps [N], mean [N], std [N]) of several seeds' curves [(steps, values)] on the steps
    they all logged; std is the sample std over seeds (0 for one seed)."""
    steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
    values = np.asarray([[dict(zip(s.tolist(), v))[t] for t in steps] for s, v in curves])
    std = values.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
    return np.asarray(steps), values.mean(0), std


def variant_curves(runs: dict) -> dict:
    """{metric key: {variant: (steps [N], mean [N], std [N])}} of `_COMPARED`, for the
    variants that logged it (`seed_band` of their seeds' curves)."""
    out = {}
    for key, _ in _COMPARED:
        for name, seeds in runs.items():
            curves = [series(rows, key) for rows in seeds]
            curves = [(s, reduce_values(key, v)) for s, v in curves if s is not None]
            if curves:
                out.setdefault(key, {})[name] = seed_band(curves)
    return out


def plot_variants(runs: dict, path: pathlib.Path) -> str | None:
    """Side by side: train loss, validation loss, routing entropy and specialization vs step,
    one line per variant (the mean over seeds) with a band of ± one std over seeds (error bars
    where a variant has a single point, e.g. one evaluation at the end).

    Args:
      runs: variant name -> list of logged rows of each seed; a seed's per-router values are
        reduced over routers (`metrics.reduce_values`: the mean), then the seeds' curves are
        combined on their common steps (`variant_curves`).
      path: the PNG to write.
    """
    curves = variant_curves(runs)
    if not curves:
        return "no loss or routing metrics logged"
    fig, axes = _figure(len(_COMPARED), width=5.2, height=3.8, max_cols=2)
    for ax, (key, label) in zip(axes, _COMPARED):
        for name, (steps, mean, std) in curves.get(key, {}).items():
            (line,) = ax.plot(steps, mean, label=name, marker="o" if len(steps) <= 10 else None)
            if len(steps) > 1:
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(),
                                alpha=0.2, linewidth=0)
            else:
                ax.errorbar(steps, mean, yerr=std, color=line.get_color(), capsize=4)
        ax.set(title=label, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    _save(fig, path)
    return None


def plot_points(lines: dict, path: pathlib.Path, *, title: str, xlabel: str,
                ylabel: str) -> None:
    """Markers only, at the measured x (no line joins two of them: nothing was measured
    between), mean over seeds ± one sample std per label; a label holding "null" is drawn
    with open markers.

    lines: label -> (xs [N], per-x lists of the seeds' values).
    """
    fig, (ax,) = _figure(1, width=6.4, height=4.4)
    markers = "osD^v<>ph*"
    for i, (label, (xs, values)) in enumerate(lines.items()):
        values = [np.asarray(v, np.float64) for v in values]
        std = [float(v.std(ddof=1)) if v.size > 1 else 0.0 for v in values]
        ax.errorbar(xs, [float(v.mean()) for v in values], yerr=std, label=label,
                    marker=markers[i % len(markers)], linestyle="none", capsize=3,
                    fillstyle="none" if "null" in label else "full")
    ax.set_xticks(sorted({float(x) for xs, _ in lines.values() for x in xs}))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
