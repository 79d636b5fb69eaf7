"""Top-k projection, the per-neuron minimum, the anneal, and feasibility."""

import pytest
import torch
from omegaconf import OmegaConf

from bench.projection import plain_topk_mask
from sweep.errors import ConfigError
from sweep.science.model import GPT, ModelShape
from sweep.science.sparsity import (BANDED_MIN_NUMEL, WeightSparsifier, annealed_density, check_feasible,
                            embedding_density, keep_mask, keep_masks)


@pytest.mark.parametrize("k", [1, 17, 500, 2047, 2048])
def test_keep_mask_keeps_exactly_k_without_minimum(k):
    w = torch.randn(64, 32)
    mask = keep_mask(w, k, min_per_neuron=0)
    assert int(mask.sum()) == k
    # the kept entries are the largest by magnitude
    assert w.abs()[mask].min() >= w.abs()[~mask].max() if k < w.numel() else True


@pytest.mark.parametrize("j", [1, 2])
@pytest.mark.parametrize("k", [10, 100, 400, 1000])
def test_keep_mask_per_neuron_minimum(k, j):
    w = torch.randn(64, 32)
    mask = keep_mask(w, k, min_per_neuron=j)
    assert (mask.sum(dim=1) >= j).all() and (mask.sum(dim=0) >= j).all()
    forced = torch.zeros_like(mask)
    forced.scatter_(1, w.abs().topk(j, dim=1).indices, True)
    forced.scatter_(0, w.abs().topk(j, dim=0).indices, True)
    # exactly k unless the minimum alone needs more, then exactly the forced set
    assert int(mask.sum()) == max(k, int(forced.sum()))
    assert (mask >= forced).all()


@pytest.mark.parametrize("shape", [(32, 32), (128, 32), (256, 64), (128, 128), (512, 128), (256, 1024)])
@pytest.mark.parametrize("j", [0, 1, 2])
@pytest.mark.parametrize("density", [0.99, 0.7, 0.25, 0.06, 0.015])
def test_fast_paths_project_like_plain_topk(shape, j, density):
    """Unit maxima by comparison and the banded selection (large matrices) leave the same weights."""
    torch.manual_seed(hash((shape, j, density)) % 2**31)
    ws = [torch.randn(*shape) * torch.rand(shape[1]) for _ in range(3)]  # columns of different scale
    ws[0][: shape[0] // 8] = 0.0  # all-zero rows: ties at a unit's maximum (j >= 1), at zero (j = 0)
    k = round(density * ws[0].numel())
    for w, mask in zip(ws, keep_masks(ws, k, j)):
        assert torch.equal(w * mask, w * plain_topk_mask(w, k, j))
        assert int(mask.sum()) == int(plain_topk_mask(w, k, j).sum())


def test_banded_selection_keeps_exactly_k_with_ties_at_the_last_value():
    w = torch.randn(256, 128)
    assert w.numel() >= BANDED_MIN_NUMEL
    k = 2000
    last = w.abs().flatten().topk(k).values[-1]
    w.view(-1)[:50] = last  # 50 entries tie with the k-th largest
    mask = keep_mask(w, k, 0)
    assert int(mask.sum()) == k
    assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_nan_weights_are_ranked_as_topk_ranks_them():
    w = torch.randn(256, 128)
    w[3, 5] = float("nan")
    for j in (0, 1):
        assert torch.equal(keep_mask(w, 500, j), plain_topk_mask(w, 500, j))


def test_sparsifier_leaves_requested_count_in_every_matrix():
    torch.manual_seed(0)
    model = GPT(ModelShape(vocab_size=256, d_model=64, n_layer=2, d_head=16, d_mlp=256, n_ctx=16))
    cfg = OmegaConf.create(dict(min_per_neuron=1, anneal_start=0.0, anneal_end=0.5))
    density, width_mult = 0.1, 2
    sparsifier = WeightSparsifier(model.hidden_matrices(), model.embedding_matrices(), density, width_mult, cfg)
    sparsifier.project(progress=1.0)
    for name, w in model.hidden_matrices().items():
        assert int(torch.count_nonzero(w)) == round(density * w.numel()), name
        assert (torch.count_nonzero(w, dim=1) >= 1).all() and (torch.count_nonzero(w, dim=0) >= 1).all(), name
    for name, w in model.embedding_matrices().items():
        assert int(torch.count_nonzero(w)) == round(density * width_mult * w.numel()), name
    for norm in (b.ln_attn.weight for b in model.blocks):
        assert torch.count_nonzero(norm) == norm.numel()  # norm gains stay dense


def test_sparsifier_follows_the_anneal():
    model = GPT(ModelShape(vocab_size=256, d_model=32, n_layer=1, d_head=16, d_mlp=128, n_ctx=16))
    cfg = OmegaConf.create(dict(min_per_neuron=0, anneal_start=0.2, anneal_end=0.6))
    sparsifier = WeightSparsifier(model.hidden_matrices(), model.embedding_matrices(), 0.1, 1, cfg)
    w = model.blocks[0].fc_in.weight
    sparsifier.project(0.1)
    assert int(torch.count_nonzero(w)) == w.numel()  # before the anneal starts: dense
    sparsifier.project(0.4)  # halfway: density 0.55
    assert int(torch.count_nonzero(w)) == round(0.55 * w.numel())
    sparsifier.project(0.9)
    assert int(torch.count_nonzero(w)) == round(0.1 * w.numel())


def test_anneal_schedule_hits_its_endpoints():
    assert annealed_density(0.05, 0.0, 0.01, 0.5) == 1.0
    assert annealed_density(0.05, 0.01, 0.01, 0.5) == 1.0
    assert annealed_density(0.05, 0.5, 0.01, 0.5) == pytest.approx(0.05)
    assert annealed_density(0.05, 1.0, 0.01, 0.5) == pytest.approx(0.05)
    assert annealed_density(0.2, 0.5, 0.0, 1.0) == pytest.approx(0.6)
    densities = [annealed_density(0.05, p / 100, 0.01, 0.5) for p in range(101)]
    assert all(a >= b for a, b in zip(densities, densities[1:]))  # never rises


def test_embedding_density_rule():
    assert embedding_density(0.06, 4) == pytest.approx(0.24)
    assert embedding_density(0.5, 4) == 1.0


def test_infeasible_cell_is_rejected_with_the_bound():
    shapes = {"mlp.fc_in": (128, 32)}
    check_feasible(shapes, 1 / 32, 1, "w1")
    with pytest.raises(ConfigError) as err:
        check_feasible(shapes, 0.03, 1, "w1")
    assert err.value.key == "sparsity.density" and "0.03125" in str(err.value)
