"""How a grid point is named: in the summary, in run names, on progress bars."""

from __future__ import annotations

from omegaconf import DictConfig

WHERE_KEYS = ("tracking.", "hydra.", "data.cache_dir")  # where a job logs or writes, not what it is
AXIS_KEYS = ("model.width_mult=", "sparsity.density=", "seed=", "experiment=")


def describe_point(overrides) -> str:
    """The overrides that make a point what it is."""
    return " ".join(o for o in overrides if not o.startswith(WHERE_KEYS)) or "(defaults)"


def point_label(cfg: DictConfig, overrides=()) -> str:
    """Short name such as `w2-d0.06-s0 lr=0.005`: the grid axes, then any other override."""
    extras = [_short(o) for o in overrides if "=" in o and not o.startswith(WHERE_KEYS + AXIS_KEYS)]
    return " ".join([f"w{cfg.model.width_mult}-d{cfg.sparsity.density:g}-s{cfg.seed}", *extras])


def _short(override: str) -> str:
    """`train.lr=0.005` -> `lr=0.005`: the last part of the key, the value untouched."""
    key, value = override.split("=", 1)
    return f"{key.rsplit('.', 1)[-1]}={value}"
