"""Circuit size and its record: the edges among kept nodes, the JSON a person reads (drawing.py draws it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from sweep.science.model import GPT
from sweep.names import node_name
from sweep.circuits.prune import node_sites, split_sites

# (source location, destination location, weight matrix of the block): the edges inside a block.
EDGE_MATRICES = (("attn.in", "attn.q", "q"), ("attn.in", "attn.k", "k"), ("attn.in", "attn.v", "v"),
                 ("attn.v", "attn.out", "o"), ("mlp.in", "mlp.hidden", "fc_in"), ("mlp.hidden", "mlp.out", "fc_out"))
READS, WRITES = ("attn.in", "mlp.in"), ("attn.out", "mlp.out")

Edge = tuple[str, str, float]


def parse_nodes(model: GPT, nodes: list[str]) -> dict[tuple[int, str], torch.Tensor]:
    """Node names (`layer.0.attn.q[5]`) -> a bool per channel of every (layer, location)."""
    kept = {site: torch.zeros(width, dtype=torch.bool) for site, width in node_sites(model).items()}
    for name in nodes:
        site, channel = name.rstrip("]").split("[")
        _, layer, location = site.split(".", 2)
        kept[(int(layer), location)][int(channel)] = True
    return kept


@torch.no_grad()
def circuit_edges(model: GPT, nodes: list[str], input_tokens: set[int], output_tokens: set[int]) -> list[Edge]:
    """Nonzero weights whose two ends are kept: the six in-block matrices, plus token embedding
    entries from the task's input bytes into residual channels some kept node reads, and
    unembedding entries from residual channels some kept node writes to the task's answer bytes."""
    kept = parse_nodes(model, nodes)
    edges: list[Edge] = []
    for layer, block in enumerate(model.blocks):
        for src, dst, matrix in EDGE_MATRICES:
            w = getattr(block, matrix).weight.cpu()  # (dst channels, src channels)
            hit = (w != 0) & kept[(layer, dst)][:, None] & kept[(layer, src)][None, :]
            edges += [(node_name(layer, src, j), node_name(layer, dst, i), w[i, j].item()) for i, j in hit.nonzero().tolist()]
    layers = range(model.shape.n_layer)
    read = torch.stack([kept[(layer, loc)] for layer in layers for loc in READS]).any(dim=0)
    written = torch.stack([kept[(layer, loc)] for layer in layers for loc in WRITES]).any(dim=0)
    embed, unembed = model.tok_emb.weight.cpu(), model.unembed.weight.cpu()
    for t in sorted(input_tokens):
        edges += [(f"embed[{t}]", f"resid.in[{j}]", embed[t, j].item())
                  for j in (read & (embed[t] != 0)).nonzero().flatten().tolist()]
    for t in sorted(output_tokens):
        edges += [(f"resid.out[{j}]", f"unembed[{t}]", unembed[t, j].item())
                  for j in (written & (unembed[t] != 0)).nonzero().flatten().tolist()]
    return edges


class EdgeCounter:
    """The edge count of many node sets at once, as `circuit_edges` counts them (a test holds the two
    equal): the nonzero pattern of every matrix is read once, then each set costs a few matrix products."""

    @torch.no_grad()
    def __init__(self, model: GPT, input_tokens: set[int], output_tokens: set[int]):
        self.sites = node_sites(model)
        self.n_layer = model.shape.n_layer
        self.inner = [(layer, src, dst, (getattr(block, matrix).weight != 0).float().cpu())
                      for layer, block in enumerate(model.blocks) for src, dst, matrix in EDGE_MATRICES]
        embed, unembed = model.tok_emb.weight.cpu(), model.unembed.weight.cpu()
        tokens_in, tokens_out = sorted(input_tokens), sorted(output_tokens)
        self.embed_fan = (embed[tokens_in] != 0).float().sum(dim=0)  # per residual channel: input tokens writing it
        self.unembed_fan = (unembed[tokens_out] != 0).float().sum(dim=0)  # ...and answer tokens reading it

    @torch.no_grad()
    def count(self, keeps: torch.Tensor) -> list[int]:
        """Edges of each node set, (B, n_nodes) bool in `node_sites` order -> B counts."""
        kept = split_sites(self.sites, keeps.float().cpu())
        total = torch.zeros(len(keeps))
        for layer, src, dst, nonzero in self.inner:
            total += ((kept[(layer, dst)] @ nonzero) * kept[(layer, src)]).sum(dim=1)
        layers = range(self.n_layer)
        read = torch.stack([kept[(layer, loc)] for layer in layers for loc in READS]).amax(dim=0)
        written = torch.stack([kept[(layer, loc)] for layer in layers for loc in WRITES]).amax(dim=0)
        total += read @ self.embed_fan + written @ self.unembed_fan
        return [int(round(v)) for v in total.tolist()]


