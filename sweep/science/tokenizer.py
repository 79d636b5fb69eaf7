"""Tokenizers: raw bytes, or a byte-level BPE trained on the training split (the `tokenizers` package).

The BPE's pre-tokenizer follows the paper's (paper-recipe.md): a run of punctuation stays together
with the newlines after it (`]]\n`, `):\n`), runs of whitespace stay together (indentation), and words
take one leading space. Training is deterministic for a given text and vocabulary size; the result is
cached under the corpus hash and the settings, so a grid trains it once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TOKENIZERS = ("bytes", "bpe")
N_BYTES = 256
# words with one leading space | punctuation runs with the newlines after them | whitespace runs
PRE_TOKEN_PATTERN = r" ?[A-Za-z_0-9]+| ?[^\sA-Za-z_0-9]+[\r\n]*|\s+"
# A newline before a letter always ends a pre-token (the whitespace or punctuation run holding the
# newline stops at the letter, and no pre-token starts with a newline then a word): long text is cut
# there and trained or encoded in pieces, with the same result as whole and a fraction of the memory.
SAFE_CUT = re.compile(r"\n(?=[A-Za-z_])")
CHUNK_CHARS = 1 << 20


def text_chunks(text: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """`text` in pieces of about `chunk_chars`, cut only where a pre-token ends."""
    start = 0
    while start < len(text):
        cut = SAFE_CUT.search(text, start + chunk_chars)
        end = cut.end() if cut else len(text)
        yield text[start:end]
        start = end


class Tokenizer:
    """Text <-> token ids. `bytes` is the identity on UTF-8 bytes."""

    def __init__(self, name: str, bpe=None):
        self.name, self._bpe = name, bpe
        self.vocab_size = N_BYTES if bpe is None else bpe.get_vocab_size()
        self.hash = name if bpe is None else hashlib.sha256(bpe.to_str().encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return list(text.encode()) if self._bpe is None else self._bpe.encode(text).ids

    def encode_corpus(self, text: bytes, chunk_chars: int = CHUNK_CHARS) -> np.ndarray:
        """A whole split's token stream: uint8 bytes, or a BPE's ids as uint16 (encoded in pieces, in parallel)."""
        if self._bpe is None:
            return np.frombuffer(bytearray(text), dtype=np.uint8)
        pieces = self._bpe.encode_batch(list(text_chunks(text.decode(errors="replace"), chunk_chars)))
        return np.concatenate([np.array(p.ids, dtype=np.uint16) for p in pieces] or [np.zeros(0, np.uint16)])

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode(errors="replace") if self._bpe is None else self._bpe.decode(ids)

    def token_bytes(self) -> list[int]:
        """Bytes per token id (a byte-level BPE writes every byte as one character of its vocabulary)."""
        if self._bpe is None:
            return [1] * N_BYTES
        return [len(self._bpe.id_to_token(i)) for i in range(self.vocab_size)]

    def token_text(self, token: int) -> str:
        """A readable label of one token (circuit drawings, error messages)."""
        return self.decode([token])

    def save(self, path: Path) -> Path | None:
        """Write the BPE (JSON) to `path`; nothing for bytes."""
        if self._bpe is None:
            return None
        path.write_text(self._bpe.to_str())
        return path


BYTES = Tokenizer("bytes")


def train_bpe(text: str, vocab_size: int, chunk_chars: int = CHUNK_CHARS):
    """A byte-level BPE of `vocab_size` tokens (the 256 bytes and the merges) trained on `text`."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    bpe = HFTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    bpe.train_from_iterator(text_chunks(text, chunk_chars), trainer=trainer)
    return bpe


def bpe_cache_path(cache_dir: Path, corpus_hash: str, data_cfg) -> Path:
    key = f"{corpus_hash}:bpe:{data_cfg.vocab_size}:{data_cfg.val_frac}:{data_cfg.split_seed}:{PRE_TOKEN_PATTERN}"
    return Path(cache_dir) / f"bpe-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def load_or_train(data_cfg, cache_dir: Path, corpus_hash: str, train_text) -> Tokenizer:
    """The run's tokenizer: bytes, or the BPE cached under the corpus hash (trained on `train_text()`
    the first time; written then renamed, since parallel jobs may train the same one at once)."""
    if data_cfg.tokenizer == "bytes":
        return BYTES
    from tokenizers import Tokenizer as HFTokenizer

    cache = bpe_cache_path(cache_dir, corpus_hash, data_cfg)
    if not cache.exists():
        bpe = train_bpe(train_text(), int(data_cfg.vocab_size))
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, suffix=".json", delete=False) as tmp:
            tmp.write(bpe.to_str())
        os.replace(tmp.name, cache)
    return Tokenizer("bpe", HFTokenizer.from_file(str(cache)))
