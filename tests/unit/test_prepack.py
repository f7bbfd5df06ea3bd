"""Linear layers prepacked for oneDNN (shoal.infer.prepack): the same outputs as the model as trained, within
rounding, at every batch size; a model the packed layers would break, or silently change, keeps its plain layers;
and `auto` keeps them only where they were timed clearly faster."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shoal.config import ModelConfig
from shoal.data.datasets import DataSpec
from shoal.errors import ShoalError
from shoal.infer.prepack import PackedLinear, prepack_linears, sample_for, worth_it
from shoal.models import build_model

EXACT = 1e-5


def plain_and_packed(name: str, shape: tuple[int, ...], **kwargs) -> tuple[nn.Module, nn.Module, str]:
    plain = build_model(ModelConfig(name=name, **kwargs), shape, 10, seed=1).eval()
    packed = build_model(ModelConfig(name=name, **kwargs), shape, 10, seed=1).eval()
    return plain, packed, prepack_linears(packed, torch.randn(4, *shape), mode="on")


@pytest.mark.parametrize("name, shape, kwargs", [("mlp", (64,), {"hidden": [256, 256]}), ("cnn", (1, 28, 28), {})])
def test_packed_layers_give_the_outputs_of_the_model_as_trained(name, shape, kwargs):
    plain, packed, note = plain_and_packed(name, shape, **kwargs)
    linears = sum(type(m) is nn.Linear for m in plain.modules())
    assert note.startswith(f"prepacked {linears} linear layers"), note
    assert sum(type(m) is PackedLinear for m in packed.modules()) == linears and not any(type(m) is nn.Linear for m in packed.modules())
    torch.manual_seed(2)
    with torch.no_grad():
        for batch in (1, 2, 3, 7, 32):
            x = torch.randn(batch, *shape)
            want = plain(x)
            assert (packed(x) - want).abs().max().item() <= EXACT * max(1.0, want.abs().max().item())
            assert torch.equal(packed(x).argmax(1), want.argmax(1))


def test_a_packed_layer_takes_inputs_of_any_rank_and_keeps_a_missing_bias_missing():
    linear = nn.Linear(16, 8, bias=False).eval()
    packed = PackedLinear(linear)
    x = torch.randn(3, 5, 16).transpose(0, 1)  # 3-d and not contiguous
    with torch.no_grad():
        assert (packed(x) - linear(x)).abs().max().item() <= EXACT
    assert packed.bias is None


class ReadsItsWeight(nn.Module):
    """A forward pass that uses a layer's weight itself (x @ W.T): a oneDNN tensor has no such operations."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return x @ self.head.weight.T + self.head.bias


class ActsOnItsLayout(nn.Module):
    """A forward pass that runs and answers differently once packed: caught by the check, not served."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(x) + (1.0 if self.head.weight.is_mkldnn else 0.0)


@pytest.mark.parametrize("model_class, why", [(ReadsItsWeight, "NotImplementedError"), (ActsOnItsLayout, "differ")])
def test_a_model_the_packing_breaks_or_changes_keeps_its_plain_layers(model_class, why):
    torch.manual_seed(3)
    model = model_class().eval()
    weight, bias = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    x = torch.randn(5, 8)
    with torch.no_grad():
        before = model(x)
    note = prepack_linears(model, torch.randn(4, 8), mode="on")
    assert note.startswith("linear layers not prepacked") and why in note, note
    assert type(model.head) is nn.Linear and torch.equal(model.head.weight, weight) and torch.equal(model.head.bias, bias)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # the plain layers, bit for bit


def test_token_and_dict_inputs_stay_plain():
    assert sample_for(DataSpec((16,), 65, 10, 10, task="lm")) is None  # the gpt: its replica also generates
    assert sample_for(DataSpec((16,), 2, 10, 10, dict_inputs=True)) is None  # transformers-style columns
    assert sample_for(DataSpec((64,), 10, 10, 10), 4).shape == (4, 64)
    gpt = build_model(ModelConfig(name="gpt", layers=1, dim=16, heads=2), (8,), 65, seed=0).eval()
    assert prepack_linears(gpt, None).startswith("linear layers not prepacked")
    assert not any(type(m) is PackedLinear for m in gpt.modules())


def test_auto_keeps_the_packed_layers_only_for_a_clear_gain():
    assert worth_it(plain_s=1.0, packed_s=0.5) and worth_it(1.0, 0.9)
    assert not worth_it(1.0, 0.95) and not worth_it(1.0, 1.4)  # noise, or slower (small layers: oneDNN's conversions)


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_every_mode_serves_the_outputs_of_the_model_as_trained(mode):
    """Whatever auto decides on this machine (it times both), the outputs are the model's; off never touches it."""
    plain = build_model(ModelConfig(name="mlp", hidden=[64]), (16,), 10, seed=1).eval()
    model = build_model(ModelConfig(name="mlp", hidden=[64]), (16,), 10, seed=1).eval()
    note = prepack_linears(model, torch.randn(16, 16), mode=mode)
    packed = any(type(m) is PackedLinear for m in model.modules())
    assert packed == note.startswith("prepacked"), note
    assert (mode == "on") <= packed and not (mode == "off" and packed)
    if mode == "auto":
        assert "the plain layers' speed on batches of 1, 4, 16" in note, note  # what it measured, either way
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max().item() <= EXACT


def test_an_unknown_mode_is_refused():
    with pytest.raises(ShoalError, match="--prepack 'fast': choose one of auto, on, off"):
        prepack_linears(nn.Linear(2, 2), torch.randn(1, 2), mode="fast")
