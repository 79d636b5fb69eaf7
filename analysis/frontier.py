"""Grid points from runs (seeds pooled, t-based 95% intervals), Pareto sets and hypervolume.

The plane: capability `capability/val_loss` (x, nats/byte) against interpretability
`circuit/edges_geomean` (y, edges, log scale); lower is better on both. Losses are averaged over
seeds; circuit sizes on the log scale (a geometric mean over seeds, the interval exponentiated).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats  # a dependency of mlflow

from analysis.load import BASE_WIDTH, DENSITY, SEED, SEED_OFFSET, WIDTH, AnalysisError
from sweep import names, points

CONFIDENCE = 0.95
CONTROL_TASK = names.CONTROL  # the nonsense control: never part of a geomean
# Circuit size by two measures, each a per-task column: `target`, the edges of the smallest circuit at the
# target loss where the full model reaches it (the paper's); `f80`, the edges of the smallest circuit keeping
# 80% of the full model's ability, wherever the model has it (names.CIRCUIT_PER_TASK).
MEASURES = {"target": "edges", "f80": "edges_at_f80"}
# Fixed, so that two sweeps' hypervolumes compare: a loss worse than unigram (3.35 nats/byte on
# the stdlib corpus) or a circuit of a million edges is worth nothing.
HV_REFERENCE = (3.5, 1e6)
IDENTITY_COLUMNS = ("run_id", "run_name", "parent_run_id", "config_hash", "stage", "train_run_id", "start_time",
                    "point", "series")


def variant_columns(runs: pd.DataFrame) -> list[str]:
    """Params other than width, density and seed that differ between runs: they tell points apart too."""
    params = [c for c in runs.columns if "/" not in c and c not in IDENTITY_COLUMNS
              and c not in (WIDTH, DENSITY, SEED, SEED_OFFSET, *points.DERIVED_KEYS) and not points.is_where_key(c)]
    return sorted(c for c in params if runs[c].astype(str).nunique(dropna=False) > 1)


def assign_points(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Add a `point` label (`w2-d0.06`, plus any differing params) to every run; seeds share it."""
    variants = variant_columns(runs)
    runs = runs.copy()

    def extra(row) -> str:
        # `target_loss=0.3`: the key's last part, as in the sweep's run names
        return " ".join(f"{c.rsplit('.', 1)[-1]}={row[c]:g}" if isinstance(row[c], float)
                        else f"{c.rsplit('.', 1)[-1]}={row[c]}" for c in variants)

    def label(row) -> str:
        return " ".join(filter(None, [points.label(row[WIDTH], row[DENSITY]), extra(row)]))

    def series(row) -> str:
        return " ".join(filter(None, [f"x{row[WIDTH]:g}", extra(row)]))

    runs["point"] = runs.apply(label, axis=1)
    runs["series"] = runs.apply(series, axis=1)  # a point without its density: one line in the figures
    return runs, variants


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its t-based confidence interval (NaN for fewer than two values)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), math.nan
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)


def geo_mean_ci(values) -> tuple[float, float, float]:
    """Geometric mean and its interval (low, high), computed on the log scale."""
    v = [x for x in values if np.isfinite(x) and x > 0]
    mean, half = mean_ci(np.log(v))
    if v and min(v) == max(v):
        return v[0], math.exp(mean - half), math.exp(mean + half)  # exactly, not exp(log(x)) ~ x
    return math.exp(mean) if v else math.nan, math.exp(mean - half), math.exp(mean + half)


def common_tasks(tasks: pd.DataFrame) -> list[str]:
    """Tasks solved by every run that solved any (the control excluded)."""
    solved = tasks[(tasks["task"] != CONTROL_TASK) & (tasks["solved"] == 1)]
    sets = [set(group["task"]) for _, group in solved.groupby("run_id")]
    return sorted(set.intersection(*sets)) if sets else []


