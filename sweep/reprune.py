"""`python -m sweep.reprune RUN_ID [prune.*=... tasks.*=...]`: prune a stored checkpoint again.

The result is a new child run (same parent) tagged `sweep.stage=prune` and `sweep.train_run_id`,
carrying the training run's params and capability metrics, so the analysis treats it as a job.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from sweep import names
from sweep.data import load_corpus
from sweep.errors import EXIT_BAD_INPUT, ConfigError
from sweep.job import build_model, exit_on_sigterm, resolve_device
from sweep.points import point_label
from sweep.prune_stage import run_pruning
from sweep.tracking import JobRun
from sweep.validate import validate

CHANGEABLE = ("prune.", "tasks.", "tracking.")
CARRIED_PREFIXES = ("capability/", "model/", "collapse/", "time/train_s", "perf/")
DEFAULT_URI = f"sqlite:///{Path(__file__).resolve().parent.parent / 'mlflow.db'}"


def load_training_run(client: MlflowClient, run_id: str, workdir: Path):
    """The training run, its resolved config and its checkpoint; ConfigError if either is missing."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError("run_id", run_id, f"no such run in {client.tracking_uri}") from None
    try:
        config = client.download_artifacts(run_id, names.ARTIFACT_CONFIG, str(workdir))
        checkpoint = client.download_artifacts(run_id, names.ARTIFACT_CHECKPOINT, str(workdir))
    except (MlflowException, OSError):
        raise ConfigError("run_id", run_id, f"has no checkpoint ({names.ARTIFACT_CHECKPOINT} and "
                                            f"{names.ARTIFACT_CONFIG}): only finished training runs can be pruned again") from None
    return run, OmegaConf.load(config), checkpoint


def reprune(run_id: str, overrides: list[str], tracking_uri: str = DEFAULT_URI) -> str:
    """Prune the checkpoint of `run_id` with changed prune / task settings; return the new run's id."""
    for override in overrides:
        if not override.startswith(CHANGEABLE) or "=" not in override:
            raise ConfigError("override", override, "a re-prune changes only prune.*, tasks.* or tracking.* (key=value)")
    client = MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        train_run, cfg, checkpoint = load_training_run(client, run_id, Path(tmp))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"tracking.uri={tracking_uri}", *overrides]))
        cfg.prune.enabled = True
        validate(cfg)
        torch.set_num_threads(cfg.train.threads)
        device = resolve_device(cfg.train.device)
        model = build_model(cfg)
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        model.to(device)
    corpus = load_corpus(cfg.data, Path(cfg.data.cache_dir))

    exit_on_sigterm()
    tags = {names.TAG_STAGE: "prune", names.TAG_TRAIN_RUN: run_id, names.TAG_CORPUS_HASH: corpus.corpus_hash}
    label = f"{point_label(cfg)} prune {' '.join(overrides)}".strip()
    with JobRun(cfg, label, train_run.data.tags.get(names.TAG_PARENT), tags) as run:
        run.log_metrics({k: v for k, v in train_run.data.metrics.items() if k.startswith(CARRIED_PREFIXES)})
        run_pruning(model, torch.from_numpy(corpus.val), cfg, run.log_metrics, run.log_artifacts)
    return run.run_id


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or "=" in args[0]:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    uri = next((a.split("=", 1)[1] for a in args[1:] if a.startswith("tracking.uri=")), DEFAULT_URI)
    try:
        new_run = reprune(args[0], [a for a in args[1:] if not a.startswith("tracking.uri=")], uri)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(f"re-pruned {args[0]} as run {new_run}")


if __name__ == "__main__":
    main()
