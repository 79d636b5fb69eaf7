"""The task suite (tasks.md): minimal pairs of Python prompts whose next byte is forced by a cue."""

from __future__ import annotations

import hashlib
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from sweep import names
from sweep.errors import ConfigError
from sweep.science.tokenizer import BYTES, Tokenizer

# A generator draws one minimal pair: (prompt_a, target_a, prompt_b, target_b).
Pair = tuple[str, str, str, str]
Generator = Callable[[random.Random], Pair]

NAMES = ["x", "y", "val", "item", "data", "count", "total", "name", "key", "node", "buf", "row", "acc", "res"]
WORDS = ["hello", "world", "spam", "eggs", "foo", "bar", "path", "index", "error", "value", "text", "line"]
MODULES = ["os", "sys", "re", "json", "math", "time", "random", "string"]
INDENTS = ["    ", "        "]

TASKS: dict[str, Generator] = {}
CONTROL = names.CONTROL  # one name in task lists, artifacts and metric keys


def register_task(name: str):
    """Add a Python generator to the registry: `@register_task("my_task")`."""

    def add(generator: Generator) -> Generator:
        TASKS[name] = generator
        return generator

    return add


def _name(rng: random.Random, *avoid: str) -> str:
    return rng.choice([n for n in NAMES if n not in avoid])


def preamble(rng: random.Random) -> str:
    """A random top-level line put before both prompts of a pair: variety that carries no cue."""
    return rng.choice([
        "",
        f"{_name(rng)} = {rng.randint(0, 99)}\n",
        f"import {rng.choice(MODULES)}\n",
        f"# {rng.choice(WORDS)} {rng.choice(WORDS)}\n",
        f"{_name(rng)} = {rng.choice(MODULES)}.{rng.choice(WORDS)}\n",
    ])


def _line(rng: random.Random, *avoid: str) -> str:
    """A short assignment line before a prompt: variety that carries no cue."""
    return f"{_name(rng, *avoid)} = {rng.randint(0, 9)}\n"


# Templates are as short as the task allows, with one cue each, so that CPU-scale byte models
# can learn them (tasks.md); the README has the full-model losses that chose the quick suite.


@register_task("single_double_quote")
def single_double_quote(rng):
    v, w = _name(rng), rng.choice(WORDS)
    return f"{v} = '{w}", "'", f'{v} = "{w}', '"'


@register_task("bracket_counting")
def bracket_counting(rng):
    v, n = _name(rng), rng.randint(0, 99)
    return f"{v} = [[{n}]", "]", f"{v} = [{n}]", "\n"


def _set_or_string(rng, v: str) -> Pair:
    head = _line(rng, v)
    return f"{head}{v} = set()\n{v}", ".", f'{head}{v} = ""\n{v}', " "


@register_task("set_or_string")
def set_or_string(rng):
    return _set_or_string(rng, _name(rng, "x"))


@register_task("set_or_string_fixedvarname")
def set_or_string_fixedvarname(rng):
    return _set_or_string(rng, "out")


@register_task("while_return_true")
def while_return_true(rng):
    head = _line(rng)
    return f"{head}while True", ":", f"{head}return True", "\n"


@register_task("else_elif")
def else_elif(rng):
    v, u = _name(rng), _name(rng)
    head = f"if {v} == {rng.randint(0, 9)}:\n    {u} = {rng.randint(0, 9)}\n"
    return f"{head}else", ":", f"{head}elif", " "


@register_task("with_as")
def with_as(rng):
    head, p = _line(rng), rng.choice(["p", "path", "fname", "src"])
    return f"{head}with open({p})", " ", f"{head}f = open({p})", "\n"


@register_task("for_while")
def for_while(rng):
    head, v = _line(rng), rng.choice("ijkn")
    return f"{head}for {v} ", "i", f"{head}while {v} ", "<"


@register_task("if_ternary")
def if_ternary(rng):
    head, v = _line(rng), _name(rng)
    return f"{head}y = 1 if {v}", " ", f"{head}if {v}", ":"


@register_task("fstring_brace")
def fstring_brace(rng):
    u, v = _name(rng), rng.choice("abcdefghpqrstuvwxyz")
    return f'{u} = f"{{{v}', "}", f"{u} = {{{v}", ":"


