"""Hydra callback for a multirun: validate every point, create the store and parent run, summarise."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweep import names, tracking
from sweep.data import load_corpus
from sweep.errors import EXIT_BAD_INPUT, ConfigError, mark_work_started
from sweep.points import describe_point
from sweep.validate import validate


def sweep_points(config: DictConfig) -> list[tuple[str, DictConfig]]:
    """Every job of the multirun as (overrides, composed config), expanded as the basic sweeper does."""
    loader = GlobalHydra.instance().config_loader()
    arguments = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    points = [overrides for batch in BasicSweeper.split_arguments(parsed, None) for overrides in batch]
    return [(describe_point(o), loader.load_sweep_config(config, list(o))) for o in points]


def parent_run_name(config: DictConfig) -> str:
    """`quick 2026-11-21 12:05:28`: the grid's name and when the sweep started."""
    grid = config.hydra.runtime.choices.get("experiment") or "sweep"
    sweep_dir = Path(config.hydra.sweep.dir)
    return f"{grid} {sweep_dir.parent.name} {sweep_dir.name.replace('-', ':')}"


def format_summary(results: list[dict], expected: int) -> tuple[str, bool]:
    """A table of every point's outcome, and whether any job failed unexpectedly."""
    width = max([len(r["point"]) for r in results] + [5])
    lines = [f"{'point':<{width}}  {'status':<8}  {'val_loss':>8}  run / reason"]
    counts: dict[str, int] = {}
    for r in sorted(results, key=lambda r: r["point"]):
        kind = r["status"].split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
        loss = f"{r['val_loss']:.4f}" if r.get("val_loss") is not None else "-"
        detail = r.get("run_id") or r["status"].partition(": ")[2]
        lines.append(f"{r['point']:<{width}}  {kind:<8}  {loss:>8}  {detail}")
    missing = expected - len(results)
    if missing:
        counts["missing"] = missing
    lines.append("total: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines), counts.get("failed", 0) + missing > 0


class SweepCallback(Callback):
    """Runs in the launching process, around all jobs of one `-m` invocation."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        points = sweep_points(config)
        invalid = {}
        for overrides, job_cfg in points:
            try:
                validate(job_cfg)
            except ConfigError as e:
                invalid[overrides] = e
                print(f"skipping invalid point [{overrides}]: {e}", file=sys.stderr)
        if len(invalid) == len(points):
            print("error: no valid point in this sweep; nothing was run or logged", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        mark_work_started()
        self.expected = len(points)
        valid_cfg = next(cfg for overrides, cfg in points if overrides not in invalid)
        # Build the corpus cache and the SQLite store here, once, before parallel jobs race for them.
        load_corpus(valid_cfg.data, Path(valid_cfg.data.cache_dir))
        self.parent_run_id = tracking.start_parent_run(config.tracking, run_name=parent_run_name(config))
        os.environ[names.ENV_PARENT_RUN_ID] = self.parent_run_id

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        results = [json.loads(p.read_text()) for p in Path(config.hydra.sweep.dir).glob(f"*/{names.RESULT_FILE}")]
        summary, failed = format_summary(results, self.expected)
        tracking.end_parent_run(config.tracking, self.parent_run_id, failed, summary)
        _, experiment_id = tracking.ensure_experiment(config.tracking)
        print(f"\n{summary}\n\nsweep: {config.hydra.sweep.dir}\nparent run: {self.parent_run_id}\n"
              f"open the runs: make ui, then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs")
        if failed:
            sys.exit(1)