FAITHFULNESS_KEYS = ("faithfulness", "nodes_at_f80", "edges_at_f80", "cpr", "cmd")  # in a record when measured


def circuit_record(task: str, values: dict, reason: str | None, target_loss: float, ablation: str, method: str,
                   nodes: list[str], edges: list[Edge]) -> dict:
    """The JSON record of one task's circuit: the summary first (solved or why not, losses, sizes,
    settings), the node and edge lists last; NaN (no circuit) as null."""
    def number(key):
        value = values[key]
        return None if value is None or math.isnan(value) else value

    n_nodes, n_edges = number("nodes"), number("edges")
    return {"task": task, "solved": values["solved"] == 1, "reason": reason,
            "loss": number("loss"), "full_loss": number("full_loss"), "target_loss": target_loss,
            "necessity_loss": number("necessity_loss"), "empty_loss": number("empty_loss"),
            "n_nodes": None if n_nodes is None else int(n_nodes), "n_edges": None if n_edges is None else int(n_edges),
            "cue_distance": number("cue_distance"), "ablation": ablation, "method": method,
            "beats_model": values["beats_model"] == 1, "nodes_before_pass": number("nodes_before_pass"),
            "nodes_restart_median": number("nodes_restart_median"),
            **{key: number(key) for key in FAITHFULNESS_KEYS if key in values},
            "nodes": list(nodes), "edges": [list(e) for e in edges]}


def curve_record(task: str, found, target_circuit, values: dict, cfg) -> dict:
    """The JSON record of one task's faithfulness curve (`circuits/<task>.curve.json`): the baselines, the
    target and f80 circuits, CPR and CMD with their ladder, then every evaluated node set (nodes, edges, loss, f:
    null where f is not measured, search), one per line."""
    def finite(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    def point(nodes, edges, loss):
        return None if finite(nodes) is None else {"nodes": int(nodes), "edges": int(edges), "loss": loss,
                                                    "f": finite(found.f(loss))}

    return {"task": task, "measurable": found.measurable, "full_loss": found.baseline.full,
            "empty_loss": found.baseline.empty, "faithfulness_margin": float(cfg.faithfulness_margin),
            "faithfulness_threshold": float(cfg.faithfulness), "threshold_loss": finite(found.threshold_loss),
            "target_loss": float(cfg.target_loss),
            "target_circuit": point(values["nodes"], values["edges"], target_circuit.loss),
            "f80_circuit": point(values["nodes_at_f80"], values["edges_at_f80"], found.circuit.loss),
            "cpr": finite(found.cpr), "cmd": finite(found.cmd),
            "ladder": [{"fraction": p.fraction, "nodes": p.nodes, "edges": p.edges, "loss": p.loss, "f": p.f}
                       for p in found.ladder],
            "curve_columns": ["nodes", "edges", "loss", "f", "search"],
            "curve": [[nodes, edges, loss, finite(found.f(loss)), search] for nodes, edges, loss, search in found.curve]}


def write_json(path: Path, record: dict) -> None:
    """One summary value per line, then one node or edge per line: the lists can be 10^5 long."""
    def item(key, value):
        if not isinstance(value, list) or not value:
            return f" {json.dumps(key)}: {json.dumps(value)}"
        return f" {json.dumps(key)}: [\n  " + ",\n  ".join(json.dumps(v) for v in value) + "\n ]"

    path.write_text("{\n" + ",\n".join(item(k, v) for k, v in record.items()) + "\n}\n")
