"""Circuits planted by hand in our own GPT class, with strong distractors: the known answers that
circuit discovery is checked against (tests/test_planted.py). `python -m tests.planted` prints the
nodes each discovery method finds against the nodes planted.

Every construction is a 2-layer, d_model 32 model whose task is decided by one planted path. The
two answer tokens differ only on residual channel OUT, which one planted node writes. Every other
node is a distractor: large random weights that read every channel (the task's signal included) and
write only distractor channels. Distractors cannot move the contrast, but they move the RMS norms
that scale it, so their mask gradients are not zero. `necessary[ablation]` lists the planted nodes;
tests/test_planted.py checks that each one alone breaks the task when ablated and that they alone
solve it, so it is the unique smallest circuit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch

from sweep.circuits import tasks
from sweep.science.model import GPT, ModelShape

D_MODEL, N_LAYER, D_HEAD, D_MLP, N_CTX = 32, 2, 16, 128, 16
BIAS, POS, CUE, MID, MARK, OUT = 0, 1, 2, 3, 4, 5  # signal channels of the residual stream
DISTRACTOR = list(range(6, D_MODEL))  # every other residual channel
H_POS, H_NEG = 0, 1  # the planted MLP neurons: gelu(+s) and gelu(-s), written out as their difference
FILLER = "cdefghijklmnop"
CUES = {"a": "x", "b": "y"}  # cue byte -> answer byte
TARGET = 0.15  # the task loss a circuit must reach
INPUTS = {ord(c) for c in FILLER + "ab=:"}  # every byte a prompt can hold
N_CUE_BYTES = len(FILLER) + 2  # bytes with a CUE embedding: the filler (noise) and the cues a, b


@dataclass
class Planted:
    name: str
    model: GPT
    prompt: Callable[[random.Random, str], str]  # (rng, cue) -> prompt string
    necessary: dict[str, list[str]]  # ablation -> the planted nodes (the unique smallest circuit)
    hand_edges: dict[str, int] = field(default_factory=dict)  # ablation -> edges of that circuit, counted by hand

    def batch(self, n_pairs: int, seed: int):
        rng = random.Random(f"{self.name}:{seed}")
        examples = []
        for _ in range(n_pairs):
            state = rng.getstate()
            for cue, other in (("a", "b"), ("b", "a")):
                rng.setstate(state)  # both prompts of a pair share everything but the cue
                examples.append(tasks.Example(self.prompt(rng, cue), CUES[cue], CUES[other]))
        return tasks.encode(examples)

    def text(self, n: int = 128, seed: int = 7) -> torch.Tensor:
        """'Pretraining text' for the node means: random windows over bytes that carry no cue (in
        real text the cue bytes are rare), so the planted nodes' means are near zero."""
        alphabet = [ord(c) for c in "qrstuvwxyz=:(), "]
        g = torch.Generator().manual_seed(seed)
        return torch.tensor(alphabet)[torch.randint(0, len(alphabet), (n, N_CTX), generator=g)]

    def inputs(self) -> set[int]:
        """Bytes the task's prompts can contain (the embedding edges count from these)."""
        return INPUTS

    def outputs(self) -> set[int]:
        return {ord(c) for c in CUES.values()}


def _filler(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(FILLER) for _ in range(rng.randint(low, high)))


