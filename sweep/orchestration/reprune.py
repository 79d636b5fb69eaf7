"""`python -m sweep.orchestration.reprune RUN_ID|--experiment NAME [prune.*=... tasks.*=...]`: prune stored checkpoints again.

Each result is a new child run tagged `sweep.stage=prune` and `sweep.train_run_id`, carrying the
training run's params and capability metrics, so the analysis treats it as a job. With
`--experiment`, every finished training run of the experiment is re-pruned under one new parent
run; a run whose new config hash already has a finished run is skipped, so a re-prune resumes.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sweep import names, tracking
from sweep.science import checkpoint
from sweep.science.data import load_corpus
from sweep.errors import EXIT_BAD_INPUT, ConfigError
from sweep.orchestration.job import describe_outcome, exit_on_sigterm, resolve_device
from sweep.paths import CONF_DIR, DEFAULT_TRACKING_URI
from sweep.points import config_hash, point_label
from sweep.circuits.prune_stage import run_pruning
from sweep.tracking import JobRun, end_parent_run, start_parent_run
from sweep.orchestration.validate import validate

CHANGEABLE = ("prune.", "tasks.", "tracking.")
CARRIED_PREFIXES = ("capability/", "model/", "collapse/", "time/train_s", "perf/")


def check_overrides(overrides: list[str]) -> None:
    for override in overrides:
        if not override.startswith(CHANGEABLE) or "=" not in override:
            raise ConfigError("override", override, "a re-prune changes only prune.*, tasks.* or tracking.* (key=value)")


@functools.cache
def current_defaults() -> DictConfig:
    """The prune, tasks and tracking settings a job would get today (conf/ as composed by `python -m sweep`)."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        composed = compose("config")
    return OmegaConf.create({"prune": composed.prune, "tasks": composed.tasks, "tracking": composed.tracking})


def repruned_config(cfg, overrides: list[str], tracking_uri: str):
    """The training run's config, with any prune, tasks or tracking setting added since it ran taken from
    today's defaults, then the new settings; validated."""
    cfg = OmegaConf.merge(current_defaults(), cfg, OmegaConf.from_dotlist([f"tracking.uri={tracking_uri}", *overrides]))
    cfg.prune.enabled = True
    validate(cfg)
    return cfg


def load_checkpoint(client, run_id: str, overrides: list[str], tracking_uri: str):
    """A training run, its config with the new settings (validated), its corpus and its model, on the
    device its config names."""
    with tempfile.TemporaryDirectory() as tmp:
        train_run, cfg, stored = tracking.load_training_run(client, run_id, Path(tmp))
        cfg = repruned_config(cfg, overrides, tracking_uri)
        torch.set_num_threads(cfg.train.threads)
        corpus = load_corpus(cfg.data, Path(cfg.data.cache_dir))
        model, _ = checkpoint.load(stored, run_id, cfg, corpus.tokenizer.hash)  # trained on this tokenizer?
    return train_run, cfg, corpus, model.to(resolve_device(cfg.train.device))


def reprune(run_id: str, overrides: list[str], tracking_uri: str = DEFAULT_TRACKING_URI, parent_run_id: str | None = None) -> str:
    """Prune the checkpoint of `run_id` with changed prune / task settings; return the new run's id.
    The new run joins `parent_run_id`, or the training run's own parent."""
    check_overrides(overrides)
    train_run, cfg, corpus, model = load_checkpoint(tracking.open_store(tracking_uri), run_id, overrides, tracking_uri)
    exit_on_sigterm()
    label = f"{point_label(cfg)} prune {' '.join(overrides)}".strip()
    tags = {names.TAG_STAGE: names.STAGE_PRUNE, names.TAG_TRAIN_RUN: run_id, names.TAG_CORPUS_HASH: corpus.corpus_hash,
            names.TAG_POINT: point_label(cfg, with_seed=False),
            names.TAG_DESCRIPTION: f"{label}: pruning the checkpoint of run {run_id} again"}
    with JobRun(cfg, label, parent_run_id or train_run.data.tags.get(names.TAG_PARENT), tags,
                entry_point=names.SOURCE_REPRUNE) as run:
        run.log_metrics({k: v for k, v in train_run.data.metrics.items() if k.startswith(CARRIED_PREFIXES)})
        circuits = run_pruning(model, torch.from_numpy(corpus.val), cfg, run.log_metrics, run.log_artifacts,
                               corpus.tokenizer)
        run.describe(describe_outcome(label, train_run.data.metrics.get(names.CAPABILITY_VAL_LOSS), circuits))
    return run.run_id


