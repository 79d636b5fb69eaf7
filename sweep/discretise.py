"""From node rankings to circuits (method.md 4, steps 4-5): bisection on each ranking to the smallest
prefix that reaches the target, then a minimality pass that drops the prefix's nodes one at a time,
lowest ranked first, while the held-out loss stays within the target. A task's circuit is the
smallest over its rankings (restarts, penalties)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Generator

import torch

# A search asks for the held-out losses of lists of candidate node sets ((n_nodes,) bool) until done.
Search = Generator[list[torch.Tensor], list[float], "Found"]
Losses = Callable[[list[tuple[int, torch.Tensor]]], list[float]]  # [(task, keep)] -> held-out losses

FIRST_WINDOW, MAX_WINDOW = 4, 64  # trials per round of the minimality pass (grows while guesses hold)


@dataclass
class Found:
    keep: torch.Tensor | None  # (n_nodes,) bool; None when even the whole model misses the target
    loss: float  # held-out loss of `keep` (of the whole model when None)
    before_pass: int = 0  # nodes of the bisection's prefix


@dataclass
class Circuit:
    keep: torch.Tensor | None  # the smallest set found over the task's rankings; None: unsolved
    loss: float
    nodes_before_pass: float  # the chosen ranking's prefix (NaN: unsolved)
    restart_sizes: list[int] = field(default_factory=list)  # final size from every ranking that solved

    @property
    def solved(self) -> bool:
        return self.keep is not None

    @property
    def restart_median(self) -> float:
        return float(statistics.median(self.restart_sizes)) if self.restart_sizes else float("nan")


def search(scores: torch.Tensor, target: float) -> Search:
    """Bisection on the ranking by `scores` (ties: lower index first), then the minimality pass."""
    n = len(scores)
    order = torch.argsort(-scores, stable=True)

    def prefix(k: int) -> torch.Tensor:
        keep = torch.zeros(n, dtype=torch.bool)
        keep[order[:k]] = True
        return keep

    (loss,) = yield [prefix(n)]
    if loss > target:
        return Found(None, loss)
    low, high = 0, n  # the smallest k reaching the target lies in [low, high]; loss falls with k
    while low < high:
        mid = (low + high) // 2
        (mid_loss,) = yield [prefix(mid)]
        if mid_loss <= target:
            high, loss = mid, mid_loss
        else:
            low = mid + 1
    keep, loss = yield from minimality_pass(prefix(high), order[:high].flip(0).tolist(), loss, target)
    return Found(keep, loss, high)


def minimality_pass(keep: torch.Tensor, candidates: list[int], loss: float, target: float):
    """Drop each candidate in turn, lowest ranked first, if the set without it still reaches the target.
    Trials are batched by guessing that the next outcome repeats the last one. While nodes drop, one
    round tries dropping the next 1, 2, 4, ... candidates together and keeps the longest run that
    reaches the target (held-out loss is taken to rise as nodes go, as the bisection does); while nodes
    are needed, one round tries each of the next candidates alone, up to the first that can go."""
    i, window, dropping = 0, FIRST_WINDOW, True
    while i < len(candidates):
        if dropping:
            sizes = _doubling(min(window, len(candidates) - i))
            trials = [_without(keep, candidates[i:i + size]) for size in sizes]
        else:
            trials = [_without(keep, [c]) for c in candidates[i:i + window]]
        losses = yield trials
        reached = [trial_loss <= target for trial_loss in losses]
        if dropping:
            run = next((j for j, ok in enumerate(reached) if not ok), len(reached))  # leading successes
            if run:
                keep, loss = trials[run - 1], losses[run - 1]
                i += sizes[run - 1]
            else:
                i, dropping = i + 1, False  # the next candidate alone is needed
            window = 2 * window if run == len(sizes) else FIRST_WINDOW
        else:
            first = next((j for j, ok in enumerate(reached) if ok), None)
            if first is None:
                i, window = i + len(trials), 2 * window
            else:
                keep, loss = trials[first], losses[first]
                i, window, dropping = i + first + 1, FIRST_WINDOW, True
        window = min(window, MAX_WINDOW)
    return keep, loss


def _doubling(limit: int) -> list[int]:
    """1, 2, 4, ... up to `limit`, and `limit` itself."""
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    return sizes + ([limit] if limit > sizes[-1] else [])


def _without(keep: torch.Tensor, nodes: list[int]) -> torch.Tensor:
    trial = keep.clone()
    trial[nodes] = False
    return trial


def run_searches(searches: list[tuple[int, Search]], losses: Losses) -> list[Found]:
    """Advance all searches together: each round evaluates every open search's candidates in one call."""
    found: list[Found | None] = [None] * len(searches)
    asked: dict[int, list[torch.Tensor]] = {}
    for i, (_, s) in enumerate(searches):
        asked[i] = next(s)
    while asked:
        flat = [(searches[i][0], keep) for i, sets in asked.items() for keep in sets]
        answers, at, still = losses(flat), 0, {}
        for i, sets in asked.items():
            try:
                still[i] = searches[i][1].send(answers[at:at + len(sets)])
            except StopIteration as done:
                found[i] = done.value
            at += len(sets)
        asked = still
    return found


def smallest_circuits(rankings: list[list[torch.Tensor]], losses: Losses, target: float) -> list[Circuit]:
    """Per task, every ranking's circuit; the task's circuit is the smallest (then lowest loss)."""
    searches = [(task, search(scores, target)) for task, ranks in enumerate(rankings) for scores in ranks]
    found = run_searches(searches, losses)
    circuits, at = [], 0
    for ranks in rankings:
        mine, at = found[at:at + len(ranks)], at + len(ranks)
        solved = [f for f in mine if f.keep is not None]
        if not solved:
            circuits.append(Circuit(None, mine[0].loss, float("nan")))
            continue
        best = min(solved, key=lambda f: (int(f.keep.sum()), f.loss))
        circuits.append(Circuit(best.keep, best.loss, float(best.before_pass), [int(f.keep.sum()) for f in solved]))
    return circuits
