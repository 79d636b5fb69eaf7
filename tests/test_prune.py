"""Pruning: bisection, ablation values, and a circuit planted by hand in a tiny model."""

import random

import pytest
import torch

from sweep import tasks
from sweep.circuit import circuit_edges, draw
from sweep.model import GPT, ModelShape
from sweep.prune import NodeMasks, node_means, node_sites, prune, smallest_k

PLANTED = ["layer.0.mlp.in[0]", "layer.0.mlp.hidden[0]", "layer.0.mlp.hidden[1]", "layer.0.mlp.out[1]"]


@pytest.mark.parametrize("threshold", [0, 1, 17, 63, 64])
def test_bisection_returns_the_smallest_k_on_a_monotone_loss(threshold):
    calls = []

    def loss_at(k):
        calls.append(k)
        return 0.1 if k >= threshold else 0.9

    assert smallest_k(loss_at, 0.15, 64) == threshold
    assert len(calls) <= 8  # log2(64) + the check of all 64


def test_bisection_reports_an_unreachable_target():
    assert smallest_k(lambda k: 0.5, 0.15, 64) is None


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


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_pruning_finds_the_planted_circuit(ablation):
    model = planted_model()
    text = torch.randint(0, 256, (64, 16), generator=torch.Generator().manual_seed(1))
    means = node_means(model, text, 16) if ablation == "mean" else None
    (circuit,) = prune(model, [planted_task(32, 0)], [planted_task(32, 1)], means,
                       target_loss=0.15, steps=200, penalty=0.01, lr=0.1)
    assert circuit.solved and circuit.loss <= 0.15
    assert len(circuit.nodes) <= len(PLANTED)
    assert set(circuit.nodes) == set(PLANTED)


def test_ablation_substitutes_the_mean_or_zero():
    model = planted_model()
    sites = node_sites(model)
    means = {s: torch.full((w,), 0.5) for s, w in sites.items()}
    seen = {}

    def capture(layer, location, x):
        seen[(layer, location)] = x
        return x

    for ablation_means, expected in ((means, 0.5), (None, 0.0)):
        masks = NodeMasks(sites, n_rows=1, means=ablation_means, init=-1.0)  # every node masked
        masks.rows = torch.zeros(2, dtype=torch.long)
        model.node_hooks[:] = [masks, capture]
        with torch.no_grad():
            model(torch.randint(0, 256, (2, 5)))
        model.node_hooks.clear()
        assert all(torch.all(x == expected) for x in seen.values())


def test_two_tasks_share_one_optimisation_with_their_own_rows():
    model = planted_model()
    text = torch.randint(0, 256, (64, 16), generator=torch.Generator().manual_seed(1))
    chance = tasks.encode([tasks.Example("cc" + c, "q", "r") for c in "cdefgh" for _ in range(4)])
    circuits = prune(model, [planted_task(32, 0), chance], [planted_task(32, 1), chance],
                     node_means(model, text, 16), target_loss=0.15, steps=200, penalty=0.01, lr=0.1)
    assert circuits[0].solved and set(circuits[0].nodes) == set(PLANTED)
    assert not circuits[1].solved and circuits[1].nodes == []  # nothing predicts q over r


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

    draw(tmp_path / "planted.png", "planted", PLANTED, edges, n_layer=1)
    assert (tmp_path / "planted.png").stat().st_size > 1000
