"""The report's figures at scale (24 routers x 64 experts): bounded pixel sizes, every text
inside the figure, colour scales fitted to the values; per-domain validation loss (table and
plot) and the training panels."""

import json
import struct

import numpy as np
import pytest

from moejax.reporting import plots, report, routing_plots

ROUTERS, EXPERTS, DOMAINS = 24, 64, 12
MAX_PIXELS = tuple(int(inches * plots.DPI) for inches in plots.MAX_FIGURE_INCHES)


def _deep_wide_rows(rng):
    """Two logged steps of a 24-layer, 64-expert model with 12 long-named domains."""
    names = [f"a_domain_with_a_rather_long_name_{d}" for d in range(DOMAINS)]
    rows = []
    for step in (100, 200):
        domain_loss = rng.uniform(2, 4, DOMAINS)
        if step == 200:
            domain_loss[3] = np.nan  # not in the last evaluation's batches
        rows.append({
            "step": step, "loss": 3.0, "learning_rate": 1e-3 * step / 200, "grad_norm": 0.5,
            "tokens_per_s": 1e5, "mfu": 0.4, "step_ms": 120.0,
            "routing/entropy": rng.uniform(0, 2, ROUTERS).tolist(),
            "routing/specialization": rng.uniform(0, 1, ROUTERS).tolist(),
            "routing/pathway_entropy": rng.uniform(0, 1, ROUTERS - 1).tolist(),
            "routing/tokens_per_expert": rng.integers(0, 500, (ROUTERS, EXPERTS)).tolist(),
            "routing/transitions": rng.poisson(3, (ROUTERS - 1, EXPERTS, EXPERTS)).tolist(),
            "val_loss": 3.2, "eval/domain_names": names,
            "eval/domain_loss": domain_loss.tolist(),
            "eval/domain_tokens": rng.integers(1, 1000, DOMAINS).tolist(),
            "eval/routing/domain_counts": rng.poisson(5, (ROUTERS, EXPERTS, DOMAINS)).tolist(),
            "eval/routing/domain_nmi": rng.uniform(0, 1, ROUTERS).tolist()})
    rows[1]["eval/domain_tokens"][3] = 0
    return rows


@pytest.fixture(scope="module")
def deep_wide_report(tmp_path_factory):
    """(workdir, rows, {png name: Figure}) of the report of a 24 x 64 run."""
    workdir = tmp_path_factory.mktemp("deep_wide")
    rows = _deep_wide_rows(np.random.default_rng(0))
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures, save = {}, plots._save
    with pytest.MonkeyPatch.context() as patch:
        for module in (plots, routing_plots):  # routing_plots holds its own name for _save
            patch.setattr(module, "_save", lambda fig, path: (
                figures.__setitem__(path.name, fig), save(fig, path))[-1])
        report.write_report(workdir)
    return workdir, rows, figures


