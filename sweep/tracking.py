"""MLflow: the store, the experiment, parent and child runs, batched metric writes."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pandas as pd
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from sweep import lifecycle, names
from sweep.corpus import source_roots
from sweep.paths import PROJECT_ROOT
from sweep.points import config_hash, run_params
from sweep.errors import ConfigError

MLFLOW_BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow's own limit)
MLFLOW_PARAM_BATCH_LIMIT = 100
MLFLOW_RUN_NAME_LIMIT = 250  # characters: runs.name is VARCHAR(250) on PostgreSQL/MySQL (SQLite does not check)
SYSTEM_METRICS_INTERVAL_S = 10  # MLflow's default sampling period of system/* (CPU, memory, GPU)
SERVER_PROBE_TIMEOUT_S = 15  # per request of the probe; MLflow's client would retry for minutes instead
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start and stop lines, per job
_server_problems: dict[str, str | None] = {}  # tracking server URI -> why it cannot be used (None: it works)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, or None for other stores."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def is_server(uri: str) -> bool:
    """An MLflow tracking server over HTTP(S), as opposed to a store the client opens itself."""
    return str(uri).startswith(("http://", "https://"))


REDACTED = "***"


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ***: what is logged, stored and printed of tracking.uri."""
    parts = urllib.parse.urlsplit(str(uri))
    if parts.password is None:
        return str(uri)
    user = urllib.parse.quote(parts.username or "", safe="")
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


SECRET_KEYS = ("tracking.uri", "hydra.sweeper.storage")  # URIs that may carry a password


def redacted(cfg: DictConfig, resolve: bool = True) -> DictConfig:
    """A copy of a config whose URIs carry no password (for params, config.yaml and the multirun's config);
    `resolve=False` keeps its interpolations (the multirun's config, as Hydra saves it)."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=resolve))
    for key in SECRET_KEYS:
        if isinstance(value := OmegaConf.select(copy, key, throw_on_resolution_failure=False), str):
            OmegaConf.update(copy, key, redact_uri(value))
    return copy


def check_experiment_name(name) -> None:
    """An experiment name is a name, never a path: it becomes a folder of the artifact store."""
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\") or name in (".", ".."):
        raise ConfigError("tracking.experiment", name, "allowed: a non-empty name without / or \\")


def check_tracking(tracking_cfg) -> None:
    """A local store's directory must exist or be creatable, and be writable (probed for real); a tracking
    server must answer and its database work (probed once per URI and process); the experiment's name
    must be a name. Messages show the URI without its password."""
    check_experiment_name(tracking_cfg.experiment)
    uri = tracking_cfg.uri
    shown = redact_uri(uri)
    db = sqlite_path(uri)
    if db is None:
        if is_server(uri):
            check_server(uri)
        elif not uri.startswith(("postgresql://", "mysql://")):
            raise ConfigError("tracking.uri", shown, "allowed: an absolute sqlite:///<path>.db, or an http(s) or SQL server URI")
        return
    if not db.is_absolute():
        raise ConfigError("tracking.uri", uri, "a SQLite store must be an absolute path (sqlite:////abs/path/mlflow.db)")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=db.parent):
            pass
    except OSError as e:
        raise ConfigError("tracking.uri", uri, f"directory {db.parent} is not writable ({e.strerror})") from None
    if db.is_file() and db.stat().st_size:
        _check_sqlite_store(db, uri, tracking_cfg.experiment)


def _check_sqlite_store(db: Path, uri: str, experiment: str) -> None:
    """An existing SQLite file must be a database, and the experiment's name not one deleted in it (MLflow
    keeps a deleted experiment's name: a new one of that name cannot be made). Read only, nothing created."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            stage = (connection.execute("SELECT lifecycle_stage, experiment_id FROM experiments WHERE name = ?",
                                        (experiment,)).fetchone() if "experiments" in tables else None)
    except sqlite3.OperationalError:  # locked by a writer, or busy: a database, judged by MLflow later
        return
    except sqlite3.DatabaseError as e:  # "file is not a database"
        raise ConfigError("tracking.uri", uri, f"{db} is not an SQLite database ({e}); allowed: an MLflow SQLite "
                                               "store, or a path where none exists yet") from None
    if stage and stage[0] == "deleted":
        raise ConfigError("tracking.experiment", experiment,
                          f"was deleted in {db} (MLflow keeps the name); allowed: another name, or restore it first: "
                          f"mlflow experiments restore --experiment-id {stage[1]}")


