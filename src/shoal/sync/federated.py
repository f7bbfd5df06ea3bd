"""sync = "federated": FedAvg (McMahan et al., 2017) and FedProx, one client per data-parallel rank.

Each client owns one shard of the training set (data/clients.py: iid, label_skew, dirichlet) and
reads nothing else. A round: the sampled clients start from the round's global model with a fresh
optimizer, train `local_epochs` over their own shard, and the round ends with the average of the
clients' models weighted by the samples each trained on (clients not sampled weigh 0). Only
parameters travel, once a round. With prox_mu > 0 each client's gradient gets mu * (w - w_round),
the gradient of FedProx's proximal term, which holds skewed clients near the global model.

A trainer "epoch" is one round; `federated.rounds` replaces train.epochs and train.steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from shoal.data.clients import ClientPlan, split_clients
from shoal.errors import ShoalError
from shoal.sync.base import SYNC, SyncContext
from shoal.sync.local_updates import LocalUpdates


def _labels(dataset) -> np.ndarray:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1].numpy()
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


@SYNC.register("federated")
class Federated(LocalUpdates):
    def __init__(self, ctx: SyncContext):
        super().__init__(ctx)
        self.cfg = ctx.cfg.federated
        if ctx.cfg.train.steps:
            raise ShoalError("sync = 'federated' counts training in federated.rounds (x local_epochs): remove train.steps")
        if ctx.cfg.parallel.batch_shares or ctx.cfg.parallel.balance != "none":
            raise ShoalError("sync = 'federated': parallel.batch_shares and balance do not apply, each client trains on its own data")
        self.plan: ClientPlan | None = None
        self.round_start: list[torch.Tensor] = []
        self.stepped = False  # did this client take a step in the current round
        self.described = False

    def batch_plan(self, n_samples: int, dataset) -> ClientPlan:
        cfg, clients = self.ctx.cfg, self.ctx.dims.dp_size
        if cfg.train.global_batch_size < clients:
            raise ShoalError(f"train.global_batch_size = {cfg.train.global_batch_size} is below the {clients} clients: each client's "
                             "batch is global_batch_size / clients")
        labels = _labels(dataset) if self.cfg.split != "iid" else np.zeros(n_samples, dtype=np.int64)
        try:
            shards = split_clients(labels, clients, self.cfg.split, cfg.seed, self.cfg.labels_per_client, self.cfg.alpha)
        except ValueError as err:
            raise ShoalError(f"federated.split = '{self.cfg.split}': {err}") from None
        self.plan = ClientPlan(tuple(shards), cfg.train.global_batch_size // clients, self.cfg.local_epochs,
                               self.cfg.clients_per_round, cfg.seed, cfg.data.shuffle)
        return self.plan

    def total_steps(self, plan) -> int:
        self.last_step = self.cfg.rounds * plan.steps_per_epoch()
        return self.last_step

    def my_shard(self) -> np.ndarray:
        """The only samples this client may read."""
        return self.plan.shards[self.ctx.group.rank]

    def events(self) -> list[dict]:
        if self.described:
            return []
        self.described = True
        sizes = [len(s) for s in self.plan.shards]
        return [{"kind": "federated", "clients": len(sizes), "split": self.cfg.split, "shard_sizes": sizes,
                 "message": f"federated: {len(sizes)} clients, split {self.cfg.split}, shard sizes {sizes}"}]

    def _begin_round(self) -> None:
        self.optimizer.state.clear()  # a fresh client optimizer each round, from the global model
        if self.cfg.prox_mu > 0:
            self.round_start = [p.detach().clone() for p in self.module.parameters()]

    def attach(self, layout, optimizer, score=None) -> None:
        super().attach(layout, optimizer, score)
        self._begin_round()

    def loss_scale(self, mine: int, total: int) -> float:
        self.stepped = mine > 0
        return super().loss_scale(mine, total)

    def after_backward(self, layout) -> None:
        if self.cfg.prox_mu > 0 and self.stepped:
            for p, w0 in zip(self.module.parameters(), self.round_start):
                if p.grad is not None:
                    p.grad.add_(p.detach() - w0, alpha=self.cfg.prox_mu)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.stepped:  # a client that is done with its data (or not sampled) keeps the round's model untouched
            optimizer.step()

    def due(self, step: int) -> bool:
        return step % self.plan.steps_per_epoch() == 0

    def weight(self) -> float:
        return float(self.samples)

    def average(self) -> None:
        super().average()
        self._begin_round()

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"clients": self.ctx.dims.dp_size}

    def before_resume(self, meta: dict[str, Any]) -> None:
        """Clients own their data: on another number of processes the split, and so the experiment, would change."""
        super().before_resume(meta)
        clients = meta.get("clients")
        if clients is not None and clients != self.ctx.dims.dp_size:
            raise ShoalError(f"sync = 'federated': the checkpoint was written by {clients} clients and this run has "
                             f"{self.ctx.dims.dp_size}; each client's data follows from the client count, so resume with "
                             f"--nproc {clients} (or start a new run)")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "round_start": self.round_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.round_start = state["round_start"]
