"""The `methods` command: circuit discovery methods side by side on the same checkpoints.

Every finished job run of the experiment (training runs and re-prune runs, `sweep.stage=prune`) is
one (checkpoint, method) pair: the checkpoint is the training run (`sweep.train_run_id` of a re-prune),
the method is `prune.method` with `prune.ablation` (runs logged before `prune.method` existed are
`mask (before #12)`: the straight-through mask with bisection only). Writes `methods.csv` (one row
per checkpoint, task and method: nodes, edges, solved), `methods_overlap.csv` (Jaccard overlap of
the node sets of every two methods that solved the same task on the same checkpoint) and
`methods.pdf`/`.png` (edges per checkpoint by method, one panel per task, and the overlaps). When a
method ran more than once on a checkpoint, the newest run stands for it.

`methods_disagreement.csv` takes every such pair apart on the checkpoint itself (sweep/circuits/compare.py):
whether the shared nodes reach the target (the rest is excess) or the larger circuit without the smaller
one's nodes still does (redundancy: a second circuit), with that second circuit's size.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

import torch

from analysis import load
from analysis.figures import MARKERS, OKABE_ITO, TWO_COLUMNS, add_legend, log_y, message, paper_style, save
from sweep import names, points
from sweep.circuits.compare import take_apart
from sweep.circuits.prune import Evaluator, keep_of
from sweep.circuits.prune_stage import task_batches

BEFORE = "mask (before #12)"
ABLATION_PARAM = "prune.ablation"
TARGET_PARAM = "prune.target_loss"


def method_label(params: dict) -> str:
    return f"{params.get(load.METHOD_PARAM, BEFORE)}, {params.get(ABLATION_PARAM, 'mean')} ablation"


def checkpoint_label(params: dict) -> str:
    return points.label(params.get(load.WIDTH, 1), params.get(load.DENSITY, 1), params.get(load.SEED, 0))


def method_rows(client, runs: list) -> pd.DataFrame:
    """One row per (checkpoint, task, method) with the circuit's size and node names."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            params, metrics = run.data.params, run.data.metrics
            checkpoint = run.data.tags.get(names.TAG_TRAIN_RUN) or run.info.run_id
            for key in metrics:
                parsed = names.parse_circuit_metric(key)
                if parsed is None or parsed[1] != "solved" or parsed[0] == names.CONTROL:
                    continue
                task = parsed[0]
                solved = metrics[key] == 1.0
                nodes = _nodes(client, run.info.run_id, task, Path(tmp)) if solved else []
                rows.append({"checkpoint": checkpoint_label(params), "train_run_id": checkpoint, "run_id": run.info.run_id,
                             "start_time": run.info.start_time,
                             "method": method_label(params), "task": task, "solved": solved,
                             "nodes": metrics.get(names.circuit_metric(task, "nodes")),
                             "edges": metrics.get(names.circuit_metric(task, "edges")),
                             "nodes_before_pass": metrics.get(names.circuit_metric(task, "nodes_before_pass")),
                             "node_set": " ".join(nodes),
                             "target_loss": float(params.get(TARGET_PARAM, "nan")),
                             "width": float(params.get(load.WIDTH, 1)), "density": float(params.get(load.DENSITY, 1))})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # the newest run of a method on a checkpoint stands for it (a re-prune after the training run's own pruning)
    return table.sort_values("start_time").drop_duplicates(["train_run_id", "task", "method"], keep="last")


def _nodes(client, run_id: str, task: str, tmp: Path) -> list[str]:
    try:
        path = client.download_artifacts(run_id, names.circuit_artifact(task, "json"), str(tmp / run_id))
    except Exception:  # noqa: BLE001 - an older run without the artifact: no overlap for it
        return []
    return json.loads(Path(path).read_text()).get("nodes", [])


