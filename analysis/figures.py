"""Paper figures, each as a vector PDF (TrueType fonts) and a PNG, one or two paper columns wide.

Colour and marker shape both say the width (Okabe-Ito colours, safe for colour-blind readers and
in grey); a filled marker is a normal point, a hollow one a collapsed point, a star the dense
baseline. Legends sit outside the axes.
"""

from __future__ import annotations

import math
import textwrap
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

from analysis.collapse import COLLAPSE, CollapseRule
from analysis.frontier import CONTROL_TASK, pareto_mask

ONE_COLUMN, TWO_COLUMNS = 3.4, 7.0  # inches: one and two columns of a two-column paper
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
SHADE = "#BBBBBB"
PNG_DPI = 200  # the PDF is the paper's copy; the PNG is for looking
STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
         "legend.fontsize": 7, "legend.handlelength": 1.6, "legend.columnspacing": 1.0, "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False,
         "axes.spines.right": False, "lines.linewidth": 1.2, "lines.markersize": 4.5, "legend.frameon": False,
         "savefig.dpi": 300}
LOSS_LABEL = "held-out loss (nats/byte)"
DENSITY_LABEL = "weight density (% of weights nonzero; sparser \u2192)"
FIGURES = ("frontier", "circuit_edges_vs_density", "capability_vs_nonzero_params", "collapse_indicators")


@contextmanager
def paper_style():
    with mpl.rc_context(STYLE):
        yield


def save(fig: Figure, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.pdf", out / f"{name}.png"]
    fig.savefig(paths[0])
    fig.set_layout_engine("none")  # laid out once for the PDF; the PNG keeps those positions
    fig.savefig(paths[1], dpi=PNG_DPI)
    return paths


def series_styles(points: pd.DataFrame) -> dict[str, tuple[str, str, str]]:
    """{series: (legend label, colour, marker)}, ordered by width."""
    order = points.drop_duplicates("series").sort_values(["width", "series"])
    styles = {}
    for i, (_, p) in enumerate(order.iterrows()):
        width = f"x{p['width']:g}" + (f" (d_model {p['d_model']:g})" if np.isfinite(p["d_model"]) else "")
        label = width + p["series"].removeprefix(f"x{p['width']:g}")
        styles[p["series"]] = (label, OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)])
    return styles


def _marker_kw(colour: str, marker: str, collapsed: bool, dense: bool) -> dict:
    return {"marker": "*" if dense else marker, "markersize": 8 if dense else 4.5, "markeredgecolor": colour,
            "markerfacecolor": "white" if collapsed else colour, "markeredgewidth": 1.0, "linestyle": "none"}


def draw_points(ax, x, y, group: pd.DataFrame, colour: str, marker: str, alpha: float = 1.0, **kw) -> None:
    """One marker per point: hollow if collapsed, a star if dense."""
    for xi, yi, (_, p) in zip(x, y, group.iterrows()):
        ax.plot([xi], [yi], alpha=alpha, zorder=3, **_marker_kw(colour, marker, p["regime"] == COLLAPSE, p["density"] >= 1), **kw)


def legend_handles(styles: dict, points: pd.DataFrame, extra: list | None = None) -> list:
    handles = [Line2D([], [], color=c, marker=m, label=label) for label, c, m in styles.values()]
    if (points["density"] >= 1).any():
        handles.append(Line2D([], [], color="black", **_marker_kw("black", "*", False, True), label="dense (density 1)"))
    if (points["regime"] == COLLAPSE).any():
        handles.append(Line2D([], [], color="black", **_marker_kw("black", "o", True, False), label="collapsed point"))
    return handles + (extra or [])


def add_legend(fig: Figure, handles: list, width: float, where: str = "lower") -> None:
    """Outside the axes, as many columns as fit the figure's width (7 pt text is about 0.055 in a character)."""
    entry = 0.45 + 0.055 * max(len(h.get_label()) for h in handles)
    fig.legend(handles=handles, loc=f"outside {where} center", ncol=max(1, min(len(handles), int(0.95 * width / entry))))


def log_y(ax, values: pd.Series) -> None:
    """A log y axis; a single value gets a decade of room (matplotlib cannot scale a zero range)."""
    if values.nunique() == 1:
        ax.set_ylim(values.iloc[0] / 3, values.iloc[0] * 3)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))  # 1,000 not 10^3
    ax.yaxis.set_minor_formatter(NullFormatter())


def density_ticks(ax, points: pd.DataFrame) -> None:
    """Ticks at the grid's densities, as percentages (short enough not to collide on a log axis)."""
    densities = sorted(points["density"].unique())
    ax.set_xticks(densities, [f"{100 * d:.3g}%" for d in densities])
    ax.xaxis.set_minor_locator(NullLocator())


