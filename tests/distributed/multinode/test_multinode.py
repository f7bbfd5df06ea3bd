"""Two and three "machines" (network namespaces) train one job over the c10d rendezvous and get
exactly the model one process gets: global batches do not depend on the world size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from multinode_jobs import JOB, node_command, wait_all

pytestmark = pytest.mark.dist


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    (tmp / "job.toml").write_text(JOB)
    proc = subprocess.run([sys.executable, "-m", "shoal", "train", str(tmp / "job.toml"), "--nproc", "1", "--out", str(tmp / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


@pytest.mark.parametrize("nodes", [2, 3])
def test_nodes_in_namespaces_equal_one_process(network, tmp_path, single_process, nodes):
    net = network(nodes)
    (tmp_path / "job.toml").write_text(JOB)
    out = tmp_path / "run"
    procs = [net.start(i, node_command(net, i, tmp_path / "job.toml", out, str(nodes)), tmp_path / f"node{i}.log") for i in range(nodes)]
    wait_all(procs, tmp_path, timeout=150)
    one = weights(single_process)
    many = weights(out)
    assert max((many[k] - one[k]).abs().max().item() for k in one) < 1e-5
    assert "processes" in (tmp_path / "node0.log").read_text()  # global rank 0's summary
    for i in range(1, nodes):  # the other nodes say what runs there and where progress prints
        assert f"rank {i} of {nodes} train here; global rank 0 runs on " in (tmp_path / f"node{i}.log").read_text()
