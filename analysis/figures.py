"""Paper figures, each as a vector PDF (TrueType fonts) and a PNG, one or two paper columns wide.

Colour and marker shape both say the width (Okabe-Ito colours, safe for colour-blind readers and
in grey); a filled marker is a normal point, a hollow one a collapsed point, a star the dense
baseline. Legends sit outside the axes (or in a panel grid's empty slots). `captions.md`, written with
them, has one caption per figure, with the collapse rule's numbers.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
from matplotlib import patheffects
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
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
CAPTIONS = "captions.md"  # one caption per figure, next to them
MIN_SEEDS_FOR_BARS = 3  # with two seeds a 95% t interval is 12.7 standard errors wide: it would hide the figure


@contextmanager
def paper_style():
    with mpl.rc_context(STYLE):
        yield


def paper_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure with a canvas that can measure text (for placing labels)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def upright_crowded_ticks(fig: Figure) -> None:
    """Turn an axes' x tick labels upright where, laid out, two neighbours would touch."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()),
                       key=lambda box: box.x0)
        if any(left.x1 + 2 > right.x0 for left, right in zip(boxes, boxes[1:])):
            ax.tick_params(axis="x", labelrotation=90)


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


def density_text(density: float) -> str:
    return f"{100 * density:.3g}%"


def density_ticks(ax, points: pd.DataFrame) -> None:
    """Ticks at the grid's densities, as percentages; of two densities closer than 1.3x only the sparser is labelled."""
    densities = sorted(points["density"].unique())
    labels, last = [], None
    for d in densities:  # a density within 1.3x of the last labelled one keeps its tick, not its label
        close = last is not None and d / last < 1.3
        labels.append("" if close else density_text(d))
        last = last if close else d
    ax.set_xticks(densities, labels)
    ax.set_xlim(min(densities) / 1.5, max(densities) * 1.5)  # also where a panel has no data
    ax.xaxis.set_minor_locator(NullLocator())


