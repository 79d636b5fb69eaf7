"""`python -m bench` (`make bench`): where a job's time goes, as ratios measured in one run.
Writes bench/results.json and bench/results.md; `--smoke` is a seconds-long check of the machinery."""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench.jobs import job_config, run_child
from bench.projection import projection_times
from bench.report import TARGETS, derive, write
from bench.steps import compile_times, matmul_peak, precision_times, step_times
from sweep.science.data import load_corpus
from sweep.paths import PROJECT_ROOT
from sweep.tracking import ensure_experiment, git_commit

QUICK_WIDTHS = (1, 2, 4)  # step timings at width_mult x base 32: d_model 32 / 64 / 128 (and EXTRA_D_MODEL)
JOB_WIDTHS = (1, 2, 3)  # the quick grid's widths: one real job each (prune / train)
EXTRA_D_MODEL = 256
DENSITY = 0.06  # the sparse point: in the quick grid and feasible (min_per_neuron = 1) at every width


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, help="folder for results.json / .md (default: bench/; with --smoke a temporary one)")
    parser.add_argument("--job-steps", type=int, default=300,
                        help="training steps of each width's job (a real job trains train.steps; times are scaled)")
    parser.add_argument("--step-seconds", type=float, default=24.0,
                        help="about how long to time sparse and dense steps (together) per width")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: checks that everything runs")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="measure torch.compile (tens of seconds of compiling per width); default: on, off with --smoke")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.smoke:
        args.job_steps = 20
    started = time.perf_counter()
    base = ["train.device=cpu", "train.threads=1"]
    smoke = ["train.batch_size=4", "train.eval_windows=8", "train.final_eval_windows=16",
             "tasks.n_train=4", "tasks.n_heldout=4", "prune.steps=10", "prune.mean_windows=8"] if args.smoke else []
    cfg = job_config(base + smoke)
    args.overrides = base + smoke
    corpus = load_corpus(cfg.data, Path(cfg.data.cache_dir))  # built once, before the jobs (as a sweep does)
    tokens = torch.from_numpy(corpus.train)
    cpu = torch.device("cpu")
    widths = [cfg.model.base_width * w for w in QUICK_WIDTHS] + [EXTRA_D_MODEL]
    results: dict = {"settings": settings(cfg, args)}

    matmul_n = 256 if args.smoke else 2048
    peaks = {t: matmul_peak(t, cpu, matmul_n, 0.1 if args.smoke else 2.0) for t in (1, 2)}
    results["settings"]["matmul_n"] = matmul_n
    results["matmul_peak_gflops"] = {str(t): p / 1e9 for t, p in peaks.items()}
    results["matmul_peak_gflops_bf16"] = {"1": matmul_peak(1, cpu, matmul_n, 0.1 if args.smoke else 2.0,
                                                           torch.bfloat16) / 1e9}
    results["steps"] = [timed_width(cfg, tokens, d, 1, cpu, args) for d in widths]
    results["steps_2_threads"] = [timed_width(cfg, tokens, EXTRA_D_MODEL, 2, cpu, args)]
    torch.set_num_threads(1)
    results["precision"] = [timed_precision(cfg, tokens, torch.from_numpy(corpus.val), d, cpu, args) for d in widths]
    results["projection"] = [timed_projection(cfg, tokens, d, cpu, args) for d in widths]
    torch.set_num_threads(1)
    if args.compile is None:
        args.compile = not args.smoke
    if args.compile:
        with tempfile.TemporaryDirectory(prefix="bench-inductor-") as cache:
            results["compile"] = [timed_compile(cfg, tokens, d, cpu, args, cache) for d in (widths[:1] if args.smoke else widths)]

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        ensure_experiment(job_config([f"tracking.uri={uri}", "tracking.experiment=bench"]).tracking)
        job_overrides = base + smoke + [f"tracking.uri={uri}", "tracking.experiment=bench",
                                        f"sparsity.density={DENSITY}", f"train.steps={args.job_steps}"]
        results["jobs"] = [timed_job(job_overrides, cfg.model.base_width, w, Path(tmp)) for w in JOB_WIDTHS]

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        results["gpu"] = {"device": torch.cuda.get_device_name(gpu),
                          "matmul_peak_gflops": matmul_peak(1, gpu, n=8192) / 1e9,
                          "steps": [timed_width(cfg, tokens, d, 1, gpu, args) for d in widths]}
    results["bench_wall_s"] = time.perf_counter() - started
    derived = derive(results, real_steps=cfg.train.steps)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else PROJECT_ROOT / "bench")
    write(out, derived)
    print(f"bench: {derived['bench_wall_s']:.0f} s; wrote {out / 'results.json'} and {out / 'results.md'}")
    print((out / "results.md").read_text())


