"""Hydra callback for a multirun: validate every point, create the store and parent run, summarise."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sweep import lifecycle, names, tracking
from sweep.orchestration import launchers, search
from sweep.science.data import load_corpus
from sweep.errors import EXIT_BAD_INPUT, ConfigError, mark_work_started
from sweep.points import AXIS_KEYS, d_model, is_where_key
from sweep.orchestration.sweepers import (INVALID, RUN, SKIP, PlannedPoint, expand_grid, grids_of, mark_repeats, plan_points,
                            write_plan)


def sweep_points(config: DictConfig) -> list[tuple[list[str] | str, DictConfig]]:
    """Every job of the multirun as (overrides, composed config), expanded as the grid sweeper does."""
    loader = GlobalHydra.instance().config_loader()
    if search.is_search(config):  # the Optuna search samples its points: it checks its study and shared config
        return search.sweep_points(config, loader)
    points = expand_grid(loader, grids_of(config), list(config.hydra.overrides.task))
    return [(overrides, loader.load_sweep_config(config, overrides)) for overrides in points]


def parent_run_name(config: DictConfig) -> str:
    """`quick 2026-11-21 12:05:28`: the grid's name and when the sweep started."""
    grid = config.hydra.runtime.choices.get("experiment") or "sweep"
    sweep_dir = Path(config.hydra.sweep.dir)
    return f"{grid} {sweep_dir.parent.name} {sweep_dir.name.replace('-', ':')}"


MLFLOW_TAG_LIMIT = 8000  # characters of a tag's value (MLflow's MAX_TAG_VAL_LENGTH)
DESCRIPTION_RESERVE = 600  # of them left for the frontier paragraph `make frontier` appends


def summary_rows(results: list[dict], labels: dict[str, str] | None = None) -> list[dict]:
    """One row per point, sorted: its label (`w2-d0.06-s0`, from `labels` {point: label}), status (finished,
    failed, skipped, invalid), val loss, circuit size (None where there is none: the table is JSON), run,
    reason and overrides: the parent run's table (`summary.json`) and the text summary's lines."""
    number = lambda v: v if isinstance(v, (int, float)) and math.isfinite(v) else None  # noqa: E731
    rows = []
    for r in sorted(results, key=lambda r: r["point"]):
        kind, _, reason = r["status"].partition(": ")
        rows.append({"label": (labels or {}).get(r["point"]) or r["point"], "status": kind,
                     "val_loss": number(r.get("val_loss")), "edges_geomean": number(r.get("edges_geomean")),
                     "run_id": r.get("run_id"), "reason": reason, "point": r["point"]})
    return rows


def grid_params(config: DictConfig, points: list[tuple[object, DictConfig]], plan: list[PlannedPoint]) -> dict:
    """The parent run's params: the grid's name and size, each grid as its overrides, the values of each axis
    over the valid points, and the command line's overrides (where keys, which may hold a password, left out)."""
    params: dict[str, object] = {"sweep.grid": config.hydra.runtime.choices.get("experiment") or "sweep",
                                 "sweep.points": len(plan)}
    for i, grid in enumerate(grids_of(config)):
        params[f"sweep.grid.{i}"] = " ".join(f"{k}={v}" for k, v in grid.items())
    valid = [cfg for (_, cfg), entry in zip(points, plan) if entry.action != INVALID]
    for key in (*AXIS_KEYS, "model.d_model"):
        values = {d_model(cfg.model) if key == "model.d_model" else OmegaConf.select(cfg, key) for cfg in valid}
        params[f"sweep.{key}"] = ", ".join(f"{v:g}" for v in sorted(values))
    task_overrides = [o for o in config.hydra.overrides.task if not is_where_key(o.split("=", 1)[0])]
    params["sweep.overrides"] = " ".join(task_overrides) or "(none)"
    return params


def sweep_description(grid: str, counts: dict[str, int], experiment: str, rows: list[dict] | None = None,
                      experiment_id: str | None = None) -> str:
    """The parent run's description (markdown): what the sweep holds, where its tables and figures are, and
    once it ended (`rows`) every point with a link to its run."""
    told = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    text = (f"Sweep `{grid}` ({'running' if rows is None else 'ended'}): {sum(counts.values())} points: {told}. "
            f"Every point, run or not, is a row of the table `{names.ARTIFACT_SUMMARY_TABLE}` (artifacts); the plan "
            f"is `{names.ARTIFACT_PLAN}`, the sweep's config `{names.ARTIFACT_MULTIRUN_CONFIG}`. The frontier figure: "
            f"`make frontier EXPERIMENT={experiment}` logs `frontier/frontier.png` and the hypervolume per width here.")
    if not rows:
        return text
    cell = lambda value: str(value).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| point | status | val loss | edges | run or reason |", "|---|---|---|---|---|"]
    for r in rows:
        run = f"[{r['run_id'][:8]}]({names.ui_runs_path(experiment_id, r['run_id'])})" if r["run_id"] else cell(r["reason"])
        loss = "" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        edges = "" if r["edges_geomean"] is None else f"{r['edges_geomean']:,.0f}"
        lines.append(f"| {cell(r['label'])} | {r['status']} | {loss} | {edges} | {run} |")
    shown = len(lines)
    while len(text) + sum(len(line) + 1 for line in lines[:shown]) > MLFLOW_TAG_LIMIT - DESCRIPTION_RESERVE:
        shown -= 1  # a tag holds 8,000 characters: a large grid's rest is in summary.json
    more = f"\n\n{len(lines) - shown} more points: see `{names.ARTIFACT_SUMMARY_TABLE}`." if shown < len(lines) else ""
    return text + "\n\n" + "\n".join(lines[:shown]) + more


