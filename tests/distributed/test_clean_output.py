"""The README's model-parallel command (gpt, fsdp 2 x tp 2 on 4 processes) prints no torch warnings: FSDP2's
"returned a view tensor" and DTensor's "sequential all_gather" were filtered where they cannot apply
(docs/parallel.md), and nothing else is printed beyond Shoal's own lines."""

from __future__ import annotations

import pytest

from runs import shoal_train

pytestmark = [pytest.mark.dist, pytest.mark.slow]

ROOT = __import__("pathlib").Path(__file__).parents[2]


def test_the_headline_model_parallel_command_prints_no_torch_warnings(tmp_path):
    proc = shoal_train(ROOT / "examples" / "gpt_shakespeare.toml", tmp_path / "run", "--nproc", "4", "--set", "parallel.fsdp=2",
                       "--set", "parallel.tp=2", "--set", "train.steps=2", "--set", "schedule.warmup_steps=0",
                       "--set", "model.layers=1", "--set", "data.limit_eval=64", "--overwrite")
    text = proc.stdout + proc.stderr
    assert "Warning" not in text and "warnings.warn" not in text and "sequential all_gather" not in text, text[-3000:]
