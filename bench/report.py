"""From the measurements to the ratios the issue asks for, bench/results.json and the markdown table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

TARGETS = {"sparse_dense_ratio": "<= 1.10 at every width", "mfu": ">= 0.30 at d_model 256 (CPU)",
           "prune_train_ratio": "<= 1.0 at every width", "logging_share": "<= 0.02",
           "bf16_speedup": ">= 1.5 at d_model 128 and 256", "bf16_loss_delta": "<= 0.02 nats at every width",
           "mfu_bf16": ">= 0.40 of the bf16 peak at d_model 256"}


def fitted_exponent(x: list[float], y: list[float]) -> float:
    """Slope of log y against log x (least squares): y grows as x^slope."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def derive(results: dict, real_steps: int) -> dict:
    """Add the headline ratios, keyed by d_model, to the raw measurements."""
    peak1 = results["matmul_peak_gflops"]["1"] * 1e9
    steps = {str(s["d_model"]): s for s in results["steps"]}
    for s in results["steps"]:
        s["mfu"] = s["flops_per_step"] / s["sparse_step_s"] / peak1
        s["mfu_dense"] = s["flops_per_step"] / s["dense_step_s"] / peak1
    for s in results["steps_2_threads"]:
        peak2 = results["matmul_peak_gflops"]["2"] * 1e9
        s["mfu"] = s["flops_per_step"] / s["sparse_step_s"] / peak2
        s["mfu_dense"] = s["flops_per_step"] / s["dense_step_s"] / peak2
    scale = real_steps / results["settings"]["job_steps"]
    for job in results["jobs"]:
        # a real job trains `real_steps`: its training scales with steps, its pruning and the rest do not
        job["train_s_real"] = job["train_s"] * scale
        job["job_s_real"] = job["wall_s"] + job["train_s"] * (scale - 1)
        job["prune_train_ratio"] = job["prune_s"] / job["train_s_real"]
        job["logging_share"] = job["logging_s"] / job["wall_s"]
        # a process's first job also imports MLflow's SQL store (a sweep worker: once for all its jobs)
        job["logging_share_first_job"] = ((job["logging_s"] + job["mlflow_store_import_s"])
                                          / (job["wall_s"] + job["mlflow_store_import_s"]))
    for p in results.get("projection", []):
        # before the speed-up: the same step with the plain projection's time in place of the fast one's
        step = steps[str(p["d_model"])]
        p["ratio_plain_projection"] = step["ratio"] + (p["plain_s"] - p["fast_s"]) / step["dense_step_s"]
        p["share_of_sparse_step"] = p["fast_s"] / step["sparse_step_s"]
    # MFU under bf16 is over the best matmul rate of either precision: a CPU without native bf16 (AVX2
    # only) runs bf16 torch.mm hundreds of times slower than fp32, and its "peak" would give MFU > 100%
    peak_bf16 = max(results["matmul_peak_gflops_bf16"]["1"], results["matmul_peak_gflops"]["1"]) * 1e9
    projection = {str(p["d_model"]): p for p in results.get("projection", [])}
    for x in results.get("precision", []):
        x["mfu_bf16"] = x["flops_per_step"] / x["bf16_step_s"] / peak_bf16
        x["mfu_fp32"] = x["flops_per_step"] / x["fp32_step_s"] / peak1
        if str(x["d_model"]) in projection:  # the projection runs on fp32 weights either way
            x["projection_share_bf16"] = projection[str(x["d_model"])]["fast_s"] / x["bf16_step_s"]
    precision = {str(x["d_model"]): x for x in results.get("precision", [])}
    for x in results.get("compile", []):
        # per job of train.steps steps: the steps' saving less a warm compile (each job process compiles
        # again; only the first job of a shape finds the kernel cache cold)
        x["job_saving_s"] = real_steps * (x["eager_step_s"] - x["compiled_step_s"]) - x["compile_s_warm"]
    compiled = {str(x["d_model"]): x for x in results.get("compile", [])}
    jobs = results["jobs"]
    results.update({
        "compile_speedup": {k: x["compile_speedup"] for k, x in compiled.items()},
        "compile_s": {k: {"cold": x["compile_s_cold"], "warm": x["compile_s_warm"]} for k, x in compiled.items()},
        "compile_job_saving_s": {k: x["job_saving_s"] for k, x in compiled.items()},
        "bf16_speedup": {k: x["bf16_speedup"] for k, x in precision.items()},
        "bf16_loss_delta": {k: x["bf16_loss_delta"] for k, x in precision.items()},
        "mfu_bf16": {k: x["mfu_bf16"] for k, x in precision.items()},
        "sparse_dense_ratio": {k: s["ratio"] for k, s in steps.items()},
        "mfu": {k: s["mfu"] for k, s in steps.items()},
        "mfu_2_threads": {str(s["d_model"]): s["mfu"] for s in results["steps_2_threads"]},
        "prune_train_ratio": {str(j["d_model"]): j["prune_train_ratio"] for j in jobs},
        "sparse_dense_ratio_plain_projection": {str(p["d_model"]): p["ratio_plain_projection"]
                                                for p in results.get("projection", [])},
        "peak_rss_mb": {str(j["d_model"]): j["peak_rss_mb"] for j in jobs},
        "logging_share": max(j["logging_share"] for j in jobs),
        "logging_share_first_job": max(j["logging_share_first_job"] for j in jobs),
        "cost_exponent": fitted_exponent([j["total_params"] for j in jobs], [j["job_s_real"] for j in jobs]),
        "step_cost_exponent": fitted_exponent([s["total_params"] for s in results["steps"]],
                                              [s["sparse_step_s"] for s in results["steps"]]),
    })
    if "gpu" in results:
        gpu = results["gpu"]
        peak = gpu["matmul_peak_gflops"] * 1e9
        gpu["sparse_dense_ratio"] = {str(s["d_model"]): s["ratio"] for s in gpu["steps"]}
        gpu["mfu"] = {str(s["d_model"]): s["flops_per_step"] / s["sparse_step_s"] / peak for s in gpu["steps"]}
    results["met"] = {
        "sparse_dense_ratio": all(r <= 1.10 for r in results["sparse_dense_ratio"].values()),
        "mfu": results["mfu"]["256"] >= 0.30,
        "prune_train_ratio": all(r <= 1.0 for r in results["prune_train_ratio"].values()),
        "logging_share": results["logging_share"] <= 0.02,
        "bf16_speedup": all(results["bf16_speedup"].get(k, 0) >= 1.5 for k in ("128", "256")),
        "bf16_loss_delta": all(abs(d) <= 0.02 for d in results["bf16_loss_delta"].values()),
        "mfu_bf16": results["mfu_bf16"].get("256", 0) >= 0.40,
    }
    return results


