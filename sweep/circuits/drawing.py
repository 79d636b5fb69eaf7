"""Circuit drawings a person can read, from the circuit's JSON record: every node of a small circuit,
the node locations of a large one, a short note for an unsolved task; each as PNG and as SVG whose
nodes and edges carry their full names and weights as hover titles."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Callable
from xml.sax.saxutils import escape

from sweep.names import NODE_LOCATIONS

POSITIVE, NEGATIVE = "#0072B2", "#D55E00"  # Okabe-Ito blue and vermillion: colour-blind safe
DETAIL_MAX_EDGES = 300  # up to this many edges every node and edge is drawn; above, grouped by node location
TOP_EDGES = 30  # the strongest edges listed beside a grouped drawing
MAX_SIDE = 1600  # px: a drawing that would be taller is grouped instead
DPI = 100
FONT = 9  # pt: node labels; 9 pt is 12.5 px at DPI 100
PX = DPI / 72  # px per pt
CHAR = 0.6 * FONT * PX  # px per character of the monospaced labels
ROW, BOX_H, GAP, MARGIN, HEAD = 20, 16, 56, 16, 84  # node drawing: row pitch, box height, column gap, margin, title
OUT = 10**6  # band of the output end (resid.out, unembed), after every layer

TokenText = Callable[[int], str]


def draw(path: Path, record: dict, token_text: TokenText = chr) -> list[Path]:
    """Write `path` (PNG) and the same drawing as SVG and as an HTML page holding that SVG beside it (MLflow's
    UI previews HTML in a frame, where the hover titles work; it shows an SVG as a plain image); return them."""
    if record["n_edges"] is None and record["reason"]:
        canvas = _unsolved(record)
    else:
        canvas = _nodes_drawing(record, token_text) if len(record["edges"]) <= DETAIL_MAX_EDGES else None
        canvas = canvas or _groups_drawing(record, token_text)
    return canvas.save(path)


class _Canvas:
    """A figure whose data coordinates are its pixels (y up), with hover titles for the SVG."""

    def __init__(self, width: float, height: float):
        from matplotlib.figure import Figure

        self.width, self.height = math.ceil(width), math.ceil(height)
        self.fig = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, self.width)
        self.ax.set_ylim(0, self.height)
        self.ax.set_axis_off()
        self.tips: dict[str, str] = {}

    def tip(self, artist, title: str):
        """Give the artist a hover title in the SVG."""
        gid = f"tip{len(self.tips)}"
        artist.set_gid(gid)
        self.tips[gid] = title
        return artist

    def text(self, x: float, top: float, s: str, **kw):
        return self.ax.text(x, self.height - top, s, fontsize=kw.pop("fontsize", FONT), va=kw.pop("va", "center"), **kw)

    def box(self, x: float, top: float, w: float, h: float, label: str, title: str, **kw) -> None:
        from matplotlib.patches import Rectangle

        self.tip(self.ax.add_patch(Rectangle((x, self.height - top - h), w, h, facecolor="white", edgecolor="#555555",
                                             lw=0.8, zorder=2)), title)
        self.tip(self.text(x + w / 2, top + h / 2, label, ha="center", zorder=3, **kw), title)

    def header(self, title: str, subtitle: str, legend: list[tuple[str, str]]) -> None:
        from matplotlib.lines import Line2D

        self.text(MARGIN, 16, title, fontsize=11, fontweight="bold")
        self.text(MARGIN, 36, subtitle)
        handles = [Line2D([], [], color=c, lw=2.5, label=label) for c, label in legend]
        self.ax.legend(handles=handles, loc="upper left", ncols=len(handles), fontsize=FONT, frameon=False,
                       borderaxespad=0, bbox_to_anchor=(MARGIN / self.width, 1 - 48 / self.height)).set_gid("legend")

    def save(self, path: Path) -> list[Path]:
        import matplotlib

        from PIL import Image

        svg, png = path.with_suffix(".svg"), io.BytesIO()
        self.fig.savefig(png, dpi=DPI)
        # a palette of 64 colours keeps lines and text crisp at a third of the size of full colour
        Image.open(png).convert("RGB").quantize(64, dither=Image.Dither.NONE).save(path, optimize=True)
        buffer = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "circuit"}):
            self.fig.savefig(buffer, format="svg", metadata={"Date": None})
        drawing = re.sub(r'<g id="(tip\d+)">', lambda m: f'{m[0]}<title>{escape(self.tips[m[1]])}</title>',
                         buffer.getvalue())
        svg.write_text(drawing)
        html = path.with_suffix(".html")
        inline = drawing[drawing.index("<svg"):]  # without the XML declaration and doctype
        html.write_text(f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(path.stem)}</title></head>\n'
                        f'<body style="margin:0">\n{inline}</body></html>\n')
        return [path, svg, html]


def _group(name: str) -> tuple[int, int]:
    """(band, column) of a node: band 0 the input end, 1 + i layer i, OUT the output end."""
    kind = name.split("[")[0]
    if kind.startswith("layer."):
        _, layer, location = kind.split(".", 2)
        return int(layer) + 1, NODE_LOCATIONS.index(location)
    return {"embed": (0, 0), "resid.in": (0, 1), "resid.out": (OUT, 0), "unembed": (OUT, 1)}[kind]


def _band_title(band: int) -> str:
    ends = {0: "input tokens into the residual stream", OUT: "residual stream to the answer tokens"}
    return ends.get(band, f"layer {band - 1}")


def _column_title(group: tuple[int, int]) -> str:
    band, column = group
    return {0: ("embed", "resid read"), OUT: ("resid written", "unembed")}[band][column] if band in (0, OUT) \
        else NODE_LOCATIONS[column]


def _group_name(group: tuple[int, int]) -> str:
    band, column = group
    return {0: ("embed", "resid.in"), OUT: ("resid.out", "unembed")}[band][column] if band in (0, OUT) \
        else f"layer.{band - 1}.{NODE_LOCATIONS[column]}"


def _index(name: str) -> int:
    return int(name.rstrip("]").rpartition("[")[2])


def _token(name: str, token_text: TokenText) -> str | None:
    """The token's text of an (un)embedding node, as a short Python literal; None for other nodes."""
    if not name.startswith(("embed[", "unembed[")):
        return None
    text = repr(token_text(_index(name)))
    return text if len(text) <= 12 else text[:10] + "…" + text[-1]


