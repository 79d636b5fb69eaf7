"""Circuit size and its record: the edges among kept nodes, the JSON a person reads (drawing.py draws it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from sweep.science.model import GPT
from sweep.names import node_name
from sweep.circuits.prune import node_sites

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
            "nodes": list(nodes), "edges": [list(e) for e in edges]}


def write_json(path: Path, record: dict) -> None:
    """One summary value per line, then one node or edge per line: the lists can be 10^5 long."""
    def item(key, value):
        if not isinstance(value, list) or not value:
            return f" {json.dumps(key)}: {json.dumps(value)}"
        return f" {json.dumps(key)}: [\n  " + ",\n  ".join(json.dumps(v) for v in value) + "\n ]"

    path.write_text("{\n" + ",\n".join(item(k, v) for k, v in record.items()) + "\n}\n")
