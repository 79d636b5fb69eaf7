"""Optuna frontier search (`make search`): a Hydra sweeper of our own on optuna 5.

A multi-objective study minimises `capability/val_loss` and `circuit/edges_geomean` over a search
space written in Hydra's override grammar (`conf/hydra/sweeper/optuna.yaml`). The sweeper asks
optuna for a batch of trials, launches them as ordinary jobs through the configured launcher (each
job logs its own MLflow child run under the sweep's parent run), and tells optuna the two objectives.
The study lives in an RDB storage (a SQLite file, or PostgreSQL for a team), so a rerun resumes it;
at the end its Pareto set is written out. Several searches may run on one study at once (one machine
or several): they ask for trials in turn under the storage's lock, each trial drawn with its own seed,
and n_trials is the budget of the study, shared by all of them.

Hydra instantiates sweepers only from the `hydra_plugins` namespace: the class Hydra sees is
`hydra_plugins.sparsity_sweep.OptunaSweeper`, a subclass of the one here.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from sweep import lifecycle, names, tracking
from sweep.errors import EXIT_BAD_INPUT, ConfigError
from sweep.points import describe_point
from sweep.paths import PROJECT_ROOT
from sweep.tracking import REDACTED, redact_uri, sqlite_path
from sweep.orchestration.validate import validate

if TYPE_CHECKING:  # optuna is imported on use: every Hydra start-up imports this module (plugin scan)
    import optuna

TARGET = "hydra_plugins.sparsity_sweep.OptunaSweeper"  # `_target_` of conf/hydra/sweeper/optuna.yaml
OBJECTIVES = (names.CAPABILITY_VAL_LOSS, names.EDGES_GEOMEAN)
RESULT_KEYS = ("val_loss", "edges_geomean")  # the same two values in a job's result (JobOutcome)
DIRECTIONS = ("minimize", "maximize")
SPACE_ATTR, SPACE_TEXT_ATTR = "search_space", "search_space_text"  # study user attrs
POINT_ATTR, PROCESS_ATTR = "point", "process"  # trial user attrs: its overrides, the search that runs it
STORAGE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg://")
# PostgreSQL advisory lock (one per database) that searches on the storage take turns on
LOCK_KEY = int.from_bytes(hashlib.sha256(b"sparsity-sweep optuna storage").digest()[:8], "big", signed=True)
PARETO_FILE = "pareto.csv"
MAX_INFEASIBLE_IN_A_ROW = 200  # infeasible or repeated samples
_announced_trials: int | None = None  # trials the pre-flight announced: the sweep's summary expects an outcome each


def is_search(config: DictConfig) -> bool:
    """Whether this multirun's sweeper is the Optuna search."""
    return config.hydra.sweeper.get("_target_") == TARGET


