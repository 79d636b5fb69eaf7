"""Re-pruning a stored checkpoint: a new prune-stage run, or a clear error and an untouched store."""

import hashlib
import subprocess
import sys

import pandas as pd
import pytest

from conftest import PROJECT_ROOT
from sweep import names


def reprune(sweep, *args):
    cmd = [sys.executable, "-m", "sweep.orchestration.reprune", *args, f"tracking.uri={sweep.uri}"]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import Sweep

    sweep = Sweep(tmp_path_factory.mktemp("reprune"))
    result = sweep.run("sparsity.density=0.5", "tasks.names=[else_elif]")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = sweep.runs()
    return sweep, run


def test_reprune_logs_a_prune_stage_run_that_carries_the_training(trained):
    sweep, train_run = trained
    result = reprune(sweep, train_run.info.run_id, "prune.ablation=zero", "tasks.names=[else_elif]")
    assert result.returncode == 0, result.stderr[-3000:]
    (new,) = [r for r in sweep.runs() if r.data.tags.get(names.TAG_STAGE) == "prune"]
    assert new.info.status == "FINISHED" and new.data.tags[names.TAG_STATUS] == names.STATUS_FINISHED
    assert new.data.tags[names.TAG_TRAIN_RUN] == train_run.info.run_id
    assert new.data.tags[names.TAG_KIND] == names.KIND_JOB
    assert new.data.params["prune.ablation"] == "zero" and new.data.params["sparsity.density"] == "0.5"
    assert new.data.tags[names.TAG_CONFIG_HASH] != train_run.data.tags[names.TAG_CONFIG_HASH]
    for carried in (names.CAPABILITY_VAL_LOSS, names.MODEL_NONZERO_PARAMS, names.COLLAPSE_DEAD_BY_WEIGHT):
        assert new.data.metrics[carried] == train_run.data.metrics[carried]
    assert names.circuit_metric("else_elif", "full_loss") in new.data.metrics
    assert names.circuit_metric("lambda_func", "full_loss") not in new.data.metrics
    # the unpruned model's task loss does not depend on how pruning ablates
    full = names.circuit_metric("else_elif", "full_loss")
    assert new.data.metrics[full] == pytest.approx(train_run.data.metrics[full])
    files = {a.path for a in sweep.client.list_artifacts(new.info.run_id, "circuits")}
    assert names.circuit_artifact("else_elif", "json") in files


