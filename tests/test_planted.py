"""The circuit benchmark: its ground truth (bench/planted.py: each construction's minimal circuits proven,
edges counted by hand) and the benchmark itself (bench/circuit_bench.py) on real discovery runs."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from bench.circuit_bench import score
from bench.planted import ABLATIONS, CONSTRUCTIONS, NOTHING_TO_FIND, NotProven, Planted, prove, prove_spurious
from conftest import PROJECT_ROOT
from sweep.circuits.circuit import circuit_edges
from sweep.circuits.discovery import METHODS
from sweep.circuits.prune import Evaluator, keep_of, node_means

N_HELDOUT = 32
SOMETHING_TO_FIND = ["mlp_lookup", "attention_then_mlp", "two_hop_attention"]  # (a)-(c)


def evaluator(planted: Planted, ablation: str) -> Evaluator:
    means = node_means(planted.model, planted.text(), 64) if ablation == "mean" else None
    return Evaluator(planted.model, [planted.batch(N_HELDOUT, "heldout")], means)


@pytest.mark.parametrize("construction", CONSTRUCTIONS)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_construction_is_proven_and_counted_by_hand(construction, ablation):
    for seed in (0, 1):
        planted = CONSTRUCTIONS[construction](seed)
        prove(planted, evaluator(planted, ablation), ablation)
        if planted.spurious:  # (g): the shortcut alone solves the train prompts
            means = node_means(planted.model, planted.text(), 64) if ablation == "mean" else None
            prove_spurious(planted, Evaluator(planted.model, [planted.batch(16, "train")], means), ablation)
        minimal = planted.minimal[ablation]
        assert len(planted.hand_edges[ablation]) == len(minimal)
        for circuit, hand in zip(minimal, planted.hand_edges[ablation]):
            assert len(circuit_edges(planted.model, circuit, planted.inputs(), planted.outputs())) == hand, circuit


def test_the_proof_rejects_wrong_claims():
    """A claim with a node too few, a node too many, or nothing where something is, does not pass."""
    planted = CONSTRUCTIONS["attention_then_mlp"](0)
    check = evaluator(planted, "mean")
    (core,) = planted.minimal["mean"]
    for wrong in ([core[1:]], [[*core, "layer.1.attn.q[3]"]], [], [core, core[:-1] + ["layer.0.mlp.out[7]"]]):
        planted.minimal["mean"] = wrong
        with pytest.raises(NotProven):
            prove(planted, check, "mean")


def test_scores_by_hand():
    a, b = ["n1", "n2"], ["n3", "n4", "n5"]
    assert score({"n1", "n2"}, [a, b]) | {"nearest": None} == {"exact": True, "precision": 1.0, "recall": 1.0,
                                                               "nearest": None, "outcome": "exact"}
    union = score({"n1", "n2", "n3", "n4", "n5"}, [a, b])
    assert union["outcome"] == "the union of 2 minimal circuits" and union["precision"] == pytest.approx(3 / 5)
    assert score({"n1", "n2", "n3", "n4", "n5", "q"}, [a, b])["outcome"] == "the union of 2 minimal circuits (+1 more)"
    extra = score({"n1", "n2", "x"}, [a, b])
    assert extra["outcome"] == "+1 extra" and extra["nearest"] == a and extra["recall"] == 1.0
    assert score({"n3", "y"}, [a, b])["outcome"] == "2 missing, +1 extra"
    assert score(set(), [a])["outcome"] == "no circuit found" and score(set(), [a])["recall"] == 0.0
    assert score(set(), [])["exact"] and score(set(), [])["precision"] == 1.0
    wrong = score({"z"}, [])
    assert not wrong["exact"] and wrong["precision"] == 0.0 and "where there is none" in wrong["outcome"]


def run_bench(*args, out, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.circuit_bench", "--out", str(out), *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def read_rows(out) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def check_outputs(out, constructions: list[str], draws: int) -> list[dict]:
    """Every output written, a CSV row per construction, ablation and method, every cell measured."""
    rows = read_rows(out)
    assert list(rows[0])[:5] == ["construction", "ablation", "method", "draws", "exact"]
    assert {(r["construction"], r["ablation"], r["method"]) for r in rows} == {
        (c, a, m) for c in constructions for a in ABLATIONS for m in METHODS}
    for r in rows:
        assert r["draws"] == str(draws) and 0 <= float(r["precision"]) <= 1 and 0 <= float(r["recall"]) <= 1
        assert float(r["seconds"]) > 0 and float(r["full_loss"]) > 0
    stored = json.loads((out / "results.json").read_text())
    assert len(stored["draws"]) == len(rows) * draws and all("found" in d for d in stored["draws"])
    table = (out / "results.md").read_text()
    assert all(c in table for c in constructions) and table.count("\n") == 2 + len(constructions) * len(METHODS)
    assert (out / "recovery.png").stat().st_size > 10_000
    return rows


def test_a_small_benchmark_run_is_exact_where_the_answer_is_plain(tmp_path):
    """(a), (b) and (h)'s control, one draw: every method exact; redundancy's row is measured, not judged."""
    constructions = ["mlp_lookup", "attention_then_mlp", "redundancy", "control"]
    result = run_bench("--constructions", ",".join(constructions), "--draws", "1", out=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = check_outputs(tmp_path, constructions, 1)
    for r in rows:
        if r["construction"] != "redundancy":
            assert r["exact"] == "1/1" and r["precision"] == r["recall"] == "1", r


@pytest.mark.slow
def test_the_full_benchmark_every_method_exact_on_a_to_c_and_nothing_to_find(tmp_path):
    result = run_bench("--draws", "2", out=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = check_outputs(tmp_path, list(CONSTRUCTIONS), 2)
    for r in rows:
        if r["construction"] in (*SOMETHING_TO_FIND, *NOTHING_TO_FIND):
            assert r["exact"] == "2/2" and r["precision"] == r["recall"] == "1", r


@pytest.mark.parametrize("args, setting", [
    (["--constructions", "mlp_lookup,no_such_thing"], "--constructions"),
    (["--methods", "mask,acdc"], "--methods"),
    (["--draws", "0"], "--draws"),
    (["prune.steps=0"], "prune.steps"),
    (["prune.method=nope"], "prune.method"),
    (["train.steps=5"], "overrides"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, setting):
    result = run_bench(*args, out=tmp_path / "out", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0] and lines[0].startswith("circuits-bench: invalid"), result.stderr
    assert not (tmp_path / "out").exists()


def test_the_greedy_search_keeps_the_planted_circuit_before_the_minimality_pass():
    """(c) under zero ablation, the query pair included: the greedy set itself is the circuit, so the
    discretisation's bisection stops at its prefix and the pass has nothing to drop."""
    from omegaconf import OmegaConf

    from sweep.circuits.discovery import find_circuits
    from sweep.circuits.prune import node_names

    planted = CONSTRUCTIONS["two_hop_attention"](2)
    cfg = OmegaConf.merge(OmegaConf.load(PROJECT_ROOT / "conf" / "prune" / "mean.yaml"),
                          {"method": "greedy", "target_loss": 0.15})
    (circuit,), found_by = find_circuits(planted.model, [planted.batch(16, "train")], [planted.batch(32, "heldout")],
                                         None, cfg)
    assert set(node_names(found_by.sites, circuit.keep)) == set(planted.minimal["zero"][0])
    assert circuit.nodes_before_pass == len(planted.minimal["zero"][0])  # the greedy set itself is the circuit
    assert torch.is_tensor(circuit.keep)


