"""The same job through `shoal train` (spawn), under torchrun, and the Python API in a torchrun script."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from job_files import digits_mlp
from shoal.config import load_job
from shoal.models import build_model

pytestmark = pytest.mark.dist

JOB = digits_mlp("launch-test", seed=1, data='partition = "round_robin"\n', rest="""\
[train]
global_batch_size = 40
steps = 6
log_every = 2
grad_accum = 2
clip_grad_norm = 1.0
[optimizer]
name = "adamw"
lr = 0.01
""")


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def torchrun(nproc: int, *args: str) -> list[str]:
    # --standalone: a private rendezvous on a free port of localhost
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def max_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("launch")
    job = tmp / "job.toml"
    job.write_text(JOB)
    out = {"one": tmp / "one", "spawn": tmp / "spawn", "torchrun": tmp / "torchrun"}
    run([sys.executable, "-m", "shoal", "train", str(job), "--nproc", "1", "--out", str(out["one"])], tmp)
    run([sys.executable, "-m", "shoal", "train", str(job), "--nproc", "2", "--out", str(out["spawn"])], tmp)
    run(torchrun(2, "-m", "shoal", "train", str(job), "--out", str(out["torchrun"])), tmp)
    return out


def test_run_directory_holds_config_metrics_and_a_plain_state_dict(runs):
    d = runs["spawn"]
    cfg = load_job(d / "config.toml")  # the resolved config is itself a valid job file
    assert cfg.train.global_batch_size == 40 and cfg.nproc == 2
    records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all({"step", "loss", "samples_per_s"} <= r.keys() for r in train)
    assert evals and {"loss", "accuracy", "precision", "recall", "f1"} <= evals[-1].keys()
    model = build_model(cfg.model, (1, 8, 8), 10, cfg.seed)
    model.load_state_dict(weights(d))  # loads into the unwrapped model: no "module." prefixes


def test_spawned_and_torchrun_jobs_equal_one_process(runs):
    one = weights(runs["one"])
    assert max_diff(weights(runs["spawn"]), one) < 1e-5
    assert max_diff(weights(runs["torchrun"]), one) < 1e-5
    losses = {k: [r["loss"] for r in map(json.loads, (v / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for k, v in runs.items()}
    assert losses["spawn"] == pytest.approx(losses["one"], abs=1e-5)
    assert losses["torchrun"] == pytest.approx(losses["one"], abs=1e-5)


SCRIPT = """
import sys
import torch
from torch.utils.data import TensorDataset
import shoal

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 12, generator=g)
y = (x[:, 0] + x[:, 1] > 0).long()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
result = shoal.fit(model, TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:]),
                   {"train": {"global_batch_size": 20, "epochs": 2}, "optimizer": {"lr": 0.1}},
                   out=sys.argv[1], summary=False, show_progress=False)
assert isinstance(result.model, torch.nn.Sequential)
print("accuracy", result.eval["accuracy"])
"""


def test_python_api_in_a_script_under_torchrun(tmp_path):
    script = tmp_path / "train_mine.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run([sys.executable, str(script), str(tmp_path / "alone")], tmp_path)
    proc = run(torchrun(2, str(script), str(tmp_path / "pair")), tmp_path)
    assert "accuracy" in proc.stdout
    assert max_diff(weights(tmp_path / "pair"), weights(tmp_path / "alone")) < 1e-5