def message(ax, text: str) -> None:
    """Say on the figure what is missing, instead of an empty axes."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=7, wrap=True,
            bbox={"boxstyle": "round", "facecolor": "#F4F4F4", "edgecolor": "#999999"})


def place_labels(ax, xs, ys, texts, fontsize: float = 5.5) -> None:
    """Write each text beside its point where it covers no other label, marker, line or text and stays in
    the axes (the least crowded place if none is free); a label put farther out gets a leader line.
    Measures the laid-out figure, so call it last; the labels do not move the layout."""
    fig = ax.figure
    fig.draw_without_rendering()
    renderer, pixels = fig.canvas.get_renderer(), fig.dpi / 72
    marks, lines = _occupied(ax, pixels)
    taken = [t.get_window_extent(renderer) for t in ax.texts if t.get_visible() and t.get_text()]
    radius = (mpl.rcParams["lines.markersize"] / 2 + 1.5) * pixels
    directions = [(1, 0), (1, 1), (1, -1), (0, 1), (0, -1), (-1, 0), (-1, 1), (-1, -1)]
    for x, y, text in zip(xs, ys, texts):
        px, py = ax.transData.transform((x, y))
        probe = ax.text(0, 0, text, fontsize=fontsize)
        box = probe.get_window_extent(renderer)
        probe.remove()
        half_w, half_h = box.width / 2 + 1, box.height / 2 + 1

        def placed_at(direction, ring):
            (dx, dy), gap = direction, radius + ring * pixels
            cx, cy = px + dx * (gap + half_w), py + dy * (gap + half_h)
            box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
            return _crowding(box, taken, ax.bbox, marks, lines) + ring, ring, (cx, cy)

        _, ring, (cx, cy) = min((placed_at(d, ring) for ring in (0, 4, 9, 15) for d in directions), key=lambda c: c[0])
        leader = {"arrowstyle": "-", "lw": 0.4, "color": "#888888", "shrinkA": 0, "shrinkB": radius / pixels}
        label = ax.annotate(text, (x, y), xytext=((cx - px) / pixels, (cy - py) / pixels), textcoords="offset points",
                            ha="center", va="center", fontsize=fontsize, color="#333333", zorder=4,
                            arrowprops=leader if ring else None)
        label.set_in_layout(False)
        taken.append(label.get_window_extent(renderer))


def _crowding(box: tuple, taken: list, inside, marks: np.ndarray, lines: np.ndarray) -> int:
    """How badly a label box (x0, y0, x1, y1 in pixels) would sit: over another label, out of the axes,
    over markers, over lines."""
    x0, y0, x1, y1 = box

    def covered(samples: np.ndarray) -> int:
        x, y, r = samples.T
        return int(np.sum((x + r > x0) & (x - r < x1) & (y + r > y0) & (y - r < y1)))

    clash = sum(b.x1 > x0 and b.x0 < x1 and b.y1 > y0 and b.y0 < y1 for b in taken)
    outside = not (inside.x0 <= x0 and x1 <= inside.x1 and inside.y0 <= y0 and y1 <= inside.y1)
    return 1000 * clash + 500 * outside + 20 * covered(marks) + covered(lines)


def _occupied(ax, pixels: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the axes already draw, in display pixels: markers and points sampled along lines and
    error bars, each as rows of (x, y, radius)."""
    marks, lines = [np.empty((0, 3))], [np.empty((0, 3))]

    def along(xy: np.ndarray, radius: float) -> None:
        xy = xy[np.isfinite(xy).all(axis=1)]
        for a, b in zip(xy, xy[1:]):
            t = np.linspace(0, 1, max(2, int(np.hypot(*(b - a)) / (2 * pixels)) + 1))[:, None]
            lines.append(np.column_stack([a + t * (b - a), np.full(len(t), radius)]))

    for line in ax.lines:
        xy = line.get_transform().transform(line.get_xydata())
        if line.get_linestyle() not in ("None", "", " "):
            along(xy, line.get_linewidth() * pixels / 2)
        if line.get_marker() not in ("None", "", " ", None):
            xy = xy[np.isfinite(xy).all(axis=1)]
            marks.append(np.column_stack([xy, np.full(len(xy), line.get_markersize() * pixels / 2)]))
    for collection in ax.collections:
        for segment in getattr(collection, "get_segments", list)():
            along(collection.get_transform().transform(segment), pixels)
    return np.concatenate(marks), np.concatenate(lines)


def loss_threshold(points: pd.DataFrame, rule: CollapseRule) -> float:
    """The loss from which the rule's near_reference indicator fires: bigram reference - ref_margin
    (NaN when the indicator is off or no point has a bigram reference)."""
    if rule.ref_margin is None or not points["bigram_loss"].notna().any():
        return math.nan
    return points["bigram_loss"].mean() - rule.ref_margin


