"""The pruning stage of a job: every task's circuit, its honesty checks, metrics and artifacts."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from sweep import names, tasks
from sweep.circuit import circuit_edges, draw, parse_nodes, write_json
from sweep.data import eval_windows
from sweep.errors import ConfigError
from sweep.model import GPT
from sweep.prune import ABLATIONS, NodeMasks, node_means, prune


def task_names(tasks_cfg: DictConfig) -> list[str]:
    """The tasks a job prunes: an explicit list or a suite (user YAML tasks are loaded first)."""
    template_dir = Path(tasks_cfg.template_dir)
    if template_dir.is_dir():
        for path in sorted(template_dir.glob("*.yaml")):
            tasks.load_yaml_task(path)
    if tasks_cfg.names:
        return list(tasks_cfg.names)
    if tasks_cfg.suite not in tasks.SUITES:
        raise ConfigError("tasks.suite", tasks_cfg.suite, f"allowed: {', '.join(tasks.SUITES)}")
    return list(tasks.SUITES[tasks_cfg.suite])


def check_prune_config(cfg: DictConfig) -> None:
    """Config-time checks of the pruning stage: the tasks, the target, the ablation."""
    if cfg.prune.ablation not in ABLATIONS:
        raise ConfigError("prune.ablation", cfg.prune.ablation, f"allowed: {', '.join(ABLATIONS)}")
    target = cfg.prune.target_loss
    if isinstance(target, bool) or not isinstance(target, (int, float)) or target <= 0:
        raise ConfigError("prune.target_loss", target, "must be a number > 0 (chance is ln 2 = 0.693)")
    for name in [*task_names(cfg.tasks), tasks.CONTROL]:
        tasks.check_task(name, cfg.model.n_ctx, cfg.seed, cfg.tasks.n_train, cfg.tasks.n_heldout, cfg.tasks.preamble)


@torch.no_grad()
def _loss(model: GPT, batch, masks: NodeMasks | None = None) -> float:
    tokens, last, target, other = batch
    if masks is None:
        return tasks.task_loss(model(tokens), last, target, other).item()
    masks.rows = torch.zeros(len(last), dtype=torch.long)
    with model.hooked(masks):
        return tasks.task_loss(model(tokens), last, target, other).item()


def _ablate_only(model: GPT, nodes: list[str], means) -> NodeMasks:
    """Masks that keep every node except the circuit's (the necessity check)."""
    kept = parse_nodes(model, nodes)
    masks = NodeMasks({site: len(k) for site, k in kept.items()}, 1, means)
    masks.hard = {site: (~k).float()[None, :] for site, k in kept.items()}
    return masks


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(max(v, 1)) for v in values) / len(values)) if values else float("nan")


def judge(model: GPT, task_set: tasks.TaskSet, circuit, batch, means, target_loss: float):
    """A circuit's size and honesty checks (per-task metric values) and its edges."""
    is_control = task_set.name == tasks.CONTROL
    full_loss = _loss(model, batch)
    if not circuit.solved:
        nan = math.nan
        return {"nodes": nan, "edges": nan, "loss": circuit.loss, "full_loss": full_loss, "solved": 0.0,
                "necessity_loss": full_loss, "beats_model": 0.0}, []
    examples = task_set.train + task_set.heldout
    inputs = {b for e in examples for b in e.prompt.encode()}
    answers = {e.target.encode()[0] for e in examples}
    edges = circuit_edges(model, circuit.nodes, inputs, answers)
    model_reaches = full_loss <= target_loss
    return {"nodes": len(circuit.nodes), "edges": len(edges), "loss": circuit.loss, "full_loss": full_loss,
            # the control has no rule for the model to follow: reaching the target at all is its "solved"
            "solved": float(model_reaches or is_control),
            "necessity_loss": _loss(model, batch, _ablate_only(model, circuit.nodes, means)),
            "beats_model": float(not model_reaches and not is_control)}, edges


def run_pruning(model: GPT, val_tokens: torch.Tensor, cfg: DictConfig, log_metrics, log_artifacts) -> dict:
    """Prune every task (and the control) in one optimisation; log metrics and circuit artifacts."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    p, n_ctx = cfg.prune, cfg.model.n_ctx
    task_list = [*task_names(cfg.tasks), tasks.CONTROL]
    sets = [tasks.generate(n, cfg.tasks.n_train, cfg.tasks.n_heldout, cfg.seed, n_ctx, cfg.tasks.preamble)
            for n in task_list]
    on_device = lambda batch: tuple(t.to(device) for t in batch)  # noqa: E731
    train = [on_device(tasks.encode(s.train)) for s in sets]
    heldout = [on_device(tasks.encode(s.heldout)) for s in sets]
    text, _ = eval_windows(val_tokens, n_ctx, p.mean_windows)
    means = node_means(model, text.to(device), cfg.train.batch_size) if p.ablation == "mean" else None
    model.eval()
    circuits = prune(model, train, heldout, means, p.target_loss, p.steps, p.penalty, p.lr)

    metrics: dict[str, float] = {}
    solved_edges, solved_nodes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for task_set, circuit, batch in zip(sets, circuits, heldout):
            values, edges = judge(model, task_set, circuit, batch, means, p.target_loss)
            is_control = task_set.name == tasks.CONTROL
            if values["solved"] and not is_control:
                solved_edges.append(len(edges))
                solved_nodes.append(len(circuit.nodes))
            metrics.update({names.circuit_metric("control" if is_control else task_set.name, k): v
                            for k, v in values.items()})
            write_json(Path(tmp) / f"{task_set.name}.json",
                       {"task": task_set.name, **values, "target_loss": p.target_loss, "ablation": p.ablation,
                        "nodes": circuit.nodes, "edges": [list(e) for e in edges]})
            draw(Path(tmp) / f"{task_set.name}.png", task_set.name, circuit.nodes, edges, model.shape.n_layer)
        metrics.update({names.EDGES_GEOMEAN: _geomean(solved_edges), names.NODES_GEOMEAN: _geomean(solved_nodes),
                        names.TASKS_SOLVED_FRAC: len(solved_edges) / (len(task_list) - 1),
                        names.TIME_PRUNE: time.perf_counter() - start})
        log_metrics(metrics)
        log_artifacts(Path(tmp), "circuits")
    return metrics
