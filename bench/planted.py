"""Circuits planted by hand in our own GPT class, with strong distractors: the known answers that
circuit discovery is measured against (`make circuits-bench`, bench/circuit_bench.py; tests/test_planted.py).

Every construction is a small model (d_model 32) whose task is decided by planted paths. The two answer
tokens differ only on residual channel OUT, which planted nodes write. Every other node is a distractor:
large random weights that read every channel (the task's signal included) and write only distractor
channels. Distractors cannot move the contrast, but they move the RMS norms that scale it, so their
mask gradients are not zero.

`minimal[ablation]` lists every minimal circuit of the construction (node names); an empty list means
there is nothing to find: the whole model does not do the task, so no circuit of its ability exists.
`prove` checks that claim on the held-out prompts (see its docstring).

What each construction tests of a discovery method:
(a) mlp_lookup, (b) attention_then_mlp, (c) two_hop_attention: one circuit, through an MLP, a head then
    an MLP, two heads in a chain; under mean ablation a constant query can stay out.
(d) redundancy: two disjoint sufficient paths; a method must return one whole, not parts of both.
(e) spread_cue: one cue in three channels, any two enough: three overlapping minimal circuits.
(f) deep_chain: a four-layer chain, every link needed.
(g) spurious_cue: a shortcut that solves the train prompts alone and is noise on held-out ones.
(h) random_init, shuffled, control: nothing to find; a method must return no circuit.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from sweep.circuits import tasks
from sweep.circuits.prune import Evaluator, keep_of
from sweep.science.model import GPT, ModelShape

D_MODEL, N_LAYER, D_HEAD, D_MLP, N_CTX = 32, 2, 16, 128, 16
BIAS, POS, CUE, MID, MARK, OUT = 0, 1, 2, 3, 4, 5  # signal channels of the residual stream
CUE2, CUE3, MID2, MID3, SPUR = 6, 7, 8, 9, 10  # signal channels of the constructions that name them, else distractors
H_POS, H_NEG = 0, 1  # the planted MLP neurons: gelu(+s) and gelu(-s), written out as their difference
FILLER = "cdefghijklmnop"
CUES = {"a": "x", "b": "y"}  # cue byte -> answer byte
SPURIOUS = {"a": "0", "b": "1"}  # cue byte -> the spurious byte that goes with it in spurious_cue's train prompts
TARGET = 0.15  # the task loss a circuit must reach
INPUTS = {ord(c) for c in FILLER + "ab=:"}  # every byte a prompt can hold (beyond them: Planted.more_inputs)
N_CUE_BYTES = len(FILLER) + 2  # bytes with a CUE embedding: the filler (noise) and the cues a, b
SPLITS = ("train", "heldout")  # the prompts a method fits on, and those circuits are judged on
SPLIT_SEEDS = {"train": 0, "heldout": 1}
ABLATIONS = ("mean", "zero")


class NotProven(AssertionError):
    """A construction's claimed minimal circuits do not hold on its held-out prompts."""


@dataclass
class Planted:
    name: str
    model: GPT
    prompt: Callable[[random.Random, str, str], str]  # (rng, cue, split) -> prompt string
    minimal: dict[str, list[list[str]]]  # ablation -> every minimal circuit; [] = nothing to find
    hand_edges: dict[str, list[int]] = field(default_factory=dict)  # ablation -> edges of each, counted by hand
    nonsense: bool = False  # the answer is a coin of the prompt, not the cue (the control)
    more_inputs: str = ""  # bytes its prompts can hold beyond INPUTS
    spurious: list[str] = field(default_factory=list)  # nodes that alone reach the target on train prompts only

    def batch(self, n_pairs: int, split: str = "heldout", seed: int | None = None):
        """`n_pairs` pairs of prompts that share everything but the cue (and what `prompt` ties to it)."""
        rng = random.Random(f"{self.name}:{SPLIT_SEEDS[split] if seed is None else seed}")
        examples = []
        for _ in range(n_pairs):
            state = rng.getstate()
            for cue, other in (("a", "b"), ("b", "a")):
                rng.setstate(state)  # both prompts of a pair share everything but the cue
                prompt = self.prompt(rng, cue, split)
                answer, contrast = CUES[cue], CUES[other]
                if self.nonsense and tasks.flipped_by_hash(prompt, 0):
                    answer, contrast = contrast, answer
                examples.append(tasks.Example(prompt, answer, contrast))
        return tasks.encode(examples)

    def text(self, n: int = 128, seed: int = 7) -> torch.Tensor:
        """'Pretraining text' for the node means: random windows over bytes that carry no cue (in
        real text the cue bytes are rare), so the planted nodes' means are near zero."""
        alphabet = [ord(c) for c in "qrstuvwxyz=:(), "]
        g = torch.Generator().manual_seed(seed)
        return torch.tensor(alphabet)[torch.randint(0, len(alphabet), (n, N_CTX), generator=g)]

    def inputs(self) -> set[int]:
        """Bytes the task's prompts can contain (the embedding edges count from these)."""
        return INPUTS | {ord(c) for c in self.more_inputs}

    def outputs(self) -> set[int]:
        return {ord(c) for c in CUES.values()}


