"""Bad input: one clear message naming the key, exit 2, before any run, the store untouched."""

import hashlib

import pytest
import torch

from conftest import Sweep
from sweep import names

BAD_INPUTS = [  # (overrides, key named in the message, words of the rule)
    (["sparsity.density=0"], "sparsity.density", "(0.0, 1.0]"),
    (["sparsity.density=1.5"], "sparsity.density", "(0.0, 1.0]"),
    (["sparsity.density=-0.1"], "sparsity.density", "(0.0, 1.0]"),
    (["sparsity.density=dense"], "sparsity.density", "must be a number"),
    (["model.width_mult=0"], "model.width_mult", "integer >= 1"),
    (["model.d_head=12"], "model.d_head", "must divide d_model"),
    (["model.n_ctx=1"], "model.n_ctx", "integer >= 2"),
    (["sparsity.density=0.04"], "sparsity.density", "infeasible"),  # 0.04 * 16 < j = 1
    (["data.source=/nonexistent/corpus"], "data.source", "existing directory"),
    (["model=transformerxl"], "model", "Available options in 'model'"),
    (["sparsity.densty=0.1"], "sparsity.densty", "densty"),
    (["hydra.job.chdir=maybe"], "hydra.job.chdir", "not a valid bool"),
    (["tasks.names=[else_elif,no_such_task]"], "tasks.names", "unknown task"),
    (["tasks.suite=huge"], "tasks.suite", "allowed: paper, quick"),
    (["prune.target_loss=0"], "prune.target_loss", "> 0"),
    (["prune.ablation=resample"], "prune.ablation", "allowed: mean, zero"),
    (["prune.method=magic"], "prune.method", "allowed: mask, attribution, greedy"),
    (["prune.restarts=0"], "prune.restarts", "integer >= 1"),
    (["prune.penalty=[]"], "prune.penalty", "non-empty list"),
    (["prune.penalty=[0.001,-0.01]"], "prune.penalty", ">= 0"),
    (["prune.penalty=-1"], "prune.penalty", ">= 0"),
    (["prune.gate=soft"], "prune.gate", "allowed: annealed, straight_through"),
    (["prune.temperature=[1.0]"], "prune.temperature", "[start, end]"),
    (["tasks.preamble=sometimes"], "tasks.preamble", "allowed: true, false"),
    (["model.pos_emb=rotary"], "model.pos_emb", "allowed: learned, none"),
    (["sparsity.density=nan"], "sparsity.density", "must be a number in (0.0, 1.0]"),
    (["train.lr=inf"], "train.lr", "must be a number in (0.0, inf)"),
    (["tasks.names=[]"], "tasks.names", "at least one task"),
    (["+foo=1"], "foo", "is not a setting of this config"),  # it changed the hash: the same model trained again
    (["+train.extra=2"], "train.extra", "is not a setting of this config"),
    (["tasks.names=[no_such_task]", "prune.enabled=false"], "tasks.names", "unknown task"),  # checked unpruned too
    (["tasks.names=[ ]", "prune.enabled=false"], "tasks.names", "at least one task"),
    (["data.tokenizer=sentencepiece"], "data.tokenizer", "allowed: bytes, bpe"),
    (["train.precision=fp16"], "train.precision", "allowed: fp32, bf16"),
    (["train.compile=maybe"], "train.compile", "allowed: true, false"),
    (["data.tokenizer=bpe", "data.vocab_size=100"], "data.vocab_size", ">= 257"),
    (["model.bigram_table=maybe"], "model.bigram_table", "allowed: true, false"),
    (["model.n_ctx=6"], "tasks.names", "needed"),  # the quick tasks' prompts cannot fit
    (["seed=abc"], "seed", "integer >= 0"),
    (["seed=-1"], "seed", "integer >= 0"),
    (["seed_offset=-3"], "seed_offset", "integer >= 0"),
    (["seed_offset=1.5"], "seed_offset", "integer >= 0"),
    (["prune.faithfulness=1"], "prune.faithfulness", "(0, 1)"),
    (["prune.faithfulness=0"], "prune.faithfulness", "(0, 1)"),
    (["prune.curve_fractions=[]"], "prune.curve_fractions", "non-empty list"),
    (["prune.curve_fractions=[0.5,0.1,1.0]"], "prune.curve_fractions", "strictly increasing"),
    (["prune.curve_fractions=[0.1,2]"], "prune.curve_fractions", "in (0, 1]"),
    (["tracking.experiment=../../escape"], "tracking.experiment", "without / or"),
    (["tracking.experiment=''"], "tracking.experiment", "non-empty name"),
    (["tracking.experiment=a\\b"], "tracking.experiment", "without / or"),
]


