"""Weight-sparse training: Adam (eps 0.1) on RMS-normalised gradients, sharkfin LR, top-k each step."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sweep import names
from sweep.science.data import eval_windows, sample_batch
from sweep.lifecycle import raise_if_stopped
from sweep.science.model import GPT
from sweep.science.sparsity import WeightSparsifier

LR_SCHEDULES = ("sharkfin", "linear")
PRECISIONS = ("fp32", "bf16")
LogFn = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    val_loss: float
    train_s: float
    tokens_per_s: float
    first_step_s: float  # with train.compile: about the compile time


def base_lr(train_cfg, density: float, width_mult: int) -> float:
    """Sparser models want a larger LR, wider ones a smaller: lr0 * density^-a * width_mult^-b."""
    return train_cfg.lr * density ** (-train_cfg.lr_density_exponent) * width_mult ** (-train_cfg.lr_width_exponent)


def lr_factor(step: int, total: int, warmup_frac: float) -> float:
    """Linear warm-up over `warmup_frac` of training, then linear decay to zero."""
    warmup = max(1, round(warmup_frac * total))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def sharkfin_factor(density_final: float, density_now: float) -> float:
    """While the density anneals, scale the LR by sqrt(final / current): it rises as density falls."""
    return math.sqrt(density_final / density_now)


def build_optimizer(model: GPT, train_cfg) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (wd * lr_t) on matrices only; norm gains and the bigram table get none."""
    matrices = [p for p in model.parameters() if p.dim() >= 2 and p is not model.bigram]
    others = [p for p in model.parameters() if p.dim() < 2 or p is model.bigram]
    groups = [{"params": matrices, "weight_decay": train_cfg.weight_decay},
              {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas), eps=train_cfg.adam_eps)


def normalise_gradients(model: GPT) -> None:
    """Divide every gradient by the global RMS of all gradients (the paper calls this essential)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total_sq = torch.stack([g.pow(2).sum() for g in grads]).sum()
    rms = (total_sq / sum(g.numel() for g in grads)).sqrt().clamp_min(1e-12)
    torch._foreach_div_(grads, rms)


def step_lr(lr0: float, step: int, steps: int, sparsifier: WeightSparsifier, train_cfg) -> float:
    """The LR of this step: warm-up and decay, times the sharkfin factor while the density anneals."""
    lr = lr0 * lr_factor(step, steps, train_cfg.warmup_frac)
    if train_cfg.lr_schedule == "sharkfin":
        lr *= sharkfin_factor(sparsifier.density, sparsifier.density_now)
    return lr


def autocast(device: torch.device, precision: str):
    """The forward pass's precision: bf16 autocast (matmuls in bf16, weights, Adam state and the top-k
    projection stay fp32), or plain fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sparsifier: WeightSparsifier,
               inputs: torch.Tensor, targets: torch.Tensor, lr: float, progress: float, train_cfg) -> torch.Tensor:
    """One step: forward, backward, gradient RMS norm, Adam at `lr`, then the top-k projection at
    `progress` (a fraction of training). `model`: the GPT or its torch.compile wrapper. Returns the detached loss."""
    with autocast(inputs.device, train_cfg.get("precision", "fp32")):
        logits = model(inputs)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if train_cfg.grad_rms_norm:
        normalise_gradients(model)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    sparsifier.project(progress)
    return loss.detach()


@torch.no_grad()
def evaluate(model: GPT, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats/token) over fixed windows."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(inputs), batch_size):
        logits = model(inputs[i:i + batch_size])
        total += F.cross_entropy(logits.flatten(0, 1), targets[i:i + batch_size].flatten(), reduction="sum").item()
    model.train(was_training)
    return total / targets.numel()


def train(model: GPT, train_tokens: torch.Tensor, val_tokens: torch.Tensor, sparsifier: WeightSparsifier,
          train_cfg, seed: int, log: LogFn, label: str = "", position: int = 0) -> TrainResult:
    """Train for `train_cfg.steps` steps; report metrics through `log(step, metrics)`."""
    n_ctx, steps = model.shape.n_ctx, train_cfg.steps
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    val_inputs, val_targets = (t.to(device) for t in eval_windows(val_tokens, n_ctx, train_cfg.eval_windows))
    optimizer = build_optimizer(model, train_cfg)
    lr0 = base_lr(train_cfg, sparsifier.density, sparsifier.width_mult)
    tokens_per_step = train_cfg.batch_size * n_ctx
    loss_sum, loss_count = torch.zeros((), device=device), 0
    forward = torch.compile(model) if train_cfg.get("compile", False) else model  # same parameters

    bar = tqdm(total=steps * tokens_per_step, unit="tok", unit_scale=True, desc=label, position=position,
               leave=True, dynamic_ncols=True, mininterval=1.0)
    start = time.perf_counter()
    for step in range(steps):
        raise_if_stopped()
        inputs, targets = (t.to(device) for t in sample_batch(train_tokens, train_cfg.batch_size, n_ctx, generator))
        lr = step_lr(lr0, step, steps, sparsifier, train_cfg)
        loss_sum += train_step(forward, optimizer, sparsifier, inputs, targets, lr, (step + 1) / steps, train_cfg)
        loss_count += 1
        if step == 0:
            first_step_s = time.perf_counter() - start
        bar.update(tokens_per_step)

        last = step == steps - 1
        if (step + 1) % train_cfg.log_every == 0 or last:
            train_loss = loss_sum.item() / loss_count
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training diverged: {names.TRAIN_LOSS}={train_loss} at step {step + 1}")
            metrics = {names.TRAIN_LOSS: train_loss,
                       names.DENSITY_HIDDEN: sparsifier.density_now,
                       names.NONZERO_PARAMS_STEP: model.count_params()[1]}
            if (step + 1) % train_cfg.eval_every == 0 or last:
                metrics[names.VAL_LOSS] = evaluate(model, val_inputs, val_targets, train_cfg.batch_size)
            log(step + 1, metrics)
            bar.set_postfix(loss=f"{train_loss:.3f}", refresh=False)
            loss_sum, loss_count = torch.zeros((), device=device), 0
    train_s = time.perf_counter() - start
    bar.close()

    final_inputs, final_targets = (t.to(device) for t in eval_windows(val_tokens, n_ctx, train_cfg.final_eval_windows))
    val_loss = evaluate(model, final_inputs, final_targets, train_cfg.batch_size)
    return TrainResult(val_loss=val_loss, train_s=train_s, tokens_per_s=steps * tokens_per_step / train_s,
                       first_step_s=first_step_s)
