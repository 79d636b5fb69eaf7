"""The launchers: local worker processes (joblib, `hydra/launcher=local`, the default) and SLURM through
hydra-submitit-launcher (`hydra/launcher=slurm`). Both record a job killed outright as a failed job.

SLURM: a check before anything runs, jobs with as many torch threads as CPUs, and a sweep that records a
cancelled, timed-out or killed job as failed. The stock launcher waits for every job with `job.results()`,
which raises for a job that SLURM ended without a result (scancel, time limit, out of memory, node
failure): the sweep would stop there with a traceback, without its summary. This one waits for all jobs,
and for each such job writes the failed result the summary reads (`<job dir>/result.json`) and closes the
job's MLflow run if the job could not.

Local: when one worker process dies (SIGKILL, the out-of-memory killer), joblib kills the other workers
and raises TerminatedWorkerError: the sweep would stop with a traceback and leave the runs RUNNING. This
one records every job of the batch that did not record a result as failed, closes their runs FAILED, and
the sweep goes on to its summary (exit status 1). Its workers also watch the launching process: killed
outright, its workers stop at their next step (`lifecycle.watch_launcher`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from joblib.externals.loky.process_executor import TerminatedWorkerError
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sweep import lifecycle, names, tracking
from sweep.errors import EXIT_BAD_INPUT, ConfigError
from sweep.orchestration.job import JobOutcome, exit_on_sigterm
from sweep.points import config_hash, describe_point
from sweep.orchestration.validate import validate

# Hydra instantiates launchers only from the `hydra_plugins` package: slurm.yaml's `_target_` (local.yaml's
# is hydra_plugins.sparsity_sweep.LocalLauncher).
LAUNCHER_TARGET = "hydra_plugins.sparsity_sweep.SlurmLauncher"
# SLURM states of a job that ended without running to its end: no result will come.
KILLED_STATES = {"CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
POLL_S = 1.0
SINFO_TIMEOUT_S = 60

log = logging.getLogger(__name__)


class LocalLauncher(JoblibLauncher):
    """hydra-joblib-launcher's launcher (worker processes on this machine): its workers stop when the
    launching process is killed outright, and a killed worker process fails its batch's jobs, not the sweep."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # loky runs the initializer in every worker as it starts, busy or idle (n_jobs=1: no worker, no watch)
        self.joblib.update(initializer=lifecycle.watch_launcher, initargs=(lifecycle.process_tag(),))
        try:
            return super().launch(job_overrides, initial_job_idx)
        except TerminatedWorkerError as e:
            return self._worker_killed(job_overrides, initial_job_idx, e)

    def _worker_killed(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                       error: TerminatedWorkerError) -> list[JobReturn]:
        """joblib has killed the other workers too: every job of the batch without a result of its own
        gets a failed one, and the runs they left RUNNING are closed FAILED."""
        codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))
        status = (f"failed: a worker process was killed (exit codes: {codes.group(1) if codes else 'unknown'}); "
                  f"joblib stopped the jobs still running")
        returns = [recorded_result(job_config(self, list(overrides), initial_job_idx + i), list(overrides), status)
                   for i, overrides in enumerate(job_overrides)]
        failed = sum(ret.return_value["status"] == status for ret in returns)
        print(f"sweep: {status.removeprefix('failed: ')}: {failed} of {len(returns)} jobs recorded as failed",
              file=sys.stderr, flush=True)
        return returns


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher; a failed job becomes a failed result, not an exception."""

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[type, Singleton]) -> JobReturn:
        """Runs in the SLURM job: the base class's job, with train.threads set to the CPUs it was given."""
        import submitit

        # scancel and the time limit send SIGTERM: the job must stop and close its run as failed, but
        # submitit's handler only logs it (and exit_on_sigterm keeps a handler that is already set)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        exit_on_sigterm()
        signal.signal(signal.SIGTERM, outside_store_calls(signal.getsignal(signal.SIGTERM)))
        name_time_limit()
        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(sweep_config.hydra.job) as job:
            job.id = submitit.JobEnvironment().job_id
            job.num = job_num
        if cpus := self.params.get("cpus_per_task"):
            sweep_config.train.threads = int(cpus)
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                       job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit all jobs as one SLURM array (as the base class does), then wait for every one of them."""
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        init_params = {"folder": self.params["submitit_folder"],
                       "slurm_max_num_timeout": self.params.get("max_num_timeout", 0)}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base_keys else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items()
                                      if k not in ("submitit_folder", "max_num_timeout")})
        log.info(f"Submitit 'slurm' sweep output dir : {self.config.hydra.sweep.dir}")
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        job_params = []
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{i}",
                               Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        log.info(f"SLURM job {jobs[0].job_id.split('_')[0]}: {len(jobs)} task(s), "
                 f"logs in {Path(str(self.params['submitit_folder'])).parent}")

        returns: list[JobReturn | None] = [None] * len(jobs)
        while True:
            for i, job in enumerate(jobs):
                if returns[i] is None and job.done():
                    returns[i] = self._job_return(job, list(job_overrides[i]), initial_job_idx + i)
            if all(r is not None for r in returns):
                return returns
            time.sleep(POLL_S)

    def _job_return(self, job, overrides: list[str], job_num: int) -> JobReturn:
        """The job's own return, or a failed result when SLURM ended it without one."""
        import submitit

        state = job.state
        if not job.paths.result_pickle.exists() and state.split()[0] in KILLED_STATES:
            return self._failed(job, overrides, job_num, f"SLURM job {job.job_id} ended {state}")
        try:
            ret = job.results()[0]
        except submitit.core.utils.FailedJobError as e:  # an exception outside the task function
            return self._failed(job, overrides, job_num, f"SLURM job {job.job_id}: {_trace_last_line(e)}")
        except submitit.core.utils.UncompletedJobError:  # killed outright (SIGKILL), or died on startup
            return self._failed(job, overrides, job_num,
                                f"SLURM job {job.job_id} ended {state} without a result (log: {job.paths.stderr})")
        result = ret.return_value if ret.status == JobStatus.COMPLETED else None
        if isinstance(result, dict) and str(result.get("status", "")).startswith("failed"):
            # a signal can stop a job while it opens its run, before the run can be closed: close it here
            close_runs_of(job_config(self, overrides, job_num, job.job_id), result["status"], overrides)
        return ret

    def _failed(self, job, overrides: list[str], job_num: int, reason: str) -> JobReturn:
        """Record a job that ended without a result: result.json for the summary, its run closed FAILED."""
        status = f"failed: {reason}"[:500]
        ret = recorded_result(job_config(self, overrides, job_num, job.job_id), overrides, status)
        print(f"SLURM job {job.job_id} [{describe_point(overrides)}]: {status}", file=sys.stderr)
        return ret


