"""`python -m bench.circuit_bench` (`make circuits-bench`): the ground-truth benchmark of circuit discovery.
Every registered method (`prune.method`) runs on every construction of bench/planted.py under both
ablations and several draws of the distractors, through the product's own discovery and discretisation
(sweep.circuits.discovery.find_circuits); each construction's minimal circuits are proven first
(bench.planted.prove). Scored against the nearest minimal circuit (the most nodes in common, then the
smallest): precision, recall, size / minimal size, edges against the count by hand, necessity loss
(the held-out loss of the whole model without the circuit found), seconds; and the ranking alone, the
bisection's prefix before the minimality pass (its size, precision and recall). Every set that
reaches the target holds a minimal circuit whole (what `prove` shows) and the pass leaves no node that
can go, so wherever losses rise as nodes go the final circuit is a minimal one whatever the ranking:
the final circuits test the discretisation, the prefixes tell the rankings apart.

Writes results.csv (a row per construction, ablation and method), results.json (every draw, nodes
included), results.md (the table the README shows) and recovery.png into --out (bench/circuit-bench/).
Bad input (an unknown construction or method, an invalid `prune.` override) is one line, exit 2."""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from bench.jobs import job_config
from bench.planted import ABLATIONS, CONSTRUCTIONS, TARGET, Planted, prove, prove_spurious
from sweep.circuits import discretise
from sweep.circuits.circuit import circuit_edges
from sweep.circuits.discovery import METHODS, find_circuits
from sweep.circuits.prune import Evaluator, node_means, node_names
from sweep.errors import EXIT_BAD_INPUT, ConfigError
from sweep.orchestration.validate import validate
from sweep.paths import PROJECT_ROOT
from sweep.tracking import git_commit

OUT = PROJECT_ROOT / "bench" / "circuit-bench"
N_TRAIN, N_HELDOUT = 16, 32  # pairs a method fits on, pairs the circuits are judged on
MEAN_WINDOWS = 64  # 'pretraining text' windows for the node means
COLUMNS = ("construction", "ablation", "method", "draws", "exact", "precision", "recall", "nodes", "minimal_nodes",
           "size_ratio", "edges", "hand_edges", "necessity_loss", "full_loss", "prefix_nodes", "prefix_precision",
           "prefix_recall", "seconds", "outcome")


def score(found: set[str], minimal: list[list[str]]) -> dict:
    """One draw's result against the nearest minimal circuit. With nothing to find, the right answer is no
    circuit: precision 1 and recall 1 for none, precision 0 for any node found (each is a false positive)."""
    if not minimal:
        return {"exact": not found, "precision": 0.0 if found else 1.0, "recall": 1.0, "nearest": [],
                "outcome": f"a circuit of {len(found)} nodes where there is none" if found else "no circuit (right)"}
    nearest = max(minimal, key=lambda c: (len(found & set(c)), -len(c)))
    hit, size = len(found & set(nearest)), len(nearest)
    missing, extra = size - hit, len(found) - hit
    holds = sum(set(c) <= found for c in minimal)
    beyond = len(found - set().union(*map(set, minimal)))  # nodes of no minimal circuit
    if not found:
        outcome = "no circuit found"
    elif not missing and not extra:
        outcome = "exact"
    elif holds > 1:
        outcome = f"the union of {holds} minimal circuits" + (f" (+{beyond} more)" if beyond else "")
    else:
        outcome = ", ".join(part for part in (f"{missing} missing" if missing else "", f"+{extra} extra" if extra else "")
                            if part)
    return {"exact": outcome == "exact", "precision": hit / len(found) if found else 0.0, "recall": hit / size,
            "nearest": nearest, "outcome": outcome}


