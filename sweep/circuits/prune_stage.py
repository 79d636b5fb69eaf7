"""The pruning stage of a job: every task's circuit, its honesty checks, metrics and artifacts."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from sweep import names
from sweep.circuits import tasks
from sweep.circuits.circuit import circuit_edges, circuit_record, write_json
from sweep.circuits.drawing import draw
from sweep.science.data import eval_windows
from sweep.circuits.discovery import METHODS, find_circuits
from sweep.circuits.discretise import Circuit
from sweep.errors import ConfigError
from sweep.science.model import GPT
from sweep.circuits.prune import ABLATIONS, Evaluator, node_means, node_names
from sweep.circuits.prune_mask import GATES
from sweep.science.tokenizer import BYTES, Tokenizer


def task_names(tasks_cfg: DictConfig) -> list[str]:
    """The tasks a job prunes: an explicit list or a suite (user YAML tasks are loaded first)."""
    template_dir = Path(tasks_cfg.template_dir)
    if template_dir.is_dir():
        for path in sorted(template_dir.glob("*.yaml")):
            tasks.load_yaml_task(path)
    if tasks_cfg.names is not None:
        if not tasks_cfg.names:
            raise ConfigError("tasks.names", "[]", "name at least one task, or leave it null for the suite in tasks.suite")
        return list(tasks_cfg.names)
    if tasks_cfg.suite not in tasks.SUITES:
        raise ConfigError("tasks.suite", tasks_cfg.suite, f"allowed: {', '.join(tasks.SUITES)}")
    return list(tasks.SUITES[tasks_cfg.suite])


def check_prune_config(cfg: DictConfig) -> None:
    """Config-time checks of the pruning stage: the method and its settings, the tasks, the target."""
    p = cfg.prune
    for key, allowed in (("method", tuple(METHODS)), ("ablation", ABLATIONS), ("gate", GATES)):
        if p[key] not in allowed:
            raise ConfigError(f"prune.{key}", p[key], f"allowed: {', '.join(allowed)}")
    if not _positive(p.target_loss):
        raise ConfigError("prune.target_loss", p.target_loss, "must be a number > 0 (chance is ln 2 = 0.693)")
    ladder = list(p.penalty) if isinstance(p.penalty, ListConfig) else [p.penalty]
    if not ladder or not all(_positive(v) or v == 0 for v in ladder):
        raise ConfigError("prune.penalty", p.penalty, "must be a number >= 0 or a non-empty list of them (a ladder)")
    for key in ("restarts", "passes", "attribution_steps"):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
            raise ConfigError(f"prune.{key}", p[key], "must be an integer >= 1")
    temperature = list(p.temperature) if isinstance(p.temperature, ListConfig) else None
    if not temperature or len(temperature) != 2 or not all(_positive(t) for t in temperature):
        raise ConfigError("prune.temperature", p.temperature, "must be [start, end], two numbers > 0")
    check_tasks(cfg)


def check_tasks(cfg: DictConfig, tokenizer: Tokenizer = BYTES) -> None:
    """Every task of the suite and the control exists, fits, and has single-token answers under the
    tokenizer (a BPE is known only once the corpus is loaded: the job checks again then)."""
    for name in [*task_names(cfg.tasks), tasks.CONTROL]:
        tasks.check_task(name, cfg.model.n_ctx, cfg.seed, cfg.tasks.n_train, cfg.tasks.n_heldout, cfg.tasks.preamble,
                         tokenizer)


def _positive(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def judge(model: GPT, task_set: tasks.TaskSet, task: int, circuit: Circuit, evaluator: Evaluator, target_loss: float,
          tokenizer: Tokenizer = BYTES):
    """A circuit's size and honesty checks (per-task metric values), its node names and its edges."""
    is_control = task_set.name == tasks.CONTROL
    everything = torch.ones(evaluator.n_nodes, dtype=torch.bool)
    full_loss, empty_loss = evaluator.losses([(task, everything), (task, ~everything)])
    values = {"loss": circuit.loss, "full_loss": full_loss, "empty_loss": empty_loss,
              "cue_distance": tasks.cue_distance(task_set, tokenizer)}
    if not circuit.solved:
        nan = math.nan
        return {**values, "nodes": nan, "edges": nan, "solved": 0.0, "necessity_loss": full_loss, "beats_model": 0.0,
                "nodes_before_pass": nan, "nodes_restart_median": nan}, [], []
    nodes = node_names(evaluator.sites, circuit.keep)
    examples = task_set.train + task_set.heldout
    inputs = {t for e in examples for t in tokenizer.encode(e.prompt)}
    answers = {tokenizer.encode(e.target)[0] for e in examples}
    edges = circuit_edges(model, nodes, inputs, answers)
    model_reaches = full_loss <= target_loss
    necessity_loss, = evaluator.losses([(task, ~circuit.keep)])
    return {**values, "nodes": len(nodes), "edges": len(edges),
            # the control has no rule for the model to follow: reaching the target at all is its "solved"
            "solved": float(model_reaches or is_control), "necessity_loss": necessity_loss,
            "beats_model": float(not model_reaches and not is_control),
            "nodes_before_pass": circuit.nodes_before_pass, "nodes_restart_median": circuit.restart_median}, nodes, edges


