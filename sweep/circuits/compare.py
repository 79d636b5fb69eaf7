"""Two methods' circuits for one task of one checkpoint, taken apart: is their low overlap redundancy
(the model holds two different circuits) or one method's excess (nodes the task does not need)?

On the task's held-out prompts, at the run's target and ablation:
- the intersection of the two node sets: does it reach the target? Then the shared nodes are a circuit
  and each method's other nodes are excess.
- the larger set without the smaller one's nodes: does it still reach the target? Then the larger set
  holds a second circuit, disjoint from the smaller one; the minimality pass finds its size.
- how many nodes of each set can go alone (the set without that one node still reaches the target):
  the minimality pass leaves none where losses rise as nodes go, but a loss that is not monotone
  (a head kept in part writes noise) can leave some;
- the overlap once both sets are made minimal (the pass repeated on each until no node can go alone):
  how much of the low overlap is that excess;
- neither: two different minimal circuits around a shared core (with no node of either that can go,
  neither test can pass unless the two are disjoint or one holds needless nodes);
  the faithfulness of the shared core, f = (L_empty - L_shared) / (L_empty - L_full), says how much of
  the task's ability the nodes both methods chose carry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from sweep.circuits.discretise import Found, minimality_pass, run_searches
from sweep.circuits.prune import Evaluator

SAME, EXCESS, REDUNDANT, NOT_MINIMAL, SHARED_CORE = (
    "same circuit", "excess: the shared nodes are a circuit", "redundancy: the larger set holds a second, disjoint circuit",
    "excess: nodes of a circuit can go alone", "two minimal circuits around a shared core")


@dataclass
class Disagreement:
    nodes_a: int
    nodes_b: int
    shared: int
    jaccard: float
    shared_loss: float  # held-out loss of the intersection
    shared_reaches: bool
    shared_f: float  # faithfulness of the intersection
    removable_a: int  # nodes of a that can go alone
    removable_b: int
    nodes_a_minimal: int  # a after the pass is repeated until no node can go alone
    nodes_b_minimal: int
    jaccard_minimal: float  # the overlap of those two
    larger_without_smaller_loss: float
    second_circuit_nodes: float  # the minimality pass on the larger set without the smaller one; NaN: none
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def take_apart(evaluator: Evaluator, task: int, a: torch.Tensor, b: torch.Tensor, target: float) -> Disagreement:
    """`a`, `b`: the two circuits as (n_nodes,) bool keep-vectors on the evaluator's nodes."""
    shared = a & b
    larger, smaller = (a, b) if int(a.sum()) >= int(b.sum()) else (b, a)
    rest = larger & ~smaller
    full, empty, shared_loss, rest_loss = evaluator.losses([(task, torch.ones_like(a)), (task, torch.zeros_like(a)),
                                                            (task, shared), (task, rest)])
    removable = [_removable(evaluator, task, keep, target) for keep in (a, b)]
    a_min, b_min = (_until_minimal(evaluator, task, keep, target) for keep in (a, b))
    second = float("nan")
    if rest_loss <= target:
        order = rest.nonzero().flatten().tolist()  # forward order: the pass drops the output end first
        (found,) = run_searches([(task, minimality_pass(Found(rest, rest_loss, order), target))], evaluator.losses)
        second = float(found.keep.sum())
    n_shared = int(shared.sum())
    if torch.equal(a, b):
        verdict = SAME
    elif shared_loss <= target:
        verdict = EXCESS
    elif rest_loss <= target:
        verdict = REDUNDANT
    elif any(removable):
        verdict = NOT_MINIMAL
    else:
        verdict = SHARED_CORE
    return Disagreement(int(a.sum()), int(b.sum()), n_shared, _jaccard(a, b), shared_loss, shared_loss <= target,
                        (empty - shared_loss) / (empty - full), *removable, int(a_min.sum()), int(b_min.sum()),
                        _jaccard(a_min, b_min), rest_loss, second, verdict)


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Shared over either; two empty sets are the same set."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def _until_minimal(evaluator: Evaluator, task: int, keep: torch.Tensor, target: float, rounds: int = 10) -> torch.Tensor:
    """The minimality pass (output end first) repeated until it drops nothing: no node of the result
    can go alone."""
    for _ in range(rounds):
        (loss,) = evaluator.losses([(task, keep)])
        order = keep.nonzero().flatten().tolist()
        (found,) = run_searches([(task, minimality_pass(Found(keep, loss, order), target))], evaluator.losses)
        if torch.equal(found.keep, keep):
            break
        keep = found.keep
    return keep


def _removable(evaluator: Evaluator, task: int, keep: torch.Tensor, target: float) -> int:
    """Nodes of `keep` whose removal alone leaves a set that still reaches the target."""
    trials = []
    for node in keep.nonzero().flatten().tolist():
        trial = keep.clone()
        trial[node] = False
        trials.append((task, trial))
    return sum(loss <= target for loss in evaluator.losses(trials))
