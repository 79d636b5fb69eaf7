"""The collapse regime (method.md 5): every grid point is `normal` or `collapse`, with what fired.

The collapse's own signatures label a point `collapse` when one of them fires at every seed of the point:
- near_reference: val_loss >= bigram_loss - ref_margin (nats/byte); a model near the unigram
  reference is above the bigram one, so it fires too;
- dead_units: dead_by_weight or dead_by_activity fraction >= dead_frac;
- dead_layers: dead_layer_count >= dead_layers.
Two consequences are reported beside the label (columns `lost_tasks` and `not_shrinking`), never as it:
a model that loses a task as density falls is the frontier's ordinary trade, not a collapse. "Denser"
means a point of the same series (width, and any other differing params) at a higher density:
- lost_tasks: tasks_solved_frac <= solved_frac while a denser point solved more;
- not_shrinking: the circuit's edges, over the tasks both solved, >= shrink_ratio x those of the
  nearest denser point with a circuit (the circuit stopped shrinking as density fell).
A threshold set to `off` disables its indicator; an indicator that was not logged never fires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd

from analysis.frontier import CONTROL_TASK
from analysis.load import AnalysisError
from sweep import names

NORMAL, COLLAPSE = "normal", "collapse"


@dataclass(frozen=True)
class CollapseRule:
    """Thresholds of the indicators; None switches one off."""

    ref_margin: float | None = 0.15  # nats/byte below the bigram reference loss
    dead_frac: float | None = 0.3  # fraction of MLP neurons + attention channels
    dead_layers: float | None = 1.0  # layers
    solved_frac: float | None = 0.0  # fraction of the suite's tasks
    shrink_ratio: float | None = 1.0  # edges / edges of the nearest denser point

    @classmethod
    def parse(cls, settings: list[str]) -> "CollapseRule":
        """From `key=value` strings (`--collapse dead_frac=0.5 --collapse shrink_ratio=off`)."""
        known = {f.name for f in fields(cls)}
        rule = cls()
        for setting in settings:
            key, _, value = setting.partition("=")
            if key not in known or not value:
                raise AnalysisError(f"--collapse {setting}: expected KEY=VALUE (a number or off) with KEY one of "
                                    f"{', '.join(sorted(known))}")
            try:
                rule = replace(rule, **{key: None if value == "off" else float(value)})
            except ValueError:
                raise AnalysisError(f"--collapse {setting}: {value!r} is not a number or off") from None
        return rule

    def describe(self) -> str:
        """The rule in one line, for notes and figure captions."""
        parts = [(self.ref_margin, lambda v: f"loss >= bigram - {v:g}"),
                 (self.dead_frac, lambda v: f"dead units >= {v:g}"),
                 (self.dead_layers, lambda v: f"dead layers >= {v:g}")]
        support = [(self.solved_frac, lambda v: f"lost_tasks: solved <= {v:g} after a denser point solved more"),
                   (self.shrink_ratio, lambda v: f"not_shrinking: edges >= {v:g} x the denser point's")]
        rule = ("collapse if, at every seed, " + " or ".join(text(v) for v, text in parts if v is not None)
                if any(v is not None for v, _ in parts) else "collapse rule: every signature off")
        shown = "; ".join(text(v) for v, text in support if v is not None)
        return rule + (f" (reported beside it, not as it: {shown})" if shown else "")


def shrink_ratios(points: pd.DataFrame, per_task: pd.DataFrame) -> pd.DataFrame:
    """Per point: edges relative to the nearest denser point of its series with a circuit, over the
    tasks both solved (`shrink_ratio`, `shrink_vs`, `shrink_tasks`)."""
    solved = per_task[(per_task["task"] != CONTROL_TASK) & (per_task["n_solved"] > 0)] if len(per_task) else per_task
    edges_by_point = {p: dict(zip(g["task"], g["edges"])) for p, g in solved.groupby("point")} if len(solved) else {}
    out = pd.DataFrame({"shrink_ratio": math.nan, "shrink_vs": "", "shrink_tasks": ""}, index=points.index)
    for _, series in points.groupby("series"):
        series = series.sort_values("density", ascending=False)
        previous = None  # the nearest denser point with a circuit
        for index, point in series.iterrows():
            if not np.isfinite(point["edges"]):
                continue
            if previous is not None:
                mine, theirs = edges_by_point.get(point["point"], {}), edges_by_point.get(previous["point"], {})
                both = sorted(set(mine) & set(theirs))
                if both:
                    ratio = names.geomean([mine[t] for t in both]) / names.geomean([theirs[t] for t in both])
                elif not edges_by_point:  # no per-task table: compare the points' own aggregates
                    ratio, both = point["edges"] / previous["edges"], ["all solved"]
                else:
                    ratio = math.nan
                out.loc[index, ["shrink_ratio", "shrink_vs", "shrink_tasks"]] = [ratio, previous["point"], " ".join(both)]
            previous = point
    return out


def _best_denser_solved(points: pd.DataFrame) -> pd.Series:
    """Per point: the highest solved fraction among denser points of its series (NaN if none)."""
    best = pd.Series(math.nan, index=points.index)
    for _, series in points.groupby("series"):
        for index, point in series.iterrows():
            denser = series[series["density"] > point["density"]]["solved_frac"].dropna()
            best[index] = denser.max() if len(denser) else math.nan
    return best


def signatures(point, rule: CollapseRule) -> list[str]:
    """The collapse signatures that fire for one point or run, each with its numbers."""
    fired = []
    if rule.ref_margin is not None and point["val_loss"] >= point["bigram_loss"] - rule.ref_margin:
        fired.append(f"near_reference: loss {point['val_loss']:.3f} >= bigram {point['bigram_loss']:.3f} - {rule.ref_margin:g}")
    if rule.dead_frac is not None:
        dead = np.nanmax([point["dead_by_weight"], point["dead_by_activity"], -1.0])  # -1: neither logged
        if dead >= rule.dead_frac:
            fired.append(f"dead_units: {dead:.2f} >= {rule.dead_frac:g}")
    if rule.dead_layers is not None and point["dead_layers"] >= rule.dead_layers:
        fired.append(f"dead_layers: {point['dead_layers']:g} >= {rule.dead_layers:g}")
    return fired


def lost_tasks(point, rule: CollapseRule) -> str:
    """`lost_tasks: ...` when the point solves no more than the rule's fraction after a denser point solved more."""
    if (rule.solved_frac is not None and point["solved_frac"] <= rule.solved_frac
            and point["denser_solved"] > point["solved_frac"]):
        return (f"lost_tasks: solved {point['solved_frac']:.2f} <= {rule.solved_frac:g}, "
                f"a denser point solved {point['denser_solved']:.2f}")
    return ""