def _png_size(path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def test_every_plot_is_drawn_within_the_size_cap(deep_wide_report):
    workdir, _, figures = deep_wide_report
    assert set(figures) == {name for name, _, _ in report.PLOTS}
    for name in figures:
        width, height = _png_size(workdir / "plots" / name)
        assert width <= MAX_PIXELS[0] and height <= MAX_PIXELS[1], (name, width, height)
    # was 3036 x 4290 px (one 6.9 x 6.5 in panel per router pair) and 3300 x 6160 px
    assert len(figures["transitions.png"].axes) <= plots.MAX_PANELS + 2  # + colour bars
    assert len(figures["expert_domain.png"].axes) == plots.MAX_PANELS + 1


def _ticks_out_of_view(ax):
    """The tick labels matplotlib keeps but does not draw (their tick is off the axis)."""
    for labels, limits, coordinate in ((ax.get_xticklabels(), ax.get_xlim(), 0),
                                       (ax.get_yticklabels(), ax.get_ylim(), 1)):
        low, high = sorted(limits)
        span = 1e-9 * (high - low)
        yield from (label for label in labels
                    if not low - span <= label.get_position()[coordinate] <= high + span)


def test_no_text_is_clipped(deep_wide_report):
    """Every title, label and tick label lies inside its figure (constrained layout, wrapped
    titles and colour-bar labels)."""
    from matplotlib.text import Text

    for name, fig in deep_wide_report[2].items():
        fig.canvas.draw()  # at the figure's dpi, as fig.bbox is (savefig restores it)
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        hidden = {id(label) for ax in fig.axes for label in _ticks_out_of_view(ax)}
        for text in fig.findobj(Text):
            if not text.get_visible() or not text.get_text().strip() or id(text) in hidden:
                continue
            extent = text.get_window_extent(renderer)
            inside = (extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1
                      and extent.y0 >= box.y0 - 1 and extent.y1 <= box.y1 + 1)
            assert inside, (name, text.get_text(), extent, box)


def test_colour_scales_fit_the_values(deep_wide_report):
    _, rows, figures = deep_wide_report
    counts = np.asarray(rows[-1]["routing/transitions"], np.float64)
    probs = counts / counts.sum(-1, keepdims=True)
    images = [ax.images[0] for ax in figures["transitions.png"].axes if ax.images]
    summary, pairs = images[0], images[1:]
    shown = plots.sampled(ROUTERS - 1, plots.MAX_PANELS - 1)
    assert len(pairs) == len(shown) == plots.MAX_PANELS - 1
    top = np.percentile(probs[shown], plots.COLOUR_PERCENTILE)
    for image in pairs:  # ~1/64 each: a scale to 1 drew every map dark
        assert image.get_clim() == (0.0, pytest.approx(top))
    assert summary.get_clim()[1] == pytest.approx(
        np.percentile(probs.max(-1), plots.COLOUR_PERCENTILE))
    assert summary.get_array().shape == (ROUTERS - 1, EXPERTS)
    (domain_image, *_) = [ax.images[0] for ax in figures["expert_domain.png"].axes if ax.images]
    assert domain_image.get_clim()[1] < 0.1  # P(expert | domain) ~ 1/64
    assert plots.colour_limit([0.01] * 200 + [1.0]) == pytest.approx(0.01)  # one outlier
    assert plots.colour_limit([np.nan, 0.0]) == 1e-12 and plots.colour_limit([]) == 1.0


def test_validation_loss_per_domain_table_and_plot(deep_wide_report):
    workdir, rows, figures = deep_wide_report
    text = (workdir / "report.md").read_text()
    assert "## Validation loss per domain" in text
    names, tokens = rows[-1]["eval/domain_names"], rows[-1]["eval/domain_tokens"]
    first = int(np.argmax(tokens))
    loss = rows[-1]["eval/domain_loss"][first]
    best = min(r["eval/domain_loss"][first] for r in rows)
    assert f"| {names[first]} | {loss:.4f} | {best:.4f} " in text
    assert f"| {names[3]} | - | " in text  # the last evaluation did not hold it
    lines = [line.get_label() for line in figures["val_loss_domains.png"].axes[0].lines]
    assert lines[-1] == "all domains" and set(lines[:-1]) <= set(names)
    assert len(lines) == plots._MAX_DOMAIN_LINES + 1


def test_training_panels(deep_wide_report):
    workdir, _, figures = deep_wide_report
    titles = [ax.get_title() for ax in figures["training.png"].axes]
    assert titles == ["learning rate", "gradient norm (before clipping)",
                      "throughput (tokens / s)", "model FLOPs utilisation",
                      "step time (ms, median since the start)"]
    text = (workdir / "report.md").read_text()
    assert "| learning rate (step 200) | 0.001 |" in text and "| MFU (step 200) | 0.400 |" in text


def test_the_training_plot_is_skipped_without_its_metrics(tmp_path):
    assert plots.plot_training([{"step": 1, "loss": 2.0}], tmp_path / "t.png").startswith(
        "none of learning_rate, grad_norm")
    assert plots.plot_domain_loss([{"step": 1, "loss": 2.0}], tmp_path / "d.png") == (
        "no per-domain validation loss (`eval/domain_loss`) logged")
    assert not list(tmp_path.iterdir())