def check_server(uri: str) -> None:
    """Raise ConfigError unless the MLflow tracking server at `uri` answers and can read its store. Probed
    once per URI in a process (a sweep validates every point); never falls back to another store."""
    if uri not in _server_problems:
        _server_problems[uri] = _probe_server(uri)
    if problem := _server_problems[uri]:
        raise ConfigError("tracking.uri", redact_uri(uri), problem)


def _probe_server(uri: str) -> str | None:
    """Why the server at `uri` cannot be used, or None. Two requests without retries, with the credentials
    and TLS settings MLflow's client uses (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_TOKEN, ...):
    /health (the server process answers), then one experiment search (its database answers)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)

    def get(endpoint: str, **params):
        return http_request(creds, endpoint, "GET", max_retries=0, backoff_factor=0, timeout=SERVER_PROBE_TIMEOUT_S,
                            raise_on_status=False, params=params)

    try:
        health = get("/health")
        if health.status_code != 200:
            return (f"{uri}/health answered HTTP {health.status_code}: not an MLflow tracking server, or not "
                    f"ready; check the URI and the server's log")
        api = get("/api/2.0/mlflow/experiments/search", max_results=1)
    except MlflowException as e:
        return (f"no MLflow tracking server answers there ({_connection_error(str(e))}); start it (`make docker-up`"
                f" on the server, see README 'Team setup') or point tracking.uri at a running one")
    if api.status_code == 200:
        return None
    detail = _error_detail(api)
    if api.status_code == 403 and "host" in detail.lower():
        return (f"the server refuses this host name (HTTP 403: {detail}); add it to the server's allowed hosts "
                f"(MLFLOW_EXTRA_ALLOWED_HOSTS in docker/.env) or use a name it accepts")
    if api.status_code in (401, 403):
        return (f"the server refuses the request (HTTP {api.status_code}: {detail}); set MLFLOW_TRACKING_USERNAME "
                f"and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    if api.status_code >= 500:
        return (f"the tracking server answers but cannot use its database (HTTP {api.status_code}: {detail}); "
                f"is its database (PostgreSQL) up and reachable from the server?")
    return (f"the server answers but not as an MLflow tracking server (experiment search: HTTP {api.status_code}:"
            f" {detail}); check the URI")


def _connection_error(message: str) -> str:
    """`[Errno 111] Connection refused` out of requests' long exception text."""
    if "timed out" in message.lower():
        return f"no answer within {SERVER_PROBE_TIMEOUT_S} s"
    found = re.search(r"\[Errno -?\d+\] [^\"')(]+", message)
    return found.group(0).strip() if found else message[:300]


def _error_detail(response) -> str:
    """The first line of the server's error message (MLflow answers JSON: error_code, message)."""
    try:
        body = response.json()
        text = f"{body.get('error_code', '')}: {body.get('message', '')}".strip(": ")
    except ValueError:
        text = response.text
    return (text.strip().splitlines() or [response.reason or ""])[0][:300]


def artifact_location(tracking_cfg) -> str | None:
    """Absolute artifact folder for a new experiment on a local store (never relative to the cwd)."""
    db = sqlite_path(tracking_cfg.uri)
    return None if db is None else (db.parent / "mlartifacts" / tracking_cfg.experiment).as_uri()


def store_lock(uri: str) -> contextlib.AbstractContextManager:
    """A lock file beside a SQLite store (`mlflow.db.lock`): processes that create its schema, migrate it
    or create an experiment take turns (two sweeps started together on a new store raced there, and
    one failed with "table experiments already exists"). Other stores serialise this themselves."""
    db = sqlite_path(uri)
    return FileLock(f"{db}.lock") if db is not None else contextlib.nullcontext()


