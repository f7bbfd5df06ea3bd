"""Forward passes in fixed-size batches, and the quality metrics of labelled inputs (the training metrics)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from shoal.data.batches import IGNORE, batch_len, call_model
from shoal.infer.inputs import take
from shoal.models.gpt import lm_loss
from shoal.train.losses import scores_of


def scores(output, num_classes: int, key: str = "logits") -> torch.Tensor:
    """The scores of a model's output (a tensor, or `key` of a ModelOutput/dict) over the real classes, float32."""
    return scores_of(output, key)[..., :num_classes].float()


@torch.no_grad()
def forward_batches(model: nn.Module, x, batch: int, num_classes: int, key: str = "logits") -> torch.Tensor:
    """Model outputs of every sample (a tensor, or a dict of columns: `model(**batch)`), in order; a padded
    vocabulary's extra logits are dropped."""
    n = batch_len(x)
    if n == 0:  # a replica whose shard is empty (more replicas than samples) still has the output's shape
        return scores(call_model(model, x), num_classes, key)
    return torch.cat([scores(call_model(model, take(x, i, i + batch)), num_classes, key) for i in range(0, n, batch)])


def predictions(outputs: torch.Tensor) -> np.ndarray:
    """Class ids (next-token ids for the gpt)."""
    return outputs.argmax(dim=-1).numpy() if outputs.numel() else np.zeros(outputs.shape[:-1], dtype=np.int64)


def score(outputs: torch.Tensor, y: torch.Tensor, task: str, num_classes: int) -> dict[str, float]:
    """accuracy, macro precision/recall/F1 and loss; perplexity for sequences (per token, as in training)."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

    flat, target = outputs.flatten(0, -2), y.flatten()
    if task == "lm":  # padding and the last position (-100) are not scored, as in training
        keep = target != IGNORE
        flat, target = flat[keep], target[keep]
    result = {
        "samples": len(y),
        "accuracy": float(MulticlassAccuracy(num_classes, average="micro")(flat, target)),
        "precision": float(MulticlassPrecision(num_classes, average="macro")(flat, target)),
        "recall": float(MulticlassRecall(num_classes, average="macro")(flat, target)),
        "f1": float(MulticlassF1Score(num_classes, average="macro")(flat, target)),
    }
    if task == "lm":
        # the token-level mean over scored tokens (transformers' and training's, with padding); the gpt's
        # sequences have no padding, and its own loss (the mean of per-sequence means) is the same to rounding
        padded = bool((y == IGNORE).any())
        result["loss"] = float(torch.nn.functional.cross_entropy(flat, target) if padded else lm_loss(outputs, y, reduction="mean"))
        result["perplexity"] = math.exp(min(result["loss"], 50.0))
    else:
        result["loss"] = float(torch.nn.functional.cross_entropy(outputs, y))
    return result