def _full_name(name: str, token_text: TokenText) -> str:
    token = _token(name, token_text)
    return name if token is None else f"{name} {token}"


def _sign_colour(weight: float) -> str:
    return POSITIVE if weight > 0 else NEGATIVE


def _summary(record: dict) -> str:
    def number(key):
        return "n/a" if record[key] is None else f"{record[key]:.3f}"

    return (f"circuit loss {number('loss')} · full model {number('full_loss')} · target {record['target_loss']:g} · "
            f"{record['ablation']} ablation · {record['method']}")


def _title(record: dict, what: str) -> str:
    reason = f" ({record['reason']})" if record["reason"] else ""
    if record["solved"] and not record["n_nodes"]:
        reason = " (every node ablated already reaches the target)"
    return f"{record['task']}: {record['n_nodes']} nodes, {record['n_edges']} edges{what}{reason}"


def _text_width(*lines: tuple[str, float]) -> float:
    """px of the widest (text, size in pt) line, a safe estimate for the proportional font."""
    return max(0.62 * size * PX * len(text) for text, size in lines)


def _unsolved(record: dict) -> _Canvas:
    lines = (f"{record['task']}: {record['reason']}", _summary(record))
    canvas = _Canvas(2 * MARGIN + _text_width((lines[0], 11), (lines[1], FONT)), 80)
    canvas.text(MARGIN, 24, lines[0], fontsize=11, fontweight="bold")
    canvas.text(MARGIN, 54, lines[1])
    return canvas


def _nodes_drawing(record: dict, token_text: TokenText) -> _Canvas | None:
    """Every node as a labelled box in its node location's column (a band per layer), every edge a
    line coloured by sign; None when it would be taller than MAX_SIDE."""
    edges = record["edges"]
    names = set(record["nodes"]) | {e[0] for e in edges} | {e[1] for e in edges}
    columns: dict[tuple[int, int], list[str]] = {}
    for name in sorted(names, key=_index):
        columns.setdefault(_group(name), []).append(name)
    labels = {n: _token(n, token_text) or str(_index(n)) for n in names}
    where, band_tops, heads, top, width = {}, {}, {}, HEAD, 0.0
    for band in sorted({g[0] for g in columns}):
        band_tops[band] = top
        x, tallest = MARGIN, 0
        for group in sorted(g for g in columns if g[0] == band):
            members = columns[group]
            w = max(CHAR * max(len(labels[n]) for n in members) + 10, 0.6 * FONT * PX * len(_column_title(group)))
            heads[group] = (x + w / 2, top + 30)
            for row, name in enumerate(members):
                where[name] = (x, w, top + 40 + row * ROW)
            x, tallest = x + w + GAP, max(tallest, len(members))
        width, top = max(width, x - GAP + MARGIN), top + 40 + tallest * ROW + 14
    if top + MARGIN > MAX_SIDE:
        return None
    title, subtitle = _title(record, ""), _summary(record) + " · in the .html and .svg, hover for names and weights"
    canvas = _Canvas(max(width, 2 * MARGIN + _text_width((title, 11), (subtitle, FONT))), top + MARGIN)
    canvas.header(title, subtitle, [(POSITIVE, "positive weight (blue)"), (NEGATIVE, "negative weight (vermillion)")])
    for band, band_top in band_tops.items():
        canvas.text(MARGIN, band_top + 12, _band_title(band), fontweight="bold")
    for group, (x, head) in heads.items():
        canvas.text(x, head, _column_title(group), ha="center", color="#333333")
    scale = max((abs(w) for *_, w in edges), default=1.0) or 1.0
    for src, dst, weight in sorted(edges, key=lambda e: abs(e[2])):
        (x0, w0, y0), (x1, _, y1) = where[src], where[dst]
        line, = canvas.ax.plot([x0 + w0, x1], [canvas.height - y0 - BOX_H / 2, canvas.height - y1 - BOX_H / 2],
                               color=_sign_colour(weight), lw=0.6 + 2.4 * abs(weight) / scale, alpha=0.8, zorder=1)
        canvas.tip(line, f"{_full_name(src, token_text)} → {_full_name(dst, token_text)}: {weight:+.4g}")
    for name, (x, w, y) in where.items():
        canvas.box(x, y, w, BOX_H, labels[name], _full_name(name, token_text), family="monospace")
    return canvas


