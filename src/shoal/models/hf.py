"""`model.name = "hf:..."`: a Hugging Face `transformers` model built from its config class (no download).

- `hf:gpt2` (GPT2LMHeadModel), `hf:bert` (BertForSequenceClassification), `hf:llama` (LlamaForCausalLM), or any
  transformers model class by name: `hf:GPT2ForSequenceClassification`, `hf:BertForMaskedLM`, ...
- `model.kwargs` are the config's keys (`n_layer`, `n_embd`, `hidden_size`, ...). Unless given there, the
  vocabulary (causal LMs) or `num_labels` (classifiers) comes from the data, the positions table covers the
  data's sequence length, and every dropout probability is `model.dropout` (0: runs equal a single process).
- The weights come from transformers' own per-module initialisation (`_init_weights`), each tensor drawn alone
  under a generator seeded by the job's seed and its name (shoal.models.hf_init), so every rank starts alike and
  a model built on the meta device (`parallel.meta_init`) materializes exactly these values shard by shard.

`transformers` is an optional extra: `pip install 'shoal[hf]'`.
"""

from __future__ import annotations

import torch
from torch import nn

from shoal.errors import ShoalError
from shoal.models import hf_init

SHORT = {"gpt2": "GPT2LMHeadModel", "bert": "BertForSequenceClassification", "llama": "LlamaForCausalLM"}
POSITIONS = ("n_positions", "max_position_embeddings")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ShoalError("model.name: 'hf:' models need transformers: pip install 'shoal[hf]' (or pip install transformers)") from None
    return transformers


def model_class(name: str):
    spec = name.removeprefix("hf:")
    cls_name = SHORT.get(spec.lower(), spec)
    cls = getattr(_transformers(), cls_name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ShoalError(f"model.name: '{name}' is not a transformers model class; use hf:{', hf:'.join(SHORT)} or a class name "
                         "such as hf:GPT2ForSequenceClassification")
    if getattr(cls, "config_class", None) is None:
        raise ShoalError(f"model.name: {cls_name} has no config_class to build it from")
    return cls


def is_classifier(cls) -> bool:
    return "Classification" in cls.__name__


def build_hf(name: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict, dropout: float = 0.0) -> nn.Module:
    cls = model_class(name)
    config_cls = cls.config_class
    keys = dict(kwargs)
    probe = config_cls()
    unknown = [k for k in kwargs if not hasattr(probe, k) and k not in probe.attribute_map]
    if unknown:
        raise ShoalError(f"model.kwargs: {config_cls.__name__} has no key {unknown[0]!r}")
    if is_classifier(cls):
        keys.setdefault("num_labels", num_classes)
        if getattr(probe, "pad_token_id", None) is None:
            keys.setdefault("pad_token_id", 0)  # sequence classifiers find each row's last token by it
    else:
        keys.setdefault("vocab_size", num_classes)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # GPT-2's 50256 is no token of a small vocabulary
            value = getattr(probe, key, None)
            if isinstance(value, int) and value >= keys["vocab_size"]:
                keys.setdefault(key, None)
    seq = input_shape[0] if input_shape else 0
    for key in POSITIONS:
        if hasattr(probe, key) and seq:
            keys.setdefault(key, max(seq, 1))
            break
    for key, value in probe.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")) and key not in keys:
            keys[key] = dropout
    keys.setdefault("use_cache", False)  # training: no key/value cache (activation checkpointing would fill it twice)
    try:
        config = config_cls(**keys)
    except Exception as err:
        raise ShoalError(f"model.kwargs: {config_cls.__name__} rejected its keys ({type(err).__name__}: {err})") from None
    seed = torch.initial_seed()  # build_model's seed
    try:
        model = cls(config)
    except Exception as err:
        raise ShoalError(f"model.name: building {cls.__name__} failed: {type(err).__name__}: {err}") from None
    return hf_init.attach(model, cls, config, seed)
