"""Pruning mechanics: the gates and their estimator, bisection and the minimality pass, the batched
evaluator, restarts, edge counting, and bad prune settings."""

import random

import pytest
import torch
from omegaconf import OmegaConf

from sweep.circuits import tasks
from sweep.circuits.circuit import circuit_edges, circuit_record
from sweep.circuits.drawing import draw
from sweep.circuits.discovery import find_circuits
from sweep.circuits.discretise import smallest_circuits
from sweep.science.model import GPT, ModelShape
from sweep.circuits.prune import Evaluator, NodeMasks, keep_of, node_names, node_sites

PRUNE = OmegaConf.load("conf/prune/mean.yaml")
PLANTED = ["layer.0.mlp.in[0]", "layer.0.mlp.hidden[0]", "layer.0.mlp.hidden[1]", "layer.0.mlp.out[1]"]


def test_straight_through_gate_passes_the_sigmoid_upstream():
    """Forward: the hard gate; backward: d out / d x = sigmoid(l) and d out / d l = sigmoid'(l) (x - r)."""
    sites = {(0, "mlp.in"): 3}
    masks = NodeMasks(sites, {(0, "mlp.in"): torch.tensor([0.5, 0.5, 0.5])})
    logits = torch.tensor([[2.0, -2.0, 2.0]], requires_grad=True)
    masks.set_flat((logits > 0).float())
    masks.surrogate = {(0, "mlp.in"): torch.sigmoid(logits)}
    masks.rows = torch.zeros(1, dtype=torch.long)
    x = torch.tensor([[[1.0, 3.0, -1.0]]], requires_grad=True)
    out = masks(0, "mlp.in", x)
    assert out.tolist() == [[[1.0, 0.5, -1.0]]]  # kept, replaced by its mean, kept
    out.sum().backward()
    assert torch.allclose(x.grad, torch.sigmoid(logits.detach())[None])
    s = torch.sigmoid(logits.detach())
    assert torch.allclose(logits.grad, s * (1 - s) * torch.tensor([[0.5, 2.5, -1.5]]))


def test_ablation_substitutes_the_mean_or_zero():
    model = planted_model()
    sites = node_sites(model)
    seen = {}

    def capture(layer, location, x):
        seen[(layer, location)] = x
        return x

    for means, expected in (({s: torch.full((w,), 0.5) for s, w in sites.items()}, 0.5), (None, 0.0)):
        masks = NodeMasks(sites, means)
        masks.set_flat(torch.zeros(1, sum(sites.values())))  # every node ablated
        masks.rows = torch.zeros(2, dtype=torch.long)
        model.node_hooks[:] = [masks, capture]
        with torch.no_grad():
            model(torch.randint(0, 256, (2, 5)))
        model.node_hooks.clear()
        assert all(torch.all(x == expected) for x in seen.values())


def find(scores, needs, target=0.15, passes=1):
    """Circuits from rankings against a loss that reaches the target exactly when `needs(keep)`."""
    calls = []

    def losses(candidates):
        calls.append(len(candidates))
        return [0.1 if needs(keep) else 0.9 for _, keep in candidates]

    rankings = [[torch.tensor(s, dtype=torch.float) for s in scores]]
    (circuit,) = smallest_circuits(rankings, losses, target, passes)
    return circuit, calls


@pytest.mark.parametrize("seed", range(5))
def test_bisection_then_the_pass_keep_exactly_the_needed_nodes(seed):
    rng = random.Random(seed)
    n = 200
    needed = set(rng.sample(range(n), 7))
    scores = [rng.random() + (0.3 if i in needed else 0.0) for i in range(n)]  # needed nodes rank high, not first
    circuit, calls = find([scores], lambda keep: all(keep[i] for i in needed))
    assert set(circuit.keep.nonzero().flatten().tolist()) == needed
    ranked = sorted(range(n), key=lambda i: -scores[i])
    assert circuit.nodes_before_pass == max(ranked.index(i) for i in needed) + 1  # the bisection's prefix
    assert sum(calls) < 2 * circuit.nodes_before_pass + 12  # batched guesses waste little


