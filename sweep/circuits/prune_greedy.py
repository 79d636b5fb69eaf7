"""Discovery method `greedy`: node removal in the spirit of ACDC (Conmy et al. 2023). Starting from the
whole model, visit the nodes from the output back to the input (reverse forward order) and remove each
for good when the task loss on the train prompts stays within the target without it. Where `mask` and
`attribution` score every node at once, this one searches: its answer is a set, found by trials.

ACDC removes edges when a KL divergence rises by less than a threshold; here nodes go (the unit the
discretisation and the edges count) and the threshold is the target itself, so the set the search
keeps reaches the target on the train prompts. A model that misses the target there keeps its own
train loss as the threshold: the search then removes what does not make it worse.

The ranking handed to the discretisation: the kept nodes first (forward order), then the removed nodes,
last removed first. The trials go through the minimality pass's batched rounds (one forward pass
tries up to 64 removals), for every task at once."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from sweep.circuits.discretise import Found, minimality_pass, run_searches
from sweep.circuits.prune import Batch, Evaluator, Site
from sweep.science.model import GPT


def rank(model: GPT, train: list[Batch], means: dict[Site, torch.Tensor] | None, cfg: DictConfig) -> list[list[torch.Tensor]]:
    """Per task, one score vector (n_nodes,): 2 for a node the search kept; a removed node scores its
    removal's place in (0, 1], the last removed highest (the pass removes from the output end, so the
    last removed are the nodes nearest the input)."""
    evaluator = Evaluator(model, train, means)
    n = evaluator.n_nodes
    everything = torch.ones(n, dtype=torch.bool)
    forward_order = list(range(n))  # the pass drops the lowest ranked first: the output end first
    full = evaluator.losses([(task, everything) for task in range(len(train))])
    found = run_searches([(task, minimality_pass(Found(everything, loss, forward_order), max(cfg.target_loss, loss)))
                          for task, loss in enumerate(full)], evaluator.losses)
    removal_place = 1 - torch.arange(n) / n
    return [[torch.where(f.keep, 2.0, removal_place)] for f in found]
