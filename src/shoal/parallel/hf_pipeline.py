"""Pipeline stages for transformers models: GPT-2 and Llama (causal LMs), BERT (sequence classifier) as chains of layers.

The pipeline needs one tensor between stages. The batch's `input_ids` and `attention_mask` enter stage 0
stacked as one (batch, 2, seq) tensor; from the embeddings on, the mask travels as one extra channel of
the hidden states (batch, seq, dim + 1), and each block rebuilds the attention mask from it exactly as the
whole model does (`transformers.masking_utils`). The layers are the model's own modules under their own
names (`transformer.wte`, `transformer.h.0`, ..., `lm_head`), so state_dict keys do not change; each has a
step function saying how it is called. Tied embeddings (GPT-2's `lm_head` and `wte`) cannot span stages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from torch import nn

from shoal.errors import ShoalError

Step = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :-1], x[..., -1:]


def _join(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.cat([h, m.to(h.dtype)], dim=-1)


def _embed(module, x):
    h = module(x[:, 0])
    return _join(h, x[:, 1, :, None])


def _positions(module, x):
    h, m = _split(x)
    return _join(h + module(torch.arange(h.shape[1], device=h.device)[None]), m)


def _on_hidden(module, x):
    h, m = _split(x)
    return _join(module(h), m)


def _gpt2_block(config, module, x):
    from transformers.masking_utils import create_causal_mask

    h, m = _split(x)
    position_ids = torch.arange(h.shape[1], device=h.device)[None]
    mask = create_causal_mask(config=config, inputs_embeds=h, attention_mask=m[..., 0].long(), cache=None, position_ids=position_ids)
    return _join(module(h, None, mask, None, encoder_attention_mask=None, use_cache=False, position_ids=position_ids), m)


def _bert_embed(module, x):
    h = module(input_ids=x[:, 0])
    return _join(h, x[:, 1, :, None])


def _bert_layer(config, module, x):
    from transformers.masking_utils import create_bidirectional_mask

    h, m = _split(x)
    mask = create_bidirectional_mask(config=config, inputs_embeds=h, attention_mask=m[..., 0].long())
    return _join(module(h, mask, None, encoder_attention_mask=None, cache=None), m)


def _llama_layer(config, rotary, module, x):
    from transformers.masking_utils import create_causal_mask

    h, m = _split(x)
    position_ids = torch.arange(h.shape[1], device=h.device)[None]
    mask = create_causal_mask(config=config, inputs_embeds=h, attention_mask=m[..., 0].long(), cache=None, position_ids=position_ids)
    position_embeddings = rotary(h, position_ids=position_ids)  # no weights: recomputed in every block's stage
    return _join(module(h, attention_mask=mask, position_embeddings=position_embeddings, position_ids=position_ids, cache=None,
                        use_cache=False), m)


def _drop_mask(module, x):
    return module(_split(x)[0])


def _plain(module, x):
    return module(x)


def chain(model: nn.Module) -> tuple[list[str], dict[str, Step]] | None:
    """Layer names in forward order and how each is called; None for a model without a built-in chain."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind == "gpt2" and hasattr(model, "lm_head") and hasattr(model, "transformer"):
        n = len(model.transformer.h)
        block = functools.partial(_gpt2_block, config)
        steps = {"transformer.wte": _embed, "transformer.wpe": _positions, "transformer.drop": _on_hidden,
                 **{f"transformer.h.{i}": block for i in range(n)}, "transformer.ln_f": _on_hidden, "lm_head": _drop_mask}
        return list(steps), steps
    if kind == "llama" and hasattr(model, "lm_head") and hasattr(model, "model"):
        n = len(model.model.layers)
        layer = functools.partial(_llama_layer, config, model.model.rotary_emb)
        steps = {"model.embed_tokens": _embed, **{f"model.layers.{i}": layer for i in range(n)}, "model.norm": _on_hidden,
                 "lm_head": _drop_mask}
        return list(steps), steps
    if kind == "bert" and hasattr(model, "classifier") and getattr(model.bert, "pooler", None) is not None and not config.is_decoder:
        n = len(model.bert.encoder.layer)
        layer = functools.partial(_bert_layer, config)
        steps = {"bert.embeddings": _bert_embed, **{f"bert.encoder.layer.{i}": layer for i in range(n)},
                 "bert.pooler": _drop_mask, "dropout": _plain, "classifier": _plain}
        return list(steps), steps
    return None


def pack(x):
    """A dict batch as the one tensor stage 0 takes: input_ids and attention_mask stacked (batch, 2, seq)."""
    if not isinstance(x, Mapping):
        return x
    other = sorted(k for k in x if k not in ("input_ids", "attention_mask", "labels"))
    if other:
        raise ShoalError(f"parallel.pp: a pipelined transformers model takes input_ids and attention_mask only; the batches also have {other}")
    ids = x["input_ids"]
    mask = x.get("attention_mask")
    return torch.stack([ids, mask.to(ids.dtype) if mask is not None else torch.ones_like(ids)], dim=1)
