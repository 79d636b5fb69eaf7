"""SIGKILL in a local sweep: of the launching process (its workers stop, a rerun trains each point once) and
of one worker process (the sweep records its jobs as failed and ends with its summary)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT, tracking_config
from sweep import lifecycle, names, tracking
from test_resume import launch_until_two_train, training_runs, wait_for

LONG = "train.steps=3000"  # a job still training when the test's signal lands


def test_a_live_worker_of_a_killed_sweep_is_stopped_and_its_run_closed(sweep):
    """The next sweep (close_orphaned_runs), or a job claiming the point (holder_of), finds a run RUNNING in a
    live worker whose launching process is gone: it stops that worker, which closes its run FAILED, and the
    run no longer holds the point."""
    cfg = tracking_config(sweep.uri, flush_every=10)
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    launcher_tag = lifecycle.process_tag(launcher.pid)
    worker_code = textwrap.dedent(f"""
        import signal, time
        from omegaconf import OmegaConf
        from sweep import lifecycle, names
        from sweep.tracking import JobRun
        cfg = OmegaConf.create({OmegaConf.to_container(cfg)!r})
        signal.signal(signal.SIGTERM, lifecycle.request_stop)  # as a sweep's job (job.exit_on_sigterm)
        with lifecycle.job_running(), JobRun(cfg, "orphan", None, {{names.TAG_LAUNCHER_PROCESS: {launcher_tag!r}}}) as run:
            print(run.run_id, flush=True)
            while True:  # a job's steps
                lifecycle.raise_if_stopped()
                time.sleep(0.1)
    """)
    worker = subprocess.Popen([sys.executable, "-c", worker_code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        run_id = worker.stdout.readline().strip()
        client, experiment_id = tracking.ensure_experiment(cfg.tracking)
        point = client.get_run(run_id).data.tags[names.TAG_CONFIG_HASH]
        assert tracking.holder_of(client, experiment_id, point) == run_id  # its sweep is alive: it holds the point
        launcher.kill()
        launcher.wait()
        assert tracking.close_orphaned_runs(cfg.tracking) == [run_id]
        assert tracking.holder_of(client, experiment_id, point) is None
        worker.wait(timeout=60)
    finally:
        launcher.kill()
        worker.kill()
    closed = client.get_run(run_id)
    assert closed.info.status == "FAILED"
    assert closed.data.tags[names.TAG_STATUS] == f"failed: Terminated: killed by signal {signal.SIGTERM}"


@pytest.mark.slow  # the rerun trains the long point: about a minute on 2 cores
def test_the_workers_of_a_killed_launching_process_stop_and_a_rerun_trains_the_point_once(sweep):
    """SIGKILL of `python -m sweep -m`: its busy worker closes its run FAILED at its next step, its idle
    worker exits; running the sweep again trains the point once."""
    grid = ["sparsity.density=0.5", LONG, "hydra.launcher.n_jobs=2"]  # one job: one busy worker, one idle
    cmd = [sys.executable, "-m", "sweep", "-m", *sweep.args(*grid)]
    with open(sweep.tmp / "killed.log", "w") as log:  # not a pipe: the workers outlive the launcher and write on
        launcher = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (sweep.tmp / "multirun" / "plan.json").exists()
                 and len(training_runs(sweep, names.STATUS_RUNNING)) == 1)
        launcher_tag = lifecycle.process_tag(launcher.pid)
        workers = [lifecycle.process_tag(pid) for pid in lifecycle.descendants(launcher.pid)]
        launcher.kill()
        launcher.wait()
        wait_for(lambda: all(lifecycle.is_orphaned(worker) for worker in workers), timeout_s=60)
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)  # what is left of the sweep, if its workers live on
        except ProcessLookupError:
            pass
    (killed,) = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    assert killed.info.status == "FAILED"
    assert killed.data.tags[names.TAG_LAUNCHER_PROCESS] == launcher_tag
    assert killed.data.tags[names.TAG_STATUS] == f"failed: Terminated: the launching process {launcher_tag} of its sweep is gone"

    again = sweep.run(*grid, multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(training_runs(sweep)) == 1
    assert not [r for r in sweep.runs() if r.info.status == "RUNNING"]


@pytest.mark.serial
def test_a_killed_worker_fails_its_jobs_and_the_sweep_ends_with_its_summary(sweep):
    """SIGKILL of one worker process: joblib stops the whole batch; the sweep records the killed job, its
    sibling and the job not yet started as failed, closes their runs FAILED, prints its summary, exits 1."""
    launcher = launch_until_two_train(sweep, ["sparsity.density=1,0.5,0.25", LONG, "hydra.launcher.n_jobs=2"])
    try:
        victim = training_runs(sweep, names.STATUS_RUNNING)[0].data.tags[names.TAG_PROCESS]
        os.kill(int(victim.rsplit(":", 2)[1]), signal.SIGKILL)
        output, _ = launcher.communicate(timeout=180)
    finally:
        launcher.kill()
    assert launcher.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "total: 3 failed" in output, output[-3000:]
    runs = sweep.runs()
    assert not [r for r in runs if r.info.status == "RUNNING"], output[-3000:]
    jobs = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    assert len(jobs) == 2 and all(r.info.status == "FAILED" for r in jobs)
    assert all(r.data.tags[names.TAG_STATUS].startswith("failed: a worker process was killed") for r in jobs)
    (parent,) = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_PARENT]
    assert parent.info.status == "FAILED"
