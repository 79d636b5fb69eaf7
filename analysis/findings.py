"""The sweep's findings, each stated with its numbers and a verdict the data supports (`findings.csv`).

Circuit size has two measures (`measure`): `target`, the edges of the smallest circuit reaching the task's
target loss (the paper's; only where the full model reaches it), and `f80`, the edges of the smallest
circuit keeping 80% of the full model's ability (`edges_at_f80`; wherever the model has the ability).

(a) edges_fall_with_density, per width and measure: log edges against log2 density, one effect per task,
    each run's task-adjusted mean as one observation, one residual sigma pooled over the widths. The
    statistic is the edges' ratio per halving of density, with its 95% interval. Over all widths at once:
    one common slope, and a permutation test of the sum over widths of Spearman's rho (densities shuffled
    within each width; exact p from the design's ties).
(b) wider_at_fixed_nonzeros, per pair of widths whose points hold the same nonzero count (within
    NONZERO_MATCH): the wider model's loss minus the narrower's (nats/byte), and its edges over the
    narrower's (per run, the mean log edges over the tasks with a circuit at every seed of both points);
    Student's t, the seed-to-seed sigma pooled over the points that hold that nonzero count.
(c) collapse_onset, per width: the densest point the collapse's signatures label at every seed.

Verdicts: `holds` when the 95% interval lies beyond the claim's minimum effect (and the permutation p is
below ALPHA where there is one); `does not hold` when it lies beyond the same effect the other way (edges
that grow 1.25x per halving, a wider model worse by 0.005 nats/byte, a wider circuit larger);
`undecided at this size` otherwise, or with too few runs, or where the design cannot reach p < ALPHA.
The minimum effects: 0.8 per halving of density (the effect measured is about 0.5); 0.005 nats/byte of
loss, about one seed's standard deviation at the ladder's points; for circuit size across widths the
claim's direction alone (a ratio below 1), since the effect measured at the quick grid's nonzero count
(0.6-0.9) sits too near any minimum effect for three seeds to decide it twice. The seed-to-seed sigma of
(b) is pooled over the points that hold the pair's nonzero count (Student's t). The collapse `holds` where a point collapses; not seeing it down to the sparsest density
refutes nothing (`undecided`). With several seed sets (`seed_offset`), every finding is judged per seed
set and on all runs; the overall verdict is the seed sets' common verdict, `undecided` where they differ.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats  # a dependency of mlflow

from analysis.collapse import COLLAPSE
from analysis.frontier import CONFIDENCE, CONTROL_TASK, MEASURES, with_circuit
from analysis.load import DENSITY, SEED, SEED_OFFSET, WIDTH
from sweep import names

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided at this size"
ALPHA = round(1 - CONFIDENCE, 12)  # 0.05, not 0.050000000000000044: a design whose smallest p is 0.05 cannot reach p < 0.05
LOSS = "-"  # the measure column of findings that are not about circuit size
MIN_RUNS = 3  # runs a width (or each side of a comparison) needs before a verdict
HALVING_RATIO = 0.8  # (a): edges fall when they shrink to at most this per halving of density
EDGES_RATIO = 1.0  # (b): the wider circuit is smaller when below this x the narrower's (the claim's direction)
LOSS_GAIN = 0.005  # (b): the wider loss is lower when by at least this (nats/byte; about one seed's sd)
NONZERO_MATCH = 0.02  # two points "hold the same nonzero count" within this relative difference
PERMUTATIONS = 20_000  # Monte Carlo permutations where exact enumeration is too long
ALL_SEEDS = "all"
COLUMNS = ["finding", "scope", "measure", "seed_set", "statistic", "value", "low", "high", "p_value", "n", "verdict",
           "detail"]
CLAIMS = {
    "edges_fall_with_density": f"circuit edges fall as density falls (to at most {HALVING_RATIO:g}x per halving)",
    "wider_at_fixed_nonzeros": (f"at a fixed nonzero count, the wider model has the lower loss (by >= {LOSS_GAIN:g} "
                                f"nats/byte) and the smaller circuit (fewer edges)"),
    "collapse_onset": "the collapse regime appears (by its signatures, at every seed)",
}


def _row(finding, scope, measure, statistic, value=math.nan, low=math.nan, high=math.nan, p=math.nan, n=0,
         verdict=UNDECIDED, detail="") -> dict:
    return {"finding": finding, "scope": scope, "measure": measure, "seed_set": ALL_SEEDS, "statistic": statistic,
            "value": value, "low": low, "high": high, "p_value": p, "n": int(n), "verdict": verdict, "detail": detail}


def beyond(low: float, high: float, holds_below: float, fails_above: float) -> str:
    """The verdict of an interval for a claim with a minimum effect: holds when the whole interval is below
    `holds_below` (the effect, at least), does not hold when it is above `fails_above` (the same effect the
    other way); in between, and across either bound, undecided."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNDECIDED
    return HOLDS if high < holds_below else FAILS if low > fails_above else UNDECIDED


