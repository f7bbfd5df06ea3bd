"""Category: the Python API. `shoal.fit` raises ShoalError with the messages `shoal train` prints, in its own words
(overwrite=True, resume=True, out=), as one line, before anything is written."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import shoal
from error_contract import tree
from shoal.errors import ShoalError

g = torch.Generator().manual_seed(0)
DATA = TensorDataset(torch.randn(64, 6, generator=g), torch.randint(0, 2, (64,), generator=g))
CONFIG = {"train": {"global_batch_size": 16, "steps": 1}}


def has_files(root):
    (root / "out").mkdir()
    (root / "out" / "metrics.jsonl").write_text("precious\n")
    return {"out": root / "out"}


def under_file(root):
    (root / "plain").write_text("x")
    return {"out": root / "plain" / "run"}


def a_file(root):
    (root / "plain").write_text("x")
    return {"out": root / "plain"}


CASES = [
    # (id, fit keyword arguments from the root, words)
    ("existing_run", has_files, ["overwrite=True", "out="]),
    ("out_under_a_file", under_file, ["out=", "is a file"]),
    ("out_is_a_file", a_file, ["out=", "not a directory"]),
    ("resume_nothing", lambda r: {"out": r / "fresh", "resume": True}, ["resume=True", "no complete checkpoint"]),
    ("resume_without_out", lambda r: {"resume": True}, ["resume", "out="]),
    ("resume_and_overwrite", lambda r: {"out": r / "x", "resume": True, "overwrite": True}, ["resume=True", "overwrite=True"]),
    ("lr_inf", lambda r: {"config": {**CONFIG, "optimizer": {"lr": float("inf")}}}, ["optimizer.lr", "finite"]),
    ("unknown_key", lambda r: {"config": {"train": {"epoch": 3}}}, ["unknown key 'train.epoch'"]),
    ("missing_job_file", lambda r: {"config": str(r / "nope.toml")}, ["job file", "not found"]),
    ("three_tensors", lambda r: {"train_set": TensorDataset(torch.zeros(8, 2), torch.zeros(8), torch.zeros(8))}, ["train_set"]),
]


@pytest.mark.parametrize("make,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_fit_raises_one_line_in_api_words(tmp_path, make, words):
    kwargs = {"config": CONFIG, "train_set": DATA, **make(tmp_path)}
    before = tree(tmp_path)
    model = torch.nn.Linear(6, 2)
    with pytest.raises(ShoalError) as raised:
        shoal.fit(model, kwargs.pop("train_set"), None, kwargs.pop("config"), summary=False, show_progress=False, **kwargs)
    message = str(raised.value)
    assert len(message.splitlines()) == 1, message
    assert "--" not in message, f"CLI wording in an API error: {message}"
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert tree(tmp_path) == before


def test_resume_of_a_complete_run_says_so(tmp_path):
    """As `shoal train --resume` does: a run at its last step is complete, not trained for zero more steps."""
    out = tmp_path / "run"
    shoal.fit(torch.nn.Linear(6, 2), DATA, None, CONFIG, out=out, summary=False, show_progress=False)
    before = tree(tmp_path)
    with pytest.raises(ShoalError) as raised:
        shoal.fit(torch.nn.Linear(6, 2), DATA, None, CONFIG, out=out, resume=True, summary=False, show_progress=False)
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and "--" not in message, message
    assert "resume=True" in message and "is complete (step 1 of 1)" in message and "train.steps" in message, message
    assert tree(tmp_path) == before
    more = shoal.fit(torch.nn.Linear(6, 2), DATA, None, CONFIG, out=out, resume=True, overrides=["train.steps=2"], summary=False,
                     show_progress=False)
    assert more.steps == 2  # the same run, given more steps, continues
