"""A self-describing checkpoint: the weights with the model's shape, the tokenizer's identity, the step
and the point's config hash, so that it rebuilds without its run's config. Loaded with weights_only=True."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import DictConfig

from sweep.science.data import vocab_size
from sweep.errors import ConfigError
from sweep.science.model import GPT, ModelShape
from sweep.points import config_hash

FORMAT = 1
FIELDS = ("format", "shape", "tokenizer_hash", "step", "config_hash", "state_dict")


def build_model(cfg: DictConfig) -> GPT:
    """A fresh model of the shape a config describes."""
    return GPT(ModelShape.from_config(cfg.model, vocab_size(cfg.data)))


def save(path: Path, model: GPT, cfg: DictConfig, tokenizer_hash: str, step: int) -> None:
    torch.save({"format": FORMAT, "shape": dataclasses.asdict(model.shape), "tokenizer_hash": tokenizer_hash,
                "step": int(step), "config_hash": config_hash(cfg), "state_dict": model.state_dict()}, path)


def load(path: Path, run_id: str, cfg: DictConfig | None = None, tokenizer_hash: str | None = None) -> tuple[GPT, dict]:
    """The model stored at `path` (run `run_id`'s checkpoint) and its description without the weights. A
    checkpoint from before this format (a bare state dict) is rebuilt from `cfg`. A file that is not a
    checkpoint, or one whose shape, weights or tokenizer do not match, is a ConfigError naming the run."""
    try:
        stored = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - whatever torch cannot read is not a checkpoint
        raise _bad(run_id, f"not a checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    if isinstance(stored, dict) and stored.get("format") == FORMAT and set(FIELDS) <= set(stored):
        try:
            model = GPT(ModelShape(**stored["shape"]))
        except (TypeError, ValueError) as e:
            raise _bad(run_id, f"its shape {stored['shape']} does not build a model ({_first_line(e)})") from None
        if tokenizer_hash is not None and stored["tokenizer_hash"] != tokenizer_hash:
            raise _bad(run_id, f"it was trained with tokenizer {stored['tokenizer_hash']}, not {tokenizer_hash}")
        weights, meta = stored["state_dict"], {k: stored[k] for k in FIELDS if k != "state_dict"}
    elif isinstance(stored, dict) and cfg is not None and all(isinstance(v, torch.Tensor) for v in stored.values()):
        model, weights, meta = build_model(cfg), stored, {"format": 0}  # a bare state dict: the run's config says the shape
    else:
        raise _bad(run_id, "not a checkpoint of this project (no model shape in it)")
    try:
        model.load_state_dict(weights)
    except Exception as e:  # noqa: BLE001 - missing, extra or misshapen weights
        raise _bad(run_id, f"its weights do not fit the model ({type(e).__name__}: {_first_line(e)})") from None
    return model, meta


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _bad(run_id: str, reason: str) -> ConfigError:
    return ConfigError("RUN", run_id, f"its checkpoint cannot be loaded: {reason}")
