"""`make gpu-check` (`python -m bench.gpu`): what a machine with a CUDA GPU does with this project, in
under 8 minutes. The bench's step measurements on the GPU (dense / sparse, fp32 / bf16, MFU against the
GPU's measured peaks) at the quick grid's widths and the paper's, then a 2-point smoke of the paper grid
on the GPU (bf16, the two jobs sharing the device). Writes bench/gpu/results.json and results.md."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from bench.__main__ import DENSITY
from bench.report import fmt, markdown_table
from bench.jobs import job_config
from bench.steps import matmul_peak, precision_times, step_times
from sweep import names
from sweep.science.data import load_corpus
from sweep.errors import EXIT_BAD_INPUT
from sweep.paths import PROJECT_ROOT
from sweep.tracking import git_commit

QUICK_D_MODELS = (32, 64, 128, 256)
PAPER_D_MODELS = (256, 512, 1024)  # the paper grid's x1 / x2 / x4
# The paper grid at its real shapes, on the stdlib corpus (a BPE of site-packages takes minutes to
# build), short: two points (a dense baseline and the x1 ladder point) sharing the GPU.
SMOKE = ["experiment=paper", "data.source=stdlib", "model.width_mult=1", "sparsity.density=1,0.25",
         "hydra.sweeper.extra_grids=[]", "hydra.launcher.n_jobs=2", "train.precision=bf16",
         "train.steps=400", "train.eval_every=200", "prune.steps=200",
         "tasks.names=[single_double_quote,bracket_brace,else_elif,if_ternary]"]


# --tiny: the same script at toy sizes, so that the CPU tests run every line of it (`--device cpu`)
TINY = ["model.base_width=32", "model.n_layer=2", "model.n_ctx=64", "data.vocab_size=512", "train.batch_size=4",
        "train.steps=20", "train.eval_every=10", "train.log_every=5", "train.eval_windows=8",
        "train.final_eval_windows=16", "prune.steps=10", "prune.mean_windows=8", "tasks.n_train=4",
        "tasks.n_heldout=4", "tasks.names=[else_elif]", "train.threads=1"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "gpu")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: only with --tiny, for the tests")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks that every step runs")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: make gpu-check needs a CUDA GPU and this machine has none visible "
              "(torch.cuda.is_available() is False); nothing was run", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    started = time.perf_counter()
    gpu = torch.device(args.device)
    n = 256 if args.tiny else 8192
    results = {"matmul_n": n, "device": torch.cuda.get_device_name(gpu) if gpu.type == "cuda" else "cpu", "torch": torch.__version__,
               "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "matmul_peak_gflops": {"fp32": matmul_peak(1, gpu, n, 0.2) / 1e9,
                                      "bf16": matmul_peak(1, gpu, n, 0.2, dtype=torch.bfloat16) / 1e9}}
    tiny = TINY if args.tiny else []
    for grid, d_models, overrides in (("quick", QUICK_D_MODELS, []), ("paper", PAPER_D_MODELS, SMOKE[:2])):
        cfg = job_config([f"train.device={args.device}", *overrides, *tiny])
        corpus = load_corpus(cfg.data, Path(cfg.data.cache_dir))
        train, val = torch.from_numpy(corpus.train), torch.from_numpy(corpus.val)
        results[grid] = [measure(cfg, train, val, d, gpu, results["matmul_peak_gflops"], args.tiny)
                         for d in (d_models[:1] if args.tiny else d_models)]
    results["smoke"] = paper_smoke([*SMOKE, f"train.device={args.device}", *tiny])
    results["wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(table(results))
    print((args.out / "results.md").read_text())
    sys.exit(0 if results["smoke"]["returncode"] == 0 else 1)


def measure(cfg, train, val, d_model: int, gpu, peaks: dict, tiny: bool) -> dict:
    """Dense / sparse and fp32 / bf16 step times at one width, alternating blocks (ABBA), MFU of each."""
    rounds, block = (1, 1) if tiny else (4, 5)
    steps = step_times(cfg, train, d_model, DENSITY, rounds=rounds, block=block, threads=1, device=gpu)
    steps_bf16 = step_times(cfg, train, d_model, DENSITY, rounds=rounds, block=block, threads=1, device=gpu,
                            precision="bf16")
    precision = precision_times(cfg, train, val, d_model, DENSITY, rounds=rounds, block=block, device=gpu)
    flops = steps["flops_per_step"]
    row = {"d_model": d_model, "n_layer": cfg.model.n_layer, "n_ctx": cfg.model.n_ctx,
           "batch_size": cfg.train.batch_size, "dense_step_s": steps["dense_step_s"],
           "sparse_step_s": steps["sparse_step_s"], "sparse_dense_ratio": steps["ratio"],
           "sparse_dense_ratio_bf16": steps_bf16["ratio"],
           "bf16_step_s": precision["bf16_step_s"], "bf16_speedup": precision["bf16_speedup"],
           "bf16_loss_delta": precision["bf16_loss_delta"],
           "mfu_fp32": flops / steps["sparse_step_s"] / (peaks["fp32"] * 1e9),
           "mfu_bf16": flops / precision["bf16_step_s"] / (peaks["bf16"] * 1e9)}
    print(f"  d_model {d_model:>4} x {cfg.model.n_layer} layers: sparse/dense {row['sparse_dense_ratio']:.2f}, "
          f"bf16 {row['bf16_speedup']:.2f}x, MFU bf16 {row['mfu_bf16']:.1%}", flush=True)
    return row


def paper_smoke(overrides: list[str]) -> dict:
    """The 2-point paper-grid multirun on the GPU into a temporary store: exit status, wall time, and
    per job where it ran, its loss and its training throughput."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        cmd = [sys.executable, "-m", "sweep", "-m", *overrides, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp}/multirun"]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        print(done.stdout[-3000:], done.stderr[-3000:] if done.returncode else "", flush=True)
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("frontier")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        jobs = [{"density": r.data.params.get("sparsity.density"), "status": r.info.status,
                 "device": r.data.tags.get(names.TAG_DEVICE), "val_loss": r.data.metrics.get(names.CAPABILITY_VAL_LOSS),
                 "tokens_per_s": r.data.metrics.get(names.PERF_TOKENS_PER_S),
                 "train_s": r.data.metrics.get(names.TIME_TRAIN), "prune_s": r.data.metrics.get(names.TIME_PRUNE),
                 "tasks_solved_frac": r.data.metrics.get(names.TASKS_SOLVED_FRAC)}
                for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    return {"command": " ".join(overrides), "returncode": done.returncode, "wall_s": wall, "jobs": jobs}


def table(r: dict) -> str:
    peak = r["matmul_peak_gflops"]
    lines = ["# GPU check (`make gpu-check`)", "",
             f"{r['device']}, torch {r['torch']}, {r['date']}, commit {str(r['git_commit'])[:10]}; matmul peaks "
             f"(torch.mm {r['matmul_n']}^2) fp32 {peak['fp32'] / 1e3:.1f}, bf16 {peak['bf16'] / 1e3:.1f} TFLOP/s; sparse = "
             f"density {DENSITY}; took {r['wall_s']:.0f} s.", ""]
    lines += markdown_table(
        ["grid", "d_model", "layers x n_ctx x batch", "dense step (ms)", "sparse step (ms)", "sparse / dense",
         "bf16 step (ms)", "bf16 speed-up", "sparse / dense bf16", "loss bf16 - fp32", "MFU fp32", "MFU bf16"],
        [[grid, x["d_model"], f"{x['n_layer']} x {x['n_ctx']} x {x['batch_size']}", f"{1e3 * x['dense_step_s']:.2f}",
          f"{1e3 * x['sparse_step_s']:.2f}", f"{x['sparse_dense_ratio']:.3f}", f"{1e3 * x['bf16_step_s']:.2f}",
          f"{x['bf16_speedup']:.2f}x", f"{x['sparse_dense_ratio_bf16']:.3f}", f"{x['bf16_loss_delta']:+.3f}",
          f"{x['mfu_fp32']:.1%}", f"{x['mfu_bf16']:.1%}"] for grid in ("quick", "paper") for x in r[grid]])
    s = r["smoke"]
    lines += ["", f"Paper-grid smoke (`{s['command']}`): exit {s['returncode']}, {s['wall_s']:.0f} s", ""]
    lines += markdown_table(
        ["density", "status", "device", "val loss", "tokens/s", "train (s)", "prune (s)", "tasks solved"],
        [[j["density"], j["status"], j["device"], fmt(j["val_loss"], ".3f"), fmt(j["tokens_per_s"], ",.0f"),
          fmt(j["train_s"], ".0f"), fmt(j["prune_s"], ".0f"), fmt(j["tasks_solved_frac"], ".2f")] for j in s["jobs"]])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
