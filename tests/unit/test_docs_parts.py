"""The compressor and monitor examples of docs/architecture.md, run as a user would: each code block saved
as a module of its own, named in `plugins`, picked by name in the job."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import shoal
from runs import records

DOC = Path(__file__).parents[2] / "docs" / "architecture.md"


def _block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def _fit(config: dict, tmp_path: Path) -> list[dict]:
    """The training records of a short in-process run."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    out = tmp_path / "run"
    shoal.fit(model, TensorDataset(x, y), config={"train": {"global_batch_size": 16, "steps": 4, "log_every": 2}, **config},
              out=out, overwrite=True, summary=False, show_progress=False)
    return records(out, "train")


def test_the_documented_compressor_and_monitor_plug_in_by_name(tmp_path, monkeypatch):
    (tmp_path / "doc_compressor.py").write_text(_block("COMPRESSORS.register"))
    (tmp_path / "doc_monitor.py").write_text(_block("MONITORS.register"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        train = _fit({"plugins": ["doc_compressor", "doc_monitor"], "comm": {"hook": "half"},
                        "log": {"monitors": ["memory", "steps_seen"]}}, tmp_path)
    finally:
        for name in ("doc_compressor", "doc_monitor"):
            sys.modules.pop(name, None)
    assert [r["steps_seen"] for r in train] == [2, 4]
    assert all(r["comm_bytes"] > 0 and r["compression_ratio"] == 2.0 for r in train)  # fp32 -> fp16 on the wire
    assert all(r["state_mb"] > 0 for r in train)
