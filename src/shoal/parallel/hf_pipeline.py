"""Pipeline stages for transformers models: GPT-2 and Llama (causal LMs), BERT (sequence classifier) as chains of layers.

The pipeline needs one tensor between stages. A dict batch enters stage 0 as one (batch, 4, seq) integer tensor:
`input_ids`, `attention_mask`, `token_type_ids`, `position_ids`, a key the batch lacks filled with -1 (so each
layer calls the model's code exactly as the whole model does without it). From the embeddings on, the mask (and
for the causal LMs the positions, which every block and Llama's rotary table use) travel as extra channels of the
hidden states (batch, seq, dim + 1 or + 2), and each block rebuilds the attention mask from them as the whole
model does (`transformers.masking_utils`; no mask and given positions: packed sequences, found from the
positions). The layers are the model's own modules under their own names (`transformer.wte`, `transformer.h.0`,
..., `lm_head`), so state_dict keys do not change; each has a step function saying how it is called. Tied
embeddings (GPT-2's `lm_head` and `wte`) cannot span stages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from torch import nn

from shoal.errors import ShoalError

Step = Callable[[nn.Module, torch.Tensor], torch.Tensor]
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")  # stage 0's channels, in this order
TAKES = {"gpt2": ("position_ids",), "llama": ("position_ids",), "bert": ("token_type_ids", "position_ids")}  # besides ids, mask
ABSENT = -1


def _split(x: torch.Tensor, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :-n], x[..., -n:]


def _join(h: torch.Tensor, *carried: torch.Tensor) -> torch.Tensor:
    if len(carried) > 1 and h.dtype not in (torch.float32, torch.float64):  # positions as floats: exact below 2**24 only
        raise ShoalError(f"parallel.pp: a pipelined transformers model carries its positions in the hidden states, which are {h.dtype}; "
                         "train it in float32")
    return torch.cat([h, *(c.to(h.dtype) for c in carried)], dim=-1)


def _given(c: torch.Tensor) -> torch.Tensor | None:
    """A channel as the integers the model takes, or None where the batch had no such key (or, on the meta device,
    where the stages are only being costed, its values are unknown: shapes are all that count there)."""
    if c.is_meta or bool((c == ABSENT).all()):
        return None
    return c.long()


def _positions_of(x: torch.Tensor) -> torch.Tensor:
    """The batch's position_ids, or the whole model's default (0 .. seq-1)."""
    given = _given(x[:, 3])
    return given if given is not None else torch.arange(x.shape[-1], device=x.device).expand_as(x[:, 0])


def _embed(module, x):
    """Causal LMs: token embeddings, then the mask and positions as two channels."""
    return _join(module(x[:, 0]), x[:, 1, :, None], _positions_of(x)[..., None])


def _positions(module, x):
    h, c = _split(x, 2)
    return _join(h + module(c[..., 1].long()), c[..., :1], c[..., 1:])


def _on_hidden(n, module, x):
    h, c = _split(x, n)
    return _join(module(h), *c.split(1, dim=-1))


def _causal_mask(config, h, mask, position_ids):
    """The whole model's causal mask; None on the meta device (costing stages: no values to build it from)."""
    from transformers.masking_utils import create_causal_mask

    if h.is_meta:
        return None
    return create_causal_mask(config=config, inputs_embeds=h, attention_mask=mask, cache=None, position_ids=position_ids)


def _gpt2_block(config, module, x):
    h, c = _split(x, 2)
    mask, position_ids = _given(c[..., 0]), c[..., 1].long()
    causal = _causal_mask(config, h, mask, position_ids)
    out = module(h, None, causal, None, encoder_attention_mask=None, use_cache=False, position_ids=position_ids)
    return _join(out, c[..., :1], c[..., 1:])


def _bert_embed(module, x):
    h = module(input_ids=x[:, 0], token_type_ids=_given(x[:, 2]), position_ids=_given(x[:, 3]))
    return _join(h, x[:, 1, :, None])


