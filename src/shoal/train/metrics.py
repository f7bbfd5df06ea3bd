"""Model quality under any layout, through torchmetrics (states synchronised over the training group).

Model-parallel peers must run the same forward passes together, so every replica runs the
same number of batches (short shares are padded and the padding is not scored), and only one
rank per replica scores: the holder of the output with tensor-parallel coordinate 0.
Reports loss, accuracy, macro precision/recall/F1 (per token for sequences) and, for
sequences, perplexity.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from shoal.data import deal, fetch
from shoal.data.batches import to_device
from shoal.data.parquet_rows import hold
from shoal.distributed import DistEnv
from shoal.distributed.collectives import TrainingGroup
from shoal.distributed.mesh import ParallelDims
from shoal.parallel.layout import Layout, Replicated
from shoal.train.losses import as_loss, scores_of


def classification_metrics(num_classes: int, device: torch.device, group: TrainingGroup | None = None):
    # imported here: torchmetrics costs ~1 s of every worker's start-up, and only evaluation needs it
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

    if group is not None and group.size == 1:
        pg = {"sync_on_compute": False}  # a group of one has nothing to gather (and may be a process whose groups are not its own)
    elif group is not None and group.group is not None:
        pg = {"process_group": group.group}
    else:
        pg = {}
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro", **pg),
            "precision": MulticlassPrecision(num_classes, average="macro", **pg),
            "recall": MulticlassRecall(num_classes, average="macro", **pg),
            "f1": MulticlassF1Score(num_classes, average="macro", **pg),
        }
    ).to(device)


def _padded(indices: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    valid = len(indices)
    if valid == size:
        return indices, valid
    return np.concatenate([indices, np.zeros(size - valid, dtype=indices.dtype)]), valid


@torch.no_grad()
def evaluate_layout(layout: Layout, dataset: Dataset, batch_size: int, loss_fn, num_classes: int,
                    group: TrainingGroup) -> dict[str, float]:
    """Every batch has exactly `batch_size` samples: pipeline schedules need fixed shapes, and no rank runs an empty one."""
    dims, env = layout.dims, layout.env
    was_training = layout.model.training
    layout.train(False)
    shares = deal(len(dataset), dims.dp_size, "contiguous")
    mine = shares[layout.dp_rank]
    hold(dataset, lambda: mine)  # Parquet read per rank: only this rank's share in memory
    n_batches = math.ceil(max(len(s) for s in shares) / batch_size)
    loss = as_loss(loss_fn).for_scores()  # scores the logits (a model's own loss would average over the padding too)
    quality = classification_metrics(num_classes, env.device, group) if loss.classes else None  # mse: no classes
    loss_sum, samples, sequences = 0.0, 0, loss.tokens
    for b in range(n_batches):
        idx, valid = _padded(mine[b * batch_size : (b + 1) * batch_size], batch_size)
        x, y = fetch(dataset, idx)
        out = layout.predict(to_device(x, env.device), y.to(env.device))
        if out is None or not layout.scores_output or valid == 0:
            continue
        out = scores_of(out, loss.key)
        out, y = out[:valid], y[:valid].to(out.device)
        sequences = sequences or (y.dim() > 1 and loss.classes)  # perplexity for token predictions, not for regression
        loss_sum += float(loss(out, y, reduction="sum"))
        samples += int(loss.units(y))  # samples, or scored tokens for a token-level loss
        scores, classes = loss.eval_view(out, y)
        if scores is not None and quality is not None:
            quality.update(scores[..., :num_classes], classes)  # a padded vocabulary's extra logits are no class
    loss_total, sample_total, seq_flag = group.sum([loss_sum, samples, float(sequences)])
    with warnings.catch_warnings():  # ranks that score nothing (early pipeline stages) still join the state sync
        warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
        result = {k: float(v) for k, v in quality.compute().items()} if loss.classes else {}
    layout.train(was_training)
    result["loss"] = float(loss_total / sample_total) if sample_total else float("nan")
    if seq_flag > 0:
        result["perplexity"] = math.exp(min(result["loss"], 50.0))
    return result


def evaluate(model: nn.Module, dataset: Dataset, env: DistEnv, num_classes: int, batch_size: int, loss_fn) -> dict[str, float]:
    """For a loop of your own: a replica of `model` on every rank, each scoring its contiguous share of `dataset`."""
    dims = ParallelDims(env.world_size, 1, 1, 1, env.world_size)
    layout = Replicated([model], dims, env, list(model.state_dict()))
    return evaluate_layout(layout, dataset, batch_size, loss_fn, num_classes, TrainingGroup.world())


class ReplicaScore:
    """This rank's own replica's accuracy on the first n evaluation samples, with no collective: what a sync strategy
    weighs replicas by (sync = "average", weights = "score"). It lives here, not in sync/, because scoring any model
    output (a tensor, a ModelOutput of a dict batch, token logits) is the loss's business, which sync/ may not import."""

    def __init__(self, layout: Layout, dataset: Dataset, loss_fn, num_classes: int, batch_size: int = 256):
        self.layout, self.dataset, self.num_classes, self.batch_size = layout, dataset, num_classes, batch_size
        self.loss = as_loss(loss_fn).for_scores()

    @torch.no_grad()
    def __call__(self, n: int) -> float:
        n = min(n, len(self.dataset))
        was = self.layout.model.training
        self.layout.train(False)
        right = total = 0
        for start in range(0, n, self.batch_size):
            x, y = fetch(self.dataset, np.arange(start, min(start + self.batch_size, n)))
            out = scores_of(self.layout.predict(to_device(x, self.layout.env.device), y), self.loss.key)
            scores, classes = self.loss.eval_view(out, y.to(out.device))
            scores = scores[..., : self.num_classes] if self.num_classes else scores
            right += int((scores.argmax(-1) == classes).sum())
            total += int(classes.numel())
        self.layout.train(was)
        return right / total if total else 0.0
