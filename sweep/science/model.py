"""A pre-norm GPT whose activations pass through named node locations (see names.NODE_LOCATIONS)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from sweep import points

POS_EMB = ("learned", "none")

# A node hook sees (layer, location, activation) and returns the activation to use instead.
NodeHook = Callable[[int, str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    d_model: int
    n_layer: int
    d_head: int
    d_mlp: int
    n_ctx: int
    act_topk_frac: float = 1.0
    pos_emb: str = "learned"      # POS_EMB: learned positions in the residual stream, or none
    bigram_table: bool = False    # a dense vocab x vocab table added to the logits

    @property
    def n_head(self) -> int:
        return self.d_model // self.d_head

    @classmethod
    def from_config(cls, model_cfg, vocab_size: int) -> "ModelShape":
        d_model = points.d_model(model_cfg)
        return cls(
            vocab_size=vocab_size,
            d_model=d_model,
            n_layer=model_cfg.n_layer,
            d_head=model_cfg.d_head,
            d_mlp=model_cfg.mlp_ratio * d_model,
            n_ctx=model_cfg.n_ctx,
            act_topk_frac=model_cfg.act_topk_frac,
            # runs logged before these options existed had learned positions and no table
            pos_emb=model_cfg.get("pos_emb", "learned"),
            bigram_table=bool(model_cfg.get("bigram_table", False)),
        )


def abs_topk(x: torch.Tensor, frac: float) -> torch.Tensor:
    """Keep the `frac` largest-magnitude entries of the last dimension, zero the rest (AbsTopK)."""
    k = max(1, round(frac * x.shape[-1]))
    with torch.no_grad():  # a scattered mask is the fastest form on CPU (measured against kthvalue, sort)
        keep = torch.zeros_like(x).scatter_(-1, x.abs().topk(k, dim=-1, sorted=False).indices, 1.0)
    return x * keep


class Block(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.n_head, self.d_head = s.n_head, s.d_head
        self.ln_attn = nn.RMSNorm(s.d_model)
        self.q = nn.Linear(s.d_model, s.n_head * s.d_head, bias=False)
        self.k = nn.Linear(s.d_model, s.n_head * s.d_head, bias=False)
        self.v = nn.Linear(s.d_model, s.n_head * s.d_head, bias=False)
        self.o = nn.Linear(s.n_head * s.d_head, s.d_model, bias=False)
        self.ln_mlp = nn.RMSNorm(s.d_model)
        self.fc_in = nn.Linear(s.d_model, s.d_mlp, bias=False)
        self.fc_out = nn.Linear(s.d_mlp, s.d_model, bias=False)

    def forward(self, x: torch.Tensor, node: Callable[[str, torch.Tensor], torch.Tensor],
                only: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model); with `only` (B,), the output at those positions alone, (B, 1, d_model)."""
        B, T, _ = x.shape
        h = node("attn.in", self.ln_attn(x))  # (B, T, d_model)
        rows = torch.arange(B, device=x.device)
        q = node("attn.q", self.q(h if only is None else h[rows, only][:, None]))  # (B, T or 1, nh * hs)
        k = node("attn.k", self.k(h))
        v = node("attn.v", self.v(h))
        q, k, v = (t.view(B, t.shape[1], self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if only is None:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # one query per sequence, at `only`, seeing the keys up to it
            seen = torch.arange(T, device=x.device)[None, :] <= only[:, None]  # (B, T)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=seen[:, None, None, :])
            x = x[rows, only][:, None]
        att = att.transpose(1, 2).reshape(B, -1, self.n_head * self.d_head)  # (B, T or 1, nh * hs)
        x = x + node("attn.out", self.o(att))

        h = node("mlp.in", self.ln_mlp(x))  # (B, T or 1, d_model)
        h = node("mlp.hidden", F.gelu(self.fc_in(h)))  # (B, T or 1, d_mlp)
        return x + node("mlp.out", self.fc_out(h))


class GPT(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.tok_emb = nn.Embedding(shape.vocab_size, shape.d_model)
        self.pos_emb = nn.Embedding(shape.n_ctx, shape.d_model) if shape.pos_emb == "learned" else None
        # the paper's bigram table: learnable, never sparsified, no weight decay, outside every circuit
        self.bigram = nn.Parameter(torch.zeros(shape.vocab_size, shape.vocab_size)) if shape.bigram_table else None
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layer))
        self.ln_f = nn.RMSNorm(shape.d_model)
        self.unembed = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        self.node_hooks: list[NodeHook] = []  # pruning and recording attach here
        self.apply(self._init_weights)
        for block in self.blocks:  # residual writes scaled down with depth (GPT-2)
            for proj in (block.o, block.fc_out):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * shape.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def node(self, layer: int, location: str, x: torch.Tensor) -> torch.Tensor:
        """Every activation at a node location passes through here."""
        if self.shape.act_topk_frac < 1.0:
            x = abs_topk(x, self.shape.act_topk_frac)
        for hook in self.node_hooks:
            x = hook(layer, location, x)
        return x

    @contextmanager
    def hooked(self, hook: NodeHook):
        """Attach a node hook for the duration of a `with` block."""
        self.node_hooks.append(hook)
        try:
            yield
        finally:
            self.node_hooks.remove(hook)

    def forward(self, idx: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab); with `last` (B,), only the logits at those positions,
        (B, vocab): the last block then computes one position per sequence (a task needs no more)."""
        T = idx.shape[1]
        x = self.tok_emb(idx)  # (B, T, d_model)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        for i, block in enumerate(self.blocks):
            x = block(x, partial(self.node, i), last if i == len(self.blocks) - 1 else None)
        logits = self.unembed(self.ln_f(x))
        if last is not None:
            logits, idx = logits[:, 0], idx[torch.arange(len(last), device=idx.device), last]  # (B, vocab), (B,)
        return logits if self.bigram is None else logits + self.bigram[idx]

    def hidden_matrices(self) -> dict[str, nn.Parameter]:
        """Attention and MLP weights: the matrices at `sparsity.density`, shape (out, in)."""
        names = ("q", "k", "v", "o", "fc_in", "fc_out")
        return {f"blocks.{i}.{n}.weight": getattr(b, n).weight for i, b in enumerate(self.blocks) for n in names}

    def embedding_matrices(self) -> dict[str, nn.Parameter]:
        """Token / position embeddings and the unembedding: density * width_mult, capped at 1. The bigram
        table is none of these: dense, and left out of every count."""
        positions = {} if self.pos_emb is None else {"pos_emb.weight": self.pos_emb.weight}
        return {"tok_emb.weight": self.tok_emb.weight, **positions, "unembed.weight": self.unembed.weight}

    def count_params(self) -> tuple[int, int]:
        """(total, nonzero) over all matrices, excluding norm gains."""
        matrices = {**self.hidden_matrices(), **self.embedding_matrices()}.values()
        return sum(p.numel() for p in matrices), sum(int(torch.count_nonzero(p)) for p in matrices)