@register_task("bracket_brace")
def bracket_brace(rng):
    v, item = _name(rng), rng.randint(100, 999)  # a 3-digit item: the bracket is 2-3 BPE tokens back (README)
    return f"{v} = [{item}", "]", f"{v} = {{{item}", "}"


@register_task("var_swap")
def var_swap(rng):
    a, b = rng.sample("abcdefghpqrstuvw", 2)
    return f"{a}, {b} = {b}, ", a, f"{a}, {b} = {a}, ", b


@register_task("lambda_func")
def lambda_func(rng):
    f, v = rng.choice(["f", "g", "key", "fn", *WORDS]), rng.choice("xyznab")
    return f"{f} = lambda {v}", ":", f"def {f}({v}", ")"


@register_task("enumerate_range")
def enumerate_range(rng):
    head, i, v = _line(rng), rng.choice("ijkn"), rng.choice(["x", "item", "row", "val"])
    return f"{head}for {i}, {v} in ", "e", f"{head}for {i} in ", "r"


@register_task("class_init")
def class_init(rng):
    head = f"class {rng.choice(WORDS).capitalize()}:\n    @"
    method = rng.choice([*WORDS, *NAMES])
    return f"{head}property\n    def {method}(", "s", f"{head}classmethod\n    def {method}(", "c"


@register_task("with_open")
def with_open(rng):
    p, h = _name(rng), rng.choice(["f", "fh", "fp", "fd", "out", "src", "log", "dst"])
    return f'{h} = open({p}, "w")\n{h}.', "w", f'{h} = open({p}, "r")\n{h}.', "r"


@register_task("if_equals")
def if_equals(rng):
    head, v = _line(rng), _name(rng)
    return f"{head}if {v} =", "=", f"{head}{v} =", " "


@register_task("var_if")
def var_if(rng):
    a = _name(rng)
    b = rng.choice([n for n in NAMES if n[0] != a[0]])
    value = rng.randint(0, 99)
    return f"{a} = {value}\nif ", a[0], f"{b} = {value}\nif ", b[0]


@register_task("indent_for")
def indent_for(rng):
    head, v = _line(rng), rng.choice(["xs", "items", "rows", "data"])
    return f"{head}for x in {v}:\n", " ", f"{head}x = len({v})\n", "\n"


@register_task("final_kwarg")
def final_kwarg(rng):
    f, v = rng.choice(["run", "call", "make", "load"]), _name(rng)
    k = rng.choice(["key", "mode", "flag", "size"])
    return f"{f}({v}, {k}={rng.randint(0, 9)}", ")", f"{f}({v}, {k}", "="


PAPER_TASKS = tuple(TASKS)  # the twenty, in the paper's order


@register_task("paren_bracket")
def paren_bracket(rng):
    """Ours, beyond the paper's twenty: which bracket a 3-digit item closes, `(` or `[` (an attention task)."""
    v, item = _name(rng), rng.randint(100, 999)
    return f"{v} = ({item}", ")", f"{v} = [{item}", "]"


CALLABLES = ["print", "len", "int", "str", "list", "sorted", "f", "g", "run", "append"]


@register_task("call_subscript")
def call_subscript(rng):
    """Ours: a call or a subscript of the same name, `f(417` -> `)`, `f[417` -> `]` (the bracket 3 tokens back)."""
    v, item = rng.choice(NAMES + CALLABLES), rng.randint(100, 999)
    return f"{v}({item}", ")", f"{v}[{item}", "]"


@register_task("brace_paren")
def brace_paren(rng):
    """Ours: which bracket a 3-digit item closes, `{` or `(`."""
    v, item = _name(rng), rng.randint(100, 999)
    return f"{v} = {{{item}", "}", f"{v} = ({item}", ")"


@register_task("attr_call_subscript")
def attr_call_subscript(rng):
    """Ours: a method call or a subscript of an attribute, `x.get(417` -> `)`, `x.get[417` -> `]`."""
    v, attr, item = _name(rng), rng.choice(["get", "items", "data", "args", "cache"]), rng.randint(100, 999)
    return f"{v}.{attr}({item}", ")", f"{v}.{attr}[{item}", "]"