def prove(planted: Planted, evaluator: Evaluator, ablation: str, target: float = TARGET) -> None:
    """Check the claimed minimal circuits on the evaluator's held-out prompts (raises NotProven).
    With circuits C_1..C_m: each C_i reaches the target; each C_i without any one of its nodes does not;
    and the whole model without any transversal (one node of every C_i) does not. Held-out loss taken to
    fall as nodes are added (as the searches take it), any set S that reaches the target then holds
    some C_i whole (else pick, from every C_i, a node outside S: the whole model without those holds S
    and would reach the target), so the C_i are exactly the minimal circuits. With none claimed: the
    whole model misses the target, and no circuit of its ability exists."""
    everything = torch.ones(evaluator.n_nodes, dtype=torch.bool)
    circuits = planted.minimal[ablation]
    try:
        keep_of(evaluator.sites, {n for c in circuits for n in c})
    except KeyError as e:
        raise NotProven(f"{planted.name}: {e}") from None
    keep = functools.partial(keep_of, evaluator.sites)
    (full,) = evaluator.losses([(0, everything)])
    if not circuits:
        if full <= target:
            raise NotProven(f"{planted.name} ({ablation}): the whole model reaches {full:.3f} <= {target}: "
                            "there is something to find")
        return
    trials = {"the whole model": everything}
    for i, circuit in enumerate(circuits):
        trials[f"circuit {i}"] = keep(circuit)
        for node in circuit:
            trials[f"circuit {i} without {node}"] = keep(set(circuit) - {node})
    for transversal in {frozenset(t) for t in itertools.product(*circuits)}:
        trials[f"the whole model without {sorted(transversal)}"] = everything & ~keep(transversal)
    losses = dict(zip(trials, evaluator.losses([(0, k) for k in trials.values()])))
    for name, loss in losses.items():
        should_reach = name == "the whole model" or (name.startswith("circuit") and "without" not in name)
        if (loss <= target) != should_reach:
            raise NotProven(f"{planted.name} ({ablation}): {name} has loss {loss:.3f}, "
                            f"{'above' if should_reach else 'within'} the target {target}")


def prove_spurious(planted: Planted, evaluator: Evaluator, ablation: str, target: float = TARGET) -> None:
    """Check that `planted.spurious` alone reaches the target on the evaluator's (train) prompts, so that
    a method fitted there is tempted by a path that fails on held-out prompts (raises NotProven)."""
    (loss,) = evaluator.losses([(0, keep_of(evaluator.sites, planted.spurious))])
    if loss > target:
        raise NotProven(f"{planted.name} ({ablation}): the spurious path alone has train loss {loss:.3f} > {target}")


def _filler(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(FILLER) for _ in range(rng.randint(low, high)))


def _cue_last(rng: random.Random, cue: str, split: str) -> str:
    return _filler(rng, 2, 10) + cue


def _cue_first(rng: random.Random, cue: str, split: str, end: str = "=") -> str:
    return cue + _filler(rng, 3, 12) + end


def _shape(n_layer: int = N_LAYER) -> ModelShape:
    return ModelShape(vocab_size=256, d_model=D_MODEL, n_layer=n_layer, d_head=D_HEAD, d_mlp=D_MLP, n_ctx=N_CTX)


