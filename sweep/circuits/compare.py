"""Two methods' circuits for one task of one checkpoint, taken apart: is their low overlap redundancy
(the model holds two different circuits) or one method's excess (nodes the task does not need)?

On the task's held-out prompts, at the run's target and ablation:
- the intersection of the two node sets: does it reach the target? Then the shared nodes are a circuit
  and each method's other nodes are excess.
- the larger set without the smaller one's nodes: does it still reach the target? Then the larger set
  holds a second circuit, disjoint from the smaller one; the minimality pass finds its size.
- neither: two different minimal circuits around a shared core (after the minimality pass no node of
  either can go, so neither test can pass unless the two are disjoint or one holds needless nodes);
  the faithfulness of the shared core, f = (L_empty - L_shared) / (L_empty - L_full), says how much of
  the task's ability the nodes both methods chose carry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from sweep.circuits.discretise import Found, minimality_pass, run_searches
from sweep.circuits.prune import Evaluator

SAME, EXCESS, REDUNDANT, SHARED_CORE = ("same circuit", "excess: the shared nodes are a circuit",
                                       "redundancy: the larger set holds a second, disjoint circuit",
                                       "two minimal circuits around a shared core")


@dataclass
class Disagreement:
    nodes_a: int
    nodes_b: int
    shared: int
    jaccard: float
    shared_loss: float  # held-out loss of the intersection
    shared_reaches: bool
    shared_f: float  # faithfulness of the intersection
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
    else:
        verdict = SHARED_CORE
    return Disagreement(int(a.sum()), int(b.sum()), n_shared, n_shared / int((a | b).sum()), shared_loss,
                        shared_loss <= target, (empty - shared_loss) / (empty - full), rest_loss, second, verdict)