# The grouped drawing: a node location's box at (column, rows up) within its band; attention's q, k, v fan out.
GROUP_PLACE = {"attn.in": (0, 0), "attn.q": (1, 1), "attn.k": (1, 0), "attn.v": (1, -1), "attn.out": (2, 0),
               "mlp.in": (3, 0), "mlp.hidden": (4, 0), "mlp.out": (5, 0)}
END_PLACE = {(0, 0): (0, 0), (0, 1): (1, 0), (OUT, 0): (4, 0), (OUT, 1): (5, 0)}
BOX_W, GROUP_H, PITCH, FAN, LEFT = 104, 34, 180, 52, 84


def _groups_drawing(record: dict, token_text: TokenText) -> _Canvas:
    """One box per node location with its node count, one arrow per pair of locations with its edge
    count and total |weight| (coloured by the sign of the summed weight); the strongest edges listed."""
    edges = record["edges"]
    counts: dict[tuple[int, int], int] = {}
    for name in set(record["nodes"]) | {e[0] for e in edges} | {e[1] for e in edges}:
        counts[_group(name)] = counts.get(_group(name), 0) + 1
    links: dict[tuple, list[float]] = {}
    for src, dst, weight in edges:
        link = links.setdefault((_group(src), _group(dst)), [0, 0.0, 0.0])
        link[0], link[1], link[2] = link[0] + 1, link[1] + abs(weight), link[2] + weight
    bands = sorted({g[0] for g in counts})
    band_h = {b: (2 * FAN if b not in (0, OUT) else 0) + GROUP_H + 22 for b in bands}
    strongest = sorted(edges, key=lambda e: -abs(e[2]))[:TOP_EDGES]
    lines = [f"{w:+.3f}  {_full_name(s, token_text)} → {_full_name(d, token_text)}" for s, d, w in strongest]
    table_x = LEFT + 5 * PITCH + BOX_W + 40
    line_h = 8 * PX + 4
    width = table_x + 0.6 * 8 * PX * max(map(len, lines), default=20) + MARGIN
    height = max(HEAD + sum(band_h.values()), HEAD + 30 + line_h * len(lines)) + MARGIN
    title, subtitle = _title(record, ", grouped by node location"), _summary(record) + " · arrows: edges · Σ|weight|"
    canvas = _Canvas(max(width, 2 * MARGIN + _text_width((title, 11), (subtitle, FONT))), height)
    canvas.header(title, subtitle,
                  [(POSITIVE, "summed weight > 0 (blue)"), (NEGATIVE, "summed weight < 0 (vermillion)")])
    centre, top = {}, HEAD
    for band in bands:
        mid = top + band_h[band] / 2
        canvas.text(MARGIN, mid, _band_title(band) if band not in (0, OUT) else ("input" if band == 0 else "output"),
                    fontweight="bold")
        for group in (g for g in counts if g[0] == band):
            column, up = END_PLACE[group] if band in (0, OUT) else GROUP_PLACE[NODE_LOCATIONS[group[1]]]
            centre[group] = (LEFT + column * PITCH + BOX_W / 2, mid - up * FAN)
            noun = "tokens" if group in ((0, 0), (OUT, 1)) else "nodes"
            x, y = centre[group]
            canvas.box(x - BOX_W / 2, y - GROUP_H / 2, BOX_W, GROUP_H,
                       f"{_column_title(group)}\n{counts[group]} {noun}", f"{_group_name(group)}: {counts[group]} {noun}")
        top += band_h[band]
    _group_arrows(canvas, centre, links)
    canvas.text(table_x, HEAD + 10, f"the {len(lines)} strongest of {len(edges)} edges", fontweight="bold")
    for i, (line, (src, dst, weight)) in enumerate(zip(lines, strongest)):
        canvas.tip(canvas.text(table_x, HEAD + 30 + i * line_h, line, fontsize=8, family="monospace",
                               color=_sign_colour(weight)), f"{src} → {dst}: {weight:+.6g}")
    return canvas