EXPERIMENT_DESCRIPTION = """\
Sparsity x width sweep of small weight-sparse transformers (sparsity-sweep). Each **job run** (child of a
sweep's parent run) trains one grid point `w<width>-d<density>-s<seed>`, measures its capability
(`capability/val_loss`, nats per token on held-out text: lower is more capable) and prunes, for every task,
the smallest circuit that still solves it (`circuit/<task>/edges`; `circuit/edges_geomean` over the solved
tasks, `circuit/log10_edges_geomean` on the frontier's axis: smaller is more interpretable).

How to read it: group the runs by the tag `sweep.point` to pool seeds; a scatter chart of `capability/val_loss`
against `circuit/log10_edges_geomean` (all runs shown) is the capability-interpretability frontier.
Each parent run holds its sweep's summary table (`summary.json`: every point, run, skipped or invalid) and,
after `make frontier`, the paper's figures (`frontier/frontier.png`). A job's circuits are drawn in its
artifacts under `circuits/`."""


def ensure_experiment(tracking_cfg) -> tuple[MlflowClient, str]:
    """Create the store and the experiment if needed, tagged so that MLflow's UI opens it on its runs and
    shows what it holds; return a client and the experiment id."""
    tags = {names.TAG_EXPERIMENT_KIND: names.EXPERIMENT_KIND, names.TAG_DESCRIPTION: EXPERIMENT_DESCRIPTION}
    with store_lock(tracking_cfg.uri):  # a new client opens the store: it creates or migrates the schema
        client = MlflowClient(tracking_uri=tracking_cfg.uri)
        experiment = client.get_experiment_by_name(tracking_cfg.experiment)
        if experiment is None:
            return client, client.create_experiment(tracking_cfg.experiment, tags=tags,
                                                    artifact_location=artifact_location(tracking_cfg))
        for key, value in tags.items():  # an experiment made before these tags, or by someone else
            if key not in experiment.tags:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return client, experiment.experiment_id


def git_commit() -> str | None:
    """The project's commit: SWEEP_GIT_COMMIT where set (the Docker image, which has no .git), else git's."""
    if commit := os.environ.get("SWEEP_GIT_COMMIT"):
        return commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's own source tags: the entry point (`python -m sweep`) and the commit, which the UI shows."""
    tags = {names.TAG_SOURCE_NAME: entry_point, names.TAG_SOURCE_TYPE: "LOCAL"}
    if commit := git_commit():
        tags[names.TAG_GIT_COMMIT] = tags[names.TAG_SOURCE_GIT_COMMIT] = commit
    return tags


def create_run(client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    """A run whose name fits every backend: a long override list is cut to the limit with "..." (the
    full configuration is in the run's params and config artifact)."""
    if len(run_name) > MLFLOW_RUN_NAME_LIMIT:
        run_name = run_name[:MLFLOW_RUN_NAME_LIMIT - 3] + "..."
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def start_parent_run(tracking_cfg, run_name: str, entry_point: str = names.SOURCE_SWEEP,
                     description: str = "", params: dict | None = None) -> str:
    """A sweep's parent run, created in the launching process, with its description and the grid as params."""
    client, experiment_id = ensure_experiment(tracking_cfg)
    tags = {names.TAG_KIND: names.KIND_PARENT, names.TAG_PROCESS: lifecycle.process_tag(), **source_tags(entry_point)}
    if description:
        tags[names.TAG_DESCRIPTION] = description
    run_id = create_run(client, experiment_id, run_name, tags)
    log_params(client, run_id, params or {})
    return run_id


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    """Params in batches of MLflow's limit."""
    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), MLFLOW_PARAM_BATCH_LIMIT):
        client.log_batch(run_id, params=items[i:i + MLFLOW_PARAM_BATCH_LIMIT])


def end_parent_run(tracking_cfg, run_id: str, failed: bool, summary: str, table: list[dict] | None = None,
                   description: str | None = None) -> None:
    """The summary as text and, where given, as a table the UI shows (`summary.json`); close the run."""
    client = MlflowClient(tracking_uri=tracking_cfg.uri)
    client.log_text(run_id, summary, names.ARTIFACT_SUMMARY)
    if table is not None:
        client.log_table(run_id, pd.DataFrame(table), names.ARTIFACT_SUMMARY_TABLE)
    if description is not None:
        client.set_tag(run_id, names.TAG_DESCRIPTION, description)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))


