"""Circuit pruning (method.md 4): learn one mask per node, then bisect to the smallest node set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sweep.lifecycle import raise_if_stopped
from sweep.model import GPT
from sweep.names import node_name
from sweep.tasks import task_losses

ABLATIONS = ("mean", "zero")
Site = tuple[int, str]  # (layer, location)


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
    """One real parameter per node and task row. Forward: a hard 0/1 mask (Heaviside); backward:
    the sigmoid's derivative (straight-through). A masked node takes its mean, or zero."""

    def __init__(self, sites: dict[Site, int], n_rows: int, means: dict[Site, torch.Tensor] | None,
                 init: float = 0.1, device=None):
        self.sites = sites
        self.logits = {s: torch.full((n_rows, w), init, device=device, requires_grad=True) for s, w in sites.items()}
        self.means = means  # None: zero ablation
        self.rows: torch.Tensor | None = None  # task row of each example in the batch, (B,)
        self.hard: dict[Site, torch.Tensor] | None = None  # fixed 0/1 masks for evaluation

    def soft_count(self) -> torch.Tensor:
        """Kept nodes per row, differentiable through the straight-through mask, (rows,)."""
        return sum(self._mask(logits).sum(dim=1) for logits in self.logits.values())

    @staticmethod
    def _mask(logits: torch.Tensor) -> torch.Tensor:
        soft = torch.sigmoid(logits)
        return (logits > 0).float() + soft - soft.detach()

    def __call__(self, layer: int, location: str, x: torch.Tensor) -> torch.Tensor:
        site = (layer, location)
        replacement = self.means[site] if self.means is not None else torch.zeros(())
        delta = x - replacement
        if self.hard is not None:
            return replacement + self.hard[site][self.rows][:, None, :] * delta
        logits = self.logits[site][self.rows][:, None, :]  # (B, 1, C): each example uses its task's row
        # Forward: exactly the hard mask. Backward: as if the mask were the sigmoid, for the mask
        # parameter and for everything upstream, so a chain of nodes switched off together can come back.
        surrogate = torch.sigmoid(logits) * delta
        return torch.where(logits > 0, x, replacement) + (surrogate - surrogate.detach())

    def flat_scores(self) -> torch.Tensor:
        """All mask parameters of each row in one vector, (rows, n_nodes), in `sites` order."""
        return torch.cat([self.logits[s].detach() for s in self.sites], dim=1)

    def keep_top(self, k: torch.Tensor) -> None:
        """Fix each row's mask to its k[row] highest-scoring nodes."""
        scores = self.flat_scores()
        order = scores.argsort(dim=1, descending=True)
        keep = torch.zeros_like(scores)
        ranks = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
        keep.scatter_(1, order, (ranks < k[:, None]).float())
        self.hard = dict(zip(self.sites, keep.split(list(self.sites.values()), dim=1)))

    def kept_nodes(self, row: int) -> list[str]:
        """Stable names (`layer.0.attn.q[5]`) of the nodes kept in a row of the hard mask."""
        return [node_name(layer, loc, int(c)) for (layer, loc), m in self.hard.items()
                for c in m[row].nonzero().flatten()]


def smallest_k(loss_at: Callable[[int], float], target: float, n: int) -> int | None:
    """Smallest k in [0, n] with loss_at(k) <= target, by bisection (loss assumed to fall with k);
    None when even all n nodes miss the target."""
    if loss_at(n) > target:
        return None
    low, high = 0, n
    while low < high:
        raise_if_stopped()
        mid = (low + high) // 2
        if loss_at(mid) <= target:
            high = mid
        else:
            low = mid + 1
    return low


@dataclass
class Circuit:
    nodes: list[str]  # empty when the target was not reached
    loss: float  # held-out task loss with only these nodes kept (all nodes, if unsolved)
    solved: bool


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # tokens, last, target, other


def _stack(batches: list[Batch]) -> tuple[Batch, torch.Tensor]:
    """Concatenate the tasks' batches (padding tokens to one length) and say which row each is."""
    length = max(b[0].shape[1] for b in batches)
    tokens = torch.cat([torch.nn.functional.pad(b[0], (0, length - b[0].shape[1])) for b in batches])
    rest = [torch.cat([b[i] for b in batches]) for i in (1, 2, 3)]
    rows = torch.cat([torch.full((len(b[1]),), row) for row, b in enumerate(batches)])
    return (tokens, *rest), rows


def _per_row_loss(model: GPT, masks: NodeMasks, batch: Batch, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean task loss of each row, (rows,)."""
    tokens, last, target, other = batch
    masks.rows = rows
    losses = task_losses(model(tokens), last, target, other)
    return torch.zeros(n_rows).index_add(0, rows, losses) / torch.bincount(rows, minlength=n_rows)


def prune(model: GPT, train: list[Batch], heldout: list[Batch], means: dict[Site, torch.Tensor] | None,
          target_loss: float, steps: int, penalty: float, lr: float) -> list[Circuit]:
    """The smallest circuit of every task at once: one mask row per task, one optimisation."""
    sites, n_rows = node_sites(model), len(train)
    masks = NodeMasks(sites, n_rows, means)
    train_batch, train_rows = _stack(train)
    optimizer = torch.optim.Adam(list(masks.logits.values()), lr=lr)
    frozen = [p.requires_grad_(False) for p in model.parameters()]
    try:
        with model.hooked(masks):
            for _ in range(steps):
                raise_if_stopped()
                loss = _per_row_loss(model, masks, train_batch, train_rows, n_rows).sum()
                loss = loss + penalty * masks.soft_count().sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            return [_discretise(model, masks, row, heldout[row], target_loss) for row in range(n_rows)]
    finally:
        for p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def _discretise(model: GPT, masks: NodeMasks, row: int, heldout: Batch, target_loss: float) -> Circuit:
    """Bisect on k over this row's ranking: the smallest top-k node set reaching the target."""
    rows = torch.full((len(heldout[1]),), row)
    n_nodes = sum(masks.sites.values())
    k_all = torch.zeros(masks.flat_scores().shape[0], dtype=torch.long)

    def loss_at(k: int) -> float:
        masks.keep_top(k_all + k)
        return _per_row_loss(model, masks, heldout, rows, len(k_all))[row].item()

    k = smallest_k(loss_at, target_loss, n_nodes)
    loss = loss_at(n_nodes if k is None else k)
    nodes = [] if k is None else masks.kept_nodes(row)
    masks.hard = None
    return Circuit(nodes=nodes, loss=loss, solved=k is not None)
