"""Faithfulness (sweep/circuits/faithfulness.py): f and where it is measured, MIB's areas by hand, the edge
counter against the edge list, and the f80 circuit on circuits planted by hand."""

import math
import random

import pytest
import torch
from omegaconf import OmegaConf

from sweep.circuits.circuit import EdgeCounter, circuit_edges
from sweep.circuits.discovery import rank_nodes
from sweep.circuits.discretise import smallest_circuits
from sweep.circuits.faithfulness import Baseline, TrialLog, area, measure, prefix, prefix_reaching
from sweep.circuits.prune import Evaluator, node_means, node_names, node_sites
from sweep.science.model import GPT, ModelShape
from bench.planted import CONSTRUCTIONS, NOTHING_TO_FIND, TARGET

PRUNE = OmegaConf.load("conf/prune/mean.yaml")
MIB_FRACTIONS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


def test_areas_by_hand():
    """Trapezoids over the linear fraction axis: f rising 0 -> 0.5 -> 1 over [0, 0.5, 1] has CPR 0.5 and CMD
    0.5; a circuit as good as the model everywhere has CPR 0.999 (the axis' length) and CMD 0."""
    assert area([0.0, 0.5, 1.0], [0.0, 0.5, 1.0]) == pytest.approx((0.5, 0.5))
    assert area(MIB_FRACTIONS, [1.0] * 10) == pytest.approx((0.999, 0.0))
    cpr, cmd = area([0.1, 0.2], [1.2, 0.8])  # above the model counts as much as below it in CMD
    assert cpr == pytest.approx(0.1) and cmd == pytest.approx(0.1 * 0.2)


def test_f_and_where_it_is_measured():
    base = Baseline(full=0.1, empty=0.7)
    assert base.f(0.1) == pytest.approx(1) and base.f(0.7) == pytest.approx(0) and base.f(0.22) == pytest.approx(0.8)
    assert base.loss_at(0.8) == pytest.approx(0.22) and base.measurable(0.1)
    assert not Baseline(full=0.65, empty=0.7).measurable(0.1)  # the model barely beats its empty circuit
    # worse than chance (ln 2) although better than a very wrong empty circuit: the nonsense control's case
    assert not Baseline(full=1.13, empty=1.35).measurable(0.1)
    assert Baseline(full=0.55, empty=2.0).measurable(0.1) and not Baseline(full=0.65, empty=2.0).measurable(0.1)


def random_sparse_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelShape(vocab_size=64, d_model=16, n_layer=2, d_head=8, d_mlp=64, n_ctx=8))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.rand_like(p) < 0.3)  # most weights zero, as in a sparse model
    return model


@pytest.mark.parametrize("seed", range(4))
def test_the_edge_counter_counts_what_the_edge_list_holds(seed):
    model = random_sparse_model(seed)
    inputs, outputs = {1, 5, 9, 33}, {2, 7}
    counter = EdgeCounter(model, inputs, outputs)
    sites = node_sites(model)
    n = sum(sites.values())
    rng = torch.Generator().manual_seed(seed)
    keeps = torch.rand(6, n, generator=rng) < torch.tensor([0.0, 0.05, 0.2, 0.5, 0.9, 1.0])[:, None]
    counts = counter.count(keeps)
    for keep, count in zip(keeps, counts):
        assert count == len(circuit_edges(model, node_names(sites, keep), inputs, outputs))
    assert counts[0] == 0 and counts[-1] == max(counts)


