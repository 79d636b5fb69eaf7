"""sparsity-sweep: train weight-sparse transformers over a grid and log them to MLflow."""

from omegaconf import OmegaConf

from sweep.tracking import PROJECT_ROOT

# `${project_root:}` in conf/ is the checkout's root, so stores and caches have absolute paths.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
