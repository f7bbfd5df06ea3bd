"""comm.compression = "auto": the choice from measured numbers (hand cases), and a restart keeps its choice."""

from __future__ import annotations

import pytest
import torch

from shoal.compress import auto
from shoal.config import CommConfig, JobConfig
from shoal.distributed import init_distributed
from shoal.distributed.collectives import TrainingGroup
from shoal.distributed.mesh import check_layout
from shoal.sync import SyncContext
from shoal.sync.allreduce import AllReduce

MODEL = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
GRAD_BYTES = 4 * sum(p.numel() for p in MODEL.parameters())


def found(compute: float, bytes_s: float, latency: float, allgather: float | None = None) -> dict:
    return {"compute_s": compute, "bytes_s": bytes_s, "latency_s": latency, "allreduce_s": latency + bytes_s,
            "allgather_s": allgather if allgather is not None else latency + bytes_s / 4, "pass_s": 1e-5, "grad_bytes": GRAD_BYTES}


def test_predictions_follow_the_bytes_each_method_sends():
    f = found(compute=0.010, bytes_s=0.040, latency=0.001)
    p = auto.predict(f, MODEL, CommConfig())
    assert p["none"] == pytest.approx(0.010 + 0.001 + 0.040)
    assert p["fp16"] == pytest.approx(0.010 + 0.001 + 0.020 + 2e-5)  # half the bytes, two passes
    assert p["randk"] == pytest.approx(0.010 + 0.001 + 0.01 * 0.040 + 3e-5)  # 1% of the entries, values only


def test_a_fast_link_keeps_none_and_a_latency_bound_one_too():
    cfg = CommConfig()
    fast = found(compute=0.050, bytes_s=0.002, latency=0.001)
    assert auto.choose(auto.predict(fast, MODEL, cfg), fast)[0] == "none"
    latency_bound = found(compute=0.0001, bytes_s=0.0001, latency=0.0002)
    method, why = auto.choose(auto.predict(latency_bound, MODEL, cfg), latency_bound)
    assert method == "none" and "fast link" in why


def test_a_slow_link_picks_the_least_lossy_method_within_ten_percent_of_the_fastest():
    cfg = CommConfig()
    slow = found(compute=0.010, bytes_s=0.200, latency=0.001, allgather=0.051)
    predicted = auto.predict(slow, MODEL, cfg)
    method, why = auto.choose(predicted, slow)
    fastest = min(predicted[m] for m in auto.LEAST_LOSSY_FIRST)
    assert method != "none" and predicted[method] <= 1.1 * fastest
    less_lossy = auto.LEAST_LOSSY_FIRST[: auto.LEAST_LOSSY_FIRST.index(method)]
    assert all(predicted[m] > 1.1 * fastest for m in less_lossy), predicted
    assert "topk" in predicted and "randk" in predicted  # predicted and logged, never chosen
    assert "uncompressed" in why


def test_the_sparsifiers_are_never_chosen_even_when_predicted_fastest():
    slow = found(compute=0.001, bytes_s=0.500, latency=0.0001)
    predicted = auto.predict(slow, MODEL, CommConfig())
    assert min(predicted, key=predicted.get) in ("topk", "randk")
    assert auto.choose(predicted, slow)[0] == "powersgd"  # the fastest candidate; before, randk (at 1%: 0.83 on MNIST)


def test_a_restart_keeps_the_choice_its_checkpoint_recorded():
    env = init_distributed()
    cfg = JobConfig.model_validate({"comm": {"compression": "auto"}})
    ctx = SyncContext(cfg, env, check_layout(cfg.parallel, 1), TrainingGroup.world())
    strategy = AllReduce(ctx)
    strategy.before_resume({"compression": "fp16", "step": 8})
    strategy.wrap(torch.nn.Linear(4, 2), torch.zeros(2, 4))
    assert strategy.method == "fp16" and type(strategy.compressor).__name__ == "Float16"
    assert strategy.checkpoint_meta() == {"compression": "fp16"}  # and the next checkpoint records it again


def test_powersgd_gets_one_ddp_bucket_so_ranks_issue_its_collectives_in_one_order():
    from shoal.compress import COMPRESSORS
    from shoal.parallel import ddp

    env = init_distributed()
    big = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 1024))  # 8 MB: several default buckets
    wrapped = ddp.apply(big, env, COMPRESSORS.get("powersgd")(CommConfig(compression="powersgd")))
    assert wrapped.bucket_bytes_cap >= sum(p.numel() * 4 for p in big.parameters())
    plain = ddp.apply(torch.nn.Sequential(torch.nn.Linear(8, 8)), env, COMPRESSORS.get("fp16")(CommConfig(compression="fp16")))
    assert plain.bucket_bytes_cap == 25 * 2**20  # the others keep DDP's sizes
