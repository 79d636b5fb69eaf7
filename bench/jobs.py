"""One real job per width (sweep.orchestration.job.run_job) in its own process: its stages' times, the time spent
in MLflow logging, and its peak resident memory. `python -m bench.jobs <result.json> <overrides...>`."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from sweep import names
from sweep.paths import PROJECT_ROOT


def job_config(overrides: list[str]) -> DictConfig:
    """The job's config exactly as `python -m sweep <overrides>` composes it."""
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


class LoggingTimer:
    """Wraps JobRun's methods (every MLflow call a job makes goes through them: __init__ and each public
    method) with a timer; nested calls (end -> flush) count once. Also keeps the stage times the job logs.
    The system metrics' sampling thread is not among them: 9 ms per 10 s sample (README)."""

    def __init__(self):
        self.seconds, self.calls, self.depth, self.logged = 0.0, 0, 0, {}
        self.by_method: dict[str, float] = {}

    def install(self, cls) -> None:
        for name, method in list(vars(cls).items()):
            if callable(method) and (name == "__init__" or not name.startswith("_")):
                setattr(cls, name, self._timed(method))

    def _timed(self, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            if method.__name__ == "log_metrics":
                self.logged.update(args[1])
            if self.depth:
                return method(*args, **kwargs)
            self.depth, self.calls, start = 1, self.calls + 1, time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.seconds += elapsed
                self.by_method[method.__name__] = self.by_method.get(method.__name__, 0.0) + elapsed
                self.depth = 0
        return timed


def child(result_path: Path, overrides: list[str]) -> None:
    """Run one job (in this process) and write what it measured."""
    from sweep.orchestration.job import run_job  # imported here: import time is the process's, not the job's
    from sweep.tracking import JobRun

    cfg = job_config(overrides)
    start = time.perf_counter()
    # MLflow imports its SQL store (SQLAlchemy, the ORM mappers) on a process's first client: about
    # a second, once per process. A sweep's joblib workers run many jobs each, so a job there finds
    # it loaded; measured here apart from the job.
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    store_import = time.perf_counter() - start
    timer = LoggingTimer()
    timer.install(JobRun)
    start = time.perf_counter()
    outcome = run_job(cfg)
    wall = time.perf_counter() - start
    hwm_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM:"))
    result_path.write_text(json.dumps({
        "status": outcome.status, "wall_s": wall, "mlflow_store_import_s": store_import, "logging_s": timer.seconds, "logging_calls": timer.calls,
        "logging_by_method_s": timer.by_method,
        "train_s": timer.logged[names.TIME_TRAIN], "prune_s": timer.logged.get(names.TIME_PRUNE, 0.0),
        "total_params": timer.logged[names.MODEL_TOTAL_PARAMS], "peak_rss_mb": hwm_kb / 1024,
        "val_loss": outcome.val_loss, "tasks_solved_frac": timer.logged.get(names.TASKS_SOLVED_FRAC)}))


def run_child(overrides: list[str], workdir: Path, tag: str) -> dict:
    """Run a job in a fresh process. Its peak RSS is the VmHWM it reads itself at the end: the
    ru_maxrss that wait4 reports starts from the parent's RSS at fork, which here is larger."""
    result, log = workdir / f"job-{tag}.json", workdir / f"job-{tag}.log"
    with log.open("w") as out:
        returncode = subprocess.run([sys.executable, "-m", "bench.jobs", str(result), *overrides],
                                    cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        raise RuntimeError(f"bench job {tag} exited {returncode}:\n{log.read_text()[-3000:]}")
    return json.loads(result.read_text())


if __name__ == "__main__":
    child(Path(sys.argv[1]), sys.argv[2:])
