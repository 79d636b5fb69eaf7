"""The grid sweeper: Hydra's cartesian grid plus extra grids, run only where a point needs a run.

The sweep callback plans every point before anything starts (`plan_points`: invalid, already finished
in the experiment, a duplicate of an earlier point of this grid, or to run) and writes the plan to
`<sweep dir>/plan.json`; `GridSweeper` launches just the points the plan says to run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from sweep.errors import ConfigError
from sweep.points import config_hash, describe_point, point_label
from sweep.orchestration.validate import check_overrides, validate

PLAN_FILE = "plan.json"
RUN, SKIP, INVALID = "run", "skip", "invalid"


def expand_grid(loader, grids: list[dict], arguments: list[str]) -> list[list[str]]:
    """Every point's overrides: each grid's cartesian product with the command-line arguments (which
    win over a grid's value of the same key), the grids one after another."""
    parser = OverridesParser.create(config_loader=loader)
    points = []
    for grid in grids:
        parsed = parser.parse_overrides([f"{k}={v}" for k, v in grid.items()] + list(arguments))
        points += [point for batch in BasicSweeper.split_arguments(parsed, None) for point in batch]
    return points


def grids_of(config: DictConfig) -> list[dict]:
    """The sweeper's `params` grid and its `extra_grids`, as plain dicts."""
    sweeper = config.hydra.sweeper
    as_plain = lambda node: OmegaConf.to_container(node, resolve=False) if node else []  # noqa: E731
    return [as_plain(sweeper.get("params")) or {}, *as_plain(sweeper.get("extra_grids"))]


@dataclass
class PlannedPoint:
    overrides: list[str]
    point: str  # the overrides that make the point, as shown in the summary
    action: str  # run | skip | invalid
    reason: str = ""
    config_hash: str | None = None
    duplicate_of: str | None = None  # the finished run (or the earlier point of this grid) it repeats
    label: str = ""  # `w2-d0.06-s0 lr=0.005` (`point_label`), as the job's run is named; empty if its axes are not numbers


def plan_points(points: list[tuple[list[str] | str, DictConfig]]) -> list[PlannedPoint]:
    """Validate every point: `invalid` with the reason, else `run` with its config hash."""
    plan = []
    for overrides, cfg in points:
        described = overrides if isinstance(overrides, str) else describe_point(overrides)
        entry = PlannedPoint([] if isinstance(overrides, str) else list(overrides), described, RUN)
        try:
            entry.label = point_label(cfg, entry.overrides)
        except (TypeError, ValueError):  # seed=abc: invalid below, and without a label
            pass
        try:
            check_overrides(entry.overrides)
            validate(cfg)
            entry.config_hash = config_hash(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
        except ConfigError as e:
            entry.action, entry.reason = INVALID, str(e)
        plan.append(entry)
    return plan


def mark_repeats(plan: list[PlannedPoint], finished: dict[str, str]) -> None:
    """Skip the points whose config hash already has a finished run ({hash: run id}) and the
    repeats of an earlier point of this grid: each point runs once."""
    first_of_hash: dict[str, str] = {}
    for entry in plan:
        if entry.action != RUN:
            continue
        if entry.config_hash in finished:
            entry.action, entry.duplicate_of = SKIP, finished[entry.config_hash]
        elif entry.config_hash in first_of_hash:
            entry.action, entry.duplicate_of = SKIP, first_of_hash[entry.config_hash]
        else:
            first_of_hash[entry.config_hash] = entry.point


def write_plan(sweep_dir: Path, plan: list[PlannedPoint]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PLAN_FILE).write_text(json.dumps([asdict(p) for p in plan], indent=1))


def read_plan(sweep_dir: Path) -> list[PlannedPoint] | None:
    path = sweep_dir / PLAN_FILE
    return [PlannedPoint(**p) for p in json.loads(path.read_text())] if path.exists() else None


class GridSweeper(BasicSweeper):
    """`hydra/sweeper=grid`: `params` (a cartesian grid, as the basic sweeper) plus `extra_grids`
    (a list of further grids, e.g. extra seeds at one width), launching only the planned runs."""

    def __init__(self, max_batch_size: int | None = None, params: dict | None = None,
                 extra_grids: list | None = None) -> None:
        super().__init__(max_batch_size, params)
        self.extra_grids = extra_grids or []

    def sweep(self, arguments: list[str]):
        sweep_dir = Path(self.config.hydra.sweep.dir)
        plan = read_plan(sweep_dir)
        if plan is None:  # no callback planned this sweep: run every point
            to_run = expand_grid(self.hydra_context.config_loader, grids_of(self.config), arguments)
        else:
            to_run = [p.overrides for p in plan if p.action == RUN]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, job_idx = [], 0
        for batch in self.split_overrides_to_chunks(to_run, self.max_batch_size) if to_run else []:
            results = self.launcher.launch(batch, initial_job_idx=job_idx)
            job_idx += len(batch)
            returns.append(results)
        return returns
