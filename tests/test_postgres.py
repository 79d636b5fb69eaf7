"""A sweep that logs to an MLflow tracking server on PostgreSQL over HTTP (`make test-postgres`).

The module fixture starts a real PostgreSQL and a real `mlflow server` on it, the server exactly as
docker/compose.yaml's mlflow service runs it (tests/tracking_server.py), and takes both down afterwards,
whatever happened. The sweeps are the real `python -m sweep -m ...` with tiny models and
tracking.uri=http://127.0.0.1:<port>: runs and artifacts travel over HTTP only. The Optuna searches keep
their study in a database of its own on the same PostgreSQL (hydra.sweeper.storage=postgresql://...).
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from conftest import PROJECT_ROOT, Sweep
from sweep import names
from sweep.orchestration import search
from sweep.circuits import tasks
from test_search import STUDY, search_command
from tracking_server import MlflowServer, Postgres, env_file, free_port

pytestmark = pytest.mark.postgres
EXTRA_HOST = "login01:5000"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    settings = env_file()
    postgres = Postgres(settings["POSTGRES_USER"], settings["POSTGRES_PASSWORD"], settings["POSTGRES_DB"])
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), postgres)
    server.env["MLFLOW_EXTRA_ALLOWED_HOSTS"] = EXTRA_HOST  # as if docker/.env named a login node
    try:
        postgres.start()
        server.start()
        yield postgres, server
    finally:
        try:
            server.stop()
        finally:
            postgres.destroy()


def server_sweep(tmp_path, uri: str) -> Sweep:
    sweep = Sweep(tmp_path)
    sweep.uri = uri
    return sweep


def assert_bad_input_before_anything(result, sweep: Sweep, *phrases: str) -> str:
    """Exit 2, one `error:` line naming tracking.uri, no job started and no local store instead."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"tracking.uri='{sweep.uri}'" in errors[0], errors[0]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    assert not list(sweep.tmp.glob(f"multirun/*/{names.RESULT_FILE}")), "a job ran"
    assert not list(sweep.tmp.rglob("*.db")), "something logged to a local store"
    return errors[0]


def test_two_point_sweep_logs_runs_and_artifacts_to_the_server(stack, tmp_path):
    _, server = stack
    sweep = server_sweep(tmp_path, server.url)
    result = sweep.run("sparsity.density=1,0.5", multirun=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + server.logs()
    assert "2 finished" in result.stdout
    assert f"open the runs: {server.url}/#/experiments/" in result.stdout  # the server's UI, not `make ui`

    runs = sweep.runs()
    (parent,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_PARENT]
    jobs = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_JOB]
    assert parent.info.status == "FINISHED" and len(jobs) == 2
    assert {j.data.params["sparsity.density"] for j in jobs} == {"1.0", "0.5"}
    for job in jobs:
        run_id = job.info.run_id
        assert job.info.status == "FINISHED" and job.data.tags[names.TAG_STATUS] == names.STATUS_FINISHED
        assert job.data.tags[names.TAG_PARENT] == parent.info.run_id
        assert set(job.data.metrics) >= set(names.STEP_METRICS) | set(names.TRAINING_SUMMARY_METRICS)
        assert [m.step for m in sweep.client.get_metric_history(run_id, names.VAL_LOSS)] == [10, 20, 30]
        # artifacts went to the server's artifact store (mlflow-artifacts:), not to a local folder
        assert job.info.artifact_uri.startswith("mlflow-artifacts:/"), job.info.artifact_uri
        top = {a.path for a in sweep.client.list_artifacts(run_id)}
        assert {names.ARTIFACT_CONFIG, names.ARTIFACT_CHECKPOINT_DIR, "circuits"} <= top
        assert names.ARTIFACT_CHECKPOINT in {a.path for a in sweep.client.list_artifacts(run_id, "checkpoint")}
        circuits = {a.path for a in sweep.client.list_artifacts(run_id, "circuits")}
        for task in (*tasks.SUITES["quick"], tasks.CONTROL):
            assert {names.circuit_artifact(task, "json"), names.circuit_artifact(task, "png")} <= circuits
        stored = server.artifacts / job.info.artifact_uri.removeprefix("mlflow-artifacts:/") / names.ARTIFACT_CHECKPOINT
        assert stored.stat().st_size > 0, stored

    assert not list(tmp_path.rglob("*.db")), "the sweep logged to a local store as well"
    # the same grid again: every point is found finished on the server and skipped
    again = sweep.run("sparsity.density=1,0.5", multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipping 2 of 2 points" in again.stdout


def test_unreachable_server_stops_the_sweep_before_any_job(stack, tmp_path):
    sweep = server_sweep(tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    result = sweep.run("sparsity.density=1,0.5", multirun=True)
    assert_bad_input_before_anything(result, sweep, "no MLflow tracking server answers there", "Connection refused")


def test_database_down_stops_the_sweep_before_any_job(stack, tmp_path):
    postgres, server = stack
    sweep = server_sweep(tmp_path, server.url)
    before = len(sweep.runs())
    postgres.stop()
    try:
        result = sweep.run("sparsity.density=1,0.5", multirun=True)
    finally:
        postgres.start_again()
    error = assert_bad_input_before_anything(result, sweep, "cannot use its database", "PostgreSQL")
    assert "Connection refused" in error or "connection" in error.lower(), error
    assert len(sweep.runs()) == before, "runs were created while the database was down"


def status_for_host(server: MlflowServer, host: str) -> int:
    request = urllib.request.Request(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_server_accepts_the_sweep_service_and_configured_names_only(stack):
    """The compose command's --allowed-hosts: the sweep service's `mlflow:<port>`, this host, and
    MLFLOW_EXTRA_ALLOWED_HOSTS; any other Host header is refused (DNS rebinding)."""
    _, server = stack
    assert status_for_host(server, f"mlflow:{server.port}") == 200
    assert status_for_host(server, f"127.0.0.1:{server.port}") == 200
    assert status_for_host(server, EXTRA_HOST) == 200
    assert status_for_host(server, "attacker.example:5000") == 403


def test_a_password_in_the_tracking_uri_is_never_stored_or_printed(stack, tmp_path):
    """tracking.uri straight to the database, with its password: the job connects with it, but params,
    config.yaml and the console show `***` (and so does an error naming the URI)."""
    postgres, _ = stack
    host = f"127.0.0.1:{postgres.port}/{postgres.database}"
    sweep = server_sweep(tmp_path, f"postgresql://{postgres.user}:{postgres.password}@{host}")
    experiment = sweep.client.create_experiment("secrets", artifact_location=(tmp_path / "artifacts").as_uri())
    result = sweep.run("sparsity.density=1", "tracking.experiment=secrets")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert postgres.password not in result.stdout + result.stderr
    (job,) = sweep.client.search_runs([experiment])
    assert job.data.params["tracking.uri"] == f"postgresql://{postgres.user}:***@{host}"
    assert all(postgres.password not in value for value in [*job.data.params.values(), *job.data.tags.values()])
    config = Path(sweep.client.download_artifacts(job.info.run_id, names.ARTIFACT_CONFIG, str(tmp_path))).read_text()
    assert f"postgresql://{postgres.user}:***@{host}" in config and postgres.password not in config

    wrong = Sweep(tmp_path / "wrong")
    wrong.uri = f"http://{postgres.user}:{postgres.password}@127.0.0.1:{free_port()}"  # nothing listens there
    result = wrong.run("sparsity.density=1", multirun=True)
    assert result.returncode == 2 and f"http://{postgres.user}:***@127.0.0.1" in result.stderr
    assert postgres.password not in result.stdout + result.stderr


def test_two_searches_at_once_share_one_study_without_training_a_point_twice(stack, tmp_path):
    """Two `make search` processes started together, same seed, on one study in PostgreSQL (one has the password
    in the URL, the other in PGPASSWORD), logging to the MLflow server: both exit 0, the study's budget (n_trials)
    is run once between them, at distinct points, each point trained by one MLflow run; the password is printed
    nowhere."""
    postgres, server = stack
    storage = postgres.create_database("optuna_two_searches")
    environments = {"first": (storage, os.environ),
                    "second": (postgres.url("optuna_two_searches", password=""),
                               {**os.environ, "PGPASSWORD": postgres.password})}
    sweep = server_sweep(tmp_path, server.url)
    n_trials, experiment = 4, "two-searches"
    # made here: two sweeps that both find no experiment of that name both create it, over HTTP (no lock)
    sweep.client.create_experiment(experiment)
    command = [f"hydra.sweeper.n_trials={n_trials}", f"tracking.experiment={experiment}"]
    searches = {}  # output file -> process; files, not pipes: a search blocked on a full pipe would hold the lock
    for folder, (url, env) in environments.items():
        with (tmp_path / f"{folder}.log").open("w") as log:
            searches[log.name] = subprocess.Popen(search_command(sweep, folder, *command, storage=url), env=env,
                                                  cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    for log, process in searches.items():
        process.wait(timeout=900)
        output = Path(log).read_text()
        assert process.returncode == 0, output[-5000:] + server.logs()
        assert postgres.password not in output

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = search.ran(study)
    assert len(trials) == n_trials and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n_trials, [t.params for t in trials]
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))

    jobs = [r for r in sweep.runs(experiment) if r.data.tags[names.TAG_KIND] == names.KIND_JOB]
    assert {j.data.tags[names.TAG_STATUS] for j in jobs} == {names.STATUS_FINISHED}  # none skipped or failed
    assert len({j.data.tags[names.TAG_CONFIG_HASH] for j in jobs}) == len(jobs) == n_trials
    by_run = {j.info.run_id: j for j in jobs}
    assert {t.user_attrs["run_id"] for t in trials} == set(by_run)
    for t in trials:
        tags = by_run[t.user_attrs["run_id"]].data.tags
        assert (tags[names.TAG_OPTUNA_STUDY], tags[names.TAG_OPTUNA_TRIAL]) == (STUDY, str(t.number))


def test_a_study_storage_that_cannot_serve_stops_the_search_before_anything(stack, tmp_path):
    """MLflow's own database (optuna cannot share its alembic_version table), and a wrong password: exit 2
    with one line that shows the storage without its password; no job, no optuna table in MLflow's database."""
    postgres, server = stack
    sweep = server_sweep(tmp_path, server.url)
    runs_before = len(sweep.runs())
    shown = f"hydra.sweeper.storage='postgresql://{postgres.user}:***@127.0.0.1:{postgres.port}/"
    wrong = postgres.url("optuna", password="not-the-password")
    for storage, phrase in ((postgres.url(), "a database of its own"), (wrong, "password authentication failed")):
        result = subprocess.run(search_command(sweep, "search", storage=storage), cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
        (error,) = [line for line in result.stderr.splitlines() if line.strip()]
        assert error.startswith(f"error: invalid config: {shown}") and phrase in error, error
        assert postgres.password not in result.stdout + result.stderr
        assert "not-the-password" not in result.stdout + result.stderr
    assert not (tmp_path / "search").exists() and len(sweep.runs()) == runs_before
    engine = sqlalchemy.create_engine(postgres.url(), poolclass=sqlalchemy.pool.NullPool)
    assert "studies" not in sqlalchemy.inspect(engine).get_table_names()