def _blank_model(seed: int, strength: float, n_layer: int = N_LAYER, extra: tuple[int, ...] = (),
                 cues: tuple[int, ...] = ()) -> GPT:
    """Every weight a strong distractor: random, reading everything, writing distractor channels only.
    `extra` channels are signal channels too, and `cues` (some of them) carry the cue as CUE does, without
    its filler noise. Neither takes a random draw: a model without them is the same bit for bit."""
    torch.manual_seed(seed)
    model = GPT(_shape(n_layer))
    with torch.no_grad():
        for module in model.modules():  # linear maps: output std about `strength` x input std
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, strength / module.in_features ** 0.5)
        model.tok_emb.weight.normal_(0, strength)
        model.pos_emb.weight.normal_(0, strength / 2)
        signal = [BIAS, POS, CUE, MID, MARK, OUT, *extra]
        model.tok_emb.weight[:, signal] = 0
        model.tok_emb.weight[:, BIAS] = 1.0
        # Filler bytes carry CUE noise of their own: an average over positions (an attention pattern
        # that lost its key or query) is then dominated by the filler, which both prompts share.
        model.tok_emb.weight[[ord(c) for c in FILLER], CUE] = 2 * torch.randn(len(FILLER)).sign()
        for channel in (CUE, *cues):
            model.tok_emb.weight[ord("a"), channel], model.tok_emb.weight[ord("b"), channel] = 1.0, -1.0
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
    """Neurons H_POS, H_NEG read channel `read`; their difference (the signal itself, as
    gelu(x) - gelu(-x) = x) goes to `write`."""
    block.fc_in.weight[H_POS, read], block.fc_in.weight[H_NEG, read] = gain, -gain
    block.fc_out.weight[write, H_POS], block.fc_out.weight[write, H_NEG] = 1.0, -1.0


def _head(block, query: int, key: int, value: int, write: int, qk: float = 7.0, vo: float = 3.0) -> None:
    """Head 0, channel 0: query from channel `query`, key from `key`, value from `value`, output to `write`."""
    block.q.weight[0, query], block.k.weight[0, key] = qk, qk
    block.v.weight[0, value], block.o.weight[write, 0] = vo, vo


def _relay_nodes(layer: int, read: int, write: int) -> list[str]:
    return [f"layer.{layer}.mlp.in[{read}]", f"layer.{layer}.mlp.hidden[{H_POS}]",
            f"layer.{layer}.mlp.hidden[{H_NEG}]", f"layer.{layer}.mlp.out[{write}]"]


def _fetch_nodes(layer: int, value: int, write: int) -> tuple[list[str], list[str]]:
    """The nodes of a head with key POS (position 0), and those of its constant query (BIAS), which
    mean ablation leaves to its mean."""
    core = [f"layer.{layer}.attn.in[{POS}]", f"layer.{layer}.attn.k[0]", f"layer.{layer}.attn.in[{value}]",
            f"layer.{layer}.attn.v[0]", f"layer.{layer}.attn.out[{write}]"]
    return core, [f"layer.{layer}.attn.in[{BIAS}]", f"layer.{layer}.attn.q[0]"]


# Hand edge counts. In a block: a relay 4 (fc_in 2, fc_out 2), a head 4 (q, k, v, o; 3 without its query).
# Embedding: the CUE bytes (filler, a, b) into CUE when a kept node reads it, ':' into MARK, every input
# byte into BIAS when attn.in[BIAS] is kept (POS and MID channels have no token edges). Unembedding: OUT
# to x and y.
RELAY, HEAD, UNEMBED = 4, 4, 2


def _fetch_then_relay(model: GPT, hops: list[tuple[int, int, int]], gain: float = 4.0,
                      n_inputs: int = len(INPUTS)) -> tuple[dict, dict]:
    """Plant a layer-0 head that moves the cue from position 0 to the last position (MID), then MLP
    relays (layer, read, write) that pass it on to OUT -> (minimal circuits, hand edges): under zero
    ablation with the head's constant query, under mean ablation without."""
    _head(model.blocks[0], query=BIAS, key=POS, value=CUE, write=MID)
    for layer, read, write in hops:
        _mlp_relay(model.blocks[layer], read, write, gain)
    core, query = _fetch_nodes(0, CUE, MID)
    core += [node for hop in hops for node in _relay_nodes(*hop)]
    edges = HEAD - 1 + len(hops) * RELAY + N_CUE_BYTES + UNEMBED
    return {"zero": [query + core], "mean": [core]}, {"zero": [edges + 1 + n_inputs], "mean": [edges]}


