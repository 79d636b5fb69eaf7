"""Hydra callback for a multirun: validate every point, create the store and parent run, summarise."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sweep import lifecycle, names, tracking
from sweep.orchestration import launchers, search
from sweep.science.data import load_corpus
from sweep.errors import EXIT_BAD_INPUT, ConfigError, mark_work_started
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


def _outcome(entry: PlannedPoint) -> dict:
    """A point that was not launched, as the summary lists it."""
    status = f"invalid: {entry.reason}" if entry.action == INVALID else f"{names.STATUS_SKIPPED}: duplicate of {entry.duplicate_of}"
    return {"point": entry.point, "status": status, "run_id": None, "val_loss": None}


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
        self.config, self._stopping = config, False
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
        self.parent_run_id = tracking.start_parent_run(config.tracking, run_name=parent_run_name(config))
        os.environ[names.ENV_PARENT_RUN_ID] = self.parent_run_id
        lifecycle.mark_launching_process()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)

    def _stop(self, signum, _frame) -> None:
        """SIGTERM / SIGINT in the launching process: stop the jobs (each closes its run as failed),
        close the parent run as failed with what finished, and exit; rerunning resumes. A job that runs
        in this process (joblib with one job) is asked to stop: it closes its run, then the sweep exits."""
        if self._stopping:  # once is enough (Ctrl-C, then a SIGTERM)
            return
        self._stopping = True
        print(f"\nsweep: signal {signum}: stopping the jobs...", file=sys.stderr, flush=True)
        lifecycle.terminate_descendants()
        # a worker killed before its job could close its run (a signal between the run's creation and
        # the job's handler): its process is gone now, so its run is closed here, not by the next sweep
        for run_id in tracking.close_orphaned_runs(self.config.tracking):
            print(f"marked run {run_id} FAILED: its process ended without closing it", file=sys.stderr)
        summary, _ = self._summary()
        tracking.end_parent_run(self.config.tracking, self.parent_run_id, True, f"killed by signal {signum}\n{summary}")
        print(f"{summary}\nsweep killed; run the same command again to run only the missing points", flush=True)
        if lifecycle.is_job_running():  # a job in this process: it stops at its next step and closes its run
            lifecycle.request_stop(signum)
            return
        raise SystemExit(128 + signum)

    def _launched_results(self) -> list[dict]:
        """The outcomes the jobs of this sweep wrote (not those an earlier sweep left in the folder)."""
        results = (json.loads(p.read_text()) for p in Path(self.config.hydra.sweep.dir).glob(f"*/{names.RESULT_FILE}"))
        return [r for r in results if r.get("parent_run_id") == self.parent_run_id]

    def _summary(self) -> tuple[str, bool]:
        not_launched = [_outcome(entry) for entry in self.plan if entry.action != RUN]
        return format_summary(self._launched_results() + not_launched, len(self.plan))

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
        self._record_skipped()
        summary, failed = self._summary()
        tracking.end_parent_run(config.tracking, self.parent_run_id, failed, summary)
        _, experiment_id = tracking.ensure_experiment(config.tracking)
        uri = tracking.redact_uri(config.tracking.uri)
        where = uri.rstrip("/") if tracking.is_server(uri) else "make ui, then http://127.0.0.1:5000"
        print(f"\n{summary}\n\nsweep: {config.hydra.sweep.dir}\nparent run: {self.parent_run_id}\n"
              f"open the runs: {where}/#/experiments/{experiment_id}/runs")
        if failed:
            sys.exit(1)
