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
from sweep.circuits.circuit import EdgeCounter, circuit_edges, circuit_record, curve_record, write_json
from sweep.circuits.drawing import draw, draw_curve
from sweep.science.data import eval_windows
from sweep.circuits.discovery import METHODS, rank_nodes
from sweep.circuits.discretise import Circuit, smallest_circuits
from sweep.circuits.faithfulness import BASELINE, TARGET, Baseline, Faithfulness, TrialLog, measure
from sweep.errors import ConfigError
from sweep.points import run_seed
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
    check_prune_settings(cfg.prune)
    check_tasks(cfg)


def check_task_names(tasks_cfg: DictConfig) -> None:
    """The tasks named (or the suite) exist, user YAML tasks load: checked with pruning off too, where a
    misspelt task would otherwise pass unnoticed until the first run that prunes."""
    for name in task_names(tasks_cfg):
        tasks.check_known(name)


def check_prune_settings(p: DictConfig) -> None:
    """The `prune.` keys alone: the method, its settings, the target and the faithfulness measures."""
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
    if not _positive(p.faithfulness) or p.faithfulness >= 1:
        raise ConfigError("prune.faithfulness", p.faithfulness, "must be a number in (0, 1): the fraction of the "
                                                                "full model's ability a circuit keeps")
    if not (_positive(p.faithfulness_margin) or p.faithfulness_margin == 0) or isinstance(p.faithfulness_margin, bool):
        raise ConfigError("prune.faithfulness_margin", p.faithfulness_margin, "must be a number >= 0 (nats)")
    fractions = list(p.curve_fractions) if isinstance(p.curve_fractions, ListConfig) else None
    if (not fractions or not all(_positive(x) and x <= 1 for x in fractions)
            or any(a >= b for a, b in zip(fractions, fractions[1:]))):
        raise ConfigError("prune.curve_fractions", p.curve_fractions,
                          "must be a non-empty list of fractions in (0, 1], strictly increasing")
    temperature = list(p.temperature) if isinstance(p.temperature, ListConfig) else None
    if not temperature or len(temperature) != 2 or not all(_positive(t) for t in temperature):
        raise ConfigError("prune.temperature", p.temperature, "must be [start, end], two numbers > 0")


def check_tasks(cfg: DictConfig, tokenizer: Tokenizer = BYTES) -> None:
    """Every task of the suite and the control exists, fits, and has single-token answers under the
    tokenizer (a BPE is known only once the corpus is loaded: the job checks again then)."""
    for name in [*task_names(cfg.tasks), tasks.CONTROL]:
        tasks.check_task(name, cfg.model.n_ctx, run_seed(cfg), cfg.tasks.n_train, cfg.tasks.n_heldout, cfg.tasks.preamble,
                         tokenizer)


