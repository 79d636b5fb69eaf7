"""From node rankings to circuits (method.md 4, steps 4-5). Bisection on every ranking of a task
(restarts, penalties) finds the smallest prefix that reaches the target on held-out prompts; the
`passes` smallest prefixes then go through a minimality pass that drops their nodes one at a time,
lowest ranked first, while the held-out loss stays within the target. The task's circuit is the
smallest set found. (The pass costs about one trial per node it keeps, so it does not run on every
ranking: a ranking whose prefix is ten times the circuit costs ten times the trials.)"""

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
    order: list[int] = field(default_factory=list)  # the prefix of the ranking, best first
    ranking: list[int] = field(default_factory=list)  # the whole ranking, best first


@dataclass
class Circuit:
    keep: torch.Tensor | None  # the smallest set found over the task's rankings; None: unsolved
    loss: float
    nodes_before_pass: float  # the bisection's prefix that the circuit came from (NaN: unsolved)
    prefix_sizes: list[int] = field(default_factory=list)  # the bisection's prefix of every ranking that solved
    ranking: list[int] = field(default_factory=list)  # the whole ranking the circuit came from, best first

    @property
    def solved(self) -> bool:
        return self.keep is not None

    @property
    def restart_median(self) -> float:
        """Median over the task's rankings of the bisection's node count: how stable the search is."""
        return float(statistics.median(self.prefix_sizes)) if self.prefix_sizes else float("nan")


def bisection(scores: torch.Tensor, target: float) -> Search:
    """The smallest prefix of the ranking by `scores` (ties: lower index first) that reaches the
    target, the held-out loss taken to fall as the prefix grows; unsolved if the whole model misses it."""
    n = len(scores)
    order = torch.argsort(-scores, stable=True).tolist()
    (loss,) = yield [prefix(order, n, n)]
    if loss > target:
        return Found(None, loss, ranking=order)
    low, high = 0, n  # the smallest k reaching the target lies in [low, high]
    while low < high:
        mid = (low + high) // 2
        (mid_loss,) = yield [prefix(order, mid, n)]
        if mid_loss <= target:
            high, loss = mid, mid_loss
        else:
            low = mid + 1
    return Found(prefix(order, high, n), loss, order[:high], order)


def prefix(order: list[int], k: int, n: int) -> torch.Tensor:
    """The first k nodes of a ranking as an (n,) bool keep-vector."""
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def minimality_pass(prefix: Found, target: float) -> Search:
    """Drop each candidate in turn, lowest ranked first, if the set without it still reaches the target.
    Trials are batched by guessing that the next outcome repeats the last one. While nodes drop, one
    round tries dropping the next 1, 2, 4, ... candidates together and keeps the longest run that
    reaches the target (held-out loss is taken to rise as nodes go, as the bisection does); while nodes
    are needed, one round tries each of the next candidates alone, up to the first that can go."""
    keep, loss, candidates = prefix.keep, prefix.loss, prefix.order[::-1]
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
    return Found(keep, loss)


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
        try:
            asked[i] = next(s)
        except StopIteration as done:  # nothing to ask: e.g. a pass over an empty prefix
            found[i] = done.value
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


def smallest_circuits(rankings: list[list[torch.Tensor]], losses: Losses, target: float | list[float | None],
                      passes: int = 1) -> list[Circuit]:
    """Per task: bisection on each of its rankings, the minimality pass on the `passes` smallest
    prefixes; the task's circuit is the smallest result (then the lowest loss). `target` is one loss
    for every task or one per task; a task whose target is None is not searched (no circuit, loss NaN)."""
    targets = list(target) if isinstance(target, (list, tuple)) else [target] * len(rankings)
    searched = [task for task, t in enumerate(targets) if t is not None]
    found = run_searches([(task, bisection(scores, targets[task])) for task in searched for scores in rankings[task]],
                         losses)
    per_task, whole_model_loss, at = {}, {}, 0
    for task in searched:
        ranks = rankings[task]
        per_task[task] = sorted((f for f in found[at:at + len(ranks)] if f.keep is not None),
                                key=lambda f: (len(f.order), f.loss))
        whole_model_loss[task] = found[at].loss
        at += len(ranks)
    chosen = [(task, f) for task, prefixes in per_task.items() for f in prefixes[:passes]]
    passed = run_searches([(task, minimality_pass(f, targets[task])) for task, f in chosen], losses)
    circuits = []
    for task in range(len(rankings)):
        prefixes = per_task.get(task)
        if not prefixes:
            circuits.append(Circuit(None, whole_model_loss.get(task, float("nan")), float("nan")))
            continue
        results = [(int(p.keep.sum()), p.loss, len(f.order), p.keep, f.ranking)
                   for (t, f), p in zip(chosen, passed) if t == task]
        size, loss, before, keep, ranking = min(results, key=lambda r: r[:2])
        circuits.append(Circuit(keep, loss, float(before), [len(f.order) for f in prefixes], ranking))
    return circuits
