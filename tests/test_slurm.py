"""`hydra/launcher=slurm` against a real one-node SLURM cluster on localhost (`make test-slurm`).

The session fixture starts munged, slurmctld and slurmd in a temporary folder and stops them afterwards,
whatever happened. Each test runs the real `python -m sweep -m hydra/launcher=slurm ...` with tiny models.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, Sweep
from slurm_cluster import PARTITION, SlurmCluster, free_port, missing_commands
from sweep import names

pytestmark = pytest.mark.slurm

SLURM = "hydra/launcher=slurm"
SWEEP_TIMEOUT_S = 300  # only against a hang; a sweep here takes well under a minute
EARLY_METRICS = "tracking.flush_every=24"  # a training job's first metrics reach the store after a few steps


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> SlurmCluster:
    if missing := missing_commands():
        pytest.fail(f"SLURM commands not installed: {', '.join(missing)} (`make test-slurm` installs them)")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def sweep_command(sweep: Sweep, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "sweep", "-m", SLURM, *sweep.args(*overrides)]


def run_sweep(sweep: Sweep, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(sweep, *overrides), cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=SWEEP_TIMEOUT_S)


def jobs_by_steps(sweep: Sweep) -> dict[str, object]:
    return {r.data.params["train.steps"]: r for r in sweep.runs() if r.data.tags[names.TAG_KIND] == names.KIND_JOB}


def parent_run(sweep: Sweep):
    (parent,) = [r for r in sweep.runs() if r.data.tags[names.TAG_KIND] == names.KIND_PARENT]
    return parent


def training_run(db: Path, steps: str) -> bool:
    """Whether the run with train.steps=<steps> is RUNNING and has logged metrics (it trains), read
    without MLflow (no second store client)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return connection.execute(
                "SELECT count(*) FROM runs JOIN params ON params.run_uuid = runs.run_uuid "
                "WHERE runs.status = 'RUNNING' AND params.key = 'train.steps' AND params.value = ? "
                "AND EXISTS (SELECT 1 FROM metrics WHERE metrics.run_uuid = runs.run_uuid)",
                (steps,)).fetchone()[0] > 0
    except sqlite3.Error:  # no file or no tables yet
        return False


