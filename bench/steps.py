"""Training step time, sparse against dense, interleaved in one process; model FLOPs and the matmul peak."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from sweep.science.data import eval_windows, sample_batch, vocab_size
from sweep.science.model import GPT, ModelShape
from sweep.science.sparsity import WeightSparsifier
from sweep.science.train import base_lr, build_optimizer, evaluate, step_lr, train_step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(threads: int, device: torch.device, n: int = 2048, seconds: float = 2.0,
                dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of a large square torch.mm (n x n) in `dtype` over `seconds` of repeats: the machine's peak."""
    torch.set_num_threads(threads)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: first call allocates, picks kernels
    sync(device)
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return 2 * n ** 3 / best


def matmul_params(shape: ModelShape) -> int:
    """Weights that take part in a matmul, counted dense: q k v o, the MLP, the unembedding
    (embedding lookups are gathers, norm gains elementwise)."""
    per_layer = 4 * shape.d_model * shape.n_head * shape.d_head + 2 * shape.d_model * shape.d_mlp
    return shape.n_layer * per_layer + shape.d_model * shape.vocab_size


def train_flops_per_token(shape: ModelShape) -> int:
    """Model FLOPs of one trained token (forward + backward), PaLM's convention: 6 x the dense
    matmul params, plus attention's scores and weighted sum, 12 x n_layer x n_ctx x (n_head x d_head),
    counted over the whole context (no credit or discount for the causal mask or for zero weights)."""
    return 6 * matmul_params(shape) + 12 * shape.n_layer * shape.n_ctx * shape.n_head * shape.d_head


@dataclass
class Trainer:
    """One model with its optimizer and sparsifier, stepped exactly as sweep.science.train does."""
    model: GPT
    optimizer: torch.optim.Optimizer
    sparsifier: WeightSparsifier
    lr0: float
    steps: int  # length of the schedule the sparse run follows (its progress goes 0 -> 1 over it)
    train_cfg: object  # cfg.train with this trainer's precision
    done: int = 0
    forward: torch.nn.Module | None = None  # what the step calls: the model, or a torch.compile wrapper of it

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model

    def step(self, tokens, generator, cfg, device) -> None:
        inputs, targets = (t.to(device) for t in sample_batch(tokens, cfg.train.batch_size, cfg.model.n_ctx, generator))
        step = self.done % self.steps
        lr = step_lr(self.lr0, step, self.steps, self.sparsifier, self.train_cfg)
        train_step(self.forward, self.optimizer, self.sparsifier, inputs, targets, lr, (step + 1) / self.steps,
                   self.train_cfg)
        self.done += 1


def make_trainer(cfg, d_model: int, density: float, steps: int, device: torch.device,
                 precision: str = "fp32") -> Trainer:
    """The job's model, optimizer and sparsifier at this width and density (width_mult = d_model / base)."""
    width_mult = d_model // cfg.model.base_width
    shape = ModelShape(vocab_size(cfg.data), d_model, cfg.model.n_layer, cfg.model.d_head,
                       cfg.model.mlp_ratio * d_model, cfg.model.n_ctx, cfg.model.act_topk_frac)
    torch.manual_seed(cfg.seed)
    model = GPT(shape).to(device)
    sparsifier = WeightSparsifier(model.hidden_matrices(), model.embedding_matrices(), density, width_mult, cfg.sparsity)
    return Trainer(model, build_optimizer(model, cfg.train), sparsifier,
                   base_lr(cfg.train, density, width_mult), steps, OmegaConf.merge(cfg.train, {"precision": precision}))


