"""Weight sparsity: top-k per matrix after every step, a per-neuron minimum, a linear anneal."""

from __future__ import annotations

import math

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
    return keep_masks([weight], k, min_per_neuron)[0]


def keep_masks(weights: list[torch.Tensor], k: int, min_per_neuron: int) -> list[torch.Tensor]:
    """`keep_mask` of several matrices of one shape, stacked so that each op runs once for all of
    them (on small matrices per-op overhead costs as much as the arithmetic). Large matrices pick
    their free entries by `_keep_largest_banded`, small ones (and any with NaN, which topk ranks
    first) by topk."""
    magnitude = torch.stack([w.detach() for w in weights]).abs_()  # (G, out, in)
    G, n = len(magnitude), magnitude[0].numel()
    by_topk = n < BANDED_MIN_NUMEL or bool(torch.isnan(magnitude.amax()))
    mask = _unit_maxima(magnitude, min_per_neuron)
    if by_topk and min_per_neuron > 0:
        magnitude.masked_fill_(mask, -1.0)  # taken already: below every free magnitude
    for values, kept in zip(magnitude.view(G, n), mask.view(G, n)):
        forced = int(kept.count_nonzero()) if min_per_neuron > 0 else 0  # (count_nonzero(dim=) is slow on bool)
        if k <= forced:
            continue
        if by_topk or not _keep_largest_banded(values, k - forced, kept, forced):
            free = values if by_topk else values.masked_fill(kept, -1.0)
            kept[free.topk(k - forced, sorted=False).indices] = True
    return list(mask.unbind(0))


def _unit_maxima(magnitude: torch.Tensor, j: int) -> torch.Tensor:
    """Mask of the j largest entries of every row and every column of each matrix (G, out, in).
    For j = 1 these are the entries equal to their row's (column's) maximum, a fraction of the
    cost of topk along rows and columns; where a unit has two (ties, NaN), topk picks."""
    if j == 1:
        rows = magnitude == magnitude.amax(dim=2, keepdim=True)
        cols = magnitude == magnitude.amax(dim=1, keepdim=True)
        G, n_out, n_in = magnitude.shape  # every unit without NaN has one entry or more at its maximum
        if int(rows.count_nonzero()) == G * n_out and int(cols.count_nonzero()) == G * n_in:
            return rows.logical_or_(cols)
    mask = torch.zeros_like(magnitude, dtype=torch.bool)
    if j > 0:
        mask.scatter_(2, magnitude.topk(j, dim=2).indices, True)
        mask.scatter_(1, magnitude.topk(j, dim=1).indices, True)
    return mask


BANDED_MIN_NUMEL = 16384  # from here on the banded selection beats topk over the whole matrix
SAMPLE = 1024  # entries sampled to bracket the value of the last kept entry


def _keep_largest_banded(values: torch.Tensor, r: int, kept: torch.Tensor, n_kept: int) -> bool:
    """As a topk over the free entries would, without its cost (~10 ns an entry, most of a
    projection): a strided sample brackets the value of the r-th largest free entry, topk runs on
    the entries inside the bracket only, and one comparison with that value makes the mask. Ties
    at that value go to the lowest indices (topk leaves them unspecified). False (nothing changed)
    when the bracket misses, which 4 standard deviations of margin make rare."""
    n = values.numel()
    sample = values[::(n // SAMPLE) | 1]  # odd stride: every column of 2^a-wide rows
    s, q = len(sample), r / n
    spread = 4 * math.sqrt(s * q * (1 - q)) + 2  # 4 standard deviations of a sample quantile's rank
    hi_at, lo_at = int(s * (1 - q) + spread), int(s * (1 - q - n_kept / n) - spread)  # kept ones may lie above
    hi = sample.kthvalue(hi_at + 1).values.item() if hi_at < s else math.inf
    lo = sample.kthvalue(lo_at + 1).values.item() if lo_at >= 0 else 0.0
    free = ~kept
    band = values[(values >= lo).logical_and_(values <= hi).logical_and_(free)]  # the free entries in the bracket
    need = r - int((values > hi).logical_and_(free).count_nonzero())  # those above it are all kept
    if not 0 < need <= len(band):
        return False
    last = band.topk(need, sorted=False).values.min()  # the r-th largest free value
    new = (values >= last).logical_and_(free)
    extra = int(new.count_nonzero()) - r
    if extra:  # free entries tied with the last one beyond r
        new[((values == last) & new).nonzero().squeeze(1)[-extra:]] = False
    kept.logical_or_(new)
    return True


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
            for ws in same_shape(matrices):
                torch._foreach_mul_(ws, keep_masks(ws, round(density * ws[0].numel()), j))


def same_shape(matrices: dict[str, torch.Tensor]) -> list[list[torch.Tensor]]:
    """The matrices grouped by shape, in their original order."""
    groups: dict[tuple, list] = {}
    for w in matrices.values():
        groups.setdefault(tuple(w.shape), []).append(w)
    return list(groups.values())