def wait_for(condition, what: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {process.stderr.read()[-3000:]}")
        time.sleep(0.3)


def array_task(slurm: SlurmCluster, index: int) -> tuple[str, str]:
    """(`<array>_<index>`, its own job id) of a queued or running task of the sweep's job array."""
    for line in slurm.command("squeue", "--noheader", "--array", "--format=%i %A").stdout.split("\n"):
        if line.strip() and line.split()[0].endswith(f"_{index}"):
            task, job_id = line.split()
            return task, job_id
    raise AssertionError(f"no array task {index} in squeue")


def job_process(slurm: SlurmCluster, job_id: str) -> int:
    """The pid of the job's Python process (the task of step 0), as slurmd tracks it."""
    out = slurm.command("scontrol", "listpids", job_id).stdout
    (pid,) = [int(line.split()[0]) for line in out.splitlines()[1:] if line.split()[2] == "0"]
    return pid


def submission_script(sweep: Sweep) -> str:
    (script,) = (sweep.tmp / "multirun" / ".submitit").glob("*/*_submission.sh")
    return script.read_text()


def test_a_grid_runs_on_slurm_and_logs_to_mlflow(slurm, sweep):
    result = run_sweep(sweep, slurm.env, "sparsity.density=1,0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 finished" in result.stdout
    parent = parent_run(sweep)
    assert parent.info.status == "FINISHED"
    jobs = [r for r in sweep.runs() if r.data.tags[names.TAG_KIND] == names.KIND_JOB]
    assert sorted(j.data.params["sparsity.density"] for j in jobs) == ["0.5", "1.0"]
    for job in jobs:
        assert job.info.status == "FINISHED" and job.data.tags[names.TAG_STATUS] == names.STATUS_FINISHED
        assert job.data.tags[names.TAG_PARENT] == parent.info.run_id  # the parent run id went through sbatch
        assert set(job.data.metrics) >= set(names.TRAINING_SUMMARY_METRICS) | set(names.STEP_METRICS)
        assert job.data.params["train.threads"] == "1"
    script = submission_script(sweep)  # they ran as a SLURM job array, one CPU each
    assert "#SBATCH --array=0-1%" in script and "#SBATCH --cpus-per-task=1\n" in script


def test_cancelled_and_killed_jobs_end_failed_and_the_sweep_ends(slurm, sweep):
    """Job 0 finishes; job 1 is cancelled with scancel while it trains; job 2's process is killed outright
    (SIGKILL, as the out-of-memory killer would): both runs end FAILED with a reason, the sweep exits 1."""
    process = subprocess.Popen(sweep_command(sweep, "train.steps=30,100000,100001", EARLY_METRICS), cwd=PROJECT_ROOT,
                               env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: training_run(sweep.db, "100000"), "job 1 training", process)
        slurm.command("scancel", array_task(slurm, 1)[0])
        wait_for(lambda: training_run(sweep.db, "100001"), "job 2 training", process)
        os.kill(job_process(slurm, array_task(slurm, 2)[1]), signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 1, stderr[-3000:]
    assert "1 finished" in stdout and "2 failed" in stdout, stdout
    jobs = jobs_by_steps(sweep)
    assert jobs["30"].info.status == "FINISHED"
    assert jobs["100000"].info.status == "FAILED"
    reason = jobs["100000"].data.tags[names.TAG_STATUS]  # the job closed its own run on SIGTERM
    assert reason.startswith("failed: ") and reason.endswith("killed by signal 15"), reason
    assert jobs["100001"].info.status == "FAILED"  # closed by the launcher: the job could not
    assert jobs["100001"].data.tags[names.TAG_STATUS].startswith("failed: SLURM job ")
    assert "FAILED without a result" in jobs["100001"].data.tags[names.TAG_STATUS]
    assert not [r for r in sweep.runs() if r.info.status == "RUNNING"]
    assert parent_run(sweep).info.status == "FAILED"
    results = [json.loads(p.read_text()) for p in (sweep.tmp / "multirun").glob(f"*/{names.RESULT_FILE}")]
    results = {re.findall(r"train\.steps=(\d+)", r["point"])[-1]: r["status"] for r in results}
    assert results["30"] == names.STATUS_FINISHED
    assert results["100000"].startswith("failed: SLURM job ") and "CANCELLED" in results["100000"]
    assert results["100001"].startswith("failed: SLURM job ") and "FAILED" in results["100001"]
    assert slurm.jobs() == []


def test_a_job_past_its_time_limit_ends_failed(slurm, sweep):
    """SLURM's own time limit, cut to two minutes once the job trains: SLURM sends submitit's warning signal
    (due 120 s before the limit) at its next time-limit check, within 30 s. The job ends failed, saying so,
    and the sweep exits 1. (Submitted with a short limit, the signal could come while the job is still
    starting, before any handler is set, and simply kill it.)"""
    process = subprocess.Popen(sweep_command(sweep, "train.steps=100000", "hydra.launcher.timeout_min=5",
                                             "hydra.launcher.cpus_per_task=2", EARLY_METRICS),
                               cwd=PROJECT_ROOT, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: training_run(sweep.db, "100000"), "the job training", process)
        (line,) = slurm.command("squeue", "--noheader", "--format=%A").stdout.split()
        slurm.command("scontrol", "update", f"JobId={line}", "TimeLimit=2")
        stdout, stderr = process.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 1, stderr[-3000:]
    assert "1 failed" in stdout
    (job,) = jobs_by_steps(sweep).values()
    assert job.info.status == "FAILED"
    assert job.data.tags[names.TAG_STATUS].startswith("failed: TimeoutError: SLURM time limit reached")
    assert job.data.params["train.threads"] == "2"  # torch threads follow hydra.launcher.cpus_per_task
    script = submission_script(sweep)
    assert "#SBATCH --time=5\n" in script and "#SBATCH --cpus-per-task=2\n" in script
    assert parent_run(sweep).info.status == "FAILED"


@pytest.mark.parametrize("case", ["no such partition", "controller down"])
def test_unreachable_slurm_exits_2_before_anything_is_logged(slurm, sweep, case):
    env, overrides = slurm.env, ["sparsity.density=1,0.5"]
    if case == "no such partition":
        overrides.append("hydra.launcher.partition=nope")
    else:  # the cluster's config with a controller port nothing listens on
        dead = sweep.tmp / "slurm.conf"
        conf = re.sub(r"(?m)^SlurmctldPort=.*$", f"SlurmctldPort={free_port()}", slurm.conf.read_text())
        dead.write_text(conf + "MessageTimeout=2\n")  # sinfo gives up after about a second
        env = {**env, "SLURM_CONF": str(dead)}
    result = run_sweep(sweep, env, *overrides)
    assert result.returncode == 2, result.stderr[-3000:]
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    if case == "no such partition":
        assert "hydra.launcher.partition='nope'" in error and f"sinfo lists: {PARTITION}" in error
    else:
        assert "hydra/launcher='slurm'" in error and "SLURM is not reachable" in error
    assert "Traceback" not in result.stderr
    assert not sweep.db.exists() and not (sweep.tmp / "multirun").exists()
