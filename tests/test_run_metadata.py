"""What a researcher sees of a sweep in MLflow's UI: descriptions, tags, params, dataset input, system
metrics, live metrics and the parent's table, on a real multirun and real stores."""

import json
import math
import time
from pathlib import Path

from conftest import tracking_config
from sweep import names
from sweep.orchestration.callbacks import MLFLOW_TAG_LIMIT, sweep_description, summary_rows
from sweep.orchestration.job import describe_outcome
from sweep.tracking import JobRun, git_commit


def by_kind(runs, kind):
    return [r for r in runs if r.data.tags.get(names.TAG_KIND) == kind]


def test_a_sweep_describes_itself_in_the_store(sweep, tmp_path):
    """A grid with an invalid point, then a rerun of one finished point (skipped)."""
    result = sweep.run("sparsity.density=1,0.5,0.05", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = sweep.client.get_experiment_by_name("frontier")
    assert experiment.tags[names.TAG_EXPERIMENT_KIND] == names.EXPERIMENT_KIND  # the UI opens on the runs
    assert experiment.tags[names.TAG_DESCRIPTION].startswith("Sparsity x width sweep")
    jobs = by_kind(sweep.runs(), names.KIND_JOB)
    assert len(jobs) == 2
    for job in jobs:
        tags, params = job.data.tags, job.data.params
        density = params["sparsity.density"].removesuffix(".0")
        assert tags[names.TAG_DESCRIPTION].startswith(f"w1-d{density}-s0 ")
        assert f"val loss {job.data.metrics[names.CAPABILITY_VAL_LOSS]:.3f}" in tags[names.TAG_DESCRIPTION]
        assert "tasks" in tags[names.TAG_DESCRIPTION] and "control" in tags[names.TAG_DESCRIPTION]
        assert tags[names.TAG_POINT].startswith(f"w1-d{density} ") and "-s0" not in tags[names.TAG_POINT]
        assert params["model.d_model"] == "16" and params["data.corpus"] == tags[names.TAG_CORPUS_HASH]
        paths = {k: v for k, v in params.items() if v.startswith(("/", "sqlite:///", "file:"))}
        assert not paths, paths  # no machine path in params; config.yaml keeps them
        assert tags[names.TAG_SOURCE_NAME] == names.SOURCE_SWEEP
        assert tags[names.TAG_SOURCE_GIT_COMMIT] == tags[names.TAG_GIT_COMMIT] == git_commit()
        (dataset,) = job.inputs.dataset_inputs
        assert dataset.dataset.digest == tags[names.TAG_CORPUS_HASH]
        assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "training")]
        edges = job.data.metrics[names.EDGES_GEOMEAN]
        log10 = job.data.metrics[names.LOG10_EDGES_GEOMEAN]
        assert (math.isnan(edges) and math.isnan(log10)) or log10 == math.log10(edges)

    (parent,) = by_kind(sweep.runs(), names.KIND_PARENT)
    assert parent.data.params["sweep.sparsity.density"] == "0.5, 1"  # the valid points' values
    assert parent.data.params["sweep.model.d_model"] == "16" and parent.data.params["sweep.points"] == "3"
    assert not any("sqlite:///" in v for v in parent.data.params.values())
    described = parent.data.tags[names.TAG_DESCRIPTION]
    assert "3 points: 2 finished, 1 invalid" in described
    for job in jobs:  # every point a row of a markdown table, its run a link the UI follows
        link = f"#/experiments/{experiment.experiment_id}/runs/{job.info.run_id}?workflowType=machine_learning"
        assert f"[{job.info.run_id[:8]}]({link})" in described
    artifacts = {a.path for a in sweep.client.list_artifacts(parent.info.run_id)}
    assert {names.ARTIFACT_PLAN, names.ARTIFACT_MULTIRUN_CONFIG, names.ARTIFACT_SUMMARY,
            names.ARTIFACT_SUMMARY_TABLE} <= artifacts
    table = table_rows(sweep, parent, tmp_path / "first")
    assert sorted(r["status"] for r in table) == ["finished", "finished", "invalid"]
    invalid = next(r for r in table if r["status"] == "invalid")
    assert "sparsity.density" in invalid["reason"] and invalid["run_id"] is None
    assert sorted(r["label"].split()[0] for r in table) == ["w1-d0.05-s0", "w1-d0.5-s0", "w1-d1-s0"]  # as runs are named
    plan = json.loads(Path(sweep.client.download_artifacts(parent.info.run_id, names.ARTIFACT_PLAN,
                                                           str(tmp_path / "plan"))).read_text())
    assert sorted(p["action"] for p in plan) == ["invalid", "run", "run"]

    result = sweep.run("sparsity.density=1", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (rerun,) = [p for p in by_kind(sweep.runs(), names.KIND_PARENT) if p.info.run_id != parent.info.run_id]
    (skipped,) = table_rows(sweep, rerun, tmp_path / "second")
    dense = next(j for j in jobs if j.data.params["sparsity.density"] == "1.0")
    assert skipped["status"] == "skipped" and skipped["reason"] == f"duplicate of {dense.info.run_id}"


def table_rows(sweep, parent, where: Path) -> list[dict]:
    """The parent's summary table as MLflow's log_table wrote it (the UI reads the same file)."""
    path = sweep.client.download_artifacts(parent.info.run_id, names.ARTIFACT_SUMMARY_TABLE, str(where))
    table = json.loads(Path(path).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def test_metrics_reach_the_store_on_a_timer_while_a_job_runs(sweep):
    """A job that logs less than flush_every still shows its curves before it ends."""
    cfg = tracking_config(sweep.uri, flush_every=1000, flush_interval_s=0.2, system_metrics=False)
    with JobRun(cfg, "timer", None, {}) as run:
        run.log_metrics({"train/loss": 3.0}, step=1)
        assert sweep.client.get_run(run.run_id).data.metrics == {}  # buffered: below the count, within the time
        time.sleep(0.3)
        run.log_metrics({"train/loss": 2.5}, step=2)
        history = sweep.client.get_metric_history(run.run_id, "train/loss")
        assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.5)]  # in the store, the run still open