def job_config(launcher, overrides: list[str], job_num: int, job_id: str | None = None) -> DictConfig:
    """A job's config as its launcher gave it to the job (its output folder depends on its number)."""
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    with open_dict(config.hydra.job):
        config.hydra.job.id = job_id or f"{config.hydra.job.name}_{job_num}"  # as hydra-joblib-launcher names it
        config.hydra.job.num = job_num
    return config


def recorded_result(config: DictConfig, overrides: list[str], status: str) -> JobReturn:
    """A job that ended without returning: the result it recorded in this sweep (<job dir>/result.json, as
    cli.hydra_job writes it), else `status` (`failed: <reason>`) written there for the summary. A run it
    left RUNNING is closed FAILED with `status`."""
    job_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
    result_file = job_dir / names.RESULT_FILE
    parent_run_id = os.environ.get(names.ENV_PARENT_RUN_ID)
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    if result.get("parent_run_id") != parent_run_id:
        result = {"point": describe_point(overrides), **JobOutcome(status).as_dict(), "parent_run_id": parent_run_id}
        job_dir.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(result))
    close_runs_of(config, status, overrides)
    ret = JobReturn(overrides=overrides, cfg=None, hydra_cfg=None, working_dir=str(job_dir),
                    task_name=str(config.hydra.job.name), status=JobStatus.COMPLETED)
    ret.return_value = result
    return ret


def close_runs_of(config: DictConfig, status: str, overrides: list[str]) -> None:
    """`close_running_runs`, with a warning instead of an exception: the other jobs' results still count."""
    try:
        close_running_runs(config, status)
    except Exception as e:  # noqa: BLE001
        print(f"warning: could not close the MLflow run of job [{describe_point(overrides)}]: {e}", file=sys.stderr)


def name_time_limit() -> None:
    """SLURM's time-limit warning (USR2, signal_delay_s before the limit) ends the job through submitit's
    handler with "Job not requeued because: timed-out too many times": re-raise that as a TimeoutError that
    says so, for the run's failure reason. Preemption (submitit requeues the job) is left as it is."""
    from submitit.core.utils import UncompletedJobError

    submitit_handler = signal.getsignal(signal.SIGUSR2)
    if not callable(submitit_handler) or threading.current_thread() is not threading.main_thread():
        return

    def on_time_limit(signum, frame):
        try:
            submitit_handler(signum, frame)
        except UncompletedJobError as e:
            raise TimeoutError(f"SLURM time limit reached: {e}") from None

    signal.signal(signal.SIGUSR2, outside_store_calls(on_time_limit))


# An exception raised by a signal handler inside one of these leaves the SQLite transaction open: the job
# then cannot close its run ("database is locked").
STORE_CODE = (f"{os.sep}mlflow{os.sep}", f"{os.sep}sqlalchemy{os.sep}", f"{os.sep}sqlite3{os.sep}")
RETRY_SIGNAL_S = 0.2