def _bert_layer(config, module, x):
    from transformers.masking_utils import create_bidirectional_mask

    h, m = _split(x)
    mask = None if h.is_meta else create_bidirectional_mask(config=config, inputs_embeds=h, attention_mask=_given(m[..., 0]))
    return _join(module(h, mask, None, encoder_attention_mask=None, cache=None), m)


def _llama_layer(config, rotary, module, x):
    h, c = _split(x, 2)
    mask, position_ids = _given(c[..., 0]), c[..., 1].long()
    causal = _causal_mask(config, h, mask, position_ids)
    position_embeddings = _rotary(rotary, config, h)(h, position_ids=position_ids)  # no weights: recomputed in every block's stage
    out = module(h, attention_mask=causal, position_embeddings=position_embeddings, position_ids=position_ids, cache=None,
                 use_cache=False)
    return _join(out, c[..., :1], c[..., 1:])


def _rotary(holder: list, config, h: torch.Tensor) -> nn.Module:
    """Llama's rotary table belongs to no stage, so parallel.meta_init leaves it on the meta device: a real one is
    built from the config at first use (its buffers are computed from the config alone, as transformers does)."""
    if not h.is_meta and any(b.is_meta for b in holder[0].buffers()):
        with torch.device(h.device):
            holder[0] = type(holder[0])(config=config)
    return holder[0]


def _drop_carried(n, module, x):
    return module(_split(x, n)[0])


def _plain(module, x):
    return module(x)


def family(model) -> str | None:
    kind = getattr(getattr(model, "config", None), "model_type", None)
    return kind if kind in TAKES else None


def chain(model: nn.Module) -> tuple[list[str], dict[str, Step]] | None:
    """Layer names in forward order and how each is called; None for a model without a built-in chain."""
    config = getattr(model, "config", None)
    kind = family(model)
    hidden2, head2 = functools.partial(_on_hidden, 2), functools.partial(_drop_carried, 2)
    if kind == "gpt2" and hasattr(model, "lm_head") and hasattr(model, "transformer"):
        n = len(model.transformer.h)
        block = functools.partial(_gpt2_block, config)
        steps = {"transformer.wte": _embed, "transformer.wpe": _positions, "transformer.drop": hidden2,
                 **{f"transformer.h.{i}": block for i in range(n)}, "transformer.ln_f": hidden2, "lm_head": head2}
        return list(steps), steps
    if kind == "llama" and hasattr(model, "lm_head") and hasattr(model, "model"):
        n = len(model.model.layers)
        layer = functools.partial(_llama_layer, config, [model.model.rotary_emb])
        steps = {"model.embed_tokens": _embed, **{f"model.layers.{i}": layer for i in range(n)}, "model.norm": hidden2,
                 "lm_head": head2}
        return list(steps), steps
    if kind == "bert" and hasattr(model, "classifier") and getattr(model.bert, "pooler", None) is not None and not config.is_decoder:
        n = len(model.bert.encoder.layer)
        layer = functools.partial(_bert_layer, config)
        steps = {"bert.embeddings": _bert_embed, **{f"bert.encoder.layer.{i}": layer for i in range(n)},
                 "bert.pooler": functools.partial(_drop_carried, 1), "dropout": _plain, "classifier": _plain}
        return list(steps), steps
    return None


def pack(x, model: nn.Module | None = None):
    """A dict batch as the one tensor stage 0 takes (batch, 4, seq); `model`: refuse keys its chain does not pass on."""
    if not isinstance(x, Mapping):
        return x
    kind = family(model) if model is not None else None
    takes = ("input_ids", "attention_mask", *(TAKES[kind] if kind else INPUTS[2:]))
    other = sorted(k for k in x if k not in takes and k != "labels")
    if other:
        raise ShoalError(f"parallel.pp: a pipelined {kind or 'transformers'} model takes {', '.join(takes)} (and labels); "
                         f"the batches also have {other}: drop them or train without parallel.pp")
    ids = x["input_ids"]
    filled = [x[k].to(ids.dtype).expand_as(ids) if k in x else torch.full_like(ids, ABSENT) for k in INPUTS[1:]]
    return torch.stack([ids, *filled], dim=1)