def finished_points(tracking_cfg) -> dict[str, str]:
    """{config hash: run id} of the training jobs that finished in the experiment (re-prunes excluded);
    of several runs of one point, the oldest."""
    client, experiment_id = ensure_experiment(tracking_cfg)
    return {run.data.tags[names.TAG_CONFIG_HASH]: run.info.run_id
            for run in finished_training_runs(client, experiment_id)}  # newest first: the oldest wins


def job_runs(client: MlflowClient, experiment_id: str) -> list:
    """Every job run of an experiment (training and re-prune, any status), newest first, all pages."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{names.TAG_KIND}` = '{names.KIND_JOB}'",
                                  max_results=5000, order_by=["attributes.start_time DESC"], page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def is_finished(run) -> bool:
    """Finished by both the sweep's tag and MLflow's own status."""
    return run.info.status == "FINISHED" and run.data.tags.get(names.TAG_STATUS) == names.STATUS_FINISHED


def is_training_run(run) -> bool:
    return run.data.tags.get(names.TAG_STAGE, names.STAGE_TRAIN) != names.STAGE_PRUNE


def finished_training_runs(client: MlflowClient, experiment_id: str) -> list:
    """The finished training runs of an experiment (re-prunes left out), newest first."""
    return [r for r in job_runs(client, experiment_id) if is_finished(r) and is_training_run(r)]


def tag_trial(tracking_uri: str, run_id: str, study: str, trial: int) -> None:
    """Mark a job's run as trial `trial` of Optuna study `study`."""
    client = MlflowClient(tracking_uri=tracking_uri)
    client.set_tag(run_id, names.TAG_OPTUNA_STUDY, study)
    client.set_tag(run_id, names.TAG_OPTUNA_TRIAL, str(trial))


def log_texts(tracking_uri: str, run_id: str, texts: dict[str, str]) -> None:
    """Artifacts {file name: text} of a run."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for artifact, text in texts.items():
        client.log_text(run_id, text, artifact)


def log_artifact(tracking_uri: str, run_id: str, path: Path, artifact_dir: str | None = None) -> None:
    MlflowClient(tracking_uri=tracking_uri).log_artifact(run_id, str(path), artifact_dir)


def close_as_failed(client: MlflowClient, run_id: str, reason: str) -> None:
    """Tag a run `failed: <reason>` and close it FAILED."""
    client.set_tag(run_id, names.TAG_STATUS, f"{names.STATUS_FAILED}: {reason}"[:500])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


def open_store(tracking_uri: str) -> MlflowClient:
    """A client on an existing store: a missing SQLite file is an error, not a new empty store; a tracking
    server must answer and its database work."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise ConfigError("tracking.uri", redact_uri(tracking_uri), "no MLflow store there; run a sweep first or pass tracking.uri=")
    if is_server(tracking_uri):
        check_server(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id_of(client: MlflowClient, experiment: str, key: str = "EXPERIMENT") -> str:
    """The id of an existing experiment; ConfigError naming the experiments there if it does not exist."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        existing = ", ".join(sorted(e.name for e in client.search_experiments(max_results=1000))) or "none"
        raise ConfigError(key, experiment, f"no such experiment in {redact_uri(client.tracking_uri)}; existing: {existing}")
    return found.experiment_id


def load_training_run(client: MlflowClient, run_id: str, workdir: Path):
    """A training run, its resolved config and the local path of its checkpoint; ConfigError if any is missing."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError("RUN", run_id, f"no such run in {redact_uri(client.tracking_uri)}") from None
    try:
        config = client.download_artifacts(run_id, names.ARTIFACT_CONFIG, str(workdir))
        checkpoint = client.download_artifacts(run_id, names.ARTIFACT_CHECKPOINT, str(workdir))
    except (MlflowException, OSError):
        raise ConfigError("RUN", run_id, f"has no checkpoint ({names.ARTIFACT_CHECKPOINT} and "
                                         f"{names.ARTIFACT_CONFIG}): only finished training runs can be pruned again") from None
    return run, OmegaConf.load(config), Path(checkpoint)


def close_orphaned_runs(tracking_cfg) -> list[str]:
    """Close the RUNNING runs whose process is gone (killed with SIGKILL, a crashed node), or whose sweep's
    launching process is gone (`end_orphan`): a killed sweep never leaves a run RUNNING once the next sweep
    starts. Returns their ids."""
    client, experiment_id = ensure_experiment(tracking_cfg)
    runs = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=50000)
    return [run.info.run_id for run in runs if end_orphan(client, run)]


