"""Collapse instruments on models whose dead units are set by hand."""

import pytest
import torch

from sweep import names
from sweep.science.collapse import collapse_metrics, dead_by_activity, dead_by_weight
from sweep.science.model import GPT, ModelShape


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(ModelShape(vocab_size=256, d_model=32, n_layer=2, d_head=16, d_mlp=128, n_ctx=16))


def inputs():
    return torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0))


def test_a_dense_random_model_has_no_dead_units(model):
    metrics = collapse_metrics(model, inputs(), batch_size=4)
    assert metrics[names.COLLAPSE_DEAD_BY_WEIGHT] == 0.0
    assert metrics[names.COLLAPSE_DEAD_LAYERS] == 0.0
    assert metrics[names.COLLAPSE_DEAD_BY_ACTIVITY] < 0.05  # a few MLP neurons may never fire by chance


def test_units_cut_off_by_weight(model):
    block = model.blocks[0]
    with torch.no_grad():
        block.fc_in.weight[:10] = 0  # ten neurons lose every input
        block.fc_out.weight[:, 10:15] = 0  # five more lose every output
        block.v.weight[3] = 0  # a value channel with no input
        block.k.weight[7] = 0  # a key channel with no input kills its query partner too
    dead = dead_by_weight(model)
    assert int(dead[0]["mlp.hidden"].sum()) == 15
    assert dead[0]["attn.v"].nonzero().flatten().tolist() == [3]
    assert dead[0]["attn.k"].nonzero().flatten().tolist() == [7]
    assert dead[0]["attn.q"].nonzero().flatten().tolist() == [7]
    assert not any(d.any() for d in dead[1].values())
    units = 2 * (3 * 32 + 128)
    expected = (15 + 1 + 2) / units
    assert collapse_metrics(model, inputs(), 4)[names.COLLAPSE_DEAD_BY_WEIGHT] == pytest.approx(expected)


def test_units_never_active_and_a_dead_layer(model):
    with torch.no_grad():
        for w in (model.blocks[1].q.weight, model.blocks[1].k.weight, model.blocks[1].v.weight,
                  model.blocks[1].fc_in.weight):
            w.zero_()
    activity = dead_by_activity(model, inputs(), batch_size=4)
    assert all(d.all() for d in activity[1].values())  # zero inputs: never nonzero, GELU(0) = 0
    metrics = collapse_metrics(model, inputs(), 4)
    assert metrics[names.COLLAPSE_DEAD_LAYERS] == 1.0
    assert metrics[names.COLLAPSE_DEAD_BY_ACTIVITY] >= 0.5
    assert model.node_hooks == []  # the recording hook is removed again
