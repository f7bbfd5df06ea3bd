"""The built-in GPT, its tensor-parallel plan, meta-device init, and the Shakespeare data."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shoal.config import DataConfig
from shoal.data import describe, load
from shoal.models.gpt import build_gpt, lm_loss, padded_vocab
from shoal.parallel.layers import blocks, chain
from shoal.parallel.materialize import materialize


def small(**kw):
    return build_gpt(12, 40, dim=16, layers=2, heads=2, seed=3, **kw)


def test_causal_and_shapes():
    model = small()
    x = torch.randint(0, 40, (2, 12))
    y = x.clone()
    y[:, 8] = (y[:, 8] + 1) % 40
    a, b = model(x), model(y)
    assert a.shape == (2, 12, padded_vocab(40)) == (2, 12, 64)
    assert torch.allclose(a[:, :8], b[:, :8]) and not torch.allclose(a[:, 8:], b[:, 8:])


def test_chain_equals_forward():
    model = small()
    x = torch.randint(0, 40, (2, 12))
    h = x
    for name in chain(model):
        h = model.get_submodule(name)(h)
    assert torch.equal(h, model(x))
    assert blocks(model) == ["layers.0", "layers.1"]


def test_init_depends_on_names_and_seed_only():
    a, b = small(), small()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    other = build_gpt(12, 40, dim=16, layers=2, heads=2, seed=4)
    assert not torch.equal(other.layers["0"].attention.wq.weight, a.layers["0"].attention.wq.weight)


def test_meta_build_materializes_to_the_same_weights():
    eager = small(tie_head=True)
    meta = build_gpt(12, 40, dim=16, layers=2, heads=2, seed=3, tie_head=True, device="meta")
    assert meta.output.weight.is_meta
    materialize([meta], meta, torch.device("cpu"))
    for (k, p), q in zip(eager.state_dict().items(), meta.state_dict().values()):
        assert torch.equal(p, q), k
    assert meta.output.weight is meta.tok_embeddings.weight


def test_plan_names_real_modules():
    model = small()
    for sp in (True, False):
        for name in model.tensor_parallel_plan(sp):
            model.get_submodule(name)


def test_lm_loss_is_per_token_mean_summed_over_sequences():
    logits, targets = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    mean = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))
    assert torch.allclose(lm_loss(logits, targets) / 3, mean)


def test_shakespeare_windows():
    cfg = DataConfig(name="shakespeare", seq_len=32, limit_train=10, limit_eval=4)
    splits = load(cfg, 0)
    x, y = splits.train.tensors
    assert x.shape == y.shape == (10, 32) and x.dtype == torch.long
    assert torch.equal(x[0, 1:], y[0, :-1]) and torch.equal(x[1, 0], y[0, -1])
    spec = describe(cfg, 0)
    assert spec.task == "lm" and spec.input_shape == (32,) and spec.num_classes > 60 and len(splits.eval) == 4
