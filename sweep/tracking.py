"""MLflow: the store, the experiment, parent and child runs, batched metric writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from omegaconf import DictConfig, OmegaConf

from sweep import lifecycle, names
from sweep.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Keys that say where or how a job runs, not what it computes: left out of the config hash.
UNHASHED_KEYS = ("tracking", "train.device", "train.threads")
MLFLOW_BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow's own limit)
MLFLOW_PARAM_BATCH_LIMIT = 100
MLFLOW_RUN_NAME_LIMIT = 250  # characters: runs.name is VARCHAR(250) on PostgreSQL/MySQL (SQLite does not check)
SERVER_PROBE_TIMEOUT_S = 15  # per request of the probe; MLflow's client would retry for minutes instead
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


def redacted(cfg: DictConfig) -> DictConfig:
    """A copy of a job's config whose tracking.uri carries no password (for params and config.yaml)."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    copy.tracking.uri = redact_uri(copy.tracking.uri)
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
    from mlflow.exceptions import MlflowException
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


def ensure_experiment(tracking_cfg) -> tuple[MlflowClient, str]:
    """Create the store and the experiment if needed; return a client and the experiment id."""
    with store_lock(tracking_cfg.uri):  # a new client opens the store: it creates or migrates the schema
        client = MlflowClient(tracking_uri=tracking_cfg.uri)
        experiment = client.get_experiment_by_name(tracking_cfg.experiment)
        if experiment is not None:
            return client, experiment.experiment_id
        return client, client.create_experiment(tracking_cfg.experiment, artifact_location=artifact_location(tracking_cfg))


def flatten(cfg: DictConfig) -> dict[str, object]:
    """Resolved config as {dotted.key: value}."""
    out: dict[str, object] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved job config minus tracking / execution keys: equal hash, same point."""
    flat = {k: v for k, v in flatten(cfg).items()
            if not any(k == u or k.startswith(u + ".") for u in UNHASHED_KEYS)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str | None:
    """The project's commit: SWEEP_GIT_COMMIT where set (the Docker image, which has no .git), else git's."""
    if commit := os.environ.get("SWEEP_GIT_COMMIT"):
        return commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def create_run(client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    """A run whose name fits every backend: a long override list is cut to the limit with "..." (the
    full configuration is in the run's params and config artifact)."""
    if len(run_name) > MLFLOW_RUN_NAME_LIMIT:
        run_name = run_name[:MLFLOW_RUN_NAME_LIMIT - 3] + "..."
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def start_parent_run(tracking_cfg, run_name: str) -> str:
    """A sweep's parent run, created in the launching process."""
    client, experiment_id = ensure_experiment(tracking_cfg)
    tags = {names.TAG_KIND: names.KIND_PARENT, names.TAG_PROCESS: lifecycle.process_tag()}
    if commit := git_commit():
        tags[names.TAG_GIT_COMMIT] = commit
    return create_run(client, experiment_id, run_name, tags)


def end_parent_run(tracking_cfg, run_id: str, failed: bool, summary: str) -> None:
    client = MlflowClient(tracking_uri=tracking_cfg.uri)
    client.log_text(run_id, summary, "summary.txt")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))


def finished_points(tracking_cfg) -> dict[str, str]:
    """{config hash: run id} of the training jobs that finished in the experiment (re-prunes excluded)."""
    client, experiment_id = ensure_experiment(tracking_cfg)
    runs = client.search_runs([experiment_id], f"tags.`{names.TAG_KIND}` = '{names.KIND_JOB}' and "
                                               f"tags.`{names.TAG_STATUS}` = '{names.STATUS_FINISHED}'",
                              max_results=50000, order_by=["attributes.start_time DESC"])
    # newest first, so the oldest finished run of a point is the one kept
    return {run.data.tags[names.TAG_CONFIG_HASH]: run.info.run_id for run in runs
            if run.data.tags.get(names.TAG_STAGE) != "prune"}


def close_orphaned_runs(tracking_cfg) -> list[str]:
    """Mark FAILED the RUNNING runs whose process is gone (killed with SIGKILL, a crashed node): a
    killed sweep never leaves a run RUNNING once the next sweep starts. Returns their ids."""
    client, experiment_id = ensure_experiment(tracking_cfg)
    closed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=50000):
        tag = run.data.tags.get(names.TAG_PROCESS)
        if lifecycle.is_orphaned(tag):
            client.set_tag(run.info.run_id, names.TAG_STATUS, f"failed: process {tag} ended without closing the run (killed)")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            closed.append(run.info.run_id)
    return closed


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
    """The training run that holds a point: finished, or running in a process that is alive."""
    for run in client.search_runs([experiment_id], f"tags.`{names.TAG_CONFIG_HASH}` = '{point_hash}' and "
                                                   f"tags.`{names.TAG_KIND}` = '{names.KIND_JOB}'", max_results=1000):
        if run.data.tags.get(names.TAG_STAGE) == "prune":
            continue
        finished = run.info.status == "FINISHED" and run.data.tags.get(names.TAG_STATUS) == names.STATUS_FINISHED
        alive = run.info.status == "RUNNING" and not lifecycle.is_orphaned(run.data.tags.get(names.TAG_PROCESS))
        if finished or alive:
            return run.info.run_id
    return None


class JobRun:
    """One job's child run; metrics are buffered and written in batches. With `claim`, the point is
    checked and the run created in one step under the store's lock: a point that another run holds
    (finished, or running in a live process: a second sweep started at once, the workers of a killed
    sweep) raises PointHeld instead of training twice."""

    def __init__(self, cfg: DictConfig, run_name: str, parent_run_id: str | None, extra_tags: dict[str, str],
                 claim: bool = False):
        self.client, experiment_id = ensure_experiment(cfg.tracking)
        tags = {names.TAG_KIND: names.KIND_JOB, names.TAG_CONFIG_HASH: config_hash(cfg),
                names.TAG_STATUS: names.STATUS_RUNNING, names.TAG_PROCESS: lifecycle.process_tag(), **extra_tags}
        if parent_run_id:
            tags[names.TAG_PARENT] = parent_run_id
        if commit := git_commit():
            tags[names.TAG_GIT_COMMIT] = commit
        with store_lock(cfg.tracking.uri) if claim else contextlib.nullcontext():
            if claim and (holder := holder_of(self.client, experiment_id, tags[names.TAG_CONFIG_HASH])):
                raise PointHeld(holder)
            self.run_id = create_run(self.client, experiment_id, run_name, tags)
        self.flush_every = cfg.tracking.flush_every
        self._pending: list[Metric] = []
        try:  # a signal can arrive while the run is being set up: it must not stay RUNNING
            shown = redacted(cfg)  # no password of tracking.uri in params or artifacts
            params = [Param(k, str(v)) for k, v in flatten(shown).items()]
            for i in range(0, len(params), MLFLOW_PARAM_BATCH_LIMIT):
                self.client.log_batch(self.run_id, params=params[i:i + MLFLOW_PARAM_BATCH_LIMIT])
            self.client.log_text(self.run_id, OmegaConf.to_yaml(shown), names.ARTIFACT_CONFIG)
        except BaseException as e:
            self.end(f"failed: {type(e).__name__}: {e}"[:500])
            raise

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._pending), MLFLOW_BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=self._pending[i:i + MLFLOW_BATCH_LIMIT])
        self._pending = []

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
        """Flush, tag the outcome (`finished` or `failed: <reason>`), and close the run."""
        self.flush()
        self.client.set_tag(self.run_id, names.TAG_STATUS, status)
        ok = status == names.STATUS_FINISHED
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))
