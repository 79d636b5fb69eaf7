"""MLflow -> tidy tables: which runs count, one row per job (`runs.csv`), one per (job, task) (`tasks.csv`).

Runs that count: child runs tagged `sweep.kind=job` with `sweep.status=finished` and MLflow status
FINISHED (failed, running and `skipped: duplicate of ...` runs are left out). Several sweeps in one
experiment are pooled; runs with the same `sweep.config_hash` are one point, and the newest is kept.
Re-prune runs (`sweep.stage=prune`) carry their training run's capability metrics and a new
circuit: they are left out by default (stage `train`) and used instead of the training runs with
stage `prune`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

# The contract's tag and metric names. sweep/names.py imports nothing; importing it loads the
# `sweep` package's __init__ (omegaconf, sweep.tracking, mlflow), never torch or training code.
from sweep import names, tracking
from sweep.paths import DEFAULT_TRACKING_URI

# Config keys of the grid axes (contract.md, "Config"): sweep/names.py holds tags and metrics only.
WIDTH = "model.width_mult"
BASE_WIDTH = "model.base_width"
DENSITY = "sparsity.density"
SEED = "seed"
SEED_OFFSET = "seed_offset"  # a run's seed set: the grid's seeds shifted by it
METHOD_PARAM = "prune.method"
TOKENIZER_PARAM = "data.tokenizer"
STAGES = (names.STAGE_TRAIN, names.STAGE_PRUNE)
STORE_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql",
                 *(f"{db}+{driver}" for db in ("postgresql", "mysql", "mssql") for driver in ("psycopg", "psycopg2", "pymysql", "pyodbc")))
DEFAULT_URI = DEFAULT_TRACKING_URI
RUNS_CSV, TASKS_CSV = "runs.csv", "tasks.csv"
TASK_COLUMNS = ("run_id", WIDTH, DENSITY, SEED, "task", *names.CIRCUIT_PER_TASK)


class AnalysisError(Exception):
    """Input the user can fix (no store, no experiment, no finished runs): one line, exit status 2."""


@dataclass
class Selection:
    """The runs an analysis uses, why others were left out, and the parent run to log results to."""

    runs: list
    notes: list[str] = field(default_factory=list)
    parent_run_id: str | None = None


def open_client(uri: str) -> MlflowClient:
    """A client for an existing store: a missing SQLite file, an unreachable server or a scheme MLflow
    cannot read is an AnalysisError."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in STORE_SCHEMES:
        raise AnalysisError(f"--tracking-uri {uri}: not a tracking URI; allowed: sqlite:///<file>, http(s)://host:port, "
                            "or a SQL database URI (postgresql://, mysql://, mssql://)")
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if db is not None and not db.is_file():
        # MLflow would create an empty store here; a typo in the path should not leave one behind.
        raise AnalysisError(f"no MLflow store at {db} (tracking URI {uri}); run a sweep first or pass --tracking-uri")
    # An unreachable server should fail in seconds, not after MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except MlflowException as e:
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise AnalysisError(f"cannot read the MLflow store at {uri}: {first_line}") from None
    return client


def _outcome(run) -> str:
    """finished, skipped, failed or running: the sweep's tag, checked against MLflow's own status."""
    status = run.data.tags.get(names.TAG_STATUS, "")
    if tracking.is_finished(run):
        return "finished"
    if status.startswith(names.STATUS_SKIPPED):
        return "skipped"
    return "failed" if status.startswith(names.STATUS_FAILED) or run.info.status == "FAILED" else "running"


def _count(kinds: list[str]) -> str:
    counts = pd.Series(kinds, dtype=object).value_counts()
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no job runs"


def run_method(run) -> str:
    """The discovery method that pruned a run (runs from before `prune.method` existed: mask)."""
    return run.data.params.get(METHOD_PARAM, "mask")


