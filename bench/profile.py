"""`python -m bench.profile [d_model ...]`: torch.profiler tables of sparse training steps (the
projection included) at the bench's settings, to see what dominates a step."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.__main__ import DENSITY
from bench.jobs import job_config
from bench.steps import make_trainer
from sweep.data import load_corpus


def main(widths: list[int], steps: int = 10) -> None:
    cfg = job_config(["train.device=cpu", "train.threads=1"])
    tokens = torch.from_numpy(load_corpus(cfg.data, Path(cfg.data.cache_dir)).train)
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    for d_model in widths:
        trainer = make_trainer(cfg, d_model, DENSITY, 2 * steps, cpu)
        generator = torch.Generator().manual_seed(0)
        trainer.step(tokens, generator, cfg, cpu)
        trainer.done = steps  # the second half of the schedule: annealing, then at the target density
        project = trainer.sparsifier.project

        def timed_project(progress: float) -> None:
            with record_function("WeightSparsifier.project"):
                project(progress)

        trainer.sparsifier.project = timed_project
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with record_function("train_step"):
                    trainer.step(tokens, generator, cfg, cpu)
        print(f"\n== d_model {d_model}: {steps} sparse steps (density {DENSITY}), 1 thread ==")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=40))


if __name__ == "__main__":
    main([int(w) for w in sys.argv[1:]] or [32, 64, 128, 256])