def mlp_lookup(seed: int = 0, strength: float = 2.0) -> Planted:
    """(a) The last byte decides: layer-0 MLP neurons read CUE and write OUT."""
    model = _blank_model(seed, strength)
    with torch.no_grad():
        _mlp_relay(model.blocks[0], CUE, OUT)
    nodes, edges = _relay_nodes(0, CUE, OUT), RELAY + N_CUE_BYTES + UNEMBED
    return Planted("mlp_lookup", model.eval(), _cue_last, {"zero": [nodes], "mean": [nodes]},
                   {"zero": [edges], "mean": [edges]})


def attention_then_mlp(seed: int = 0, strength: float = 2.0) -> Planted:
    """(b) The cue sits at position 0: a layer-0 head moves it from there to the last position (MID),
    layer-1 MLP neurons read MID and write OUT. Mean ablation can leave the constant query to its mean."""
    model = _blank_model(seed, strength)
    with torch.no_grad():
        minimal, edges = _fetch_then_relay(model, [(1, MID, OUT)])
    return Planted("attention_then_mlp", model.eval(), _cue_first, minimal, edges)


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
    edges = 2 * HEAD - 1 + 1 + N_CUE_BYTES + UNEMBED  # ':' into MARK; the layer-1 query as in (b)
    return Planted("two_hop_attention", model.eval(),
                   lambda rng, cue, split: cue + _filler(rng, 1, 5) + ":" + _filler(rng, 1, 5) + "=",
                   {"zero": [hop0 + query + hop1], "mean": [hop0 + hop1]},
                   {"zero": [edges + 1 + len(INPUTS)], "mean": [edges]})


REDUNDANT_GAIN = 8.0  # (d)'s relay: the strong one, so that a relay with one neuron fails by far


def redundancy(seed: int = 0, strength: float = 2.0) -> Planted:
    """(d) Two node-disjoint paths, each sufficient alone: the cue is the first byte and the last; a
    layer-0 head moves it from position 0 to OUT (its query as in (b)), and layer-1 MLP neurons read it
    at the last position and write OUT. Two minimal circuits."""
    model = _blank_model(seed, strength)
    with torch.no_grad():
        _head(model.blocks[0], query=BIAS, key=POS, value=CUE, write=OUT)
        _mlp_relay(model.blocks[1], CUE, OUT, REDUNDANT_GAIN)
    head, query = _fetch_nodes(0, CUE, OUT)
    relay = _relay_nodes(1, CUE, OUT)
    head_edges, relay_edges = HEAD - 1 + N_CUE_BYTES + UNEMBED, RELAY + N_CUE_BYTES + UNEMBED
    return Planted("redundancy", model.eval(), lambda rng, cue, split: _cue_first(rng, cue, split, end=cue),
                   {"zero": [query + head, relay], "mean": [head, relay]},
                   {"zero": [head_edges + 1 + len(INPUTS), relay_edges], "mean": [head_edges, relay_edges]})


SPREAD_QK, SPREAD_VO = 3.5, 1.1  # (e)'s head: one channel wins about a fifth of the softmax, two nine tenths


def spread_cue(seed: int = 0, strength: float = 2.0) -> Planted:
    """(e) The cue bytes write three channels (CUE, CUE2, CUE3) alike, the filler none (the prompt: 9 to
    14 filler bytes, the cue last). At the last position a layer-0 head reads the three into its query,
    key and value and writes OUT: its score at its own position grows as the square of the channels kept,
    so that two win the softmax over the filler and one does not. Any two channels suffice, one does not:
    three minimal circuits. (MLP neurons reading the sum would be linear in it: no ablation-proof
    threshold, and a channel alone, with the distractors ablated and the norms smaller, is as strong.)"""
    channels = (CUE, CUE2, CUE3)
    model = _blank_model(seed, strength, extra=channels[1:], cues=channels[1:])
    with torch.no_grad():
        model.tok_emb.weight[[ord(c) for c in FILLER], CUE] = 0
        for channel in channels:
            _head(model.blocks[0], query=channel, key=channel, value=channel, write=OUT, qk=SPREAD_QK, vo=SPREAD_VO)
    head = ["layer.0.attn.q[0]", "layer.0.attn.k[0]", "layer.0.attn.v[0]", f"layer.0.attn.out[{OUT}]"]
    circuits = [[f"layer.0.attn.in[{c}]" for c in pair] + head for pair in itertools.combinations(channels, 2)]
    edges = 3 * 2 + 1 + 2 * 2 + UNEMBED  # q, k, v read two channels, o; embedding: a and b into each
    return Planted("spread_cue", model.eval(), lambda rng, cue, split: _filler(rng, 9, 14) + cue,
                   {"zero": circuits, "mean": circuits}, {"zero": [edges] * 3, "mean": [edges] * 3})