def _positive(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def task_tokens(task_set: tasks.TaskSet, tokenizer: Tokenizer) -> tuple[set[int], set[int]]:
    """The tokens of a task's prompts and its answers' first tokens: the embedding and unembedding ends of edges."""
    examples = task_set.train + task_set.heldout
    return ({t for e in examples for t in tokenizer.encode(e.prompt)},
            {tokenizer.encode(e.target)[0] for e in examples})


def judge(model: GPT, task_set: tasks.TaskSet, task: int, circuit: Circuit, evaluator: Evaluator, target_loss: float,
          baseline: Baseline, tokens: tuple[set[int], set[int]]):
    """A circuit's size and honesty checks (per-task metric values), its node names and its edges."""
    is_control = task_set.name == tasks.CONTROL
    values = {"loss": circuit.loss, "full_loss": baseline.full, "empty_loss": baseline.empty}
    if not circuit.solved:
        nan = math.nan
        return {**values, "nodes": nan, "edges": nan, "solved": 0.0, "necessity_loss": baseline.full,
                "beats_model": 0.0, "nodes_before_pass": nan, "nodes_restart_median": nan}, [], []
    nodes = node_names(evaluator.sites, circuit.keep)
    edges = circuit_edges(model, nodes, *tokens)
    model_reaches = baseline.full <= target_loss
    necessity_loss, = evaluator.losses([(task, ~circuit.keep)])
    return {**values, "nodes": len(nodes), "edges": len(edges),
            # the control has no rule for the model to follow: reaching the target at all is its "solved"
            "solved": float(model_reaches or is_control), "necessity_loss": necessity_loss,
            "beats_model": float(not model_reaches and not is_control),
            "nodes_before_pass": circuit.nodes_before_pass, "nodes_restart_median": circuit.restart_median}, nodes, edges


def faithfulness_values(found: Faithfulness, target_circuit: Circuit, counter: EdgeCounter) -> dict[str, float]:
    """The per-task faithfulness metrics: f of the target circuit, the f80 circuit's size, CPR and CMD."""
    nan = math.nan
    f80 = found.circuit
    return {"faithfulness": found.f(target_circuit.loss) if target_circuit.solved else nan,
            "nodes_at_f80": float(f80.keep.sum()) if f80.solved else nan,
            "edges_at_f80": float(counter.count(f80.keep[None])[0]) if f80.solved else nan,
            "cpr": found.cpr, "cmd": found.cmd}


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


def task_batches(model: GPT, val_tokens: torch.Tensor, cfg: DictConfig, task_list: list[str],
                 tokenizer: Tokenizer = BYTES) -> tuple[list[tasks.TaskSet], list, list, dict | None]:
    """What a job prunes on: each task's prompts (drawn from the run's seed), its train and held-out
    batches on the model's device, and the node means (None under zero ablation)."""
    device = next(model.parameters()).device
    n_ctx = cfg.model.n_ctx
    sets = [tasks.generate(n, cfg.tasks.n_train, cfg.tasks.n_heldout, run_seed(cfg), n_ctx, cfg.tasks.preamble)
            for n in task_list]
    on_device = lambda batch: tuple(t.to(device) for t in batch)  # noqa: E731
    train = [on_device(tasks.encode(s.train, tokenizer, n_ctx)) for s in sets]
    heldout = [on_device(tasks.encode(s.heldout, tokenizer, n_ctx)) for s in sets]
    text, _ = eval_windows(val_tokens, n_ctx, cfg.prune.mean_windows)
    means = node_means(model, text.to(device), cfg.train.batch_size) if cfg.prune.ablation == "mean" else None
    return sets, train, heldout, means


def run_pruning(model: GPT, val_tokens: torch.Tensor, cfg: DictConfig, log_metrics, log_artifacts,
                tokenizer: Tokenizer = BYTES) -> dict:
    """Prune every task (and the control) in one optimisation; measure faithfulness; log metrics and artifacts."""
    start = time.perf_counter()
    p = cfg.prune
    task_list = [*task_names(cfg.tasks), tasks.CONTROL]
    sets, train, heldout, means = task_batches(model, val_tokens, cfg, task_list, tokenizer)
    rankings = rank_nodes(model, train, means, p)
    evaluator = Evaluator(model, heldout, means)
    log = TrialLog(evaluator.losses)
    everything = torch.ones(evaluator.n_nodes, dtype=torch.bool)
    ends = log.asking(BASELINE)([(task, keep) for task in range(len(sets)) for keep in (everything, ~everything)])
    baselines = [Baseline(full, empty) for full, empty in zip(ends[::2], ends[1::2])]
    circuits = smallest_circuits(rankings, log.asking(TARGET), p.target_loss, p.passes)
    tokens = [task_tokens(s, tokenizer) for s in sets]
    counters = [EdgeCounter(model, *t) for t in tokens]
    faithful = measure(rankings, log, baselines, counters, evaluator.n_nodes, p)

    metrics: dict[str, float] = {}
    solved_edges, solved_nodes, f80_edges = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for task, (task_set, circuit, found) in enumerate(zip(sets, circuits, faithful)):
            values, nodes, edges = judge(model, task_set, task, circuit, evaluator, p.target_loss, baselines[task],
                                         tokens[task])
            values["cue_distance"] = tasks.cue_distance(task_set, tokenizer)
            values.update(faithfulness_values(found, circuit, counters[task]))
            is_control = task_set.name == tasks.CONTROL
            if values["solved"] and not is_control:
                solved_edges.append(len(edges))
                solved_nodes.append(len(nodes))
            if not is_control and math.isfinite(values["edges_at_f80"]):
                f80_edges.append(values["edges_at_f80"])
            metrics.update({names.circuit_metric(task_set.name, k): v for k, v in values.items()})
            record = circuit_record(task_set.name, values, unsolved_reason(values, p.target_loss), p.target_loss,
                                    p.ablation, p.method, nodes, edges)
            write_json(Path(tmp) / f"{task_set.name}.json", record)
            draw(Path(tmp) / f"{task_set.name}.png", record, tokenizer.token_text)
            curve = curve_record(task_set.name, found, circuit, values, p)
            write_json(Path(tmp) / f"{task_set.name}.curve.json", curve)
            draw_curve(Path(tmp) / f"{task_set.name}.curve.png", curve)
        edges_geomean = names.geomean(solved_edges)
        metrics.update({names.EDGES_GEOMEAN: edges_geomean, names.LOG10_EDGES_GEOMEAN: math.log10(edges_geomean),
                        names.NODES_GEOMEAN: names.geomean(solved_nodes),
                        names.EDGES_AT_F80_GEOMEAN: names.geomean(f80_edges),
                        names.TASKS_SOLVED_FRAC: len(solved_edges) / (len(task_list) - 1),
                        names.TIME_PRUNE: time.perf_counter() - start})
        log_metrics(metrics)
        log_artifacts(Path(tmp), "circuits")
    return metrics