def _blank_model(seed: int, strength: float) -> GPT:
    """Every weight a strong distractor: random, reading everything, writing distractor channels only."""
    torch.manual_seed(seed)
    model = GPT(ModelShape(vocab_size=256, d_model=D_MODEL, n_layer=N_LAYER, d_head=D_HEAD, d_mlp=D_MLP, n_ctx=N_CTX))
    with torch.no_grad():
        for module in model.modules():  # linear maps: output std about `strength` x input std
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, strength / module.in_features ** 0.5)
        model.tok_emb.weight.normal_(0, strength)
        model.pos_emb.weight.normal_(0, strength / 2)
        signal = [BIAS, POS, CUE, MID, MARK, OUT]
        model.tok_emb.weight[:, signal] = 0
        model.tok_emb.weight[:, BIAS] = 1.0
        # Filler bytes carry CUE noise of their own: an average over positions (an attention pattern
        # that lost its key or query) is then dominated by the filler, which both prompts share.
        filler = [ord(c) for c in FILLER]
        model.tok_emb.weight[filler, CUE] = 2 * torch.randn(len(filler)).sign()
        model.tok_emb.weight[ord("a"), CUE], model.tok_emb.weight[ord("b"), CUE] = 1.0, -1.0
        model.tok_emb.weight[ord(":"), MARK] = 1.0
        model.pos_emb.weight[:, signal] = 0
        model.pos_emb.weight[0, POS] = 3.0
        for block in model.blocks:
            block.o.weight[signal] = 0  # distractors write distractor channels only
            block.fc_out.weight[signal] = 0
            block.q.weight[:D_HEAD] = 0  # head 0 is the planted head: no distractor moves its pattern
            block.k.weight[:D_HEAD] = 0
            block.v.weight[0] = 0
            block.fc_in.weight[[H_POS, H_NEG]] = 0
            block.fc_out.weight[:, [H_POS, H_NEG]] = 0
        # The two answers share their distractor-channel weights: only OUT separates them.
        model.unembed.weight[ord("y")] = model.unembed.weight[ord("x")]
        model.unembed.weight[ord("x"), signal], model.unembed.weight[ord("y"), signal] = 0, 0
        model.unembed.weight[ord("x"), OUT], model.unembed.weight[ord("y"), OUT] = 8.0, -8.0
    return model


def _mlp_relay(block, read: int, write: int, gain: float = 4.0) -> None:
    """Neurons H_POS, H_NEG read channel `read`; their difference (the signal itself) goes to `write`."""
    block.fc_in.weight[H_POS, read], block.fc_in.weight[H_NEG, read] = gain, -gain
    block.fc_out.weight[write, H_POS], block.fc_out.weight[write, H_NEG] = 1.0, -1.0


def _head(block, query: int, key: int, value: int, write: int, qk: float = 7.0, vo: float = 3.0) -> None:
    """Head 0, channel 0: query from channel `query`, key from `key`, value from `value`, output to `write`."""
    block.q.weight[0, query], block.k.weight[0, key] = qk, qk
    block.v.weight[0, value], block.o.weight[write, 0] = vo, vo


def mlp_lookup(seed: int = 0, strength: float = 2.0) -> Planted:
    """(a) The last byte decides: layer-0 MLP neurons read CUE and write OUT."""
    model = _blank_model(seed, strength)
    with torch.no_grad():
        _mlp_relay(model.blocks[0], CUE, OUT)
    nodes = ["layer.0.mlp.in[2]", "layer.0.mlp.hidden[0]", "layer.0.mlp.hidden[1]", "layer.0.mlp.out[5]"]
    # fc_in 2 + fc_out 2; embedding: the CUE bytes (filler, a, b) into CUE; unembedding: OUT to x and y
    edges = 4 + N_CUE_BYTES + 2
    return Planted("mlp_lookup", model.eval(), lambda rng, cue: _filler(rng, 2, 10) + cue,
                   {"zero": nodes, "mean": nodes}, {"zero": edges, "mean": edges})


def attention_then_mlp(seed: int = 0, strength: float = 2.0) -> Planted:
    """(b) The cue sits at position 0: a layer-0 head moves it from there to the last position (MID),
    layer-1 MLP neurons read MID and write OUT. Mean ablation can leave the constant query to its mean."""
    model = _blank_model(seed, strength)
    with torch.no_grad():
        _head(model.blocks[0], query=BIAS, key=POS, value=CUE, write=MID)
        _mlp_relay(model.blocks[1], MID, OUT)
    core = ["layer.0.attn.in[1]", "layer.0.attn.k[0]", "layer.0.attn.in[2]", "layer.0.attn.v[0]",
            "layer.0.attn.out[3]", "layer.1.mlp.in[3]", "layer.1.mlp.hidden[0]", "layer.1.mlp.hidden[1]",
            "layer.1.mlp.out[5]"]
    query = ["layer.0.attn.in[0]", "layer.0.attn.q[0]"]
    # in-block: q, k, v, o = 4 (3 without the query), fc_in 2, fc_out 2; embedding: the CUE bytes into CUE,
    # and every input byte into BIAS when attn.in[0] is kept; unembedding: OUT to x and y
    return Planted("attention_then_mlp", model.eval(), lambda rng, cue: cue + _filler(rng, 3, 12) + "=",
                   {"zero": query + core, "mean": core},
                   {"zero": 8 + N_CUE_BYTES + len(INPUTS) + 2, "mean": 7 + N_CUE_BYTES + 2})


