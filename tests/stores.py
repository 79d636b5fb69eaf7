"""Real SQLite MLflow stores filled through the MLflow client, with values a test chooses (test_analysis,
test_findings): job runs as the sweep writes them, per-task circuit metrics by both measures."""

from __future__ import annotations

import math
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from analysis.__main__ import main
from sweep import names

BIGRAM, UNIGRAM = 2.5, 3.4


class Store:
    """A real SQLite store with an experiment `frontier`, written through the MLflow client."""

    def __init__(self, folder: Path):
        self.db = folder / "mlflow.db"
        self.uri = f"sqlite:///{self.db}"
        self.client = MlflowClient(self.uri)
        self.experiment = self.client.create_experiment("frontier", artifact_location=(folder / "artifacts").as_uri())
        self.clock = 1_700_000_000_000

    def _tick(self) -> int:
        self.clock += 1000
        return self.clock

    def parent(self) -> str:
        run = self.client.create_run(self.experiment, start_time=self._tick(), tags={names.TAG_KIND: names.KIND_PARENT})
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def job(self, parent, width, density, seed=0, loss=None, tasks=None, status="finished", extra=None,
            tags=None, config_hash=None, final="FINISHED", params=None, f80=None, seed_offset=None,
            nonzeros=None) -> str:
        """One job run. `tasks` maps a task to its edges at the target loss (None: not solved); `f80` maps a
        task to its `edges_at_f80` (None: not measurable), whether or not `tasks` names it. `seed` is the
        seed the run ran with; `seed_offset`, when given, is logged beside it (its seed set), as the sweep
        does. The nonzero count is 1000 x width x density unless `nonzeros` says otherwise."""
        run_tags = {names.TAG_KIND: names.KIND_JOB, names.TAG_PARENT: parent, names.TAG_STATUS: status,
                    names.TAG_CONFIG_HASH: config_hash or f"w{width}-d{density}-s{seed}", **(tags or {})}
        run_id = self.client.create_run(self.experiment, start_time=self._tick(), tags=run_tags).info.run_id
        params = {"model.width_mult": width, "model.base_width": 32, "model.d_model": 32 * width,
                  "sparsity.density": density, "seed": seed,
                  **({} if seed_offset is None else {"seed_offset": seed_offset}), **(params or {})}
        metrics = {}
        if loss is not None:
            metrics.update({names.CAPABILITY_VAL_LOSS: loss, names.CAPABILITY_BIGRAM: BIGRAM,
                            names.CAPABILITY_UNIGRAM: UNIGRAM,
                            names.MODEL_NONZERO_PARAMS: 1000 * width * density if nonzeros is None else nonzeros,
                            names.COLLAPSE_DEAD_BY_WEIGHT: 0.0, names.COLLAPSE_DEAD_BY_ACTIVITY: 0.0,
                            names.COLLAPSE_DEAD_LAYERS: 0.0})
        if tasks is not None:
            solved = [e for e in tasks.values() if e is not None]
            metrics[names.EDGES_GEOMEAN] = math.exp(sum(map(math.log, solved)) / len(solved)) if solved else math.nan
            metrics[names.TASKS_SOLVED_FRAC] = len(solved) / len(tasks)
            for task, edges in {**tasks, "control": None}.items():
                metrics[names.circuit_metric(task, "edges")] = math.nan if edges is None else edges
                metrics[names.circuit_metric(task, "solved")] = float(edges is not None)
        for task, edges in (f80 or {}).items():
            metrics[names.circuit_metric(task, "edges_at_f80")] = math.nan if edges is None else edges
        metrics.update(extra or {})
        self.client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                              params=[Param(k, str(v)) for k, v in params.items()])
        self.client.set_terminated(run_id, final)
        return run_id


def analyse(store: Store, out: Path, *args: str) -> int:
    """`python -m analysis frontier` on the store's experiment, in-process."""
    return main(["frontier", "--experiment", "frontier", "--tracking-uri", store.uri, "--out", str(out), *args])