@pytest.mark.parametrize("case", ["missing_run", "no_checkpoint", "model_override", "bad_ablation", "bad_target"])
def test_reprune_bad_input(trained, case):
    sweep, train_run = trained
    run_id = train_run.info.run_id
    if case == "no_checkpoint":
        experiment = sweep.client.get_experiment_by_name("frontier").experiment_id
        run_id = sweep.client.create_run(experiment, tags={names.TAG_KIND: "note"}).info.run_id
    before = hashlib.sha256(sweep.db.read_bytes()).hexdigest()
    runs_before = len(sweep.runs())
    args = {"missing_run": ["0123456789abcdef"], "no_checkpoint": [run_id],
            "model_override": [run_id, "model.width_mult=4"], "bad_ablation": [run_id, "prune.ablation=resample"],
            "bad_target": [run_id, "prune.target_loss=-1"]}[case]
    result = reprune(sweep, *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    expected = {"missing_run": "no such run", "no_checkpoint": "has no checkpoint",
                "model_override": "only prune.*", "bad_ablation": "prune.ablation", "bad_target": "prune.target_loss"}
    assert expected[case] in result.stderr
    assert hashlib.sha256(sweep.db.read_bytes()).hexdigest() == before
    assert len(sweep.runs()) == runs_before


@pytest.mark.slow  # a sweep and two re-prunes of it: over a minute on 2 cores
def test_reprune_a_whole_experiment_with_another_method_and_compare(sweep, tmp_path):
    result = sweep.run("sparsity.density=1,0.5", "tasks.names=[else_elif]", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    trained = {r.info.run_id for r in runs}
    # tiny models miss the quick target: a target just above their own task loss gives both methods a circuit
    target = max(r.data.metrics[names.circuit_metric("else_elif", "full_loss")] for r in runs) + 0.02
    common = ["--experiment", "frontier", f"prune.target_loss={target}", "tasks.names=[else_elif]"]

    for method in ("attribution", "mask", "greedy"):
        first = reprune(sweep, *common, f"prune.method={method}")
        assert first.returncode == 0, first.stderr[-3000:]
    repruned = [r for r in sweep.runs() if r.data.tags.get(names.TAG_STAGE) == "prune"]
    assert len(repruned) == 6 and {r.data.tags[names.TAG_TRAIN_RUN] for r in repruned} == trained
    assert {r.data.params["prune.method"] for r in repruned} == {"attribution", "mask", "greedy"}
    assert all(r.info.status == "FINISHED" and r.data.metrics[names.circuit_metric("else_elif", "solved")] == 1
               for r in repruned)
    parents = {r.data.tags[names.TAG_PARENT] for r in repruned}
    assert len(parents) == 3 and all(sweep.client.get_run(p).data.tags[names.TAG_KIND] == names.KIND_PARENT for p in parents)

    again = reprune(sweep, *common, "prune.method=attribution")  # matched by config hash: nothing left to do
    assert again.returncode == 0 and "re-pruning 0 of 2" in again.stdout
    assert len([r for r in sweep.runs() if r.data.tags.get(names.TAG_STAGE) == "prune"]) == 6

    out = tmp_path / "methods"
    compared = subprocess.run([sys.executable, "-m", "analysis", "methods", "--experiment", "frontier", "--out", str(out),
                               "--tracking-uri", sweep.uri], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr[-3000:]
    table = pd.read_csv(out / "methods.csv")
    assert set(table["method"]) == {"attribution, mean ablation", "mask, mean ablation", "greedy, mean ablation"}
    # per checkpoint and method one else_elif row: the mask re-prune stands for the training run's own pruning
    assert len(table[table["task"] == "else_elif"]) == 6
    overlap = pd.read_csv(out / "methods_overlap.csv")
    assert len(overlap) == 6 and overlap["jaccard"].between(0, 1).all()
    assert (overlap["shared"] <= overlap[["nodes_a", "nodes_b"]].min(axis=1)).all()
    solved = table[table["task"] == "else_elif"].set_index(["checkpoint", "method"])["nodes"]
    for _, row in overlap.iterrows():  # the node sets read back from the circuit artifacts match the metrics
        assert row["nodes_a"] == solved[(row["checkpoint"], row["method_a"])]
        assert row["nodes_b"] == solved[(row["checkpoint"], row["method_b"])]
    assert (out / "methods.png").stat().st_size > 10_000 and "overlap attribution" in compared.stdout
    # each pair taken apart on its checkpoint: sizes as in the overlap table, one verdict each
    apart = pd.read_csv(out / "methods_disagreement.csv")
    both = apart.merge(overlap, on=["checkpoint", "task", "method_a", "method_b"], suffixes=("", "_overlap"))
    assert len(apart) == len(both) == 6
    assert (both["nodes_a"] == both["nodes_a_overlap"]).all() and (both["shared"] == both["shared_overlap"]).all()
    assert apart["verdict"].notna().all() and (apart["target_loss"] == target).all()
    assert (apart["shared_reaches"] == (apart["shared_loss"] <= target)).all()
    assert "taken apart (2 pairs)" in compared.stdout


def test_reprune_an_unknown_experiment(trained):
    sweep, _ = trained
    before = hashlib.sha256(sweep.db.read_bytes()).hexdigest()
    result = reprune(sweep, "--experiment", "nope", "prune.ablation=zero")
    assert result.returncode == 2 and "EXPERIMENT='nope'" in result.stderr and "frontier" in result.stderr
    assert hashlib.sha256(sweep.db.read_bytes()).hexdigest() == before


def test_task_loss_table_of_an_experiment(trained):
    sweep, _ = trained
    cmd = [sys.executable, "-m", "sweep.orchestration.task_losses", "--tracking-uri", sweep.uri, "--tasks", "else_elif,lambda_func"]
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary, table = result.stdout.strip().split("\n\n")
    header, _, *rows = table.splitlines()
    assert header == "| task | cue distance (bytes) | w1-d0.5-s0 |"
    assert [row.split("|")[1].strip() for row in rows] == ["else_elif", "lambda_func"]
    assert [row.split("|")[2].strip() for row in rows] == ["0 (0-0) last token", "1 (1-1)"]
    losses = [float(row.split("|")[3]) for row in rows]
    assert all(0 < loss < 20 for loss in losses)
    (counts,) = summary.splitlines()[2:]  # one checkpoint: its tasks below 0.3 and 0.15; none has its cue 2 back
    assert [c.strip() for c in counts.split("|")[1:5]] == [
        "w1-d0.5-s0", str(sum(loss < 0.3 for loss in losses)), str(sum(loss < 0.15 for loss in losses)), "0"]
    missing = subprocess.run([*cmd[:3], "--experiment", "nope", *cmd[3:]], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "--experiment='nope'" in missing.stderr


@pytest.mark.slow  # a sweep and a re-prune of its experiment: keeps make test short
def test_reprune_of_an_experiment_goes_past_a_bad_checkpoint_and_lists_it(sweep):
    result = sweep.run("sparsity.density=1,0.5", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    broken, good = sorted(jobs, key=lambda r: r.data.params["sparsity.density"])
    checkpoint = sweep.client.download_artifacts(broken.info.run_id, names.ARTIFACT_CHECKPOINT, str(sweep.tmp))
    local = next((sweep.tmp / "mlartifacts").rglob(f"{broken.info.run_id}/artifacts/{names.ARTIFACT_CHECKPOINT}"))
    local.write_bytes(b"not a checkpoint" + open(checkpoint, "rb").read()[:100])  # garbage where the weights were
    result = reprune(sweep, "--experiment", "frontier", "prune.ablation=zero", "tasks.names=[else_elif]")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "re-pruned 1 runs of 'frontier'" in result.stdout
    assert f"RUN='{broken.info.run_id}'" in result.stderr and "checkpoint cannot be loaded" in result.stderr
    (new,) = [r for r in sweep.runs() if r.data.tags.get(names.TAG_STAGE) == "prune"]
    assert new.data.tags[names.TAG_TRAIN_RUN] == good.info.run_id and new.info.status == "FINISHED"
    result = reprune(sweep, broken.info.run_id, "prune.ablation=zero")  # the run alone: bad input
    assert result.returncode == 2 and "checkpoint cannot be loaded" in result.stderr and "Traceback" not in result.stderr
