"""Self-describing checkpoints: the model rebuilds from the file alone, loads with weights_only=True,
and a corrupt or mismatched file is a ConfigError naming the run, never a traceback from torch."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from sweep.science import checkpoint
from sweep.errors import ConfigError
from sweep.points import config_hash
from tests.conftest import PROJECT_ROOT, SMALL_CORPUS


def config(*overrides: str):
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"data.source={SMALL_CORPUS}", "data.tokenizer=bytes", "model.d_head=8",
                                            "model.n_ctx=32", *overrides])


def test_a_checkpoint_rebuilds_its_model_without_the_config(tmp_path):
    cfg = config("model.width_mult=2", "model.bigram_table=true", "model.pos_emb=none")
    torch.manual_seed(0)
    model = checkpoint.build_model(cfg)
    path = tmp_path / "model.pt"
    checkpoint.save(path, model, cfg, "bytes", step=30)
    loaded, meta = checkpoint.load(path, "run1")  # no config: the shape comes from the file
    assert meta == {"format": checkpoint.FORMAT, "shape": meta["shape"], "tokenizer_hash": "bytes", "step": 30,
                    "config_hash": config_hash(cfg)}
    assert loaded.shape == model.shape and loaded.shape.d_model == 64 and loaded.bigram is not None
    tokens = torch.randint(0, 256, (2, 16))
    assert torch.equal(loaded.eval()(tokens), model.eval()(tokens))
    stored = torch.load(path, weights_only=True)  # plain tensors and built-in types only
    assert set(stored) == set(checkpoint.FIELDS)


def test_a_bare_state_dict_of_an_older_run_loads_with_its_config(tmp_path):
    cfg = config()
    model = checkpoint.build_model(cfg)
    torch.save(model.state_dict(), tmp_path / "old.pt")
    loaded, meta = checkpoint.load(tmp_path / "old.pt", "run0", cfg)
    assert meta == {"format": 0} and loaded.shape == model.shape
    with pytest.raises(ConfigError, match="RUN='run0'.*no model shape"):
        checkpoint.load(tmp_path / "old.pt", "run0")  # and without its config there is nothing to build


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_tokenizer", "wrong_weights", "not_a_model"])
def test_a_corrupt_or_mismatched_checkpoint_is_one_config_error(tmp_path, damage):
    cfg = config()
    model = checkpoint.build_model(cfg)
    path = tmp_path / "model.pt"
    checkpoint.save(path, model, cfg, "bytes", step=30)
    expected = {"garbage": "not a checkpoint", "truncated": "not a checkpoint", "other_tokenizer": "tokenizer bytes",
                "wrong_weights": "weights do not fit", "not_a_model": "no model shape"}[damage]
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "wrong_weights":
        stored = torch.load(path, weights_only=True)
        stored["shape"]["d_model"] = 64  # the file says 64 wide, its weights are 32 wide
        torch.save(stored, path)
    elif damage == "not_a_model":
        torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(ConfigError, match=f"RUN='r'.*checkpoint cannot be loaded.*{expected}"):
        checkpoint.load(path, "r", tokenizer_hash="bpe-1234" if damage == "other_tokenizer" else None)