def select_runs(client: MlflowClient, experiment: str, parent: str | None = None, stage: str = "train",
                method: str | None = None) -> Selection:
    """The finished job runs of one experiment (optionally one sweep, one discovery method), one per
    config hash."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments(max_results=1000))) or "none"
        raise AnalysisError(f"no experiment '{experiment}' in {client.tracking_uri} (experiments there: {known})")
    runs = tracking.job_runs(client, found.experiment_id)
    where = f"experiment '{experiment}'"
    if parent:
        runs = [r for r in runs if r.data.tags.get(names.TAG_PARENT) == parent]
        where += f" under parent run {parent}"
    notes = []
    is_prune = [not tracking.is_training_run(r) for r in runs]
    other_stage = sum(p != (stage == names.STAGE_PRUNE) for p in is_prune)
    runs = [r for r, p in zip(runs, is_prune) if p == (stage == names.STAGE_PRUNE)]
    if other_stage:
        notes.append(f"{other_stage} {'training' if stage == 'prune' else 're-prune (sweep.stage=prune)'} runs "
                     f"left out (--stage {'train' if stage == 'prune' else 'prune'} uses them)")
    if method:
        runs = [r for r in runs if run_method(r) == method]
        where += f" pruned by {method}"
    outcomes = [_outcome(r) for r in runs]
    finished = [r for r, o in zip(runs, outcomes) if o == "finished"]
    if not finished:
        raise AnalysisError(f"no finished {stage} job runs in {where} ({_count(outcomes)})")
    if len(finished) < len(runs):
        notes.append(f"left out: {_count([o for o in outcomes if o != 'finished'])}")
    kept, seen = [], set()
    for run in finished:  # newest first: the newest run of a config hash wins
        key = run.data.tags.get(names.TAG_CONFIG_HASH) or run.info.run_id
        if key not in seen:
            seen.add(key)
            kept.append(run)
    if len(kept) < len(finished):
        notes.append(f"{len(finished) - len(kept)} older runs of an already seen sweep.config_hash left out (newest kept)")
    no_loss = [r.info.run_id for r in kept if names.CAPABILITY_VAL_LOSS not in r.data.metrics]
    if no_loss:
        notes.append(f"{len(no_loss)} runs lack {names.CAPABILITY_VAL_LOSS} (older or incomplete runs), left out: "
                     + " ".join(no_loss[:5]) + (" ..." if len(no_loss) > 5 else ""))
        kept = [r for r in kept if r.info.run_id not in no_loss]
    if not kept:
        raise AnalysisError(f"no finished job run in {where} has {names.CAPABILITY_VAL_LOSS}")
    parent_id, parent_note = _parent_to_log_to(client, kept)
    return Selection(kept, notes + ([parent_note] if parent_note else []), parent_id)


def _parent_to_log_to(client: MlflowClient, runs: list) -> tuple[str | None, str | None]:
    """The parent run of the runs used; the newest one if they come from several sweeps."""
    ids = {r.data.tags[names.TAG_PARENT] for r in runs if r.data.tags.get(names.TAG_PARENT)}
    if not ids:
        return None, "the runs have no parent run: results are not logged to MLflow"
    if len(ids) == 1:
        return ids.pop(), None
    parents = sorted((client.get_run(i) for i in ids), key=lambda r: r.info.start_time, reverse=True)
    return parents[0].info.run_id, (f"runs come from {len(ids)} sweeps (parent runs); results are logged to the "
                                    f"newest, {parents[0].info.run_id} (--parent RUN_ID picks one sweep)")


def runs_table(runs: list) -> pd.DataFrame:
    """One row per run: identity, params (dotted names) and final metrics (contract names); per-task
    circuit metrics go to `tasks_table`."""
    rows = []
    for run in runs:
        tags = run.data.tags
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "parent_run_id": tags.get(names.TAG_PARENT),
               "config_hash": tags.get(names.TAG_CONFIG_HASH), "stage": tags.get(names.TAG_STAGE, "train"),
               "train_run_id": tags.get(names.TAG_TRAIN_RUN), "start_time": run.info.start_time}
        row.update(run.data.params)
        row.update({k: v for k, v in run.data.metrics.items() if names.parse_circuit_metric(k) is None})
        rows.append(row)
    return normalise(pd.DataFrame(rows))


def losses_per_byte(runs: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Capability in nats per byte of validation text, whatever the tokenizer: a BPE run logs its
    loss and references per token, and `capability/*bits_per_byte` x ln 2 per byte (for bytes the
    two are the same numbers). The bigram reference of a BPE run (the collapse rule's) becomes the
    text's byte bigram (`capability/byte_bigram_bits_per_byte`): the BPE's own bigram entropy,
    estimated on the validation text over V^2 cells, is below every model's loss. A BPE run from
    before that metric has no bigram reference. Byte-only tables are returned as they are."""
    tokenizers = set(runs[TOKENIZER_PARAM].fillna("bytes")) if TOKENIZER_PARAM in runs else {"bytes"}
    if tokenizers == {"bytes"}:
        return runs, None
    runs = runs.copy()
    for per_token, per_byte in ((names.CAPABILITY_VAL_LOSS, names.CAPABILITY_BITS_PER_BYTE),
                                (names.CAPABILITY_UNIGRAM, names.CAPABILITY_UNIGRAM_BPB),
                                (names.CAPABILITY_BIGRAM, names.CAPABILITY_BIGRAM_BPB)):
        if per_byte in runs and per_token in runs:  # runs from before the per-byte references: bytes, same numbers
            runs[per_token] = (runs[per_byte] * math.log(2)).fillna(runs[per_token])
    bpe = runs[TOKENIZER_PARAM].fillna("bytes") != "bytes"
    byte_bigram = runs.get(names.CAPABILITY_BYTE_BIGRAM_BPB, pd.Series(math.nan, index=runs.index)) * math.log(2)
    if names.CAPABILITY_BIGRAM in runs:
        runs.loc[bpe, names.CAPABILITY_BIGRAM] = byte_bigram[bpe]
    missing = int((bpe & byte_bigram.isna()).sum())
    return runs, (f"tokenizers {', '.join(sorted(tokenizers))}: losses are nats per byte of validation text "
                  "(capability/bits_per_byte x ln 2), references too; the bigram reference of BPE runs is the "
                  "text's byte bigram" + (f" ({missing} BPE runs predate it: no bigram reference, near_reference "
                                          "cannot fire for them)" if missing else ""))


