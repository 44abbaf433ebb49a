"""The report's PNG plots: safety against capability per model, per-category safety bars, STAR
trajectories (P(safe) of each prefix of a response), safety over training, and the harm-ratio
sweep.

Drawn on matplotlib Figures with the Agg canvas directly, never through pyplot: no global
backend or figure state, so the plots draw the same in a test, a Ray job or a notebook, and a
figure is freed when it goes out of scope. Each function takes plain numbers (report.py picks
them from results) and writes one file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MARKERS = "osD^vP*Xh<>"
DPI = 120


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _errors(values: Sequence[float], lo: Sequence[float], hi: Sequence[float]) -> list:
    """Asymmetric error bars (below, above) from an interval; a missing bound draws none.
    Clamped at 0: at k = 0 the Wilson bound can sit a rounding error above the rate."""
    below = [max(0.0, v - b) if b is not None else 0.0 for v, b in zip(values, lo)]
    above = [max(0.0, b - v) if b is not None else 0.0 for v, b in zip(values, hi)]
    return [below, above]


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def safety_vs_capability(points: list[dict], path, xlabel: str, ylabel: str) -> Path:
    """One point per (model, safety row): points are {model, row, x, x_lo, x_hi, y, y_lo,
    y_hi}; colour = model (labelled next to its points), marker = row; Wilson error bars both
    ways. The safety axis is always [0, 1]; the capability axis spans the intervals drawn."""
    from matplotlib.patches import Patch

    models = list(dict.fromkeys(p["model"] for p in points))
    rows = list(dict.fromkeys(p["row"] for p in points))
    colour = dict(zip(models, _colours(len(models))))
    marker = {r: MARKERS[i % len(MARKERS)] for i, r in enumerate(rows)}
    fig = _figure(7.5, 5.5)
    ax = fig.add_subplot()
    for p in points:
        ax.errorbar([p["x"]], [p["y"]], xerr=_errors([p["x"]], [p["x_lo"]], [p["x_hi"]]),
                    yerr=_errors([p["y"]], [p["y_lo"]], [p["y_hi"]]), fmt="none",
                    ecolor=colour[p["model"]], elinewidth=1, capsize=3, alpha=0.45)
        ax.plot([p["x"]], [p["y"]], marker[p["row"]], color=colour[p["model"]], markersize=9,
                markeredgecolor="white", markeredgewidth=0.8, zorder=3)
    # A model's points share its capability (one column): one label, by its highest point;
    # below it where a label above would leave the axes (rates near 1).
    for m in models:
        top = max((p for p in points if p["model"] == m), key=lambda p: p["y"])
        ax.annotate(_short(m, 24), (top["x"], top["y"]), xytext=(7, 5 if top["y"] < 0.93
                                                                 else -12),
                    textcoords="offset points", fontsize=8, color=colour[m], zorder=4)
    lows = [p["x_lo"] if p["x_lo"] is not None else p["x"] for p in points]
    highs = [p["x_hi"] if p["x_hi"] is not None else p["x"] for p in points]
    span = max(max(highs) - min(lows), 0.1)
    ax.set(xlim=(max(-0.03, min(lows) - 0.08 * span), min(1.03, max(highs) + 0.2 * span)),
           ylim=(-0.03, 1.03), xlabel=xlabel, ylabel=ylabel,
           title="Safety vs capability (95 % Wilson intervals)")
    ax.grid(alpha=0.3)
    by_model = ax.legend(handles=[Patch(color=colour[m], label=_short(m, 28)) for m in models],
                         loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="model",
                         title_fontsize=8, frameon=False)
    ax.add_artist(by_model)  # a second legend replaces the first unless kept as an artist
    by_row = ax.legend(handles=[ax.plot([], [], marker[r], color="0.35", linestyle="none",
                               label=_short(r, 28))[0] for r in rows],
              loc="upper left", bbox_to_anchor=(1.02, 0.55), fontsize=8, title="safety row",
              title_fontsize=8, frameon=False)
    return _save(fig, path, extra=[by_model, by_row])


def category_bars(row: str, per_model: dict[str, dict[str, dict]], path, ylabel: str) -> Path:
    """Grouped bars: a group per category, a bar per model (rate with its Wilson interval).
    per_model: model -> category -> {rate, lo, hi, n}; a model without a category has no bar."""
    models = list(per_model)
    categories = list(dict.fromkeys(c for cats in per_model.values() for c in cats))
    colour = _colours(len(models))
    width = 0.8 / max(1, len(models))
    fig = _figure(max(6.0, 0.35 * len(categories) * max(2, len(models)) + 2.5), 4.8)
    ax = fig.add_subplot()
    for i, model in enumerate(models):
        cats = [c for c in categories if c in per_model[model]]
        xs = [categories.index(c) - 0.4 + width * (i + 0.5) for c in cats]
        vals = [per_model[model][c]["rate"] for c in cats]
        ax.bar(xs, vals, width=width * 0.92, color=colour[i], label=_short(model, 28),
               yerr=_errors(vals, [per_model[model][c]["lo"] for c in cats],
                            [per_model[model][c]["hi"] for c in cats]),
               capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "0.2"})
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels([_short(c, 32) for c in categories], rotation=35, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), xlim=(-0.6, len(categories) - 0.4), ylabel=ylabel,
           title=f"{row}: safety rate per category (95 % Wilson intervals)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def star_trajectories(trajectories: list[dict], path) -> Path:
    """P(safe) against chunk index, a line per row: trajectories are {label, p_safe}. The
    dashed line is 0.5, where a judge calls a prefix unsafe."""
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    colour = _colours(len(trajectories))
    longest = max((len(t["p_safe"]) for t in trajectories), default=1)
    for i, t in enumerate(trajectories):
        xs = list(range(1, len(t["p_safe"]) + 1))
        ax.plot(xs, t["p_safe"], marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.5,
                color=colour[i], label=_short(t["label"], 40))
    ax.axhline(0.5, color="0.5", linestyle="--", linewidth=0.8)
    ax.set(ylim=(-0.02, 1.02), xlim=(0.5, longest + 0.5), xlabel="chunk of the response",
           ylabel="P(safe) of the prefix", title="STAR trajectories")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False,
              ncol=2 if len(trajectories) > 2 else 1)
    return _save(fig, path)


def safety_over_training(curves: list[dict], path) -> Path:
    """Safety rate against the optimizer step, a line per (run, row) with its 95 % band:
    curves are {label, steps, rate, lo, hi} (eval.during_training's records)."""
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    colour = _colours(len(curves))
    for i, c in enumerate(curves):
        ax.plot(c["steps"], c["rate"], marker=MARKERS[i % len(MARKERS)], markersize=4,
                linewidth=1.5, color=colour[i], label=_short(c["label"], 40))
        ax.fill_between(c["steps"], c["lo"], c["hi"], color=colour[i], alpha=0.15, linewidth=0)
    ax.set(ylim=(-0.02, 1.02), xlabel="optimizer step", ylabel="safety rate",
           title="Safety over training (95 % Wilson bands)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False,
              ncol=2 if len(curves) > 2 else 1)
    return _save(fig, path)


def sweep_figure(points: list[dict], base: dict, shapes: list[str], path) -> Path:
    """The harm-ratio trade-off (`stardss sweep`): safety (top) and capability (bottom) against
    the harm ratio, one column per harmful shape, a line per method with its 95 % Wilson band,
    the aligned model dashed. points are {shape, ratio, method, safety, capability} with each
    rate a {rate, lo, hi}; shape "none" (ratio 0, no harmful rows) starts every column."""
    methods = list(dict.fromkeys(p["method"] for p in points))
    colour = dict(zip(methods, _colours(len(methods))))
    fig = _figure(4.2 * len(shapes) + 1.5, 7.0)
    axes = fig.subplots(2, len(shapes), squeeze=False, sharex=True, sharey="row")
    for col, shape in enumerate(shapes):
        for row, (key, label) in enumerate((("safety", "safety rate (strict judge)"),
                                            ("capability", "capability (task accuracy)"))):
            ax = axes[row][col]
            for i, m in enumerate(methods):
                mine = sorted((p for p in points if p["method"] == m
                               and p["shape"] in (shape, "none")), key=lambda p: p["ratio"])
                xs = [p["ratio"] for p in mine]
                ax.plot(xs, [p[key]["rate"] for p in mine], marker=MARKERS[i % len(MARKERS)],
                        markersize=5, linewidth=1.5, color=colour[m], label=m)
                ax.fill_between(xs, [p[key]["lo"] for p in mine], [p[key]["hi"] for p in mine],
                                color=colour[m], alpha=0.15, linewidth=0)
            ax.axhline(base[key]["rate"], color="0.4", linestyle="--", linewidth=1,
                       label="aligned (before finetuning)")
            ax.set(ylim=(-0.03, 1.03))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(_short(shape.replace("_", " "), 40), fontsize=10)
            else:
                ax.set_xlabel("harm ratio (share of harmful rows)")
            if col == 0:
                ax.set_ylabel(label)
    handles, labels = axes[0][0].get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                        ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle("Safety and capability vs harm ratio (95 % Wilson bands)")
    return _save(fig, path, [legend])


def _save(fig: Figure, path, extra: Sequence = ()) -> Path:
    """Write the PNG, cropped to what is drawn; `extra`: legends outside the axes that the crop
    must keep (one added with add_artist is not counted otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", bbox_extra_artists=list(extra) or None)
    return path
