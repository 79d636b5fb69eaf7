"""The `frontier` command: runs -> tables -> points -> labels -> frontier -> figures, files and MLflow artifacts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures, findings, latex, load
from analysis.collapse import COLLAPSE, CollapseRule, label_points
from analysis.frontier import (HV_REFERENCE, aggregate_points, assign_points, common_tasks, frontier_table,
                               hypervolume_table, run_edges, task_points)

ARTIFACT_DIR = "frontier"  # in the parent run's artifacts
FINDINGS_CSV = "findings.csv"
FINDINGS_MD = "findings.md"  # the README's findings section
RETENTION_CSV = "task_retention.csv"
FRONTIER_COLUMNS = ["scope", "point", "width", "d_model", "density", "n_seeds", "seeds", "val_loss", "val_loss_ci",
                    "edges", "edges_low", "edges_high", "n_circuit", "nodes", "solved_frac", "nonzero_params",
                    "regime", "rule"]


@dataclass
class Options:
    out: Path
    experiment: str | None = None
    tracking_uri: str = load.DEFAULT_URI
    parent: str | None = None
    stage: str = "train"
    method: str | None = None
    from_csv: Path | None = None
    common_tasks: bool = False
    rule: CollapseRule = field(default_factory=CollapseRule)
    hv_reference: tuple[float, float] = HV_REFERENCE
    figures: bool = True
    log: bool = True


@dataclass
class Result:
    files: list[Path]
    points: pd.DataFrame
    frontier: pd.DataFrame
    hypervolumes: pd.DataFrame
    findings: pd.DataFrame
    notes: list[str]
    parent_run_id: str | None = None
    artifact_uri: str | None = None


def load_tables(options: Options) -> tuple[pd.DataFrame, pd.DataFrame, list[str], str | None, object]:
    """runs and tasks tables, notes, the parent run to log to, and the client (None offline)."""
    if options.from_csv is not None:
        runs, tasks = load.read_tables(options.from_csv)
        return runs, tasks, [f"rebuilt from {options.from_csv} (no MLflow access)"], None, None
    if not options.experiment:
        raise load.AnalysisError("--experiment NAME is needed (or --from-csv DIR)")
    client = load.open_client(options.tracking_uri)
    selection = load.select_runs(client, options.experiment, options.parent, options.stage, options.method)
    methods = sorted({load.run_method(r) for r in selection.runs})
    if len(methods) > 1:  # two circuits of one checkpoint would count as two seeds of its point
        raise load.AnalysisError(f"the {options.stage} runs read hold several discovery methods ({', '.join(methods)}): "
                                 "choose one with --method")
    runs, per_byte = load.losses_per_byte(load.runs_table(selection.runs))
    return runs, load.tasks_table(selection.runs), selection.notes + ([per_byte] if per_byte else []), \
        selection.parent_run_id, client


def circuit_sizes(runs: pd.DataFrame, tasks: pd.DataFrame, use_common: bool) -> tuple[pd.Series, str, str]:
    """Each run's circuit size, the y-axis label, and a note when the tasks were restricted."""
    label = "circuit edges (count)\ngeomean over solved tasks"
    if not use_common:
        return run_edges(runs, tasks, None), label, ""
    common = common_tasks(tasks)
    if not common:
        return run_edges(runs, tasks, None), label, "--common-tasks: no task is solved by every point with a circuit; all solved tasks used"
    return run_edges(runs, tasks, common), "circuit edges (count)\ngeomean over common tasks", f"tasks solved by every point: {', '.join(common)}"


