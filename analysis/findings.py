"""The sweep's findings, each stated with its numbers and a verdict the data supports (`findings.csv`).

(a) edges_fall_with_density, per width: circuits shrink as weights get sparser. Spearman's rank
    correlation between density and the run's circuit edges over every run of the width with a
    circuit (seeds pooled), with its two-sided p-value.
(b) wider_at_fixed_nonzeros, per pair of widths whose points hold the same nonzero count (within
    NONZERO_MATCH): the wider model's loss and circuit edges against the narrower one's, a
    difference of means (loss, nats) and a ratio of geometric means (edges), each with a Welch
    95% interval over the seeds.
(c) collapse_onset, per width: the densest point labelled collapse (analysis.collapse) and the
    indicators that fired there, or none down to the sparsest density run.

Verdicts: `holds`, `does not hold` (the interval or the test excludes the claim's side the other
way) or `undecided at this size` (too few runs, or an interval across zero). Never more.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats  # a dependency of mlflow

from analysis.collapse import COLLAPSE
from analysis.frontier import CONFIDENCE, CONTROL_TASK
from analysis.load import DENSITY, WIDTH
from sweep import names

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided at this size"
ALPHA = 1 - CONFIDENCE
MIN_RUNS_FOR_RANK = 4  # below this no rank correlation can reach p < 0.05 over distinct values
NONZERO_MATCH = 0.15  # two points "hold the same nonzero count" within this relative difference
COLUMNS = ["finding", "scope", "statistic", "value", "low", "high", "p_value", "n", "verdict", "detail"]


def edges_fall_with_density(runs: pd.DataFrame, edges: pd.Series) -> list[dict]:
    """(a): per width, Spearman's rho of (density, edges) over the runs with a circuit."""
    rows = []
    runs = runs.assign(_edges=edges.values)
    for width, group in runs.groupby(WIDTH):
        group = group[np.isfinite(group["_edges"])]
        n, densities = len(group), group[DENSITY].nunique()
        scope = f"x{width:g}"
        if n < MIN_RUNS_FOR_RANK or densities < 2:
            rows.append(_row("edges_fall_with_density", scope, "spearman_rho", math.nan, p=math.nan, n=n,
                             verdict=UNDECIDED, detail=f"{n} runs with a circuit over {densities} densities: too few"))
            continue
        rho, p = spearman_permutation(group[DENSITY].to_numpy(float), group["_edges"].to_numpy(float))
        verdict = HOLDS if rho > 0 and p < ALPHA else FAILS if rho < 0 and p < ALPHA else UNDECIDED
        rows.append(_row("edges_fall_with_density", scope, "spearman_rho", rho, p=p, n=n, verdict=verdict,
                         detail=f"densities {_values(group[DENSITY])}; edges {_values(group['_edges'], '.0f')}"))
    return rows


def spearman_permutation(x: np.ndarray, y: np.ndarray, resamples: int = 20_000) -> tuple[float, float]:
    """Spearman's rho and its two-sided permutation p-value: exact over every pairing up to 8 runs,
    else over `resamples` random ones (the t approximation claims p ~ 1e-24 for 5 runs in order,
    where the exact value is 2/120)."""
    rx, ry = (stats.rankdata(v) for v in (x, y))
    rx = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())
    ry = ry - ry.mean()
    rho = float(rx @ ry / np.linalg.norm(ry))
    if len(y) <= 8:
        shuffled = ry[np.array(list(itertools.permutations(range(len(y)))))]
    else:
        rng = np.random.default_rng(0)
        shuffled = ry[np.argsort(rng.random((resamples, len(y))), axis=1)]
    null = shuffled @ rx / np.linalg.norm(ry)
    return rho, float(np.mean(np.abs(null) >= abs(rho) - 1e-12))


