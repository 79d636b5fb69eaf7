"""The circuit artifacts a person opens in the MLflow UI: the JSON's summary first, a readable PNG and
an SVG with hover titles, a grouped drawing for a large circuit, an unsolved task that says why."""

import json
import math
import random
import re
import xml.etree.ElementTree as ET

from PIL import Image

from sweep.circuits import tasks
from sweep.circuits.circuit import EDGE_MATRICES, circuit_edges, circuit_record, write_json
from sweep.circuits.drawing import DETAIL_MAX_EDGES, NEGATIVE, POSITIVE, draw
from sweep.circuits.prune_stage import unsolved_reason
from sweep import names
from bench.planted import attention_then_mlp

SUMMARY = ["task", "solved", "reason", "loss", "full_loss", "target_loss", "necessity_loss", "empty_loss",
           "n_nodes", "n_edges", "cue_distance", "ablation", "method"]
SVG = "{http://www.w3.org/2000/svg}"
MAX_PNG_BYTES, MAX_PNG_SIDE = 300_000, 1600


def values(loss, full_loss, nodes, edges, solved=1.0, beats_model=0.0) -> dict:
    """Per-task metric values in `judge`'s layout."""
    return {"loss": loss, "full_loss": full_loss, "empty_loss": 0.9, "cue_distance": 2.0, "nodes": nodes,
            "edges": edges,
            "solved": solved, "necessity_loss": 0.8, "beats_model": beats_model, "nodes_before_pass": nodes,
            "nodes_restart_median": nodes}


def record(task, v, nodes, edges, target=0.3):
    return circuit_record(task, v, unsolved_reason(v, target), target, "mean", "mask", nodes, edges)


def planted_record():
    planted = attention_then_mlp()
    nodes = planted.minimal["mean"][0]
    edges = circuit_edges(planted.model, nodes, planted.inputs(), planted.outputs())
    return record("planted", values(0.1, 0.05, len(nodes), len(edges)), nodes, edges)


def synthetic_record(n_edges: int, n_layer: int = 2, width: int = 64):
    """A large circuit's edge list: random edges of every kind a model has."""
    rng, edges = random.Random(0), set()
    while len(edges) < n_edges:
        layer, (src, dst, _) = rng.randrange(n_layer), rng.choice(EDGE_MATRICES)
        edges.add((f"layer.{layer}.{src}[{rng.randrange(width)}]", f"layer.{layer}.{dst}[{rng.randrange(width)}]"))
        edges.add((f"embed[{rng.randrange(32, 127)}]", f"resid.in[{rng.randrange(width)}]"))
    edges = [(s, d, rng.gauss(0, 0.3)) for s, d in sorted(edges)[:n_edges]]
    nodes = sorted({n for e in edges for n in e[:2] if n.startswith("layer.")})
    return record("synthetic", values(0.2, 0.1, len(nodes), len(edges)), nodes, edges)


def stroke_colours(element) -> set[str]:
    return {m.lower() for e in element.iter() for m in re.findall(r"stroke: (#[0-9a-fA-F]{6})", e.get("style", ""))}


def tips(svg_root) -> dict[str, ET.Element]:
    """Hover title -> its element."""
    return {g.find(f"{SVG}title").text: g for g in svg_root.iter(f"{SVG}g") if g.find(f"{SVG}title") is not None}


def full_name(node: str) -> str:
    """A node's hover title: a byte's (un)embedding node carries its text, `embed[97] 'a'`."""
    if node.startswith(("embed[", "unembed[")):
        return f"{node} {chr(int(node[node.index('[') + 1:-1]))!r}"
    return node