def not_shrinking(point, rule: CollapseRule) -> str:
    """`not_shrinking: ...` when the point's circuit is no smaller than the nearest denser point's."""
    if rule.shrink_ratio is not None and point["shrink_ratio"] >= rule.shrink_ratio:
        return (f"not_shrinking: edges {point['shrink_ratio']:.2f} x {point['shrink_vs']} "
                f"(tasks {point['shrink_tasks']}) >= {rule.shrink_ratio:g}")
    return ""


RUN_COLUMNS = {"val_loss": names.CAPABILITY_VAL_LOSS, "bigram_loss": names.CAPABILITY_BIGRAM,
               "dead_by_weight": names.COLLAPSE_DEAD_BY_WEIGHT, "dead_by_activity": names.COLLAPSE_DEAD_BY_ACTIVITY,
               "dead_layers": names.COLLAPSE_DEAD_LAYERS}


def seeds_with_signature(points: pd.DataFrame, runs: pd.DataFrame, rule: CollapseRule) -> pd.Series:
    """Per point: how many of its runs (seeds) show a signature of their own."""
    table = pd.DataFrame({column: runs[metric].astype(float) if metric in runs else math.nan
                          for column, metric in RUN_COLUMNS.items()}, index=runs.index)
    fires = pd.Series([bool(signatures(row, rule)) for _, row in table.iterrows()], index=runs.index)
    return points["point"].map(fires.groupby(runs["point"]).sum()).fillna(0).astype(int)


def label_points(points: pd.DataFrame, per_task: pd.DataFrame, rule: CollapseRule,
                 runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Add the indicators, `regime` (collapse where a signature fires at every seed), `rule` (the signatures
    that fire on the point's seed means, with their numbers and the seeds), and the consequences reported
    beside it, `lost_tasks` and `not_shrinking`. Without `runs`, the seed means alone decide."""
    points = pd.concat([points, shrink_ratios(points, per_task)], axis=1)
    points["denser_solved"] = _best_denser_solved(points)
    points["bigram_gap"] = points["val_loss"] - points["bigram_loss"]
    fired = [signatures(p, rule) for _, p in points.iterrows()]
    seeds = seeds_with_signature(points, runs, rule) if runs is not None else \
        pd.Series([p["n_seeds"] if f else 0 for f, (_, p) in zip(fired, points.iterrows())], index=points.index)
    collapsed = [bool(f) and s == p["n_seeds"] for f, s, (_, p) in zip(fired, seeds, points.iterrows())]
    points["regime"] = [COLLAPSE if c else NORMAL for c in collapsed]
    points["rule"] = [("; ".join(f) + f" (a signature at {s} of {p['n_seeds']} seeds)") if f else "no signature fired"
                      for f, s, (_, p) in zip(fired, seeds, points.iterrows())]
    points["lost_tasks"] = [lost_tasks(p, rule) for _, p in points.iterrows()]
    points["not_shrinking"] = [not_shrinking(p, rule) for _, p in points.iterrows()]
    return points
