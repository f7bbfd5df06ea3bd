"""Forward passes in fixed-size batches, and the quality metrics of labelled inputs (the training metrics)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from shoal.models.gpt import lm_loss


@torch.no_grad()
def forward_batches(model: nn.Module, x: torch.Tensor, batch: int, num_classes: int) -> torch.Tensor:
    """Model outputs of every sample, in order; a padded vocabulary's extra logits are dropped."""
    if len(x) == 0:  # a replica whose shard is empty (more replicas than samples) still has the output's shape
        return model(x)[..., :num_classes].float()
    return torch.cat([model(x[i : i + batch])[..., :num_classes].float() for i in range(0, len(x), batch)])


def predictions(outputs: torch.Tensor) -> np.ndarray:
    """Class ids (next-token ids for the gpt)."""
    return outputs.argmax(dim=-1).numpy() if outputs.numel() else np.zeros(outputs.shape[:-1], dtype=np.int64)


def score(outputs: torch.Tensor, y: torch.Tensor, task: str, num_classes: int) -> dict[str, float]:
    """accuracy, macro precision/recall/F1 and loss; perplexity for sequences (per token, as in training)."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

    flat, target = outputs.flatten(0, -2), y.flatten()
    result = {
        "samples": len(y),
        "accuracy": float(MulticlassAccuracy(num_classes, average="micro")(flat, target)),
        "precision": float(MulticlassPrecision(num_classes, average="macro")(flat, target)),
        "recall": float(MulticlassRecall(num_classes, average="macro")(flat, target)),
        "f1": float(MulticlassF1Score(num_classes, average="macro")(flat, target)),
    }
    if task == "lm":
        result["loss"] = float(lm_loss(outputs, y, reduction="mean"))
        result["perplexity"] = math.exp(min(result["loss"], 50.0))
    else:
        result["loss"] = float(torch.nn.functional.cross_entropy(outputs, y))
    return result
