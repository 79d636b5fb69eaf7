"""`python -m sweep`: one job, or a grid with `-m` (Hydra multirun)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from sweep import lifecycle, names, tracking
from sweep.errors import EXIT_BAD_INPUT, ConfigError, mark_work_started, work_started
from sweep.orchestration.job import JobOutcome, ignore_sigint_in_worker, job_slot, run_job
from sweep.orchestration.validate import check_overrides
from sweep.lifecycle import Terminated, is_launching_process
from sweep.paths import CONF_DIR
from sweep.points import config_hash, describe_point, point_label
from sweep.tracking import PointHeld


def _slot(hc) -> int:
    """The job's place among the jobs that run at once: its progress bar's row and its GPU."""
    return job_slot(hc.job.num, hc.launcher.get("n_jobs", 1) if "launcher" in hc else 1)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_job(cfg: DictConfig) -> dict:
    """Run one job; in a multirun, bad points and crashes are recorded instead of raised."""
    mark_work_started()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        ignore_sigint_in_worker()
    try:
        if not multirun:  # in a sweep, the plan has checked them
            check_overrides(hc.overrides.task)
        with lifecycle.job_running():  # from here on a stop waits for the job's next step (none yet: its start)
            lifecycle.raise_if_stopped()
            outcome = run_job(cfg, os.environ.get(names.ENV_PARENT_RUN_ID), hc.overrides.task,
                              _slot(hc) if multirun else 0)
    except ConfigError as e:
        if not multirun:  # exit here: raised, it would reach Hydra, which prints a line of its own first
            sys.exit(_bad_input(str(e)))
        outcome = JobOutcome(f"invalid: {e}")
    except PointHeld as held:  # a second sweep on the same points, or the live workers of a killed one
        tracking.log_skipped_run(cfg.tracking, os.environ[names.ENV_PARENT_RUN_ID], point_label(cfg, hc.overrides.task),
                                 config_hash(cfg), held.run_id)
        outcome = JobOutcome(str(held))
    except Terminated as stop:
        if multirun and is_launching_process():  # the sweep's own process: it has closed the parent run
            raise SystemExit(128 + stop.signum) from None
        if multirun:  # a worker process (joblib, SLURM): its run is closed; exit, never take another job
            if lifecycle.launcher_tag() and (parent := os.environ.get(names.ENV_PARENT_RUN_ID)):
                tracking.wait_for_siblings(cfg.tracking, parent)  # joblib kills the others when one exits
            os._exit(128 + stop.signum)
        raise
    except Exception as e:  # noqa: BLE001 - one failing job must not stop the others
        if not multirun:
            raise
        outcome = JobOutcome(f"failed: {type(e).__name__}: {e}")
    result = {"point": describe_point(hc.overrides.task), **outcome.as_dict(),
              "parent_run_id": os.environ.get(names.ENV_PARENT_RUN_ID)}
    (Path(hc.runtime.output_dir) / names.RESULT_FILE).write_text(json.dumps(result))
    return result


def main() -> None:
    """Entry point: bad input exits 2 with one clear message, before any run is created."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us instead of Hydra's exit(1)
    try:
        hydra_job()
    except ConfigError as e:
        sys.exit(_bad_input(str(e)))
    except CompactHydraException as e:
        cause = f" ({e.__cause__})" if e.__cause__ is not None and str(e.__cause__) not in str(e) else ""
        sys.exit(_bad_input(f"invalid config: {e}{cause}"))
    except Exception as e:
        if work_started():
            raise
        # Hydra / OmegaConf failed while composing the config: an override it could not apply.
        sys.exit(_bad_input(f"invalid config or override: {type(e).__name__}: {e}"))


def _bad_input(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
