"""Discovery method `mask` (method.md 4): learn one gate per node under a penalty per kept node, then
rank the nodes by their mask parameter. Every (penalty, restart) pair is its own optimisation; all of
them, for all tasks, run as gate rows of one batch.

Gates (`prune.gate`):
- `annealed` (default): the gate is sigmoid(l / T) in the forward pass too, with T falling
  geometrically from `prune.temperature[0]` to `[1]`, so the gates end near 0/1. Nodes that only
  matter together (a query and its key under zero ablation) keep a gradient while half on.
- `straight_through` (the paper's): a hard 0/1 gate forward, sigmoid(l) backward. A query and key
  that switch off together get no gradient again: zero ablation traps them (README)."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig

from sweep.lifecycle import raise_if_stopped
from sweep.science.model import GPT
from sweep.circuits.prune import Batch, NodeMasks, Site, node_sites, per_row_losses, split_sites, stack_batches

GATES = ("annealed", "straight_through")
CLAMP = 1.0  # mask parameters live in [-1, 1] (the paper's clamp)


def penalty_ladder(cfg: DictConfig) -> list[float]:
    """`prune.penalty` as a list: one number or a ladder of them."""
    return [float(v) for v in cfg.penalty] if isinstance(cfg.penalty, (list, tuple, ListConfig)) else [float(cfg.penalty)]


def rank(model: GPT, train: list[Batch], means: dict[Site, torch.Tensor] | None, cfg: DictConfig) -> list[list[torch.Tensor]]:
    """Per task, one score vector (the mask parameters, (n_nodes,)) per penalty and restart."""
    sites = node_sites(model)
    n_nodes, n_tasks = sum(sites.values()), len(train)
    penalties = penalty_ladder(cfg)
    per_task = len(penalties) * cfg.restarts
    n_rows = n_tasks * per_task  # task-major, then penalty, then restart
    device = next(model.parameters()).device
    init = torch.full((n_rows, n_nodes), float(cfg.init))
    restart = torch.arange(n_rows) % cfg.restarts
    jitter = torch.randn(init.shape, generator=torch.Generator().manual_seed(0))
    init += (restart > 0)[:, None] * cfg.init_noise * jitter  # restart 0 starts from the plain init
    logits = init.clamp(-CLAMP, CLAMP).to(device).requires_grad_(True)
    row_penalty = torch.tensor(penalties, device=device).repeat_interleave(cfg.restarts).repeat(n_tasks)

    stacked, task_of = stack_batches(train)
    rows = (task_of[None, :] * per_task + torch.arange(per_task, device=device)[:, None]).flatten()
    batch = tuple(t.repeat(per_task, *[1] * (t.dim() - 1)) for t in stacked)  # each example once per row of its task
    masks = NodeMasks(sites, means)
    optimizer = torch.optim.Adam([logits], lr=cfg.lr)
    start, end = cfg.temperature
    frozen = [p.requires_grad_(False) for p in model.parameters()]
    try:
        with model.hooked(masks):
            for step in range(cfg.steps):
                raise_if_stopped()
                if cfg.gate == "annealed":
                    gates = torch.sigmoid(logits / (start * (end / start) ** (step / max(1, cfg.steps - 1))))
                    masks.set_flat(gates)
                    kept = gates.sum(dim=1)
                else:
                    soft, hard = torch.sigmoid(logits), (logits > 0).float()
                    masks.set_flat(hard)
                    masks.surrogate = split_sites(sites, soft)
                    kept = (hard + soft - soft.detach()).sum(dim=1)
                loss = per_row_losses(model, masks, batch, rows, n_rows).sum() + (row_penalty * kept).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    logits.clamp_(-CLAMP, CLAMP)
        scores = _break_ties(model, masks, logits.detach(), batch, rows)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return [list(scores[t * per_task:(t + 1) * per_task]) for t in range(n_tasks)]


def _break_ties(model: GPT, masks: NodeMasks, logits: torch.Tensor, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    """Scores that order nodes by their mask parameter and, among equal parameters (many sit at the
    clamp), by how much switching the node on or off at the learned hard mask lowers the task loss
    (its gate's gradient there): a needed node the optimisation left at -1 is not ranked last."""
    gates = (logits > 0).float().requires_grad_(True)
    masks.set_flat(gates)
    masks.surrogate = None
    with model.hooked(masks):
        loss = per_row_losses(model, masks, batch, rows, len(logits)).sum()
    (grad,) = torch.autograd.grad(loss, gates)
    order = torch.from_numpy(np.lexsort((grad.cpu().numpy(), -logits.cpu().numpy()), axis=1))  # last key first
    scores = torch.empty(logits.shape)
    scores.scatter_(1, order, torch.arange(logits.shape[1], 0, -1, dtype=torch.float).expand_as(logits).contiguous())
    return scores
