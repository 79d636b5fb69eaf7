"""The corpus: a stable split by path hash, reference losses, the cache."""

import math
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf

from sweep.corpus import find_sources, read_sources
from sweep.science.data import is_validation, load_corpus, reference_losses

from conftest import SMALL_CORPUS


def data_cfg(source, val_frac=0.2, split_seed=0):
    return OmegaConf.create(dict(source=str(source), tokenizer="bytes", val_frac=val_frac, split_seed=split_seed))


def test_split_does_not_depend_on_file_order(tmp_path):
    names = [f"pkg{i % 3}/mod_{i}.py" for i in range(60)]
    for order, root in ((names, tmp_path / "a"), (names[::-1], tmp_path / "b")):
        for name in order:  # files created in opposite orders
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(f"x = {name!r}\n")
    a, b = load_corpus(data_cfg(tmp_path / "a"), tmp_path / "ca"), load_corpus(data_cfg(tmp_path / "b"), tmp_path / "cb")
    assert find_sources(tmp_path / "a") == find_sources(tmp_path / "b")
    assert a.corpus_hash == b.corpus_hash
    assert np.array_equal(a.val, b.val) and np.array_equal(a.train, b.train)


def test_split_is_a_seeded_hash_of_the_path():
    paths = [f"lib/m{i}.py" for i in range(2000)]
    split = [is_validation(p, 0, 0.05) for p in paths]
    assert split == [is_validation(p, 0, 0.05) for p in paths]
    assert 0.03 < sum(split) / len(paths) < 0.07
    assert split != [is_validation(p, 1, 0.05) for p in paths]


def test_tests_and_site_packages_are_excluded(tmp_path):
    for rel in ("a.py", "test/t.py", "tests/t.py", "site-packages/s.py", "pkg/b.py", "pkg/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("pass\n")
    assert find_sources(tmp_path) == ["a.py", "pkg/b.py"]


def test_site_packages_adds_the_environment_deduplicated_by_content():
    stdlib, everything = read_sources("stdlib"), read_sources("site-packages")
    assert set(stdlib.values()) <= set(everything.values())  # the standard library is all in
    names_here = set(everything)
    assert "site-packages/omegaconf/__init__.py" in names_here and "stdlib/json/__init__.py" in names_here
    assert len(set(everything.values())) == len(everything)  # no content twice
    assert sum(map(len, everything.values())) > 5 * sum(map(len, stdlib.values()))
    assert not any("/tests/" in name or "/test/" in name for name in names_here)


def test_reference_losses_of_known_streams():
    alternating = np.array([0, 1] * 500, dtype=np.uint8)
    unigram, bigram = reference_losses(alternating, 256)
    assert unigram == pytest.approx(math.log(2)) and bigram == pytest.approx(0.0, abs=1e-9)
    uniform = np.random.default_rng(0).integers(0, 4, 200_000).astype(np.uint8)
    unigram, bigram = reference_losses(uniform, 256)
    assert unigram == pytest.approx(math.log(4), abs=1e-3) and bigram == pytest.approx(math.log(4), abs=1e-2)


def test_corpus_is_cached_by_content_hash(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(SMALL_CORPUS, source)
    first = load_corpus(data_cfg(source), tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_corpus(data_cfg(source), tmp_path / "cache")
    assert again.corpus_hash == first.corpus_hash and np.array_equal(again.train, first.train)
    assert again.bigram_loss == first.bigram_loss
    victim = sorted(source.glob("*.py"))[0]
    victim.write_text(victim.read_text() + "\n# edited\n")
    changed = load_corpus(data_cfg(source), tmp_path / "cache")
    assert changed.corpus_hash != first.corpus_hash
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