def analyse(options: Options) -> Result:
    """Write every table and figure of the analysis into options.out, and log them to the parent run."""
    runs, tasks, notes, parent_run_id, client = load_tables(options)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    if options.from_csv is None or options.from_csv.resolve() != out.resolve():
        load.write_tables(runs, tasks, out)
    runs, variants = assign_points(runs)
    if variants:
        notes.append(f"runs differ in {', '.join(variants)} besides width, density and seed: these tell points apart")
    edges, edges_label, common_note = circuit_sizes(runs, tasks, options.common_tasks)
    if common_note:
        notes.append(common_note)
    per_task = task_points(runs, tasks)
    points = label_points(aggregate_points(runs, edges), per_task, options.rule)
    if not points["pruned"].any():
        notes.append("no circuit metrics in these runs (pruning disabled, or older runs): no frontier, only capability")
    frontier = frontier_table(points)
    hypervolumes = hypervolume_table(points, options.hv_reference)
    stated = findings.findings_table(runs, edges, points)
    retention = findings.task_retention(tasks)

    files = [out / load.RUNS_CSV, out / load.TASKS_CSV]
    for name, table in (("points.csv", points), ("frontier.csv", frontier[FRONTIER_COLUMNS]),
                        ("hypervolume.csv", hypervolumes), (FINDINGS_CSV, stated),
                        (RETENTION_CSV, retention)):
        table.to_csv(out / name, index=False)
        files.append(out / name)
    (out / "frontier.tex").write_text(latex.frontier_tex(frontier, hypervolumes, common_note))
    source = (f"experiment `{options.experiment}`" if options.from_csv is None else f"`{options.from_csv}`") + \
        f", {len(runs)} runs, {time.strftime('%Y-%m-%d')}"
    (out / FINDINGS_MD).write_text(findings.markdown(stated, source, retention))
    files += [out / "frontier.tex", out / FINDINGS_MD]
    if options.figures:
        files += figures.write_all(points, per_task, options.rule, out, edges_label, common_note)

    result = Result(files, points, frontier, hypervolumes, stated, notes, parent_run_id)
    if options.log and client is not None and parent_run_id is not None:
        for path in files:
            client.log_artifact(parent_run_id, str(path), ARTIFACT_DIR)
        result.artifact_uri = f"{client.get_run(parent_run_id).info.artifact_uri}/{ARTIFACT_DIR}"
    return result


def summary(result: Result, rule: CollapseRule) -> str:
    """What the command prints: notes, the overall frontier, hypervolumes, the collapse, and where the files are."""
    lines = [f"note: {n}" for n in result.notes]
    points = result.points
    lines.append(f"{len(points)} points from {int(points['n_seeds'].sum())} runs; {rule.describe()}")
    overall = result.frontier[result.frontier["scope"] == "overall"]
    if len(overall):
        lines.append("overall frontier (loss nats/byte, edges):")
        lines += [f"  {p['point']:<14} {p['val_loss']:.3f}  {p['edges']:>9,.0f}  {p['regime']}" for _, p in overall.iterrows()]
    hv = result.hypervolumes
    lines.append(f"hypervolume (nats/byte x decades of edges, reference {hv['ref_val_loss'].iloc[0]:g} nats/byte, "
                 f"{hv['ref_edges'].iloc[0]:g} edges): " + ", ".join(
                     f"{r['scope']} {r['hypervolume']:.3f}" if r["n_points"] else f"{r['scope']} n/a (no circuit)"
                     for _, r in hv.iterrows()))
    collapsed = points[points["regime"] == COLLAPSE]
    lines.append(f"collapse: {len(collapsed)} of {len(points)} points" + "".join(
        f"\n  {p['point']:<14} {p['rule']}" for _, p in collapsed.iterrows()))
    lines.append(f"findings ({FINDINGS_CSV}; verdicts: holds, does not hold, undecided at this size):")
    lines += findings.describe(result.findings)
    out = result.files[0].parent
    shown = ", ".join(p.name for p in result.files if p.name.startswith("frontier."))
    lines.append(f"wrote {len(result.files)} files to {out.resolve()}/ ({shown}, ...)")
    if result.artifact_uri:
        lines.append(f"logged them to parent run {result.parent_run_id}: {result.artifact_uri}")
    elif result.parent_run_id is None and "rebuilt" not in " ".join(result.notes):
        lines.append("not logged to MLflow: the runs have no parent run")
    return "\n".join(lines)
