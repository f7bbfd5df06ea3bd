"""sync = "average": local SGD (every H steps a plain or weighted parameter average) and DiLoCo.

weights: "equal"; "samples" (each rank's samples since the last averaging: with uneven batches
that is the exact global mean, so H = 1 with SGD equals data parallel); "score" (each rank's
accuracy on the first `score_samples` evaluation samples, scored just before the average by the
trainer's scorer, which reads any model output, dict batches included; better replicas count more).

outer = "diloco" (Douillard et al., 2023): the ranks' average is not taken as it is; the change
from the last agreed parameters, anchor - average, is a pseudo-gradient for an outer SGD with
Nesterov momentum on the anchor. outer_lr = 1 with outer_momentum = 0 is plain averaging.
"""

from __future__ import annotations

from typing import Any

import torch

from shoal.errors import ShoalError
from shoal.sync.base import SYNC, SyncContext
from shoal.sync.local_updates import LocalUpdates


@SYNC.register("average")
class Average(LocalUpdates):
    def __init__(self, ctx: SyncContext):
        super().__init__(ctx)
        self.cfg = ctx.cfg.average
        self.score = None  # score(n): this replica's accuracy on the first n evaluation samples (from the trainer)
        self.anchor: list[torch.Tensor] = []
        self.outer: torch.optim.Optimizer | None = None

    def attach(self, layout, optimizer: torch.optim.Optimizer, score=None) -> None:
        super().attach(layout, optimizer, score)
        self.score = score
        if self.cfg.weights == "score" and score is None:
            raise ShoalError("average.weights = 'score' weighs each replica by its accuracy on evaluation data: give an eval set "
                             "(data.eval_fraction > 0, or eval_set= in shoal.fit) and a classification loss, or choose "
                             "weights = 'equal' / 'samples'")
        if self.cfg.outer == "diloco":
            self.anchor = [t.detach().clone().requires_grad_(True) for t in self.tensors()[: self._n_params()]]
            momentum = self.cfg.outer_momentum
            self.outer = torch.optim.SGD(self.anchor, lr=self.cfg.outer_lr, momentum=momentum, nesterov=momentum > 0)

    def _n_params(self) -> int:
        return len(list(self.module.parameters()))

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0

    def weight(self) -> float:
        if self.cfg.weights == "samples":
            return float(self.samples)
        if self.cfg.weights == "score":
            return self._score() + 1e-6  # a replica that scores 0 still counts a little: the weights never all vanish
        return 1.0

    def _score(self) -> float:
        """The trainer's scorer (train.metrics.ReplicaScore): copes with every output a loss can score (dict batches too)."""
        return self.score(self.cfg.score_samples)

    def combine(self, averaged: list[torch.Tensor]) -> None:
        if self.outer is None:
            return super().combine(averaged)
        n = self._n_params()
        for anchor, avg in zip(self.anchor, averaged[:n]):
            anchor.grad = anchor.detach() - avg  # the pseudo-gradient: how far the ranks moved, on average
        self.outer.step()
        tensors = self.tensors()
        for t, anchor in zip(tensors[:n], self.anchor):
            t.copy_(anchor.detach())
        for t, avg in zip(tensors[n:], averaged[n:]):  # buffers (batch-norm statistics): plainly averaged
            t.copy_(avg)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.outer is not None:
            state |= {"anchor": [a.detach().clone() for a in self.anchor], "outer": self.outer.state_dict()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.outer is not None:
            with torch.no_grad():
                for a, saved in zip(self.anchor, state["anchor"]):
                    a.copy_(saved)
            self.outer.load_state_dict(state["outer"])
