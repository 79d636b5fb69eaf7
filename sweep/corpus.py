"""The corpus's files: which `.py` files a `data.source` reads, and their content hash (the corpus's
identity: the same files at another path are the same corpus). Imports neither torch nor MLflow."""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from pathlib import Path

from sweep.errors import ConfigError

EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
SITE_PACKAGES = "site-packages"  # the standard library and every .py of the environment's site-packages


def source_roots(source: str) -> dict[str, Path]:
    """The directories a source reads, by the prefix their files' names get (none for a single root):
    `stdlib` is the running interpreter's standard library, `site-packages` that library and the
    environment's site-packages, anything else a directory."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if source == "stdlib":
        return {"": stdlib}
    if source == SITE_PACKAGES:
        packages = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
        return {"stdlib/": stdlib} | {f"site-packages{i or ''}/": p for i, p in enumerate(sorted(packages))}
    return {"": Path(source).expanduser()}


def find_sources(root: Path) -> list[str]:
    """Relative paths of the `.py` files under root, sorted, skipping tests and site-packages."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        rel_dir = Path(dirpath).relative_to(root)
        found += [(rel_dir / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(found)


def read_sources(source: str) -> dict[str, bytes]:
    """Every `.py` file of a source by its name, in name order. Under `site-packages` a file whose
    content an earlier one already has is left out (packages vendor the same modules many times);
    the single-directory sources are read whole, so their corpus hashes stay those of earlier runs."""
    files, seen = {}, set()
    for prefix, root in source_roots(source).items():
        for rel in find_sources(root):
            content = (root / rel).read_bytes()
            digest = hashlib.sha256(content).digest()
            if source != SITE_PACKAGES or digest not in seen:
                seen.add(digest)
                files[prefix + rel] = content
    return files


def check_source(source: str) -> None:
    """Fail with a clear message if the corpus directory is missing or holds no `.py` files."""
    allowed = f"must be 'stdlib', '{SITE_PACKAGES}' or an existing directory of .py files"
    for root in source_roots(source).values():
        if not root.is_dir():
            raise ConfigError("data.source", source, allowed)
        if not find_sources(root):
            raise ConfigError("data.source", source, f"directory {root} holds no .py files")


def corpus_hash(files: dict[str, bytes]) -> str:
    """Content hash of a corpus: every file's name (relative to its source) and content."""
    h = hashlib.sha256()
    for rel, content in files.items():
        h.update(rel.encode() + b"\0" + hashlib.sha256(content).digest())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def source_hash(source: str) -> str:
    """The content hash of what a `data.source` reads now (read once per process and source)."""
    return corpus_hash(read_sources(source))