def message(ax, text: str) -> None:
    """Say on the figure what is missing, instead of an empty axes."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=7, wrap=True,
            bbox={"boxstyle": "round", "facecolor": "#F4F4F4", "edgecolor": "#999999"})


def collapse_region_start(points: pd.DataFrame, rule: CollapseRule) -> float:
    """The loss from which on the regime is collapse: where the rule's near_reference threshold puts it,
    or, if lower, halfway between the worst normal point and the next (collapsed) one, when every
    point beyond is collapsed. NaN when there is no such region (collapsed points are still drawn hollow)."""
    starts = []
    if rule.ref_margin is not None:
        starts.append(points["bigram_loss"].mean() - rule.ref_margin)
    normal = points.loc[points["regime"] != COLLAPSE, "val_loss"]
    collapsed = points.loc[points["regime"] == COLLAPSE, "val_loss"]
    if len(collapsed) and not len(normal):
        starts.append(-math.inf)
    elif len(normal) and (collapsed > normal.max()).any():
        starts.append((normal.max() + collapsed[collapsed > normal.max()].min()) / 2)
    finite = [s for s in starts if not math.isnan(s)]
    return min(finite) if finite else math.nan


def _shade_collapse(ax, points: pd.DataFrame, rule: CollapseRule, label: bool = True) -> bool:
    """Shade and label the collapse region of the loss axis, if it is in view."""
    start = collapse_region_start(points, rule)
    left, right = ax.get_xlim()
    if not start < right:
        return False
    ax.axvspan(max(start, left - 1), right + 1, color=SHADE, alpha=0.35, lw=0, zorder=0)
    ax.set_xlim(left, right)
    if not label:
        return True
    text = "every point collapsed" if not (points["regime"] != COLLAPSE).any() else "collapse regime"
    begin = max(start, left)
    narrow = (right - begin) < 0.3 * (right - left)  # too narrow for the label across: write it upwards
    ax.text((begin + right) / 2 if narrow else begin + 0.01 * (right - left), 0.98, text, rotation=90 if narrow else 0,
            transform=ax.get_xaxis_transform(), ha="center" if narrow else "left", va="top", fontsize=7,
            style="italic", color="#444444")
    return True


def _reference_lines(ax, points: pd.DataFrame, vertical: bool) -> None:
    """The bigram and unigram reference losses of the validation split, where they fall in view."""
    lo, hi = ax.get_xlim() if vertical else ax.get_ylim()
    for name, column, style in (("bigram", "bigram_loss", ":"), ("unigram", "unigram_loss", "--")):
        value = points[column].mean()
        if np.isfinite(value) and lo <= value <= hi + 0.05 * (hi - lo):
            if vertical:
                ax.axvline(value, color="#555555", ls=style, lw=0.8, zorder=1)
                ax.text(value, 0.02, f" {name}", transform=ax.get_xaxis_transform(), fontsize=6, color="#555555",
                        rotation=90, ha="right", va="bottom")
            else:
                ax.axhline(value, color="#555555", ls=style, lw=0.8, zorder=1)
                ax.text(1.0, value, f"{name} ", transform=ax.get_yaxis_transform(), fontsize=6, color="#555555",
                        ha="right", va="bottom")


def frontier_figure(points: pd.DataFrame, rule: CollapseRule, out: Path, edges_label: str, note: str = "") -> list[Path]:
    """Capability (x) against circuit edges (y, log), one Pareto line per width, the overall frontier
    dashed, collapse shaded; points with no circuit in a strip above (they have no log value)."""
    styles = series_styles(points)
    placed = points[np.isfinite(points["edges"])]
    no_circuit = points[points["pruned"] & ~np.isfinite(points["edges"])]
    with paper_style():
        fig = Figure(figsize=(ONE_COLUMN, 3.9 if len(no_circuit) else 3.5), layout="constrained")
        if len(no_circuit):
            top, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 6])
        else:
            top, ax = None, fig.subplots()
        for series, group in placed.groupby("series"):
            label, colour, marker = styles[series]
            best = pareto_mask(group["val_loss"], group["edges"])
            line = group[best].sort_values("val_loss")
            ax.plot(line["val_loss"], line["edges"], color=colour, lw=1.2, zorder=2)
            with_ci = group[group["n_seeds"] > 1]
            ax.errorbar(with_ci["val_loss"], with_ci["edges"], xerr=with_ci["val_loss_ci"].fillna(0),
                        yerr=[(with_ci["edges"] - with_ci["edges_low"]).fillna(0), (with_ci["edges_high"] - with_ci["edges"]).fillna(0)],
                        fmt="none", ecolor=colour, elinewidth=0.7, capsize=1.5, zorder=2)
            draw_points(ax, group["val_loss"], group["edges"], group[best], colour, marker)
            draw_points(ax, group[~best]["val_loss"], group[~best]["edges"], group[~best], colour, marker, alpha=0.45)
            for _, p in group[group["density"] < 1].iterrows():
                ax.annotate(f"{100 * p['density']:.3g}%", (p["val_loss"], p["edges"]), xytext=(3, 2), textcoords="offset points",
                            fontsize=5.5, color="#333333")
        overall = placed[pareto_mask(placed["val_loss"], placed["edges"])].sort_values("val_loss")
        extra = []
        if len(overall) > 1:
            ax.plot(overall["val_loss"], overall["edges"], color="black", ls="--", lw=0.8, zorder=1)
            extra.append(Line2D([], [], color="black", ls="--", lw=0.8, label="overall frontier"))
        if len(placed):
            log_y(ax, placed["edges"])
        elif points["pruned"].any():
            message(ax, "no point has a circuit: no task reached the\npruning target (see the strip above)")
        else:
            message(ax, "no circuit metrics in these runs\n(pruning disabled, or older runs):\nnothing to place on the circuit-size axis")
            ax.plot(points["val_loss"], np.zeros(len(points)), alpha=0)  # the loss range, for the x axis
            ax.set_yticks([])
        if top is not None:
            _no_circuit_strip(top, no_circuit, styles)
        ax.margins(x=0.08, y=0.12)
        _reference_lines(ax, points, vertical=True)
        if _shade_collapse(ax, points, rule):
            extra.append(Patch(color=SHADE, alpha=0.35, lw=0, label="collapse regime"))
            if top is not None:
                _shade_collapse(top, points, rule, label=False)
        ax.set_xlabel(LOSS_LABEL + (f"\n{note}" if note else ""))
        ax.set_ylabel(edges_label)
        add_legend(fig, legend_handles(styles, points, extra), ONE_COLUMN)
        return save(fig, out, "frontier")


def _no_circuit_strip(ax, no_circuit: pd.DataFrame, styles: dict) -> None:
    """Points without a circuit, by loss only, one row per width."""
    rows = {s: i for i, s in enumerate(styles)}
    for series, group in no_circuit.groupby("series"):
        _, colour, marker = styles[series]
        draw_points(ax, group["val_loss"], [rows[series]] * len(group), group, colour, marker)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_yticks([])
    ax.set_ylabel("no\ncircuit", rotation=0, ha="right", va="center", fontsize=7)
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="x", labelbottom=False)


def edges_by_task_figure(points: pd.DataFrame, per_task: pd.DataFrame, out: Path) -> list[Path]:
    """Circuit edges against density, one panel per task (and the geomean), one line per width;
    an x at the bottom of a panel marks a point where that task was not solved."""
    styles = series_styles(points)
    tasks = sorted(t for t in per_task["task"].unique() if t != CONTROL_TASK) if len(per_task) else []
    if len(per_task) and (per_task["task"] == CONTROL_TASK).any():
        tasks.append(CONTROL_TASK)
    panels = ["all tasks (geometric mean)", *tasks]
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    with paper_style():
        fig = Figure(figsize=(TWO_COLUMNS, 1.9 * rows + 0.5), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, squeeze=False)).ravel()
        for ax, panel in zip(axes, panels):
            if panel == panels[0]:
                data = points.assign(n_solved=np.where(np.isfinite(points["edges"]), 1, 0))
                data = data[data["pruned"]]
            else:
                data = per_task[per_task["task"] == panel].merge(points[["point", "series", "regime"]], on="point")
            _edges_panel(ax, data, styles)
            density_ticks(ax, points)
            ax.set_title("nonsense control" if panel == CONTROL_TASK else panel)
            if not len(data):
                message(ax, "no circuit metrics\n(pruning disabled or older runs)")
                ax.set_yticks([])
            elif not (data["n_solved"] > 0).any():
                message(ax, "not solved at any point")
                ax.set_yticks([])
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        fig.supylabel("circuit edges (count)", fontsize=8)
        fig.supxlabel(DENSITY_LABEL, fontsize=8)
        axes[0].invert_xaxis()
        extra = [Line2D([], [], color="#555555", marker="x", ls="none", label="task not solved")]
        add_legend(fig, legend_handles(styles, points, extra), TWO_COLUMNS, where="upper")
        return save(fig, out, "circuit_edges_vs_density")


def _edges_panel(ax, data: pd.DataFrame, styles: dict) -> None:
    ax.set_xscale("log")
    solved = data[(data["n_solved"] > 0) & np.isfinite(data["edges"])]
    for series, group in solved.groupby("series"):
        _, colour, marker = styles[series]
        group = group.sort_values("density", ascending=False)
        ax.plot(group["density"], group["edges"], color=colour, zorder=2)
        draw_points(ax, group["density"], group["edges"], group, colour, marker)
    if len(solved):
        log_y(ax, solved["edges"])
    unsolved = data[data["n_solved"] == 0]
    rows = {s: i for i, s in enumerate(styles)}  # one height per width, so the crosses do not cover each other
    for series, group in unsolved.groupby("series"):
        ax.plot(group["density"], [0.03 + 0.05 * rows[series]] * len(group), transform=ax.get_xaxis_transform(),
                marker="x", ls="none", color=styles[series][1], clip_on=False, zorder=3)


def capability_figure(points: pd.DataFrame, out: Path) -> list[Path]:
    """Held-out loss against nonzero parameters, one line per width, the reference losses as lines."""
    styles = series_styles(points)
    with paper_style():
        fig = Figure(figsize=(ONE_COLUMN, 3.0), layout="constrained")
        ax = fig.subplots()
        data = points[np.isfinite(points["nonzero_params"])]
        for series, group in data.groupby("series"):
            _, colour, marker = styles[series]
            group = group.sort_values("nonzero_params")
            ax.plot(group["nonzero_params"], group["val_loss"], color=colour, zorder=2)
            ax.errorbar(group["nonzero_params"], group["val_loss"], yerr=group["val_loss_ci"].fillna(0), fmt="none",
                        ecolor=colour, elinewidth=0.7, capsize=1.5, zorder=2)
            draw_points(ax, group["nonzero_params"], group["val_loss"], group, colour, marker)
        if len(data):
            ax.set_xscale("log")
            ax.margins(y=0.1)
            _reference_lines(ax, points, vertical=False)
        else:
            message(ax, "model/nonzero_params not logged")
        ax.set_xlabel("nonzero parameters (count)")
        ax.set_ylabel(LOSS_LABEL)
        add_legend(fig, legend_handles(styles, points), ONE_COLUMN)
        return save(fig, out, "capability_vs_nonzero_params")


def indicators_figure(points: pd.DataFrame, rule: CollapseRule, out: Path) -> list[Path]:
    """The collapse indicators against density, each with its threshold (dotted) from the rule."""
    styles = series_styles(points)
    panels = [("solved_frac", "tasks solved\n(fraction)", rule.solved_frac),
              ("bigram_gap", "loss \u2212 bigram loss\n(nats/byte)", None if rule.ref_margin is None else -rule.ref_margin),
              ("dead", "dead units\n(fraction)", rule.dead_frac),
              ("shrink_ratio", "edges \u00f7 edges of the\nnext denser point (ratio)", rule.shrink_ratio)]
    with paper_style():
        fig = Figure(figsize=(TWO_COLUMNS, 4.4), layout="constrained")
        axes = fig.subplots(2, 2, sharex=True).ravel()
        for ax, (column, label, threshold) in zip(axes, panels):
            ax.set_xscale("log")
            drawn = _indicator_panel(ax, points, column, styles)
            density_ticks(ax, points)
            if not drawn:
                message(ax, "not logged in these runs" if column != "shrink_ratio"
                        else "needs two densities of a width with circuits")
            if threshold is not None and drawn:
                ax.axhline(threshold, color="#555555", ls=":", lw=0.8, zorder=1)
            ax.set_ylabel(label)
        axes[0].invert_xaxis()
        for ax in axes[2:]:
            ax.set_xlabel(DENSITY_LABEL)
        extra = [Line2D([], [], color="#555555", ls=":", lw=0.8, label="threshold of the rule"),
                 Line2D([], [], color="#555555", ls="-", label="dead by weight"),
                 Line2D([], [], color="#555555", ls="--", label="dead by activity")]
        add_legend(fig, legend_handles(styles, points, extra), TWO_COLUMNS)
        fig.suptitle("\n".join(textwrap.wrap(rule.describe(), 120)), fontsize=7)
        return save(fig, out, "collapse_indicators")


def _indicator_panel(ax, points: pd.DataFrame, column: str, styles: dict) -> bool:
    """Draw one indicator; False if no point has it."""
    columns = [("dead_by_weight", "-"), ("dead_by_activity", "--")] if column == "dead" else [(column, "-")]
    drawn = False
    for name, style in columns:
        data = points[np.isfinite(points[name].astype(float))]
        for series, group in data.groupby("series"):
            _, colour, marker = styles[series]
            group = group.sort_values("density", ascending=False)
            ax.plot(group["density"], group[name], color=colour, ls=style, zorder=2)
            draw_points(ax, group["density"], group[name], group, colour, marker)
            drawn = True
    return drawn


def write_all(points: pd.DataFrame, per_task: pd.DataFrame, rule: CollapseRule, out: Path,
              edges_label: str, note: str = "") -> list[Path]:
    """Every figure into `out`; returns the files written."""
    return [*frontier_figure(points, rule, out, edges_label, note), *edges_by_task_figure(points, per_task, out),
            *capability_figure(points, out), *indicators_figure(points, rule, out)]