def overlaps(table: pd.DataFrame) -> pd.DataFrame:
    """Jaccard overlap of the node sets of every two methods on the same checkpoint and task."""
    rows = []
    solved = table[table["solved"]]
    for (checkpoint, task), group in solved.groupby(["checkpoint", "task"]):
        for (_, a), (_, b) in itertools.combinations(group.sort_values("method").iterrows(), 2):
            set_a, set_b = set(str(a["node_set"]).split()), set(str(b["node_set"]).split())
            rows.append({"checkpoint": checkpoint, "task": task, "method_a": a["method"], "method_b": b["method"],
                         "nodes_a": len(set_a), "nodes_b": len(set_b), "shared": len(set_a & set_b),
                         "jaccard": len(set_a & set_b) / len(set_a | set_b) if set_a | set_b else 1.0})
    return pd.DataFrame(rows, columns=["checkpoint", "task", "method_a", "method_b", "nodes_a", "nodes_b", "shared", "jaccard"])


def ablation_of(method: str) -> str:
    return method.rsplit(", ", 1)[-1].removesuffix(" ablation")


def disagreements(client, table: pd.DataFrame) -> pd.DataFrame:
    """Every two methods that solved a task on a checkpoint at the same ablation and target, taken apart on
    the checkpoint."""
    rows = []
    # a solved circuit whose node list could not be read (an older run without the artifact) is left out
    solved = table[table["solved"] & ((table["node_set"].fillna("").str.len() > 0) | (table["nodes"] == 0))]
    for train_run_id, runs in solved.groupby("train_run_id"):
        pairs = [(task, a, b) for task, group in runs.groupby("task")
                 for (_, a), (_, b) in itertools.combinations(group.sort_values("method").iterrows(), 2)
                 if _setting(a) == _setting(b)]
        for setting in sorted({_setting(a) for _, a, _ in pairs}):
            rows += _take_apart_on(client, train_run_id, setting, [p for p in pairs if _setting(p[1]) == setting])
    return pd.DataFrame(rows)


def _setting(row) -> tuple[str, float]:
    """What two circuits must share to be compared: the ablation and the target loss."""
    return ablation_of(row["method"]), row["target_loss"]


def _take_apart_on(client, train_run_id: str, setting: tuple[str, float], pairs: list) -> list[dict]:
    """The checkpoint loaded once under the setting; each pair taken apart on its task's held-out prompts."""
    from sweep.orchestration.reprune import load_checkpoint  # the job's loading, config checks included

    ablation, target = setting
    _, cfg, corpus, model = load_checkpoint(client, train_run_id, [f"prune.ablation={ablation}",
                                                                   f"prune.target_loss={target}"], client.tracking_uri)
    model.eval()
    evaluators = {}  # per task: its held-out prompts and node means, built once for all its pairs
    rows = []
    for task, a, b in pairs:
        if task not in evaluators:
            _, _, heldout, means = task_batches(model, torch.from_numpy(corpus.val), cfg, [task], corpus.tokenizer)
            evaluators[task] = Evaluator(model, heldout, means)
        evaluator = evaluators[task]
        a_keep, b_keep = (keep_of(evaluator.sites, x["node_set"].split() if isinstance(x["node_set"], str) else [])
                          for x in (a, b))
        apart = take_apart(evaluator, 0, a_keep, b_keep, target)
        rows.append({"checkpoint": a["checkpoint"], "task": task, "method_a": a["method"], "method_b": b["method"],
                     "target_loss": target, **apart.as_dict()})
    return rows


