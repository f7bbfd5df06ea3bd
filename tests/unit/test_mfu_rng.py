"""Measuring the device's peak (the mfu monitor, at every run's start) leaves the job's random stream where it was:
otherwise turning a monitor on would change the dropout masks, and the losses, of the run it measures."""

from __future__ import annotations

import torch

from shoal.monitor.flops import measured_peak_flops


def test_measuring_the_peak_does_not_move_the_global_rng():
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    assert measured_peak_flops("cpu", size=32, seconds=0.001) > 0
    assert torch.equal(torch.rand(4), expected)
