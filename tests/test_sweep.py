"""Real Hydra runs of `python -m sweep` against a real SQLite MLflow store."""

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT, SMALL_CORPUS, Sweep
from sweep import names
from sweep.circuits import tasks
from sweep.points import templates_hash
from sweep.tracking import MLFLOW_RUN_NAME_LIMIT, git_commit

STEP_METRICS = set(names.STEP_METRICS)
ONCE_METRICS = set(names.TRAINING_SUMMARY_METRICS)


def metric_history(client, run_id):
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
            for k in STEP_METRICS | ONCE_METRICS}


def test_two_point_multirun_logs_two_children_under_one_parent(sweep, tmp_path):
    result = sweep.run("sparsity.density=1,0.5", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sweep.runs()
    parents = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_PARENT]
    jobs = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    assert len(parents) == 1 and len(jobs) == 2
    assert parents[0].info.status == "FINISHED"
    assert "2 finished" in result.stdout

    for job in jobs:
        tags, params, metrics = job.data.tags, job.data.params, job.data.metrics
        assert tags[names.TAG_PARENT] == parents[0].info.run_id
        assert tags[names.TAG_STATUS] == names.STATUS_FINISHED and job.info.status == "FINISHED"
        # the tiny overrides make a name over PostgreSQL's VARCHAR(250); it is cut, keeping the point's label
        assert len(job.info.run_name) == MLFLOW_RUN_NAME_LIMIT and job.info.run_name.endswith("...")
        assert job.info.run_name.startswith(f"w1-d{params['sparsity.density'].removesuffix('.0')}-s0 ")
        assert len(tags[names.TAG_CONFIG_HASH]) == 16 and len(tags[names.TAG_CORPUS_HASH]) == 16
        assert tags.get(names.TAG_GIT_COMMIT) == git_commit()
        assert params["model.base_width"] == "16" and params["train.steps"] == "30"
        assert set(metrics) >= STEP_METRICS | ONCE_METRICS
        history = sweep.client.get_metric_history(job.info.run_id, names.TRAIN_LOSS)
        assert [m.step for m in history] == [5, 10, 15, 20, 25, 30]
        assert [m.step for m in sweep.client.get_metric_history(job.info.run_id, names.VAL_LOSS)] == [10, 20, 30]
        assert metrics[names.CAPABILITY_BIGRAM] < metrics[names.CAPABILITY_UNIGRAM]
        assert metrics[names.MODEL_NONZERO_PARAMS] <= metrics[names.MODEL_TOTAL_PARAMS]

        for task in (*tasks.SUITES["quick"], "control"):
            for what in names.CIRCUIT_PER_TASK:
                assert names.circuit_metric(task, what) in metrics, (task, what)
        for aggregate in (names.EDGES_GEOMEAN, names.NODES_GEOMEAN, names.EDGES_AT_F80_GEOMEAN, names.TASKS_SOLVED_FRAC, names.TIME_PRUNE,
                          names.CONTROL_EDGES, names.CONTROL_SOLVED):
            assert aggregate in metrics, aggregate
        circuit_files = {a.path for a in sweep.client.list_artifacts(job.info.run_id, "circuits")}
        for task in (*tasks.SUITES["quick"], tasks.CONTROL):
            assert {names.circuit_artifact(task, suffix) for suffix in ("json", "png", "curve.json", "curve.png")} <= circuit_files
        first = tasks.SUITES["quick"][0]
        record_path = sweep.client.download_artifacts(job.info.run_id, names.circuit_artifact(first, "json"), str(tmp_path))
        record = json.loads(Path(record_path).read_text())
        assert record["task"] == first
        assert record["full_loss"] == metrics[names.circuit_metric(first, "full_loss")]
        curve_path = sweep.client.download_artifacts(job.info.run_id, names.circuit_artifact(first, "curve.json"),
                                                     str(tmp_path))
        curve = json.loads(Path(curve_path).read_text())  # loss and f against nodes and edges (contract.md)
        assert curve["curve_columns"] == ["nodes", "edges", "loss", "f", "search"]
        assert "baseline" in {row[-1] for row in curve["curve"]} and all(len(r) == 5 for r in curve["curve"])
        assert curve["full_loss"] == metrics[names.circuit_metric(first, "full_loss")]
        artifacts = {a.path for a in sweep.client.list_artifacts(job.info.run_id)}
        assert names.ARTIFACT_CONFIG in artifacts and names.ARTIFACT_CHECKPOINT_DIR in artifacts
        path = sweep.client.download_artifacts(job.info.run_id, names.ARTIFACT_CHECKPOINT, str(tmp_path))
        stored = torch.load(path, weights_only=True)  # self-describing: the shape, the step, the point
        assert "blocks.0.fc_in.weight" in stored["state_dict"] and stored["step"] == 30
        assert stored["config_hash"] == job.data.tags[names.TAG_CONFIG_HASH] and stored["shape"]["d_model"] == 16

    by_density = {float(j.data.params["sparsity.density"]): j for j in jobs}
    dense, sparse = by_density[1.0], by_density[0.5]
    assert dense.data.tags[names.TAG_CONFIG_HASH] != sparse.data.tags[names.TAG_CONFIG_HASH]
    assert sparse.data.metrics[names.MODEL_NONZERO_PARAMS] < dense.data.metrics[names.MODEL_NONZERO_PARAMS]
    assert sparse.data.metrics[names.DENSITY_HIDDEN] == pytest.approx(0.5)


