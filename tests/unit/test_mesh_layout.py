"""The layout object (ParallelDims) and every layout error a user can make, each with its message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shoal.config import JobConfig, ParallelConfig, validate
from shoal.distributed.mesh import ParallelDims, check_layout
from shoal.errors import ShoalError
from shoal.job.checks import check_batching
from shoal.models.gpt import build_gpt
from shoal.parallel import pipeline, tensor
from shoal.parallel.layers import require_chain


def dims(world: int, **parallel) -> ParallelDims:
    return check_layout(ParallelConfig(**parallel), world)


def test_dp_fills_the_rest_and_ranks_are_row_major():
    d = dims(8, pp=2, tp=2)
    assert (d.pp, d.dp, d.fsdp, d.tp, d.dp_size) == (2, 2, 1, 2, 2)
    assert d.describe() == "pp=2 x dp=2 x tp=2"
    # rank = ((pp * dp + dp_i) * fsdp + fsdp_i) * tp + tp_i, as init_device_mesh lays the ranks out
    assert d.coords(5) == {"pp": 1, "dp": 0, "fsdp": 0, "tp": 1}
    assert [d.dp_rank(r) for r in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]
    hsdp = dims(4, dp=2, fsdp=2)
    assert [hsdp.dp_rank(r) for r in range(4)] == [0, 1, 2, 3] and hsdp.dp_size == 4


def test_plain_data_parallel_is_not_model_parallel():
    assert not dims(4).model_parallel and dims(4).dp == 4
    assert dims(4, fsdp=4).model_parallel


@pytest.mark.parametrize("world, parallel, message", [
    (4, {"dp": 2, "tp": 3}, "parallel: dp x fsdp x tp x pp = 2 x 1 x 3 x 1 = 6 but there are 4 processes; make the product equal --nproc"),
    (4, {"tp": 3}, "parallel: fsdp x tp x pp = 1 x 3 x 1 = 3 does not divide the 4 processes"),
    (2, {"pp": 2, "pp_schedule": "1f1b", "microbatches": 1}, "parallel.microbatches = 1 must be at least parallel.pp = 2 for the 1f1b schedule"),
    (4, {"pp": 4, "pp_schedule": "interleaved", "microbatches": 6}, "parallel.microbatches = 6 must be a multiple of parallel.pp = 4"),
    (2, {"pp": 2, "pp_speeds": [1.0, 2.0, 3.0]}, "parallel.pp_speeds has 3 entries but parallel.pp = 2"),
    (2, {"pp_split": ["layers.1"]}, "parallel.pp_split = ['layers.1'] needs parallel.pp > 1"),
])
def test_layout_errors_name_the_numbers(world, parallel, message):
    with pytest.raises(ShoalError) as err:
        dims(world, **parallel)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ShoalError, match="parallel.pp_schedule"):
        validate({"parallel": {"pp_schedule": "zigzag"}})


def job(**sections) -> JobConfig:
    return validate(sections)


def test_batching_is_checked_against_the_data_parallel_degree():
    # 4 processes as tp=2 x dp=2: the batch is dealt over 2 replicas, so 6 divides (not a multiple of 4), and 5 is
    # dealt 3 + 2; where every rank owns a fixed shard it must divide
    check_batching(job(parallel={"tp": 2}, train={"global_batch_size": 6, "steps": 1}), 100, 4)
    check_batching(job(parallel={"tp": 2}, train={"global_batch_size": 5, "steps": 1}), 100, 4)
    with pytest.raises(ShoalError, match="must be divisible by processes x train.grad_accum = 2 x 1"):
        check_batching(job(parallel={"tp": 2}, data={"partition_scope": "dataset"}, train={"global_batch_size": 5, "steps": 1}), 100, 4)


def test_pipeline_batches_must_split_into_microbatches():
    with pytest.raises(ShoalError, match=r"parallel.microbatches = 4 must divide the per-replica batch .* = 6"):
        check_batching(job(parallel={"pp": 2}, train={"global_batch_size": 6, "steps": 1}), 100, 2)
    with pytest.raises(ShoalError, match="the last batch of an epoch has 4 samples"):
        check_batching(job(parallel={"pp": 2}, train={"global_batch_size": 8, "epochs": 1}), 100, 2)
    check_batching(job(parallel={"pp": 2}, train={"global_batch_size": 8, "epochs": 1}, data={"drop_last": True}), 100, 2)


def test_tensor_parallel_plan_errors():
    gpt = build_gpt(16, 60, dim=36, layers=1, heads=6)
    with pytest.raises(ShoalError, match="parallel.tp: model.heads = 6 must be divisible by parallel.tp = 4"):
        tensor.resolve_plan(gpt, ParallelConfig(tp=4), 4)
    mlp = nn.Sequential(nn.Linear(8, 30), nn.ReLU(), nn.Linear(30, 3))
    plan = tensor.resolve_plan(mlp, ParallelConfig(tp=4), 4)
    with pytest.raises(ShoalError, match="layer '0' has 30 outputs, not divisible by 4"):
        tensor.check_divisible(mlp, plan, 4)
    with pytest.raises(ShoalError, match="parallel.tp_plan: the model has no module 'fc9'"):
        tensor.resolve_plan(mlp, ParallelConfig(tp=2, tp_plan={"fc9": "colwise"}), 2)
    with pytest.raises(ShoalError, match="fewer than two Linear layers"):
        tensor.resolve_plan(nn.Sequential(nn.Linear(4, 4)), ParallelConfig(tp=2), 2)


def test_automatic_plan_pairs_linear_layers():
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert tensor.auto_plan(mlp) == {"0": "colwise", "2": "rowwise"}


def test_pipeline_split_errors():
    names = ["tok_embeddings", "layers.0", "layers.1", "norm", "output"]
    assert pipeline._cuts_from_names(names, ["layers.1"], 2) == [2]
    with pytest.raises(ShoalError, match="'layers.7' is not one of the model's layers"):
        pipeline._cuts_from_names(names, ["layers.7"], 2)
    with pytest.raises(ShoalError, match="give 1 distinct layer names in forward order"):
        pipeline._cuts_from_names(names, ["layers.0", "norm"], 2)

    class Branchy(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ShoalError, match="Branchy is not a chain of layers"):
        require_chain(Branchy(), "parallel.pp = 2")


def test_stage_chain_keeps_original_names():
    gpt = build_gpt(8, 20, dim=16, layers=2, heads=2)
    stage = pipeline.StageChain(gpt, ["layers.1", "norm", "output"])
    assert set(stage.state_dict()) == {k for k in gpt.state_dict() if k.startswith(("layers.1.", "norm.", "output."))}
    h = torch.randn(2, 8, 16)
    assert torch.equal(stage(h), gpt.output(gpt.norm(gpt.layers["1"](h))))


def test_tied_head_cannot_span_pipeline_stages():
    gpt = build_gpt(8, 20, dim=16, layers=2, heads=2, tie_head=True)
    with pytest.raises(ShoalError, match="tied weights"):
        pipeline.check_untied([["tok_embeddings", "layers.0"], ["layers.1", "norm", "output"]], gpt)