# `quick`: tasks every dense and constant-nonzero model of the quick grid learns at every seed, to a loss at
# most 0.7 x the quick target (0.3), each with its evidence three tokens back under the grid's BPE (README,
# "The quick suite"): the only ones of the twenty and a dozen variants that the d_model 32 models learn so.
SUITES = {"paper": PAPER_TASKS, "quick": ("call_subscript", "brace_paren", "attr_call_subscript")}


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str  # the correct next byte
    other: str  # the contrast byte


@dataclass
class TaskSet:
    """One task's prompts, split into train (for fitting masks) and held-out (for the target check)."""

    name: str
    train: list[Example]
    heldout: list[Example]


def flipped_by_hash(prompt: str, seed: int) -> bool:
    """The control's coin: a seeded hash of the prompt, unrelated to any rule."""
    return hashlib.sha256(f"{seed}:{prompt}".encode()).digest()[0] % 2 == 1


def control_pair(rng: random.Random, seed: int, with_preamble: bool = True) -> Pair:
    """A pair from a random real task, its labels swapped or kept by the hash coin: no rule."""
    a, ta, b, tb = _draw(TASKS[rng.choice(PAPER_TASKS)], rng, with_preamble)
    return (a, tb, b, ta) if flipped_by_hash(a, seed) else (a, ta, b, tb)


def _draw(generator: Generator, rng: random.Random, with_preamble: bool = True) -> Pair:
    head = preamble(rng) if with_preamble else ""
    a, ta, b, tb = generator(rng)
    return head + a, ta, head + b, tb


def generate(name: str, n_train: int, n_heldout: int, seed: int, n_ctx: int, with_preamble: bool = True) -> TaskSet:
    """Seeded, balanced (every pair gives one example of each class), train and held-out disjoint,
    every prompt at most n_ctx bytes; `with_preamble` puts a random line before each pair."""
    rng = random.Random(f"{seed}:{name}")
    draw = (lambda: control_pair(rng, seed, with_preamble)) if name == CONTROL else (lambda: _draw(TASKS[name], rng, with_preamble))
    seen: set[str] = set()
    pairs: list[Pair] = []
    for _ in range(50 * (n_train + n_heldout)):
        if len(pairs) == n_train + n_heldout:
            break
        pair = draw()
        if pair[0] in seen or pair[2] in seen or max(len(pair[0].encode()), len(pair[2].encode())) > n_ctx:
            continue
        seen.update((pair[0], pair[2]))
        pairs.append(pair)
    if len(pairs) < n_train + n_heldout:
        raise ConfigError("tasks.names", name, f"only {len(pairs)} distinct pairs of at most {n_ctx} bytes; "
                                               f"{n_train + n_heldout} needed")
    examples = [[Example(a, ta, tb), Example(b, tb, ta)] for a, ta, b, tb in pairs]
    flat = lambda chunk: [e for pair in chunk for e in pair]  # noqa: E731
    return TaskSet(name, flat(examples[:n_train]), flat(examples[n_train:]))


def check_known(name: str) -> None:
    """The task exists (a built-in, a loaded YAML task, or the control)."""
    if name not in TASKS and name != CONTROL:
        raise ConfigError("tasks.names", name, f"unknown task; allowed: {', '.join(sorted([*TASKS, CONTROL]))}")


def check_task(name: str, n_ctx: int, seed: int = 0, n_train: int = 8, n_heldout: int = 8,
               with_preamble: bool = True, tokenizer: Tokenizer = BYTES) -> None:
    """Config-time check: the task exists, enough prompts fit, and its two answers are two distinct
    single tokens under the tokenizer."""
    check_known(name)
    sample = generate(name, n_train, n_heldout, seed, n_ctx, with_preamble)  # raises if too few distinct prompts
    for example in sample.train + sample.heldout:
        answers = [answer_token(name, text, tokenizer) for text in (example.target, example.other)]
        if answers[0] == answers[1]:
            raise ConfigError("tasks.names", name, f"answers {example.target!r} and {example.other!r} are one token")


