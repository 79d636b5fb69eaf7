"""The task suite: deterministic, balanced, disjoint splits, single-token contrasts, user tasks."""

import math
import random

import pytest
import torch

from sweep.circuits import tasks
from sweep.errors import ConfigError
from sweep.science.model import GPT, ModelShape

ALL = [*tasks.TASKS, tasks.CONTROL]  # the paper's twenty, ours, the control


def test_the_paper_has_twenty_tasks():
    assert len(tasks.PAPER_TASKS) == 20 and "single_double_quote" in tasks.PAPER_TASKS


@pytest.mark.parametrize("name", tasks.SUITES["quick"])
def test_the_quick_tasks_need_attention(name):
    """Their pairs differ three bytes before the end (one bracket behind a 3-digit item): no n-gram of the last
    token decides them (under the quick grid's BPE the digits are three tokens: README)."""
    task_set = tasks.generate(name, 16, 16, 0, n_ctx=64, with_preamble=False)
    assert tasks.pair_cue_distances(task_set) == [3] * 32


@pytest.mark.parametrize("with_preamble", [True, False])
@pytest.mark.parametrize("name", ALL)
def test_generation_is_deterministic_balanced_and_disjoint(name, with_preamble):
    first, again, other = (tasks.generate(name, 32, 32, seed, n_ctx=64, with_preamble=with_preamble)
                           for seed in (0, 0, 1))
    assert first == again and first != other
    assert len(first.train) == len(first.heldout) == 64
    assert not {e.prompt for e in first.train} & {e.prompt for e in first.heldout}
    for split in (first.train, first.heldout):
        # balanced: every pair gives one example of each class, A's answer being B's contrast
        for a, b in zip(split[::2], split[1::2]):
            assert (a.target, a.other) == (b.other, b.target) and a.prompt != b.prompt
    for e in first.train + first.heldout:
        assert len(e.target.encode()) == 1 and len(e.other.encode()) == 1 and e.target != e.other
        assert len(e.prompt.encode()) <= 64


def test_control_labels_follow_no_rule():
    """The control draws real pairs and swaps their labels exactly where the hash coin says, about half the time."""
    flips = 0
    for i in range(400):
        rule_rng, control_rng = random.Random(i), random.Random(i)  # the same draws
        a, ta, b, tb = tasks._draw(tasks.TASKS[rule_rng.choice(tasks.PAPER_TASKS)], rule_rng)
        ca, cta, cb, ctb = tasks.control_pair(control_rng, seed=7)
        assert (ca, cb) == (a, b)
        flipped = tasks.flipped_by_hash(a, 7)
        assert (cta, ctb) == ((tb, ta) if flipped else (ta, tb))
        flips += flipped
    assert 160 < flips < 240


def test_unknown_task_and_short_context_are_config_errors():
    with pytest.raises(ConfigError, match="unknown task"):
        tasks.check_task("no_such_task", 64)
    with pytest.raises(ConfigError, match="bytes"):
        tasks.check_task("class_init", 16)  # its prompts cannot fit in 16 bytes
    tasks.check_task("else_elif", 64)


def test_a_randomly_initialised_model_is_at_chance():
    torch.manual_seed(0)
    model = GPT(ModelShape(vocab_size=256, d_model=32, n_layer=2, d_head=16, d_mlp=128, n_ctx=64)).eval()
    for name in ("else_elif", tasks.CONTROL):
        batch = tasks.encode(tasks.generate(name, 0, 64, seed=0, n_ctx=64).heldout)
        with torch.no_grad():
            loss = tasks.task_loss(model, batch).item()
        assert loss == pytest.approx(math.log(2), abs=0.05), name


@pytest.mark.parametrize("n_layer,pos_emb,bigram_table", [(1, "learned", False), (2, "learned", False),
                                                          (2, "none", True)])
def test_task_loss_reads_the_last_real_position(n_layer, pos_emb, bigram_table):
    """Right padding: the loss uses each prompt's own last byte, padding never changes it, and the
    last-position forward gives the full forward's logits there (with the bigram table: of the last byte)."""
    torch.manual_seed(0)
    model = GPT(ModelShape(vocab_size=256, d_model=32, n_layer=n_layer, d_head=16, d_mlp=128, n_ctx=64,
                           pos_emb=pos_emb, bigram_table=bigram_table)).eval()
    if model.bigram is not None:
        torch.nn.init.normal_(model.bigram)
    examples = tasks.generate("bracket_brace", 8, 0, seed=0, n_ctx=64).train
    tokens, last, target, other = tasks.encode(examples)
    with torch.no_grad():
        together = tasks.task_loss(model, (tokens, last, target, other)).item()
        alone = [tasks.task_loss(model, tasks.encode([e])).item() for e in examples]
        full = model(tokens)[torch.arange(len(last)), last]
        assert torch.allclose(model(tokens, last=last), full, atol=1e-5)
    assert together == pytest.approx(sum(alone) / len(alone), rel=1e-5)


def test_yaml_task(tmp_path):
    path = tmp_path / "quote_kind.yaml"
    path.write_text(
        "name: quote_kind\n"
        "slots:\n  var: [a, b, c]\n  word: [one, two, three, four]\n"
        "a: {template: \"{var} = '{word}\", target: \"'\"}\n"
        "b: {template: '{var} = \"{word}', target: '\"'}\n")
    try:
        assert tasks.load_yaml_task(path) == "quote_kind"
        split = tasks.generate("quote_kind", 4, 4, seed=0, n_ctx=64)
        assert split.train[0].prompt.endswith(("one", "two", "three", "four"))
        assert {e.target for e in split.train} == {"'", '"'}
    finally:
        tasks.TASKS.pop("quote_kind", None)


@pytest.mark.parametrize("body,problem", [
    ("a: {template: 'x = {v}', target: ':'}\nb: {template: 'y = {v}', target: ';'}\n", "slot {v}"),
    ("slots: {v: [1]}\na: {template: '', target: ':'}\nb: {template: 'y', target: ';'}\n", "empty"),
    ("slots: {v: [1]}\na: {template: 'x', target: ':'}\n", "needs a:"),
    ("slots: {v: [1]}\na: {template: 'x', target: ''}\nb: {template: 'y', target: ';'}\n", "target is empty"),
])
def test_malformed_yaml_task(tmp_path, body, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        tasks.load_yaml_task(path)
    assert "bad" not in tasks.TASKS


def test_without_preamble_prompts_start_at_the_template():
    plain = tasks.generate("else_elif", 8, 8, seed=0, n_ctx=64, with_preamble=False)
    assert all(e.prompt.startswith("if ") for e in plain.train + plain.heldout)
    with_line = tasks.generate("else_elif", 32, 0, seed=0, n_ctx=64)
    assert any(not e.prompt.startswith("if ") for e in with_line.train)  # some pairs get a preamble line
