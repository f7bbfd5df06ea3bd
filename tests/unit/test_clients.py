"""Federated client splits (data/clients.py) and what the federated strategy refuses: pure functions, one process."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.config import JobConfig
from shoal.data.clients import ClientPlan, split_clients
from shoal.distributed.collectives import TrainingGroup
from shoal.distributed.mesh import ParallelDims
from shoal.errors import ShoalError
from shoal.sync import SyncContext, build

LABELS = np.repeat(np.arange(10), 50)  # 500 samples, 10 classes


@pytest.mark.parametrize("split", ["iid", "label_skew", "dirichlet"])
def test_every_split_is_disjoint_covers_every_sample_and_leaves_no_client_empty(split):
    shards = split_clients(LABELS, 4, split, seed=1, labels_per_client=3, alpha=0.1)
    joined = np.concatenate(shards)
    assert len(joined) == len(LABELS) and len(np.unique(joined)) == len(LABELS)
    assert all(len(s) for s in shards)
    assert [s.tolist() for s in shards] == [s.tolist() for s in split_clients(LABELS, 4, split, 1, 3, 0.1)]  # from the seed alone


def test_label_skew_gives_each_client_its_classes_and_dirichlet_skews_with_small_alpha():
    shards = split_clients(LABELS, 5, "label_skew", seed=0, labels_per_client=2)
    assert [len(np.unique(LABELS[s])) for s in shards] == [2] * 5
    skewed = split_clients(LABELS, 5, "dirichlet", seed=0, alpha=0.05)
    even = split_clients(LABELS, 5, "dirichlet", seed=0, alpha=1000.0)
    share = lambda shards: np.mean([np.bincount(LABELS[s], minlength=10).max() / len(s) for s in shards])  # noqa: E731
    assert share(skewed) > 0.5 > share(even)


def test_a_round_reads_only_the_sampled_clients_shards_in_batches():
    shards = tuple(split_clients(LABELS, 4, "iid", seed=2))
    plan = ClientPlan(shards, batch=32, local_epochs=2, clients_per_round=2, seed=2)
    assert plan.steps_per_epoch() == 2 * 4  # 125 samples a client: 4 batches of 32, twice
    chosen = plan.sampled(0).tolist()
    assert len(chosen) == 2 and chosen == plan.sampled(0).tolist()
    read = [set() for _ in range(4)]
    for step in range(plan.steps_per_epoch() // 2):  # one local epoch
        for client, idx in enumerate(plan.step(0, step)):
            assert set(idx.tolist()) <= set(shards[client].tolist())
            read[client] |= set(idx.tolist())
    assert [len(r) for r in read] == [125 if c in chosen else 0 for c in range(4)]


def _federated(dp: int, **federated):
    cfg = JobConfig.model_validate({"sync": "federated", "federated": federated})
    dims = ParallelDims(dp, 1, 1, 1, dp)
    return build(SyncContext(cfg, None, dims, TrainingGroup(None, 0, dp, tuple(range(dp)))))


def test_resuming_federated_training_with_another_client_count_is_refused():
    _federated(3).before_resume({"clients": 3})
    with pytest.raises(ShoalError, match="written by 2 clients and this run has 3.*--nproc 2"):
        _federated(3).before_resume({"clients": 2})


def test_federated_refuses_train_steps_and_averaging_refuses_compression():
    with pytest.raises(ShoalError, match="federated.rounds"):
        build(SyncContext(JobConfig.model_validate({"sync": "federated", "train": {"steps": 5}}), None,
                          ParallelDims(2, 1, 1, 1, 2), TrainingGroup(None, 0, 2, (0, 1))))
    with pytest.raises(ShoalError, match="comm.compression = 'fp16'.*sync = 'average'"):
        build(SyncContext(JobConfig.model_validate({"sync": "average", "comm": {"compression": "fp16"}}), None,
                          ParallelDims(2, 1, 1, 1, 2), TrainingGroup(None, 0, 2, (0, 1))))