def with_circuit(tasks: pd.DataFrame, measure: str = "target") -> pd.DataFrame:
    """The (run, task) rows with a circuit by the measure (the control left out), its size in `size`."""
    column = MEASURES[measure]
    if column not in tasks or not len(tasks):
        return tasks.iloc[:0].assign(size=pd.Series(dtype=float))
    size = pd.to_numeric(tasks[column], errors="coerce")
    if measure == "target":
        size = size.where(tasks["solved"] == 1)
    keep = (tasks["task"] != CONTROL_TASK) & np.isfinite(size)
    return tasks[keep].assign(size=size[keep])


def run_edges(runs: pd.DataFrame, tasks: pd.DataFrame, restrict: list[str] | None, measure: str = "target") -> pd.Series:
    """Each run's circuit size by the measure: the geomean over its tasks with a circuit, or over the
    `restrict` tasks (NaN unless it has all of them)."""
    chosen = with_circuit(tasks, measure)
    if restrict is not None:
        chosen = chosen[chosen["task"].isin(restrict)]
    need = len(restrict) if restrict is not None else 1
    per_run = chosen.groupby("run_id")["size"].apply(lambda e: names.geomean(e) if len(e) >= need else math.nan)
    return runs["run_id"].map(per_run).astype(float)


def _column(group: pd.DataFrame, name: str) -> pd.Series:
    return group[name].astype(float) if name in group else pd.Series(math.nan, index=group.index)


def aggregate_points(runs: pd.DataFrame, edges: pd.Series) -> pd.DataFrame:
    """One row per grid point: seeds pooled; `edges` is each run's circuit size (NaN: no circuit)."""
    runs = runs.assign(_edges=edges.values)
    rows = []
    for point, group in runs.groupby("point", sort=False):
        first = group.iloc[0]
        loss, loss_ci = mean_ci(group[names.CAPABILITY_VAL_LOSS])
        geo, lo, hi = geo_mean_ci(group["_edges"])
        solved = _column(group, names.TASKS_SOLVED_FRAC)
        rows.append({
            "point": point, "series": first["series"], "width": first[WIDTH], "density": first[DENSITY],
            "d_model": first[BASE_WIDTH] * first[WIDTH] if BASE_WIDTH in group else math.nan,
            "n_seeds": len(group), "seeds": ",".join(f"{s:g}" for s in sorted(group[SEED])),
            "val_loss": loss, "val_loss_ci": loss_ci,
            "edges": geo, "edges_low": lo, "edges_high": hi, "n_circuit": int(np.isfinite(group["_edges"]).sum()),
            "nodes": geo_mean_ci(_column(group, names.NODES_GEOMEAN))[0],
            "pruned": bool(solved.notna().any()), "solved_frac": solved.mean(),
            "nonzero_params": _column(group, names.MODEL_NONZERO_PARAMS).mean(),
            "total_params": _column(group, names.MODEL_TOTAL_PARAMS).mean(),
            "bigram_loss": _column(group, names.CAPABILITY_BIGRAM).mean(),
            "unigram_loss": _column(group, names.CAPABILITY_UNIGRAM).mean(),
            "dead_by_weight": _column(group, names.COLLAPSE_DEAD_BY_WEIGHT).mean(),
            "dead_by_activity": _column(group, names.COLLAPSE_DEAD_BY_ACTIVITY).mean(),
            "dead_layers": _column(group, names.COLLAPSE_DEAD_LAYERS).mean(),
            "run_ids": " ".join(group["run_id"]),
        })
    points = pd.DataFrame(rows)
    return points.sort_values(["width", "series", "density"], ascending=[True, True, False], ignore_index=True)