@dataclass
class Search:
    """A study's settings and search space, checked: what the pre-flight and the sweeper share."""

    study_name: str
    storage: str
    n_trials: int
    n_jobs: int | None
    seed: int
    n_startup_trials: int
    directions: list[str]
    pareto_file: Path
    space: dict[str, Any] = field(default_factory=dict)  # name -> optuna distribution
    space_text: dict[str, str] = field(default_factory=dict)  # name -> its override grammar text
    fixed: list[str] = field(default_factory=list)  # overrides every trial gets
    _storage: Any = field(default=None, init=False, repr=False)  # optuna's RDBStorage, opened on use
    _lock_engine: Any = field(default=None, init=False, repr=False)

    @classmethod
    def from_config(cls, config: DictConfig, loader, arguments: Sequence[str]) -> "Search":
        """Read hydra.sweeper and the command line (`arguments`: the task overrides); raise ConfigError."""
        s = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
        name, storage = s.get("study_name"), s.get("storage")
        if not isinstance(name, str) or not name:
            raise ConfigError("hydra.sweeper.study_name", name, "must be a non-empty string")
        if not isinstance(storage, str) or not storage.startswith(STORAGE_SCHEMES):
            raise ConfigError("hydra.sweeper.storage", redact_uri(storage) if isinstance(storage, str) else storage,
                              "allowed: an absolute sqlite:///<path>.db, or postgresql://user@host:port/database")
        db = sqlite_path(storage)
        if db is not None and not db.is_absolute():
            raise ConfigError("hydra.sweeper.storage", storage, "a SQLite storage must be an absolute path "
                              "(sqlite:////abs/path/optuna.db)")
        directions = list(s.get("directions") or [])
        if len(directions) != len(OBJECTIVES) or any(d not in DIRECTIONS for d in directions):
            raise ConfigError("hydra.sweeper.directions", directions,
                              f"two of {', '.join(DIRECTIONS)}: one for {' and one for '.join(OBJECTIVES)}")
        pareto = s.get("pareto_file")
        if pareto is None:
            pareto = (db.parent if db is not None else PROJECT_ROOT) / f"{name}-pareto.csv"
        search = cls(name, storage, _int(s, "n_trials", 1), s.get("n_jobs"), _int(s, "seed", 0),
                     _int(s, "n_startup_trials", 0), directions, Path(pareto))
        if search.n_jobs is not None and (isinstance(search.n_jobs, bool) or not isinstance(search.n_jobs, int)
                                          or search.n_jobs == 0):
            raise ConfigError("hydra.sweeper.n_jobs", search.n_jobs, "null (as the launcher), or trials per batch "
                              ">= 1 (-1: the cores)")
        search._parse_space(s.get("params") or {}, arguments, loader)
        return search

    def _parse_space(self, params: dict, arguments: Sequence[str], loader) -> None:
        """hydra.sweeper.params, then the command line: a sweep override is searched, any other is fixed."""
        parser = OverridesParser.create(config_loader=loader)
        fixed: dict[str, str] = {}
        for line in [f"{k}={v}" for k, v in params.items()] + list(arguments):
            try:
                override = parser.parse_override(line)
            except Exception as e:  # noqa: BLE001 - Hydra's grammar errors
                raise ConfigError("hydra.sweeper.params", line, f"not Hydra's override grammar ({e})") from None
            key = override.get_key_element()  # a later override of a key replaces it, in its place
            for d in ((fixed,) if override.is_sweep_override() else (self.space, self.space_text)):
                d.pop(key, None)
            if override.is_sweep_override():
                self.space[key] = _distribution(override)
                self.space_text[key] = line.partition("=")[2].strip()
            else:
                fixed[key] = line
        if not self.space:
            raise ConfigError("hydra.sweeper.params", params, "nothing to search: give at least one "
                              "choice(...), range(...) or interval(...)")
        self.fixed = list(fixed.values())

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """The Hydra overrides of one trial."""
        return [*self.fixed, *(f"{k}={_hydra_value(v)}" for k, v in params.items())]

    def signature(self) -> dict:
        """What a study is about: resuming it with anything else mixes incomparable trials."""
        from optuna.distributions import distribution_to_json
        return {"objectives": list(OBJECTIVES), "directions": self.directions,
                "params": {k: json.loads(distribution_to_json(d)) for k, d in self.space.items()}}

    def lock(self) -> contextlib.AbstractContextManager:
        """One search at a time on this storage (creating its tables or a study, asking for trials): a lock
        file beside a SQLite file; on PostgreSQL an advisory lock, which the server drops if the process dies."""
        db = sqlite_path(self.storage)
        if db is not None:
            from filelock import FileLock
            db.parent.mkdir(parents=True, exist_ok=True)
            return FileLock(f"{db}.lock")
        return _advisory_lock(self._engine())

    def _engine(self):
        """A SQLAlchemy engine on the storage without a pool: for the lock and a look at its tables."""
        if self._lock_engine is None:
            import sqlalchemy
            self._lock_engine = sqlalchemy.create_engine(self.storage, poolclass=sqlalchemy.pool.NullPool)
        return self._lock_engine

    def _tables(self) -> set[str]:
        """The storage's tables (none for a SQLite file that does not exist: it is not created here).
        Refuses a database of another application: optuna would add its tables, then fail on their version."""
        import sqlalchemy
        db = sqlite_path(self.storage)
        if db is not None and not db.exists():
            return set()
        tables = set(sqlalchemy.inspect(self._engine()).get_table_names())
        if "alembic_version" in tables and "version_info" not in tables:  # optuna has both
            raise ConfigError("hydra.sweeper.storage", redact_uri(self.storage),
                              "this database holds another application's tables (MLflow's?), and optuna cannot share "
                              "its alembic_version table; give the study a database of its own "
                              "(CREATE DATABASE optuna OWNER <user>)")
        return tables

    @contextlib.contextmanager
    def _opening(self):
        """Errors of a storage that cannot be opened, as ConfigError, without its password."""
        try:
            yield
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a URL SQLAlchemy cannot open, a server that refuses, a read-only folder
            why = _without_password((str(e).splitlines() or [""])[0], self.storage)  # SQLAlchemy adds a link line
            raise ConfigError("hydra.sweeper.storage", redact_uri(self.storage),
                              f"cannot open it ({type(e).__name__}: {why})") from None

    def storage_object(self):
        """Optuna's storage; its tables are created (on a new storage) by one search at a time."""
        if self._storage is None:
            from optuna.storages import RDBStorage
            with self._opening(), self.lock():
                self._tables()
                self._storage = RDBStorage(self.storage)
        return self._storage

    def load_study(self) -> "optuna.Study | None":
        """The existing study, checked against this search space; None if there is none (nothing is created)."""
        import optuna
        with self._opening():
            if "studies" not in self._tables():
                return None
            storage = self.storage_object()
        with self.lock():
            try:
                study = optuna.load_study(study_name=self.study_name, storage=storage)
            except KeyError:
                return None
            self._check(study)
        return study

    def create_study(self) -> "optuna.Study":
        """Open or create the study (in the launching process, before any worker)."""
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = self.storage_object()
        with self.lock():  # another search may be creating it, or adopting it for its search space
            study = optuna.create_study(study_name=self.study_name, storage=storage, directions=self.directions,
                                        load_if_exists=True)
            self._check(study)
        return study

    def sampler(self, n_trials_before: int) -> "optuna.samplers.BaseSampler":
        """The seeded TPE sampler for the next trial, offset by the trials before it: a resumed study, or
        another search on it, never draws the same random points again."""
        import optuna
        return optuna.samplers.TPESampler(seed=self.seed + n_trials_before, multivariate=True, constant_liar=True,
                                          n_startup_trials=self.n_startup_trials)

    def _check(self, study: "optuna.Study") -> None:
        """Refuse a study made for another search space; adopt an empty study that has none recorded."""
        stored, current = study.user_attrs.get(SPACE_ATTR), self.signature()
        if stored is None and not study.trials:
            study.set_user_attr(SPACE_ATTR, current)
            study.set_user_attr(SPACE_TEXT_ATTR, self.space_text)
            return
        if stored == current:
            return
        if stored is None:
            what = "was not created by this sweeper"
        else:
            old_text = study.user_attrs.get(SPACE_TEXT_ATTR, {})
            diffs = [f"{k}: {old_text.get(k, 'not searched')} in the study, {self.space_text.get(k, 'not searched')} now"
                     for k in sorted(set(stored["params"]) | set(current["params"]))
                     if stored["params"].get(k) != current["params"].get(k)]
            if stored["directions"] != current["directions"]:
                diffs.append(f"directions {stored['directions']} in the study, {current['directions']} now")
            what = "was created with a different search space (" + "; ".join(diffs) + ")"
        raise ConfigError("hydra.sweeper.study_name", self.study_name,
                          f"this study in {redact_uri(self.storage)} {what}; rerun with the study's "
                          f"hydra.sweeper.params, or start a new study with another hydra.sweeper.study_name")

    def remaining(self, study: "optuna.Study | None") -> int:
        return self.n_trials - (0 if study is None else len(counted(study)))


