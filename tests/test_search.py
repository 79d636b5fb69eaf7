"""The Optuna frontier search (`make search`, sweep/orchestration/search.py): real Hydra multiruns, a real study, real MLflow.

At TINY scale (30 steps) a model is at the unigram level and no better than chance on else_elif (task
loss 0.8-1.6 > ln 2), so any target below chance leaves every trial unsolved (told FAIL). The target
here (prune.target_loss=3, one task) is reached by every model, and by its empty circuit
(edges_geomean 1): the objectives are real metrics of real jobs, but this checks the search's
mechanics, not a real front.
"""

import csv
import subprocess
import sys

import optuna
import pytest

from conftest import PROJECT_ROOT
from sweep import names
from sweep.orchestration import search

STUDY = "tiny"


def search_command(sweep, sweep_dir: str, *overrides: str, storage: str | None = None) -> list[str]:
    """`python -m sweep -m experiment=search` with TINY jobs, its own sweep folder, and study STUDY in
    `storage` (default: optuna.db in the test's folder)."""
    args = [a for a in sweep.args() if not a.startswith("hydra.sweep.dir=")]
    storage = storage or f"sqlite:///{sweep.tmp / 'optuna.db'}"
    return [sys.executable, "-m", "sweep", "-m", *args, "experiment=search",
            "tasks.names=[else_elif]", "prune.target_loss=3",
            "model.width_mult=choice(1, 2)", f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.study_name={STUDY}", f"hydra.sweep.dir={sweep.tmp / sweep_dir}", *overrides]


def run_search(sweep, sweep_dir: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(search_command(sweep, sweep_dir, *overrides), cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=600)


def job_runs(sweep):
    return [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]


def non_dominated(runs) -> set[str]:
    """Run ids of the Pareto set, computed from the MLflow metrics alone."""
    points = {r.info.run_id: (r.data.metrics[names.CAPABILITY_VAL_LOSS], r.data.metrics[names.EDGES_GEOMEAN])
              for r in runs}
    return {i for i, p in points.items()
            if not any(all(q_ <= p_ for q_, p_ in zip(q, p)) and q != p for q in points.values())}


@pytest.mark.slow
def test_study_runs_resumes_reports_a_pareto_set_and_refuses_another_space(sweep):
    storage = f"sqlite:///{sweep.tmp / 'optuna.db'}"

    # 1. three trials on the joblib launcher, in batches of two (the cores) and one
    first = run_search(sweep, "first", "hydra.sweeper.n_trials=3", "hydra.sweeper.seed=1")  # trial 0 infeasible
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = job_runs(sweep)
    (parent,) = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_PARENT]
    assert len(jobs) == 3 and all(j.info.status == "FINISHED" for j in jobs)
    assert {j.data.tags[names.TAG_PARENT] for j in jobs} == {parent.info.run_id}
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = search.ran(study)
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    by_run = {j.info.run_id: j for j in jobs}
    for t in trials:  # each trial is one child run, told the child run's own metrics
        job = by_run[t.user_attrs["run_id"]]
        assert job.data.tags[names.TAG_OPTUNA_TRIAL] == str(t.number) and job.data.tags[names.TAG_OPTUNA_STUDY] == STUDY
        assert t.values == [job.data.metrics[names.CAPABILITY_VAL_LOSS], job.data.metrics[names.EDGES_GEOMEAN]]
        assert float(job.data.params["sparsity.density"]) == pytest.approx(t.params["sparsity.density"])
        assert job.data.params["model.width_mult"] == str(t.params["model.width_mult"])
    # an infeasible sample (density * d_model < sparsity.min_per_neuron) is told FAIL with the reason,
    # runs nothing and does not count towards n_trials
    skipped = [t for t in study.trials if t.user_attrs.get("fail_reason", "").startswith("infeasible")]
    assert skipped, "hydra.sweeper.seed=1 drew no infeasible point: pick another seed"
    assert all(t.state == optuna.trial.TrialState.FAIL and "run_id" not in t.user_attrs for t in skipped)
    assert all("sparsity.density" in t.user_attrs["fail_reason"] for t in skipped)
    assert "infeasible sample" in first.stderr and len(study.trials) == 3 + len(skipped)

    rows = list(csv.DictReader((sweep.tmp / "first" / search.PARETO_FILE).open()))
    assert rows and {r["run_id"] for r in rows} == non_dominated(jobs)
    for row in rows:
        metrics = by_run[row["run_id"]].data.metrics
        assert float(row[names.CAPABILITY_VAL_LOSS]) == metrics[names.CAPABILITY_VAL_LOSS]
        assert float(row[names.EDGES_GEOMEAN]) == metrics[names.EDGES_GEOMEAN]
        assert set(row) == {"trial", "model.width_mult", "sparsity.density", "train.lr", *search.OBJECTIVES, "run_id"}
    stable = sweep.tmp / f"{STUDY}-pareto.csv"
    assert stable.read_text() == (sweep.tmp / "first" / search.PARETO_FILE).read_text()
    assert f"pareto set: {stable}" in first.stdout and "3 finished" in first.stdout
    assert {a.path for a in sweep.client.list_artifacts(parent.info.run_id)} >= {search.PARETO_FILE}

    # 2. resumed with a larger budget: exactly the missing trial runs (any launcher: basic, in-process)
    second = run_search(sweep, "second", "hydra.sweeper.n_trials=4", "hydra/launcher=basic")
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(job_runs(sweep)) == 4 and len(search.ran(optuna.load_study(study_name=STUDY, storage=storage))) == 4
    assert "1 finished" in second.stdout

    # 3. the same budget again: nothing runs, nothing is logged, the Pareto set is reported
    runs_before = len(sweep.runs())
    third = run_search(sweep, "third", "hydra.sweeper.n_trials=4")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "nothing to run" in third.stdout and f"pareto set: {stable}" in third.stdout
    assert len(sweep.runs()) == runs_before
    assert list(csv.DictReader(stable.open()))

    # 4. another search space for the same study: one clear message, exit 2, before anything is logged
    trials_before = len(optuna.load_study(study_name=STUDY, storage=storage).trials)
    other = run_search(sweep, "other", "hydra.sweeper.n_trials=5", "sparsity.density=tag(log, interval(0.05, 1.0))")
    assert other.returncode == 2, other.stderr[-3000:]
    (line,) = [x for x in other.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and f"hydra.sweeper.study_name='{STUDY}'" in line
    assert "sparsity.density" in line and "interval(0.05, 1.0)" in line
    assert len(sweep.runs()) == runs_before
    assert len(optuna.load_study(study_name=STUDY, storage=storage).trials) == trials_before
    assert not (sweep.tmp / "other").exists()