def timed_block(trainer: Trainer, n: int, tokens, generator, cfg, device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        trainer.step(tokens, generator, cfg, device)
    sync(device)
    return time.perf_counter() - start


def alternate(trainers: dict[str, Trainer], generators: dict, rounds: int, block: int, tokens, cfg,
              device) -> dict[str, list[float]]:
    """Time two trainers in alternating blocks, ABBA order so that drift cancels: {name: block seconds}."""
    (a, b), blocks = trainers, {name: [] for name in trainers}
    for r in range(2 * rounds):
        for name in ((a, b) if r % 4 in (0, 3) else (b, a)):
            blocks[name].append(timed_block(trainers[name], block, tokens, generators[name], cfg, device))
    return blocks


def warm_then_alternate(trainers: dict[str, Trainer], rounds: int, block: int, tokens, cfg,
                        device) -> dict[str, list[float]]:
    """One warm-up step each (allocator, kernels, autocast, a compile), then the schedule and the batches
    restart, the same for both, and the two are timed in alternating blocks (`alternate`)."""
    generators = {name: torch.Generator().manual_seed(cfg.seed) for name in trainers}
    for name, trainer in trainers.items():
        timed_block(trainer, 1, tokens, generators[name], cfg, device)
        trainer.done = 0
        generators[name].manual_seed(cfg.seed)
    return alternate(trainers, generators, rounds, block, tokens, cfg, device)


def step_times(cfg, tokens: torch.Tensor, d_model: int, density: float, rounds: int, block: int,
               threads: int, device: torch.device, precision: str = "fp32") -> dict:
    """Step time (median over blocks) of dense (density 1) and sparse training of the same model,
    measured in alternating blocks (ABBA order, so drift cancels), and the median of their paired ratios. The sparse run follows the whole density
    schedule (dense, anneal, target) over its timed steps, as a job does over its training."""
    torch.set_num_threads(threads)
    measured = 2 * rounds * block
    dense, sparse = (make_trainer(cfg, d_model, d, measured, device, precision) for d in (1.0, density))
    generator = torch.Generator().manual_seed(cfg.seed)
    for trainer in (dense, sparse):  # warm-up (allocator, kernels), then restart the schedule
        timed_block(trainer, 3, tokens, generator, cfg, device)
        trainer.done = 0
    blocks = alternate({"dense": dense, "sparse": sparse}, {"dense": generator, "sparse": generator}, rounds, block,
                       tokens, cfg, device)
    # medians: a burst of load from elsewhere on the machine hits a block or two, not the estimate;
    # the ratio pairs each sparse block with the dense block timed next to it
    dense_s, sparse_s = (statistics.median(blocks[name]) / block for name in ("dense", "sparse"))
    ratio = statistics.median(s / d for s, d in zip(blocks["sparse"], blocks["dense"]))
    flops = train_flops_per_token(dense.model.shape) * cfg.train.batch_size * cfg.model.n_ctx
    _, nonzero = sparse.model.count_params()
    return {"d_model": d_model, "threads": threads, "steps_each": measured, "dense_step_s": dense_s,
            "sparse_step_s": sparse_s, "ratio": ratio, "dense_blocks_s": blocks["dense"], "sparse_blocks_s": blocks["sparse"], "flops_per_step": flops,
            "sparse_nonzero_params": nonzero, "total_params": sparse.model.count_params()[0]}


def precision_times(cfg, tokens: torch.Tensor, val: torch.Tensor, d_model: int, density: float, rounds: int,
                    block: int, device: torch.device) -> dict:
    """Sparse step time in fp32 and under bf16 autocast, the same model and seed, alternating blocks
    (ABBA); then the loss of each after its timed steps on the same held-out windows."""
    measured = 2 * rounds * block
    trainers = {p: make_trainer(cfg, d_model, density, measured, device, p) for p in ("fp32", "bf16")}
    blocks = warm_then_alternate(trainers, rounds, block, tokens, cfg, device)
    inputs, targets = (t.to(device) for t in eval_windows(val, cfg.model.n_ctx, 256))
    losses = {p: evaluate(t.model, inputs, targets, cfg.train.batch_size) for p, t in trainers.items()}
    return {"d_model": d_model, "steps_each": measured, **{f"{p}_loss": losses[p] for p in trainers},
            "bf16_loss_delta": losses["bf16"] - losses["fp32"],
            **{f"{p}_step_s": statistics.median(blocks[p]) / block for p in trainers},
            "bf16_speedup": statistics.median(f / b for f, b in zip(blocks["fp32"], blocks["bf16"])),
            "flops_per_step": train_flops_per_token(trainers["fp32"].model.shape) * cfg.train.batch_size * cfg.model.n_ctx,
            **{f"{p}_blocks_s": blocks[p] for p in trainers}}


def compile_times(cfg, overrides: list[str], tokens: torch.Tensor, d_model: int, density: float, rounds: int,
                  block: int, device: torch.device, cache_dir) -> dict:
    """Sparse step time eager and with the forward under torch.compile (as train.compile does), the same
    model, seed and batches, alternating blocks (ABBA); and the compile time, the first compiled step less
    a compiled step, each in a fresh process (bench.compile_probe) as a sweep's worker meets it: cold (an
    empty kernel cache: the first job of a shape) and warm (the kernels the cold one left)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    compile_s = {}
    for when in ("cold", "warm"):
        out = subprocess.run([sys.executable, "-m", "bench.compile_probe", str(d_model), str(density), *overrides],
                             capture_output=True, text=True, env=env, check=True).stdout
        probe = json.loads(out.strip().splitlines()[-1])
        compile_s[when] = probe["first_step_s"] - probe["step_s"]
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    measured = 2 * rounds * block
    trainers = {m: make_trainer(cfg, d_model, density, measured, device) for m in ("eager", "compiled")}
    trainers["compiled"].forward = torch.compile(trainers["compiled"].model)
    blocks = warm_then_alternate(trainers, rounds, block, tokens, cfg, device)
    return {"d_model": d_model, "steps_each": measured,
            **{f"{m}_step_s": statistics.median(blocks[m]) / block for m in trainers},
            "compile_speedup": statistics.median(e / c for e, c in zip(blocks["eager"], blocks["compiled"])),
            **{f"compile_s_{when}": s for when, s in compile_s.items()},
            **{f"{m}_blocks_s": blocks[m] for m in trainers}}