def test_the_smallest_prefix_reaching_an_edge_count():
    model = random_sparse_model(9)
    counter = EdgeCounter(model, {1, 2}, {3})
    n = sum(node_sites(model).values())
    ranking = list(range(n))
    random.Random(0).shuffle(ranking)
    counts = [counter.count(prefix(ranking, k, n)[None])[0] for k in range(n + 1)]
    for wanted in (0, 1, counts[n] // 3, counts[n] - 1, counts[n]):
        k = prefix_reaching(ranking, n, counter, wanted)
        assert counts[k] >= wanted and (k == 0 or counts[k - 1] < wanted)


IN_MAKE_TEST = {("attention_then_mlp", "mean"), ("two_hop_attention", "zero")}  # the others in make test-slow


@pytest.mark.parametrize("construction,ablation", [
    pytest.param(c, a, marks=() if (c, a) in IN_MAKE_TEST else pytest.mark.slow)
    for c in CONSTRUCTIONS if c not in NOTHING_TO_FIND for a in ("mean", "zero")])
def test_the_f80_circuit_keeps_80_percent_and_needs_every_node(construction, ablation):
    """On a planted model: the f80 circuit reaches f >= 0.8, dropping any one of its nodes falls below, it
    is no larger than the planted circuits (which reach the stricter target), and the ladder runs from
    the fewest edges to the whole model (f = 1), with CPR and CMD its areas."""
    planted = CONSTRUCTIONS[construction](seed=0)
    means = node_means(planted.model, planted.text(), 64) if ablation == "mean" else None
    cfg = OmegaConf.merge(PRUNE, {"target_loss": TARGET, "steps": 100})
    train, heldout = [planted.batch(16, "train")], [planted.batch(32, "heldout")]
    rankings = rank_nodes(planted.model, train, means, cfg)
    evaluator = Evaluator(planted.model, heldout, means)
    log = TrialLog(evaluator.losses)
    everything = torch.ones(evaluator.n_nodes, dtype=torch.bool)
    full, empty = log.asking("baseline")([(0, everything), (0, ~everything)])
    baseline = Baseline(full, empty)
    assert baseline.measurable(cfg.faithfulness_margin)
    (target,) = smallest_circuits(rankings, log.asking("target"), TARGET, cfg.passes)
    counter = EdgeCounter(planted.model, planted.inputs(), planted.outputs())
    (found,) = measure(rankings, log, [baseline], [counter], evaluator.n_nodes, cfg)

    circuit = found.circuit
    assert circuit.solved and baseline.f(circuit.loss) >= 0.8
    sizes = {len(c) for c in planted.minimal[ablation]}
    assert int(circuit.keep.sum()) <= max(sizes) and int(target.keep.sum()) in sizes  # (d): either path
    for i in circuit.keep.nonzero().flatten():
        without = circuit.keep.clone()
        without[i] = False
        assert baseline.f(evaluator.losses([(0, without)])[0]) < 0.8
    assert [p.fraction for p in found.ladder] == MIB_FRACTIONS
    assert found.ladder[-1].f == pytest.approx(1.0, abs=1e-5)  # every edge kept: the whole model
    assert (found.cpr, found.cmd) == pytest.approx(area(MIB_FRACTIONS, [p.f for p in found.ladder]))
    edges = [p.edges for p in found.ladder]
    assert edges == sorted(edges) and edges[-1] == counter.count(everything[None])[0]
    searches = {search for *_, search in found.curve}
    assert {"baseline", "target", "ladder"} <= searches and (0, 0, empty, "baseline") in found.curve


def test_nothing_is_searched_where_f_is_not_measured():
    """A task the model cannot do (the planted model on prompts whose cue it never sees): no f80 circuit,
    no ladder, NaN areas, and no evaluation beyond the baselines."""
    planted = CONSTRUCTIONS["mlp_lookup"](seed=0)
    cfg = OmegaConf.merge(PRUNE, {"target_loss": TARGET, "steps": 5})
    evaluator = Evaluator(planted.model, [planted.batch(8, "heldout")], None)
    log = TrialLog(evaluator.losses)
    rankings = [[torch.rand(evaluator.n_nodes)]]
    baseline = Baseline(full=0.69, empty=0.69)
    (found,) = measure(rankings, log, [baseline], [EdgeCounter(planted.model, planted.inputs(), planted.outputs())],
                       evaluator.n_nodes, cfg)
    assert not found.measurable and not found.circuit.solved and found.ladder == []
    assert math.isnan(found.cpr) and math.isnan(found.cmd) and math.isnan(found.threshold_loss)
    assert evaluator.trials == 0