def end_orphan(client: MlflowClient, run) -> bool:
    """A RUNNING run whose process is gone, or whose sweep's launching process is gone (its worker may live
    on): stop that worker (SIGTERM; it closes its run as failed at its next step) and wait for it, then mark
    the run FAILED if it is still RUNNING. False, and nothing done, for a run that is not orphaned."""
    process = run.data.tags.get(names.TAG_PROCESS)
    launcher = run.data.tags.get(names.TAG_LAUNCHER_PROCESS)
    if lifecycle.is_orphaned(process):
        reason = f"process {process} ended without closing the run (killed)"
    elif lifecycle.is_orphaned(launcher):
        lifecycle.stop_process(process)
        if client.get_run(run.info.run_id).info.status != "RUNNING":
            return True
        reason = f"the launching process {launcher} of its sweep is gone (killed)"
    else:
        return False
    close_as_failed(client, run.info.run_id, reason)
    return True


SIBLING_WAIT_S = 20.0  # below lifecycle.terminate_descendants' 30 s


def wait_for_siblings(tracking_cfg, parent_run_id: str, timeout_s: float = SIBLING_WAIT_S) -> None:
    """In a stopped worker of the local launcher, its own run closed: wait until no other job run of the sweep
    is RUNNING in a live process. When one worker exits, joblib's executor kills the others at once; a
    sibling still on its way to its next step (setting up, closing its run) would die with its run open."""
    client, experiment_id = ensure_experiment(tracking_cfg)
    query = f"tags.`{names.TAG_PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = client.search_runs([experiment_id], query, max_results=1000)
        if not [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB
                and not lifecycle.is_orphaned(r.data.tags.get(names.TAG_PROCESS))]:
            return
        time.sleep(0.2)


def log_skipped_run(tracking_cfg, parent_run_id: str, run_name: str, point_hash: str, duplicate_of: str) -> str:
    """A child run that records a point this sweep did not run again: `skipped: duplicate of <run_id>`."""
    client, experiment_id = ensure_experiment(tracking_cfg)
    tags = {names.TAG_KIND: names.KIND_JOB, names.TAG_CONFIG_HASH: point_hash, names.TAG_PARENT: parent_run_id,
            names.TAG_STATUS: f"{names.STATUS_SKIPPED}: duplicate of {duplicate_of}"}
    run_id = create_run(client, experiment_id, f"(skipped) {run_name}", tags)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


class PointHeld(Exception):
    """Another training run holds this point: finished, or running in a live process."""

    def __init__(self, run_id: str):
        super().__init__(f"{names.STATUS_SKIPPED}: duplicate of {run_id}")
        self.run_id = run_id


def holder_of(client: MlflowClient, experiment_id: str, point_hash: str) -> str | None:
    """The training run that holds a point: finished, or running in a process that is alive and whose sweep's
    launching process is alive (an orphan is closed on the way, `end_orphan`)."""
    for run in client.search_runs([experiment_id], f"tags.`{names.TAG_CONFIG_HASH}` = '{point_hash}' and "
                                                   f"tags.`{names.TAG_KIND}` = '{names.KIND_JOB}'", max_results=1000):
        if run.data.tags.get(names.TAG_STAGE) == "prune":
            continue
        if run.info.status == "RUNNING" and end_orphan(client, run):
            run = client.get_run(run.info.run_id)  # closed now, by its stopped worker or here
        finished = run.info.status == "FINISHED" and run.data.tags.get(names.TAG_STATUS) == names.STATUS_FINISHED
        alive = run.info.status == "RUNNING"
        if finished or alive:
            return run.info.run_id
    return None