def tasks_table(runs: list) -> pd.DataFrame:
    """One row per (run, task): the circuit metrics of each task, the nonsense control as task `control`."""
    rows = []
    for run in runs:
        per_task: dict[str, dict] = {}
        for key, value in run.data.metrics.items():
            if (parsed := names.parse_circuit_metric(key)) is not None:
                per_task.setdefault(parsed[0], {})[parsed[1]] = value
        params = run.data.params
        for task, values in sorted(per_task.items()):
            rows.append({"run_id": run.info.run_id, WIDTH: params.get(WIDTH), DENSITY: params.get(DENSITY),
                         SEED: params.get(SEED), "task": task, **values})
    return normalise(pd.DataFrame(rows, columns=list(TASK_COLUMNS)))


def normalise(table: pd.DataFrame) -> pd.DataFrame:
    """Params arrive as strings: make every column whose values all parse as numbers numeric."""
    table = table.copy()
    for column in table.columns:
        if not pd.api.types.is_numeric_dtype(table[column]) and table[column].notna().any():
            try:
                table[column] = pd.to_numeric(table[column])
            except (TypeError, ValueError):
                pass
    for column, default in ((WIDTH, 1.0), (DENSITY, 1.0), (SEED, 0.0), (SEED_OFFSET, 0.0)):  # a run logged without an axis: its default
        table[column] = pd.to_numeric(table[column]).astype(float).fillna(default) if column in table else default
    return table


def write_tables(runs: pd.DataFrame, tasks: pd.DataFrame, out: Path) -> None:
    runs.to_csv(out / RUNS_CSV, index=False)
    tasks.to_csv(out / TASKS_CSV, index=False)


def read_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`runs.csv` and `tasks.csv` written by an earlier analysis: everything the figures need."""
    paths = [folder / RUNS_CSV, folder / TASKS_CSV]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise AnalysisError(f"--from-csv: missing {', '.join(missing)}")
    try:
        runs, tasks = (pd.read_csv(p) for p in paths)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AnalysisError(f"--from-csv: cannot read the tables in {folder}: {e}") from None
    if runs.empty or names.CAPABILITY_VAL_LOSS not in runs.columns or "run_id" not in runs.columns:
        raise AnalysisError(f"--from-csv: {paths[0]} has no runs with run_id and {names.CAPABILITY_VAL_LOSS}")
    for column in TASK_COLUMNS:
        if column not in tasks.columns:
            tasks[column] = pd.NA
    return normalise(runs), normalise(tasks)