def ran(study: "optuna.Study") -> list:
    """Trials that ran a job (complete, or failed with the job's status).
    Infeasible samples and trials cut off by an interrupted sweep do not count."""
    from optuna.trial import TrialState
    return [t for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "status" in t.user_attrs)]


def running(study: "optuna.Study") -> list:
    """Trials that a search which may still be alive is running (this one, another on any machine)."""
    from optuna.trial import TrialState
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if PROCESS_ATTR in t.user_attrs and not lifecycle.is_orphaned(t.user_attrs[PROCESS_ATTR])]


def counted(study: "optuna.Study") -> list:
    """What n_trials counts: the trials that ran a job, and those running now."""
    return ran(study) + running(study)


@contextlib.contextmanager
def _advisory_lock(engine):
    """PostgreSQL's session advisory lock LOCK_KEY, held while the block runs."""
    from sqlalchemy import text
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})


def _without_password(text: str, uri: str) -> str:
    """`text` with the password of `uri` (as written, and percent-decoded) replaced by ***."""
    password = urllib.parse.urlsplit(uri).password
    for secret in {password, urllib.parse.unquote(password or "")} - {None, ""}:
        text = text.replace(secret, REDACTED)
    return text


def _int(settings: dict, key: str, low: int) -> int:
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"hydra.sweeper.{key}", value, f"must be an integer >= {low}")
    return value