def markdown_table(columns: list[str], rows: list[list]) -> list[str]:
    """The lines of a markdown table."""
    return [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}",
            *(f"| {' | '.join(str(cell) for cell in row)} |" for row in rows)]


def fmt(value, spec: str, missing: str = "") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(r: dict) -> str:
    """The markdown table: one row per width, then the single numbers."""
    s, jobs = r["settings"], {str(j["d_model"]): j for j in r["jobs"]}
    two = {str(x["d_model"]): x for x in r["steps_2_threads"]}
    lines = [
        "| d_model | params | dense step (ms) | sparse step (ms) | sparse / dense | MFU (1 thread) | "
        "MFU (2 threads) | prune / train | job (s, projected) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    projection = [
        "| d_model | projection, plain topk (ms) | projection now (ms) | speed-up | share of the sparse step "
        "| sparse / dense with the plain projection |",
        "|---|---|---|---|---|---|",
    ] + [f"| {p['d_model']} | {1e3 * p['plain_s']:.2f} | {1e3 * p['fast_s']:.2f} | {p['speedup']:.1f}x "
         f"| {p['share_of_sparse_step']:.1%} | {p['ratio_plain_projection']:.3f} |" for p in r.get("projection", [])]
    steps = {str(step["d_model"]): step for step in r["steps"]}
    for k in sorted(set(steps) | set(jobs), key=int):  # the step timings' widths and the quick grid's jobs'
        step, job = steps.get(k), jobs.get(k, {})
        timed = (f"{step['total_params']:,} | {1e3 * step['dense_step_s']:.1f} | {1e3 * step['sparse_step_s']:.1f} "
                 f"| **{step['ratio']:.3f}** | **{step['mfu']:.1%}**") if step else f"{int(job['total_params']):,} | - | - | - | -"
        lines.append(
            f"| {k} | {timed} | {fmt(two.get(k, {}).get('mfu'), '.1%', '-')} "
            f"| {fmt(job.get('prune_train_ratio'), '.2f', '-')} | {fmt(job.get('job_s_real'), '.0f', '-')} "
            f"| {fmt(job.get('peak_rss_mb'), '.0f', '-')} |")
    peak = r["matmul_peak_gflops"]
    lines += [
        "",
        f"- logging share (time in MLflow calls / job wall time, worst width): **{r['logging_share']:.2%}**; "
        f"{r['logging_share_first_job']:.2%} for a process's first job, which also imports MLflow's SQL store "
        f"({max(j['mlflow_store_import_s'] for j in r['jobs']):.1f} s)",
        f"- cost exponent (projected job time ~ params^a over the jobs' d_model): **{r['cost_exponent']:.2f}**; "
        f"step time ~ params^{r['step_cost_exponent']:.2f} over d_model 32-256",
        f"- fp32 matmul peak (torch.mm, {s['matmul_n']}^2): {peak['1']:.1f} GFLOP/s on 1 thread, {peak['2']:.1f} on 2",
        f"- targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'} ({TARGETS[k]})" for k, v in r["met"].items()),
        f"- {s['cpu']}, {s['cores']} cores, torch {s['torch']}, {s['date']}, commit {str(s['git_commit'])[:10]}; "
        f"sparse = density {s['sparse_density']}, batch {s['batch_size']} x {s['n_ctx']} tokens, {s['n_layer']} layers; "
        f"jobs trained {s['job_steps']} steps, projected to {s['real_job_steps']}; `make bench` took "
        f"{r['bench_wall_s']:.0f} s",
    ]
    if r.get("precision"):
        lines += ["", f"Precision: sparse steps in fp32 and under bf16 autocast, alternating blocks, the same model, "
                  f"seed and batches; MFU against this run's one-thread matmul peaks, fp32 {peak['1']:.1f} and bf16 "
                  f"{r['matmul_peak_gflops_bf16']['1']:.1f} GFLOP/s (MFU bf16: over the higher of the two); loss on 256 "
                  f"held-out windows after the timed steps:", ""]
        lines += markdown_table(
            ["d_model", "fp32 step (ms)", "bf16 step (ms)", "bf16 speed-up", "loss fp32", "loss bf16 - fp32", "MFU fp32",
             "MFU bf16", "projection share (bf16 step)"],
            [[x["d_model"], f"{1e3 * x['fp32_step_s']:.1f}", f"{1e3 * x['bf16_step_s']:.1f}", f"**{x['bf16_speedup']:.2f}x**",
              f"{x['fp32_loss']:.3f}", f"{x['bf16_loss_delta']:+.3f}", f"{x['mfu_fp32']:.1%}", f"{x['mfu_bf16']:.1%}",
              fmt(x.get("projection_share_bf16"), ".1%", "-")] for x in r["precision"]])
    if r.get("compile"):
        lines += ["", f"torch.compile of the training forward (train.compile): sparse steps eager and compiled, "
                  f"alternating blocks, the same model, seed and batches; compile time = the first compiled step "
                  f"less a compiled step, cold (empty kernel cache) and warm (cache filled by an earlier job); saving "
                  f"per job = {s['real_job_steps']} steps x (eager - compiled) - warm compile:", ""]
        lines += markdown_table(
            ["d_model", "eager step (ms)", "compiled step (ms)", "speed-up", "compile cold (s)", "compile warm (s)",
             "saving per job (s)"],
            [[x["d_model"], f"{1e3 * x['eager_step_s']:.1f}", f"{1e3 * x['compiled_step_s']:.1f}",
              f"**{x['compile_speedup']:.2f}x**", f"{x['compile_s_cold']:.1f}", f"{x['compile_s_warm']:.1f}",
              f"{x['job_saving_s']:+.0f}"] for x in r["compile"]])
    if len(projection) > 2:
        lines += ["", "The top-k projection before and after its speed-up (alternating step by step in one sparse "
                  "run at the target density; both keep the k largest, differing at most in which of exactly tied entries):", "", *projection]
    if "gpu" in r:
        g = r["gpu"]
        lines += ["", f"GPU ({g['device']}, fp32 peak {g['matmul_peak_gflops']:.0f} GFLOP/s):", "",
                  "| d_model | dense step (ms) | sparse step (ms) | sparse / dense | MFU |", "|---|---|---|---|---|"]
        lines += [f"| {x['d_model']} | {1e3 * x['dense_step_s']:.2f} | {1e3 * x['sparse_step_s']:.2f} | "
                  f"{x['ratio']:.3f} | {g['mfu'][str(x['d_model'])]:.1%} |" for x in g["steps"]]
    return "\n".join(lines) + "\n"


def write(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text("# Benchmark: where a job's time goes\n\nWritten by `make bench` "
                                    "(`python -m bench`); method in the README, section Benchmarks.\n\n" + table(results))