def test_two_circuits_taken_apart_tell_redundancy_from_excess():
    """sweep/circuits/compare.py on known answers: the two disjoint circuits of `redundancy` are two
    circuits; a circuit with extra nodes against the circuit itself is excess; the same set is the same."""
    from sweep.circuits.compare import EXCESS, REDUNDANT, SAME, take_apart

    planted = CONSTRUCTIONS["redundancy"](0)
    check = evaluator(planted, "mean")
    first, second = (keep_of(check.sites, c) for c in planted.minimal["mean"])
    apart = take_apart(check, 0, first, second, 0.15)
    assert apart.verdict == REDUNDANT and apart.shared == 0 and not apart.shared_reaches
    assert apart.removable_a == apart.removable_b == 0
    assert apart.second_circuit_nodes == max(len(c) for c in planted.minimal["mean"])

    lookup = CONSTRUCTIONS["mlp_lookup"](0)
    check = evaluator(lookup, "mean")
    circuit = keep_of(check.sites, lookup.minimal["mean"][0])
    padded = circuit | keep_of(check.sites, ["layer.1.mlp.hidden[7]", "layer.0.attn.q[20]"])
    apart = take_apart(check, 0, padded, circuit, 0.15)
    assert apart.verdict == EXCESS and apart.shared == 4 and apart.nodes_a == 6 and apart.jaccard == pytest.approx(4 / 6)
    assert (apart.removable_a, apart.removable_b) == (2, 0)
    assert apart.nodes_a_minimal == apart.nodes_b_minimal == 4 and apart.jaccard_minimal == 1.0
    assert take_apart(check, 0, circuit, circuit.clone(), 0.15).verdict == SAME
