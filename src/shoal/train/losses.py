"""Losses the job file picks by name (`train.loss`), and any model output they read.

A loss here is called as `loss(output, target, reduction="sum")` and returns the **sum** over its
units; the trainer divides by the units of the whole global batch, so every update is the exact
mean over the global batch, however the batch was dealt. The units are:

- `cross_entropy`, `mse`, a function of yours: samples;
- `lm`: scored tokens (targets other than -100). The update is the mean over every scored token of
  the global batch (a token-level mean, as transformers computes it for one batch), not the mean of
  per-sequence means: padded and short sequences weigh by their tokens;
- `model`: the model's own `.loss` (labels are passed in), which transformers computes as a mean
  over the local batch's samples (classification) or scored tokens (causal LM); Shoal multiplies
  it back by those units, so the normalisation over the global batch stays exact.

The output may be a tensor, a transformers `ModelOutput`, a dict or a tuple: the scores are
`output[train.output_key]` ("logits"), or the first element of a tuple.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from shoal.data.batches import IGNORE
from shoal.errors import ShoalError

NAMES = ("auto", "cross_entropy", "lm", "mse", "model")


def scores_of(output, key: str = "logits") -> torch.Tensor:
    """The tensor a loss scores: the output itself, `output[key]` (ModelOutput, dict) or a tuple's first element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        if key in output.keys() and output[key] is not None:
            return output[key]
        raise ShoalError(f"train.output_key: the model's output has no '{key}' (it has {', '.join(k for k in output.keys())}); "
                         "set train.output_key to the one to score")
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ShoalError(f"model: forward returned {type(output).__name__}; return a tensor, a dict, a ModelOutput or a tuple of tensors")


class Loss:
    """Base: per-sample units; `eval_view` is what accuracy and the other metrics score."""

    per_sample = True  # units are samples: the trainer needs no counting
    wants_labels = False  # call the model with labels= (its own loss)
    tokens = False  # metrics per token, perplexity reported
    classes = True  # accuracy, precision, recall, F1 make sense

    def __init__(self, key: str = "logits"):
        self.key = key

    def for_scores(self) -> Loss:
        """The loss evaluation uses on the model's scores."""
        return self

    def units(self, target: torch.Tensor) -> int:
        return len(target)

    def __call__(self, output, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        raise NotImplementedError

    def eval_view(self, output, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores (N, C) and class targets (N,) for the metrics; positions that count nowhere left out."""
        scores = scores_of(output, self.key)
        return scores.flatten(0, -2) if scores.dim() > 1 else scores[:, None], target.flatten()

    def _reduce(self, summed: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return summed if reduction == "sum" else summed / max(int(self.units(target)), 1)


class CrossEntropy(Loss):
    def __call__(self, output, target, reduction="sum"):
        scores = scores_of(output, self.key)
        return F.cross_entropy(scores.flatten(0, -2).float() if scores.dim() > 2 else scores.float(), target.flatten() if scores.dim() > 2 else target,
                               reduction=reduction)


class MSE(Loss):
    classes = False

    def __call__(self, output, target, reduction="sum"):
        scores = scores_of(output, self.key)
        per_sample = (scores.float().reshape(target.shape) - target.float()).pow(2)
        per_sample = per_sample.flatten(1).mean(1) if per_sample.dim() > 1 else per_sample
        return per_sample.sum() if reduction == "sum" else per_sample.mean()

    def eval_view(self, output, target):
        return None, None  # no classes to score


class TokenLM(Loss):
    """Next-token cross-entropy summed over scored tokens (targets are already shifted: shoal.data.batches)."""

    per_sample, tokens = False, True

    def units(self, target):
        return int((target != IGNORE).sum())

    def __call__(self, output, target, reduction="sum"):
        scores = scores_of(output, self.key)
        summed = F.cross_entropy(scores.flatten(0, -2).float(), target.flatten(), ignore_index=IGNORE, reduction="sum")
        return self._reduce(summed, target, reduction)

    def eval_view(self, output, target):
        scores, flat = scores_of(output, self.key).flatten(0, -2), target.flatten()
        keep = flat != IGNORE
        return scores[keep], flat[keep]


class ModelLoss(Loss):
    """The model's own `.loss` (a mean over the local batch) times the local units: a sum, as the trainer wants."""

    wants_labels = True

    def __init__(self, key: str = "logits", tokens: bool = False):
        super().__init__(key)
        self.tokens = tokens
        self.per_sample = not tokens

    def units(self, target):
        return int((target != IGNORE).sum()) if self.tokens else len(target)

    def __call__(self, output, target, reduction="sum"):
        loss = output["loss"] if isinstance(output, Mapping) or hasattr(output, "keys") else None
        if loss is None:
            raise ShoalError("train.loss = 'model': the model's output has no 'loss'; does it take labels= (a transformers *For* model)?")
        n = self.units(target)
        return loss.float() * n if reduction == "sum" else loss.float()

    def for_scores(self) -> Loss:
        return (TokenLM if self.tokens else CrossEntropy)(self.key)

    def eval_view(self, output, target):
        return self.for_scores().eval_view(output, target)


class Wrapped(Loss):
    """A plain function `fn(scores, target, reduction="sum")` (F.cross_entropy, yours) given the model's scores."""

    def __init__(self, fn: Callable, key: str = "logits"):
        super().__init__(key)
        self.fn = fn
        self.tokens = getattr(fn, "tokens", False)

    def __call__(self, output, target, reduction="sum"):
        return self.fn(scores_of(output, self.key), target, reduction=reduction)


def _user_fn(spec: str) -> Callable:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ShoalError(f"train.loss: '{spec}' is neither one of {', '.join(NAMES)} nor a function 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr, None)
    except ImportError as err:
        raise ShoalError(f"train.loss: cannot import module '{module}' ({err})") from None
    if not callable(fn):
        raise ShoalError(f"train.loss: module '{module}' has no function '{attr}'")
    return fn


def build_loss(name: str, task: str, key: str = "logits", default: Callable | None = None) -> Loss:
    """`train.loss` as a Loss; `auto` follows the data's task (lm: token-level, else cross-entropy, or `default`)."""
    if isinstance(name, Loss):
        return name
    if name == "auto":
        if default is not None:
            return as_loss(default, key)
        name = "lm" if task == "lm" else "cross_entropy"
    if name == "cross_entropy":
        return CrossEntropy(key)
    if name == "lm":
        return TokenLM(key)
    if name == "mse":
        return MSE(key)
    if name == "model":
        return ModelLoss(key, tokens=task == "lm")
    return Wrapped(_user_fn(name), key)


def as_loss(fn, key: str = "logits") -> Loss:
    """Whatever fit() was given as loss_fn, as a Loss."""
    if isinstance(fn, Loss):
        return fn
    if fn is F.cross_entropy:
        return CrossEntropy(key)
    return Wrapped(fn, key)