def unsolved_reason(values: dict, target_loss: float) -> str | None:
    """Why `judge` counts a task unsolved, in words for the circuit's record and drawing; None if solved."""
    if values["solved"] == 1:
        return None
    full, target = values["full_loss"], f"{target_loss:g}"
    if values["beats_model"] == 1:
        return (f"not solved: a circuit reaches the target (loss {values['loss']:.3f} <= {target}) but the full model "
                f"does not (loss {full:.3f} > {target}): the behaviour was carved out, not found")
    if full > target_loss:
        return f"not solved: full-model loss {full:.3f} > target {target}"
    return (f"not solved: the full model reaches the target ({full:.3f} <= {target}) "
            f"but no circuit under the pruning budget did")


def run_pruning(model: GPT, val_tokens: torch.Tensor, cfg: DictConfig, log_metrics, log_artifacts,
                tokenizer: Tokenizer = BYTES) -> dict:
    """Prune every task (and the control) in one optimisation; log metrics and circuit artifacts."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    p, n_ctx = cfg.prune, cfg.model.n_ctx
    task_list = [*task_names(cfg.tasks), tasks.CONTROL]
    sets = [tasks.generate(n, cfg.tasks.n_train, cfg.tasks.n_heldout, cfg.seed, n_ctx, cfg.tasks.preamble)
            for n in task_list]
    on_device = lambda batch: tuple(t.to(device) for t in batch)  # noqa: E731
    train = [on_device(tasks.encode(s.train, tokenizer, n_ctx)) for s in sets]
    heldout = [on_device(tasks.encode(s.heldout, tokenizer, n_ctx)) for s in sets]
    text, _ = eval_windows(val_tokens, n_ctx, p.mean_windows)
    means = node_means(model, text.to(device), cfg.train.batch_size) if p.ablation == "mean" else None
    circuits, evaluator = find_circuits(model, train, heldout, means, p)

    metrics: dict[str, float] = {}
    solved_edges, solved_nodes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for task, (task_set, circuit) in enumerate(zip(sets, circuits)):
            values, nodes, edges = judge(model, task_set, task, circuit, evaluator, p.target_loss, tokenizer)
            is_control = task_set.name == tasks.CONTROL
            if values["solved"] and not is_control:
                solved_edges.append(len(edges))
                solved_nodes.append(len(nodes))
            metrics.update({names.circuit_metric(task_set.name, k): v for k, v in values.items()})
            record = circuit_record(task_set.name, values, unsolved_reason(values, p.target_loss), p.target_loss,
                                    p.ablation, p.method, nodes, edges)
            write_json(Path(tmp) / f"{task_set.name}.json", record)
            draw(Path(tmp) / f"{task_set.name}.png", record, tokenizer.token_text)
        edges_geomean = names.geomean(solved_edges)
        metrics.update({names.EDGES_GEOMEAN: edges_geomean, names.LOG10_EDGES_GEOMEAN: math.log10(edges_geomean),
                        names.NODES_GEOMEAN: names.geomean(solved_nodes),
                        names.TASKS_SOLVED_FRAC: len(solved_edges) / (len(task_list) - 1),
                        names.TIME_PRUNE: time.perf_counter() - start})
        log_metrics(metrics)
        log_artifacts(Path(tmp), "circuits")
    return metrics
