"""train.keep_freed_memory: a step's freed memory is reused by the next, not faulted in again."""

import resource
import sys

import pytest
import torch

from shoal.train.malloc import keep_freed_memory


def _faults_per_round(rounds: int = 50) -> float:
    x = torch.randn(64, 16, 28, 28)  # one conv activation of the MNIST CNN: ~3 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        y = torch.relu(x) * 2  # two fresh blocks, freed at once
        del y
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_blocks_are_reused_without_page_faults():
    assert keep_freed_memory()
    _faults_per_round(5)  # the heap grows once
    assert _faults_per_round() < 100  # handed back to the OS, each round faults ~1,500 pages in again