def _distribution(override: Override):
    """An optuna distribution from Hydra's sweep grammar, as hydra-optuna-sweeper reads it."""
    value, key = override.value(), f"hydra.sweeper.params.{override.get_key_element()}"
    allowed = ("allowed: choice(a, b, ...) or a,b,...; range(start, stop[, step]); interval(low, high); "
               "tag(log, interval(...)); tag(int, interval(...))")
    try:
        return _make_distribution(override, value, key, allowed)
    except ValueError as e:  # optuna's own checks, e.g. log with a step
        raise ConfigError(key, override.input_line, f"{e}; {allowed}") from None


def _make_distribution(override: Override, value, key: str, allowed: str):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(value.list) if isinstance(value, ChoiceSweep) else list(override.sweep_iterator())
        if any(not isinstance(c, (str, int, float, bool, type(None))) for c in choices):
            raise ConfigError(key, override.input_line, f"choices must be numbers, strings, booleans or null; {allowed}")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(key, override.input_line, f"an empty range; {allowed}")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=abs(value.step), log="log" in value.tags)
        return FloatDistribution(min(values), max(values), step=abs(value.step))
    if isinstance(value, IntervalSweep):
        low, high, log = value.start, value.end, "log" in value.tags
        if not low < high or (log and low <= 0):
            raise ConfigError(key, override.input_line, f"needs low < high (and low > 0 with log); {allowed}")
        if "int" in value.tags:
            return IntDistribution(math.ceil(low), math.floor(high), log=log)
        return FloatDistribution(low, high, log=log)
    raise ConfigError(key, override.input_line, allowed)


