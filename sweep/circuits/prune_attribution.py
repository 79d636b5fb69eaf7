"""Discovery method `attribution`: node scores by integrated gradients along the path from every node
ablated to the whole model (one step at the whole model is attribution patching,
gradient x (activation - ablation value)); each score estimates how much ablating the node raises
the task loss. One ranking per task."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from sweep.lifecycle import raise_if_stopped
from sweep.science.model import GPT
from sweep.circuits.prune import Batch, NodeMasks, Site, node_sites, per_row_losses, stack_batches


def rank(model: GPT, train: list[Batch], means: dict[Site, torch.Tensor] | None, cfg: DictConfig) -> list[list[torch.Tensor]]:
    """Per task, one score vector (n_nodes,): minus the mean gradient of the task loss with respect to
    each node's gate, over `prune.attribution_steps` points of the path (midpoints; 1: the end point)."""
    sites = node_sites(model)
    n_nodes, n_tasks, steps = sum(sites.values()), len(train), cfg.attribution_steps
    device = next(model.parameters()).device
    batch, rows = stack_batches(train)
    masks = NodeMasks(sites, means)
    alphas = [1.0] if steps == 1 else [(i + 0.5) / steps for i in range(steps)]
    scores = torch.zeros(n_tasks, n_nodes, device=device)
    frozen = [p.requires_grad_(False) for p in model.parameters()]
    try:
        with model.hooked(masks):
            for alpha in alphas:
                raise_if_stopped()
                gates = torch.full((n_tasks, n_nodes), alpha, device=device, requires_grad=True)
                masks.set_flat(gates)
                loss = per_row_losses(model, masks, batch, rows, n_tasks).sum()
                (grad,) = torch.autograd.grad(loss, gates)
                scores -= grad / len(alphas)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return [[s.abs()] for s in scores.cpu()]