def two_hop_attention(seed: int = 0, strength: float = 2.0) -> Planted:
    """(c) Two heads in a chain: at the ':' marker, a layer-0 head fetches the cue from position 0
    into MID; at the last position, a layer-1 head finds the marker (key MARK) and moves MID to OUT."""
    model = _blank_model(seed, strength)
    with torch.no_grad():
        _head(model.blocks[0], query=MARK, key=POS, value=CUE, write=MID)
        _head(model.blocks[1], query=BIAS, key=MARK, value=MID, write=OUT, qk=20.0)
    hop0 = ["layer.0.attn.in[4]", "layer.0.attn.q[0]", "layer.0.attn.in[1]", "layer.0.attn.k[0]",
            "layer.0.attn.in[2]", "layer.0.attn.v[0]", "layer.0.attn.out[3]"]
    hop1 = ["layer.1.attn.in[4]", "layer.1.attn.k[0]", "layer.1.attn.in[3]", "layer.1.attn.v[0]", "layer.1.attn.out[5]"]
    query = ["layer.1.attn.in[0]", "layer.1.attn.q[0]"]
    # in-block: 4 per head (3 without the layer-1 query); embedding: ':' into MARK, the CUE bytes into CUE,
    # and every input byte into BIAS when layer.1.attn.in[0] is kept; unembedding: OUT to x and y
    return Planted("two_hop_attention", model.eval(),
                   lambda rng, cue: cue + _filler(rng, 1, 5) + ":" + _filler(rng, 1, 5) + "=",
                   {"zero": hop0 + query + hop1, "mean": hop0 + hop1},
                   {"zero": 8 + 1 + N_CUE_BYTES + len(INPUTS) + 2, "mean": 7 + 1 + N_CUE_BYTES + 2})


CONSTRUCTIONS = {"mlp_lookup": mlp_lookup, "attention_then_mlp": attention_then_mlp,
                 "two_hop_attention": two_hop_attention}


def report(seeds=(0, 1, 2)) -> str:
    """Markdown: per construction, ablation and method, nodes found (before the pass) against planted."""
    from omegaconf import OmegaConf

    from sweep.circuits.circuit import circuit_edges
    from sweep.circuits.discovery import find_circuits
    from sweep.circuits.prune import node_means, node_names
    from sweep.paths import PROJECT_ROOT

    base = OmegaConf.load(PROJECT_ROOT / "conf" / "prune" / "mean.yaml")
    methods = {"mask": {"method": "mask"}, "mask, straight-through gate": {"method": "mask", "gate": "straight_through"},
               "attribution": {"method": "attribution"}}
    lines = ["| construction | ablation | planted nodes (edges) | method | nodes found (before the pass), seeds "
             + ", ".join(map(str, seeds)) + " | edges found |", "|---|---|---|---|---|---|"]
    for name, make in CONSTRUCTIONS.items():
        for ablation in ("mean", "zero"):
            for label, settings in methods.items():
                found, edges = [], []
                for seed in seeds:
                    planted = make(seed)
                    means = node_means(planted.model, planted.text(), 64) if ablation == "mean" else None
                    cfg = OmegaConf.merge(base, settings, {"target_loss": TARGET})
                    (circuit,), evaluator = find_circuits(planted.model, [planted.batch(16, 0)], [planted.batch(32, 1)], means, cfg)
                    nodes = node_names(evaluator.sites, circuit.keep) if circuit.solved else []
                    missing = set(planted.necessary[ablation]) - set(nodes)
                    found.append(f"{len(nodes)} ({circuit.nodes_before_pass:.0f})" + (f" missing {len(missing)}" if missing else ""))
                    edges.append(str(len(circuit_edges(planted.model, nodes, planted.inputs(), planted.outputs()))))
                necessary = planted.necessary[ablation]
                lines.append(f"| {name} | {ablation} | {len(necessary)} ({planted.hand_edges[ablation]}) | {label} | "
                             f"{', '.join(found)} | {', '.join(edges)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