def format_summary(results: list[dict], expected: int) -> tuple[str, bool, dict[str, int]]:
    """A table of every point's outcome, whether any job failed unexpectedly, and the count per status."""
    rows = summary_rows(results)
    width = max([len(r["point"]) for r in rows] + [5])
    lines = [f"{'point':<{width}}  {'status':<8}  {'val_loss':>8}  run / reason"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        loss = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-"
        lines.append(f"{r['point']:<{width}}  {r['status']:<8}  {loss:>8}  {r['run_id'] or r['reason']}")
    missing = expected - len(results)
    if missing:
        counts["missing"] = missing
    lines.append("total: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines), counts.get("failed", 0) + missing > 0, counts


def _outcome(entry: PlannedPoint) -> dict:
    """A point that was not launched, as the summary lists it."""
    status = f"invalid: {entry.reason}" if entry.action == INVALID else f"{names.STATUS_SKIPPED}: duplicate of {entry.duplicate_of}"
    return {"point": entry.point, "status": status, "run_id": None, "val_loss": None,
            "edges_geomean": None}


def check_server(config: DictConfig) -> None:
    """A tracking server (tracking.uri=http://...) must answer and its database work before anything runs:
    one error line and exit status 2, never a fallback to another store. Probed once: the validation of
    every point reuses the answer."""
    if not tracking.is_server(config.tracking.uri):
        return
    try:
        tracking.check_server(config.tracking.uri)
    except ConfigError as e:
        _stop_on_bad_input(e)


def _stop_on_bad_input(error: ConfigError) -> None:
    """Exit 2 with one line. Hydra turns an exception in a callback into a warning and runs on."""
    print(f"error: {error}; nothing was run or logged", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _stop_on_error(hook):
    """Hydra turns an exception in a callback into a warning and runs on: a sweep whose start-up failed
    would run jobs with no plan and no parent run, then exit 0. Stop it instead: the traceback, one
    `error:` line, exit 1."""
    @functools.wraps(hook)
    def guarded(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as e:  # SystemExit (bad input, a signal) passes through as it is
            traceback.print_exc()
            print(f"error: sweep {hook.__name__} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr, flush=True)
            sys.exit(1)
    return guarded


class SweepCallback(Callback):
    """Runs in the launching process, around all jobs of one `-m` invocation: plans every point
    (invalid / already finished / duplicate / run), creates the store and the parent run, closes runs
    orphaned by an earlier kill, stops the jobs cleanly on SIGTERM or SIGINT, and summarises."""

    @_stop_on_error
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launchers.check_launcher(config)  # hydra/launcher=slurm: SLURM must answer, before anything is logged
        check_server(config)
        points = sweep_points(config)
        self.plan = plan_points(points)
        for entry in self.plan:
            if entry.action == INVALID:
                print(f"skipping invalid point [{entry.point}]: {entry.reason}", file=sys.stderr)
        if all(entry.action == INVALID for entry in self.plan):
            print("error: no valid point in this sweep; nothing was run or logged", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        mark_work_started()
        self.config, self._stopping = config, None  # the signal that stopped the sweep
        # Build the corpus caches (and a BPE per tokenizer setting) and the SQLite store here, once,
        # before parallel jobs race for them.
        data_cfgs = {OmegaConf.to_yaml(cfg.data): cfg.data for (_, cfg), entry in zip(points, self.plan)
                     if entry.action != INVALID}
        for data_cfg in data_cfgs.values():
            try:
                load_corpus(data_cfg, Path(data_cfg.cache_dir))
            except ConfigError as e:
                _stop_on_bad_input(e)
        for run_id in tracking.close_orphaned_runs(config.tracking):
            print(f"closed run {run_id} as FAILED: its process, or the sweep process that launched it, was killed",
                  file=sys.stderr)
        if not search.is_search(config):
            mark_repeats(self.plan, tracking.finished_points(config.tracking))
            write_plan(Path(config.hydra.sweep.dir), self.plan)
            skipped = sum(entry.action == SKIP for entry in self.plan)
            if skipped:
                print(f"skipping {skipped} of {len(self.plan)} points: each repeats a finished run or an earlier point of this grid")
        self.grid = config.hydra.runtime.choices.get("experiment") or "sweep"
        planned = {action: sum(entry.action == action for entry in self.plan) for action in (RUN, SKIP, INVALID)}
        self.parent_run_id = tracking.start_parent_run(
            config.tracking, run_name=parent_run_name(config), params=grid_params(config, points, self.plan),
            description=sweep_description(self.grid, {k: n for k, n in planned.items() if n}, config.tracking.experiment))
        tracking.log_texts(config.tracking.uri, self.parent_run_id, {
            names.ARTIFACT_PLAN: json.dumps([asdict(entry) for entry in self.plan], indent=1),
            names.ARTIFACT_MULTIRUN_CONFIG: OmegaConf.to_yaml(tracking.redacted(config, resolve=False))})
        os.environ[names.ENV_PARENT_RUN_ID] = self.parent_run_id
        lifecycle.mark_launching_process()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)

    def _stop(self, signum, _frame) -> None:
        """SIGTERM / SIGINT in the launching process: stop the jobs (each closes its run as failed),
        close the parent run as failed with what finished, and exit; rerunning resumes. A job that runs
        in this process (joblib with one job) is asked to stop: it closes its run, then the sweep exits."""
        if self._stopping is not None:  # once is enough (Ctrl-C, then a SIGTERM)
            return
        self._stopping = signum
        print(f"\nsweep: signal {signum}: stopping the jobs...", file=sys.stderr, flush=True)
        lifecycle.terminate_descendants()
        # a worker killed before its job could close its run (a signal between the run's creation and
        # the job's handler): its process is gone now, so its run is closed here, not by the next sweep
        for run_id in tracking.close_orphaned_runs(self.config.tracking):
            print(f"marked run {run_id} FAILED: its process ended without closing it", file=sys.stderr)
        summary, _ = self._end_parent_run(True, f"killed by signal {signum}\n")
        print(f"{summary}\nsweep killed; run the same command again to run only the missing points", flush=True)
        if lifecycle.is_job_running():  # a job in this process: it stops at its next step and closes its run
            lifecycle.request_stop(signum)
            return
        # between jobs: exit now; should a finaliser swallow this exit, the next job stops before its run
        lifecycle.remember_stop(signum)
        raise SystemExit(128 + signum)

    def _launched_results(self) -> list[dict]:
        """The outcomes the jobs of this sweep wrote (not those an earlier sweep left in the folder)."""
        results = (json.loads(p.read_text()) for p in Path(self.config.hydra.sweep.dir).glob(f"*/{names.RESULT_FILE}"))
        return [r for r in results if r.get("parent_run_id") == self.parent_run_id]

    def _results(self) -> list[dict]:
        return self._launched_results() + [_outcome(entry) for entry in self.plan if entry.action != RUN]

    def _end_parent_run(self, failed: bool, heading: str = "") -> tuple[str, bool]:
        """Close the parent run with the summary (text, table, description), the jobs' results read once;
        returns the text summary and whether a job failed or went missing."""
        results = self._results()
        summary, missed, counts = format_summary(results, len(self.plan))
        rows = summary_rows(results, {entry.point: entry.label for entry in self.plan})
        _, experiment_id = tracking.ensure_experiment(self.config.tracking)
        description = sweep_description(self.grid, counts, self.config.tracking.experiment, rows, experiment_id)
        tracking.end_parent_run(self.config.tracking, self.parent_run_id, failed or missed, heading + summary, rows,
                                description)
        return summary, missed

    def _record_skipped(self) -> None:
        """One child run per skipped point, tagged `skipped: duplicate of <run_id>`."""
        run_of_point = {r["point"]: r["run_id"] for r in self._launched_results() if r.get("run_id")}
        for entry in self.plan:
            if entry.action == SKIP:
                entry.duplicate_of = run_of_point.get(entry.duplicate_of, entry.duplicate_of)
                tracking.log_skipped_run(self.config.tracking, self.parent_run_id, entry.point,
                                         entry.config_hash, entry.duplicate_of)

    @_stop_on_error
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self._stopping is not None:  # stopped by a signal: the parent run is closed with its summary already
            raise SystemExit(128 + self._stopping)
        self._record_skipped()
        summary, failed = self._end_parent_run(False)
        _, experiment_id = tracking.ensure_experiment(config.tracking)
        uri = tracking.redact_uri(config.tracking.uri)
        where = uri.rstrip("/") if tracking.is_server(uri) else "make ui, then http://127.0.0.1:5000"
        print(f"\n{summary}\n\nsweep: {config.hydra.sweep.dir}\nparent run: {self.parent_run_id}\n"
              f"open the runs: {where}/{names.ui_runs_path(experiment_id)}")
        if failed:
            sys.exit(1)