def test_system_metrics_are_sampled_while_a_run_is_open(sweep, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's own setting; 10 s in a sweep
    with JobRun(tracking_config(sweep.uri), "system", None, {}) as run:
        time.sleep(1.0)
    metrics = sweep.client.get_run(run.run_id).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0
    off = tracking_config(sweep.uri, system_metrics=False)
    with JobRun(off, "no system", None, {}) as quiet:
        time.sleep(0.5)
    assert not any(k.startswith("system/") for k in sweep.client.get_run(quiet.run_id).data.metrics)


def test_a_job_description_says_what_it_solved_with_edges():
    metric = names.circuit_metric
    circuits = {metric("a", "solved"): 1.0, metric("a", "edges"): 1234.0, metric("b", "solved"): 0.0,
                metric("b", "edges"): math.nan, metric(names.CONTROL, "solved"): 0.0,
                metric(names.CONTROL, "edges"): math.nan, names.EDGES_GEOMEAN: 1234.0}
    assert describe_outcome("w2-d0.06-s1", 1.23456, circuits) == (
        "w2-d0.06-s1: val loss 1.235; solved 1/2 tasks: a 1,234 edges; not solved: b; control not solved (as it should)")
    circuits[metric(names.CONTROL, "solved")], circuits[metric(names.CONTROL, "edges")] = 1.0, 40.0
    assert describe_outcome("w1-d1-s0", None, circuits).endswith("control solved with 40 edges (a circuit that fits noise)")


def test_a_large_grid_s_description_fits_a_tag_and_points_to_the_table():
    results = [{"point": f"model.width_mult=1 sparsity.density={d / 1000} seed=0", "status": "finished",
                "val_loss": 2.0, "edges_geomean": math.nan, "run_id": f"{d:08x}{'a' * 24}"} for d in range(1, 301)]
    rows = summary_rows(results)
    assert rows[0]["edges_geomean"] is None  # NaN is not JSON: the UI's table would not parse
    text = sweep_description("paper", {"finished": 300}, "frontier", rows, "7")
    assert len(text) <= MLFLOW_TAG_LIMIT - 500 and text.endswith("more points: see `summary.json`.")
    assert f"[00000001](#/experiments/7/runs/00000001{'a' * 24}?workflowType=machine_learning)" in text