def timed_width(cfg, tokens, d_model: int, threads: int, device, args) -> dict:
    """Interleaved dense / sparse step times at one width: blocks of 5 steps, as many ABBA rounds
    as fit in about `step_seconds`."""
    probe = step_times(cfg, tokens, d_model, DENSITY, rounds=1, block=1 if args.smoke else 2, threads=threads, device=device)
    budget = 0.2 if args.smoke else args.step_seconds
    per_round = 2 * 5 * (probe["dense_step_s"] + probe["sparse_step_s"])  # one round: a block of each, twice
    rounds = 2 * max(1, min(10, round(budget / per_round / 2)))  # even: ABBA balances
    measured = step_times(cfg, tokens, d_model, DENSITY, rounds=rounds, block=5, threads=threads, device=device)
    print(f"  d_model {d_model:>4} threads {threads}: dense {1e3 * measured['dense_step_s']:.1f} ms, "
          f"sparse {1e3 * measured['sparse_step_s']:.1f} ms, ratio {measured['ratio']:.3f} "
          f"({measured['steps_each']} steps each)", flush=True)
    return measured


def timed_precision(cfg, tokens, val, d_model: int, device, args) -> dict:
    """Sparse steps in fp32 and under bf16 autocast, alternating blocks, as many ABBA rounds of blocks of 3
    as fit in about `step_seconds` (at least one); the loss of both after them."""
    probe = precision_times(cfg, tokens, val, d_model, DENSITY, rounds=1, block=1, device=device)
    per_round = 2 * 3 * (probe["fp32_step_s"] + probe["bf16_step_s"])
    rounds = 1 if args.smoke else 2 * max(1, min(5, round(args.step_seconds / per_round / 2)))
    measured = precision_times(cfg, tokens, val, d_model, DENSITY, rounds=rounds, block=1 if args.smoke else 3,
                               device=device)
    print(f"  d_model {d_model:>4} precision: fp32 {1e3 * measured['fp32_step_s']:.1f} ms, bf16 "
          f"{1e3 * measured['bf16_step_s']:.1f} ms ({measured['bf16_speedup']:.2f}x), loss bf16 - fp32 "
          f"{measured['bf16_loss_delta']:+.3f} after {measured['steps_each']} steps", flush=True)
    return measured


def timed_compile(cfg, tokens, d_model: int, device, args, cache_dir) -> dict:
    """Compile cold and warm, then sparse steps eager and compiled in alternating blocks of 3, two ABBA rounds."""
    rounds, block = (1, 1) if args.smoke else (4, 3)
    measured = compile_times(cfg, args.overrides, tokens, d_model, DENSITY, rounds, block, device, cache_dir)
    print(f"  d_model {d_model:>4} compile: eager {1e3 * measured['eager_step_s']:.1f} ms, compiled "
          f"{1e3 * measured['compiled_step_s']:.1f} ms ({measured['compile_speedup']:.2f}x), compile "
          f"{measured['compile_s_cold']:.1f} s cold, {measured['compile_s_warm']:.1f} s warm", flush=True)
    return measured


def timed_projection(cfg, tokens, d_model: int, device, args) -> dict:
    """The top-k projection before (plain topk) and after its speed-up, alternating inside sparse steps."""
    measured = projection_times(cfg, tokens, d_model, DENSITY, 4 if args.smoke else 40, device)
    print(f"  d_model {d_model:>4} projection: plain {1e3 * measured['plain_s']:.2f} ms, now "
          f"{1e3 * measured['fast_s']:.2f} ms ({measured['speedup']:.1f}x)", flush=True)
    return measured


def timed_job(overrides: list[str], base_width: int, width_mult: int, tmp: Path) -> dict:
    job = {"d_model": base_width * width_mult, **run_child(overrides + [f"model.width_mult={width_mult}"], tmp, str(width_mult))}
    print(f"  job d_model {job['d_model']:>4}: {job['wall_s']:.1f} s (train {job['train_s']:.1f}, prune "
          f"{job['prune_s']:.1f}, logging {job['logging_s']:.2f}), peak RSS {job['peak_rss_mb']:.0f} MB", flush=True)
    return job


def settings(cfg, args) -> dict:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git_commit": git_commit(),
            "torch": torch.__version__, "cpu": cpu_model, "cores": len(os.sched_getaffinity(0)),
            "sparse_density": DENSITY, "job_steps": args.job_steps, "real_job_steps": cfg.train.steps,
            "batch_size": cfg.train.batch_size, "n_ctx": cfg.model.n_ctx, "n_layer": cfg.model.n_layer,
            "threads": 1, "smoke": args.smoke, "targets": TARGETS}


if __name__ == "__main__":
    main()