def same_nonzero_pairs(points: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(wider, narrower) points of different widths whose nonzero counts match within NONZERO_MATCH,
    each narrower point paired with the nearest count at each wider width."""
    sparse = points[points["density"] < 1].dropna(subset=["nonzero_params"])
    pairs = []
    for _, narrow in sparse.iterrows():
        for width, wider in sparse[sparse["width"] > narrow["width"]].groupby("width"):
            gap = (wider["nonzero_params"] / narrow["nonzero_params"] - 1).abs()
            if gap.min() <= NONZERO_MATCH:
                pairs.append((wider.loc[gap.idxmin()], narrow))
    return pairs


def wider_at_fixed_nonzeros(runs: pd.DataFrame, edges: pd.Series, points: pd.DataFrame) -> list[dict]:
    """(b): per matched pair, the wider point's loss minus the narrower's and its edges over the narrower's."""
    runs = runs.assign(_edges=edges.values)
    rows = []
    for wider, narrow in same_nonzero_pairs(points):
        scope = f"{wider['point']} vs {narrow['point']}"
        a, b = (runs[runs["point"] == p["point"]] for p in (wider, narrow))
        nonzeros = f"nonzeros {wider['nonzero_params']:,.0f} vs {narrow['nonzero_params']:,.0f}"
        loss = _welch(a[names.CAPABILITY_VAL_LOSS], b[names.CAPABILITY_VAL_LOSS])
        rows.append(_row("wider_at_fixed_nonzeros", scope, "loss_difference", *loss, verdict=_better_if_below(loss, 0.0),
                         detail=f"wider - narrower, nats; {nonzeros}; seeds {len(a)} vs {len(b)}"))
        log_edges = _welch(np.log(_finite(a["_edges"])), np.log(_finite(b["_edges"])))
        value, low, high, p, n = log_edges
        rows.append(_row("wider_at_fixed_nonzeros", scope, "edges_ratio", math.exp(value), math.exp(low),
                         math.exp(high), p, n, verdict=_better_if_below(log_edges, 0.0),
                         detail=f"geomean wider / narrower over seeds with a circuit; {nonzeros}"))
    if not rows:
        rows.append(_row("wider_at_fixed_nonzeros", "all", "pairs", 0, n=0, verdict=UNDECIDED,
                         detail=f"no two widths hold the same nonzero count within {NONZERO_MATCH:.0%}"))
    return rows


def collapse_onset(points: pd.DataFrame) -> list[dict]:
    """(c): per width, the densest collapsed point and the indicators that fired there."""
    rows = []
    for width, series in points.groupby("width"):
        series = series.sort_values("density", ascending=False)
        collapsed = series[series["regime"] == COLLAPSE]
        scope = f"x{width:g}"
        if not len(collapsed):
            rows.append(_row("collapse_onset", scope, "density", math.nan, n=len(series), verdict=FAILS,
                             detail=f"no collapse down to density {series['density'].min():g}"))
            continue
        onset = collapsed.iloc[0]
        rows.append(_row("collapse_onset", scope, "density", onset["density"], n=len(series), verdict=HOLDS,
                         detail=f"{onset['point']}: {onset['rule']}"))
    return rows


def task_retention(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per task and width, where sparsity takes the task away: at each density the seeds whose full
    model solves it, the sparsest density down to which every seed of every denser point solves it
    (`kept_to`), and the densest one where some seed does not (`lost_at`); NaN when never / always."""
    rows = []
    tasks = tasks[tasks["task"] != CONTROL_TASK].dropna(subset=["solved"])
    for (task, width), group in tasks.groupby(["task", WIDTH]):
        by_density = group.groupby(DENSITY)["solved"].agg(["sum", "count"]).sort_index(ascending=False)
        all_solve = by_density["sum"] == by_density["count"]
        lost = by_density.index[~all_solve]
        kept = by_density.index[all_solve & (by_density.index > (lost.max() if len(lost) else -1))]
        rows.append({"task": task, "width": width, "kept_to": kept.min() if len(kept) else math.nan,
                     "lost_at": lost.max() if len(lost) else math.nan,
                     "solved_seeds": " ".join(f"{d:g}:{s:.0f}/{c:.0f}" for d, (s, c) in by_density.iterrows())})
    return pd.DataFrame(rows, columns=["task", "width", "kept_to", "lost_at", "solved_seeds"])


def findings_table(runs: pd.DataFrame, edges: pd.Series, points: pd.DataFrame) -> pd.DataFrame:
    """Every finding of the experiment, one row per scope."""
    rows = edges_fall_with_density(runs, edges) + wider_at_fixed_nonzeros(runs, edges, points) + collapse_onset(points)
    return pd.DataFrame(rows, columns=COLUMNS)


def describe(findings: pd.DataFrame) -> list[str]:
    """The lines the analysis prints: one per row, verdict first."""
    lines = []
    for _, f in findings.iterrows():
        interval = "" if not np.isfinite(f["low"]) else f" [{f['low']:.3g}, {f['high']:.3g}]"
        p = "" if not np.isfinite(f["p_value"]) else f", p={f['p_value']:.3g}"
        lines.append(f"  {f['finding']} {f['scope']}: {f['verdict']} ({f['statistic']} {f['value']:.3g}{interval}"
                     f"{p}, n={f['n']}; {f['detail']})")
    return lines


CLAIMS = {"edges_fall_with_density": "circuit edges fall as density falls",
          "wider_at_fixed_nonzeros": "at a fixed nonzero count, the wider model has the lower loss and the smaller circuit",
          "collapse_onset": "the collapse regime appears"}


def markdown(findings: pd.DataFrame, source: str, retention: pd.DataFrame | None = None) -> str:
    """findings.md: the README's findings section, generated (`source` says which runs and command),
    with the task retention table when given."""
    lines = [f"Generated by `make frontier` from {source}. Verdicts: holds, does not hold, undecided at this "
             "size (intervals: Welch 95% over seeds; p: permutation test of Spearman's rho, exact up to 8 runs).", ""]
    for finding, rows in findings.groupby("finding", sort=False):
        lines += [f"**{CLAIMS.get(finding, finding)}** (`{finding}`)", "",
                  "| scope | verdict | statistic | value | 95% interval | p | runs | detail |", "|---|---|---|---|---|---|---|---|"]
        for _, f in rows.iterrows():
            interval = f"[{f['low']:.3g}, {f['high']:.3g}]" if np.isfinite(f["low"]) else "-"
            p = f"{f['p_value']:.3g}" if np.isfinite(f["p_value"]) else "-"
            value = f"{f['value']:.3g}" if np.isfinite(f["value"]) else "-"
            lines.append(f"| {f['scope']} | **{f['verdict']}** | {f['statistic']} | {value} | {interval} | {p} | "
                         f"{f['n']} | {f['detail']} |")
        lines.append("")
    if retention is not None and len(retention):
        lines += ["**Where each width loses each task** (`task_retention.csv`): per density, the seeds whose model solves "
                  "the task at the target (full-model held-out loss); kept to: the sparsest density down to which every "
                  "seed solves it; lost at: the densest density where a seed does not.", "",
                  "| task | width | kept to | lost at | solved seeds by density |", "|---|---|---|---|---|"]
        for _, r in retention.iterrows():
            kept, lost = (f"{r[c]:g}" if np.isfinite(r[c]) else "-" for c in ("kept_to", "lost_at"))
            lines.append(f"| {r['task']} | x{r['width']:g} | {kept} | {lost} | {r['solved_seeds']} |")
        lines.append("")
    return "\n".join(lines)


def _row(finding, scope, statistic, value, low=math.nan, high=math.nan, p=math.nan, n=0, verdict=UNDECIDED,
         detail="") -> dict:
    return {"finding": finding, "scope": scope, "statistic": statistic, "value": value, "low": low, "high": high,
            "p_value": p, "n": int(n), "verdict": verdict, "detail": detail}


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v) & (v > 0)]


def _welch(a, b) -> tuple[float, float, float, float, int]:
    """Mean of a - mean of b, its Welch 95% interval and p-value, and the runs used; NaN interval
    when either side has fewer than two values or neither varies."""
    a, b = (np.asarray(x, dtype=float) for x in (a, b))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n = len(a) + len(b)
    if not len(a) or not len(b):
        return math.nan, math.nan, math.nan, math.nan, n
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return diff, math.nan, math.nan, math.nan, n
    test = stats.ttest_ind(a, b, equal_var=False)
    low, high = test.confidence_interval(CONFIDENCE)
    return diff, float(low), float(high), float(test.pvalue), n


def _better_if_below(estimate: tuple, zero: float) -> str:
    """The wider model is better when the whole interval lies below zero; worse when above."""
    _, low, high, _, _ = estimate
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNDECIDED
    return HOLDS if high < zero else FAILS if low > zero else UNDECIDED


def _values(values, spec: str = "g") -> str:
    return ",".join(format(v, spec) for v in values)
