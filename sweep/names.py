"""The names that tie the parts together (contract.md): defined once, imported everywhere."""

import math

# Node locations of one block, in forward order. Recording, activation sparsity, pruning masks,
# edge counting and circuit drawing all use these names: `layer.<i>.<location>[<channel>]`.
NODE_LOCATIONS = (
    "attn.in",  # normed residual read, d_model
    "attn.q",  # n_head * d_head
    "attn.k",
    "attn.v",
    "attn.out",  # residual write, d_model
    "mlp.in",  # normed residual read, d_model
    "mlp.hidden",  # d_mlp, after the nonlinearity
    "mlp.out",  # residual write, d_model
)


def node_name(layer: int, location: str, channel: int | None = None) -> str:
    """Stable name of a node location (or of one channel of it)."""
    base = f"layer.{layer}.{location}"
    return base if channel is None else f"{base}[{channel}]"


# Tags
TAG_KIND = "sweep.kind"  # parent | job
TAG_CONFIG_HASH = "sweep.config_hash"
TAG_STATUS = "sweep.status"  # finished | failed: <reason> | skipped: duplicate of <run_id>
TAG_GIT_COMMIT = "git.commit"  # contract.md's; MLflow's own source tags beside it, which the run page shows:
TAG_SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
TAG_SOURCE_NAME = "mlflow.source.name"  # the entry point: `python -m sweep`, `python -m sweep.orchestration.reprune`
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_DESCRIPTION = "mlflow.note.content"  # a run's or an experiment's description in the MLflow UI
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI opens a custom_model_development experiment on its runs
EXPERIMENT_KIND = "custom_model_development"


def ui_runs_path(experiment_id: str, run_id: str = "") -> str:
    """`#/experiments/<id>/runs[/<run>]?workflowType=machine_learning`: MLflow 3.17's UI takes its mode (GenAI
    or model training) from the link or the browser's last choice, not from the experiment's kind tag."""
    return f"#/experiments/{experiment_id}/runs{'/' + run_id if run_id else ''}?workflowType=machine_learning"
SOURCE_SWEEP = "python -m sweep"  # mlflow.source.name of a sweep's runs
SOURCE_REPRUNE = "python -m sweep.orchestration.reprune"
TAG_POINT = "sweep.point"  # the point without its seed (`w2-d0.06`): the UI's "group by" pools seeds
TAG_CORPUS_HASH = "data.corpus_hash"
TAG_DEVICE = "sweep.device"  # where the job trained: `cpu` or `cuda:<index> <GPU name>`
TAG_TOKENIZER_HASH = "data.tokenizer_hash"  # `bytes`, or the hash of the BPE's JSON (the artifact ARTIFACT_TOKENIZER)
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
KIND_PARENT = "parent"
KIND_JOB = "job"
TAG_PROCESS = "sweep.process"  # host:pid:start of the process that opened the run (finds orphaned runs)
TAG_OPTUNA_STUDY, TAG_OPTUNA_TRIAL = "optuna.study", "optuna.trial"  # on each trial's run (make search)
TAG_LAUNCHER_PROCESS = "sweep.launcher_process"  # host:pid:start of the sweep's launching process (a job's run)
STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_SKIPPED = "skipped"  # `skipped: duplicate of <run_id>`: the point already has a finished run

# Per-step metrics
TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
DENSITY_HIDDEN = "sparsity/density_hidden"
NONZERO_PARAMS_STEP = "sparsity/nonzero_params"

# Once-per-job metrics
CAPABILITY_VAL_LOSS = "capability/val_loss"
CAPABILITY_BITS_PER_BYTE = "capability/bits_per_byte"
CAPABILITY_UNIGRAM = "capability/unigram_loss"
CAPABILITY_BIGRAM = "capability/bigram_loss"
CAPABILITY_UNIGRAM_BPB = "capability/unigram_bits_per_byte"  # the reference losses per byte of validation text
CAPABILITY_BIGRAM_BPB = "capability/bigram_bits_per_byte"
CAPABILITY_BYTE_BIGRAM_BPB = "capability/byte_bigram_bits_per_byte"  # the text's byte bigram, any tokenizer: the collapse reference
DATA_TRAIN_EPOCHS = "data/train_epochs"  # passes over the training split: steps x batch x n_ctx / its tokens
MODEL_TOTAL_PARAMS = "model/total_params"
MODEL_NONZERO_PARAMS = "model/nonzero_params"
TIME_TRAIN = "time/train_s"
TIME_FIRST_STEP = "time/first_step_s"  # part of time/train_s; with train.compile about the compile time
TIME_PRUNE = "time/prune_s"
PERF_TOKENS_PER_S = "perf/tokens_per_s"
COLLAPSE_DEAD_BY_WEIGHT = "collapse/dead_by_weight_frac"
COLLAPSE_DEAD_BY_ACTIVITY = "collapse/dead_by_activity_frac"
COLLAPSE_DEAD_LAYERS = "collapse/dead_layer_count"

