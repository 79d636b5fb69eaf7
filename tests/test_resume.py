"""Resume: a killed sweep leaves no run RUNNING, and running it again runs only the missing points."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT, tracking_config
from sweep import names, tracking

# six points: three short ones run first (train.steps is an early key of the tiny config, so it varies
# slowest), then three that train 40x longer: some are finished and some left when the signal lands,
# however loaded the machine
GRID = ["sparsity.density=1,0.5,0.25", "train.steps=100,4000"]


def training_runs(sweep, status: str = names.STATUS_FINISHED):
    return [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB
            and r.data.tags.get(names.TAG_STATUS) == status]


def wait_for(condition, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def launch_until_two_train(sweep, grid: list[str]) -> subprocess.Popen:
    """`python -m sweep -m` in a session of its own (its output piped), returned once two jobs are in their
    training loop: each has logged train/loss (written at once here). A run that merely exists may still be
    setting up (its first step imports parts of torch for a second), which is not what these tests signal."""
    cmd = [sys.executable, "-m", "sweep", "-m", *sweep.args(*grid, "tracking.flush_every=1")]
    launcher = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        wait_for(lambda: (sweep.tmp / "multirun" / "plan.json").exists()
                 and sum(names.TRAIN_LOSS in r.data.metrics for r in training_runs(sweep, names.STATUS_RUNNING)) == 2)
    except BaseException:
        launcher.kill()
        raise
    return launcher


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs", [2, 1], ids=["worker-processes", "in-process"])
def test_a_killed_sweep_resumes_with_only_the_missing_points(sweep, n_jobs):
    grid = [*GRID, f"hydra.launcher.n_jobs={n_jobs}"]
    cmd = [sys.executable, "-m", "sweep", "-m", *sweep.args(*grid)]
    launcher = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the plan is written once the sweep has created the store: only then may a second client open it
    wait_for(lambda: (sweep.tmp / "multirun" / "plan.json").exists() and len(training_runs(sweep)) >= 1)
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGTERM, output
    assert "run the same command again" in output

    runs = sweep.runs()
    assert not [r for r in runs if r.info.status == "RUNNING"], "a killed sweep left a run RUNNING"
    done_before = {r.data.tags[names.TAG_CONFIG_HASH] for r in training_runs(sweep)}
    assert 1 <= len(done_before) < 6
    killed = [r for r in runs if r.info.status == "FAILED" and r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    assert all(r.data.tags[names.TAG_STATUS].startswith("failed: ") for r in killed)
    assert len(killed) <= n_jobs, "a worker took another job after the signal"

    again = sweep.run(*grid, multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    finished = training_runs(sweep)
    hashes = [r.data.tags[names.TAG_CONFIG_HASH] for r in finished]
    assert len(hashes) == len(set(hashes)) == 6  # every point once, none trained twice
    skipped = [r for r in sweep.runs() if r.data.tags.get(names.TAG_STATUS, "").startswith("skipped: duplicate of ")]
    assert {r.data.tags[names.TAG_CONFIG_HASH] for r in skipped} == done_before
    assert f"{len(done_before)} skipped" in again.stdout
    assert not [r for r in sweep.runs() if r.info.status == "RUNNING"]


@pytest.mark.serial
@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, id="ctrl-c"), pytest.param(signal.SIGTERM, id="docker-stop")])
def test_a_signal_to_the_whole_process_group_leaves_no_run_running(sweep, signum):
    """Ctrl-C in a terminal, and `docker stop` through an init that signals the group (docker/compose.yaml),
    reach the launching process and its workers at once: every run still ends FAILED, none RUNNING."""
    launcher = launch_until_two_train(sweep, [*GRID, "train.steps=3000", "hydra.launcher.n_jobs=2"])
    try:
        os.killpg(launcher.pid, signum)
        output, _ = launcher.communicate(timeout=180)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signum, output
    runs = sweep.runs()
    assert not [r for r in runs if r.info.status == "RUNNING"], output[-3000:]
    killed = training_runs(sweep, f"failed: Terminated: killed by signal {signal.SIGTERM}")
    assert len(killed) == 2, ([r.data.tags.get(names.TAG_STATUS) for r in runs], output[-4000:])


def test_identical_points_of_one_grid_run_once(sweep):
    result = sweep.run("sparsity.density=1,1.0,0.5", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    finished = training_runs(sweep)
    assert sorted(float(r.data.params["sparsity.density"]) for r in finished) == [0.5, 1.0]
    (skipped,) = [r for r in sweep.runs() if r.data.tags.get(names.TAG_STATUS, "").startswith("skipped")]
    dense = next(r for r in finished if float(r.data.params["sparsity.density"]) == 1.0)
    assert skipped.data.tags[names.TAG_STATUS] == f"skipped: duplicate of {dense.info.run_id}"
    assert "2 finished, 1 skipped" in result.stdout


@pytest.mark.slow  # two multiruns of three and four points
def test_extra_grids_add_points(sweep):
    """`extra_grids` adds points to the `params` grid, as the quick grid's extra seeds do."""
    result = sweep.run("+hydra.sweeper.params={sparsity.density: '1,0.5'}",
                       "+hydra.sweeper.extra_grids=[{sparsity.density: 1, seed: '1,2'}]", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    points = sorted((float(r.data.params["sparsity.density"]), int(r.data.params["seed"])) for r in training_runs(sweep))
    assert points == [(0.5, 0), (1.0, 0), (1.0, 1), (1.0, 2)]


def test_seed_offset_shifts_the_seed_and_a_seed_is_one_point(sweep):
    """`seed_offset=3` runs the grid's seed 1 as seed 4 (label, params, the identity); seed 4 asked for directly
    afterwards is the same point: skipped, not trained again. (Every seed of a grid: tests/test_grids.py.)"""
    result = sweep.run("seed=1", "seed_offset=3", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = training_runs(sweep)
    assert (run.data.params["seed"], run.data.params["seed_offset"]) == ("4", "3")
    assert run.info.run_name.startswith("w1-d1-s4 ")
    result = sweep.run("seed=4", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(training_runs(sweep)) == 1 and "1 skipped" in result.stdout


def test_a_run_whose_process_was_killed_is_closed_by_the_next_sweep(sweep):
    """SIGKILL cannot be caught: the next sweep finds the run RUNNING with its process gone and fails it."""
    cfg = tracking_config(sweep.uri, flush_every=10)
    opener = textwrap.dedent(f"""
        import time
        from omegaconf import OmegaConf
        from sweep.tracking import JobRun
        cfg = OmegaConf.create({OmegaConf.to_container(cfg)!r})
        with JobRun(cfg, "doomed", None, {{}}) as run:
            print(run.run_id, flush=True)
            time.sleep(600)
    """)
    doomed = subprocess.Popen([sys.executable, "-c", opener], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    run_id = doomed.stdout.readline().strip()
    doomed.kill()
    doomed.wait()
    assert sweep.client.get_run(run_id).info.status == "RUNNING"
    assert tracking.close_orphaned_runs(cfg.tracking) == [run_id]
    closed = sweep.client.get_run(run_id)
    assert closed.info.status == "FAILED" and "killed" in closed.data.tags[names.TAG_STATUS]