def run_draw(planted: Planted, ablation: str, prune: DictConfig) -> dict:
    """One method on one construction, ablation and draw: the circuit it finds, scored."""
    means = node_means(planted.model, planted.text(), MEAN_WINDOWS) if ablation == "mean" else None
    train, heldout = planted.batch(N_TRAIN, "train"), planted.batch(N_HELDOUT, "heldout")
    evaluator = Evaluator(planted.model, [heldout], means)
    prove(planted, evaluator, ablation)
    if planted.spurious:
        prove_spurious(planted, Evaluator(planted.model, [train], means), ablation)
    start = time.perf_counter()
    (circuit,), found_by = find_circuits(planted.model, [train], [heldout], means, prune)
    seconds = time.perf_counter() - start
    found = node_names(found_by.sites, circuit.keep) if circuit.solved else []
    keep = circuit.keep if circuit.solved else torch.zeros(evaluator.n_nodes, dtype=torch.bool)
    full, necessity = evaluator.losses([(0, torch.ones_like(keep)), (0, ~keep)])
    minimal = planted.minimal[ablation]
    scored = score(set(found), minimal)
    nearest = scored["nearest"]
    prefix = set(node_names(found_by.sites, discretise.prefix(circuit.ranking, int(circuit.nodes_before_pass),
                                                               found_by.n_nodes))) if circuit.solved else set()
    ranked = score(prefix, minimal)
    return {**scored, "nodes": len(found), "found": found, "minimal_nodes": len(nearest),
            "prefix_nodes": len(prefix), "prefix_precision": ranked["precision"], "prefix_recall": ranked["recall"],
            "edges": len(circuit_edges(planted.model, found, planted.inputs(), planted.outputs())) if found else 0,
            "hand_edges": planted.hand_edges[ablation][minimal.index(nearest)] if nearest else 0,
            "necessity_loss": necessity, "full_loss": full, "seconds": seconds}


def summarise(construction: str, ablation: str, method: str, draws: list[dict]) -> dict:
    """A row of results.csv: the draws' means (nodes and edges as medians), exact as 'k/n', outcomes counted."""
    mean = lambda key: statistics.fmean(d[key] for d in draws)  # noqa: E731
    median = lambda key: statistics.median(d[key] for d in draws)  # noqa: E731
    minimal = median("minimal_nodes")
    outcomes = Counter(d["outcome"] for d in draws)
    return {"construction": construction, "ablation": ablation, "method": method, "draws": len(draws),
            "exact": f"{sum(d['exact'] for d in draws)}/{len(draws)}", "precision": mean("precision"),
            "recall": mean("recall"), "nodes": median("nodes"), "minimal_nodes": minimal,
            "size_ratio": median("nodes") / minimal if minimal else math.nan, "edges": median("edges"),
            "hand_edges": median("hand_edges"), "necessity_loss": mean("necessity_loss"), "full_loss": mean("full_loss"),
            "prefix_nodes": median("prefix_nodes"), "prefix_precision": mean("prefix_precision"),
            "prefix_recall": mean("prefix_recall"), "seconds": mean("seconds"),
            "outcome": "; ".join(f"{o} {n}/{len(draws)}" if len(outcomes) > 1 else o for o, n in outcomes.most_common())}


