"""`python -m bench.references [OVERRIDES...]`: the corpus's bigram references, in bits per byte of
validation text: the in-sample estimate a job logs (`capability/bigram_bits_per_byte`), a bigram table
counted on the training split and scored on the validation split (the best of four add-alpha
smoothings), and the text's byte bigram (`capability/byte_bigram_bits_per_byte`)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from bench.jobs import job_config
from sweep.science.data import load_corpus

ALPHAS = (0.001, 0.01, 0.1, 1.0)


def heldout_bigram_loss(train: np.ndarray, val: np.ndarray, vocab: int, alpha: float) -> float:
    """Cross-entropy (nats/token) on `val` of an add-alpha bigram table counted on `train`."""
    counts = np.bincount(train[:-1].astype(np.int64) * vocab + train[1:], minlength=vocab * vocab)
    table = counts.reshape(vocab, vocab).astype(np.float64) + alpha
    log_p = np.log(table / table.sum(axis=1, keepdims=True))
    return float(-log_p[val[:-1].astype(np.int64), val[1:].astype(np.int64)].mean())


def main() -> None:
    cfg = job_config(sys.argv[1:])
    corpus = load_corpus(cfg.data, Path(cfg.data.cache_dir))
    vocab = corpus.tokenizer.vocab_size
    heldout = min(heldout_bigram_loss(corpus.train, corpus.val, vocab, a) for a in ALPHAS)
    print(f"data.source={cfg.data.source} data.tokenizer={cfg.data.tokenizer} vocab {vocab}: bigram in-sample "
          f"{corpus.per_byte(corpus.bigram_loss):.3f}, held out {corpus.per_byte(heldout):.3f}, byte bigram "
          f"{corpus.byte_bigram_loss / math.log(2):.3f} bits/byte")


if __name__ == "__main__":
    main()