def circuit_rows(runs: pd.DataFrame, tasks: pd.DataFrame, measure: str) -> pd.DataFrame:
    """(run_id, task, width, density, log_edges) of every task of every run with a circuit by `measure`."""
    rows = with_circuit(tasks[tasks["run_id"].isin(runs["run_id"])], measure)
    rows = rows.assign(log_edges=np.log(rows["size"].clip(lower=1)))  # 0 edges count as 1, as names.geomean does
    return rows.drop(columns=[WIDTH, DENSITY], errors="ignore").merge(runs[["run_id", WIDTH, DENSITY]], on="run_id")


def task_adjusted(rows: pd.DataFrame) -> pd.DataFrame:
    """One value per run: the mean over its tasks of log edges minus the task's effect, the effects and one
    slope on log2 density fitted together (least squares), so that runs solving other tasks compare."""
    x = np.log2(rows[DENSITY].to_numpy(float))
    dummies = pd.get_dummies(rows["task"]).to_numpy(float)
    coef, *_ = np.linalg.lstsq(np.column_stack([dummies, x]), rows["log_edges"].to_numpy(float), rcond=None)
    adjusted = rows.assign(y=rows["log_edges"].to_numpy(float) - dummies @ coef[:-1])
    per_run = adjusted.groupby("run_id").agg(y=("y", "mean"), density=(DENSITY, "first"))
    return per_run.assign(x=np.log2(per_run["density"]))


def edges_fall_with_density(runs: pd.DataFrame, tasks: pd.DataFrame, measure: str) -> list[dict]:
    """(a): per width, the ratio of edges per halving of density with its interval (one sigma pooled over the
    widths); over all widths, one common slope and the stratified permutation test of Spearman's rho."""
    finding = "edges_fall_with_density"
    rows = circuit_rows(runs, tasks, measure)
    widths = sorted(runs[WIDTH].unique())
    too_few, fits = {}, {}  # per width: its row when it cannot be fitted; else (per_run, slope, SSE, df)
    for width in widths:
        group = rows[rows[WIDTH] == width]
        per_run = task_adjusted(group) if len(group) else pd.DataFrame(columns=["y", "x", "density"])
        n, densities = len(per_run), per_run["density"].nunique() if len(per_run) else 0
        if n < MIN_RUNS or densities < 2:
            too_few[width] = _row(finding, f"x{width:g}", measure, "ratio_per_halving", n=n,
                                  detail=f"{n} runs with a circuit over {densities} densities: too few "
                                         f"(at least {MIN_RUNS} runs over 2 densities)")
            continue
        slope, intercept = np.polyfit(per_run["x"], per_run["y"], 1)
        residuals = per_run["y"] - (intercept + slope * per_run["x"])
        fits[width] = (per_run, slope, float((residuals ** 2).sum()), n - 2)
    sse, df = sum(f[2] for f in fits.values()), sum(f[3] for f in fits.values())
    sigma = math.sqrt(sse / df) if df > 0 else math.nan
    t = stats.t.ppf(1 - ALPHA / 2, df) if df > 0 else math.nan

    def fitted(width) -> dict:
        per_run, slope, _, _ = fits[width]
        sxx = float(((per_run["x"] - per_run["x"].mean()) ** 2).sum())
        half = t * sigma / math.sqrt(sxx)
        low, high = math.exp(-(slope + half)), math.exp(-(slope - half))  # a steeper slope is a smaller ratio
        p = 2 * stats.t.sf(abs(slope) / (sigma / math.sqrt(sxx)), df) if sigma > 0 else 0.0
        return _row(finding, f"x{width:g}", measure, "ratio_per_halving", math.exp(-slope), low, high, p, len(per_run),
                    beyond(low, high, HALVING_RATIO, 1 / HALVING_RATIO) if np.isfinite(half) else UNDECIDED,
                    f"{len(per_run)} runs over densities {_values(sorted(per_run['density'].unique(), reverse=True))}; "
                    f"sigma {sigma:.3g} pooled over {len(fits)} widths, df {df}")

    out = [too_few[width] if width in too_few else fitted(width) for width in widths]
    return out + [_all_widths(finding, fits, measure)]