def _group_arrows(canvas: _Canvas, centre: dict, links: dict) -> None:
    from matplotlib.patches import FancyArrowPatch

    heaviest = max((link[1] for link in links.values()), default=1.0) or 1.0
    for (src, dst), (count, total, net) in links.items():
        (x0, y0), (x1, y1) = centre[src], centre[dst]
        start, end = (x0 + BOX_W / 2, canvas.height - y0), (x1 - BOX_W / 2, canvas.height - y1)
        canvas.tip(canvas.ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12,
                                                       lw=1 + 3 * total / heaviest, color=_sign_colour(net), zorder=1)),
                   f"{_group_name(src)} → {_group_name(dst)}: {count} edges, "
                   f"Σ|weight| {total:.4g}, Σweight {net:+.4g}")
        # over a level arrow, so that the arrow stays visible
        x, y = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + (10 if start[1] == end[1] else 0)
        canvas.ax.text(x, y, f"{count} · {total:.3g}", fontsize=8,
                       ha="center", va="center", zorder=3, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})


SEARCH_COLOURS = {"target": "#999999", "f80": "#56B4E9", "ladder": "#E69F00"}  # the baselines are lines


def draw_curve(path: Path, curve: dict) -> Path:
    """A task's faithfulness curve (`curve_record`) as a PNG: held-out task loss against circuit edges of
    every node set the searches evaluated, the ladder of edge fractions (CPR, CMD), the full and empty
    losses (f = 1 and 0), the target and the f80 loss, and the two circuits chosen."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 4.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for search in ("target", "f80"):  # the ladder is drawn as a line below
        colour = SEARCH_COLOURS[search]
        points = [(edges, loss) for _, edges, loss, _, s in curve["curve"] if s == search]
        if points:
            ax.scatter(*zip(*points), s=6, color=colour, alpha=0.6, lw=0, label=f"evaluated by the {search} search")
    ends = [(edges, loss) for _, edges, loss, _, s in curve["curve"] if s == "baseline"]
    if ends:  # the whole model and the empty set, at their edge counts (their losses are the lines below)
        ax.scatter(*zip(*ends), s=18, color="#000000", marker="s", label="the whole model and the empty set")
    if curve["ladder"]:
        ax.plot([p["edges"] for p in curve["ladder"]], [p["loss"] for p in curve["ladder"]], "o-", ms=3, lw=1,
                color=SEARCH_COLOURS["ladder"], label="ranking prefixes at the edge fractions (CPR, CMD)")
    lines = [(curve["full_loss"], "-", "#000000", "full model (f = 1)"),
             (curve["empty_loss"], "-", "#777777", "every node ablated (f = 0)"),
             (curve["target_loss"], "--", "#D55E00", "target loss")]
    if curve["threshold_loss"] is not None:
        lines.append((curve["threshold_loss"], ":", "#0072B2", f"f = {curve['faithfulness_threshold']:g}"))
    for y, style, colour, label in lines:
        ax.axhline(y, ls=style, lw=0.9, color=colour, label=f"{label}: {y:.3f}")
    for key, marker, colour, label in (("target_circuit", "*", "#D55E00", "circuit at the target"),
                                       ("f80_circuit", "D", "#0072B2", "circuit at f >= threshold")):
        if curve[key] is not None:
            ax.plot(curve[key]["edges"], curve[key]["loss"], marker, ms=9, color=colour, mec="black", mew=0.5,
                    label=f"{label}: {curve[key]['edges']:,} edges")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)  # edge counts: the autoscaled margin would reach below zero
    ax.set_xlabel("circuit edges")
    ax.set_ylabel("held-out task loss (nats)")
    if curve["measurable"]:
        measures = f"CPR {curve['cpr']:.3f}, CMD {curve['cmd']:.3f}" if curve["cpr"] is not None else ""
    else:
        measures = (f"f not measured: the full model's {curve['full_loss']:.3f} is not "
                    f"{curve['faithfulness_margin']:g} nats below both chance ({math.log(2):.3f}) and the empty "
                    f"circuit ({curve['empty_loss']:.3f})")
    ax.set_title(f"{curve['task']}: loss against circuit size\n{measures}", fontsize=FONT)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.savefig(path, dpi=DPI)
    return path
