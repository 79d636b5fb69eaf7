"""Pretraining data: the corpus's files -> tokens (bytes or a BPE), split by file, cached by content hash."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweep.corpus import corpus_hash, read_sources
from sweep.errors import ConfigError
from sweep.science.tokenizer import BYTES, N_BYTES, Tokenizer, load_or_train

FILE_SEPARATOR = b"\n\n"


@dataclass
class Corpus:
    train: np.ndarray  # token stream (uint8 for bytes; a BPE's int32, stored as uint16)
    val: np.ndarray
    corpus_hash: str
    unigram_loss: float  # entropy of the validation split, nats/token
    bigram_loss: float  # conditional entropy H(x_t | x_{t-1}) of the validation split, nats/token
    val_bytes: int  # bytes of the validation text: nats/token x val tokens / val_bytes is nats/byte
    tokenizer: Tokenizer = BYTES
    # H(byte_t | byte_t-1) of the validation text, nats/byte, whatever the tokenizer: the collapse
    # reference. (A BPE's own bigram entropy, estimated on the same text over V^2 cells, is far
    # below what any bigram model achieves on unseen text.)
    byte_bigram_loss: float = math.nan

    def per_byte(self, nats_per_token: float, targets: torch.Tensor | None = None) -> float:
        """Bits per byte for a loss in nats per token: over the given target tokens (the bytes they
        stand for), or over the whole validation split."""
        if targets is None:
            return nats_per_token * len(self.val) / self.val_bytes / math.log(2)
        byte_counts = torch.tensor(self.tokenizer.token_bytes(), dtype=torch.float64)
        return nats_per_token / byte_counts[targets.long()].mean().item() / math.log(2)


def vocab_size(data_cfg) -> int:
    """The model's vocabulary: 256 bytes, or `data.vocab_size` (a BPE is trained to exactly that size)."""
    return N_BYTES if data_cfg.tokenizer == "bytes" else int(data_cfg.vocab_size)


def is_validation(rel_path: str, split_seed: int, val_frac: float) -> bool:
    """Seeded hash of the relative path decides the split, independent of file-system order."""
    digest = hashlib.sha256(f"{split_seed}:{rel_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_frac


def reference_losses(tokens: np.ndarray, vocab: int) -> tuple[float, float]:
    """Unigram entropy and bigram conditional entropy (nats/token) of a token stream."""

    def entropy(counts: np.ndarray) -> float:
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    t = tokens.astype(np.int64)
    unigram = entropy(np.bincount(t, minlength=vocab))
    joint = entropy(np.bincount(t[:-1] * vocab + t[1:], minlength=vocab * vocab))
    return unigram, joint - entropy(np.bincount(t[:-1], minlength=vocab))


def byte_bigram_loss(text: bytes) -> float:
    """H(byte_t | byte_t-1) of a text, nats/byte."""
    return reference_losses(np.frombuffer(text, dtype=np.uint8), N_BYTES)[1]


def _cache_path(cache_dir: Path, corpus_hash: str, data_cfg, tokenizer: Tokenizer) -> Path:
    key = f"{corpus_hash}:{tokenizer.hash}:{data_cfg.val_frac}:{data_cfg.split_seed}"
    return cache_dir / f"corpus-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def load_corpus(data_cfg, cache_dir: Path) -> Corpus:
    """Read, hash and split the corpus; reuse the tokenized split cached under its hash."""
    files = read_sources(data_cfg.source)
    if files and all(b"\0" in content for content in files.values()):
        raise ConfigError("data.source", data_cfg.source, f"its {len(files)} .py files are binary (NUL bytes), "
                                                          "not Python source; allowed: a directory of .py source files")
    if len(files) < 2:
        raise ConfigError("data.source", data_cfg.source, f"holds {len(files)} .py file: a training and a validation "
                                                          "split need at least 2 files")
    digest = corpus_hash(files)

    parts: dict[bool, list[bytes]] = {False: [], True: []}
    for rel, content in files.items():
        parts[is_validation(rel, data_cfg.split_seed, data_cfg.val_frac)].append(content)
    if not parts[True] or not parts[False]:
        raise ConfigError("data.val_frac", data_cfg.val_frac, f"leaves an empty split of the {len(files)} files")
    train_text, val_text = (FILE_SEPARATOR.join(parts[split]) for split in (False, True))
    tokenizer = load_or_train(data_cfg, Path(cache_dir), digest, lambda: train_text.decode(errors="replace"))
    if tokenizer.vocab_size != vocab_size(data_cfg):
        raise ConfigError("data.vocab_size", data_cfg.vocab_size,
                          f"the training split supports at most {tokenizer.vocab_size} tokens; allowed: 257-{tokenizer.vocab_size}")

    cache = _cache_path(Path(cache_dir), digest, data_cfg, tokenizer)
    if cache.exists():
        stored = np.load(cache)
        val_bytes = int(stored["val_bytes"]) if "val_bytes" in stored else len(stored["val"])  # caches of bytes before BPE
        byte_bigram = float(stored["byte_bigram"]) if "byte_bigram" in stored else byte_bigram_loss(val_text)  # older caches
        return Corpus(_indexable(stored["train"]), _indexable(stored["val"]), digest, float(stored["unigram"]),
                      float(stored["bigram"]), val_bytes, tokenizer, byte_bigram)
    train, val = (tokenizer.encode_corpus(text) for text in (train_text, val_text))
    unigram, bigram = reference_losses(val, tokenizer.vocab_size)
    byte_bigram = byte_bigram_loss(val_text)

    cache.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: parallel jobs may build the same cache at once.
    with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, train=train, val=val, unigram=unigram, bigram=bigram, val_bytes=len(val_text),
                 byte_bigram=byte_bigram)
    os.replace(tmp.name, cache)
    return Corpus(_indexable(train), _indexable(val), digest, unigram, bigram, len(val_text), tokenizer,
                  byte_bigram)


def run_tokenizer(data_cfg) -> Tokenizer:
    """The tokenizer of a run's data config: bytes, or its BPE (from the cache; trained there if missing)."""
    return BYTES if data_cfg.tokenizer == "bytes" else load_corpus(data_cfg, Path(data_cfg.cache_dir)).tokenizer


def _indexable(tokens: np.ndarray) -> np.ndarray:
    """uint16 (a BPE's ids, as stored) is not a dtype torch indexes: int32 in memory."""
    return tokens.astype(np.int32) if tokens.dtype == np.uint16 else tokens


def sample_batch(tokens: torch.Tensor, batch_size: int, n_ctx: int, generator: torch.Generator):
    """Random windows of n_ctx + 1 tokens: inputs and next-token targets, each (B, T)."""
    starts = torch.randint(0, len(tokens) - n_ctx - 1, (batch_size,), generator=generator)
    windows = tokens[starts[:, None] + torch.arange(n_ctx + 1)].long()
    return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: torch.Tensor, n_ctx: int, max_windows: int):
    """Evenly spaced, non-overlapping validation windows: the same ones every time."""
    n = min(max_windows, len(tokens) // (n_ctx + 1))
    starts = torch.linspace(0, len(tokens) - n_ctx - 1, n).long()
    windows = tokens[starts[:, None] + torch.arange(n_ctx + 1)].long()
    return windows[:, :-1], windows[:, 1:]
