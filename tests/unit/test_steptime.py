"""Where a step's time goes (data wait, compute, exposed communication, update) and the background prefetch."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch.utils.data import TensorDataset

import shoal
from shoal.data.prefetch import Prefetcher, wanted


def test_the_phases_add_up_to_the_step_and_to_the_measured_throughput(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(512, 32), torch.randint(0, 4, (512,))
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    shoal.fit(model, TensorDataset(x, y), config={"train": {"global_batch_size": 64, "steps": 40, "log_every": 20}},
              out=tmp_path / "run", summary=False, show_progress=False)
    train = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    for r in train:
        phases = [r["data_wait_s"], r["compute_s"], r["comm_exposed_s"], r["update_s"]]
        assert all(p >= 0 for p in phases) and r["compute_s"] > 0
        assert abs(sum(phases) - r["step_s"]) < 1e-9 * max(r["step_s"], 1)
        # the steps' own times against the window's wall clock: within 5% (the rest is the loop's bookkeeping)
        assert 64 / r["step_s"] >= r["samples_per_s"] > 0.95 * 64 / r["step_s"], r


def test_a_prefetched_batch_is_used_only_for_the_indices_it_was_read_for():
    loads = []

    def loader(tag):
        def load():
            loads.append(tag)
            return [tag]
        return load

    ahead = Prefetcher(enabled=True)
    ahead.ahead(Prefetcher.key(np.arange(4), 8), loader("early"))
    assert ahead.take(Prefetcher.key(np.arange(4), 8), loader("late")) == ["early"]
    ahead.ahead(Prefetcher.key(np.arange(4), 8), loader("early"))
    assert ahead.take(Prefetcher.key(np.arange(1, 5), 8), loader("late")) == ["late"]  # shares moved: read again
    ahead.close()
    assert wanted("auto", TensorDataset(torch.zeros(2))) and not wanted("auto", [1, 2]) and wanted("on", [1, 2])
