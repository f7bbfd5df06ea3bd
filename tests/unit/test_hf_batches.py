"""Transformers models and dict batches in one process: outputs as transformers returns them, the model's own loss,
padding that changes nothing, token ids that stay integers, Parquet columns, and the one-line refusals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import shoal
from shoal.config import DataConfig, ModelConfig
from shoal.data import load
from shoal.data.batches import IGNORE, DictDataset
from shoal.errors import ShoalError
from shoal.models import build_model
from shoal.train.losses import TokenLM, build_loss, scores_of

transformers = pytest.importorskip("transformers")
CFG = {"seed": 1, "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9}, "train": {"global_batch_size": 4, "steps": 2, "log_every": 1}}
VOCAB = 40


def gpt2(positions: int = 8):
    torch.manual_seed(3)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_positions=positions, n_embd=16, n_layer=2, n_head=2,
                                                                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False))


def bert():
    torch.manual_seed(3)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=8,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3))


def fit(model, rows, overrides=None):
    cfg = shoal.config.deep_merge(CFG, overrides or {})
    result = shoal.fit(model, rows, None, cfg, show_progress=False, summary=False)
    return result, {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def rows(n=8, seq=5, labels=False):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (n, seq), generator=g)
    out = [{"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long)} for i in range(n)]
    if labels:
        for i, r in enumerate(out):
            r["labels"] = torch.tensor(i % 3)
    return out


def test_padded_batches_with_attention_masks_equal_unpadded_ones():
    short = rows(seq=5)
    padded = [{"input_ids": torch.cat([r["input_ids"], torch.zeros(3, dtype=torch.long)]),
               "attention_mask": torch.cat([r["attention_mask"], torch.zeros(3, dtype=torch.long)])} for r in short]
    (a, pa_), (b, pb) = fit(gpt2(), short, {"data": {"task": "lm"}}), fit(gpt2(), padded, {"data": {"task": "lm"}})
    assert abs(a.train_loss - b.train_loss) < 1e-5
    for key in pa_:
        assert (pa_[key] - pb[key]).abs().max() < 1e-5, key


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_the_models_own_loss_equals_shoals(kind):
    make, data, task = (gpt2, rows(), "lm") if kind == "gpt2" else (bert, rows(labels=True), "classify")
    (a, pa_), (b, pb) = fit(make(), data, {"data": {"task": task}}), fit(make(), data, {"data": {"task": task}, "train": {"loss": "model"}})
    assert abs(a.train_loss - b.train_loss) < 1e-5
    for key in pa_:
        assert (pa_[key] - pb[key]).abs().max() < 1e-5, key


def test_lm_targets_are_shifted_and_padding_is_not_scored():
    ids = torch.tensor([[5, 6, 7, 0], [1, 2, 3, 4]])
    ds = DictDataset({"input_ids": ids, "attention_mask": (ids > 0).long()}, task="lm")
    assert ds.target.tolist() == [[6, 7, IGNORE, IGNORE], [2, 3, 4, IGNORE]]
    assert TokenLM().units(ds.target) == 5


def test_token_ids_keep_their_integer_dtype(tmp_path):
    g = np.random.default_rng(0)
    x = g.integers(0, VOCAB, (20, 6)).astype(np.int32)
    np.savez(tmp_path / "xy.npz", x=x, y=np.roll(x, -1, axis=1))
    np.savez(tmp_path / "named.npz", input_ids=x, attention_mask=np.ones_like(x))
    xy = load(DataConfig(name="npz", path=str(tmp_path / "xy.npz"), task="lm"), 0)
    assert xy.train.tensors[0].dtype == torch.long and xy.spec.task == "lm"
    named = load(DataConfig(name="npz", path=str(tmp_path / "named.npz")), 0)
    assert named.spec.dict_inputs and named.spec.task == "lm" and named.train.columns["input_ids"].dtype == torch.long


def test_parquet_list_columns_become_padded_dict_batches(tmp_path):
    seqs = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [1, 2]] * 5
    pq.write_table(pa.table({"input_ids": seqs, "labels": [i % 2 for i in range(20)]}), tmp_path / "t.parquet")
    splits = load(DataConfig(name="parquet", path=str(tmp_path / "t.parquet"), eval_fraction=0.25, read="all"), 0)
    ids, mask = splits.train.columns["input_ids"], splits.train.columns["attention_mask"]
    assert ids.shape[1] == 4 and ids.dtype == torch.long
    assert (mask.sum(1) == (ids > 0).sum(1)).all()
    assert splits.spec.task == "classify" and splits.spec.num_classes == 2


def test_outputs_as_transformers_returns_them():
    logits = torch.randn(2, 3)
    assert scores_of({"logits": logits}) is logits and scores_of((logits, None)) is logits
    assert scores_of(transformers.modeling_outputs.SequenceClassifierOutput(logits=logits)) is logits
    with pytest.raises(ShoalError, match="train.output_key: the model's output has no 'scores'"):
        scores_of({"logits": logits}, "scores")


def test_losses_by_name():
    assert build_loss("mse", "classify").classes is False
    with pytest.raises(ShoalError, match="train.loss: 'nope' is neither"):
        build_loss("nope", "classify")


def test_hf_models_from_config_keys_and_their_refusals():
    model = build_model(ModelConfig(name="hf:gpt2", kwargs={"n_layer": 1, "n_embd": 8, "n_head": 2}), (6,), 30, 0)
    assert model.config.vocab_size == 30 and model.config.n_positions == 6 and model.config.resid_pdrop == 0.0
    clf = build_model(ModelConfig(name="hf:bert", kwargs={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                          "intermediate_size": 16}), (6,), 4, 0)
    assert clf.config.num_labels == 4
    with pytest.raises(ShoalError, match="model.name: 'hf:NoSuchModel' is not a transformers model class"):
        build_model(ModelConfig(name="hf:NoSuchModel"), (6,), 4, 0)
    with pytest.raises(ShoalError, match="model.kwargs: GPT2Config has no key 'n_layers'"):
        build_model(ModelConfig(name="hf:gpt2", kwargs={"n_layers": 1}), (6,), 4, 0)


def test_token_data_in_x_and_y_trains_the_builtin_gpt_with_the_token_level_loss(tmp_path):
    from shoal.job.worker import run_job

    g = np.random.default_rng(1)
    x = g.integers(0, 30, (24, 8))
    y = np.roll(x, -1, axis=1)
    y[:, -1] = IGNORE
    np.savez(tmp_path / "lm.npz", x=x, y=y)
    cfg = shoal.JobConfig.model_validate({"model": {"name": "gpt", "layers": 1, "dim": 16, "heads": 2},
                                          "data": {"name": "npz", "path": str(tmp_path / "lm.npz"), "task": "lm"},
                                          "train": {"global_batch_size": 4, "steps": 2}, "log": {"monitors": []}})
    result = run_job(cfg, None)
    assert result["eval"]["perplexity"] == pytest.approx(np.exp(result["eval"]["loss"]))


def test_mse_and_a_loss_function_of_yours_by_name():
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = x @ torch.randn(4, 1)
    quiet = {"show_progress": False, "summary": False}
    reg = shoal.fit(torch.nn.Linear(4, 1), TensorDataset(x, y), TensorDataset(x[:8], y[:8]),
                    {"train": {"global_batch_size": 8, "steps": 2, "loss": "mse"}}, **quiet)
    assert set(reg.eval) == {"loss"}
    labels = (y[:, 0] > 0).long()
    cfg = {"seed": 2, "train": {"global_batch_size": 8, "steps": 2}}
    torch.manual_seed(1)
    mine = shoal.fit(torch.nn.Linear(4, 2), TensorDataset(x, labels), None,
                     shoal.config.deep_merge(cfg, {"train": {"loss": "torch.nn.functional:cross_entropy"}}), **quiet)
    torch.manual_seed(1)
    default = shoal.fit(torch.nn.Linear(4, 2), TensorDataset(x, labels), None, cfg, **quiet)
    assert mine.train_loss == pytest.approx(default.train_loss, abs=1e-6)
