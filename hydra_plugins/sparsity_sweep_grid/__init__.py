"""Hydra instantiates sweepers only from the `hydra_plugins` namespace: this is ours (sweep/sweepers.py)."""

from sweep import sweepers


class GridSweeper(sweepers.GridSweeper):
    """The grid sweeper with resume; conf/hydra/sweeper/grid.yaml names this class."""
