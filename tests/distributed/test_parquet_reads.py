"""Parquet through `shoal train` on 2 processes: read per rank, each rank reads half the rows and the model equals one
process within 1e-5; streamed, a run SIGKILLed and restarted resumes its stream position and ends bit-identical."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from parquet_files import job, write_shards
from runs import killed_run_matches_uninterrupted, records, weights
from shoal.api import fit
from shoal.config import load_job
from shoal.data import load
from shoal.data.plan import BatchPlan, plan_for, rank_epoch
from shoal.distributed import shutdown
from shoal.job.worker import run_job
from shoal.launch.local import launch_local
from shoal.models import build_model

pytestmark = pytest.mark.dist
EXACT = 1e-5
STREAM = 'read = "stream"\nstream_block_rows = 100\n'
STREAM_STEPS = "[train]\nglobal_batch_size = 32\nsteps = 14\nlog_every = 1\n[checkpoint]\nevery = 4\n"


def one_process(job_file) -> dict[str, torch.Tensor]:
    """The job in this process (a world of one), built as `shoal train` workers build it, but with no prefetch thread:
    the 2-process runs read ahead in the background (data.prefetch = auto), and must not differ for it."""
    cfg = load_job(job_file)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"prefetch": "off"})})
    splits = load(cfg.data.model_copy(update={"read": cfg.data_read()}), cfg.seed)
    model = build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed)
    try:
        result = fit(model, splits.train, splits.eval, cfg, num_classes=splits.spec.num_classes, loss_fn=F.cross_entropy,
                     show_progress=False, summary=False)
    finally:
        shutdown()
    return result.model.state_dict()


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_each_rank_reads_half_the_rows_and_the_model_equals_one_process(tmp_path):
    shards = write_shards(tmp_path / "prep")
    job_file = tmp_path / "job.toml"
    job_file.write_text(job(shards))  # data.read = auto: per rank
    launch_local(run_job, (load_job(job_file), str(tmp_path / "two")), nproc=2)  # what `shoal train --nproc 2` runs
    reads = records(tmp_path / "two", "data")[0]["ranks"]
    plan = BatchPlan(480, 32, 2, seed=3)
    for rank, read in enumerate(reads):  # two epochs of its training share (a new one each epoch), and its half of evaluation
        assert read["rows_read"] == len(rank_epoch(plan, 0, rank)) + len(rank_epoch(plan, 1, rank)) + 60 == 540, reads
        assert read["on_demand_rows"] <= 32  # a first sample and one micro-batch, read to check shapes
        assert read["peak_bytes"] <= (240 + 60) * (6 * 4 + 16)  # this rank's rows: features, label, row number
    assert max_diff(weights(tmp_path / "two"), one_process(job_file)) < EXACT


def test_with_lanes_each_rank_reads_its_own_row_groups_and_the_model_equals_one_process(tmp_path):
    shards = write_shards(tmp_path / "prep")
    job_file = tmp_path / "job.toml"
    job_file.write_text(job(shards, "lanes = 4\n"))
    cfg = load_job(job_file)
    launch_local(run_job, (cfg, str(tmp_path / "two")), nproc=2)
    reads = records(tmp_path / "two", "data")[0]["ranks"]
    splits = load(cfg.data, cfg.seed)
    plan = plan_for(cfg, len(splits.train), 2, splits.train)
    whole = sum(m.row_group(g).column(c).total_compressed_size for m in (pq.ParquetFile(f).metadata for f in sorted(shards.glob("*.parquet")))
                for g in range(m.num_row_groups) for c in range(m.num_columns))  # the file's bytes: what a rank reads an epoch without lanes
    for rank, read in enumerate(reads):  # two epochs of its own lanes, and its half of evaluation
        own = len(rank_epoch(plan, 0, rank)) + len(rank_epoch(plan, 1, rank)) + len(splits.eval) // 2
        assert read["rows_read"] == own, reads
        # without lanes a rank decodes the whole file each epoch and once more to evaluate (3x its bytes here); with lanes half
        # of that, and a row group or two read on demand to check shapes
        assert read["bytes_read"] < 0.5 * 3 * whole, (reads, whole)
    assert reads[0]["rows_read"] + reads[1]["rows_read"] == 2 * len(splits.train) + len(splits.eval)
    assert max_diff(weights(tmp_path / "two"), one_process(job_file)) < EXACT


def test_streamed_run_killed_and_restarted_ends_bit_identical(tmp_path):
    shards = write_shards(tmp_path / "prep")
    text = job(shards, STREAM, STREAM_STEPS)
    ref = killed_run_matches_uninterrupted(text, tmp_path, part="stream")
    assert max_diff(weights(ref), one_process(tmp_path / "job.toml")) < EXACT
    reads = records(ref, "data")[0]["ranks"]
    assert all(r["peak_bytes"] <= 4 * 100 * (6 * 4 + 8) for r in reads), reads  # two blocks of training, two of evaluation rows
