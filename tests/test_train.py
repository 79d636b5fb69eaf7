"""Training precision and compilation: bf16 autocast keeps fp32 master weights and lands near fp32 on a
tiny model; torch.compile trains the same model to the same loss; jobs spread over GPUs round-robin."""

import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from sweep import names
from sweep.science.data import load_corpus
from sweep.science.checkpoint import build_model
from sweep.orchestration.job import gpu_for_slot, job_slot
from sweep.science.sparsity import WeightSparsifier
from sweep.science.train import train
from tests.conftest import PROJECT_ROOT, SMALL_CORPUS


def tiny_run(precision: str, tmp_path, compile: bool = False):
    """120 steps of a 32-wide two-layer byte model at density 0.25, as a job trains it."""
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"data.source={SMALL_CORPUS}", "data.tokenizer=bytes", "data.val_frac=0.2", f"data.cache_dir={tmp_path}",
            "model.n_ctx=32", "model.d_head=8", "train.steps=120", "train.batch_size=8", "train.log_every=20",
            "train.eval_every=40", "train.eval_windows=16", "train.final_eval_windows=32",
            f"train.precision={precision}", f"train.compile={str(compile).lower()}", "sparsity.density=0.25"])
    corpus = load_corpus(cfg.data, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    sparsifier = WeightSparsifier(model.hidden_matrices(), model.embedding_matrices(), 0.25, 1, cfg.sparsity)
    logged = []
    result = train(model, torch.from_numpy(corpus.train), torch.from_numpy(corpus.val), sparsifier, cfg.train, 0,
                   lambda step, m: logged.append(m))
    return model, result, logged


def test_bf16_trains_fp32_weights_to_near_the_fp32_loss(tmp_path):
    _, fp32, _ = tiny_run("fp32", tmp_path)
    model, bf16, logged = tiny_run("bf16", tmp_path)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert bf16.val_loss < logged[0][names.TRAIN_LOSS] - 0.5  # it learned
    assert abs(bf16.val_loss - fp32.val_loss) < 0.05  # nats/byte after 120 steps
    assert bf16.val_loss != fp32.val_loss  # the forward really ran in bf16
    hidden = model.hidden_matrices().values()
    density = sum(int(torch.count_nonzero(w)) for w in hidden) / sum(w.numel() for w in hidden)
    assert abs(density - 0.25) < 0.01  # the top-k projection held on the fp32 weights


@pytest.mark.slow  # compiling takes tens of seconds on 2 cores
def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager_model, eager, _ = tiny_run("fp32", tmp_path)
    model, compiled, _ = tiny_run("fp32", tmp_path, compile=True)
    assert abs(compiled.val_loss - eager.val_loss) < 0.02  # the same computation, fused kernels
    assert any((tmp_path / "inductor").iterdir())  # it really compiled, into the shared cache
    assert compiled.first_step_s > 3 * eager.first_step_s  # the compile happens in the first step
    hidden = model.hidden_matrices().values()
    assert abs(sum(int(torch.count_nonzero(w)) for w in hidden) / sum(w.numel() for w in hidden) - 0.25) < 0.01


@pytest.mark.parametrize("n_jobs,n_gpus", [(4, 1), (4, 2), (6, 4), (3, 2)])
def test_jobs_running_at_once_spread_over_the_gpus_round_robin(n_jobs, n_gpus):
    """Jobs 0..11 of a multirun, n_jobs at a time: each batch running together fills the GPUs evenly."""
    gpus = [gpu_for_slot(job_slot(num, n_jobs), n_gpus) for num in range(12)]
    for start in range(0, 12, n_jobs):
        together = gpus[start:start + n_jobs]
        counts = [together.count(g) for g in range(n_gpus)]
        assert max(counts) - min(counts) <= 1, (together, counts)  # no GPU idle while another holds two more
        assert set(together) == set(range(min(n_gpus, len(together))))
    assert job_slot(5, -1) == 5 % os.cpu_count()  # joblib's -1: one slot per core