def test_an_unreachable_target_is_unsolved():
    circuit, calls = find([[1.0, 0.5]], lambda keep: bool(keep[0]), target=0.05)
    assert not circuit.solved and circuit.loss == 0.1 and calls == [1]  # the whole model's loss


def test_a_target_the_empty_circuit_reaches_gives_an_empty_circuit():
    circuit, calls = find([[1.0, 0.5]], lambda keep: True)
    assert circuit.solved and not circuit.keep.any() and circuit.nodes_before_pass == 0


def test_the_pass_is_one_at_a_time_removal():
    """With interacting nodes the order matters: lowest ranked first, each tried against the current set."""
    circuit, _ = find([[3.0, 2.0, 1.0, 0.5]], lambda keep: bool((keep[0] or keep[1]) and keep[2]))
    assert circuit.keep.tolist() == [True, False, True, False]  # node 1 (lower ranked) went first


def test_the_pass_runs_on_the_smallest_prefixes_and_the_median_is_over_all():
    needs = lambda keep: bool(keep[0] and keep[1])  # noqa: E731
    good, bad, worse = [5.0, 4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 1.0, 5.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0]
    circuit, _ = find([bad, good, worse], needs)  # prefixes 3, 2 and 5 nodes
    assert circuit.keep.tolist() == [True, True, False, False, False]
    assert circuit.prefix_sizes == [2, 3, 5] and circuit.restart_median == 3.0 and circuit.nodes_before_pass == 2
    circuit, calls_one = find([worse, bad], needs, passes=1)
    assert circuit.nodes_before_pass == 3  # only the smaller prefix (bad's) was passed
    _, calls_both = find([worse, bad], needs, passes=2)
    assert sum(calls_both) > sum(calls_one)


def planted_model() -> GPT:
    """Byte 'a' -> 'x', 'b' -> 'y' through mlp.in[0] -> hidden[0], hidden[1] -> mlp.out[1]; all else noise."""
    torch.manual_seed(0)
    model = GPT(ModelShape(vocab_size=256, d_model=32, n_layer=1, d_head=16, d_mlp=128, n_ctx=16))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 1e-3)
        model.tok_emb.weight[ord("a"), 0] = 1.0
        model.tok_emb.weight[ord("b"), 0] = -1.0
        block = model.blocks[0]
        block.fc_in.weight[0, 0], block.fc_in.weight[1, 0] = 1.0, -1.0
        block.fc_out.weight[1, 0], block.fc_out.weight[1, 1] = 1.0, -1.0
        model.unembed.weight[ord("x"), 1], model.unembed.weight[ord("y"), 1] = 1.0, -1.0
    return model.eval()


def planted_task(n: int, seed: int):
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        filler = "".join(rng.choice("cdefghijklmnop") for _ in range(rng.randint(1, 8)))
        examples += [tasks.Example(filler + "a", "x", "y"), tasks.Example(filler + "b", "y", "x")]
    return tasks.encode(examples)


@pytest.mark.parametrize("method", ["mask", "attribution", "greedy"])
def test_two_tasks_and_a_penalty_ladder_in_one_search(method):
    model = planted_model()  # under zero ablation all four planted nodes are needed (mean: hidden[0]'s mean will do)
    chance = tasks.encode([tasks.Example("cc" + c, "q", "r") for c in "cdefgh" for _ in range(4)])
    cfg = OmegaConf.merge(PRUNE, {"method": method, "target_loss": 0.15, "steps": 100,
                                  "penalty": [0.0003, 0.001, 0.003], "restarts": 2})
    circuits, evaluator = find_circuits(model, [planted_task(32, 0), chance], [planted_task(32, 1), chance],
                                        None, cfg)
    assert circuits[0].solved and set(node_names(evaluator.sites, circuits[0].keep)) == set(PLANTED)
    assert len(circuits[0].prefix_sizes) == (6 if method == "mask" else 1)
    assert circuits[0].restart_median >= 4.0
    assert not circuits[1].solved  # nothing predicts q over r


