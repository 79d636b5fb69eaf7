"""Circuit size and artifacts: the edges among kept nodes, a JSON record, a layered drawing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from sweep.science.model import GPT
from sweep.names import NODE_LOCATIONS, node_name
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


def write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1))


def _column(name: str, n_layer: int) -> float:
    """x position of a node: embeddings left, then each layer's locations in forward order, unembedding right."""
    last = n_layer * len(NODE_LOCATIONS)
    fixed = {"embed": -2, "resid.in": -1, "resid.out": last, "unembed": last + 1}
    if name.split("[")[0] in fixed:
        return fixed[name.split("[")[0]]
    _, layer, location = name.split("[")[0].split(".", 2)
    return int(layer) * len(NODE_LOCATIONS) + NODE_LOCATIONS.index(location)


def _label(name: str, token_text: Callable[[int], str]) -> str:
    """Short label: the channel within its column, or the token itself for (un)embedding nodes."""
    kind, _, index = name.rstrip("]").partition("[")
    if kind in ("embed", "unembed"):
        return repr(token_text(int(index)))
    return f"{kind.split('.')[-1]}[{index}]"


MAX_DRAWN_EDGES = 1500  # a dense model's circuit can have 10^5 edges: draw the strongest, say so


def draw(path: Path, title: str, nodes: list[str], edges: list[Edge], n_layer: int,
         token_text: Callable[[int], str] = chr) -> None:
    """A layered drawing: node locations in columns by layer, edges blue (+) or red (-); (un)embedding
    nodes labelled by `token_text` (bytes by default)."""
    total = len(edges)
    edges = sorted(edges, key=lambda e: -abs(e[2]))[:MAX_DRAWN_EDGES]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(set(nodes) | {e[0] for e in edges} | {e[1] for e in edges},
                   key=lambda n: (_column(n, n_layer), int(n.rstrip("]").rpartition("[")[2])))
    rows: dict[float, int] = {}
    where = {}
    for name in names:
        x = _column(name, n_layer)
        where[name] = (x, rows.get(x, 0))
        rows[x] = rows.get(x, 0) + 1
    height = max(rows.values(), default=1)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * (n_layer * len(NODE_LOCATIONS) + 3)), max(3, 0.3 * height + 1.5)))
    scale = max((abs(w) for *_, w in edges), default=1.0) or 1.0
    for src, dst, w in edges:
        (x0, y0), (x1, y1) = where[src], where[dst]
        ax.plot([x0, x1], [y0, y1], color="#0072B2" if w > 0 else "#D55E00", alpha=0.3 + 0.7 * abs(w) / scale, lw=1)
    for name, (x, y) in where.items():
        ax.scatter([x], [y], s=18, color="black", zorder=3)
        ax.annotate(_label(name, token_text), (x, y), fontsize=6,
                    xytext=(3, 2), textcoords="offset points")
    last = n_layer * len(NODE_LOCATIONS)
    ticks = [(-2, "embed"), (-1, "resid\nread"), (last, "resid\nwritten"), (last + 1, "unembed")]
    ticks += [(layer * len(NODE_LOCATIONS) + i, f"L{layer}\n{loc}") for layer in range(n_layer)
              for i, loc in enumerate(NODE_LOCATIONS)]
    ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=6)
    ax.set_yticks([])
    shown = "" if total == len(edges) else f", the {len(edges)} strongest drawn"
    ax.set_title(f"{title}: {len(nodes)} nodes, {total} edges{shown} (blue +, red -)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