def _shade_collapse(ax, points: pd.DataFrame, rule: CollapseRule, label: bool = True) -> bool:
    """Shade the loss axis from the rule's loss threshold on (and say so), if it is in view."""
    start = loss_threshold(points, rule)
    left, right = ax.get_xlim()
    if not start < right:
        return False
    ax.axvspan(max(start, left - 1), right + 1, color=SHADE, alpha=0.35, lw=0, zorder=0)
    ax.set_xlim(left, right)
    if not label:
        return True
    narrow = (right - max(start, left)) < 0.3 * (right - left)  # too narrow for the label across: write it upwards
    ax.annotate("collapse by loss", (max(start, left), 0.98), xycoords=ax.get_xaxis_transform(), xytext=(2, 0),
                textcoords="offset points", rotation=90 if narrow else 0, ha="left", va="top", fontsize=7,
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
    dashed over them, the rule's loss band shaded, sparse points labelled with their density; points
    with no circuit in a strip above (they have no log value)."""
    styles = series_styles(points)
    placed = points[np.isfinite(points["edges"])]
    no_circuit = points[points["pruned"] & ~np.isfinite(points["edges"])]
    with paper_style():
        fig = paper_figure(ONE_COLUMN, 3.9 if len(no_circuit) else 3.5)
        if len(no_circuit):
            top, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 6])
        else:
            top, ax = None, fig.subplots()
        for series, group in placed.groupby("series"):
            label, colour, marker = styles[series]
            best = pareto_mask(group["val_loss"], group["edges"])
            line = group[best].sort_values("val_loss")
            ax.plot(line["val_loss"], line["edges"], color=colour, lw=1.2, zorder=2)
            with_ci = group[group["n_seeds"] >= MIN_SEEDS_FOR_BARS]
            ax.errorbar(with_ci["val_loss"], with_ci["edges"], xerr=with_ci["val_loss_ci"].fillna(0),
                        yerr=[(with_ci["edges"] - with_ci["edges_low"]).fillna(0), (with_ci["edges_high"] - with_ci["edges"]).fillna(0)],
                        fmt="none", ecolor=colour, elinewidth=0.7, capsize=1.5, zorder=2)
            draw_points(ax, group["val_loss"], group["edges"], group[best], colour, marker)
            draw_points(ax, group[~best]["val_loss"], group[~best]["edges"], group[~best], colour, marker, alpha=0.45)
        overall = placed[pareto_mask(placed["val_loss"], placed["edges"])].sort_values("val_loss")
        extra = []
        if len(overall) > 1:  # over the coloured lines, with a white edge so that it shows where they meet
            frontier_style = {"color": "black", "ls": (0, (3, 1.5)), "lw": 1.0}
            ax.plot(overall["val_loss"], overall["edges"], zorder=2.5, **frontier_style,
                    path_effects=[patheffects.withStroke(linewidth=2.2, foreground="white")])
            extra.append(Line2D([], [], label="overall frontier", **frontier_style))
        if len(placed):
            log_y(ax, placed["edges"])
        elif points["pruned"].any():
            message(ax, "no point has a circuit: no task reached the\npruning target (see the strip above)")
        else:
            message(ax, "no circuit metrics in these runs\n(pruning disabled, or older runs):\nnothing to place on the circuit-size axis")
            ax.plot(points["val_loss"], np.zeros(len(points)), alpha=0)  # the loss range, for the x axis
            ax.set_yticks([])
        rows = _no_circuit_strip(top, no_circuit, styles) if top is not None else None
        ax.margins(x=0.08, y=0.12)
        _reference_lines(ax, points, vertical=True)
        if _shade_collapse(ax, points, rule):
            extra.append(Patch(color=SHADE, alpha=0.35, lw=0, label=f"loss \u2265 bigram \u2212 {rule.ref_margin:g}"))
            if top is not None:
                _shade_collapse(top, points, rule, label=False)
        labelled = placed[placed["density"] < 1]
        if len(labelled) or len(no_circuit):
            extra.append(Line2D([], [], ls="none", label="n%: weight density"))
        ax.set_xlabel(LOSS_LABEL + (f"\n{note}" if note else ""))
        ax.set_ylabel(edges_label)
        add_legend(fig, legend_handles(styles, points, extra), ONE_COLUMN)
        place_labels(ax, labelled["val_loss"], labelled["edges"], labelled["density"].map(density_text))
        if top is not None:
            place_labels(top, no_circuit["val_loss"], rows, no_circuit["density"].map(density_text))
        return save(fig, out, "frontier")


def strip_axes(ax, n_rows: int, label: str) -> None:
    """A strip of marks outside a value axis: one row per width, no y scale."""
    ax.set_ylim(-0.8, n_rows - 0.2)
    ax.set_yticks([])
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    ax.spines["left"].set_visible(False)


def _no_circuit_strip(ax, no_circuit: pd.DataFrame, styles: dict) -> pd.Series:
    """Points without a circuit, by loss only, one row per width; returns each point's row."""
    rows = no_circuit["series"].map({s: i for i, s in enumerate(styles)})
    for series, group in no_circuit.groupby("series"):
        _, colour, marker = styles[series]
        draw_points(ax, group["val_loss"], rows[group.index], group, colour, marker)
    strip_axes(ax, len(styles), "no\ncircuit")
    ax.tick_params(axis="x", labelbottom=False)
    return rows


def panel_grid(n_panels: int, most_columns: int = 4) -> tuple[int, int]:
    """(rows, columns) for n panels, with the fewest empty slots (at most one row's worth)."""
    if n_panels <= most_columns:
        return 1, n_panels
    columns = min(range(most_columns, most_columns - 2, -1), key=lambda c: -n_panels % c)
    return math.ceil(n_panels / columns), columns


def edges_by_task_figure(points: pd.DataFrame, per_task: pd.DataFrame, out: Path) -> list[Path]:
    """Circuit edges against density, one panel per task (and the geomean), one line per width; a strip
    under each panel marks, one row per width, the densities where that task was not solved. The
    legend takes the grid's empty slots, if any."""
    styles = series_styles(points)
    tasks = sorted(t for t in per_task["task"].unique() if t != CONTROL_TASK) if len(per_task) else []
    if len(per_task) and (per_task["task"] == CONTROL_TASK).any():
        tasks.append(CONTROL_TASK)
    panels = ["all tasks (geometric mean)", *tasks]
    rows, columns = panel_grid(len(panels))
    with paper_style():
        fig = paper_figure(TWO_COLUMNS, 2.1 * rows + (0.4 if rows * columns == len(panels) else 0.1))
        grid = fig.add_gridspec(rows, columns)
        shared = None
        for i, panel in enumerate(panels):
            cell = grid[i // columns, i % columns].subgridspec(2, 1, height_ratios=[5, 1])
            ax = fig.add_subplot(cell[0], sharex=shared)
            strip = fig.add_subplot(cell[1], sharex=ax)
            shared = shared or ax
            if panel == panels[0]:
                data = points.assign(n_solved=np.where(np.isfinite(points["edges"]), 1, 0))
                data = data[data["pruned"]]
            else:
                data = per_task[per_task["task"] == panel].merge(points[["point", "series", "regime"]], on="point")
            _edges_panel(ax, strip, data, styles)
            density_ticks(strip, points)
            ax.tick_params(axis="x", labelbottom=False)
            ax.set_title("nonsense control" if panel == CONTROL_TASK else panel)
            strip_axes(strip, len(styles), "not\nsolved" if i % columns == 0 else "")
            if not len(data):
                message(ax, "no circuit metrics\n(pruning disabled or older runs)")
                ax.set_yticks([])
            elif not (data["n_solved"] > 0).any():
                message(ax, "not solved at any point")
                ax.set_yticks([])
        fig.supylabel("circuit edges (count)", fontsize=8)
        fig.supxlabel(DENSITY_LABEL, fontsize=8)
        shared.invert_xaxis()
        extra = [Line2D([], [], color="#555555", marker="x", ls="none", label="task not solved")]
        handles = legend_handles(styles, points, extra)
        if rows * columns > len(panels):  # the legend in the empty slots of the last row
            spare = fig.add_subplot(grid[rows - 1, len(panels) % columns:])
            spare.axis("off")
            spare.legend(handles=handles, loc="center")
        else:
            add_legend(fig, handles, TWO_COLUMNS, where="upper")
        upright_crowded_ticks(fig)
        return save(fig, out, "circuit_edges_vs_density")


def _edges_panel(ax, strip, data: pd.DataFrame, styles: dict) -> None:
    """The solved points on a log axis; the unsolved ones as crosses in the strip, one row per width."""
    ax.set_xscale("log")
    solved = data[(data["n_solved"] > 0) & np.isfinite(data["edges"])]
    for series, group in solved.groupby("series"):
        _, colour, marker = styles[series]
        group = group.sort_values("density", ascending=False)
        ax.plot(group["density"], group["edges"], color=colour, zorder=2)
        draw_points(ax, group["density"], group["edges"], group, colour, marker)
    if len(solved):
        log_y(ax, solved["edges"])
    rows = {s: i for i, s in enumerate(styles)}
    for series, group in data[data["n_solved"] == 0].groupby("series"):
        strip.plot(group["density"], [rows[series]] * len(group), marker="x", ls="none", color=styles[series][1], zorder=3)


def capability_figure(points: pd.DataFrame, out: Path) -> list[Path]:
    """Held-out loss against nonzero parameters, one line per width, the reference losses as lines."""
    styles = series_styles(points)
    with paper_style():
        fig = paper_figure(ONE_COLUMN, 3.0)
        ax = fig.subplots()
        data = points[np.isfinite(points["nonzero_params"])]
        for series, group in data.groupby("series"):
            _, colour, marker = styles[series]
            group = group.sort_values("nonzero_params")
            ax.plot(group["nonzero_params"], group["val_loss"], color=colour, zorder=2)
            barred = group[group["n_seeds"] >= MIN_SEEDS_FOR_BARS]
            ax.errorbar(barred["nonzero_params"], barred["val_loss"], yerr=barred["val_loss_ci"].fillna(0), fmt="none",
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
    panels = [("solved_frac", "tasks solved (fraction;\nreported, not a signature)", rule.solved_frac),
              ("bigram_gap", "loss \u2212 bigram loss\n(nats/byte; a signature)", None if rule.ref_margin is None else -rule.ref_margin),
              ("dead", "dead units\n(fraction; a signature)", rule.dead_frac),
              ("shrink_ratio", "edges \u00f7 the next denser\npoint's (ratio; reported)", rule.shrink_ratio)]
    with paper_style():
        fig = paper_figure(TWO_COLUMNS, 4.4)
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
        extra = [Line2D([], [], color="#555555", ls=":", lw=0.8, label="threshold"),
                 Line2D([], [], color="#555555", ls="-", label="dead by weight"),
                 Line2D([], [], color="#555555", ls="--", label="dead by activity")]
        add_legend(fig, legend_handles(styles, points, extra), TWO_COLUMNS)
        upright_crowded_ticks(fig)
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


def _band_caption(points: pd.DataFrame, rule: CollapseRule) -> str:
    """The frontier's collapse band, with the rule's numbers."""
    if rule.ref_margin is None:
        return "No band is shaded: the rule's loss indicator is off (`--collapse ref_margin=off`)."
    threshold = loss_threshold(points, rule)
    if math.isnan(threshold):
        return "No band is shaded: no run logged a bigram reference loss, so the rule's loss indicator cannot fire."
    return (f"The shaded band is the rule's loss indicator: loss \u2265 bigram reference \u2212 ref_margin = "
            f"{points['bigram_loss'].mean():.3f} \u2212 {rule.ref_margin:g} = {threshold:.3f} nats/byte.")


def _threshold_caption(rule: CollapseRule) -> str:
    """Each indicator panel's dotted threshold, or that it is off, and whether it labels a point."""
    panels = [("tasks solved", rule.solved_frac, "fires at \u2264 {:g} after a denser point of the width solved more "
                                                 "(reported in points.csv's lost_tasks, never a label)"),
              ("loss \u2212 bigram", rule.ref_margin, "fires at \u2265 \u2212{:g} nats/byte (a signature)"),
              ("dead units, by weight (solid) and by activity (dashed)", rule.dead_frac, "fires at \u2265 {:g} (a signature)"),
              ("edges \u00f7 edges of the next denser point with a circuit, over the tasks both solved",
               rule.shrink_ratio, "fires at \u2265 {:g} (reported in not_shrinking, never a label)")]
    return "; ".join(f"{name}: " + ("off" if value is None else text.format(value)) for name, value, text in panels)


def captions(points: pd.DataFrame, rule: CollapseRule, edges_label: str, note: str = "") -> str:
    """`captions.md`: one caption per figure, with the collapse rule's numbers."""
    widths = "one colour and marker shape per width (Okabe-Ito colours)"
    markers = ("a filled marker is a normal point, a hollow one a point the collapse rule labels collapsed "
               "(one of the collapse's signatures fired at every seed), a star the dense model")
    logged = [(name, points[f"{name}_loss"].mean()) for name in ("bigram", "unigram") if points[f"{name}_loss"].notna().any()]
    references = ("the dotted and dashed lines are the bigram and unigram reference losses of the validation text"
                  + "".join(f", {name} {value:.3f}" for name, value in logged) + " nats/byte")
    no_circuit = points["pruned"] & ~np.isfinite(points["edges"])
    sections = {
        "frontier": (
            f"Held-out loss (nats/byte) against {edges_label.replace(chr(10), ', ')} (log scale), {widths}; {markers}. "
            "A solid line joins each width's Pareto-optimal points (dominated points are fainter); the black dashed "
            "line is the overall frontier of all widths. Each sparse point is labelled with its weight density (% of "
            f"weights nonzero). Error bars: 95% intervals over seeds (loss: t interval; edges: on the log scale), "
            f"drawn where a point has at least {MIN_SEEDS_FOR_BARS} seeds (with two, a t interval is 12.7 standard errors "
            "wide). "
            f"{_band_caption(points, rule)} A point collapsed by another signature (dead units or layers, see "
            f"`collapse_indicators`) can lie outside the band. Vertically, {references}."
            + (" Points with no circuit (no task reached the pruning target) are in the strip above, by loss only."
               if no_circuit.any() else "") + (f" {note}." if note else "")),
        "circuit_edges_vs_density": (
            "Circuit edges (count, log scale) against weight density (% of weights nonzero, log scale, sparser to the "
            f"right), one panel per task and one for the geometric mean over each point's solved tasks; {widths}; "
            f"{markers}. The strip under each panel marks with a cross, one row per width, the densities where the "
            "task was not solved (no circuit reached the pruning target), which have no edge count. The nonsense "
            "control should not be solved at any point."),
        "capability_vs_nonzero_params": (
            f"Held-out loss (nats/byte) against nonzero parameters (count, log scale), {widths}; {markers}. Error "
            f"bars: 95% t intervals over seeds, where a point has at least {MIN_SEEDS_FOR_BARS}. Horizontally, {references}."),
        "collapse_indicators": (
            f"The collapse indicators against weight density (sparser to the right), {widths}; {markers}. The dotted "
            f"line in each panel is the rule's threshold: {_threshold_caption(rule)}. Dead layers (fires at "
            + ("off" if rule.dead_layers is None else f"\u2265 {rule.dead_layers:g}") + ") have no panel. "
            f"The rule in use: {rule.describe()}. `points.csv` names, per point, each signature that fired with "
            "its numbers and the seeds it fired at (column `rule`), and the consequences reported beside the label "
            "(columns `lost_tasks`, `not_shrinking`)."),
    }
    return "# Figure captions\n\nWritten by `python -m analysis frontier` with the figures (PDF and PNG).\n" + "".join(
        f"\n## {name}\n\n`{name}.pdf`, `{name}.png`: {text}\n" for name, text in sections.items())


def write_all(points: pd.DataFrame, per_task: pd.DataFrame, rule: CollapseRule, out: Path,
              edges_label: str, note: str = "") -> list[Path]:
    """Every figure and their captions (`captions.md`) into `out`; returns the files written."""
    (out / CAPTIONS).write_text(captions(points, rule, edges_label, note))
    return [*frontier_figure(points, rule, out, edges_label, note), *edges_by_task_figure(points, per_task, out),
            *capability_figure(points, out), *indicators_figure(points, rule, out), out / CAPTIONS]
