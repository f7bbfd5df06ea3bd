"""A SIGKILL mid-run on four processes, then the launcher's restart: the final weights and every loss equal an
uninterrupted run's bit for bit, in plain data parallel over 4 ranks (dropout on, so every rank's RNG must come back
too) and in an fsdp = 2 x tp = 2 layout (sharded model and optimizer state restored onto the same mesh).

With more than two ranks the ring all-reduce's order of summation follows an element's offset in DDP's gradient
bucket, and DDP's first iteration lays buckets out differently from later ones; a resumed run takes one throw-away
step first so that its buckets are those of the uninterrupted run (Replicated.prepare_resume, docs/checkpoints.md).
Without it the plain-DDP case differs by 7e-9 to 2e-8. One reference run per layout; the kill lands on a rank other
than 0 after step 6, the checkpoints are every 4 steps."""

from __future__ import annotations

import pytest

from job_files import digits_mlp
from runs import killed_run_matches_uninterrupted

pytestmark = pytest.mark.dist


def four_rank_job(name: str, model: str = "", parallel: str = "") -> str:
    return digits_mlp(name, f"""{model}
[optimizer]
name = "adamw"
lr = 0.01
[train]
global_batch_size = 32
steps = 10
log_every = 1
[parallel]
{parallel}
[checkpoint]
every = 4
""", seed=3)


def test_four_data_parallel_ranks_restart_bit_identical(tmp_path):
    job = four_rank_job("dp4").replace('hidden = [16]\n', 'hidden = [16]\ndropout = 0.1\n')
    killed_run_matches_uninterrupted(job, tmp_path, part=None, nproc=4, rank=2)


def test_fsdp_by_tp_layout_restarts_bit_identical(tmp_path):
    killed_run_matches_uninterrupted(four_rank_job("fsdp2-tp2", parallel="fsdp = 2\ntp = 2"), tmp_path, part=None, nproc=4, rank=3)
