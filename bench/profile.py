"""`python -m bench.profile [d_model ...]`: torch.profiler of sparse training steps at the bench's
settings (1 thread, density 0.06, at the target density): what a step spends, the projection's
share of it, and the ops that dominate the projection."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.__main__ import DENSITY
from bench.jobs import job_config
from bench.steps import make_trainer
from sweep.science.data import load_corpus


def profile_width(cfg, tokens: torch.Tensor, d_model: int, steps: int) -> None:
    cpu = torch.device("cpu")
    trainer = make_trainer(cfg, d_model, DENSITY, 2 * steps, cpu)
    generator = torch.Generator().manual_seed(0)
    trainer.step(tokens, generator, cfg, cpu)  # warm-up
    trainer.done = steps  # the second half of the schedule: at the target density
    project = trainer.sparsifier.project
    inside: collections.Counter = collections.Counter()

    def labelled(progress: float) -> None:
        with record_function("WeightSparsifier.project"):
            project(progress)

    def profiled(progress: float) -> None:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            project(progress)
        inside.update({e.key: e.self_cpu_time_total for e in prof.key_averages()})

    trainer.sparsifier.project = labelled
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("train_step"):
                trainer.step(tokens, generator, cfg, cpu)
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    step_ms, project_ms = totals["train_step"] / steps / 1e3, totals["WeightSparsifier.project"] / steps / 1e3
    print(f"\n== d_model {d_model}: sparse step {step_ms:.1f} ms, projection {project_ms:.2f} ms "
          f"({project_ms / step_ms:.1%}), {steps} steps at density {DENSITY}, 1 thread ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))

    trainer.sparsifier.project = profiled  # again, the projection alone: its own ops
    for _ in range(steps):
        trainer.step(tokens, generator, cfg, cpu)
    total = sum(inside.values())
    print(f"inside the projection ({total / steps / 1e3:.2f} ms a step under the profiler):")
    for key, us in inside.most_common(8):
        print(f"  {key:32s} {us / steps / 1e3:7.2f} ms  {us / total:6.1%}")


def main(widths: list[int], steps: int = 10) -> None:
    cfg = job_config(["train.device=cpu", "train.threads=1"])
    tokens = torch.from_numpy(load_corpus(cfg.data, Path(cfg.data.cache_dir)).train)
    torch.set_num_threads(1)
    for d_model in widths:
        profile_width(cfg, tokens, d_model, steps)


if __name__ == "__main__":
    main([int(w) for w in sys.argv[1:]] or [32, 64, 128, 256])