def methods_figure(table: pd.DataFrame, overlap: pd.DataFrame, out: Path) -> list[Path]:
    """One panel per task: edges per checkpoint, a marker per method; a last panel: the overlaps."""
    tasks = sorted(table.loc[table["solved"], "task"].unique()) or sorted(table["task"].unique())[:1]
    order = table.drop_duplicates("checkpoint").sort_values(["width", "density"], ascending=[True, False])["checkpoint"].tolist()
    methods = sorted(table["method"].unique())
    style = {m: (OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}
    n = len(tasks) + 1
    with paper_style():
        fig = Figure(figsize=(TWO_COLUMNS, 2.0 * n + 0.6), layout="constrained")
        axes = fig.subplots(n, 1, sharex=True)
        for ax, task in zip(axes, tasks):
            data = table[(table["task"] == task) & table["solved"]]
            for i, method in enumerate(methods):
                mine = data[data["method"] == method]
                x = [order.index(c) + 0.12 * (i - (len(methods) - 1) / 2) for c in mine["checkpoint"]]
                colour, marker = style[method]
                ax.plot(x, mine["edges"].clip(lower=1), linestyle="none", marker=marker, color=colour)
            if data.empty:
                message(ax, f"{task}: no method solved it on any checkpoint")
            else:
                log_y(ax, data["edges"].clip(lower=1))
            ax.set_ylabel(f"{task}\ncircuit edges (count;\nbelow 1 drawn at 1)")
        ax = axes[-1]
        for (a, b), group in overlap.groupby(["method_a", "method_b"]):
            ax.plot([order.index(c) for c in group["checkpoint"]], group["jaccard"], linestyle="none", marker="o",
                    color="black", alpha=0.7, label=f"{a} vs {b}")
        if overlap.empty:
            message(ax, "no checkpoint has two methods' circuits for the same task")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("node-set overlap\n(Jaccard, all tasks)")
        ax.set_xticks(range(len(order)), order, rotation=60, ha="right")
        ax.set_xlabel("checkpoint (width, density, seed)")
        handles = [Line2D([], [], linestyle="none", marker=style[m][1], color=style[m][0], label=m) for m in methods]
        add_legend(fig, handles, TWO_COLUMNS, where="upper")
        return save(fig, out, "methods")


def compare(client, experiment: str, out: Path, figures: bool = True) -> tuple[list[Path], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Write the methods tables (and figure) for an experiment; returns the files and the three tables."""
    runs = load.select_runs(client, experiment, stage="train").runs
    try:
        runs += load.select_runs(client, experiment, stage="prune").runs
    except load.AnalysisError:
        pass  # no re-prune runs: one method per checkpoint
    table = method_rows(client, runs)
    if table.empty:
        raise load.AnalysisError(f"no circuit metrics in experiment '{experiment}': nothing to compare")
    overlap = overlaps(table)
    apart = disagreements(client, table)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "methods.csv", out / "methods_overlap.csv", out / "methods_disagreement.csv"]
    table.to_csv(files[0], index=False)
    overlap.to_csv(files[1], index=False)
    apart.to_csv(files[2], index=False)
    if figures:
        files += methods_figure(table, overlap, out)
    return files, table, overlap, apart


def summary(table: pd.DataFrame, overlap: pd.DataFrame, apart: pd.DataFrame) -> str:
    """Median edges per method over the (checkpoint, task) pairs every method solved, and the overlaps."""
    solved = table[table["solved"]]
    n_methods = solved["method"].nunique()
    both = solved.groupby(["checkpoint", "task"]).filter(lambda g: g["method"].nunique() == n_methods)
    lines = [f"{table['checkpoint'].nunique()} checkpoints, methods: {', '.join(sorted(table['method'].unique()))}"]
    for method, group in both.groupby("method"):
        lines.append(f"  {method}: median {group['edges'].median():,.0f} edges, {group['nodes'].median():,.0f} nodes "
                     f"over the {len(group)} (checkpoint, task) pairs every method solved")
    for (a, b), group in overlap.groupby(["method_a", "method_b"]):
        lines.append(f"  overlap {a} vs {b}: median Jaccard {group['jaccard'].median():.2f} ({len(group)} pairs)")
    for (a, b), group in (apart.groupby(["method_a", "method_b"]) if not apart.empty else []):
        counts = group["verdict"].value_counts()
        ratio = group[["nodes_a", "nodes_b"]].max(axis=1) / group[["nodes_a", "nodes_b"]].min(axis=1)
        lines.append(f"  {a} vs {b}, taken apart ({len(group)} pairs): "
                     + "; ".join(f"{verdict} {n}" for verdict, n in counts.items())
                     + f"; median f of the shared nodes {group['shared_f'].median():.2f}, "
                       f"median size ratio larger / smaller {ratio.median():.2f}; nodes that can go alone, median "
                       f"{group['removable_a'].median():g} of {group['nodes_a'].median():g} ({a}) and "
                       f"{group['removable_b'].median():g} of {group['nodes_b'].median():g} ({b}); made minimal: "
                       f"{group['nodes_a_minimal'].median():g} and {group['nodes_b_minimal'].median():g} nodes, "
                       f"median Jaccard {group['jaccard_minimal'].median():.2f}")
    return "\n".join(lines)
