"""The top-k projection before and after its speed-up, timed side by side inside real sparse training steps."""

from __future__ import annotations

import contextlib
import time

import torch

import sweep.science.sparsity
from bench.steps import make_trainer, sync


def plain_topk_mask(w: torch.Tensor, k: int, j: int) -> torch.Tensor:
    """The projection as first written (and as the spec reads): topk along rows and columns for the
    per-unit minimum j, then topk over the free entries. The reference the fast paths must match."""
    magnitude = w.detach().abs()
    mask = torch.zeros_like(magnitude, dtype=torch.bool)
    if j > 0:
        mask.scatter_(1, magnitude.topk(j, dim=1).indices, True)
        mask.scatter_(0, magnitude.topk(j, dim=0).indices, True)
    remaining = k - int(mask.sum())
    if remaining > 0:
        mask.view(-1)[magnitude.masked_fill(mask, -1.0).flatten().topk(remaining, sorted=False).indices] = True
    return mask


def plain_keep_masks(weights: list[torch.Tensor], k: int, j: int) -> list[torch.Tensor]:
    return [plain_topk_mask(w, k, j) for w in weights]


@contextlib.contextmanager
def plain_projection():
    """WeightSparsifier.project with the plain topk masks, one matrix at a time."""
    fast = sweep.science.sparsity.keep_masks
    sweep.science.sparsity.keep_masks = plain_keep_masks
    try:
        yield
    finally:
        sweep.science.sparsity.keep_masks = fast


def projection_times(cfg, tokens: torch.Tensor, d_model: int, density: float, steps: int,
                     device: torch.device) -> dict:
    """Mean time of one projection, plain and fast, alternating step by step in one sparse training run
    at its target density (both keep the k largest; tests/test_sparsity.py)."""
    trainer = make_trainer(cfg, d_model, density, 2 * steps, device)
    trainer.done = steps  # the second half of the schedule: the density has reached its target
    generator = torch.Generator().manual_seed(cfg.seed)
    project, spent = trainer.sparsifier.project, {"plain": 0.0, "fast": 0.0}

    def timed(progress: float) -> None:
        which = "plain" if trainer.done % 2 else "fast"
        with plain_projection() if which == "plain" else contextlib.nullcontext():
            sync(device)
            start = time.perf_counter()
            project(progress)
            sync(device)
        spent[which] += time.perf_counter() - start

    trainer.step(tokens, generator, cfg, device)  # warm-up, with the projection not yet timed
    trainer.sparsifier.project = timed
    for _ in range(2 * (steps // 2)):
        trainer.step(tokens, generator, cfg, device)
    each = steps // 2
    plain_s, fast_s = spent["plain"] / each, spent["fast"] / each
    return {"d_model": d_model, "steps_each": each, "plain_s": plain_s, "fast_s": fast_s, "speedup": plain_s / fast_s}
