"""The training core's parts: a compressor's state survives a SIGKILL restart bit-identically, and a sync
strategy written in a file of the user's (registered by name, imported through `plugins`) trains
through `shoal train` without touching Shoal's code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from job_files import digits_mlp, restart_job
from runs import killed_run_matches_uninterrupted, records, shoal_train, weights

pytestmark = pytest.mark.dist

def powersgd_job(factors: str) -> str:
    return restart_job("powersgd", "powersgd_rank = 1\npowersgd_warmup = 2      # compressing (and accumulating error feedback) from step 2 on\n"
                                   "bucket_mb = 0.001       # every matrix a bucket of its own: their state moves per bucket, in flight together\n"
                                   f'powersgd_factors = "{factors}"')

TOY_SYNC = textwrap.dedent('''
    """A toy strategy: no gradient all-reduce at all; after every step each rank's parameters are averaged."""
    import torch.distributed as dist
    from shoal.sync import SYNC, SyncStrategy

    @SYNC.register("average_params")
    class AverageParams(SyncStrategy):
        grads_synced = False

        def __init__(self, ctx):
            super().__init__(ctx)
            self.rounds = 0

        def after_step(self, step, layout):
            for p in layout.parameters():
                dist.all_reduce(p.data, group=self.ctx.group.group)
                p.data /= self.ctx.group.size
            self.rounds += 1

        def stats(self):
            return {"average_rounds": self.rounds}

        def state_dict(self):
            return {"rounds": self.rounds}

        def load_state_dict(self, state):
            self.rounds = state["rounds"]
''')


@pytest.mark.parametrize("factors", ["fp32", "fp16"])
def test_powersgd_state_survives_a_sigkill_restart_bit_identically(tmp_path, factors):
    """torch's hook (fp32 factors) and Shoal's (fp16 factors) keep the same state, checkpointed the same way."""
    ref = killed_run_matches_uninterrupted(powersgd_job(factors), tmp_path)
    wire = [r["comm_bytes"] for r in records(ref, "train")]
    assert wire[0] > wire[-1] > 0, wire  # compression on the wire after warm-up, counted per step


def test_a_sync_strategy_from_a_plugin_file_trains_through_shoal_train(tmp_path):
    (tmp_path / "toy_sync.py").write_text(TOY_SYNC)
    rest = '[optimizer]\nname = "sgd"\nmomentum = 0.0\nlr = 0.1\n[train]\nglobal_batch_size = 32\nsteps = 12\nlog_every = 4\n'
    job = tmp_path / "job.toml"
    job.write_text(digits_mlp("toy", rest))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    shoal_train(job, tmp_path / "allreduce", "--nproc", "2", env=env)
    shoal_train(job, tmp_path / "toy", "--nproc", "2", "--set", 'plugins=["toy_sync"]', "--set", 'sync="average_params"', env=env)
    a, b = weights(tmp_path / "allreduce"), weights(tmp_path / "toy")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6  # SGD without momentum: averaging weights = averaging grads
    assert records(tmp_path / "toy", "train")[-1]["average_rounds"] == 12
    for r in records(tmp_path / "allreduce", "train"):  # DDP's wait for the last buckets, split out of compute
        parts = [r["data_wait_s"], r["compute_s"], r["comm_exposed_s"], r["update_s"]]
        assert r["comm_exposed_s"] > 0 and abs(sum(parts) - r["step_s"]) < 1e-9
    unknown = subprocess.run([sys.executable, "-m", "shoal", "train", str(job), "--out", str(tmp_path / "x"), "--set", 'sync="nope"'],
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "sync = 'nope'" in unknown.stderr and "allreduce" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