def _hydra_value(value: Any) -> str:
    """A sampled value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def _batch_size(search: Search, config: DictConfig) -> int:
    """Trials per batch: hydra.sweeper.n_jobs, else as many as the launcher runs at once
    (joblib's n_jobs, -1 being the cores; SLURM's array_parallelism), else 1."""
    launcher = config.hydra.launcher
    n = search.n_jobs if search.n_jobs is not None else (launcher.get("n_jobs") or launcher.get("array_parallelism") or 1)
    return max(1, (os.cpu_count() or 1) + 1 + n) if n < 0 else n


def sweep_points(config: DictConfig, loader) -> list[tuple[str, DictConfig]]:
    """The pre-flight in the launching process (SweepCallback.on_multirun_start), before anything is logged.

    Checks the settings, the search space against the stored study (exit 2 on a mismatch) and the
    config every trial shares; returns one entry per trial to run, each the shared config (the
    sweeper validates every sampled point itself). A complete study exits 0 here with its Pareto set.
    Bad input exits 2 here: Hydra turns an exception raised in a callback into a warning and goes on."""
    global _announced_trials
    try:
        search = Search.from_config(config, loader, list(config.hydra.overrides.task))
        base = loader.load_sweep_config(config, search.fixed)
        validate(base)
        if not base.prune.enabled:
            raise ConfigError("prune.enabled", False, f"the search minimises {names.EDGES_GEOMEAN}: pruning must be on")
        study = search.load_study()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    remaining = search.remaining(study)
    if remaining <= 0:
        busy = len(running(study))
        print(f"study '{search.study_name}' already has {len(counted(study))} trials"
              f"{f' ({busy} of them running in another search)' if busy else ''} (hydra.sweeper.n_trials="
              f"{search.n_trials}): nothing to run; raise hydra.sweeper.n_trials to add trials")
        report(study, search, Path(config.hydra.sweep.dir))
        sys.exit(0)
    _announced_trials = remaining
    point = describe_point(search.fixed)
    return [(f"trial {i + 1} of {remaining}: {point}", base) for i in range(remaining)]


class OptunaSweeper(Sweeper):
    """Asks optuna for `n_jobs` trials at a time, launches them as jobs, tells it both objectives."""

    def __init__(self, study_name: str, storage: str, n_trials: int, n_jobs: int | None = None, seed: int = 0,
                 n_startup_trials: int = 10, directions=("minimize", "minimize"), pareto_file: str | None = None,
                 params: dict | None = None) -> None:
        super().__init__()
        # Read again, checked, from the composed config in sweep(); kept here for introspection.
        self.settings = dict(study_name=study_name, storage=storage, n_trials=n_trials, n_jobs=n_jobs, seed=seed,
                             n_startup_trials=n_startup_trials, directions=directions, pareto_file=pareto_file,
                             params=params)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        from optuna.trial import TrialState
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        search = Search.from_config(self.config, loader, arguments)
        study = search.create_study()
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        _close_stale_trials(study, search)

        returns: list[Sequence[JobReturn]] = []
        announced = search.remaining(study) if _announced_trials is None else _announced_trials
        launched, size = 0, _batch_size(search, self.config)
        while launched < announced:
            trials, batch = self._ask(study, search, min(size, announced - launched))
            if not trials:  # the rest of the budget ran, or runs, in another search
                break
            try:
                results = self.launcher.launch(batch, initial_job_idx=launched)
            except BaseException:
                for trial in trials:  # not counted: a rerun runs them again
                    trial.set_user_attr("fail_reason", "interrupted: the launch of its batch failed")
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            for trial, result in zip(trials, results):
                self._tell(study, trial, result)
            launched += len(batch)
            returns.append(results)
        _record_not_run(search, sweep_dir, launched, announced)
        report(study, search, sweep_dir, self.config.tracking.uri, os.environ.get(names.ENV_PARENT_RUN_ID))
        return returns

    def _ask(self, study, search: Search, n: int) -> tuple[list, list[list[str]]]:
        """Up to n new, feasible trials, no more than the study's budget has left. Asked under the storage's
        lock, each trial with its own seed: another search on the study asks in turn and finds these RUNNING,
        in its budget and as points taken. An infeasible sample (density x d_model < sparsity.min_per_neuron)
        or a repeat of a point is told FAIL with the reason: it runs nothing and does not count."""
        from optuna.trial import TrialState
        trials, batch, in_a_row = [], [], 0
        with search.lock():
            taken = counted(study)
            tried = {_point_key(t.params): t.number for t in taken}
            n, n_before = min(n, search.n_trials - len(taken)), len(study.get_trials(deepcopy=False))
            while len(trials) < n:
                study.sampler = search.sampler(n_before)
                trial = study.ask(search.space)
                n_before += 1
                overrides = search.overrides(trial.params)
                reason = self._rejection(trial.params, overrides, tried)
                if reason is not None:
                    in_a_row += 1
                    trial.set_user_attr("fail_reason", reason)
                    study.tell(trial, state=TrialState.FAIL)
                    kind, _, detail = reason.partition(": ")
                    print(f"{kind} sample, trial {trial.number} [{_params_text(trial.params)}]: {detail}; told optuna "
                          f"FAIL, not run and not counted", file=sys.stderr)
                    if in_a_row >= MAX_INFEASIBLE_IN_A_ROW:
                        raise ConfigError("hydra.sweeper.params", search.space_text,
                                          f"{in_a_row} samples in a row were infeasible or repeated (last: {reason}); "
                                          f"narrow an infeasible space, or widen one whose points were all tried")
                    continue
                in_a_row = 0
                trial.set_user_attr(POINT_ATTR, describe_point(overrides))
                trial.set_user_attr(PROCESS_ATTR, lifecycle.process_tag())
                tried[_point_key(trial.params)] = trial.number
                trials.append(trial)
                batch.append(overrides)
        return trials, batch

    def _rejection(self, params: dict, overrides: list[str], tried: dict[tuple, int]) -> str | None:
        """`repeated: ...` for a point that a trial has taken, `infeasible: ...` for a config that cannot run,
        else None."""
        if (number := tried.get(_point_key(params))) is not None:
            return f"repeated: the point of trial {number}"
        try:
            validate(self.hydra_context.config_loader.load_sweep_config(self.config, overrides))
        except ConfigError as e:
            return f"infeasible: {e}"
        return None

    def _tell(self, study, trial, job: JobReturn) -> None:
        """Both objectives of a finished job, or FAIL with the reason (failed, invalid, no task solved)."""
        from optuna.trial import TrialState
        try:
            result = job.return_value  # re-raises what the job raised
        except Exception as e:  # noqa: BLE001 - the launcher's own failure for this job
            result = {"status": f"failed: {type(e).__name__}: {e}"}
        if not isinstance(result, dict):
            result = {"status": f"failed: the job returned {result!r}, not a result"}
        status = str(result.get("status"))
        trial.set_user_attr("status", status[:500])
        if run_id := result.get("run_id"):
            trial.set_user_attr("run_id", run_id)
            tracking.tag_trial(self.config.tracking.uri, run_id, study.study_name, trial.number)
        values = [result.get(k) for k in RESULT_KEYS]
        reason = None
        if status != names.STATUS_FINISHED:
            reason = status
        elif values[1] is None:
            reason = f"no {names.EDGES_GEOMEAN}: the job did not prune"
        elif math.isnan(values[1]):
            reason = f"no task solved ({names.EDGES_GEOMEAN} is NaN)"
        elif values[0] is None or not all(math.isfinite(v) for v in values):
            reason = f"objectives not finite: {dict(zip(OBJECTIVES, values))}"
        label = f"trial {trial.number} [{_params_text(trial.params)}]"
        if reason is None:
            study.tell(trial, values)
            print(f"{label}: val_loss {values[0]:.4f}, edges_geomean {values[1]:.1f}, run {run_id}")
        else:
            trial.set_user_attr("fail_reason", reason[:500])
            study.tell(trial, state=TrialState.FAIL)
            print(f"{label}: told optuna FAIL: {reason}")


def _close_stale_trials(study: "optuna.Study", search: Search) -> None:
    """Tell FAIL the trials that a killed search on this machine left RUNNING (not counted); note those that
    another search runs (counted) and those whose search is unknown (not counted)."""
    from optuna.trial import TrialState
    with search.lock():
        left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        stale = [t.number for t in left if lifecycle.is_orphaned(t.user_attrs.get(PROCESS_ATTR))]
        for number in stale:
            study.tell(number, state=TrialState.FAIL)
    busy = [t.number for t in running(study)]
    unknown = [t.number for t in left if PROCESS_ATTR not in t.user_attrs]
    for numbers, what in ((stale, "were left RUNNING by a search on this machine that was killed: told optuna FAIL, "
                                  "not counted"),
                          (busy, "are running in another search (hydra.sweeper.n_trials counts them)"),
                          (unknown, "are RUNNING without a process tag (an older sweeper, or a search killed while "
                                    "asking): not counted")):
        if numbers:
            print(f"note: trials {numbers} of study '{search.study_name}' {what}", file=sys.stderr)


def _record_not_run(search: Search, sweep_dir: Path, launched: int, announced: int) -> None:
    """The announced trials that another search ran instead (the budget is the study's): a `skipped` outcome
    each, in a folder of the sweep where the summary reads its jobs' outcomes."""
    from sweep.orchestration.job import JobOutcome
    status = (f"{names.STATUS_SKIPPED}: study '{search.study_name}' reached hydra.sweeper.n_trials={search.n_trials} "
              f"with trials of another search")
    for number in range(launched + 1, announced + 1):
        folder = sweep_dir / f"not-run-{number}"
        folder.mkdir(exist_ok=True)
        outcome = {"point": f"trial {number} of {announced}", **JobOutcome(status).as_dict(),
                   "parent_run_id": os.environ.get(names.ENV_PARENT_RUN_ID)}
        (folder / names.RESULT_FILE).write_text(json.dumps(outcome))


def _point_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def pareto_rows(study: "optuna.Study", space: Sequence[str]) -> list[dict]:
    """The study's Pareto set (best trials), lowest val_loss first."""
    rows = []
    for t in sorted(study.best_trials, key=lambda t: (t.values[0], t.values[1], t.number)):
        rows.append({"trial": t.number, **{k: t.params.get(k) for k in space},
                     **dict(zip(OBJECTIVES, t.values)), "run_id": t.user_attrs.get("run_id", "")})
    return rows


def report(study: "optuna.Study | None", search: Search, sweep_dir: Path, tracking_uri: str | None = None,
           parent_run_id: str | None = None) -> list[dict]:
    """Write the Pareto set to <sweep dir>/pareto.csv and the stable pareto_file; print it; attach it to the parent run."""
    from optuna.trial import TrialState
    rows = [] if study is None else pareto_rows(study, list(search.space))
    columns = ["trial", *search.space, *OBJECTIVES, "run_id"]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    search.pareto_file.parent.mkdir(parents=True, exist_ok=True)
    for path in (sweep_dir / PARETO_FILE, search.pareto_file):
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    trials = [] if study is None else study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    n_ran = 0 if study is None else len(ran(study))
    infeasible, repeated = (sum(str(t.user_attrs.get("fail_reason", "")).startswith(kind) for t in trials)
                            for kind in ("infeasible", "repeated"))
    header = ["trial", *search.space, "val_loss", "edges_geomean", "run"]
    table = [[str(r["trial"]), *(_cell(r[k]) for k in search.space), f"{r[OBJECTIVES[0]]:.4f}",
              f"{r[OBJECTIVES[1]]:.1f}", r["run_id"]] for r in rows]
    widths = [max(len(x) for x in column) for column in zip(header, *table)]
    print(f"\nstudy '{search.study_name}' ({redact_uri(search.storage)}): {n_ran} trials ran ({complete} complete, "
          f"{n_ran - complete} failed), {infeasible} infeasible and {repeated} repeated samples skipped; "
          f"Pareto set of {len(rows)} (minimising {' and '.join(OBJECTIVES)}):")
    for line in [header, *table]:
        print("  ".join(x.rjust(w) if i < len(header) - 1 else x for i, (x, w) in enumerate(zip(line, widths))))
    print(f"pareto set: {search.pareto_file} (and {sweep_dir / PARETO_FILE})")
    if tracking_uri and parent_run_id:
        tracking.log_artifact(tracking_uri, parent_run_id, sweep_dir / PARETO_FILE)
    return rows


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
