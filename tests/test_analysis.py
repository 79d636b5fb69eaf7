"""The analysis against real SQLite MLflow stores: one filled by a real tiny sweep, and ones filled
through the MLflow client with values whose seed means, Pareto sets and collapse labels are known."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.__main__ import main
from analysis import report
from analysis.frontier import hypervolume, pareto_mask
from conftest import PROJECT_ROOT
from stores import Store, analyse
from sweep import names

FIGURES = ("frontier", "circuit_edges_vs_density", "capability_vs_nonzero_params", "collapse_indicators")
T_975_1 = 12.706204736  # t quantile, 95% two-sided, one degree of freedom


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    """Two sweeps. Sweep 1: x1 at densities 1 (two seeds), 0.25, 0.06 and x2 at 1, 0.25, 0.06, 0.03,
    plus a failed run, a skipped run, an older run of a seen config hash and a re-prune run.
    Sweep 2 (newer): x4 at density 1."""
    store = Store(tmp_path_factory.mktemp("constructed"))
    p1 = store.parent()
    store.job(p1, 2, 1, loss=9.9, tasks={"a": 1, "b": 1})  # older run of w2-d1: replaced by the newer one below
    store.job(p1, 1, 1, seed=0, loss=1.8, tasks={"a": 1000, "b": 4000})
    store.job(p1, 1, 1, seed=1, loss=2.0, tasks={"a": 4000, "b": 16000})
    store.job(p1, 1, 0.25, loss=2.1, tasks={"a": 250, "b": 1000})
    store.job(p1, 1, 0.06, loss=2.45, tasks={"a": 300, "b": None})  # near bigram; edges grew over task a
    store.job(p1, 2, 1, loss=1.7, tasks={"a": 3000, "b": 12000})
    store.job(p1, 2, 0.25, loss=1.85, tasks={"a": 400, "b": 1600})
    x2_sparse = store.job(p1, 2, 0.06, loss=2.0, tasks={"a": 100, "b": 400})
    store.job(p1, 2, 0.03, loss=2.2, tasks={"a": None, "b": None}, extra={names.COLLAPSE_DEAD_BY_WEIGHT: 0.4})
    store.job(p1, 1, 0.5, loss=1.0, tasks={"a": 1, "b": 1}, status="failed: RuntimeError: boom", final="FAILED")
    store.job(p1, 1, 0.5, status=f"skipped: duplicate of {x2_sparse}")
    store.job(p1, 2, 0.06, loss=2.0, tasks={"a": 50, "b": 50}, config_hash="reprune-x2-d0.06",
              tags={names.TAG_STAGE: "prune", names.TAG_TRAIN_RUN: x2_sparse})
    store.job(p1, 2, 0.06, loss=2.0, tasks={"a": 70, "b": 70}, config_hash="reprune-x2-d0.06-attribution",
              tags={names.TAG_STAGE: "prune", names.TAG_TRAIN_RUN: x2_sparse}, params={"prune.method": "attribution"})
    p2 = store.parent()
    store.job(p2, 4, 1, loss=1.5, tasks={"a": 20000, "b": 125000})
    return store, p1, p2


@pytest.fixture(scope="module")
def analysed(constructed, tmp_path_factory):
    store, p1, p2 = constructed
    out = tmp_path_factory.mktemp("analysed")
    assert analyse(store, out) == 0
    return out, store, p1, p2


def points_by_label(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "points.csv").set_index("point")


def test_tables_hold_one_row_per_finished_job_and_per_job_and_task(analysed):
    out, *_ = analysed
    runs, tasks = pd.read_csv(out / "runs.csv"), pd.read_csv(out / "tasks.csv")
    # failed, skipped, re-prune and the older run of a seen hash are left out
    assert len(runs) == 9
    assert 9.9 not in runs[names.CAPABILITY_VAL_LOSS].values and 1.0 not in runs[names.CAPABILITY_VAL_LOSS].values
    assert set(runs["stage"]) == {"train"}
    assert len(tasks) == 9 * 3 and set(tasks["task"]) == {"a", "b", "control"}
    row = tasks[(tasks["model.width_mult"] == 1) & (tasks["sparsity.density"] == 0.06) & (tasks["task"] == "b")]
    assert row["solved"].item() == 0 and math.isnan(row["edges"].item())


def test_seeds_are_pooled_with_a_t_interval(analysed):
    points = points_by_label(analysed[0])
    dense = points.loc["w1-d1"]
    assert dense["n_seeds"] == 2 and dense["val_loss"] == pytest.approx(1.9)
    assert dense["val_loss_ci"] == pytest.approx(T_975_1 * 0.1)  # sd 0.1414 / sqrt(2) = 0.1
    assert dense["edges"] == pytest.approx(4000)  # geometric mean of the runs' 2000 and 8000
    assert dense["edges_low"] < 4000 < dense["edges_high"]
    assert points.loc["w2-d1", "val_loss"] == pytest.approx(1.7) and math.isnan(points.loc["w2-d1", "val_loss_ci"])
    assert points.loc["w2-d1", "d_model"] == 64


def test_frontier_overall_and_per_width(analysed):
    frontier = pd.read_csv(analysed[0] / "frontier.csv")
    by_scope = {scope: set(group["point"]) for scope, group in frontier.groupby("scope")}
    assert by_scope == {"overall": {"w4-d1", "w2-d1", "w2-d0.25", "w2-d0.06"},
                        "x1": {"w1-d1", "w1-d0.25", "w1-d0.06"},
                        "x2": {"w2-d1", "w2-d0.25", "w2-d0.06"},  # w2-d0.03 has no circuit
                        "x4": {"w4-d1"}}
    assert {"regime", "rule"} <= set(frontier.columns)


def test_collapse_labels_carry_the_rule_that_fired(analysed):
    points = points_by_label(analysed[0])
    """The label is the signatures' (one seed each at the sparse points: every seed); what they cost is
    reported beside it, in its own columns, never in `rule`."""
    points = points_by_label(analysed[0])
    collapsed = set(points.index[points["regime"] == "collapse"])
    assert collapsed == {"w1-d0.06", "w2-d0.03"}
    # w1-d0.06: 2.45 >= 2.5 - 0.15; its circuit grew over task a (300 >= 250): not_shrinking, beside the label
    assert points.loc["w1-d0.06", "rule"] == \
        "near_reference: loss 2.450 >= bigram 2.500 - 0.15 (a signature at 1 of 1 seeds)"
    assert points.loc["w1-d0.06", "not_shrinking"] == "not_shrinking: edges 1.20 x w1-d0.25 (tasks a) >= 1"
    assert pd.isna(points.loc["w1-d0.06", "lost_tasks"])  # it still solves task a
    # w2-d0.03: 40% of its units dead by weight; it solves no task after w2-d0.06 solved both: lost_tasks, beside
    assert points.loc["w2-d0.03", "rule"] == "dead_units: 0.40 >= 0.3 (a signature at 1 of 1 seeds)"
    assert points.loc["w2-d0.03", "lost_tasks"] == "lost_tasks: solved 0.00 <= 0, a denser point solved 1.00"
    assert points.loc["w1-d0.06", "shrink_ratio"] == pytest.approx(300 / 250)
    assert points.loc["w1-d0.25", "shrink_ratio"] == pytest.approx(500 / 4000)
    assert points.loc["w1-d1", "rule"] == "no signature fired" and points.loc["w1-d1", "regime"] == "normal"
    assert points[["lost_tasks", "not_shrinking"]].drop(["w1-d0.06", "w2-d0.03"]).isna().all().all()
    frontier = pd.read_csv(analysed[0] / "frontier.csv")
    assert "lost_tasks" in frontier.columns and not frontier["rule"].str.contains("lost_tasks|not_shrinking").any()


def test_hypervolume_per_width_against_the_fixed_reference(analysed):
    out, store, _, p2 = analysed
    table = pd.read_csv(out / "hypervolume.csv").set_index("scope")
    assert table.loc["x4", "hypervolume"] == pytest.approx((3.5 - 1.5) * (6 - math.log10(50000)))
    assert set(table.index) == {"overall", "x1", "x2", "x4"}
    assert table.loc["overall", "hypervolume"] >= table["hypervolume"].drop("overall").max()
    parent = store.client.get_run(p2).data  # the UI shows them on the sweep's parent run, named in its description
    assert {f"frontier/hypervolume/{scope}": value for scope, value in table["hypervolume"].items()} == \
        {k: pytest.approx(v) for k, v in parent.metrics.items() if k.startswith("frontier/")}
    assert "`frontier/frontier.png`" in parent.tags[names.TAG_DESCRIPTION]


def test_hypervolume_and_pareto_by_hand():
    # log10 edges: (1, 1), (2, 0) against (3, 3): 1 x 2 + 1 x 3; the dominated (2.5, 100) adds nothing
    assert hypervolume([1, 2, 2.5], [10, 1, 100], reference=(3, 1000)) == pytest.approx(5)
    assert list(pareto_mask([1, 2, 2.5, 1, float("nan")], [10, 1, 100, 10, 1])) == [True, True, False, True, False]


def test_every_file_is_written_and_logged_to_the_newest_parent(analysed):
    out, store, _, p2 = analysed
    for name in FIGURES:
        for suffix in ("pdf", "png"):
            assert (out / f"{name}.{suffix}").stat().st_size > 1000
    assert b"/FontFile2" in (out / "frontier.pdf").read_bytes()  # TrueType embedded, not Type 3
    tex = (out / "frontier.tex").read_text()
    assert r"\begin{tabular}" in tex and "x2 (64)" in tex and "collapse" in tex
    logged = {Path(f.path).name for f in store.client.list_artifacts(p2, "frontier")}
    assert {"frontier.pdf", "frontier.png", "frontier.csv", "runs.csv", "tasks.csv", "frontier.tex"} <= logged


def test_captions_name_the_rule_with_its_numbers(analysed):
    """captions.md, one caption per figure; the frontier's band is the rule's threshold: 2.5 - 0.15 = 2.35."""
    out, store, _, p2 = analysed
    text = (out / "captions.md").read_text()
    assert all(f"## {name}" in text for name in FIGURES)
    assert "2.500 \u2212 0.15 = 2.350 nats/byte" in text and "dead units >= 0.3" in text
    assert "collapse if, at every seed, loss >= bigram - 0.15 or dead units >= 0.3 or dead layers >= 1" in text
    assert "(reported beside it, not as it: lost_tasks: solved <= 0" in text
    # a hollow (collapsed) marker is a signature at every seed, not any indicator (lost tasks never label)
    assert "any of its indicators fired" not in text and "never a label" in text
    assert "captions.md" in {Path(f.path).name for f in store.client.list_artifacts(p2, "frontier")}


def test_parent_restricts_to_one_sweep_and_stage_prune_uses_reprunes(constructed, tmp_path):
    store, p1, _ = constructed
    assert analyse(store, tmp_path / "p1", "--parent", p1, "--no-log", "--no-figures") == 0
    assert "w4-d1" not in points_by_label(tmp_path / "p1").index
    # two methods re-pruned the same checkpoint: their circuits are not two seeds of one point
    assert analyse(store, tmp_path / "prune", "--stage", "prune", "--no-log", "--no-figures") == 2
    for method, edges in (("mask", 50), ("attribution", 70)):  # a run without prune.method is a mask run
        assert analyse(store, tmp_path / method, "--stage", "prune", "--method", method, "--no-log", "--no-figures") == 0
        points = points_by_label(tmp_path / method)
        assert list(points.index) == ["w2-d0.06"] and points["edges"].item() == pytest.approx(edges)


def test_common_tasks_restricts_the_geomean(constructed, tmp_path):
    store, *_ = constructed
    assert analyse(store, tmp_path, "--common-tasks", "--no-log", "--no-figures") == 0
    points = points_by_label(tmp_path)  # task a is the only one every point with a circuit solved
    assert points.loc["w1-d1", "edges"] == pytest.approx(2000)
    assert points.loc["w4-d1", "edges"] == pytest.approx(20000)
    assert points.loc["w2-d0.06", "edges"] == pytest.approx(100)


def test_figures_rebuild_offline_from_the_csv_tables(analysed, tmp_path):
    out = analysed[0]
    assert main(["frontier", "--from-csv", str(out), "--out", str(tmp_path)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "frontier.csv"), pd.read_csv(tmp_path / "frontier.csv"))
    assert all((tmp_path / f"{name}.png").stat().st_size > 1000 for name in FIGURES)


def test_collapse_thresholds_are_configurable(constructed, tmp_path, capsys):
    store, *_ = constructed
    assert analyse(store, tmp_path, "--no-log", "--no-figures", "--collapse", "ref_margin=off",
                   "--collapse", "shrink_ratio=off") == 0
    points = points_by_label(tmp_path)
    assert points.loc["w1-d0.06", "regime"] == "normal" and points.loc["w2-d0.03", "regime"] == "collapse"
    assert points.loc["w1-d0.06", "rule"] == "no signature fired" and pd.isna(points.loc["w1-d0.06", "not_shrinking"])
    assert points.loc["w2-d0.03", "lost_tasks"].startswith("lost_tasks:")  # solved_frac is still on
    # dead units at 0.4 no longer reach 0.5; switching the loss back on leaves w1-d0.06 the only collapse
    assert analyse(store, tmp_path, "--no-log", "--no-figures", "--collapse", "dead_frac=0.5") == 0
    points = points_by_label(tmp_path)
    assert set(points.index[points["regime"] == "collapse"]) == {"w1-d0.06"}
    assert analyse(store, tmp_path, "--collapse", "dead=0.5") == 2
    assert "KEY one of" in capsys.readouterr().err


def test_runs_without_circuits_or_losses_still_give_tables_and_figures(tmp_path, capsys):
    store = Store(tmp_path)
    parent = store.parent()
    store.job(parent, 1, 1, loss=1.8)  # pruning disabled: no circuit metrics
    store.job(parent, 1, 0.25, loss=2.45)  # a single width, a single seed, near the bigram loss
    store.job(parent, 1, 0.06)  # an older run without capability/val_loss
    assert analyse(store, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "lack capability/val_loss" in printed and "no circuit metrics" in printed
    assert len(pd.read_csv(tmp_path / "out" / "frontier.csv")) == 0
    assert all((tmp_path / "out" / f"{name}.pdf").stat().st_size > 1000 for name in FIGURES)
    sparse = points_by_label(tmp_path / "out").loc["w1-d0.25"]
    assert sparse["regime"] == "collapse" and sparse["rule"].startswith("near_reference: loss 2.450")
    findings = pd.read_csv(tmp_path / "out" / "findings.csv")
    onset = findings[findings["finding"] == "collapse_onset"].iloc[0]
    assert (onset["scope"], onset["verdict"], onset["value"]) == ("x1", "holds", 0.25)
    # no circuit anywhere: edges findings undecided, by too few runs
    edges = findings[findings["finding"] == "edges_fall_with_density"]
    assert set(edges["verdict"]) == {"undecided at this size"} and (edges["n"] == 0).all()


def test_every_point_collapsed(tmp_path):
    store = Store(tmp_path)
    parent = store.parent()
    store.job(parent, 1, 1, loss=3.3, tasks={"a": 10})
    store.job(parent, 1, 0.5, loss=3.4, tasks={"a": None})
    assert analyse(store, tmp_path / "out") == 0
    points = points_by_label(tmp_path / "out")
    assert set(points["regime"]) == {"collapse"}
    # both by their loss (>= 2.35); w1-d0.5 also lost task a, which is said beside the label, not in it
    assert points["rule"].str.startswith("near_reference").all() and "lost" not in points.loc["w1-d0.5", "rule"]
    assert points.loc["w1-d0.5", "lost_tasks"].startswith("lost_tasks: solved 0.00")
    findings = pd.read_csv(tmp_path / "out" / "findings.csv")
    onset = findings[findings["finding"] == "collapse_onset"].iloc[0]
    assert (onset["verdict"], onset["value"]) == ("holds", 1) and onset["detail"].startswith("w1-d1: near_reference")
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 1000


def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "mlflow.db"
    out = str(tmp_path / "out")
    assert main(["frontier", "--experiment", "frontier", "--tracking-uri", f"sqlite:///{missing}", "--out", out]) == 2
    assert f"no MLflow store at {missing}" in capsys.readouterr().err and not missing.exists()
    assert main(["frontier", "--experiment", "frontier", "--tracking-uri", "garbage://x", "--out", out]) == 2
    assert "--tracking-uri garbage://x: not a tracking URI; allowed: sqlite:///" in capsys.readouterr().err

    store = Store(tmp_path)
    assert analyse(store, tmp_path / "out", "--experiment", "nope") == 2
    err = capsys.readouterr().err
    assert "no experiment 'nope'" in err and "frontier" in err.split("experiments there:")[1]
    parent = store.parent()
    store.job(parent, 1, 1, loss=1.0, status="failed: RuntimeError: boom", final="FAILED")
    assert analyse(store, tmp_path / "out") == 2
    assert "no finished train job runs in experiment 'frontier' (1 failed)" in capsys.readouterr().err

    assert main(["frontier", "--from-csv", str(tmp_path / "empty"), "--out", out]) == 2
    assert "missing" in capsys.readouterr().err
    store.job(parent, 1, 1, loss=1.8)
    assert analyse(store, store.db) == 2  # --out is a file
    assert "cannot write the results" in capsys.readouterr().err


def test_unreachable_server_from_the_command_line(tmp_path):
    """The real entry point: one line, exit status 2, no traceback (port 9, discard: nothing listens)."""
    result = subprocess.run([sys.executable, "-m", "analysis", "frontier", "--experiment", "frontier",
                             "--tracking-uri", "http://127.0.0.1:9", "--out", str(tmp_path / "out")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: cannot read the MLflow store at http://127.0.0.1:9")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # a real sweep then the analysis: a minute on 2 cores; the analysis is tested on constructed stores in make test
def test_a_real_tiny_sweep(sweep, tmp_path):
    """2 widths x 2 densities through `python -m sweep -m`, then `python -m analysis frontier`."""
    result = sweep.run("model.width_mult=1,2", "sparsity.density=1,0.5", "prune.target_loss=1.5",
                       "tasks.names=[else_elif,lambda_func]", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "figures"
    cmd = [sys.executable, "-m", "analysis", "frontier", "--experiment", "frontier", "--tracking-uri", sweep.uri,
           "--out", str(out)]
    analysed = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    assert f"wrote 18 files to {out}" in analysed.stdout and "logged them to parent run" in analysed.stdout  # + findings.csv, .md, task_retention.csv, captions.md

    runs, tasks = pd.read_csv(out / "runs.csv"), pd.read_csv(out / "tasks.csv")
    assert sorted(zip(runs["model.width_mult"], runs["sparsity.density"])) == [(1, 0.5), (1, 1), (2, 0.5), (2, 1)]
    # model.d_model follows from the width: not a variant that would rename the points
    assert sorted(pd.read_csv(out / "points.csv")["point"]) == ["w1-d0.5", "w1-d1", "w2-d0.5", "w2-d1"]
    assert runs[names.CAPABILITY_VAL_LOSS].notna().all() and runs[names.TASKS_SOLVED_FRAC].notna().all()
    assert len(tasks) == 4 * 3 and set(tasks["task"]) == {"else_elif", "lambda_func", "control"}
    frontier = pd.read_csv(out / "frontier.csv")
    assert set(frontier["regime"]) <= {"normal", "collapse"} and frontier["rule"].notna().all()
    for name in FIGURES:
        assert (out / f"{name}.pdf").stat().st_size > 1000 and (out / f"{name}.png").stat().st_size > 1000
    (parent,) = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_PARENT]
    logged = {Path(f.path).name for f in sweep.client.list_artifacts(parent.info.run_id, "frontier")}
    assert "frontier.png" in logged and "tasks.csv" in logged


def test_the_analysis_loads_no_training_code():
    """Only the contract's names (and the `sweep` package's light __init__); never torch or a training stage."""
    code = "import sys, analysis.report; print(' '.join(sorted(m for m in sys.modules if m == 'torch' or m.startswith('sweep.'))))"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert "sweep.names" in loaded
    assert not loaded & {"torch", "sweep.science.model", "sweep.science.train", "sweep.circuits.prune", "sweep.orchestration.job", "sweep.science.data", "sweep.circuits.circuit"}


def test_runs_of_two_tokenizers_are_compared_per_byte(tmp_path):
    store = Store(tmp_path / "store")
    parent = store.parent()
    store.job(parent, 1, 1, loss=2.0, tasks={"a": 100}, extra={names.CAPABILITY_BITS_PER_BYTE: 2.0 / math.log(2)})
    # the BPE's own bigram entropy (1.2 bits/byte, in-sample over V^2 cells) is below the model's 1.5:
    # as the collapse reference it would call every BPE model collapsed; the text's byte bigram is the reference
    store.job(parent, 1, 1, loss=3.0, tasks={"a": 100}, params={"data.tokenizer": "bpe"},  # nats per token
              extra={names.CAPABILITY_BITS_PER_BYTE: 1.5, names.CAPABILITY_BIGRAM_BPB: 1.2,
                     names.CAPABILITY_UNIGRAM_BPB: 3.0, names.CAPABILITY_BYTE_BIGRAM_BPB: 3.4}, config_hash="bpe")
    store.job(parent, 2, 1, loss=3.0, tasks={"a": 100}, params={"data.tokenizer": "bpe"},  # from before the metric
              extra={names.CAPABILITY_BITS_PER_BYTE: 1.5, names.CAPABILITY_BIGRAM_BPB: 1.2}, config_hash="bpe-old")
    assert analyse(store, tmp_path / "out", "--no-log", "--no-figures") == 0
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index(["data.tokenizer", "model.width_mult"], drop=False)
    assert runs.loc[("bpe", 1), names.CAPABILITY_VAL_LOSS] == pytest.approx(1.5 * math.log(2))  # nats per byte
    assert runs.loc[("bpe", 1), names.CAPABILITY_BIGRAM] == pytest.approx(3.4 * math.log(2))
    assert math.isnan(runs.loc[("bpe", 2), names.CAPABILITY_BIGRAM])  # no byte bigram logged: no reference
    points = points_by_label(tmp_path / "out")
    assert (points.loc[["w1-d1 tokenizer=bpe", "w2-d1 tokenizer=bpe"], "regime"] == "normal").all()
    assert runs[names.CAPABILITY_VAL_LOSS].min() == pytest.approx(1.5 * math.log(2))  # bytes: 2.0 nats/byte
    assert pd.read_csv(tmp_path / "out" / "runs.csv")[names.CAPABILITY_VAL_LOSS].max() == pytest.approx(2.0)


def test_findings_are_stated_with_the_verdict_the_numbers_support(tmp_path, capsys):
    """A store built so that every finding's answer is known (tasks a and b share each run's edges; no f80).
    (a) Three seeds at 1, 0.5, 0.25 per width: with equal counts at equally spaced x the slope is half the
    difference of the end densities' mean log edges, so the ratio per halving is sqrt(gm(0.25) / gm(1)):
    x1 0.273 and x2 0.408 (intervals well under 0.8: holds), x4 5.39 (grows: does not hold); x8 has 2 runs:
    too few. All widths: the common slope is the mean of the three (equal Sxx): ratio (0.273 0.408 5.39)^(1/3)
    = 0.843, its interval wide with x4 against the others: undecided. f80: no run logged it: too few.
    (b) x2 at 0.25 holds x1 at 0.5's nonzero count (500): loss -0.2 over three seeds each (Student's t, sigma
    pooled over the two points at that count, s2 1e-4, df 4: [-0.223, -0.177], holds), edges 500,520,480 vs
    1000,1100,950 (ratio 0.49, below 1: holds); x8 at 0.125 matches x2 at 0.5 (1000) with one seed against
    three: too few.
    (c) x1 collapses at 0.25 by its loss (2.45-2.47 >= 2.35 at every seed); x2 never: not reached (undecided)."""
    store = Store(tmp_path)
    parent = store.parent()
    ladder = {(1, 1): ([1.8, 1.82, 1.81], [4000, 4200, 3900]), (1, 0.5): ([2.0, 2.02, 2.01], [1000, 1100, 950]),
              (1, 0.25): ([2.45, 2.46, 2.47], [300, 320, 280]),
              (2, 1): ([1.7, 1.71, 1.72], [3000, 3100, 2900]), (2, 0.5): ([1.75, 1.76, 1.74], [900, 950, 1000]),
              (2, 0.25): ([1.80, 1.82, 1.81], [500, 520, 480]),
              (4, 1): ([1.6, 1.61, 1.62], [100, 110, 105]), (4, 0.5): ([1.65, 1.66, 1.64], [1000, 1100, 1050]),
              (4, 0.25): ([1.7, 1.71, 1.72], [3000, 3100, 3050])}
    for (width, density), (losses, edges) in ladder.items():
        for seed, (loss, e) in enumerate(zip(losses, edges)):
            store.job(parent, width, density, seed=seed, loss=loss, tasks={"a": e, "b": e})
    store.job(parent, 8, 0.125, loss=1.7, tasks={"a": 700, "b": 700})
    store.job(parent, 8, 1, loss=1.5, tasks={"a": 9000, "b": 9000})
    assert analyse(store, tmp_path / "out") == 0
    f = pd.read_csv(tmp_path / "out" / "findings.csv", keep_default_na=False, na_values=[""])
    assert set(f["seed_set"]) == {"all"}  # one seed set
    row = {(r.finding, r.scope, r.measure): r for r in f.itertuples()}
    verdict = {key: r.verdict for key, r in row.items()}

    def gm(values):
        return math.exp(sum(map(math.log, values)) / len(values))

    ratios = {width: math.sqrt(gm(ladder[width, 0.25][1]) / gm(ladder[width, 1][1])) for width in (1, 2, 4)}
    for width, expected in (("x1", "holds"), ("x2", "holds"), ("x4", "does not hold")):
        r = row["edges_fall_with_density", width, "target"]
        assert r.verdict == expected and r.value == pytest.approx(ratios[int(width[1:])]) and r.n == 9
    assert row["edges_fall_with_density", "x1", "target"].high < 0.8  # holds: at most 0.8 per halving
    assert row["edges_fall_with_density", "x4", "target"].low > 1.25  # does not hold: grows by 1 / 0.8 at least
    assert verdict["edges_fall_with_density", "x8", "target"] == "undecided at this size"  # 2 runs
    assert "2 runs with a circuit over 2 densities: too few" in row["edges_fall_with_density", "x8", "target"].detail
    pooled = row["edges_fall_with_density", "all widths", "target"]
    assert pooled.verdict == "undecided at this size" and pooled.low < 0.8 < pooled.high
    assert pooled.value == pytest.approx((ratios[1] * ratios[2] * ratios[4]) ** (1 / 3)) and pooled.n == 27
    assert {verdict["edges_fall_with_density", s, "f80"] for s in ("x1", "x2", "x4", "x8", "all widths")} == \
        {"undecided at this size"}
    pair, far = "w2-d0.25 vs w1-d0.5", "w8-d0.125 vs w2-d0.5"
    assert verdict["wider_at_fixed_nonzeros", pair, "-"] == "holds"
    assert verdict["wider_at_fixed_nonzeros", pair, "target"] == "holds"
    assert verdict["wider_at_fixed_nonzeros", pair, "f80"] == "undecided at this size"  # no f80 circuit
    assert verdict["wider_at_fixed_nonzeros", far, "-"] == "undecided at this size"
    assert "seeds 1 vs 3: too few" in row["wider_at_fixed_nonzeros", far, "-"].detail
    assert verdict["collapse_onset", "x1", "-"] == "holds"
    assert verdict["collapse_onset", "x2", "-"] == "undecided at this size"
    loss = row["wider_at_fixed_nonzeros", pair, "-"]
    # sigma pooled over the points at 500 nonzeros, the pair's two, each SS 2e-4 (a, a + 0.01, a + 0.02): df 4
    half = 2.776445 * math.sqrt(1e-4 * 2 / 3)  # t(0.975, 4)
    assert (loss.value, loss.low, loss.high) == (pytest.approx(-0.2), pytest.approx(-0.2 - half, rel=1e-4),
                                                 pytest.approx(-0.2 + half, rel=1e-4))
    assert loss.n == 6 and "sigma pooled over 2 replicated points, df 4; nonzeros 500 vs 500" in loss.detail
    edges = row["wider_at_fixed_nonzeros", pair, "target"]
    assert edges.value == pytest.approx(math.exp(math.log(500 * 520 * 480) / 3 - math.log(1000 * 1100 * 950) / 3))
    assert "geomean over a, b" in edges.detail
    onset = row["collapse_onset", "x1", "-"]
    assert onset.value == 0.25 and onset.detail.startswith("w1-d0.25: near_reference")
    assert "(a signature at 3 of 3 seeds)" in onset.detail
    assert "not reached down to density 0.25" in row["collapse_onset", "x2", "-"].detail
    printed = capsys.readouterr().out
    assert "findings (findings.csv" in printed and "edges_fall_with_density x4 (target): does not hold" in printed
    md = (tmp_path / "out" / "findings.md").read_text()  # the README's section, from the same table
    assert "| scope | measure | statistic | all | runs | detail (overall) |" in md
    assert "| w2-d0.25 vs w1-d0.5 | - | loss_difference | **holds** -0.2 [-0.223, -0.177] | 6 |" in md
    assert "| x2 | - | density | **undecided at this size** - | 3 | not reached down to density 0.25 |" in md
    assert "experiment `frontier`, 29 runs" in md and "one seed set: no verdict here is replicated yet" in md


def test_task_retention_says_where_each_width_loses_each_task(tmp_path):
    """x1: `a` is solved by every seed down to 0.5 and lost at 0.25; `b` loses a seed at 0.5 and comes back
    at 0.25 (kept to 1, not 0.25); x2 solves `a` everywhere it ran (never lost) and `b` nowhere (never kept)."""
    store = Store(tmp_path)
    parent = store.parent()
    for seed in range(3):
        store.job(parent, 1, 1, seed=seed, loss=2.0, tasks={"a": 100, "b": 100})
        store.job(parent, 1, 0.5, seed=seed, loss=2.1, tasks={"a": 50, "b": None if seed == 1 else 60})
    store.job(parent, 1, 0.25, loss=2.2, tasks={"a": None, "b": 30})
    store.job(parent, 2, 1, loss=1.9, tasks={"a": 90, "b": None})
    store.job(parent, 2, 0.25, loss=2.0, tasks={"a": 40, "b": None})
    assert analyse(store, tmp_path / "out", "--no-log", "--no-figures") == 0
    kept = pd.read_csv(tmp_path / "out" / "task_retention.csv").set_index(["task", "width"])
    assert set(kept.index) == {("a", 1), ("b", 1), ("a", 2), ("b", 2)}  # the control is no task here
    assert (kept.loc[("a", 1), "kept_to"], kept.loc[("a", 1), "lost_at"]) == (0.5, 0.25)
    assert (kept.loc[("b", 1), "kept_to"], kept.loc[("b", 1), "lost_at"]) == (1, 0.5)
    assert kept.loc[("b", 1), "solved_seeds"] == "1:3/3 0.5:2/3 0.25:1/1"
    assert kept.loc[("a", 2), "kept_to"] == 0.25 and math.isnan(kept.loc[("a", 2), "lost_at"])
    assert math.isnan(kept.loc[("b", 2), "kept_to"]) and kept.loc[("b", 2), "lost_at"] == 1
    md = (tmp_path / "out" / "findings.md").read_text()
    assert "| b | x1 | 1 | 0.5 | 1:3/3 0.5:2/3 0.25:1/1 |" in md


def test_the_readme_findings_section_is_written_between_its_markers(tmp_path):
    """--readme replaces only the text between the two markers; a README without them is one line, exit 2."""
    store = Store(tmp_path)
    parent = store.parent()
    for density, edges in ((1, 400), (0.5, 200), (0.25, 100), (0.125, 50)):
        store.job(parent, 1, density, loss=2.0, tasks={"a": edges})
    begin, end = report.FINDINGS_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Findings\n{begin}\nold text\n{end}\n\n## After\nkept\n")
    assert analyse(store, tmp_path / "out", "--no-log", "--no-figures", f"--readme={readme}") == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\n## Findings\n") and text.endswith(f"{end}\n\n## After\nkept\n")
    assert "old text" not in text and "edges_fall_with_density" in text
    # 400, 200, 100, 50 edges: exactly 0.5 per halving; 4 distinct densities, smallest p 1/24 < 0.05: holds
    assert "| x1 | target | ratio_per_halving | **holds** 0.5 [0.5, 0.5] | 4 |" in text
    assert "| all widths | target | ratio_per_halving | **holds** 0.5 [0.5, 0.5] | 4 |" in text
    assert (tmp_path / "out" / "findings.md").read_text().strip() in text
    readme.write_text("# no section\n")
    result = subprocess.run([sys.executable, "-m", "analysis", "frontier", "--experiment", "frontier", "--out",
                             str(tmp_path / "out2"), "--tracking-uri", store.uri, f"--readme={readme}"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--readme" in result.stderr
    assert readme.read_text() == "# no section\n" and not (tmp_path / "out2").exists()
