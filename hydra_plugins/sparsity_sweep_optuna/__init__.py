"""Hydra instantiates sweepers only from the `hydra_plugins` namespace: this is ours (sweep/search.py)."""

from sweep import search


class OptunaSweeper(search.OptunaSweeper):
    """The Optuna frontier search; conf/hydra/sweeper/optuna.yaml names this class."""
