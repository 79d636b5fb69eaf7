"""Check a job config before any work starts; every failure names the key, the value and the rule."""

from __future__ import annotations

import math
import numbers
import os
import shutil

import torch
from omegaconf import DictConfig, OmegaConf

from sweep import corpus, tracking
from sweep.errors import ConfigError
from sweep.science.tokenizer import N_BYTES, TOKENIZERS
from sweep.science.model import POS_EMB
from sweep.circuits.prune_stage import check_prune_config, check_task_names
from sweep.science.sparsity import check_feasible
from sweep.science.train import LR_SCHEDULES, PRECISIONS

DEVICES = ("auto", "cpu", "cuda")


def _number(cfg: DictConfig, key: str, low: float, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> float:
    value = _get(cfg, key)
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    rule = f"must be a number in {lo}{low}, {'inf)' if high is None else f'{high}{hi}'}"  # inf itself is refused
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(key, value, rule)  # NaN compares false with every bound: refused here
    if value < low or (low_open and value == low) or (high is not None and (value > high or (high_open and value == high))):
        raise ConfigError(key, value, rule)
    OmegaConf.update(cfg, key, float(value))  # `density=1` and `density=1.0` are one point
    return float(value)


def _integer(cfg: DictConfig, key: str, low: int) -> int:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, value, f"must be an integer >= {low}")
    return value


def cpp_compiler() -> str | None:
    """The C++ compiler TorchInductor would use for CPU kernels, or None."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")


def _boolean(cfg: DictConfig, key: str) -> bool:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(key, value, "allowed: true, false")
    return value


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(key, value, f"allowed: {', '.join(allowed)}")
    return value


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_overrides(overrides) -> None:
    """A `+key=value` adds a setting the config does not have: refused (outside `hydra.`), since nothing
    reads it and it would change the point's hash, so the same model would train again."""
    for override in overrides:
        key, _, value = str(override).partition("=")
        if key.startswith("+") and not key.startswith("++") and not key.lstrip("+").startswith("hydra."):
            raise ConfigError(key.lstrip("+"), value, "is not a setting of this config (`+` adds one, which nothing "
                                                      "reads); allowed: the settings `python -m sweep --cfg job` lists")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first setting that cannot work; write numbers back as floats."""
    _integer(cfg, "seed", 0)
    _integer(cfg, "seed_offset", 0)
    density = _number(cfg, "sparsity.density", 0.0, 1.0, low_open=True)
    width_mult = _integer(cfg, "model.width_mult", 1)
    base_width = _integer(cfg, "model.base_width", 1)
    d_head = _integer(cfg, "model.d_head", 1)
    _integer(cfg, "model.n_layer", 1)
    _integer(cfg, "model.mlp_ratio", 1)
    _integer(cfg, "model.n_ctx", 2)
    _number(cfg, "model.act_topk_frac", 0.0, 1.0, low_open=True)
    _choice(cfg, "model.pos_emb", POS_EMB)
    _boolean(cfg, "model.bigram_table")
    d_model = base_width * width_mult
    if d_model % d_head:
        raise ConfigError("model.d_head", d_head, f"must divide d_model = model.base_width * model.width_mult = {d_model}")

    j = _integer(cfg, "sparsity.min_per_neuron", 0)
    start = _number(cfg, "sparsity.anneal_start", 0.0, 1.0)
    end = _number(cfg, "sparsity.anneal_end", 0.0, 1.0)
    if end < start:
        raise ConfigError("sparsity.anneal_end", end, f"must be >= sparsity.anneal_start ({start})")
    d_mlp = cfg.model.mlp_ratio * d_model
    hidden = {"attn.q/k/v/o": (d_model, d_model), "mlp.fc_in": (d_mlp, d_model), "mlp.fc_out": (d_model, d_mlp)}
    check_feasible(hidden, density, j, f"model.width_mult={width_mult} (d_model={d_model})")

    _integer(cfg, "train.steps", 1)
    _integer(cfg, "train.batch_size", 1)
    _number(cfg, "train.lr", 0.0, low_open=True)
    _number(cfg, "train.lr_density_exponent", 0.0)
    _number(cfg, "train.lr_width_exponent", 0.0)
    _number(cfg, "train.warmup_frac", 0.0, 1.0)
    _number(cfg, "train.adam_eps", 0.0, low_open=True)
    _number(cfg, "train.weight_decay", 0.0)
    _choice(cfg, "train.lr_schedule", LR_SCHEDULES)
    device = _choice(cfg, "train.device", DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda", "no CUDA device on this machine; allowed here: auto, cpu")
    if (_choice(cfg, "train.precision", PRECISIONS) == "bf16" and device != "cpu" and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported()):
        raise ConfigError("train.precision", "bf16", f"this GPU ({torch.cuda.get_device_name()}) has no bf16; "
                                                     "allowed here: fp32, or bf16 with train.device=cpu")
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    if _boolean(cfg, "train.compile") and on_cpu and not cpp_compiler():
        raise ConfigError("train.compile", True, "torch.compile on the CPU needs a C++ compiler (g++ or $CXX) "
                                                 "and none was found; allowed here: false")
    _integer(cfg, "train.threads", 1)
    log_every = _integer(cfg, "train.log_every", 1)
    eval_every = _integer(cfg, "train.eval_every", 1)
    if eval_every % log_every:
        raise ConfigError("train.eval_every", eval_every, f"must be a multiple of train.log_every ({log_every})")
    _integer(cfg, "train.eval_windows", 1)
    _integer(cfg, "train.final_eval_windows", 1)

    if _choice(cfg, "data.tokenizer", TOKENIZERS) == "bpe":
        _integer(cfg, "data.vocab_size", N_BYTES + 1)
    _number(cfg, "data.val_frac", 0.0, 1.0, low_open=True, high_open=True)
    corpus.check_source(cfg.data.source)
    _boolean(cfg, "tasks.preamble")
    _integer(cfg, "tasks.n_train", 1)
    _integer(cfg, "tasks.n_heldout", 1)
    _integer(cfg, "prune.steps", 1)
    _number(cfg, "prune.lr", 0.0, low_open=True)
    _number(cfg, "prune.init", -1.0, 1.0)
    _number(cfg, "prune.init_noise", 0.0)
    _integer(cfg, "prune.mean_windows", 1)
    if cfg.prune.enabled:
        check_prune_config(cfg)
    else:
        check_task_names(cfg.tasks)
    _integer(cfg, "tracking.flush_every", 1)
    _number(cfg, "tracking.flush_interval_s", 0.0, low_open=True)
    _boolean(cfg, "tracking.system_metrics")
    tracking.check_tracking(cfg.tracking)
