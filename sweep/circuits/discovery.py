"""Circuit discovery methods behind one interface (`prune.method`): a method ranks the nodes of every
task, (model, task batches, ablation values, prune config) -> per task a list of score vectors; the
shared discretisation (sweep/circuits/discretise.py) turns rankings into circuits."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from sweep.circuits import prune_attribution, prune_greedy, prune_mask
from sweep.circuits.discretise import Circuit, smallest_circuits
from sweep.science.model import GPT
from sweep.circuits.prune import Batch, Evaluator, Site

METHODS = {"mask": prune_mask.rank, "attribution": prune_attribution.rank, "greedy": prune_greedy.rank}


def rank_nodes(model: GPT, train: list[Batch], means: dict[Site, torch.Tensor] | None,
               cfg: DictConfig) -> list[list[torch.Tensor]]:
    """Per task, the score vectors of `cfg.method` (a prune config): one ranking of every node each."""
    model.eval()
    return METHODS[cfg.method](model, train, means, cfg)


def find_circuits(model: GPT, train: list[Batch], heldout: list[Batch], means: dict[Site, torch.Tensor] | None,
                  cfg: DictConfig) -> tuple[list[Circuit], Evaluator]:
    """Every task's smallest circuit at the target; the evaluator knows the node names."""
    rankings = rank_nodes(model, train, means, cfg)
    evaluator = Evaluator(model, heldout, means)
    return smallest_circuits(rankings, evaluator.losses, cfg.target_loss, cfg.passes), evaluator
