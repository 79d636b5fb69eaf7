"""Hydra instantiates sweepers and launchers only from the `hydra_plugins` namespace: ours, defined in sweep/."""

from sweep.orchestration import launchers, search, sweepers


class GridSweeper(sweepers.GridSweeper):
    """The grid sweeper with resume (conf/hydra/sweeper/grid.yaml)."""


class OptunaSweeper(search.OptunaSweeper):
    """The Optuna frontier search (conf/hydra/sweeper/optuna.yaml)."""


class SlurmLauncher(launchers.SlurmLauncher):
    """SLURM through submitit, with failed jobs recorded instead of raised (conf/hydra/launcher/slurm.yaml)."""


class LocalLauncher(launchers.LocalLauncher):
    """Local worker processes through joblib, whose workers stop with the launching process and whose killed
    workers fail their jobs instead of the sweep (conf/hydra/launcher/local.yaml)."""