def answer_token(task: str, text: str, tokenizer: Tokenizer) -> int:
    """The single token of an answer; a ConfigError naming the task and the tokens otherwise."""
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        shown = " + ".join(repr(tokenizer.token_text(i)) for i in ids)
        raise ConfigError("tasks.names", task, f"answer {text!r} is {len(ids)} tokens under the {tokenizer.name} "
                                               f"tokenizer ({shown}); a task's two answers must be single tokens")
    return ids[0]


def pair_cue_distances(task_set: TaskSet, tokenizer: Tokenizer = BYTES) -> list[int]:
    """How far back a task's evidence lies, per pair: align the two prompts at their ends; the cue
    distance is how many tokens before the last one they first differ (0: the last tokens differ, as
    `else` / `elif` do, and no attention is needed)."""
    examples = task_set.train + task_set.heldout
    return [_first_difference_from_end(tokenizer.encode(a.prompt), tokenizer.encode(b.prompt))
            for a, b in zip(examples[::2], examples[1::2])]


def cue_distance(task_set: TaskSet, tokenizer: Tokenizer = BYTES) -> float:
    """The median cue distance over the task's pairs, in tokens of the tokenizer."""
    return float(statistics.median(pair_cue_distances(task_set, tokenizer)))


def _first_difference_from_end(a: list[int], b: list[int]) -> int:
    for back in range(min(len(a), len(b))):
        if a[-1 - back] != b[-1 - back]:
            return back
    return min(len(a), len(b))  # one prompt ends the other: they differ just before the shorter one starts


def load_yaml_task(path: Path) -> str:
    """Register a task defined by templates: see README 'Adding a task'. Returns its name."""
    try:
        spec = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        problem = str(e).replace("\n", " ")
        raise ConfigError("tasks.yaml", str(path), f"is not valid YAML ({problem})") from None
    if not isinstance(spec, dict):
        raise ConfigError("tasks.yaml", str(path), f"holds a {type(spec).__name__}, not a mapping: "
                                                   "needs a: {template, target} and b: {template, target}")
    name = spec.get("name") or Path(path).stem
    slots: dict = spec.get("slots") or {}
    try:
        sides = [(spec[side]["template"], str(spec[side]["target"])) for side in ("a", "b")]
    except (KeyError, TypeError):
        raise ConfigError("tasks.yaml", str(path), "needs a: {template, target} and b: {template, target}") from None
    for template, target in sides:
        if not template.strip():
            raise ConfigError("tasks.yaml", str(path), "a template is empty")
        if not target:  # single tokens under the run's tokenizer: checked with the suite (check_task)
            raise ConfigError("tasks.yaml", str(path), "a target is empty")
        for slot in _slots_in(template):
            if not slots.get(slot):
                raise ConfigError("tasks.yaml", str(path), f"template uses slot {{{slot}}} with no values under slots")

    def generator(rng: random.Random) -> Pair:
        values = {slot: str(rng.choice(choices)) for slot, choices in slots.items()}
        (ta, a), (tb, b) = ((t.format(**values), target) for t, target in sides)
        return ta, a, tb, b

    TASKS[name] = generator
    return name


def _slots_in(template: str) -> set[str]:
    import string

    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def encode(examples: list[Example], tokenizer: Tokenizer = BYTES,
           n_ctx: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompts (N, T) cut from the left to `n_ctx` tokens, last positions (N,), target and
    contrast ids (N,)."""
    ids = [tokenizer.encode(e.prompt)[-n_ctx if n_ctx else 0:] for e in examples]
    tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = torch.tensor(seq)
    last = torch.tensor([len(seq) - 1 for seq in ids])
    target = torch.tensor([tokenizer.encode(e.target)[0] for e in examples])
    other = torch.tensor([tokenizer.encode(e.other)[0] for e in examples])
    return tokens, last, target, other


def task_losses(model, batch) -> torch.Tensor:
    """Binary cross-entropy over {target, other} at each prompt's last position, (N,); chance is ln 2.
    Causal attention makes right padding harmless: positions before `last` never see it."""
    tokens, last, target, other = batch
    final = model(tokens, last=last)  # (N, vocab)
    margin = final.gather(1, target[:, None]).squeeze(1) - final.gather(1, other[:, None]).squeeze(1)
    return torch.nn.functional.softplus(-margin)


def task_loss(model, batch) -> torch.Tensor:
    """The mean task loss over the prompts."""
    return task_losses(model, batch).mean()
