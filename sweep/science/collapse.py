"""Collapse instruments (method.md 5): units dead by weight or by activity, and dead layers."""

from __future__ import annotations

import torch

from sweep import names
from sweep.science.model import GPT

UNIT_LOCATIONS = ("attn.q", "attn.k", "attn.v", "mlp.hidden")  # the units: attention channels, MLP neurons


def dead_by_weight(model: GPT) -> list[dict[str, torch.Tensor]]:
    """Per layer and unit location, a bool per unit: no nonzero input or no nonzero output weight.
    A q (k) channel's output is its product with the matching k (q) channel; v's goes through W_o."""
    dead = []
    for block in model.blocks:
        has_in = {loc: torch.count_nonzero(w, dim=1) > 0 for loc, w in
                  (("attn.q", block.q.weight), ("attn.k", block.k.weight), ("attn.v", block.v.weight),
                   ("mlp.hidden", block.fc_in.weight))}
        has_out = {"attn.q": has_in["attn.k"], "attn.k": has_in["attn.q"],
                   "attn.v": torch.count_nonzero(block.o.weight, dim=0) > 0,
                   "mlp.hidden": torch.count_nonzero(block.fc_out.weight, dim=0) > 0}
        dead.append({loc: ~(has_in[loc] & has_out[loc]) for loc in UNIT_LOCATIONS})
    return dead


@torch.no_grad()
def dead_by_activity(model: GPT, inputs: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Per layer and unit location, a bool per unit: never active on the given text. Active means
    nonzero for attention channels (linear; AbsTopK zeroes unselected ones) and > 0 for MLP neurons
    (GELU is negative but near zero where its input is)."""
    ever = [{loc: None for loc in UNIT_LOCATIONS} for _ in model.blocks]

    def record(layer: int, location: str, x: torch.Tensor) -> torch.Tensor:
        if location in UNIT_LOCATIONS:
            active = (x > 0 if location == "mlp.hidden" else x != 0).flatten(0, -2).any(dim=0)
            seen = ever[layer][location]
            ever[layer][location] = active if seen is None else seen | active
        return x

    was_training = model.training
    model.eval()
    with model.hooked(record):
        for i in range(0, len(inputs), batch_size):
            model(inputs[i:i + batch_size])
    model.train(was_training)
    return [{loc: ~active for loc, active in layer.items()} for layer in ever]


def collapse_metrics(model: GPT, inputs: torch.Tensor, batch_size: int) -> dict[str, float]:
    """The `collapse/*` metrics of contract.md for a trained model and held-out inputs."""
    by_weight, by_activity = dead_by_weight(model), dead_by_activity(model, inputs, batch_size)

    def fraction(dead: list[dict[str, torch.Tensor]]) -> float:
        units = torch.cat([d for layer in dead for d in layer.values()])
        return units.float().mean().item()

    dead_layers = sum(
        all((w | a).all() for w, a in zip(weight_layer.values(), activity_layer.values()))
        for weight_layer, activity_layer in zip(by_weight, by_activity))
    return {names.COLLAPSE_DEAD_BY_WEIGHT: fraction(by_weight),
            names.COLLAPSE_DEAD_BY_ACTIVITY: fraction(by_activity),
            names.COLLAPSE_DEAD_LAYERS: float(dead_layers)}
