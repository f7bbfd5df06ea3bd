"""Model quality through torchmetrics, whose states are synchronised across ranks on compute()."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from shoal.data import deal, fetch
from shoal.dist import DistEnv


def classification_metrics(num_classes: int, device: torch.device):
    # imported here: torchmetrics costs ~1 s of every worker's start-up, and only evaluation needs it
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "precision": MulticlassPrecision(num_classes, average="macro"),
            "recall": MulticlassRecall(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
    ).to(device)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, env: DistEnv, num_classes: int, batch_size: int, loss_fn) -> dict[str, float]:
    """Each rank scores its contiguous share of the evaluation set; the metrics combine all shares."""
    from torchmetrics.aggregation import SumMetric

    was_training = model.training
    model.eval()
    quality = classification_metrics(num_classes, env.device)
    loss_sum, count = SumMetric().to(env.device), SumMetric().to(env.device)
    mine = deal(len(dataset), env.world_size, "contiguous")[env.rank]
    for start in range(0, len(mine), batch_size):
        x, y = fetch(dataset, mine[start : start + batch_size])
        x, y = x.to(env.device), y.to(env.device)
        logits = model(x)
        quality.update(logits, y)
        loss_sum.update(loss_fn(logits, y, reduction="sum"))
        count.update(torch.tensor(float(len(y)), device=env.device))
    if len(mine) == 0:  # keep every rank's states present for the all-gather
        loss_sum.update(torch.tensor(0.0, device=env.device))
        count.update(torch.tensor(0.0, device=env.device))
    result = {k: float(v) for k, v in quality.compute().items()}
    result["loss"] = float(loss_sum.compute() / count.compute())
    model.train(was_training)
    return result


def global_mean(values: list[float], env: DistEnv) -> np.ndarray:
    """Sum small per-rank statistics over the world in one all-reduce."""
    t = torch.tensor(values, dtype=torch.float64)
    if env.world_size > 1:
        torch.distributed.all_reduce(t)
    return t.numpy()