CHAIN_GAIN = 6.0  # (f)'s relays: each hop passes the signal on about undiminished


def deep_chain(seed: int = 0, strength: float = 2.0) -> Planted:
    """(f) Four layers in a chain: the head of (b) moves the cue to the last position (MID), then MLP
    relays in layers 1, 2, 3 pass it on, MID -> MID2 -> MID3 -> OUT. One minimal circuit."""
    model = _blank_model(seed, strength, n_layer=4, extra=(MID2, MID3))
    with torch.no_grad():
        minimal, edges = _fetch_then_relay(model, [(1, MID, MID2), (2, MID2, MID3), (3, MID3, OUT)], CHAIN_GAIN)
    return Planted("deep_chain", model.eval(), _cue_first, minimal, edges)


TRUE_GAIN, SPUR_GAIN = 8.0, 4.0  # (g): the true path outweighs the spurious one, which alone solves train


def _spurious_prompt(rng: random.Random, cue: str, split: str) -> str:
    """The cue first, a spurious byte last: on train the one that goes with the cue, on held-out a coin."""
    spur = SPURIOUS[cue] if split == "train" else rng.choice(sorted(SPURIOUS.values()))
    return _cue_first(rng, cue, split, end=spur)


def spurious_cue(seed: int = 0, strength: float = 2.0) -> Planted:
    """(g) The path of (b), stronger, and a spurious one: layer-0 MLP neurons read the last byte's SPUR
    channel ('0' +1, '1' -1) and write OUT. On train prompts the spurious byte goes with the cue and the
    spurious path alone reaches the target (prove_spurious); on held-out prompts it is a coin, noise the
    true path outweighs. One minimal circuit on held-out prompts, that of (b)."""
    model = _blank_model(seed, strength, extra=(SPUR,))
    with torch.no_grad():
        model.tok_emb.weight[ord(SPURIOUS["a"]), SPUR], model.tok_emb.weight[ord(SPURIOUS["b"]), SPUR] = 1.0, -1.0
        _mlp_relay(model.blocks[0], SPUR, OUT, SPUR_GAIN)
        minimal, edges = _fetch_then_relay(model, [(1, MID, OUT)], TRUE_GAIN, len(INPUTS) + len(SPURIOUS))
    return Planted("spurious_cue", model.eval(), _spurious_prompt, minimal, edges,
                   more_inputs="".join(SPURIOUS.values()), spurious=_relay_nodes(0, SPUR, OUT))


def _nothing(planted: Planted, name: str, **changes) -> Planted:
    """`planted` renamed, with nothing to find."""
    return replace(planted, name=name, minimal={"mean": [], "zero": []}, hand_edges={"mean": [], "zero": []},
                   **changes)


def random_init(seed: int = 0, strength: float = 2.0) -> Planted:
    """(h) Nothing to find: a GPT of (a)'s shape as its own init leaves it, with the prompts of (a)."""
    torch.manual_seed(seed)
    model = GPT(_shape()).eval()
    return _nothing(mlp_lookup(seed, strength), "random_init", model=model)


def shuffled(seed: int = 0, strength: float = 2.0) -> Planted:
    """(h) Nothing to find: the model of (b), the entries of every parameter tensor permuted, its prompts."""
    planted = attention_then_mlp(seed, strength)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in planted.model.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=g)].view_as(p))
    return _nothing(planted, "shuffled")


def control(seed: int = 0, strength: float = 2.0) -> Planted:
    """(h) Nothing to find: the model and prompts of (a), the answer a coin of the prompt, not the cue."""
    return _nothing(mlp_lookup(seed, strength), "control", nonsense=True)


CONSTRUCTIONS = {"mlp_lookup": mlp_lookup, "attention_then_mlp": attention_then_mlp,
                 "two_hop_attention": two_hop_attention, "redundancy": redundancy, "spread_cue": spread_cue,
                 "deep_chain": deep_chain, "spurious_cue": spurious_cue, "random_init": random_init,
                 "shuffled": shuffled, "control": control}
NOTHING_TO_FIND = ("random_init", "shuffled", "control")  # (h): the whole model misses the target
