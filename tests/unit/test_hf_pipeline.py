"""A transformers model's pipeline chain (parallel/hf_pipeline.py) run layer by layer in one process equals the whole
model on the same dict batch (1e-5): masks, token_type_ids, given and packed position_ids; unknown keys refused."""

from __future__ import annotations

import pytest
import torch

from shoal.errors import ShoalError
from shoal.parallel import hf_pipeline

transformers = pytest.importorskip("transformers")
VOCAB, SEQ, B = 40, 8, 4


def build(kind: str):
    torch.manual_seed(5)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=2 * SEQ, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=None, eos_token_id=None)
        return transformers.GPT2LMHeadModel(cfg).eval()
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=2 * SEQ, use_cache=False, bos_token_id=None,
                                       eos_token_id=None, pad_token_id=None)
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=2 * SEQ, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).eval()


def batch(*keys: str) -> dict:
    g = torch.Generator().manual_seed(1)
    out = {"input_ids": torch.randint(1, VOCAB, (B, SEQ), generator=g)}
    if "attention_mask" in keys:
        mask = torch.ones(B, SEQ, dtype=torch.long)
        mask[::2, SEQ - 3:] = 0
        out["attention_mask"] = mask
    if "token_type_ids" in keys:
        out["token_type_ids"] = torch.randint(0, 2, (B, SEQ), generator=g)
    if "position_ids" in keys:
        out["position_ids"] = torch.arange(SEQ) * 2 + torch.arange(B)[:, None] % 2  # spread out: not the default, nor a shift of it
    if "packed" in keys:  # two sequences in each row (no mask): the model finds them from the positions
        out["position_ids"] = torch.cat([torch.arange(3), torch.arange(SEQ - 3)]).expand(B, SEQ).clone()
    return out


def through_chain(model, x: dict) -> torch.Tensor:
    names, steps = hf_pipeline.chain(model)
    h = hf_pipeline.pack(x, model)
    for name in names:
        h = steps[name](model.get_submodule(name), h)
    return h


CASES = [("gpt2", ("attention_mask",)), ("gpt2", ()), ("gpt2", ("attention_mask", "position_ids")), ("gpt2", ("packed",)),
         ("llama", ("attention_mask",)), ("llama", ("attention_mask", "position_ids")), ("llama", ("packed",)),
         ("bert", ("attention_mask",)), ("bert", ("attention_mask", "token_type_ids")),
         ("bert", ("attention_mask", "token_type_ids", "position_ids"))]


@pytest.mark.parametrize("kind,keys", CASES, ids=lambda c: "-".join(c) if isinstance(c, tuple) else c)
@torch.no_grad()
def test_the_chain_equals_the_whole_model(kind, keys):
    model, x = build(kind), batch(*keys)
    want = model(**x).logits
    got = through_chain(model, x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5
    if keys and keys != ("attention_mask",):  # the key changes the output: dropping it would be caught
        plain = {k: v for k, v in x.items() if k in ("input_ids", "attention_mask")}
        assert (model(**plain).logits - want).abs().max().item() > 1e-4  # 10x the tolerance


@pytest.mark.parametrize("kind,key", [("gpt2", "token_type_ids"), ("llama", "token_type_ids"), ("bert", "pixel_values")])
def test_keys_a_chain_does_not_pass_on_are_refused_with_one_line(kind, key):
    x = batch("attention_mask")
    x[key] = torch.zeros(B, SEQ, dtype=torch.long)
    with pytest.raises(ShoalError) as err:
        hf_pipeline.pack(x, build(kind))
    assert "\n" not in str(err.value) and f"['{key}']" in str(err.value) and "parallel.pp" in str(err.value)
