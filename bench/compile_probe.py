"""A job process's compile time, measured in a fresh process as a sweep's worker meets it:
`python -m bench.compile_probe D_MODEL DENSITY [OVERRIDES...]` prints JSON {first_step_s, step_s}: the
first training step under torch.compile (tracing, and kernels from $TORCHINDUCTOR_CACHE_DIR or compiled
into it) and the median of the next steps."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from bench.jobs import job_config
from bench.steps import make_trainer, timed_block
from sweep.science.data import load_corpus

NEXT_STEPS = 5


def main() -> None:
    d_model, density, overrides = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    cfg = job_config(overrides)
    torch.set_num_threads(cfg.train.threads)
    tokens = torch.from_numpy(load_corpus(cfg.data, Path(cfg.data.cache_dir)).train)
    device = torch.device("cpu")
    trainer = make_trainer(cfg, d_model, density, 1 + NEXT_STEPS, device)
    trainer.forward = torch.compile(trainer.model)
    generator = torch.Generator().manual_seed(cfg.seed)
    first = timed_block(trainer, 1, tokens, generator, cfg, device)
    step = statistics.median(timed_block(trainer, 1, tokens, generator, cfg, device) for _ in range(NEXT_STEPS))
    print(json.dumps({"first_step_s": first, "step_s": step}))


if __name__ == "__main__":
    main()
