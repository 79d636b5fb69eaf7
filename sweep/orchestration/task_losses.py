"""`python -m sweep.orchestration.task_losses [--experiment NAME] [--tracking-uri URI] [--tasks a,b]`: the task table.

Full-model held-out loss of every task on every finished training checkpoint of an experiment, as
markdown: a summary (per checkpoint, the tasks below 0.3 and 0.15, and how many of them need
evidence at least two tokens back), then the table (rows: tasks with their cue distances; columns:
width / density / seed and any other setting that differs): the measurement that calibrates the
quick suite (README). Reads the checkpoints MLflow stores; trains nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from sweep import points, tracking
from sweep.science import checkpoint
from sweep.circuits import tasks
from sweep.science.data import run_tokenizer
from sweep.errors import EXIT_BAD_INPUT, ConfigError
from sweep.paths import DEFAULT_TRACKING_URI


def checkpoints(client, experiment: str):
    """(column label, model, config, tokenizer) of every finished training run, by width, density, seed."""
    runs = tracking.finished_training_runs(client, tracking.experiment_id_of(client, experiment, "--experiment"))
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            _, cfg, stored = tracking.load_training_run(client, run.info.run_id, Path(tmp))
            tokenizer = run_tokenizer(cfg.data)
            model, _ = checkpoint.load(stored, run.info.run_id, cfg, tokenizer.hash)
            models.append((cfg, model.eval(), tokenizer))
    models.sort(key=lambda m: (m[0].model.width_mult, -m[0].sparsity.density, points.run_seed(m[0])))
    differing = _differing_settings([c for c, _, _ in models])
    return [(points.label(c.model.width_mult, c.sparsity.density, points.run_seed(c)) + extra, m, c, t)
            for (c, m, t), extra in zip(models, differing)]


def _differing_settings(configs: list) -> list[str]:
    """Per config, ` key=value` for each setting other than width, density and seed whose values differ
    between the checkpoints, so that columns of the same point stay apart."""
    flat = [{k: v for k, v in points.flatten(c).items()
             if not points.is_where_key(k) and not k.startswith(("prune.", "tasks.")) and k not in points.AXIS_KEYS}
            for c in configs]
    keys = sorted({k for f in flat for k, v in f.items() if any(g.get(k) != v for g in flat)})
    return ["".join(f" {k.rsplit('.', 1)[-1]}={f.get(k)}" for k in keys) for f in flat]


@torch.no_grad()
def measure(columns, task_names: list[str], n_heldout: int = 64, seed: int = 0):
    """Per task: its cue distances under each tokenizer of the checkpoints ({tokenizer hash: distances
    of its pairs, in tokens}) and the held-out loss of each checkpoint ({column label: loss})."""
    tokenizers = {t.hash: (t, cfg) for _, _, cfg, t in columns}
    cues, losses = {}, {}
    for name in task_names:
        cues[name] = {h: tasks.pair_cue_distances(tasks.generate(name, 0, n_heldout, seed, cfg.model.n_ctx,
                                                                 cfg.tasks.preamble), tokenizer)
                      for h, (tokenizer, cfg) in tokenizers.items()}
        losses[name] = {}
        for label, model, cfg, tokenizer in columns:
            held_out = tasks.generate(name, 0, n_heldout, seed, cfg.model.n_ctx, cfg.tasks.preamble).heldout
            losses[name][label] = tasks.task_loss(model, tasks.encode(held_out, tokenizer, cfg.model.n_ctx)).item()
    return cues, losses


def table(columns, cues: dict, losses: dict) -> str:
    """Markdown: one row per task, its cue distance under each tokenizer of the checkpoints (median,
    range, in tokens; 0: the last token decides, no attention needed), then one column per
    checkpoint: held-out task loss (chance ln 2)."""
    tokenizers = {t.hash: t for _, _, _, t in columns}
    headers = [f"cue distance ({t.name}{'' if t.name == 'bytes' else f' {t.vocab_size}'})" for t in tokenizers.values()]
    lines = ["| task | " + " | ".join(headers + [column[0] for column in columns]) + " |",
             "|---" * (len(columns) + len(headers) + 1) + "|"]
    for name in losses:
        cells = [f"{statistics.median(d):g} ({min(d)}-{max(d)})" + (" last token" if max(d) == 0 else "")
                 for d in (cues[name][h] for h in tokenizers)]
        cells += [f"{losses[name][label]:.3f}" for label, *_ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(columns, cues: dict, losses: dict, targets=(0.3, 0.15), far: int = 2) -> str:
    """Markdown: per checkpoint, how many tasks it brings below each target, and how many of those
    below the first target have their evidence at least `far` tokens back (median cue distance in the
    checkpoint's own tokens): the tasks that need attention."""
    lines = [f"| checkpoint | {' | '.join(f'tasks < {t:g}' for t in targets)} | of them cue >= {far} tokens "
             f"(< {targets[0]:g}) | which (< {targets[0]:g}) |", "|---" * (len(targets) + 3) + "|"]
    for label, _, _, tokenizer in columns:
        below = [[name for name in losses if losses[name][label] < t] for t in targets]
        far_ones = [name for name in below[0] if statistics.median(cues[name][tokenizer.hash]) >= far]
        which = ", ".join(f"{name} ({losses[name][label]:.2f})" for name in below[0])
        lines.append(f"| {label} | {' | '.join(str(len(b)) for b in below)} | {len(far_ones)} | {which} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--experiment", default="frontier")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: the twenty and the control)")
    args = parser.parse_args(argv)
    task_names = args.tasks.split(",") if args.tasks else [*tasks.PAPER_TASKS, tasks.CONTROL]
    try:
        for name in task_names:
            tasks.check_task(name, n_ctx=10**6)
        columns = checkpoints(tracking.open_store(args.tracking_uri), args.experiment)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if not columns:
        print(f"error: experiment '{args.experiment}' has no finished training run with a checkpoint", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    cues, losses = measure(columns, task_names)
    print(summary(columns, cues, losses), table(columns, cues, losses), sep="\n\n")


if __name__ == "__main__":
    main()
