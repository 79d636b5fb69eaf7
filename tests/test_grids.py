"""The named grids compose, expand to the points the README promises, and validate."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import PROJECT_ROOT
from sweep import names
from sweep.points import run_seed
from sweep.orchestration.sweepers import RUN, expand_grid, grids_of, mark_repeats, plan_points


def planned(grid: str, *more: str):
    """Plan the grid as the sweep callback does (nothing is run or logged); seeds as the jobs run them."""
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        overrides = [f"experiment={grid}", *more]
        config = compose("config", overrides=overrides, return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        points = [(p, loader.load_sweep_config(config, p)) for p in expand_grid(loader, grids_of(config), overrides)]
    plan = plan_points(points)
    mark_repeats(plan, finished={})
    return [(cfg.model.width_mult, float(cfg.sparsity.density), run_seed(cfg)) for _, cfg in points], plan


@pytest.mark.parametrize("offset", [0, 3])
def test_quick_grid(offset):
    """Every point valid; the constant-nonzero ladder (x1 dense among it) at three seeds per width, shifted
    by seed_offset, every other point at the offset's one seed: the second seed set is the whole grid again."""
    points, plan = planned("quick", f"seed_offset={offset}")
    ladder = {(w, d, s + offset) for w, d in ((1, 1.0), (2, 0.25), (3, 0.11111)) for s in (0, 1, 2)}
    dense = {(w, 1.0, offset) for w in (2, 3)}
    more = ({(1, d, offset) for d in (0.5, 0.25, 0.125, 0.01)} | {(2, d, offset) for d in (0.0625, 0.002)}
            | {(3, 0.037037, offset)})
    assert set(points) == ladder | dense | more and len(points) == 18
    assert all(entry.action == RUN for entry in plan)  # j = 0: no density is infeasible
    assert len({round(w * w * d, 3) for w, d, _ in ladder}) == 1  # hidden density x width^2: one nonzero count
    assert len({entry.config_hash for entry in plan}) == 18
def test_paper_grid_is_the_recipe():
    points, plan = planned("paper")
    assert all(entry.action == RUN for entry in plan)
    nonzero_axis = [(1, 0.25), (2, 0.0625), (4, 0.015625)]  # hidden density pfrac / E^2
    assert len({w * w * d for w, d in nonzero_axis}) == 1
    assert set(points) == {(w, d, 0) for w, d in nonzero_axis} | {(w, 1.0, 0) for w in (1, 2, 4)}  # + dense baselines
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=paper"])
    assert (cfg.data.source, cfg.data.tokenizer, cfg.data.vocab_size, cfg.model.n_ctx) == ("site-packages", "bpe", 2048, 256)
    assert (cfg.model.n_layer, cfg.model.base_width, cfg.model.mlp_ratio, cfg.model.d_head) == (8, 256, 4, 16)
    assert cfg.model.bigram_table and cfg.model.pos_emb == "none" and cfg.model.act_topk_frac == 0.25
    assert cfg.sparsity.min_per_neuron == 4 and cfg.tasks.suite == "paper" and cfg.prune.target_loss == 0.15
    assert (cfg.train.lr, cfg.train.adam_eps, list(cfg.train.betas), cfg.train.weight_decay) == (0.0128, 0.1, [0.9, 0.95], 0.1)


@pytest.mark.slow  # two BPE jobs of the paper grid at toy size
def test_a_two_point_smoke_of_the_paper_grid_runs_on_the_cpu(sweep):
    """The recipe end to end at a toy size: BPE, bigram table, no positions, j = 4, AbsTopK, two widths."""
    result = sweep.run("experiment=paper", "data.tokenizer=bpe", "model.base_width=32", "model.n_layer=2", "model.n_ctx=128",
                       "data.vocab_size=512", "model.width_mult=1,2", "sparsity.density=1",
                       "hydra.sweeper.extra_grids=[]", "train.threads=1", "hydra.launcher.n_jobs=2",
                       "tasks.suite=quick", "tasks.names=[else_elif]", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    assert len(jobs) == 2 and all(r.info.status == "FINISHED" for r in jobs)
    assert {r.data.params["model.width_mult"] for r in jobs} == {"1", "2"}
    assert all(r.data.params["data.tokenizer"] == "bpe" and r.data.params["model.bigram_table"] == "True" for r in jobs)
    assert len({r.data.tags[names.TAG_TOKENIZER_HASH] for r in jobs}) == 1  # one BPE for the grid


def test_an_unknown_grid_is_named_with_the_allowed_ones(sweep):
    result = subprocess.run([sys.executable, "-m", "sweep", "-m", *sweep.args("experiment=nope")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "experiment" in result.stderr and "nope" in result.stderr and "quick" in result.stderr
    assert not sweep.db.exists()


@pytest.mark.parametrize("override", ["sparsity.density=1,,2", "model.width_mult=[1,2"])
def test_a_malformed_override_stops_the_sweep_before_anything_runs(sweep, override):
    result = sweep.run(override, multirun=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error:" in result.stderr and not sweep.db.exists()
