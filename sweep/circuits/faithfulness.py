"""Faithfulness: how much of the full model's task ability a node set keeps, and the measures built on it.

f(S) = (L_empty - L_S) / (L_empty - L_full), with L the held-out task loss (binary cross-entropy over the
two answers) of the set S with every other node ablated, of the empty set, and of the whole model. It is
measured where the whole model beats both the empty set and chance (ln 2) by `prune.faithfulness_margin`
nats: the model has the ability, and ablating every node takes it away. (A model worse than chance has no
ability to keep, even where its empty circuit is worse still: the nonsense control is such a case.)
Elsewhere nothing is measured. From it, per task:
- the smallest circuit found with f >= `prune.faithfulness` (0.8: `edges_at_f80`): the same bisection and
  minimality pass as the target circuit, at the loss where f reaches the threshold;
- CPR and CMD as MIB's circuit track computes them: f at kept fractions of the model's edges
  (`prune.curve_fractions`, MIB's 0.001 ... 1), each the smallest prefix of the method's ranking whose
  edges reach int(fraction x the model's edges); a trapezoid over that linear axis, no normalisation;
  CPR the area under f (higher is better), CMD the area under |1 - f| (0 is best);
- the curve: loss against nodes and edges of every node set the searches evaluated, and of the ladder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from sweep.circuits.circuit import EdgeCounter
from sweep.circuits.discretise import Circuit, Losses, prefix, smallest_circuits

# which search evaluated a node set (the curve's `search`): the whole model and the empty set, the target
# search, the f80 search, the ladder of edge fractions
BASELINE, TARGET, F80, LADDER = "baseline", "target", "f80", "ladder"
CHANCE = math.log(2)  # the task loss of a coin


@dataclass(frozen=True)
class Baseline:
    """A task's held-out loss with every node kept (`full`) and with every node ablated (`empty`)."""

    full: float
    empty: float

    def measurable(self, margin: float) -> bool:
        """The model beats the empty set and chance by the margin: it has an ability that ablation removes."""
        return min(self.empty, CHANCE) - self.full >= margin

    def f(self, loss: float) -> float:
        return (self.empty - loss) / (self.empty - self.full)

    def loss_at(self, f: float) -> float:
        """The loss at which a set keeps the fraction f of the ability."""
        return self.empty - f * (self.empty - self.full)


@dataclass
class LadderPoint:
    fraction: float  # of the model's edges
    nodes: int
    edges: int
    loss: float
    f: float


@dataclass
class Faithfulness:
    """One task's faithfulness measures; NaN and an unsolved circuit where it is not measurable."""

    baseline: Baseline
    measurable: bool
    threshold_loss: float  # the loss where f = prune.faithfulness
    circuit: Circuit  # the smallest found with f >= prune.faithfulness
    ladder: list[LadderPoint] = field(default_factory=list)
    cpr: float = math.nan
    cmd: float = math.nan
    curve: list[tuple[int, int, float, str]] = field(default_factory=list)  # (nodes, edges, loss, search), by size

    def f(self, loss: float) -> float:
        return self.baseline.f(loss) if self.measurable else math.nan


class TrialLog:
    """Wraps the evaluator's `losses` and keeps every node set it was asked for, by task, with the search asking."""

    def __init__(self, losses: Losses):
        self._losses = losses
        self.trials: dict[int, dict[bytes, tuple[torch.Tensor, float, str]]] = {}

    def asking(self, search: str) -> Losses:
        """The evaluator's `losses`, each node set it answers kept as evaluated by `search` (first asker wins)."""
        def losses(candidates: list[tuple[int, torch.Tensor]]) -> list[float]:
            out = self._losses(candidates)
            for (task, keep), loss in zip(candidates, out):
                self.trials.setdefault(task, {}).setdefault(keep.numpy().tobytes(), (keep, loss, search))
            return out

        return losses

    def curve(self, task: int, counter: EdgeCounter) -> list[tuple[int, int, float, str]]:
        """(nodes, edges, loss, search) of every node set evaluated for the task, smallest first."""
        trials = list(self.trials.get(task, {}).values())
        if not trials:
            return []
        edges = counter.count(torch.stack([keep for keep, _, _ in trials]))
        return sorted((int(keep.sum()), e, loss, search) for (keep, loss, search), e in zip(trials, edges))


def area(fractions: list[float], f: list[float]) -> tuple[float, float]:
    """(CPR, CMD): trapezoids over the linear fraction axis of f and of |1 - f| (MIB's evaluation)."""
    cpr = cmd = 0.0
    for (x1, f1), (x2, f2) in zip(zip(fractions, f), zip(fractions[1:], f[1:])):
        cpr += (x2 - x1) * (f1 + f2) / 2
        cmd += (x2 - x1) * (abs(1 - f1) + abs(1 - f2)) / 2
    return cpr, cmd


def prefix_reaching(ranking: list[int], n: int, counter: EdgeCounter, edges: int) -> int:
    """The smallest k whose first k ranked nodes hold at least `edges` edges (edges only grow with k)."""
    low, high = 0, n
    while low < high:
        mid = (low + high) // 2
        if counter.count(prefix(ranking, mid, n)[None])[0] >= edges:
            high = mid
        else:
            low = mid + 1
    return low


def measure(rankings: list[list[torch.Tensor]], log: TrialLog, baselines: list[Baseline], counters: list[EdgeCounter],
            n_nodes: int, cfg) -> list[Faithfulness]:
    """Per task: the circuit at f >= cfg.faithfulness, the ladder of edge fractions with CPR and CMD, and the
    curve of every set evaluated so far (call after the target search, with the same log)."""
    measurable = [b.measurable(cfg.faithfulness_margin) for b in baselines]
    thresholds = [b.loss_at(cfg.faithfulness) if ok else None for b, ok in zip(baselines, measurable)]
    circuits = smallest_circuits(rankings, log.asking(F80), thresholds, cfg.passes)

    fractions = [float(x) for x in cfg.curve_fractions]
    asked: list[tuple[int, float, torch.Tensor]] = []
    for task, circuit in enumerate(circuits):
        if not measurable[task]:
            continue
        everything = counters[task].count(torch.ones(1, n_nodes, dtype=torch.bool))[0]
        for fraction in fractions:
            k = prefix_reaching(circuit.ranking, n_nodes, counters[task], int(fraction * everything))
            asked.append((task, fraction, prefix(circuit.ranking, k, n_nodes)))
    losses = log.asking(LADDER)([(task, keep) for task, _, keep in asked]) if asked else []

    results = []
    for task, (baseline, circuit) in enumerate(zip(baselines, circuits)):
        threshold = thresholds[task] if thresholds[task] is not None else math.nan
        result = Faithfulness(baseline, measurable[task], threshold, circuit)
        points = [(fraction, keep, loss) for (t, fraction, keep), loss in zip(asked, losses) if t == task]
        if points:
            edges = counters[task].count(torch.stack([keep for _, keep, _ in points]))
            result.ladder = [LadderPoint(fraction, int(keep.sum()), e, loss, baseline.f(loss))
                             for (fraction, keep, loss), e in zip(points, edges)]
            result.cpr, result.cmd = area(fractions, [p.f for p in result.ladder])
        result.curve = log.curve(task, counters[task])
        results.append(result)
    return results
