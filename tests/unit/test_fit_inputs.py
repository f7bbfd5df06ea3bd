"""What `shoal.fit` accepts: (inputs, target) pairs only, refused with one line otherwise (never guessed),
and a library caller's process settings are left alone unless asked."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import shoal
from shoal.errors import ShoalError

CONFIG = {"train": {"global_batch_size": 16, "steps": 2}}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


class DictSamples(Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        return {"input_ids": torch.zeros(6), "labels": torch.tensor(i % 3)}


class Triples(Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        return torch.zeros(6), torch.ones(6), torch.tensor(i % 3)


def test_a_hugging_face_style_triple_is_refused_not_trained_on_the_mask():
    x, mask, y = torch.randn(32, 6), torch.ones(32, 6, dtype=torch.long), torch.randint(0, 3, (32,))
    with pytest.raises(ShoalError, match=r"train_set: a TensorDataset of 3 tensors.*\(inputs, target\)") as err:
        shoal.fit(_model(), TensorDataset(x, mask, y), config=CONFIG, summary=False, show_progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("dataset,what", [(DictSamples(), "samples are dicts"), (Triples(), "a sample is a tuple of 3")])
def test_other_sample_shapes_are_refused_with_one_line(dataset, what):
    with pytest.raises(ShoalError, match=what) as err:
        shoal.fit(_model(), dataset, config=CONFIG, num_classes=3, summary=False, show_progress=False)
    assert "\n" not in str(err.value)


def test_an_eval_set_is_checked_too():
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    with pytest.raises(ShoalError, match="eval_set: a TensorDataset of 1 tensors"):
        shoal.fit(_model(), TensorDataset(x, y), TensorDataset(x), config=CONFIG, summary=False, show_progress=False)


def test_fit_leaves_the_callers_thread_count_alone_unless_asked():
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shoal.fit(_model(), TensorDataset(x, y), config={**CONFIG, "train": {**CONFIG["train"], "threads": 2}}, summary=False,
                  show_progress=False)
        assert torch.get_num_threads() == 1
        shoal.fit(_model(), TensorDataset(x, y), config={**CONFIG, "train": {**CONFIG["train"], "threads": 2}}, summary=False,
                  show_progress=False, tune_process=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_warmup_longer_than_the_run_is_named_and_the_summary_counts_training_time_alone(capsys):
    """A newcomer's 2-step run with 50 warm-up steps never reaches its learning rate: one warning says so. The
    summary's throughput is over training time only (evaluation excluded), next to the wall time."""
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    cfg = {**CONFIG, "schedule": {"warmup_steps": 50}}
    result = shoal.fit(_model(), TensorDataset(x, y), TensorDataset(x, y), config=cfg)
    out = capsys.readouterr().out
    assert "warning: schedule.warmup_steps = 50 exceeds the run's 2 steps" in out
    assert "training throughput" in out and "training time" in out
    assert 0 < result.train_s <= result.wall_s
    assert result.samples_per_s == pytest.approx(32 / result.train_s)