def test_the_evaluator_batches_candidates_of_several_tasks():
    model = planted_model()
    evaluator = Evaluator(model, [planted_task(8, 1), planted_task(4, 2)], None)
    keep = torch.tensor([name in PLANTED for name in node_names(evaluator.sites, torch.ones(evaluator.n_nodes, dtype=torch.bool))])
    together = evaluator.losses([(0, keep), (1, keep), (0, ~keep), (1, torch.ones_like(keep))])
    alone = [evaluator.losses([c])[0] for c in [(0, keep), (1, keep), (0, ~keep), (1, torch.ones_like(keep))]]
    assert together == pytest.approx(alone, abs=1e-6)
    assert together[0] < 0.15 and together[2] == pytest.approx(0.693, abs=0.01)


def test_edges_of_the_planted_circuit_count_by_hand(tmp_path):
    """fc_in: in[0]->hidden[0], in[0]->hidden[1]; fc_out: hidden[0]->out[1], hidden[1]->out[1];
    embedding: every input byte into channel 0 (read by mlp.in[0]); unembedding: channel 1 (written
    by mlp.out[1]) to 'x' and 'y'. Noise makes every weight nonzero, so: 4 + |input bytes| + 2."""
    model = planted_model()
    inputs = {ord(c) for c in "abcdefghijklmnop"}
    edges = circuit_edges(model, PLANTED, inputs, {ord("x"), ord("y")})
    assert len(edges) == 4 + len(inputs) + 2
    inner = {(s, d) for s, d, _ in edges if s.startswith("layer")}
    assert inner == {("layer.0.mlp.in[0]", "layer.0.mlp.hidden[0]"), ("layer.0.mlp.in[0]", "layer.0.mlp.hidden[1]"),
                     ("layer.0.mlp.hidden[0]", "layer.0.mlp.out[1]"), ("layer.0.mlp.hidden[1]", "layer.0.mlp.out[1]")}
    weights = {(s, d): w for s, d, w in edges}
    assert weights[("layer.0.mlp.hidden[1]", "layer.0.mlp.out[1]")] == -1.0
    assert ("resid.out[1]", f"unembed[{ord('y')}]") in weights and ("embed[97]", "resid.in[0]") in weights
    with torch.no_grad():  # a zero weight is no edge
        model.blocks[0].fc_in.weight[1, 0] = 0.0
    assert len(circuit_edges(model, PLANTED, inputs, {ord("x"), ord("y")})) == 3 + len(inputs) + 2

    values = {"loss": 0.1, "full_loss": 0.1, "empty_loss": 0.7, "cue_distance": 0.0, "nodes": len(PLANTED),
              "edges": len(edges), "solved": 1.0, "necessity_loss": 0.7, "beats_model": 0.0, "nodes_before_pass": 4,
              "nodes_restart_median": 4}
    draw(tmp_path / "planted.png", circuit_record("planted", values, None, 0.3, "zero", "mask", PLANTED, edges))
    assert (tmp_path / "planted.png").stat().st_size > 1000 and (tmp_path / "planted.svg").stat().st_size > 1000


def test_cue_distance_aligns_the_prompts_at_their_ends():
    for name, expected in (("else_elif", 0.0), ("lambda_func", 1.0), ("final_kwarg", 0.0), ("for_while", 3.0)):
        assert tasks.cue_distance(tasks.generate(name, 8, 8, 0, 64, False)) == expected, name
    assert tasks._first_difference_from_end(list(b"x = 'abc"), list(b'x = "abc')) == 3
    assert tasks._first_difference_from_end(list(b"while True"), list(b"return True")) == 5
    assert tasks._first_difference_from_end(list(b"[1]"), list(b"[[1]")) == 3  # one prompt ends the other


def test_keep_of_is_the_inverse_of_node_names():
    model = planted_model()
    sites = node_sites(model)
    keep = keep_of(sites, PLANTED)
    assert int(keep.sum()) == 4 and node_names(sites, keep) == PLANTED
    with pytest.raises(KeyError, match="layer.9.mlp.in"):
        keep_of(sites, [*PLANTED, "layer.9.mlp.in[0]"])
