"""`make bench`: the machinery runs end to end and computes what it reports (no timing is asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench.jobs import LoggingTimer
from bench.report import fitted_exponent
from bench.steps import matmul_params, train_flops_per_token
from conftest import PROJECT_ROOT
from sweep.science.model import GPT, ModelShape


@pytest.mark.slow  # the whole bench at toy sizes: two minutes on 2 cores
def test_smoke_run_writes_every_measure_the_issue_names(tmp_path):
    committed = (PROJECT_ROOT / "bench" / "results.json").read_bytes()
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    for key, widths in [("sparse_dense_ratio", {"32", "64", "128", "256"}), ("mfu", {"32", "64", "128", "256"}),
                        ("prune_train_ratio", {"32", "64", "96"}), ("peak_rss_mb", {"32", "64", "96"}),  # the quick grid's
                        ("bf16_speedup", {"32", "64", "128", "256"}), ("mfu_bf16", {"32", "64", "128", "256"})]:
        assert set(r[key]) == widths, key
        assert all(math.isfinite(v) and v > 0 for v in r[key].values()), (key, r[key])
    assert set(r["bf16_loss_delta"]) == {"32", "64", "128", "256"}
    assert all(math.isfinite(v) and v != 0 for v in r["bf16_loss_delta"].values())  # both trained, differently
    bf16 = next(x for x in r["precision"] if x["d_model"] == 256)  # MFU over the same run's best matmul peak
    best_peak = max(r["matmul_peak_gflops_bf16"]["1"], r["matmul_peak_gflops"]["1"]) * 1e9
    assert r["mfu_bf16"]["256"] == pytest.approx(bf16["flops_per_step"] / bf16["bf16_step_s"] / best_peak)
    assert 0 < r["logging_share"] < 1
    assert math.isfinite(r["cost_exponent"])
    assert all(job["status"] == "finished" for job in r["jobs"])
    assert all(p["plain_s"] > 0 and p["fast_s"] > 0 for p in r["projection"])
    # MFU is the sparse step's model FLOP rate over the same run's one-thread matmul peak
    step = next(s for s in r["steps"] if s["d_model"] == 64)
    assert r["mfu"]["64"] == pytest.approx(step["flops_per_step"] / step["sparse_step_s"] / (r["matmul_peak_gflops"]["1"] * 1e9))
    table = (tmp_path / "results.md").read_text()
    assert "| d_model | params | dense step (ms) | sparse step (ms) | sparse / dense |" in table
    assert "| 256 | 2,113,536 |" in table  # 2 layers of d_model 256, a 1,024-token BPE, 64 positions
    assert (PROJECT_ROOT / "bench" / "results.json").read_bytes() == committed  # --out: the measured table stays


def test_fitted_exponent_recovers_a_power_law():
    x = [43_008, 135_168, 466_944]
    assert fitted_exponent(x, [3.0 * v ** 0.7 for v in x]) == pytest.approx(0.7)


def test_model_flops_count_every_matmul_weight_once():
    """Hand count for d_model 8, 2 heads of 4, MLP 32, 1 layer, vocab 16: q k v o 4 x 8 x 8, MLP 2 x 8 x 32,
    unembedding 8 x 16; the model's own matrices agree."""
    shape = ModelShape(vocab_size=16, d_model=8, n_layer=1, d_head=4, d_mlp=32, n_ctx=10)
    assert matmul_params(shape) == 4 * 64 + 2 * 256 + 128
    model = GPT(shape)
    in_matmuls = sum(w.numel() for w in model.hidden_matrices().values())
    unembedding = shape.d_model * shape.vocab_size
    assert matmul_params(shape) == in_matmuls + unembedding
    assert train_flops_per_token(shape) == 6 * 896 + 12 * 1 * 10 * 8


def test_logging_timer_counts_nested_store_calls_once():
    class Store:
        def log_metrics(self, metrics, step=None):
            self.flush()

        def flush(self):
            torch.ones(1)

        def _helper(self):  # private: not a store call of its own
            pass

    timer = LoggingTimer()
    timer.install(Store)
    Store()._helper()
    Store().log_metrics({"a": 1.0})
    Store().flush()
    assert timer.calls == 2 and timer.logged == {"a": 1.0}
    assert set(timer.by_method) == {"log_metrics", "flush"}
    assert np.isclose(sum(timer.by_method.values()), timer.seconds)


@pytest.mark.slow  # compiles a model: tens of seconds on 2 cores
def test_smoke_with_compile_measures_the_compiled_step_and_the_compile_time(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--compile", "--out", str(tmp_path)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert set(r["compile_speedup"]) == {"32"}  # the smoke compiles the first width only
    x = r["compile"][0]
    assert x["compile_s_cold"] > 1 and 0 < x["compile_s_warm"] < x["compile_s_cold"]  # the cache was used
    assert r["compile_job_saving_s"]["32"] == pytest.approx(
        r["settings"]["real_job_steps"] * (x["eager_step_s"] - x["compiled_step_s"]) - x["compile_s_warm"])
    assert "| d_model | eager step (ms) | compiled step (ms) |" in (tmp_path / "results.md").read_text()


def test_gpu_check_without_a_gpu_says_so_and_exits_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run([sys.executable, "-m", "bench.gpu", "--out", str(tmp_path)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines()
                                                 if line.startswith("error: make gpu-check needs a CUDA GPU")]
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # the whole GPU check at toy sizes on the CPU: every line of it runs before a GPU does
def test_gpu_check_runs_end_to_end_at_toy_sizes_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.gpu", "--device", "cpu", "--tiny", "--out", str(tmp_path)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert [x["d_model"] for x in r["quick"]] == [32] and [x["d_model"] for x in r["paper"]] == [256]
    for row in r["quick"] + r["paper"]:
        for key in ("sparse_dense_ratio", "sparse_dense_ratio_bf16", "bf16_speedup", "mfu_bf16"):
            assert math.isfinite(row[key]) and row[key] > 0, key
    smoke = r["smoke"]
    assert smoke["returncode"] == 0 and len(smoke["jobs"]) == 2
    assert {j["density"] for j in smoke["jobs"]} == {"1.0", "0.25"}
    assert all(j["status"] == "FINISHED" and j["device"] == "cpu" for j in smoke["jobs"])
    assert "Paper-grid smoke" in (tmp_path / "results.md").read_text()