# Circuit metrics: per task `circuit/<task>/<what>`, and aggregates over the solved tasks.
CIRCUIT_PER_TASK = ("nodes", "edges", "loss", "full_loss", "solved", "necessity_loss", "beats_model",
                    "nodes_before_pass",  # the bisection's prefix, before the minimality pass
                    "nodes_restart_median",  # median over the method's rankings (restarts, penalties) of the bisection's nodes
                    "cue_distance",  # tokens before the last one where the two prompts of a pair first differ (median)
                    "empty_loss",  # every node ablated: what the ablation values and the bigram table do alone
                    "faithfulness",  # f of the target circuit: (empty_loss - loss) / (empty_loss - full_loss)
                    "nodes_at_f80", "edges_at_f80",  # the smallest circuit found with f >= prune.faithfulness
                    "cpr", "cmd")  # MIB's areas under f and under |1 - f| over the kept fractions of edges
EDGES_GEOMEAN = "circuit/edges_geomean"  # the geomean (below) of the solved tasks' edges
LOG10_EDGES_GEOMEAN = "circuit/log10_edges_geomean"  # the same on the frontier's axis: a UI chart has no log scale
NODES_GEOMEAN = "circuit/nodes_geomean"
EDGES_AT_F80_GEOMEAN = "circuit/edges_at_f80_geomean"  # the geomean of edges_at_f80 over the tasks where f is measurable
TASKS_SOLVED_FRAC = "circuit/tasks_solved_frac"
CONTROL = "control"  # the nonsense control: its task name, metric keys, artifacts and the analysis's tables
CONTROL_EDGES = f"circuit/{CONTROL}/edges"
CONTROL_SOLVED = f"circuit/{CONTROL}/solved"
TAG_STAGE = "sweep.stage"  # STAGE_TRAIN (with pruning; the tag may be absent) | STAGE_PRUNE (a re-prune of a stored checkpoint)
STAGE_TRAIN = "train"
STAGE_PRUNE = "prune"
STATUS_FAILED = "failed"  # `failed: <reason>`
TAG_TRAIN_RUN = "sweep.train_run_id"


def circuit_metric(task: str, what: str) -> str:
    """`circuit/<task>/<what>`: the key a job writes and the analysis reads (`parse_circuit_metric`)."""
    return f"circuit/{task}/{what}"


def parse_circuit_metric(key: str) -> tuple[str, str] | None:
    """(task, what) of a per-task circuit metric key (`circuit_metric`'s inverse), else None."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "circuit" and parts[2] in CIRCUIT_PER_TASK:
        return parts[1], parts[2]
    return None


def circuit_artifact(task: str, suffix: str) -> str:
    """`circuits/<task>.<suffix>`: json, png, svg, html (the circuit), curve.json and curve.png (its faithfulness)."""
    return f"circuits/{task}.{suffix}"


# What the training stage logs; tests pin these.
STEP_METRICS = (TRAIN_LOSS, VAL_LOSS, DENSITY_HIDDEN, NONZERO_PARAMS_STEP)
TRAINING_SUMMARY_METRICS = (
    CAPABILITY_VAL_LOSS,
    CAPABILITY_BITS_PER_BYTE,
    CAPABILITY_UNIGRAM,
    CAPABILITY_BIGRAM,
    CAPABILITY_UNIGRAM_BPB,
    CAPABILITY_BIGRAM_BPB,
    CAPABILITY_BYTE_BIGRAM_BPB,
    MODEL_TOTAL_PARAMS,
    MODEL_NONZERO_PARAMS,
    TIME_TRAIN,
    TIME_FIRST_STEP,
    PERF_TOKENS_PER_S,
    COLLAPSE_DEAD_BY_WEIGHT,
    COLLAPSE_DEAD_BY_ACTIVITY,
    COLLAPSE_DEAD_LAYERS,
)

# Artifacts
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_CHECKPOINT_DIR = "checkpoint"
ARTIFACT_CHECKPOINT = "checkpoint/model.pt"
ARTIFACT_TOKENIZER = "tokenizer.json"  # a BPE run's tokenizer (the `tokenizers` package's JSON)

ARTIFACT_SUMMARY = "summary.txt"  # the parent run's summary as text, and as a table the UI shows (log_table)
ARTIFACT_SUMMARY_TABLE = "summary.json"
ARTIFACT_PLAN = "plan.json"  # the parent run's plan of every point (run, skip, invalid) and the multirun's config
ARTIFACT_MULTIRUN_CONFIG = "multirun.yaml"

# Each multirun job writes its outcome here, in its own output folder; the sweep summary reads them.
RESULT_FILE = "result.json"

# Environment variable through which the launching process hands the parent run to its jobs.
ENV_PARENT_RUN_ID = "SWEEP_PARENT_RUN_ID"


def geomean(counts) -> float:
    """The circuit aggregates' geometric mean (`circuit/edges_geomean`, `nodes_geomean`): counts below 1
    count as 1 (a circuit of 0 edges is not infinitely small); NaN for none."""
    v = [max(float(c), 1.0) for c in counts]
    if not v:
        return math.nan
    return float(f"{math.exp(sum(math.log(c) for c in v) / len(v)):.12g}")  # exp(log(420)) is 419.99999999999994
