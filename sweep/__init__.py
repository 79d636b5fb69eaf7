"""sparsity-sweep: train weight-sparse transformers over a grid and log them to MLflow."""

import os

from omegaconf import OmegaConf

from sweep.paths import PROJECT_ROOT

# `${project_root:}` in conf/ is the checkout's root, so stores and caches have absolute paths.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
# Re-prune, task-losses and the analysis download one small artifact at a time: MLflow's bar per file
# buried our own progress bar.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
