"""The named grids compose, expand to the points the README promises, and validate."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import PROJECT_ROOT
from sweep.sweepers import INVALID, RUN, SKIP, expand_grid, grids_of, mark_repeats, plan_points


def planned(grid: str):
    """Plan the grid as the sweep callback does (nothing is run or logged)."""
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        overrides = [f"experiment={grid}"]
        config = compose("config", overrides=overrides, return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        points = [(p, loader.load_sweep_config(config, p)) for p in expand_grid(loader, grids_of(config), overrides)]
    plan = plan_points(points)
    mark_repeats(plan, finished={})
    return [(cfg.model.width_mult, float(cfg.sparsity.density), cfg.seed) for _, cfg in points], plan


def test_quick_grid():
    points, plan = planned("quick")
    grid = {(w, d, 0) for w in (4, 2, 1) for d in (1.0, 0.25, 0.06, 0.03, 0.015)}
    extra = {(2, d, s) for d in (1.0, 0.06, 0.015) for s in (1, 2)}
    assert set(points) == grid | extra and len(points) == 21
    invalid = {p for p, entry in zip(points, plan) if entry.action == INVALID}
    # density * d_model < 1 nonzero per neuron (sparsity.min_per_neuron = 1): infeasible, reported
    assert invalid == {(1, 0.03, 0), (1, 0.015, 0), (2, 0.015, 0), (2, 0.015, 1), (2, 0.015, 2)}
    assert all("sparsity.density" in entry.reason for entry in plan if entry.action == INVALID)
    assert sum(entry.action == RUN for entry in plan) == 16


def test_paper_grid_has_the_constant_nonzero_axis():
    points, plan = planned("paper")
    by_point = dict(zip(points, plan))
    assert all(entry.action != INVALID for entry in plan)
    assert by_point[(1, 0.25, 0)].action == SKIP  # on the axis and in the grid: runs once
    nonzero_axis = [(1, 0.25), (2, 0.0625), (4, 0.015625), (8, 0.00390625)]
    assert len({w * w * d for w, d in nonzero_axis}) == 1
    assert all((w, d, 0) in by_point for w, d in nonzero_axis)
    assert {(w, d) for w, d, _ in points if d == 1.0} == {(1, 1.0), (2, 1.0), (4, 1.0)}  # dense baselines


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
