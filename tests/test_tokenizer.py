"""The BPE tokenizer: deterministic, cached once per corpus and settings, round-trips, bits per byte
by hand, single-token answers, and a real job on it."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sweep import names
from sweep.circuits import tasks
from sweep.science.data import eval_windows, load_corpus
from sweep.errors import ConfigError
from sweep.science.model import GPT, ModelShape
from sweep.science.tokenizer import BYTES, Tokenizer, bpe_cache_path, text_chunks, train_bpe
from tests.conftest import SMALL_CORPUS

SOURCE = (SMALL_CORPUS / "utils.py").read_text()


def data_cfg(cache, vocab_size=400, tokenizer="bpe"):
    return OmegaConf.create({"source": str(SMALL_CORPUS), "tokenizer": tokenizer, "vocab_size": vocab_size,
                             "val_frac": 0.2, "split_seed": 0, "cache_dir": str(cache)})


def test_training_is_deterministic_and_keeps_punctuation_with_its_newlines():
    first, second = train_bpe(SOURCE, 400), train_bpe(SOURCE, 400)
    assert first.to_str() == second.to_str() and first.get_vocab_size() == 400
    bpe = Tokenizer("bpe", first)
    for text in (SOURCE, "def f(x):\n    return [x]]\n", "ünïcode ✓ 'quoted'\n"):
        assert bpe.decode(bpe.encode(text)) == text
    pieces = [bpe.token_text(t) for t in bpe.encode("    if x:\n        pass\n")]
    assert ":\n" in pieces  # a colon and its newline are one pre-token, and common enough to merge
    assert sum(bpe.token_bytes()[t] for t in bpe.encode(SOURCE)) == len(SOURCE.encode())


def test_long_text_cut_into_pieces_trains_and_encodes_as_a_whole():
    text = "\n\n".join(p.read_text() for p in sorted(SMALL_CORPUS.glob("*.py")))
    pieces = list(text_chunks(text, 500))
    assert len(pieces) > 5 and "".join(pieces) == text
    assert all(piece[0].isalpha() or piece[0] == "_" for piece in pieces[1:])  # cut before a word at a line start
    whole, cut = train_bpe(text, 400, chunk_chars=len(text)), train_bpe(text, 400, chunk_chars=500)
    assert whole.to_str() == cut.to_str()
    bpe = Tokenizer("bpe", whole)
    assert bpe.encode_corpus(text.encode(), chunk_chars=500).tolist() == bpe.encode(text)


def test_a_second_job_reuses_the_cached_bpe(tmp_path):
    corpus = load_corpus(data_cfg(tmp_path), tmp_path)
    cache = bpe_cache_path(tmp_path, corpus.corpus_hash, data_cfg(tmp_path))
    stamp = cache.stat().st_mtime_ns
    again = load_corpus(data_cfg(tmp_path), tmp_path)
    assert cache.stat().st_mtime_ns == stamp and again.tokenizer.hash == corpus.tokenizer.hash
    assert torch.equal(torch.from_numpy(again.train), torch.from_numpy(corpus.train))
    assert corpus.train.max() < 400 and corpus.tokenizer.vocab_size == 400
    assert len(corpus.val) < corpus.val_bytes  # a BPE token stands for more than one byte on average


def test_a_vocabulary_the_corpus_cannot_fill_is_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="data.vocab_size"):
        load_corpus(data_cfg(tmp_path, vocab_size=10**6), tmp_path)


def test_bits_per_byte_are_nats_over_bytes_by_hand(tmp_path):
    corpus = load_corpus(data_cfg(tmp_path), tmp_path)
    torch.manual_seed(0)
    model = GPT(ModelShape(vocab_size=400, d_model=16, n_layer=1, d_head=8, d_mlp=64, n_ctx=16)).eval()
    inputs, targets = eval_windows(torch.from_numpy(corpus.val), 16, 8)
    with torch.no_grad():
        nats = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="none")
    text_bytes = sum(len(corpus.tokenizer.decode([t]).encode()) for t in targets.flatten().tolist())
    by_hand = nats.sum().item() / text_bytes / math.log(2)
    assert corpus.per_byte(nats.mean().item(), targets) == pytest.approx(by_hand, rel=1e-3)
    bytes_corpus = load_corpus(data_cfg(tmp_path, tokenizer="bytes"), tmp_path)
    assert bytes_corpus.per_byte(1.0) == pytest.approx(1 / math.log(2))  # bytes: nats / ln 2
    # the collapse reference is the text's byte bigram, the same number under either tokenizer
    assert corpus.byte_bigram_loss == pytest.approx(bytes_corpus.bigram_loss)
    assert bytes_corpus.byte_bigram_loss == pytest.approx(bytes_corpus.bigram_loss)
    again = load_corpus(data_cfg(tmp_path), tmp_path)  # from the cache
    assert again.byte_bigram_loss == corpus.byte_bigram_loss


def test_answers_must_be_single_distinct_tokens_of_the_tokenizer():
    bpe = Tokenizer("bpe", train_bpe(SOURCE * 3, 600))
    tasks.check_task("else_elif", 64, tokenizer=BYTES)
    long_answer = next(text for text in ("return", "self", "def") if len(bpe.encode(text)) == 1)
    assert tasks.answer_token("t", long_answer, bpe) == bpe.encode(long_answer)[0]
    with pytest.raises(ConfigError, match="lambda_func.*2 tokens"):
        tasks.answer_token("lambda_func", "ab", BYTES)
    examples = tasks.generate("else_elif", 4, 0, 0, 64, False).train
    tokens, last, target, other = tasks.encode(examples, bpe, n_ctx=3)
    assert tokens.shape[1] <= 3 and (last <= 2).all()  # cut from the left
    assert torch.equal(target, torch.tensor([bpe.encode(e.target)[0] for e in examples]))


def test_a_bpe_job_logs_its_tokenizer_and_bits_per_byte(sweep, tmp_path):
    result = sweep.run("data.tokenizer=bpe", "data.vocab_size=300", "tasks.names=[else_elif]")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    tokenizer_file = sweep.client.download_artifacts(run.info.run_id, names.ARTIFACT_TOKENIZER, str(tmp_path))
    saved = Tokenizer("bpe", __import__("tokenizers").Tokenizer.from_file(tokenizer_file))
    assert run.data.tags[names.TAG_TOKENIZER_HASH] == saved.hash and saved.vocab_size == 300
    metrics = run.data.metrics
    assert metrics[names.CAPABILITY_BITS_PER_BYTE] < metrics[names.CAPABILITY_VAL_LOSS] / math.log(2)
    assert metrics[names.CAPABILITY_BIGRAM_BPB] < metrics[names.CAPABILITY_BIGRAM] / math.log(2)
    bytes_bigram = load_corpus(data_cfg(sweep.tmp / "cache", tokenizer="bytes"), sweep.tmp / "cache").bigram_loss
    assert metrics[names.CAPABILITY_BYTE_BIGRAM_BPB] == pytest.approx(bytes_bigram / math.log(2))
    assert names.circuit_metric("else_elif", "cue_distance") in metrics
    p = run.data.params
    corpus = load_corpus(data_cfg(sweep.tmp / "cache", vocab_size=300), sweep.tmp / "cache")  # the job's, from its cache
    assert metrics[names.DATA_TRAIN_EPOCHS] == pytest.approx(
        int(p["train.steps"]) * int(p["train.batch_size"]) * int(p["model.n_ctx"]) / len(corpus.train))


def test_a_yaml_task_may_answer_with_a_word_that_is_one_bpe_token(tmp_path):
    bpe = Tokenizer("bpe", train_bpe(SOURCE * 3, 600))
    word, other = [w for w in (" return", " self", " def", " if", " in", " not") if len(bpe.encode(w)) == 1][:2]
    (tmp_path / "word.yaml").write_text(
        f"slots: {{v: [a, b, c, d, e, f]}}\na: {{template: 'x = {{v}}', target: '{word}'}}\nb: {{template: 'y = {{v}}', target: '{other}'}}\n")
    name = tasks.load_yaml_task(tmp_path / "word.yaml")
    try:
        tasks.check_task(name, 64, 0, 2, 2, with_preamble=False, tokenizer=bpe)
        with pytest.raises(ConfigError, match="word.*tokens under the bytes tokenizer"):
            tasks.check_task(name, 64, 0, 2, 2, with_preamble=False, tokenizer=BYTES)
    finally:
        tasks.TASKS.pop(name, None)


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_a_vocabulary_beyond_the_corpus_stops_before_any_run(sweep, multirun):
    result = sweep.run("data.tokenizer=bpe", "data.vocab_size=1000000", multirun=multirun)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "data.vocab_size" in result.stderr and "at most" in result.stderr and "Traceback" not in result.stderr
    assert not sweep.runs()
