"""Weight sparsity: top-k per matrix after every step, a per-neuron minimum, a linear anneal."""

from __future__ import annotations

import torch

from sweep.errors import ConfigError


def embedding_density(density: float, width_mult: int) -> float:
    """The paper's rule: embedding nonzero counts stay constant across widths."""
    return min(1.0, density * width_mult)


def annealed_density(target: float, progress: float, start: float, end: float) -> float:
    """Density at a fraction `progress` of training: 1 until start, linear to target at end, then held."""
    if progress <= start:
        return 1.0
    if progress >= end:
        return target
    return 1.0 + (target - 1.0) * (progress - start) / (end - start)


def keep_mask(weight: torch.Tensor, k: int, min_per_neuron: int) -> torch.Tensor:
    """Boolean mask of the k largest |w|, after first keeping the top `min_per_neuron` of every
    row (a unit's inputs) and every column (a unit's outputs). Keeps max(k, forced) entries."""
    magnitude = weight.detach().abs()
    mask = torch.zeros_like(magnitude, dtype=torch.bool)
    if min_per_neuron > 0:
        mask.scatter_(1, magnitude.topk(min_per_neuron, dim=1).indices, True)
        mask.scatter_(0, magnitude.topk(min_per_neuron, dim=0).indices, True)
    remaining = k - int(mask.sum())
    if remaining > 0:
        free = magnitude.masked_fill(mask, -1.0).flatten()
        mask.view(-1)[free.topk(remaining, sorted=False).indices] = True
    return mask


def check_feasible(matrices: dict[str, tuple[int, int]], density: float, min_per_neuron: int, where: str) -> None:
    """Reject a cell where density * fan_in (or fan_out) < j for some hidden matrix."""
    for name, (fan_out, fan_in) in matrices.items():
        narrow = min(fan_out, fan_in)
        if density * narrow < min_per_neuron:
            raise ConfigError(
                "sparsity.density", density,
                f"infeasible at {where}: {name} ({fan_out}x{fan_in}) keeps {density * narrow:.2f} weights per unit "
                f"but sparsity.min_per_neuron={min_per_neuron}; allowed: density >= {min_per_neuron / narrow:.4g} "
                f"here (or a wider model, or a smaller sparsity.min_per_neuron)")


class WeightSparsifier:
    """Projects hidden and embedding matrices onto their annealed nonzero budget, in place."""

    def __init__(self, hidden: dict, embedding: dict, density: float, width_mult: int, sparsity_cfg):
        self.hidden, self.embedding = hidden, embedding
        self.density, self.width_mult = density, width_mult
        self.emb_density = embedding_density(density, width_mult)
        self.cfg = sparsity_cfg
        self.density_now = 1.0

    def schedule(self, target: float, progress: float) -> float:
        return annealed_density(target, progress, self.cfg.anneal_start, self.cfg.anneal_end)

    @torch.no_grad()
    def project(self, progress: float) -> None:
        """Zero all but the top-k of every sparsified matrix at this point of training."""
        self.density_now = self.schedule(self.density, progress)
        groups = ((self.hidden, self.density_now, self.cfg.min_per_neuron),
                  (self.embedding, self.schedule(self.emb_density, progress), 0))
        for matrices, density, j in groups:
            if density >= 1.0:
                continue
            for w in matrices.values():
                w.mul_(keep_mask(w, round(density * w.numel()), j))
