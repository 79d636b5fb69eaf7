"""One sweep job: validate -> corpus -> model -> weight-sparse training -> collapse -> circuits -> MLflow."""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from sweep import lifecycle, names, tracking
from sweep.science.checkpoint import build_model
from sweep.science.checkpoint import save as save_checkpoint
from sweep.science.collapse import collapse_metrics
from sweep.science.data import eval_windows, load_corpus
from sweep.errors import ConfigError
from sweep.points import config_hash, d_model, point_label, run_seed
from sweep.circuits.prune_stage import check_tasks, run_pruning
from sweep.science.sparsity import WeightSparsifier
from sweep.science.tokenizer import BYTES
from sweep.tracking import JobRun
from sweep.science.train import train
from sweep.orchestration.validate import validate

log = logging.getLogger(__name__)
EPOCHS_WARNING = 4  # more passes than this over the training split: a job says it may be memorising it


@dataclass
class JobOutcome:
    status: str  # finished | failed: <reason> | invalid: <reason> | skipped: duplicate of <run id>
    run_id: str | None = None
    val_loss: float | None = None  # capability/val_loss
    edges_geomean: float | None = None  # circuit/edges_geomean (NaN: no task solved; None: not pruned)

    def as_dict(self) -> dict:
        return asdict(self)


def job_slot(job_num: int, n_jobs: int | None) -> int:
    """The place of a multirun's job `job_num` among the `n_jobs` the launcher runs at once (joblib's
    -1 or None: one per core)."""
    return job_num % (os.cpu_count() if n_jobs in (None, -1) else max(1, n_jobs))


def gpu_for_slot(slot: int, n_gpus: int) -> int:
    """Round-robin: the jobs running at once (slots 0, 1, ...) spread over the visible GPUs, several per
    GPU when there are more jobs than GPUs."""
    return slot % n_gpus


def resolve_device(device: str, slot: int = 0) -> torch.device:
    """`auto` is CUDA when present, else the CPU; on CUDA, the GPU of this job's slot among the visible
    ones (CUDA_VISIBLE_DEVICES, or SLURM's per-task GPUs, choose which are visible)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda":
        return torch.device(device)
    index = gpu_for_slot(slot, torch.cuda.device_count())
    torch.cuda.set_device(index)  # the job's CUDA context on its own GPU only
    return torch.device("cuda", index)


def describe_device(device: torch.device) -> str:
    """`cpu`, or `cuda:1 NVIDIA H200`: the tag that says where a job ran."""
    return f"{device} {torch.cuda.get_device_name(device)}" if device.type == "cuda" else str(device)


def exit_on_sigterm() -> None:
    """On SIGTERM the job raises `Terminated` at its next step, so a killed job still closes its run as
    failed. A job that runs inside the sweep's own process keeps the sweep's handler, which asks it too."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lifecycle.request_stop)


def ignore_sigint_in_worker() -> None:
    """In a multirun job's own worker process (joblib): ignore SIGINT. Ctrl-C, or any signal to the whole
    process group, reaches the workers too, but the launching process acts on it: it stops them with
    SIGTERM, on which each closes its run. A worker that stopped on SIGINT itself was interrupted by that
    SIGTERM while closing its run, which stayed RUNNING. (The launching process, and a job that runs in
    it, have the sweep's SIGTERM handler and keep SIGINT.)"""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_epochs(cfg: DictConfig, train_tokens: int) -> float:
    """Passes over the training split that the job's steps read; said in the log, with a warning above a few."""
    epochs = cfg.train.steps * cfg.train.batch_size * cfg.model.n_ctx / train_tokens
    message = f"trains {epochs:.2f} epochs of its training split ({train_tokens:,} tokens of data.source={cfg.data.source})"
    if epochs > EPOCHS_WARNING:
        log.warning(f"{message}: above {EPOCHS_WARNING}, it may learn the split by heart; "
                    "data.source=site-packages has far more code")
    else:
        log.info(message)
    return epochs


def describe_start(label: str, cfg: DictConfig) -> str:
    """A job run's description while it trains."""
    return (f"{label}: d_model {d_model(cfg.model)}, density {cfg.sparsity.density:g}, seed {run_seed(cfg)}; training "
            f"{cfg.train.steps} steps")


def describe_outcome(label: str, val_loss: float | None, circuits: dict[str, float]) -> str:
    """A job run's one-line description: its point, its capability, and what it solved, with edges."""
    parts = [label + (f": val loss {val_loss:.3f}" if val_loss is not None else "")]
    per_task: dict[str, dict[str, float]] = {}
    for key, value in circuits.items():
        if parsed := names.parse_circuit_metric(key):
            per_task.setdefault(parsed[0], {})[parsed[1]] = value
    control = per_task.pop(names.CONTROL, None)
    if per_task:
        solved = {task: m["edges"] for task, m in per_task.items() if m.get("solved")}
        unsolved = [task for task in per_task if task not in solved]
        parts.append(f"solved {len(solved)}/{len(per_task)} tasks" + (": " if solved else "")
                     + ", ".join(f"{task} {edges:,.0f} edges" for task, edges in solved.items()))
        if unsolved:
            parts.append("not solved: " + ", ".join(unsolved))
    if control is not None:
        parts.append(f"control solved with {control['edges']:,.0f} edges (a circuit that fits noise)"
                     if control.get("solved") else "control not solved (as it should)")
    return "; ".join(parts)