class JobRun:
    """One job's child run; metrics are buffered and written in batches, by count and at least every
    `tracking.flush_interval_s` (the UI shows a running job's curves). With `claim`, the point is
    checked and the run created in one step under the store's lock: a point that another run holds
    (finished, or running in a live process: a second sweep started at once, the workers of a killed
    sweep) raises PointHeld instead of training twice. With `tracking.system_metrics`, MLflow samples the
    machine's CPU, memory (and GPU) into `system/*` while the run is open."""

    def __init__(self, cfg: DictConfig, run_name: str, parent_run_id: str | None, extra_tags: dict[str, str],
                 claim: bool = False, entry_point: str = names.SOURCE_SWEEP):
        self.client, experiment_id = ensure_experiment(cfg.tracking)
        tags = {names.TAG_KIND: names.KIND_JOB, names.TAG_CONFIG_HASH: config_hash(cfg),
                names.TAG_STATUS: names.STATUS_RUNNING, names.TAG_PROCESS: lifecycle.process_tag(),
                **source_tags(entry_point), **extra_tags}
        if launcher := lifecycle.launcher_tag():  # a worker of the local launcher: the sweep process it serves
            tags[names.TAG_LAUNCHER_PROCESS] = launcher
        if parent_run_id:
            tags[names.TAG_PARENT] = parent_run_id
        with store_lock(cfg.tracking.uri) if claim else contextlib.nullcontext():
            if claim and (holder := holder_of(self.client, experiment_id, tags[names.TAG_CONFIG_HASH])):
                raise PointHeld(holder)
            self.run_id = create_run(self.client, experiment_id, run_name, tags)
        self.flush_every, self.flush_interval_s = cfg.tracking.flush_every, cfg.tracking.flush_interval_s
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._system_metrics = None
        try:  # a signal can arrive while the run is being set up: it must not stay RUNNING
            shown = redacted(cfg)  # no password of tracking.uri in params or artifacts
            log_params(self.client, self.run_id, run_params(shown))
            self.client.log_text(self.run_id, OmegaConf.to_yaml(shown), names.ARTIFACT_CONFIG)
            if cfg.tracking.system_metrics:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._system_metrics = SystemMetricsMonitor(self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                                            tracking_uri=cfg.tracking.uri)
                self._system_metrics.start()
        except BaseException as e:
            self.end(f"failed: {type(e).__name__}: {e}"[:500])
            raise

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._pending), MLFLOW_BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=self._pending[i:i + MLFLOW_BATCH_LIMIT])
        self._pending = []
        self._last_flush = time.monotonic()

    def log_corpus(self, source: str, digest: str) -> None:
        """The training corpus (data.source) as the run's dataset input, context `training`, its content hash
        as digest (the first folder it reads as its source)."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        name = source if "/" not in source else Path(source).name
        root = next(iter(source_roots(source).values()))
        dataset = MetaDataset(LocalArtifactDatasetSource(str(root)), name=f"python code: {name}", digest=digest)
        self.client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                                          [InputTag(MLFLOW_DATASET_CONTEXT, "training")])])

    def describe(self, text: str) -> None:
        """The run's description in the UI (one line)."""
        self.client.set_tag(self.run_id, names.TAG_DESCRIPTION, text)

    def log_artifact(self, local_path: Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_dir)

    def log_artifacts(self, local_dir: Path, artifact_dir: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_dir)

    def __enter__(self) -> "JobRun":
        return self

    def __exit__(self, exc_type, exc, _tb) -> None:
        """Close the run: finished, or failed with the reason on any exception (a crash or a kill)."""
        self.end(names.STATUS_FINISHED if exc is None else f"failed: {exc_type.__name__}: {exc}"[:500])

    def end(self, status: str) -> None:
        """Flush, stop the system metrics, tag the outcome (`finished` or `failed: <reason>`), close the run."""
        self.flush()
        if self._system_metrics is not None:
            self._system_metrics.finish()
        self.client.set_tag(self.run_id, names.TAG_STATUS, status)
        ok = status == names.STATUS_FINISHED
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))
