"""Model options: the bigram table (dense, outside sparsity, counts, weight decay and circuits) and
position-free attention; a real job trains and prunes such a model."""

import pytest
import torch
from omegaconf import OmegaConf

from sweep import names
from sweep.circuits.circuit import circuit_edges
from sweep.science.checkpoint import build_model
from sweep.science.model import GPT, ModelShape
from sweep.science.sparsity import WeightSparsifier
from sweep.science.train import build_optimizer

SHAPE = dict(vocab_size=256, d_model=32, n_layer=2, d_head=16, d_mlp=128, n_ctx=16)


def test_the_bigram_table_is_added_to_the_logits_of_the_current_token():
    torch.manual_seed(0)
    plain = GPT(ModelShape(**SHAPE)).eval()
    table = GPT(ModelShape(**SHAPE, bigram_table=True)).eval()
    table.load_state_dict({**plain.state_dict(), "bigram": torch.zeros(256, 256)})
    table.bigram.data[7, 9] = 5.0
    idx = torch.tensor([[1, 7, 7, 3]])
    with torch.no_grad():
        delta = table(idx) - plain(idx)
    assert delta[0, 1, 9] == pytest.approx(5.0) and delta[0, 2, 9] == pytest.approx(5.0)
    delta[0, 1:3, 9] = 0
    assert torch.all(delta.abs() < 1e-6)


def test_the_bigram_table_is_never_sparsified_counted_or_decayed():
    torch.manual_seed(0)
    model = GPT(ModelShape(**SHAPE, bigram_table=True))
    without = GPT(ModelShape(**SHAPE))
    assert model.count_params()[0] == without.count_params()[0]  # left out of total and nonzero counts
    cfg = OmegaConf.load("conf/sparsity/topk.yaml")
    sparsifier = WeightSparsifier(model.hidden_matrices(), model.embedding_matrices(), 0.1, 1, cfg)
    torch.nn.init.normal_(model.bigram)
    sparsifier.project(1.0)
    assert int(torch.count_nonzero(model.bigram)) == 256 * 256
    assert model.count_params()[1] < model.count_params()[0]  # the matrices were sparsified
    optimizer = build_optimizer(model, OmegaConf.create({"weight_decay": 0.1, "lr": 1e-3, "betas": [0.9, 0.95],
                                                         "adam_eps": 1e-8}))
    (decayed,) = [g for g in optimizer.param_groups if g["weight_decay"] > 0]
    assert all(p is not model.bigram for p in decayed["params"])
    edges = circuit_edges(model, ["layer.0.attn.in[0]", "layer.1.mlp.out[0]"], {1, 2}, {3})
    assert all("bigram" not in f"{a} {b}" for a, b, _ in edges)


def test_a_position_free_model_has_no_position_embedding():
    model = GPT(ModelShape(**SHAPE, pos_emb="none"))
    assert model.pos_emb is None and "pos_emb.weight" not in model.embedding_matrices()
    assert "pos_emb.weight" not in model.state_dict()


def test_a_position_free_model_with_a_bigram_table_trains_and_prunes(sweep, tmp_path):
    result = sweep.run("model.pos_emb=none", "model.bigram_table=true", "tasks.names=[else_elif]",
                       "prune.target_loss=0.7")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [r for r in sweep.runs() if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.pos_emb"] == "none" and run.data.params["model.bigram_table"] == "True"
    metrics = run.data.metrics
    for key in ("full_loss", "empty_loss", "solved", "nodes"):
        assert names.circuit_metric("else_elif", key) in metrics
    # the logged counts are those of the same model without the table (its vocab x vocab entries are dense)
    cfg = OmegaConf.load(sweep.client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
    cfg.model.bigram_table = False
    assert metrics[names.MODEL_TOTAL_PARAMS] == build_model(cfg).count_params()[0]
