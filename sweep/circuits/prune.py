"""The mechanics every circuit-discovery method shares (method.md 4): the nodes of a model, their
ablation values, gates that ablate them, and a batched evaluator of candidate node sets."""

from __future__ import annotations

import torch

from sweep.lifecycle import raise_if_stopped
from sweep.science.model import GPT
from sweep.names import node_name
from sweep.circuits.tasks import task_losses

ABLATIONS = ("mean", "zero")
Site = tuple[int, str]  # (layer, location)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # tokens, last, target, other
MAX_SEQUENCES = 4096  # sequences per forward pass when many candidate sets are evaluated at once


def node_sites(model: GPT) -> dict[Site, int]:
    """Every node location of the model with its number of channels, in forward order."""
    widths = {}

    def measure(layer: int, location: str, x: torch.Tensor) -> torch.Tensor:
        widths[(layer, location)] = x.shape[-1]
        return x

    with model.hooked(measure), torch.no_grad():
        model(torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device))
    return widths


@torch.no_grad()
def node_means(model: GPT, inputs: torch.Tensor, batch_size: int) -> dict[Site, torch.Tensor]:
    """Mean activation of every node over held-out pretraining text (the mean-ablation values)."""
    sums: dict[Site, torch.Tensor] = {}
    count = 0

    def record(layer: int, location: str, x: torch.Tensor) -> torch.Tensor:
        key = (layer, location)
        sums[key] = sums.get(key, 0) + x.flatten(0, -2).sum(dim=0)
        return x

    with model.hooked(record):
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i:i + batch_size]
            model(chunk)
            count += chunk.numel()
    return {key: total / count for key, total in sums.items()}


class NodeMasks:
    """A node hook that gates every node: x -> r + gate * (x - r), r its ablation value (mean or zero).
    `gates` hold one row of gates per mask set; `rows` says which row each example of the batch uses.
    With `surrogate` set, the forward pass uses `gates` and the backward pass `surrogate`, for the
    activation upstream as for the gate itself (straight-through)."""

    def __init__(self, sites: dict[Site, int], means: dict[Site, torch.Tensor] | None):
        self.sites = sites
        self.means = means  # None: zero ablation
        self.gates: dict[Site, torch.Tensor] = {}  # (rows, channels)
        self.surrogate: dict[Site, torch.Tensor] | None = None
        self.rows: torch.Tensor | None = None  # (B,)

    def set_flat(self, gates: torch.Tensor) -> None:
        """Gates for all nodes as one (rows, n_nodes) tensor in `sites` order."""
        self.gates = split_sites(self.sites, gates)

    def __call__(self, layer: int, location: str, x: torch.Tensor) -> torch.Tensor:
        site = (layer, location)
        replacement = self.means[site] if self.means is not None else torch.zeros((), device=x.device)
        delta = x - replacement
        out = replacement + self.gates[site][self.rows][:, None, :] * delta  # (B, T, C)
        if self.surrogate is None:
            return out
        soft = replacement + self.surrogate[site][self.rows][:, None, :] * delta
        return soft + (out - soft).detach()


def split_sites(sites: dict[Site, int], flat: torch.Tensor) -> dict[Site, torch.Tensor]:
    """A (rows, n_nodes) tensor in `sites` order -> one (rows, channels) view per site."""
    return dict(zip(sites, flat.split(list(sites.values()), dim=1)))


def node_names(sites: dict[Site, int], keep: torch.Tensor) -> list[str]:
    """Stable names (`layer.0.attn.q[5]`) of the nodes a (n_nodes,) bool vector keeps."""
    return [node_name(layer, location, int(c)) for (layer, location), k in split_sites(sites, keep[None]).items()
            for c in k[0].nonzero().flatten()]


def keep_of(sites: dict[Site, int], nodes) -> torch.Tensor:
    """The (n_nodes,) bool keep-vector of some node names: the inverse of `node_names` (KeyError: a name
    that is no node of these sites)."""
    names = node_names(sites, torch.ones(sum(sites.values()), dtype=torch.bool))
    wanted = set(nodes)
    if unknown := wanted - set(names):
        raise KeyError(f"no such nodes: {sorted(unknown)}")
    return torch.tensor([n in wanted for n in names])


def stack_batches(batches: list[Batch]) -> tuple[Batch, torch.Tensor]:
    """Concatenate batches (padding tokens to one length) and say which batch each example came from."""
    length = max(b[0].shape[1] for b in batches)
    tokens = torch.cat([torch.nn.functional.pad(b[0], (0, length - b[0].shape[1])) for b in batches])
    rest = [torch.cat([b[i] for b in batches]) for i in (1, 2, 3)]
    rows = torch.cat([torch.full((len(b[1]),), row, device=b[1].device) for row, b in enumerate(batches)])
    return (tokens, *rest), rows


def per_row_losses(model: GPT, masks: NodeMasks, batch: Batch, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean task loss of the examples of each gate row, (n_rows,)."""
    masks.rows = rows
    losses = task_losses(model, batch)
    totals = torch.zeros(n_rows, device=losses.device).index_add(0, rows, losses)
    return totals / torch.bincount(rows, minlength=n_rows)


class Evaluator:
    """Held-out task loss of many candidate node sets at once: every candidate is a gate row and
    its task's held-out prompts are repeated for it, in forward passes of up to MAX_SEQUENCES."""

    def __init__(self, model: GPT, heldout: list[Batch], means: dict[Site, torch.Tensor] | None):
        self.model, self.heldout = model, heldout
        self.sites = node_sites(model)
        self.n_nodes = sum(self.sites.values())
        self.masks = NodeMasks(self.sites, means)
        self.device = next(model.parameters()).device
        self.trials = 0  # candidate sets evaluated so far

    @torch.no_grad()
    def losses(self, candidates: list[tuple[int, torch.Tensor]]) -> list[float]:
        """Held-out loss of each (task index, (n_nodes,) bool keep-vector) candidate."""
        self.trials += len(candidates)
        out: list[float] = []
        per_forward = max(1, MAX_SEQUENCES // max(len(b[1]) for b in self.heldout))
        with self.model.hooked(self.masks):
            for i in range(0, len(candidates), per_forward):
                raise_if_stopped()
                chunk = candidates[i:i + per_forward]
                batch, rows = stack_batches([self.heldout[task] for task, _ in chunk])
                self.masks.set_flat(torch.stack([keep for _, keep in chunk]).float().to(self.device))
                out += per_row_losses(self.model, self.masks, batch, rows, len(chunk)).tolist()
        return out
