"""Checkpoints: atomic commit, keep-last-k, exact round trip of model, optimizer, schedule and RNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoal.checkpoint import Checkpointer, complete_checkpoints, latest_checkpoint, load_model_weights
from shoal.config import ScheduleConfig
from shoal.distributed import init_distributed
from shoal.train.optim import build_scheduler


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = build_scheduler(opt, 20, ScheduleConfig(name="cosine", warmup_steps=3))
    return model, opt, sched


def steps(model, opt, sched, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        torch.nn.functional.cross_entropy(torch.nn.functional.dropout(model(x), 0.3), y).backward()
        opt.step()
        sched.step()
        opt.zero_grad()


@pytest.fixture(autouse=True)
def world_of_one():
    init_distributed()


def test_resume_continues_bit_identically(tmp_path: Path):
    model, opt, sched = make()
    steps(model, opt, sched, 4, seed=1)
    ck = Checkpointer(tmp_path / "ck", rank=0, world=1)
    path = ck.save(4, [model], opt, sched, {"layout": "dp=1"})
    steps(model, opt, sched, 3, seed=2)  # the uninterrupted run

    fresh, fopt, fsched = make(seed=99)
    state = ck.load(path, [fresh], fopt, fsched)
    assert state.step == 4
    steps(fresh, fopt, fsched, 3, seed=2)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fsched.get_last_lr() == sched.get_last_lr()


def test_only_committed_checkpoints_count_and_old_ones_go(tmp_path: Path):
    model, opt, sched = make()
    ck = Checkpointer(tmp_path, rank=0, world=1, keep=2)
    for step in (1, 2, 3):
        ck.save(step, [model], opt, sched, {})
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    (tmp_path / ".tmp-step-00000004").mkdir()  # a write that died before its commit
    (tmp_path / "step-00000005").mkdir()  # no marker: not complete either
    assert latest_checkpoint(tmp_path).name == "step-00000003"


def test_a_crash_before_the_commit_leaves_the_previous_checkpoint(tmp_path: Path):
    model, opt, sched = make()
    ck = Checkpointer(tmp_path, rank=0, world=1)
    ck.save(1, [model], opt, sched, {})

    def die(step):
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        ck.save(2, [model], opt, sched, {}, fault=die)
    assert latest_checkpoint(tmp_path).name == "step-00000001"


def test_weights_load_into_a_plain_module(tmp_path: Path):
    model, opt, sched = make()
    steps(model, opt, sched, 2, seed=3)
    path = Checkpointer(tmp_path, rank=0, world=1).save(2, [model], opt, sched, {})
    plain, _, _ = make(seed=5)
    load_model_weights(path, plain)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def test_asynchronous_save_commits_on_wait(tmp_path: Path):
    model, opt, sched = make()
    steps(model, opt, sched, 2, seed=4)
    ck = Checkpointer(tmp_path, rank=0, world=1, async_save=True)
    path = ck.save(2, [model], opt, sched, {})
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    steps(model, opt, sched, 2, seed=5)  # training goes on while the save is in flight; the copy was taken before
    ck.wait()
    assert latest_checkpoint(tmp_path) == path
    plain, _, _ = make(seed=5)
    load_model_weights(path, plain)
    assert all(torch.equal(expected[k], v) for k, v in plain.state_dict().items())