def test_a_small_circuit_is_drawn_node_by_node_with_hover_titles(tmp_path):
    rec = planted_record()
    assert 0 < rec["n_edges"] <= DETAIL_MAX_EDGES
    png, svg, html = draw(tmp_path / "planted.png", rec)
    root = ET.parse(svg).getroot()
    titled = tips(root)
    for node in {*rec["nodes"], *(e[0] for e in rec["edges"]), *(e[1] for e in rec["edges"])}:
        assert full_name(node) in titled, node
    for src, dst, weight in rec["edges"]:
        line = titled[f"{full_name(src)} → {full_name(dst)}: {weight:+.4g}"]
        assert stroke_colours(line) == {(POSITIVE if weight > 0 else NEGATIVE).lower()}
    # the legend's colours are the edges' colours, each named once
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("id") == "legend")
    assert stroke_colours(legend) == {POSITIVE.lower(), NEGATIVE.lower()}
    legend_text = " ".join(t.text for t in legend.iter(f"{SVG}text"))
    assert "blue" in legend_text and "vermillion" in legend_text and "red" not in legend_text
    assert "<script" not in svg.read_text() and 'href="http' not in svg.read_text()  # self-contained
    page = html.read_text()  # the UI previews HTML in a frame: the same drawing, hover titles working there
    assert page.startswith("<!DOCTYPE html>") and svg.read_text()[svg.read_text().index("<svg"):] in page
    width, height = Image.open(png).size
    assert max(width, height) <= MAX_PNG_SIDE and png.stat().st_size < MAX_PNG_BYTES


def test_a_large_circuit_is_drawn_grouped_by_node_location(tmp_path):
    rec = synthetic_record(2000)
    png, svg, _ = draw(tmp_path / "big.png", rec)
    width, height = Image.open(png).size
    assert max(width, height) <= MAX_PNG_SIDE and png.stat().st_size < MAX_PNG_BYTES
    titled = tips(ET.parse(svg).getroot())
    grouped = [t for t in titled if re.fullmatch(r"layer\.\d\.[a-z.]+ → layer\.\d\.[a-z.]+: \d+ edges, .*", t)]
    in_blocks = sum(e[0].startswith("layer.") for e in rec["edges"])
    assert sum(int(t.split(": ")[1].split()[0]) for t in grouped) == in_blocks  # every edge in one arrow
    assert any(t.startswith("layer.0.attn.q: ") for t in titled)  # a box per node location, with its count
    strongest = max(rec["edges"], key=lambda e: abs(e[2]))
    assert f"{strongest[0]} → {strongest[1]}: {strongest[2]:+.6g}" in titled


def test_an_unsolved_task_says_why_in_its_drawing_and_json(tmp_path):
    nan = math.nan
    missed = record(names.CONTROL, values(0.66, 0.66, nan, nan, solved=0.0), [], [])
    assert missed["reason"] == "not solved: full-model loss 0.660 > target 0.3"
    assert missed["n_nodes"] is None and missed["n_edges"] is None
    write_json(tmp_path / "control.json", missed)
    assert json.loads((tmp_path / "control.json").read_text())["reason"] == missed["reason"]
    _, svg, _ = draw(tmp_path / "control.png", missed)
    assert missed["reason"] in " ".join(t.text or "" for t in ET.parse(svg).getroot().iter(f"{SVG}text"))
    assert Image.open(tmp_path / "control.png").size[1] <= 120  # a note, not an empty frame

    no_circuit = unsolved_reason(values(0.25, 0.25, nan, nan, solved=0.0), 0.3)
    assert "full model reaches the target (0.250 <= 0.3)" in no_circuit and "no circuit" in no_circuit
    carved = unsolved_reason(values(0.2, 0.5, 3, 4, solved=0.0, beats_model=1.0), 0.3)
    assert "full model does not (loss 0.500 > 0.3)" in carved
    assert unsolved_reason(values(0.2, 0.1, 3, 4), 0.3) is None


def test_the_json_starts_with_the_summary_and_lists_one_item_per_line(tmp_path):
    rec = planted_record()
    write_json(tmp_path / "planted.json", rec)
    text = (tmp_path / "planted.json").read_text()
    loaded = json.loads(text)
    assert list(loaded)[:len(SUMMARY)] == SUMMARY and list(loaded)[-2:] == ["nodes", "edges"]
    assert loaded["solved"] is True and loaded["reason"] is None and loaded["n_edges"] == len(loaded["edges"])
    assert loaded["edges"] == [list(e) for e in rec["edges"]]
    assert len(text.splitlines()) < len(loaded) + len(loaded["nodes"]) + len(loaded["edges"]) + 8


def test_the_control_has_one_name():
    assert tasks.CONTROL == names.CONTROL
    assert names.circuit_artifact(tasks.CONTROL, "json") == "circuits/control.json"