def _all_widths(finding: str, fits: dict, measure: str) -> dict:
    """One slope common to the widths (each its own intercept) and the permutation p of sum rho_w."""
    if len(fits) < 1:
        return _row(finding, "all widths", measure, "ratio_per_halving",
                    detail=f"no width has {MIN_RUNS} runs with a circuit over 2 densities")
    centred = [(f[0]["x"] - f[0]["x"].mean(), f[0]["y"] - f[0]["y"].mean()) for f in fits.values()]
    x, y = (np.concatenate([c[i].to_numpy(float) for c in centred]) for i in (0, 1))
    df = len(x) - len(fits) - 1
    slope = float(x @ y / (x @ x))
    sigma = math.sqrt(float(((y - slope * x) ** 2).sum()) / df) if df > 0 else math.nan
    half = stats.t.ppf(1 - ALPHA / 2, df) * sigma / math.sqrt(float(x @ x)) if df > 0 else math.nan
    low, high = (math.exp(-(slope + half)), math.exp(-(slope - half))) if np.isfinite(half) else (math.nan, math.nan)
    p, smallest = stratified_spearman([(f[0]["x"].to_numpy(float), f[0]["y"].to_numpy(float)) for f in fits.values()])
    detail = f"{len(x)} runs over {len(fits)} widths; one-sided permutation p of sum rho over widths"
    if smallest > ALPHA:
        verdict, detail = UNDECIDED, f"{detail}; this design cannot reach p < {ALPHA:g} (smallest p {smallest:.3g})"
    else:
        verdict = beyond(low, high, HALVING_RATIO, 1 / HALVING_RATIO)
        if verdict == HOLDS and p >= ALPHA:
            verdict = UNDECIDED
    return _row(finding, "all widths", measure, "ratio_per_halving", math.exp(-slope), low, high, p, len(x), verdict,
                detail)


def stratified_spearman(groups: list[tuple[np.ndarray, np.ndarray]], resamples: int = PERMUTATIONS,
                        exact_up_to: int = 50_000) -> tuple[float, float]:
    """One-sided p of sum over groups of Spearman's rho(x, y) > 0, y shuffled within each group (exact over
    every shuffle up to `exact_up_to` of them, else Monte Carlo, (k + 1) / (R + 1)), and the smallest p
    the design can give (ties in x: a group of t tied runs leaves t! shuffles equal)."""
    ranked = [(_unit_ranks(x), _unit_ranks(y)) for x, y in groups]  # rho_w = rx @ ry, whatever the shuffle
    observed = sum(rx @ ry for rx, ry in ranked)
    count = math.prod(math.factorial(len(y)) for _, y in ranked)
    if count <= exact_up_to:
        per_group = [np.array([rx @ ry[list(order)] for order in itertools.permutations(range(len(ry)))])
                     for rx, ry in ranked]
        null = per_group[0]
        for values in per_group[1:]:
            null = (null[:, None] + values[None, :]).ravel()
        p = float(np.mean(null >= observed - 1e-9))
        smallest = float(np.mean(null >= null.max() - 1e-9))
        return p, smallest
    rng = np.random.default_rng(0)
    null = sum(rx @ ry[np.argsort(rng.random((resamples, len(ry))), axis=1)].T for rx, ry in ranked)
    p = (int(np.sum(null >= observed - 1e-9)) + 1) / (resamples + 1)
    ties = math.prod(math.factorial(t) for x, _ in groups for t in np.unique(x, return_counts=True)[1])
    return p, max(ties / count, 1 / (resamples + 1))


