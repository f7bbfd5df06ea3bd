"""Federated clients: which samples each client (rank) owns, and the batches it reads each round.

A client's data never moves: the split is computed from the seed and the labels alone, the same on
every rank, and a client's batches are slices of its own shard only. Splits:

- iid: a seeded permutation cut into near-equal parts;
- label_skew: each client holds `labels_per_client` classes (class k's samples are shared by the
  clients holding k), the usual pathological non-iid split of McMahan et al. (2017);
- dirichlet: each class is spread over clients in proportions drawn from Dirichlet(alpha), the
  split of Hsu et al. (2019): small alpha, few classes per client.

A round is `local_epochs` passes of every sampled client over its shard in batches of
`batch` samples; the round has as many steps as the largest shard needs, and a client that has
finished (or was not sampled) gets empty batches, on which it does not step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from shoal.data.partition import rng_for, split_sizes

SPLITS = ("iid", "label_skew", "dirichlet")
_SPLIT_STREAM, _ORDER_STREAM, _SAMPLE_STREAM = 11, 12, 13


def split_clients(labels: np.ndarray, clients: int, split: str, seed: int, labels_per_client: int = 2,
                  alpha: float = 0.5) -> list[np.ndarray]:
    """Disjoint, sorted index arrays, one per client, covering every sample; no client is left empty."""
    n = len(labels)
    if clients > n:
        raise ValueError(f"{clients} clients need at least as many samples (got {n})")
    rng = rng_for(seed, _SPLIT_STREAM)
    if split == "iid":
        parts = np.array_split(rng.permutation(n), clients)
    elif split == "label_skew":
        parts = _label_skew(labels, clients, labels_per_client, rng)
    elif split == "dirichlet":
        parts = _dirichlet(labels, clients, alpha, rng)
    else:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _label_skew(labels: np.ndarray, clients: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(labels)
    per_client = min(per_client, len(classes))
    # client c holds classes c*per_client, c*per_client+1, ... (mod the class count): every class is held when
    # clients * per_client >= classes, and class holders split that class's samples evenly
    held = [[classes[(c * per_client + j) % len(classes)] for j in range(per_client)] for c in range(clients)]
    holders: dict[int, list[int]] = {int(k): [] for k in classes}
    for c, ks in enumerate(held):
        for k in ks:
            holders[int(k)].append(c)
    parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for k, who in holders.items():
        members = rng.permutation(np.flatnonzero(labels == k))
        if not who:  # more classes than clients x per_client: the class goes to the clients in turn
            who = [k % clients]
        for c, chunk in zip(who, np.array_split(members, len(who))):
            parts[c].append(chunk)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]


def _dirichlet(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        proportions = rng.dirichlet([alpha] * clients)
        sizes = split_sizes(len(members), [max(p, 1e-12) for p in proportions])
        for c, chunk in enumerate(np.split(members, np.cumsum(sizes)[:-1])):
            parts[c].append(chunk)
    out = [np.concatenate(p) for p in parts]
    for c in range(clients):  # a client with nothing takes one sample from the largest, so every client trains
        if len(out[c]) == 0:
            big = max(range(clients), key=lambda i: len(out[i]))
            out[c], out[big] = out[big][:1], out[big][1:]
    return out


@dataclass(frozen=True)
class ClientPlan:
    """The BatchPlan of federated training: a trainer "epoch" is one round."""

    shards: tuple[np.ndarray, ...] = field(repr=False)
    batch: int  # samples of one client's step
    local_epochs: int
    clients_per_round: int  # 0: every client
    seed: int
    shuffle: bool = True

    @property
    def world(self) -> int:
        return len(self.shards)

    @property
    def n_samples(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def local_batch(self) -> int:
        return self.batch

    @property
    def global_batch(self) -> int:
        return self.batch * self.world

    def steps_per_local_epoch(self) -> int:
        return max(math.ceil(len(s) / self.batch) for s in self.shards)

    def steps_per_epoch(self) -> int:
        """Steps of one round."""
        return self.local_epochs * self.steps_per_local_epoch()

    def sampled(self, round_: int) -> np.ndarray:
        """The clients of a round (seeded; every client when clients_per_round is 0 or covers them all)."""
        if not self.clients_per_round or self.clients_per_round >= self.world:
            return np.arange(self.world)
        return np.sort(rng_for(self.seed, _SAMPLE_STREAM, round_).choice(self.world, self.clients_per_round, replace=False))

    def step(self, round_: int, step: int, shares=None) -> list[np.ndarray]:
        """Every client's indices at this step of the round: a slice of its own shard, or nothing."""
        if shares is not None:
            raise ValueError("batch shares do not apply to federated clients: each trains on its own data")
        epoch, in_epoch = divmod(step, self.steps_per_local_epoch())
        chosen = set(self.sampled(round_).tolist())
        out = []
        for client, shard in enumerate(self.shards):
            if client not in chosen:
                out.append(shard[:0])
                continue
            order = rng_for(self.seed, _ORDER_STREAM, round_, epoch, client).permutation(len(shard)) if self.shuffle else np.arange(len(shard))
            out.append(shard[order[in_epoch * self.batch : (in_epoch + 1) * self.batch]])
        return out
