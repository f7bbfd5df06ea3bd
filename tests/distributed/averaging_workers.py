"""What the averaging and federated tests run inside spawned workers (spawn pickles these by name)."""

from __future__ import annotations

import importlib.util

import dp_workers
import numpy as np
import torch
from torch import nn

import shoal
import shoal.train.trainer as trainer_mod
from shoal.config import JobConfig
from shoal.distributed.collectives import TrainingGroup
from shoal.distributed.env import init_distributed
from shoal.distributed.mesh import check_layout
from shoal.sync import SyncContext, build

SGD = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0}}
MOMENTUM = {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
FULL = {"data": {"limit_train": 0, "limit_eval": 0}}
CASES = {
    # 195 samples in batches of 64: the last batch (3 samples) splits 2:1, so only sample weights give the global mean
    "dp": SGD,
    "avg_h1_samples": {**SGD, "sync": "average", "average": {"every": 1, "weights": "samples"}},
    "avg_h4": {**MOMENTUM, "sync": "average", "average": {"every": 4}},
    "diloco_lr1": {**MOMENTUM, "sync": "average", "average": {"every": 4, "outer": "diloco", "outer_lr": 1.0, "outer_momentum": 0.0}},
    "avg_score": {**MOMENTUM, "sync": "average", "average": {"every": 4, "weights": "score", "score_samples": 64}},
    "fed_label_skew": {**FULL, **MOMENTUM, "sync": "federated", "train": {"global_batch_size": 64},
                       "federated": {"rounds": 12, "split": "label_skew", "labels_per_client": 5}},
    "fed_dirichlet_prox": {**FULL, **MOMENTUM, "sync": "federated", "train": {"global_batch_size": 64},
                           "federated": {"rounds": 12, "split": "dirichlet", "alpha": 0.3, "prox_mu": 0.01}},
}


def train(names: list[str]) -> dict:
    """Each case's weights and eval metrics; federated cases also every training index this rank read."""
    out = {}
    real = trainer_mod.microbatches
    for name in names:
        read: list[np.ndarray] = []

        def recording(dataset, per_rank, rank, *rest, read=read, **kwargs):
            read.append(per_rank[rank].copy())
            return real(dataset, per_rank, rank, *rest, **kwargs)

        trainer_mod.microbatches = recording
        try:
            out[name] = {**dp_workers.train_case(CASES[name]), "read": np.concatenate(read) if read else np.empty(0)}
        finally:
            trainer_mod.microbatches = real
    out["hand"] = hand_cases()
    out["score_dict"] = score_dict_case()
    return out


SCORE_DICT = {"data": {"task": "classify"}, "sync": "average", "train": {"steps": 4},
              "average": {"every": 2, "weights": "score", "score_samples": 10}}


def score_dict_case() -> list[dict] | None:
    """sync = "average", weights = "score" on a tiny BERT classifier (transformers' ModelOutput, dict batches with attention
    masks) trained by shoal.fit: at every averaging, the weight the strategy used, this rank's replica scored by hand
    (logits.argmax == labels on the first score_samples evaluation rows), and its values before and after. Rank r's
    replica is tilted towards class 2r just before each averaging, so the two weights differ."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import hf_workers

    from shoal.sync.average import Average

    rows = hf_workers.samples("bert")
    train_rows, eval_rows = rows[:36], rows[36:]
    seen: list[dict] = []
    real_weight, real_average = Average.weight, Average.average

    def weight(self):
        with torch.no_grad():  # as if rank r's local steps had favoured class 2r: the replicas score 0.3 and 0.4
            self.module.classifier.bias[2 * torch.distributed.get_rank()] += 5.0
        w = real_weight(self)
        n = min(self.cfg.score_samples, len(eval_rows))
        batch = {k: torch.stack([r[k] for r in eval_rows[:n]]) for k in ("input_ids", "attention_mask", "labels")}
        was = self.module.training
        self.module.eval()
        with torch.no_grad():
            logits = self.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        self.module.train(was)
        seen.append({"weight": w, "hand": int((logits.argmax(-1) == batch["labels"]).sum()) / n,
                     "before": torch.cat([t.detach().reshape(-1).clone() for t in self.tensors()])})
        return w

    def average(self):
        real_average(self)
        seen[-1]["after"] = torch.cat([t.detach().reshape(-1).clone() for t in self.tensors()])

    Average.weight, Average.average = weight, average
    try:
        cfg = dp_workers.merged(hf_workers.COMMON, SCORE_DICT)
        shoal.fit(hf_workers.hf_model("bert"), train_rows, eval_rows, cfg, show_progress=False, summary=False)
    finally:
        Average.weight, Average.average = real_weight, real_average
    return seen


class _Layout:
    def __init__(self, model: nn.Module):
        self.model = model


def _strategy(average: dict, model: nn.Module):
    cfg = JobConfig.model_validate({"sync": "average", "average": average})
    env = init_distributed("gloo")
    group = TrainingGroup.world()
    sync = build(SyncContext(cfg, env, check_layout(cfg.parallel, group.size), group))
    sync.attach(_Layout(model), torch.optim.SGD(model.parameters(), lr=0.1), score=lambda n: 0.0)  # score: weights = score only
    return sync


def _model(value: float) -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for t in [*model.parameters(), model[1].running_mean]:
            t.fill_(value)
    return model


def _moved(model: nn.Module, by: float) -> None:
    """What local training did: every value shifted by `by` (a different amount on every rank)."""
    with torch.no_grad():
        for t in [*model.parameters(), model[1].running_mean]:
            t.add_(by)


def hand_cases() -> dict[str, list[float]]:
    """Rank r moves every value of a model from 0 to r + 1; what the averaging leaves (the first weight), per case."""
    rank = torch.distributed.get_rank()
    out: dict[str, list[float]] = {}
    for name, average, samples, score in [("equal", {}, 0, 0.0), ("samples", {"weights": "samples"}, [3, 1][rank], 0.0),
                                          ("score", {"weights": "score"}, 0, [0.75, 0.25][rank])]:
        model = _model(0.0)
        sync = _strategy(average, model)
        sync.samples = samples
        sync._score = lambda score=score: score
        _moved(model, rank + 1)
        sync.average()
        out[name] = [float(model[0].weight[0, 0]), float(model[1].running_mean[0])]
    for name, outer in [("diloco_plain", {"outer_lr": 1.0, "outer_momentum": 0.0}), ("diloco", {"outer_lr": 0.7, "outer_momentum": 0.9})]:
        model = _model(0.0)
        sync = _strategy({"outer": "diloco", **outer}, model)
        seen = []
        for _ in range(2):  # two rounds: the second uses the outer momentum of the first
            _moved(model, rank + 1)
            sync.average()
            seen.append(float(model[0].weight[0, 0]))
        out[name] = seen + [float(model[1].running_mean[0])]
    return out