def task_points(runs: pd.DataFrame, tasks: pd.DataFrame, measure: str = "target") -> pd.DataFrame:
    """One row per (grid point, task): edges by the measure over the seeds with a circuit (geometric mean);
    `n_solved`: the seeds with a circuit by the measure (by `target`: the seeds that solved it)."""
    merged = tasks.merge(runs[["run_id", "point"]], on="run_id")
    sized = with_circuit(merged, measure) if len(merged) else merged.assign(size=pd.Series(dtype=float))
    if measure == "target" and len(merged):  # the control's circuit counts here, as solved
        control = merged[(merged["task"] == CONTROL_TASK) & (merged["solved"] == 1)]
        sized = pd.concat([sized, control.assign(size=control["edges"].astype(float))])
    rows = []
    for (point, task), group in merged.groupby(["point", "task"], sort=False):
        circuit = sized[(sized["point"] == point) & (sized["task"] == task)]
        rows.append({"point": point, "task": task, "width": group[WIDTH].iloc[0], "density": group[DENSITY].iloc[0],
                     "n_seeds": len(group), "n_solved": len(circuit),
                     "edges": geo_mean_ci(circuit["size"])[0], "full_loss": group["full_loss"].astype(float).mean()})
    return pd.DataFrame(rows, columns=["point", "task", "width", "density", "n_seeds", "n_solved", "edges", "full_loss"])


def pareto_mask(x, y) -> np.ndarray:
    """True where no other point is at least as good on both axes and better on one (minimising)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    mask = ok.copy()
    for i in np.flatnonzero(ok):
        dominated = ok & (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        mask[i] = not dominated.any()
    return mask


def frontier_table(points: pd.DataFrame) -> pd.DataFrame:
    """The Pareto-optimal points overall (scope `overall`) and per width (scope `x<width>`)."""
    parts = [points[pareto_mask(points["val_loss"], points["edges"])].assign(scope="overall")]
    for width, group in points.groupby("width"):
        parts.append(group[pareto_mask(group["val_loss"], group["edges"])].assign(scope=f"x{width:g}"))
    table = pd.concat(parts, ignore_index=True)
    columns = ["scope", *[c for c in points.columns if c != "scope"]]
    return table.sort_values(["scope", "val_loss"], key=lambda s: s.map(_scope_order) if s.name == "scope" else s,
                             ignore_index=True)[columns]


def _scope_order(scope: str) -> float:
    return -1.0 if scope == "overall" else float(scope[1:])


def hypervolume(x, y, reference: tuple[float, float] = HV_REFERENCE) -> float:
    """Area dominated by the points inside the reference box, in nats/byte x decades of edges."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not (np.isfinite(x) & np.isfinite(y)).any():
        return math.nan  # no circuit at all: nothing to measure (0 would read as "measured, worthless")
    inside = np.isfinite(x) & np.isfinite(y) & (x < reference[0]) & (y < reference[1]) & (y > 0)
    x, y = x[inside], np.log10(y[inside])
    keep = pareto_mask(x, y)
    x, y = x[keep], y[keep]
    order = np.argsort(x)
    x, y = x[order], y[order]
    right = np.append(x[1:], reference[0])
    return float(np.sum((right - x) * (math.log10(reference[1]) - y)))


def hypervolume_table(points: pd.DataFrame, reference: tuple[float, float] = HV_REFERENCE) -> pd.DataFrame:
    """One hypervolume per width, and one over all points."""
    groups = [("overall", points), *((f"x{w:g}", g) for w, g in points.groupby("width"))]
    rows = [{"scope": scope, "hypervolume": hypervolume(g["val_loss"], g["edges"], reference),
             "n_points": int(np.isfinite(g["edges"]).sum()),
             "n_frontier": int(pareto_mask(g["val_loss"], g["edges"]).sum()),
             "ref_val_loss": reference[0], "ref_edges": reference[1]} for scope, g in groups]
    return pd.DataFrame(rows)


def check_reference(reference: tuple[float, float]) -> tuple[float, float]:
    if not (math.isfinite(reference[0]) and reference[1] > 1):
        raise AnalysisError(f"--hv-ref {reference[0]:g} {reference[1]:g}: needs a finite loss and edges > 1")
    return reference
