"""`hf:` models' initial values tensor by tensor (models/hf_init.py): an ordinary build and a meta build materialized
(parallel/materialize.py) are bit-identical, follow transformers' own initialisation, and a tensor transformers'
init does not set is refused on the meta device with one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shoal.config import ModelConfig
from shoal.errors import ShoalError
from shoal.models import build_model
from shoal.models.hf_init import HFInit, attach
from shoal.parallel.materialize import materialize

transformers = pytest.importorskip("transformers")
MODELS = {"gpt2": ({"n_layer": 2, "n_embd": 32, "n_head": 4}, 64),
          "bert": ({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}, 3),
          "llama": ({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
                    64)}


def build(kind: str, seed: int = 7, meta: bool = False) -> nn.Module:
    kwargs, classes = MODELS[kind]
    with torch.device("meta") if meta else torch.device("cpu"):
        return build_model(ModelConfig(name=f"hf:{kind}", kwargs=kwargs), (8,), classes, seed)


@pytest.mark.parametrize("kind", MODELS)
def test_a_meta_build_materializes_the_ordinary_build_bit_for_bit(kind):
    plain, meta = build(kind), build(kind, meta=True)
    assert all(t.is_meta for t in meta.state_dict().values())
    materialize([meta], meta, torch.device("cpu"))
    a, b = plain.state_dict(), meta.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [k for k, v in plain.named_buffers() if not torch.equal(v, dict(meta.named_buffers())[k])] == []  # non-persistent too


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_the_values_follow_transformers_own_initialisation(kind):
    ours = build(kind)
    torch.manual_seed(7)
    theirs = type(ours)(ours.config)
    for name, b in theirs.named_buffers():  # position ids, rotary tables: exactly transformers'
        assert torch.equal(dict(ours.named_buffers())[name], b), name
    for name, p in theirs.named_parameters():
        q = dict(ours.named_parameters())[name]
        if p.std() == 0 or p.numel() < 512:  # ones, zeros (norms, biases), or too few numbers for a spread
            assert torch.equal(q, p) if p.std() == 0 else abs(float(q.mean() - p.mean())) < 0.01, name
        else:
            assert abs(float(q.std() / p.std()) - 1) < 0.15 and abs(float(q.mean() - p.mean())) < 0.005, name
            assert not torch.equal(q, p)  # drawn under its own seed


@torch.no_grad()
def test_gpt2_keeps_its_scaled_residual_projections():
    model = build("gpt2")
    std = model.config.initializer_range
    assert abs(float(model.transformer.h[0].attn.c_proj.weight.std()) / (std / 2) - 1) < 0.15  # 1/sqrt(2 * n_layer)
    assert abs(float(model.transformer.h[0].attn.c_attn.weight.std()) / std - 1) < 0.15


def test_the_seed_and_the_name_decide():
    a, b, c = build("gpt2", 7), build("gpt2", 7), build("gpt2", 8)
    w = "transformer.h.0.mlp.c_fc.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w]) and not torch.equal(a.state_dict()[w], c.state_dict()[w])
    assert not torch.equal(a.transformer.h[0].mlp.c_fc.weight, a.transformer.h[1].mlp.c_fc.weight)


class WithExtra(transformers.GPT2LMHeadModel):
    """A parameter made in the constructor after transformers' init ran: nothing sets it from its name alone."""

    def __init__(self, config):
        super().__init__(config)
        self.extra = nn.Parameter(torch.full((3,), 2.0))


def test_a_tensor_only_the_constructor_sets_is_kept_or_refused_on_meta():
    config = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    model = attach(WithExtra(config), WithExtra, config, seed=3)
    assert torch.equal(model.extra, torch.full((3,), 2.0))  # ordinary build: the constructor's value stays
    with pytest.raises(ShoalError) as err:
        HFInit(WithExtra, config, 3).init_parameter("extra", torch.Size([3]))
    assert "\n" not in str(err.value) and "parallel.meta_init" in str(err.value) and "extra" in str(err.value)