def store_digest(sweep) -> str:
    return hashlib.sha256(sweep.db.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    """A store that already holds one finished run: bad input must not touch it."""
    sweep = Sweep(tmp_path_factory.mktemp("filled"))
    result = sweep.run("sparsity.density=1")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


# Every bad input as one job, and in a multirun (whose plan refuses a grid without a valid point): the
# multirun cases of these three run in make test, the rest in make test-slow (5-15 s each on 2 cores).
MULTIRUN_IN_MAKE_TEST = ("sparsity.density=0.04", "seed=abc", "tasks.names=[]")


def bad_input_cases():
    for overrides, key, rule in BAD_INPUTS:
        yield pytest.param(overrides, key, rule, False, id=f"{overrides[0]}-run")
        slow = () if overrides[0] in MULTIRUN_IN_MAKE_TEST else pytest.mark.slow
        yield pytest.param(overrides, key, rule, True, id=f"{overrides[0]}-multirun", marks=slow)


@pytest.mark.parametrize("overrides,key,rule,multirun", bad_input_cases())
def test_bad_input_fails_cleanly(filled_store, overrides, key, rule, multirun):
    sweep = filled_store
    before = store_digest(sweep)
    result = sweep.run(*overrides, multirun=multirun)
    assert result.returncode == 2, result.stderr[-3000:]
    assert key in result.stderr and rule in result.stderr
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr  # ours, not Hydra's too
    assert store_digest(sweep) == before
    assert len(sweep.runs()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu(sweep):
    result = sweep.run("train.device=cuda")
    assert result.returncode == 2 and "train.device" in result.stderr and "no CUDA device" in result.stderr
    assert not sweep.db.exists()


MALFORMED_YAML = [  # (body, key, problem): a task file that cannot be loaded, pruning on or off
    ("a: {template: 'x = {v}', target: ':'}\nb: {template: 'y = {v}', target: ';'}\n", "tasks.yaml", "no values"),
    ("a: {template: 'x = {v}', target: ':'\nb: [", "mine.yaml", "not valid YAML"),
    ("- a\n- b\n", "mine.yaml", "not a mapping"),
]
TWO_TOKEN_ANSWER = ("slots: {v: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}\na: {template: 'x {v}', target: '::'}\n"
                    "b: {template: 'y {v}', target: ';'}\n", "mine", "2 tokens under the bytes tokenizer")


@pytest.mark.parametrize("body,key,problem,prune", [(*case, True) for case in [*MALFORMED_YAML, TWO_TOKEN_ANSWER]]
                         + [(*case, False) for case in MALFORMED_YAML])
def test_malformed_yaml_task(sweep, tmp_path, body, key, problem, prune):
    """A task whose answers are not single tokens matters only to pruning; a file that does not load, always."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "mine.yaml").write_text(body)
    result = sweep.run(f"tasks.template_dir={tmp_path / 'templates'}", "tasks.names=[mine]", f"prune.enabled={prune}")
    assert result.returncode == 2 and key in result.stderr and problem in result.stderr
    assert "Traceback" not in result.stderr and not sweep.db.exists()


def test_empty_corpus_directory(sweep, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("no python here")
    result = sweep.run(f"data.source={tmp_path / 'empty'}")
    assert result.returncode == 2 and "data.source" in result.stderr and "no .py files" in result.stderr
    assert not sweep.db.exists()


@pytest.mark.parametrize("files,problem", [
    ({"a.py": b"\x7fELF\0\0\x01" * 50, "b.py": b"\0" * 300, "c.py": bytes(range(256))}, "binary"),
    ({"only.py": b"def f():\n    return 1\n" * 100}, "at least 2 files"),
])
def test_a_corpus_that_is_no_python_source(sweep, tmp_path, files, problem):
    """Binary files named .py, or a single file: one line naming data.source (not data.val_frac)."""
    (tmp_path / "corpus").mkdir()
    for name, content in files.items():
        (tmp_path / "corpus" / name).write_bytes(content)
    result = sweep.run(f"data.source={tmp_path / 'corpus'}")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.source" in errors[0] and problem in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not sweep.db.exists()


def test_no_jobs_at_once_is_bad_input(sweep):
    result = sweep.run("sparsity.density=1,0.5", "hydra.launcher.n_jobs=0", multirun=True)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hydra.launcher.n_jobs" in errors[0] and "integer >= 1" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not sweep.db.exists()


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_tracking_directory(sweep, tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    target = blocker / "sub" / "mlflow.db" if where == "under_a_file" else "/proc/sparsity-sweep/mlflow.db"
    result = sweep.run(f"tracking.uri=sqlite:///{target}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "tracking.uri" in result.stderr and "not writable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not sweep.db.exists()


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
@pytest.mark.parametrize("fault,key,problem", [("not_sqlite", "tracking.uri", "is not an SQLite database"),
                                               ("deleted_experiment", "tracking.experiment", "was deleted")])
def test_a_store_that_cannot_hold_the_runs_is_bad_input(sweep, fault, key, problem, multirun):
    """A file that is not SQLite, or the experiment's name deleted in the store: one line, exit 2, before
    any run (they were MLflow tracebacks, exit 1)."""
    if fault == "not_sqlite":
        sweep.db.write_text("this is not an SQLite database\n" * 100)
    else:
        client = sweep.client
        client.delete_experiment(client.create_experiment("frontier"))
    before = store_digest(sweep)
    result = sweep.run("sparsity.density=1,0.5" if multirun else "sparsity.density=1", multirun=multirun)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert key in result.stderr and problem in result.stderr and "Traceback" not in result.stderr
    assert not list(sweep.tmp.glob(f"multirun/*/{names.RESULT_FILE}")), "a job ran"
    assert store_digest(sweep) == before


def test_a_failed_start_up_stops_the_multirun(sweep):
    """Hydra turns a callback's exception into a warning: the sweep must still stop, not run jobs without
    a parent run and exit 0. The fault: the store's path is a folder (writable, so it passes the checks)."""
    sweep.db.mkdir(parents=True)
    result = sweep.run("sparsity.density=1,0.5", multirun=True)
    assert result.returncode not in (0, 2), result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: sweep on_multirun_start failed")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert not list(sweep.tmp.glob(f"multirun/*/{names.RESULT_FILE}")), "a job ran"


def test_a_validation_split_shorter_than_the_context_is_bad_input(sweep, tmp_path):
    """Only tiny files land in the validation split: one line naming data.val_frac, before any run."""
    from sweep.science.data import is_validation
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        name = f"m{i}.py"
        tiny = is_validation(name, 0, 0.2)
        (corpus / name).write_text("x\n" if tiny else "def f(a, b):\n    return a + b\n" * 200)
    result = sweep.run(f"data.source={corpus}")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.val_frac" in errors[0] and "fewer than model.n_ctx + 1" in errors[0], errors
    assert "Traceback" not in result.stderr and not sweep.db.exists()


def test_a_single_run_of_a_finished_point_is_skipped(filled_store):
    """`python -m sweep` without -m, twice, or after a sweep: the finished point is not trained again."""
    sweep = filled_store
    before = store_digest(sweep)
    result = sweep.run("sparsity.density=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped: this point" in result.stdout and "nothing was trained" in result.stdout
    assert len(sweep.runs()) == 1 and store_digest(sweep) == before