def reprune_experiment(experiment: str, overrides: list[str],
                       tracking_uri: str = DEFAULT_TRACKING_URI) -> tuple[list[str], list[tuple[str, str]]]:
    """Re-prune every finished training run of `experiment`: the new runs' ids, and (run id, reason) of
    the runs that could not be (a bad checkpoint), which do not stop the others."""
    check_overrides(overrides)
    client = tracking.open_store(tracking_uri)
    experiment_id = tracking.experiment_id_of(client, experiment)
    tracking_cfg = OmegaConf.create({"uri": tracking_uri, "experiment": experiment})
    trained = tracking.finished_training_runs(client, experiment_id)
    if not trained:
        raise ConfigError("EXPERIMENT", experiment, "has no finished training run to prune again")
    done = {r.data.tags.get(names.TAG_CONFIG_HASH) for r in tracking.job_runs(client, experiment_id) if tracking.is_finished(r)}
    todo = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in trained:  # every new config is checked before anything is logged
            _, cfg, _ = tracking.load_training_run(client, run.info.run_id, Path(tmp))
            if config_hash(repruned_config(cfg, overrides, tracking_uri)) not in done:
                todo.append(run)
    print(f"re-pruning {len(todo)} of {len(trained)} training runs of '{experiment}' "
          f"({len(trained) - len(todo)} already have a finished run with these settings)")
    if not todo:
        return [], []
    parent = start_parent_run(tracking_cfg, run_name=f"reprune {' '.join(overrides)} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                              entry_point=names.SOURCE_REPRUNE,
                              description=f"Re-prune of {len(todo)} training runs of {experiment}: {' '.join(overrides)}")
    new_runs, bad, failed = [], [], False
    try:
        for run in tqdm(todo, desc="re-prune", unit="run"):
            try:
                new_runs.append(reprune(run.info.run_id, overrides, tracking_uri, parent))
            except ConfigError as e:  # this run's checkpoint: list it, go on with the others
                bad.append((run.info.run_id, str(e)))
    except BaseException:
        failed = True
        raise
    finally:
        summary = f"re-pruned {len(new_runs)} of {len(todo)} runs: {' '.join(overrides)}" + "".join(
            f"\nnot re-pruned: {reason}" for _, reason in bad)
        end_parent_run(tracking_cfg, parent, failed or bool(bad), summary)
    return new_runs, bad


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    experiment = args[1] if len(args) > 1 and args[0] == "--experiment" else None
    rest = args[2:] if experiment else args[1:]
    if not args or "=" in args[0] or (args[0] == "--experiment" and experiment is None):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    uri = next((a.split("=", 1)[1] for a in rest if a.startswith("tracking.uri=")), DEFAULT_TRACKING_URI)
    overrides = [a for a in rest if not a.startswith("tracking.uri=")]
    try:
        if experiment:
            new_runs, bad = reprune_experiment(experiment, overrides, uri)
            print(f"re-pruned {len(new_runs)} runs of '{experiment}'")
            if bad:
                print(f"not re-pruned: {len(bad)} runs\n" + "\n".join(f"  {reason}" for _, reason in bad), file=sys.stderr)
                sys.exit(1)
        else:
            print(f"re-pruned {args[0]} as run {reprune(args[0], overrides, uri)}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