def markdown(rows: list[dict]) -> str:
    """The README's table: a row per construction and method, the two ablations side by side."""
    by_key = {(r["construction"], r["method"], r["ablation"]): r for r in rows}
    ablations = [a for a in ABLATIONS if any(r["ablation"] == a for r in rows)]
    head = ["construction", "method"] + [f"{a}: {what}" for a in ablations
                                         for what in ("exact", "P / R", "nodes (minimal)", "edges (by hand)",
                                                      "ranking's prefix: nodes, P", "outcome")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for construction, method in dict.fromkeys((r["construction"], r["method"]) for r in rows):
        cells = [construction, method]
        for a in ablations:
            r = by_key.get((construction, method, a))
            if r is None:
                cells += ["-"] * 6
                continue
            cells += [r["exact"], f"{r['precision']:.2f} / {r['recall']:.2f}", f"{r['nodes']:g} ({r['minimal_nodes']:g})",
                      f"{r['edges']:g} ({r['hand_edges']:g})", f"{r['prefix_nodes']:g}, {r['prefix_precision']:.2f}",
                      r["outcome"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw(rows: list[dict], path: Path) -> None:
    """recovery.png, constructions down and (method, ablation) across, two panels: the final circuits
    (colour: the share of exact draws; text: precision / recall) and the rankings alone (colour and text:
    the precision of the bisection's prefix before the minimality pass)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    constructions = list(dict.fromkeys(r["construction"] for r in rows))
    columns = list(dict.fromkeys((r["method"], r["ablation"]) for r in rows))
    panels = (("final circuit: share of exact draws (colour), precision / recall",
               lambda r: _exact_share(r), lambda r: f"{r['precision']:.2f}/{r['recall']:.2f}"),
              ("the ranking alone: precision of its prefix before the minimality pass",
               lambda r: r["prefix_precision"], lambda r: f"{r['prefix_precision']:.2f}\n({r['prefix_nodes']:g})"))
    fig, axes = plt.subplots(1, 2, figsize=(2 * (0.9 * len(columns) + 1.2) + 1.5, 0.42 * len(constructions) + 1.8),
                             sharey=True)
    for ax, (title, value, text) in zip(axes, panels):
        grid = torch.full((len(constructions), len(columns)), float("nan"))
        for r in rows:
            i, j = constructions.index(r["construction"]), columns.index((r["method"], r["ablation"]))
            grid[i, j] = value(r)
            ax.text(j, i, text(r), ha="center", va="center", fontsize=6,
                    color="white" if abs(value(r) - 0.5) > 0.3 else "black")
        image = ax.imshow(grid.numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(columns)), [f"{m}\n{a}" for m, a in columns], fontsize=7)
        ax.set_yticks(range(len(constructions)), constructions, fontsize=8)
        ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=axes, fraction=0.02)
    fig.suptitle("Circuit discovery against circuits planted by hand (prefix nodes in brackets)", fontsize=9)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def _exact_share(row: dict) -> float:
    k, n = map(int, row["exact"].split("/"))
    return k / n


def write(rows: list[dict], draws: list[dict], settings: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    (out / "results.json").write_text(json.dumps({"settings": settings, "rows": rows, "draws": draws}, indent=1))
    (out / "results.md").write_text(markdown(rows))
    draw(rows, out / "recovery.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.circuit_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--constructions", default=",".join(CONSTRUCTIONS),
                        help=f"comma-separated, from: {', '.join(CONSTRUCTIONS)} (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help=f"comma-separated, from: {', '.join(ABLATIONS)}")
    parser.add_argument("--draws", type=int, default=3, help="draws of the distractors (seeds 0, 1, ...) per cell")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the results (default: bench/circuit-bench/)")
    parser.add_argument("overrides", nargs="*", help="prune settings as in a sweep, e.g. prune.steps=50")
    return parser.parse_args(argv)


def chosen(value: str, allowed, setting: str) -> list[str]:
    names = [v for v in value.split(",") if v]
    unknown = [v for v in names if v not in allowed]
    if unknown or not names:
        raise ConfigError(setting, value, f"allowed: {', '.join(allowed)} (comma-separated)")
    return names


def prune_config(overrides: list[str]) -> DictConfig:
    """The prune settings of a job composed with the overrides, validated as a sweep validates them; the
    target is the constructions' own."""
    outside = [o for o in overrides if not o.lstrip("+~").startswith("prune.")]
    if outside:
        raise ConfigError("overrides", " ".join(outside), "allowed: prune.<key>=<value> settings only")
    cfg = job_config(overrides)
    validate(cfg)
    cfg.prune.target_loss = TARGET
    return cfg.prune


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        constructions = chosen(args.constructions, CONSTRUCTIONS, "--constructions")
        methods = chosen(args.methods, METHODS, "--methods")
        ablations = chosen(args.ablations, ABLATIONS, "--ablations")
        if args.draws < 1:
            raise ConfigError("--draws", args.draws, "must be an integer >= 1")
        prune = prune_config(args.overrides)
    except Exception as e:  # noqa: BLE001 - bad input of any kind: one line, exit 2
        print(f"circuits-bench: {e}" if isinstance(e, ConfigError) else f"circuits-bench: invalid config: {e}",
              file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    torch.set_num_threads(1)  # the models are tiny (d_model 32)
    cells = [(c, a, m) for c in constructions for a in ablations for m in methods]
    rows, draws = [], []
    with tqdm(total=len(cells) * args.draws, unit="draw", desc="circuits-bench") as bar:
        for construction, ablation, method in cells:
            bar.set_postfix_str(f"{construction} {ablation} {method}")
            cell = []
            for seed in range(args.draws):
                prune.method = method
                result = run_draw(CONSTRUCTIONS[construction](seed), ablation, prune)
                cell.append(result)
                draws.append({"construction": construction, "ablation": ablation, "method": method, "seed": seed,
                              **result})
                bar.update()
            rows.append(summarise(construction, ablation, method, cell))
    settings = {"draws": args.draws, "target_loss": TARGET, "n_train_pairs": N_TRAIN, "n_heldout_pairs": N_HELDOUT,
                "overrides": args.overrides, "torch": torch.__version__, "commit": git_commit(),
                "machine": platform.processor() or platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    write(rows, draws, settings, args.out)
    print(markdown(rows))
    print(f"written: {', '.join(str(args.out / n) for n in ('results.csv', 'results.json', 'results.md', 'recovery.png'))}")


if __name__ == "__main__":
    main()