def run_job(cfg: DictConfig, parent_run_id: str | None = None, overrides=(), slot: int = 0) -> JobOutcome:
    """Train one weight-sparse model and log it; raises ConfigError before any run exists. `slot`: the
    job's place among those running at once (its progress bar's row, its GPU)."""
    validate(cfg)
    torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(run_seed(cfg))
    device = resolve_device(cfg.train.device, slot)
    corpus = load_corpus(cfg.data, Path(cfg.data.cache_dir))
    if len(corpus.val) < cfg.model.n_ctx + 1:  # no evaluation window would fit: still before the run
        raise ConfigError("data.val_frac", cfg.data.val_frac,
                          f"the validation split holds {len(corpus.val)} tokens, fewer than model.n_ctx + 1 = "
                          f"{cfg.model.n_ctx + 1}; allowed: a larger data.val_frac or data.source, or a smaller model.n_ctx")
    if cfg.prune.enabled and corpus.tokenizer is not BYTES:
        check_tasks(cfg, corpus.tokenizer)  # answers must be single tokens of this BPE: still before the run
    label = point_label(cfg, overrides)
    point = point_label(cfg, overrides, with_seed=False)

    exit_on_sigterm()
    if cfg.train.compile:  # the jobs of a grid (and later sweeps) share compiled kernels
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cfg.data.cache_dir).resolve() / "torchinductor"))
    tags = {names.TAG_CORPUS_HASH: corpus.corpus_hash, names.TAG_TOKENIZER_HASH: corpus.tokenizer.hash,
            names.TAG_DEVICE: describe_device(device), names.TAG_POINT: point,
            names.TAG_DESCRIPTION: describe_start(label, cfg)}
    epochs = train_epochs(cfg, len(corpus.train))
    if parent_run_id is None and (done := tracking.finished_points(cfg.tracking).get(config_hash(cfg))):
        print(f"skipped: this point ({label}) already has a finished run, {done}; nothing was trained "
              "(a sweep skips it the same way)")
        return JobOutcome(f"{names.STATUS_SKIPPED}: duplicate of {done}", done)
    lifecycle.raise_if_stopped()  # a stop that came while the job set up: no run yet
    # in a sweep the point is claimed: PointHeld if another run holds it (before anything is trained)
    with lifecycle.job_running(), JobRun(cfg, label, parent_run_id, tags, claim=parent_run_id is not None) as run:
        run.log_metrics({names.DATA_TRAIN_EPOCHS: epochs})
        run.log_corpus(cfg.data.source, corpus.corpus_hash)
        model = build_model(cfg).to(device)
        sparsifier = WeightSparsifier(model.hidden_matrices(), model.embedding_matrices(),
                                      cfg.sparsity.density, cfg.model.width_mult, cfg.sparsity)
        result = train(model, torch.from_numpy(corpus.train), torch.from_numpy(corpus.val), sparsifier,
                       cfg.train, run_seed(cfg), lambda step, m: run.log_metrics(m, step),
                       label=label, position=slot)
        total, nonzero = model.count_params()
        held_out_inputs, _ = eval_windows(torch.from_numpy(corpus.val), cfg.model.n_ctx, cfg.train.eval_windows)
        _, final_targets = eval_windows(torch.from_numpy(corpus.val), cfg.model.n_ctx, cfg.train.final_eval_windows)
        run.log_metrics(collapse_metrics(model, held_out_inputs.to(device), cfg.train.batch_size))
        run.log_metrics({
            names.CAPABILITY_VAL_LOSS: result.val_loss,
            names.CAPABILITY_BITS_PER_BYTE: corpus.per_byte(result.val_loss, final_targets),
            names.CAPABILITY_UNIGRAM: corpus.unigram_loss,
            names.CAPABILITY_BIGRAM: corpus.bigram_loss,
            names.CAPABILITY_UNIGRAM_BPB: corpus.per_byte(corpus.unigram_loss),
            names.CAPABILITY_BIGRAM_BPB: corpus.per_byte(corpus.bigram_loss),
            names.CAPABILITY_BYTE_BIGRAM_BPB: corpus.byte_bigram_loss / math.log(2),
            names.MODEL_TOTAL_PARAMS: total,
            names.MODEL_NONZERO_PARAMS: nonzero,
            names.TIME_TRAIN: result.train_s,
            names.TIME_FIRST_STEP: result.first_step_s,
            names.PERF_TOKENS_PER_S: result.tokens_per_s,
        })
        with tempfile.TemporaryDirectory() as tmp:  # before pruning: a failed pruning can be redone from it
            checkpoint = Path(tmp) / Path(names.ARTIFACT_CHECKPOINT).name
            save_checkpoint(checkpoint, model, cfg, corpus.tokenizer.hash, cfg.train.steps)
            run.log_artifact(checkpoint, names.ARTIFACT_CHECKPOINT_DIR)
            if corpus.tokenizer.save(Path(tmp) / names.ARTIFACT_TOKENIZER):
                run.log_artifact(Path(tmp) / names.ARTIFACT_TOKENIZER)
        circuits = {}
        lifecycle.raise_if_stopped()
        if cfg.prune.enabled:
            circuits = run_pruning(model, torch.from_numpy(corpus.val), cfg, run.log_metrics, run.log_artifacts,
                                   corpus.tokenizer)
        run.describe(describe_outcome(label, result.val_loss, circuits))
    return JobOutcome(names.STATUS_FINISHED, run.run_id, result.val_loss, circuits.get(names.EDGES_GEOMEAN))