@pytest.mark.slow  # three jobs
def test_same_seed_gives_identical_metrics(tmp_path):
    histories = []
    for name in ("a", "b", "c"):
        sweep = Sweep(tmp_path / name)
        seed = 1 if name == "c" else 0
        result = sweep.run("sparsity.density=0.5", f"seed={seed}")
        assert result.returncode == 0, result.stderr[-3000:]
        (job,) = sweep.runs()
        histories.append(metric_history(sweep.client, job.info.run_id))
        if name != "c":
            checkpoint = sweep.client.download_artifacts(job.info.run_id, names.ARTIFACT_CHECKPOINT, str(tmp_path / name))
            histories[-1]["weights"] = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    a, b, c = histories
    for key in STEP_METRICS | {names.CAPABILITY_VAL_LOSS}:
        assert a[key] == b[key], key
    assert a["weights"] == b["weights"]
    assert a[names.TRAIN_LOSS] != c[names.TRAIN_LOSS]  # the seed matters


def test_invalid_point_in_a_multirun_is_skipped_and_the_rest_runs(sweep):
    # base_width 16: density 0.05 keeps 0.8 weights per unit < j = 1, so that point is infeasible
    result = sweep.run("sparsity.density=1,0.05", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping invalid point" in result.stderr and "sparsity.density=0.05" in result.stderr
    jobs = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    assert [j.data.params["sparsity.density"] for j in jobs] == ["1.0"]
    assert "1 finished" in result.stdout and "1 invalid" in result.stdout


def running_runs(db) -> int:
    """Runs marked RUNNING, read without MLflow: a second client must not race the job to create the store."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return connection.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:  # no file or no tables yet
        return 0


@pytest.mark.serial
def test_killed_job_ends_failed_not_running(sweep):
    """SIGTERM mid-training: the run is closed FAILED with the reason, never left RUNNING."""
    cmd = [sys.executable, "-m", "sweep", *sweep.args("train.steps=100000")]
    process = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not running_runs(sweep.db):
            time.sleep(0.5)
        time.sleep(2)  # inside the training loop by now
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0
    (job,) = sweep.runs()
    assert job.info.status == "FAILED", stderr[-2000:]
    assert job.data.tags[names.TAG_STATUS].startswith("failed: Terminated: killed by signal 15")


def test_sigterm_stops_a_job_at_its_next_step_and_a_second_one_changes_nothing(monkeypatch):
    """The handler only records the stop (raising from it can land where the exception is swallowed);
    the job raises `Terminated` at its next step. A second signal (the whole process group signalled, as
    `docker stop` through an init does, then the sweep's own SIGTERM) cannot interrupt closing the run."""
    from sweep import lifecycle
    from sweep.orchestration.job import exit_on_sigterm

    monkeypatch.setattr(lifecycle, "_stop_signal", None)
    monkeypatch.setattr(lifecycle, "_job_running", True)  # (with no job running, the process exits)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        exit_on_sigterm()
        lifecycle.raise_if_stopped()  # no stop asked: nothing happens
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler has run by now, and raised nothing
        with pytest.raises(lifecycle.Terminated, match="killed by signal 15") as stop:
            lifecycle.raise_if_stopped()
        assert stop.value.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # the second one: still nothing raised here
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_crashing_job_does_not_stop_the_others(sweep):
    """A diverging job (absurd LR) fails with its reason; the other point finishes; exit status 1."""
    result = sweep.run("train.lr=0.001,1e30", multirun=True)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 failed" in result.stdout and "1 finished" in result.stdout
    runs = sweep.runs()
    jobs = {r.data.params["train.lr"]: r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_JOB}
    assert jobs["0.001"].info.status == "FINISHED"
    assert jobs["1e+30"].info.status == "FAILED"
    assert jobs["1e+30"].data.tags[names.TAG_STATUS].startswith("failed: FloatingPointError: training diverged")
    (parent,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_PARENT]
    assert parent.info.status == "FAILED"


def start_together(tmp_path, *points: str) -> tuple[Sweep, list[tuple[int, str, str]]]:
    """Multiruns of `points` (one each) started at once into one store that does not exist yet."""
    sweeps = [Sweep(tmp_path / f"s{i}") for i in range(len(points))]
    for s in sweeps[1:]:
        s.db, s.uri = sweeps[0].db, sweeps[0].uri
    # one corpus cache too: its path is still part of a point's identity (issue 16, case 12)
    started = [subprocess.Popen([sys.executable, "-m", "sweep", "-m", *s.args(p), f"data.cache_dir={tmp_path / 'cache'}"],
                                cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for s, p in zip(sweeps, points)]
    outputs = [p.communicate(timeout=600) for p in started]
    return sweeps[0], [(p.returncode, *output) for p, output in zip(started, outputs)]


@pytest.mark.slow  # several real sweeps at once: keeps make test short
def test_two_sweeps_started_together_on_a_new_store_both_succeed(tmp_path):
    """The store's schema and the experiment are created once (a lock beside the file); both sweeps
    finish with their own parent."""
    sweep, outcomes = start_together(tmp_path, "sparsity.density=1", "sparsity.density=0.5")
    for returncode, out, err in outcomes:
        assert returncode == 0 and "total: 1 finished" in out, out[-2000:] + err[-3000:]
    runs = sweep.runs()
    parents = {r.info.run_id for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_PARENT}
    jobs = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    assert len(parents) == 2 and len(jobs) == 2 and {j.data.tags[names.TAG_PARENT] for j in jobs} == parents
    assert all(j.info.status == "FINISHED" for j in jobs)
    assert len(sweep.client.search_experiments()) == 2  # Default and frontier, once each


@pytest.mark.slow  # several real sweeps at once: keeps make test short
def test_two_sweeps_of_the_same_points_started_together_train_each_point_once(tmp_path):
    """Each job claims its point under the store's lock: the second finds it held (running in a live
    process, or finished) and records `skipped: duplicate of <run>` instead of training it again."""
    sweep, outcomes = start_together(tmp_path, "sparsity.density=1,0.5", "sparsity.density=1,0.5")
    assert all(returncode == 0 for returncode, _, _ in outcomes), [o[1][-1500:] + o[2][-1500:] for o in outcomes]
    jobs = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    trained = [j for j in jobs if j.data.tags[names.TAG_STATUS] == names.STATUS_FINISHED]
    skipped = [j for j in jobs if j.data.tags[names.TAG_STATUS].startswith(names.STATUS_SKIPPED)]
    assert sorted(j.data.params["sparsity.density"] for j in trained) == ["0.5", "1.0"]  # each point once
    assert len(skipped) == 2 and {s.data.tags[names.TAG_STATUS].split()[-1] for s in skipped} == \
        {t.info.run_id for t in trained}


@pytest.mark.slow  # three sweeps, one from a copy of the project
def test_the_same_point_from_another_checkout_trains_once(sweep, tmp_path):
    """A point's identity leaves out where things are: a copy of the project at another path, with its own
    cache folder, its own task-template folder and a copy of the corpus elsewhere, skips the point the first
    checkout finished (issue 16 case 12); a corpus with other content is another point."""
    first = sweep.run("seed=0", multirun=True)
    assert first.returncode == 0, first.stderr[-3000:]
    other = tmp_path / "elsewhere"
    for folder in ("sweep", "conf", "hydra_plugins"):
        shutil.copytree(PROJECT_ROOT / folder, other / folder, ignore=shutil.ignore_patterns("__pycache__"))
    corpus = shutil.copytree(SMALL_CORPUS, tmp_path / "corpus-copy")

    def from_other_checkout(source: Path) -> subprocess.CompletedProcess:
        args = [a for a in sweep.args("seed=0", f"data.cache_dir={tmp_path / 'cache2'}") if not a.startswith("data.source=")]
        return subprocess.run([sys.executable, "-m", "sweep", "-m", *args, f"data.source={source}"], cwd=other,
                              capture_output=True, text=True, timeout=600)

    second = from_other_checkout(corpus)
    assert second.returncode == 0, second.stderr[-3000:]
    jobs = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    trained = [r for r in jobs if r.data.tags.get(names.TAG_STATUS) == names.STATUS_FINISHED]
    skipped = [r for r in jobs if r.data.tags.get(names.TAG_STATUS, "").startswith(names.STATUS_SKIPPED)]
    assert len(trained) == 1 and len(skipped) == 1
    assert skipped[0].data.tags[names.TAG_STATUS].endswith(trained[0].info.run_id)
    (corpus / "extra.py").write_text("x = 1\n")  # other content at the same path: another point
    third = from_other_checkout(corpus)
    assert third.returncode == 0, third.stderr[-3000:]
    (new,) = [r for r in sweep.runs() if r.data.tags.get(names.TAG_STATUS) == names.STATUS_FINISHED
              and r.info.run_id != trained[0].info.run_id]
    config = OmegaConf.load(sweep.client.download_artifacts(new.info.run_id, names.ARTIFACT_CONFIG, str(sweep.tmp)))
    assert config.tasks.template_dir == str(other / "conf" / "task_templates")  # the copy ran (a path: not a param)
    assert "tasks.template_dir" not in new.data.params
    assert new.data.params["tasks.templates"] == templates_hash(other / "conf" / "task_templates")  # by content