def outside_store_calls(handler):
    """Wrap a signal handler that raises so that it never interrupts a write to the MLflow store: while the
    main thread is inside MLflow or SQLAlchemy code, the signal is sent again RETRY_SIGNAL_S later."""
    if not callable(handler):
        return handler

    def wrapper(signum, frame):
        inner = frame
        while inner is not None:
            if any(part in inner.f_code.co_filename for part in STORE_CODE):
                retry = threading.Timer(RETRY_SIGNAL_S, os.kill, (os.getpid(), signum))
                retry.daemon = True
                retry.start()
                return
            inner = inner.f_back
        handler(signum, frame)

    return wrapper


def close_running_runs(config: DictConfig, status: str) -> None:
    """A job that has ended but left its run RUNNING (killed outright, or stopped while it opened the run):
    close the run FAILED with the reason.

    The run is found by this sweep's parent run and the job's config hash, as the job tagged it (after
    `validate`, which writes `density=1` back as 1.0).
    """
    parent_run_id = os.environ.get(names.ENV_PARENT_RUN_ID)
    if not parent_run_id:
        return
    task_cfg = copy.deepcopy(config)  # the job's config as the task sees it (hydra.core.utils.run_job)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
        try:
            validate(task_cfg)
        except ConfigError:  # an invalid point opens no run
            return
    client = MlflowClient(tracking_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        return
    query = (f"tags.`{names.TAG_PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
             f" and tags.`{names.TAG_CONFIG_HASH}` = '{config_hash(task_cfg)}'")
    for run in client.search_runs([experiment.experiment_id], filter_string=query):
        tracking.close_as_failed(client, run.info.run_id, status.removeprefix(f"{names.STATUS_FAILED}: "))


def _trace_last_line(error: Exception) -> str:
    """The exception line of the traceback in submitit's FailedJobError (the trace sits between two rulers)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    rulers = [i for i, line in enumerate(lines) if set(line) == {"-"}]
    if len(rulers) >= 2 and rulers[1] > rulers[0] + 1:
        return lines[rulers[1] - 1]
    return lines[0] if lines else type(error).__name__


def check_launcher(config: DictConfig) -> None:
    """Before anything runs or is logged: the local launcher's job count is a usable one; with
    hydra/launcher=slurm, SLURM must answer and the partition exist.

    Otherwise one line `error: invalid config: <key>=<value>: <why>` and exit status 2 (bad input). It exits
    itself: Hydra turns an exception raised in a callback into a warning and goes on.
    """
    slurm = config.hydra.launcher.get("_target_") == LAUNCHER_TARGET
    try:
        check_slurm(config.hydra.launcher) if slurm else check_n_jobs(config.hydra.launcher.get("n_jobs", 1))
    except ConfigError as e:
        print(f"error: {e}; nothing was run or logged", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if slurm:
        _warn_without_accounting()


def check_n_jobs(n_jobs) -> None:
    """The local launcher's jobs at once: joblib refuses 0 with a traceback once the parent run exists."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
        raise ConfigError("hydra.launcher.n_jobs", n_jobs, "must be an integer >= 1 (jobs at once), or negative "
                                                           "(joblib's count from the cores: -1 = one per core)")


def check_slurm(launcher: DictConfig) -> None:
    """Raise ConfigError unless `sinfo` answers and lists the launcher's partition (or a default one), up."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        raise ConfigError("hydra/launcher", "slurm", "SLURM is not reachable from here: no `sinfo` on PATH")
    try:
        out = subprocess.run([sinfo, "--noheader", "--format=%P|%a"], capture_output=True, text=True,
                             timeout=SINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError("hydra/launcher", "slurm",
                          f"SLURM is not reachable: sinfo did not answer in {SINFO_TIMEOUT_S} s") from None
    if out.returncode != 0:
        detail = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise ConfigError("hydra/launcher", "slurm", f"SLURM is not reachable: sinfo: {detail}")
    available = {}  # partition -> (is default, up/down/...)
    for line in out.stdout.split():
        name, _, avail = line.partition("|")
        available[name.rstrip("*")] = (name.endswith("*"), avail)
    listed = ", ".join(sorted(available)) or "none"
    partition = launcher.get("partition")
    if partition is None and not any(default for default, _ in available.values()):
        raise ConfigError("hydra.launcher.partition", None,
                          f"this SLURM cluster has no default partition: name one of {listed}")
    for name in [] if partition is None else str(partition).split(","):
        if name not in available:
            raise ConfigError("hydra.launcher.partition", partition, f"no such SLURM partition (sinfo lists: {listed})")
        if available[name][1] != "up":
            raise ConfigError("hydra.launcher.partition", partition, f"SLURM partition {name} is {available[name][1]}")


def _warn_without_accounting() -> None:
    """submitit learns from sacct that a job was cancelled or timed out; without it such a job is never seen."""
    sacct = shutil.which("sacct")
    try:
        ok = sacct is not None and subprocess.run(
            [sacct, "--noheader", "--format=JobID", "--allocations", "--starttime=now"],
            capture_output=True, timeout=SINFO_TIMEOUT_S).returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    if not ok:
        print("warning: sacct does not work on this cluster (no SLURM accounting?): a job cancelled or past its "
              "time limit would leave the sweep waiting for it", file=sys.stderr)