def _unit_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks, centred and scaled to unit length (zeros where all are tied)."""
    r = stats.rankdata(x)
    r = r - r.mean()
    norm = np.linalg.norm(r)
    return r / norm if norm else r


def same_nonzero_pairs(points: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(wider, narrower) points of different widths whose nonzero counts match within NONZERO_MATCH,
    each narrower point paired with the nearest count at each wider width."""
    sparse = points[points["density"] < 1].dropna(subset=["nonzero_params"])
    pairs = []
    for _, narrow in points.dropna(subset=["nonzero_params"]).iterrows():
        for width, wider in sparse[sparse["width"] > narrow["width"]].groupby("width"):
            gap = (wider["nonzero_params"] / narrow["nonzero_params"] - 1).abs()
            if gap.min() <= NONZERO_MATCH:
                pairs.append((wider.loc[gap.idxmin()], narrow))
    return pairs


def pooled_sd(groups: list[np.ndarray]) -> tuple[float, int]:
    """The within-group standard deviation pooled over every group of two or more values, and its df."""
    groups = [np.asarray(g, float) for g in groups if len(g) > 1]
    df = sum(len(g) - 1 for g in groups)
    return (math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / df) if df else math.nan), df


def student(a, b, replicated: list[np.ndarray]) -> tuple[float, float, float, float, int]:
    """mean(a) - mean(b), its 95% interval and two-sided p with the seed-to-seed sigma pooled over every
    replicated point (`replicated`, each point's values over its seeds: a and b among them), and that df."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    sigma, df = pooled_sd(replicated)
    if not df:
        return diff, math.nan, math.nan, math.nan, 0
    se = sigma * math.sqrt(1 / len(a) + 1 / len(b))
    if se == 0:
        return diff, diff, diff, 0.0 if diff else 1.0, df
    half = stats.t.ppf(1 - ALPHA / 2, df) * se
    return diff, diff - half, diff + half, float(2 * stats.t.sf(abs(diff) / se, df)), df


def wider_at_fixed_nonzeros(runs: pd.DataFrame, tasks: pd.DataFrame, points: pd.DataFrame) -> list[dict]:
    """(b): per matched pair, the wider point's loss minus the narrower's, and its edges over the narrower's
    by each measure."""
    finding, rows = "wider_at_fixed_nonzeros", []
    for wider, narrow in same_nonzero_pairs(points):
        scope = f"{wider['point']} vs {narrow['point']}"
        a, b = (runs[runs["point"] == p["point"]] for p in (wider, narrow))
        level = points[(points["nonzero_params"] / narrow["nonzero_params"] - 1).abs() <= NONZERO_MATCH]["point"]
        alike = runs[runs["point"].isin(level)]  # the points holding this nonzero count: sigma is pooled over them
        nonzeros = f"nonzeros {wider['nonzero_params']:,.0f} vs {narrow['nonzero_params']:,.0f}"
        if min(len(a), len(b)) < MIN_RUNS:
            rows.append(_row(finding, scope, LOSS, "loss_difference", n=len(a) + len(b),
                             detail=f"seeds {len(a)} vs {len(b)}: too few (at least {MIN_RUNS} a side); {nonzeros}"))
        else:
            loss = alike.set_index("run_id")[names.CAPABILITY_VAL_LOSS].astype(float)
            replicated = [group.to_numpy() for _, group in loss.groupby(alike.set_index("run_id")["point"])
                          if len(group) > 1]
            diff, low, high, p, df = student(loss[a["run_id"]], loss[b["run_id"]], replicated)
            rows.append(_row(finding, scope, LOSS, "loss_difference", diff, low, high, p, len(a) + len(b),
                             beyond(low, high, -LOSS_GAIN, LOSS_GAIN),
                             f"wider - narrower, nats/byte; seeds {len(a)} vs {len(b)}; sigma pooled over "
                             f"{len(replicated)} replicated points, df {df}; {nonzeros}"))
        for measure in MEASURES:
            rows.append(_edges_ratio(finding, scope, measure, circuit_rows(alike, tasks, measure), alike, a, b))
    if not rows:
        rows.append(_row(finding, "all", LOSS, "pairs", 0, verdict=UNDECIDED,
                         detail=f"no two widths hold the same nonzero count within {NONZERO_MATCH:.0%}"))
    return rows


def _edges_ratio(finding: str, scope: str, measure: str, circuits: pd.DataFrame, runs: pd.DataFrame,
                 a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """The wider point's edges over the narrower's, on the tasks with a circuit at every seed of both; the
    seed-to-seed sigma pooled over the replicated points of `runs` (those at the pair's nonzero count) with a
    circuit for those tasks at every seed."""
    both = circuits[circuits["run_id"].isin(pd.concat([a["run_id"], b["run_id"]]))]
    n_runs = len(a) + len(b)
    common = sorted(task for task, group in both.groupby("task") if group["run_id"].nunique() == n_runs)
    if min(len(a), len(b)) < MIN_RUNS or not common:
        why = (f"seeds {len(a)} vs {len(b)}: too few (at least {MIN_RUNS} a side)" if min(len(a), len(b)) < MIN_RUNS
               else "no task has a circuit at every seed of both points")
        return _row(finding, scope, measure, "edges_ratio", n=n_runs, detail=why)
    chosen = circuits[circuits["task"].isin(common)]
    complete = chosen.groupby("run_id").filter(lambda g: g["task"].nunique() == len(common))
    per_run = complete.groupby("run_id")["log_edges"].mean()
    point_of = runs.set_index("run_id")["point"]
    replicated = [group.to_numpy() for point, group in per_run.groupby(point_of[per_run.index].to_numpy())
                  if len(group) > 1 and (runs["point"] == point).sum() == len(group)]  # every seed has the tasks
    diff, low, high, p, df = student(per_run[a["run_id"]], per_run[b["run_id"]], replicated)
    low, high = (math.exp(low), math.exp(high)) if df else (math.nan, math.nan)
    return _row(finding, scope, measure, "edges_ratio", math.exp(diff), low, high, p, n_runs,
                beyond(low, high, EDGES_RATIO, 1 / EDGES_RATIO),
                f"wider / narrower, geomean over {', '.join(common)}; seeds {len(a)} vs {len(b)}; sigma pooled over "
                f"{len(replicated)} replicated points, df {df}")


def collapse_onset(points: pd.DataFrame) -> list[dict]:
    """(c): per width, the densest point the signatures label collapsed, or none down to the sparsest run."""
    rows = []
    for width, series in points.groupby("width"):
        series = series.sort_values("density", ascending=False)
        collapsed = series[series["regime"] == COLLAPSE]
        scope = f"x{width:g}"
        if not len(collapsed):
            lost = series[series["lost_tasks"].astype(bool)] if "lost_tasks" in series else series.iloc[:0]
            beside = f"; every task lost (not a signature) at {_values(lost['density'])}" if len(lost) else ""
            rows.append(_row("collapse_onset", scope, LOSS, "density", n=len(series), verdict=UNDECIDED,
                             detail=f"not reached down to density {series['density'].min():g}{beside}"))
            continue
        onset = collapsed.iloc[0]
        beside = f"; {onset['lost_tasks']}" if onset.get("lost_tasks") else ""
        rows.append(_row("collapse_onset", scope, LOSS, "density", onset["density"], n=len(series), verdict=HOLDS,
                         detail=f"{onset['point']}: {onset['rule']}{beside}"))
    return rows


def findings_table(runs: pd.DataFrame, tasks: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Every finding of one set of runs, one row per scope and measure (seed_set `all`)."""
    rows = [row for measure in MEASURES for row in edges_fall_with_density(runs, tasks, measure)]
    rows += wider_at_fixed_nonzeros(runs, tasks, points) + collapse_onset(points)
    return pd.DataFrame(rows, columns=COLUMNS)


def seed_sets(runs: pd.DataFrame) -> dict[str, pd.Series]:
    """{`seeds 0-2`: mask of its runs} per seed_offset in the runs (one entry: a single seed set)."""
    offsets = runs[SEED_OFFSET] if SEED_OFFSET in runs else pd.Series(0.0, index=runs.index)
    sets = {}
    for offset in sorted(offsets.unique()):
        mask = offsets == offset
        seeds = runs.loc[mask, SEED]
        sets[f"seeds {seeds.min():g}-{seeds.max():g}" if seeds.nunique() > 1 else f"seed {seeds.min():g}"] = mask
    return sets


def combine(per_set: dict[str, pd.DataFrame], overall: pd.DataFrame) -> pd.DataFrame:
    """The rows of every seed set, then the overall rows: the pooled runs' numbers, and the seed sets' common
    verdict (`undecided` with both verdicts named where they differ)."""
    if len(per_set) < 2:
        return overall
    key = ["finding", "scope", "measure"]
    overall = overall.copy()
    verdicts = {name: table.set_index(key)["verdict"] for name, table in per_set.items()}
    for i, row in overall.iterrows():
        found = {name: v.get(tuple(row[key])) for name, v in verdicts.items()}
        said = {v for v in found.values() if v is not None}
        if len(said) == 1 and len([v for v in found.values() if v is not None]) == len(found):
            overall.at[i, "verdict"] = common = said.pop()
            if common != row["verdict"]:
                overall.at[i, "detail"] = f"seed sets agree: {common}; pooled alone: {row['verdict']}; {row['detail']}"
        else:
            overall.at[i, "verdict"] = UNDECIDED
            overall.at[i, "detail"] = ("seed sets disagree: " + ", ".join(f"{v or 'not judged'} ({name})"
                                                                          for name, v in found.items())
                                       + f"; pooled: {row['verdict']}; {row['detail']}")
    tables = [table.assign(seed_set=name) for name, table in per_set.items()]
    return pd.concat([*tables, overall], ignore_index=True)[COLUMNS]


def describe(findings: pd.DataFrame) -> list[str]:
    """The lines the analysis prints: the overall rows, verdict first."""
    lines = []
    for _, f in findings[findings["seed_set"] == ALL_SEEDS].iterrows():
        interval = "" if not np.isfinite(f["low"]) else f" [{f['low']:.3g}, {f['high']:.3g}]"
        p = "" if not np.isfinite(f["p_value"]) else f", p={f['p_value']:.3g}"
        measure = "" if f["measure"] == LOSS else f" ({f['measure']})"
        lines.append(f"  {f['finding']} {f['scope']}{measure}: {f['verdict']} ({f['statistic']} {f['value']:.3g}"
                     f"{interval}{p}, n={f['n']}; {f['detail']})")
    return lines


def _cell(f: pd.Series) -> str:
    value = f"{f['value']:.3g}" if np.isfinite(f["value"]) else "-"
    interval = f" [{f['low']:.3g}, {f['high']:.3g}]" if np.isfinite(f["low"]) else ""
    return f"**{f['verdict']}** {value}{interval}"


def markdown(findings: pd.DataFrame, source: str, retention: pd.DataFrame | None = None) -> str:
    """findings.md: the README's findings section, generated (`source` says which runs and command): per
    finding, one row per scope and measure, one column per seed set and one overall; then the task
    retention table when given."""
    sets = list(dict.fromkeys(findings["seed_set"]))
    lines = [f"Generated by `make frontier` from {source}. Verdicts: holds, does not hold, undecided at this size; "
             "each cell: verdict, statistic, 95% interval. The rules are in `analysis/findings.py` and the README; "
             + ("the overall verdict is the seed sets' common verdict, undecided where they differ; its numbers pool "
                "every run." if len(sets) > 1 else "one seed set: no verdict here is replicated yet."), ""]
    for finding, rows in findings.groupby("finding", sort=False):
        header = " | ".join(s if s != ALL_SEEDS or len(sets) == 1 else "overall" for s in sets)
        lines += [f"**{CLAIMS.get(finding, finding)}** (`{finding}`)", "",
                  f"| scope | measure | statistic | {header} | runs | detail (overall) |",
                  "|---" * (len(sets) + 5) + "|"]
        for (scope, measure), group in rows.groupby(["scope", "measure"], sort=False):
            by_set = group.set_index("seed_set")
            overall = by_set.loc[ALL_SEEDS]
            cells = " | ".join(_cell(by_set.loc[s]) if s in by_set.index else "-" for s in sets)
            lines.append(f"| {scope} | {measure} | {overall['statistic']} | {cells} | {overall['n']} | "
                         f"{overall['detail']} |")
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


def _values(values, spec: str = "g") -> str:
    return ",".join(format(v, spec) for v in values)
