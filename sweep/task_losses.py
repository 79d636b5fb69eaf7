"""`python -m sweep.task_losses [--experiment NAME] [--tracking-uri URI] [--tasks a,b]`: the task table.

Full-model held-out loss of every task on every finished training checkpoint of an experiment, as a
markdown table (rows: tasks; columns: width / density / seed): the measurement that calibrates the
quick suite (README). Reads the checkpoints MLflow stores; trains nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from sweep import names, tasks
from sweep.errors import EXIT_BAD_INPUT, ConfigError
from sweep.data import run_tokenizer
from sweep.job import build_model
from sweep.reprune import DEFAULT_URI, load_training_run, open_store


def checkpoints(client, experiment: str):
    """(column label, model, config, tokenizer) of every finished training run, by width, density, seed."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError("--experiment", experiment, f"no such experiment in {client.tracking_uri}")
    runs = [r for r in client.search_runs([found.experiment_id], f"tags.`{names.TAG_KIND}` = '{names.KIND_JOB}' and "
                                          f"tags.`{names.TAG_STATUS}` = '{names.STATUS_FINISHED}'", max_results=50000)
            if r.data.tags.get(names.TAG_STAGE) != "prune"]
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            _, cfg, checkpoint = load_training_run(client, run.info.run_id, Path(tmp))
            model = build_model(cfg)
            model.load_state_dict(torch.load(checkpoint, weights_only=True))
            models.append((cfg, model.eval(), run_tokenizer(cfg.data)))
    models.sort(key=lambda m: (m[0].model.width_mult, -m[0].sparsity.density, m[0].seed))
    return [(f"w{c.model.width_mult}d{c.sparsity.density:g}s{c.seed}", m, c, t) for c, m, t in models]


@torch.no_grad()
def table(columns, task_names: list[str], n_heldout: int = 64, seed: int = 0) -> str:
    """Markdown: one row per task, its cue distance (median, range, in tokens of the first column's
    tokenizer; 0: the last token decides, no attention needed), then one column per checkpoint:
    held-out task loss (chance ln 2)."""
    lines = ["| task | cue distance | " + " | ".join(column[0] for column in columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for name in task_names:
        _, _, cfg, tokenizer = columns[0]
        distances = tasks.pair_cue_distances(tasks.generate(name, 0, n_heldout, seed, cfg.model.n_ctx, cfg.tasks.preamble),
                                             tokenizer)
        median = statistics.median(distances)
        cells = [f"{median:g} ({min(distances)}-{max(distances)})" + (" last token" if max(distances) == 0 else "")]
        for _, model, cfg, tokenizer in columns:
            held_out = tasks.generate(name, 0, n_heldout, seed, cfg.model.n_ctx, cfg.tasks.preamble).heldout
            batch = tasks.encode(held_out, tokenizer, cfg.model.n_ctx)
            cells.append(f"{tasks.task_loss(model, batch).item():.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--experiment", default="frontier")
    parser.add_argument("--tracking-uri", default=DEFAULT_URI)
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: the twenty and the control)")
    args = parser.parse_args(argv)
    task_names = args.tasks.split(",") if args.tasks else [*tasks.PAPER_TASKS, tasks.CONTROL]
    try:
        for name in task_names:
            tasks.check_task(name, n_ctx=10**6)
        columns = checkpoints(open_store(args.tracking_uri), args.experiment)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if not columns:
        print(f"error: experiment '{args.experiment}' has no finished training run with a checkpoint", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(table(columns, task_names))


if __name__ == "__main__":
    main()
