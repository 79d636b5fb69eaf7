"""A grid point: its identity (what a job computes, wherever it runs) and its one label format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep.corpus import source_hash  # reads a corpus's files once per process and source

# Keys that say where or how a job runs or logs, not what it computes: out of a point's identity,
# its label and the analysis's comparison of settings. Paths are here; what they point to is not
# (the corpus and the task templates count by content, below).
WHERE_KEYS = ("tracking", "hydra", "train.device", "train.threads", "data.cache_dir", "tasks.template_dir")
AXIS_KEYS = ("model.width_mult", "sparsity.density", "seed", "seed_offset")
DERIVED_KEYS = ("model.d_model",)  # params a run logs that follow from others (`run_params`): never a variant
CORPUS_KEY = "data.corpus"  # in the identity: the content hash of the files data.source reads
TEMPLATES_KEY = "tasks.templates"  # in the identity: the content hash of the YAML tasks in tasks.template_dir


def is_where_key(key: str) -> bool:
    """`tracking.uri`, `hydra.job.num`, `data.cache_dir`, ... (an override's leading + or ~ ignored)."""
    key = key.lstrip("+~")
    return any(key == w or key.startswith(w + ".") for w in WHERE_KEYS)


def flatten(cfg: DictConfig) -> dict[str, object]:
    """Resolved config as {dotted.key: value}."""
    out: dict[str, object] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def run_seed(cfg) -> int:
    """The seed a job trains and prunes with: `seed` shifted by `seed_offset` (which shifts every seed of a
    grid: `seed_offset=3` runs seeds 3-5 where the grid says 0-2)."""
    return int(cfg.seed) + int(cfg.get("seed_offset", 0) or 0)


def identity(cfg: DictConfig) -> dict[str, object]:
    """What a job computes: the resolved config without its where keys, with the corpus and the task
    templates by content, so that two checkouts at different paths (or another cache folder) agree; the
    seed is the one it runs with (`seed=3` and `seed=0 seed_offset=3` are one point)."""
    flat = {k: v for k, v in flatten(cfg).items() if not is_where_key(k)}
    if "seed" in flat:
        flat.pop("seed_offset", None)
        flat["seed"] = run_seed(cfg)
    if "data.source" in flat:
        flat[CORPUS_KEY] = source_hash(str(flat.pop("data.source")))
    if (template_dir := OmegaConf.select(cfg, "tasks.template_dir")) is not None:
        flat[TEMPLATES_KEY] = templates_hash(Path(template_dir))
    return flat


def run_params(cfg: DictConfig) -> dict[str, object]:
    """A run's MLflow params: the resolved config without machine paths (a folder, a SQLite store's file;
    config.yaml keeps them), the corpus and the task templates by content hash, and `model.d_model`."""
    params = {k: v for k, v in flatten(cfg).items() if not _is_machine_path(v)}
    params.update({k: v for k, v in identity(cfg).items() if k in (CORPUS_KEY, TEMPLATES_KEY)})
    if "seed" in params:  # the seed it ran with; seed_offset stays beside it (the analysis's seed set)
        params["seed"] = run_seed(cfg)
    if OmegaConf.select(cfg, "model") is not None:
        params["model.d_model"] = d_model(cfg.model)
    return params


def _is_machine_path(value) -> bool:
    return isinstance(value, str) and value.startswith(("/", "~", "sqlite:///", "file:"))


def d_model(model_cfg) -> int:
    """The residual width: model.base_width x model.width_mult."""
    return int(model_cfg.base_width * model_cfg.width_mult)


def config_hash(cfg: DictConfig) -> str:
    """The point's identity as a short hash: equal hash, same point."""
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def templates_hash(template_dir: Path) -> str:
    """Content hash of the YAML task files of a folder (names and contents); `none` without any."""
    files = sorted(template_dir.glob("*.yaml")) if template_dir.is_dir() else []
    if not files:
        return "none"
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def describe_point(overrides) -> str:
    """The overrides that make a point what it is."""
    return " ".join(o for o in overrides if not is_where_key(o.split("=", 1)[0])) or "(defaults)"


def label(width, density, seed=None) -> str:
    """The one label of a point: `w2-d0.06-s0`, or `w2-d0.06` for a point over its seeds."""
    base = f"w{float(width):g}-d{float(density):g}"
    return base if seed is None else f"{base}-s{int(seed)}"


def point_label(cfg: DictConfig, overrides=(), with_seed: bool = True) -> str:
    """Short name such as `w2-d0.06-s0 lr=0.005`: the grid axes, then any other override; without the
    seed (`w2-d0.06 lr=0.005`) it names the point over its seeds."""
    extras = [_short(o) for o in overrides if "=" in o and not is_where_key(o.split("=", 1)[0])
              and o.split("=", 1)[0].lstrip("+~") not in (*AXIS_KEYS, "experiment")]
    seed = run_seed(cfg) if with_seed else None
    return " ".join([label(cfg.model.width_mult, cfg.sparsity.density, seed), *extras])


def _short(override: str) -> str:
    """`train.lr=0.005` -> `lr=0.005`: the last part of the key, the value untouched."""
    key, value = override.split("=", 1)
    return f"{key.rsplit('.', 1)[-1]}={value}"
