"""Shared fixtures: a small real corpus, a private MLflow store, and a runner for `python -m sweep`."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SMALL_CORPUS = Path(sysconfig.get_paths()["stdlib"]) / "email"  # ~40 real Python files

# A model and a run small enough for a test: seconds on one core.
TINY = [
    "model.base_width=16", "model.d_head=8", "model.n_ctx=64",
    "train.steps=30", "train.batch_size=4", "train.log_every=5", "train.eval_every=10",
    "train.eval_windows=8", "train.final_eval_windows=16",
    "tasks.n_train=4", "tasks.n_heldout=4", "prune.steps=10", "prune.mean_windows=8",
    f"data.source={SMALL_CORPUS}", "data.val_frac=0.2", "data.tokenizer=bytes",  # the BPE has its own tests
]


def tracking_config(uri: str, **changes) -> DictConfig:
    """{tracking: conf/tracking/sqlite.yaml on the store `uri`}: what a JobRun opened outside a sweep needs."""
    tracking = OmegaConf.load(PROJECT_ROOT / "conf" / "tracking" / "sqlite.yaml")
    tracking.uri = uri
    tracking.update(changes)
    return OmegaConf.create({"tracking": OmegaConf.to_container(tracking)})


class Sweep:
    """Runs the real entry point against a private store and cache."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.db = tmp / "mlflow.db"
        self.uri = f"sqlite:///{self.db}"

    @property
    def client(self) -> MlflowClient:
        """Made on use: a client creates the store, and some tests check that none exists."""
        return MlflowClient(tracking_uri=self.uri)

    def args(self, *overrides: str, tiny: bool = True) -> list[str]:
        return [*(TINY if tiny else []), f"data.cache_dir={self.tmp / 'cache'}", f"tracking.uri={self.uri}",
                f"hydra.run.dir={self.tmp / 'out'}", f"hydra.sweep.dir={self.tmp / 'multirun'}", *overrides]

    def run(self, *overrides: str, multirun: bool = False, tiny: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "sweep", *(["-m"] if multirun else []), *self.args(*overrides, tiny=tiny)]
        return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)

    def runs(self, experiment: str = "frontier"):
        exp = self.client.get_experiment_by_name(experiment)
        return [] if exp is None else self.client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture
def sweep(tmp_path: Path) -> Sweep:
    return Sweep(tmp_path)
