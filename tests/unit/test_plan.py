"""The planner's formulas against hand-computed cases; it drops layouts that do not fit and says why it recommends one."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from shoal.cli import main
from shoal.errors import ShoalError
from shoal.plan import Cluster, Device, Layout, ModelShape, Network, Sync, load_cluster, make_plan, predict
from shoal.plan.cost import (
    all_gather_s,
    all_reduce_s,
    averaging_s,
    bubble_fraction,
    in_flight,
    measured_s,
    optimizer_bytes_per_param,
    param_server_s,
    reduce_scatter_s,
)
from shoal.plan.hardware import DEVICES, NETWORKS, profile_toml
from shoal.plan.search import divisors, layouts, microbatch_counts
from shoal.plan.shapes import with_overrides

GPT3 = ModelShape(layers=96, dim=12288, heads=96, seq=2048, vocab=51200, batch=1536)


def test_ring_collectives_by_hand():
    # 1 GB over 4 devices at 1 GB/s: all-reduce moves 2 * 3/4 GB per device; 6 hops of latency
    assert all_reduce_s(1e9, 4, 1e9, 0.0) == pytest.approx(1.5)
    assert all_reduce_s(1e9, 4, 1e9, 1e-3) == pytest.approx(1.506)
    assert reduce_scatter_s(1e9, 4, 1e9, 1e-3) == pytest.approx(0.753) == all_gather_s(1e9, 4, 1e9, 1e-3)
    assert all_reduce_s(1e9, 1, 1e9, 1.0) == 0.0


def test_pipeline_bubble_and_in_flight_microbatches():
    assert bubble_fraction(4, 8, "1f1b") == pytest.approx(3 / 8) == bubble_fraction(4, 8, "gpipe")
    assert bubble_fraction(4, 8, "interleaved", 2) == pytest.approx(3 / 16)
    assert bubble_fraction(1, 8, "1f1b") == 0.0
    assert in_flight(Layout(pp=4, microbatches=16, schedule="gpipe")) == 16
    assert in_flight(Layout(pp=4, microbatches=16)) == 4  # 1F1B: at most pp micro-batches on the first stage
    assert in_flight(Layout(microbatches=16)) == 1  # accumulation without a pipeline


def test_parameter_server_and_averaging_traffic():
    # 4 workers, 2 servers, 100 MB of gradients: each server link carries 4 * 50 MB in and 4 * 50 MB out
    assert param_server_s(1e8, 4, 2, 1e9, 0.0) == pytest.approx(0.4)
    assert averaging_s(1e9, 4, 8, 1e9, 0.0) == pytest.approx(1.5 / 8)
    assert optimizer_bytes_per_param("adamw", 2) == 12 and optimizer_bytes_per_param("adamw", 4) == 8
    assert optimizer_bytes_per_param("sgd", 4) == 4 and optimizer_bytes_per_param("sgd", 4, momentum=False) == 0


def test_gpt3_parameters_and_megatron_flops_formula():
    h, L, s, V = 12288, 96, 2048, 51200
    assert GPT3.params() == L * (12 * h * h + 2 * h) + 2 * V * h + h  # 175.2B, untied head
    # Narayanan et al. 2021: 72 B s L h^2 (1 + s/6h + V/12Lh) FLOPs per iteration without recompute, 96 ... with it
    per_token = 72 * L * h * h * (1 + s / (6 * h) + V / (12 * L * h))
    assert GPT3.train_flops_per_token() == pytest.approx(per_token, rel=1e-12)
    assert GPT3.train_flops_per_token(recompute=True) == pytest.approx(per_token * 96 / 72, rel=1e-12)
    # Korthikanti et al. 2022: s b h (34 + 5 a s / h) bytes per layer; tensor + sequence parallel divide it by t
    assert GPT3.activation_bytes_per_layer(1, flash=False) == s * h * (34 + 5 * 96 * s / h)
    assert GPT3.activation_bytes_per_layer(2, tp=8, flash=True) == pytest.approx(s * 2 * h * 34 / 8)


def test_llama_shape_gated_grouped_query():
    llama = ModelShape(126, 16384, 128, 8192, 128256, 2048, ffn=53248, kv_heads=8, gated=True)
    assert llama.params() / 1e9 == pytest.approx(405.9, abs=0.1)  # the published 405B


TOY_DEVICE = Device("toy", peak_flops=1e12, memory_bytes=1e12, intra_bw=1.25e9, intra_latency_s=0.0, achievable=1.0,
                    flash_attention=True, dtype_bytes=4)
TOY_NET = Network("toy", bw=1e9, latency_s=0.0, efficiency=1.0)
TOY = ModelShape(layers=2, dim=64, heads=4, seq=16, vocab=100, batch=8)


def test_a_data_parallel_step_by_hand():
    params = 2 * (12 * 64 * 64 + 2 * 64) + 2 * 100 * 64 + 64
    assert TOY.params() == params == 111424
    flops_per_token = 3 * (2 * (2 * 12 * 64 * 64 + 100 * 64) + 4 * 2 * 16 * 64)
    p = predict(TOY, Layout(dp=2), Cluster(TOY_DEVICE, TOY_NET, 1, 2), optimizer="sgd")
    compute = 4 * 16 * flops_per_token / 1e12  # 4 sequences of 16 tokens per replica
    comm = 2 * (1 / 2) * params * 4 / 1e9  # ring all-reduce of fp32 gradients over 2, inside the node (0.8 x 1.25 GB/s)
    assert p.time["compute"] == pytest.approx(compute)
    assert p.time["gradient sync (exposed)"] == pytest.approx(max(comm - 2 / 3 * compute, 0.1 * comm))
    assert p.step_s == pytest.approx(compute + max(comm - 2 / 3 * compute, 0.1 * comm))
    states = params * (2 * 4 + 4)  # fp32 weights and gradients, SGD momentum
    assert p.memory["parameters, gradients, optimizer"] == states
    assert p.memory["activations"] == pytest.approx(2 * 34 * 16 * 4 * 64 * 4 / 2)  # 2 layers, micro-batch of 4, fp32
    ps = predict(TOY, Layout(dp=2), Cluster(TOY_DEVICE, TOY_NET, 1, 2), "sgd", Sync("param_server", servers=1))
    assert ps.time["gradient sync (exposed)"] == pytest.approx(2 * 2 * params * 4 / 1e9)  # nothing overlaps a push and pull
    cpu = replace(TOY_DEVICE, overlaps_comm=False)  # gloo on CPU: the collectives take the compute's cores
    serial = predict(TOY, Layout(dp=2), Cluster(cpu, TOY_NET, 1, 2), optimizer="sgd")
    assert serial.time["gradient sync (exposed)"] == pytest.approx(comm)
    assert serial.step_s == pytest.approx(compute + comm)
    fsdp = predict(TOY, Layout(fsdp=2), Cluster(cpu, TOY_NET, 1, 2), optimizer="sgd")
    gathers = 2 * all_gather_s(params * 4, 2, 1e9, 0.0) + reduce_scatter_s(params * 4, 2, 1e9, 0.0)
    assert fsdp.time["fsdp gather/scatter (exposed)"] == pytest.approx(gathers)


def test_element_wise_work_takes_its_bytes_over_the_memory_bandwidth():
    """Norms, activations, softmax: 2 passes over the kept activations forward, 3 backward, 2 more to recompute."""
    kept = TOY.activation_bytes_per_layer(8, tp=2, flash=False, dtype_bytes=4)
    assert kept == (34 * 16 * 8 * 64 + 5 * 4 * 16 * 16 * 8) * 4 / 2 / 2
    assert TOY.elementwise_bytes_per_layer(8, 2, False, 4) == 5 * kept
    assert TOY.elementwise_bytes_per_layer(8, 2, False, 4, recompute=True) == 7 * kept
    streaming = replace(TOY_DEVICE, mem_bw=1e9, flash_attention=False)
    flat = predict(TOY, Layout(tp=2), Cluster(TOY_DEVICE, TOY_NET, 1, 2), optimizer="sgd")
    p = predict(TOY, Layout(tp=2), Cluster(streaming, TOY_NET, 1, 2), optimizer="sgd")
    assert flat.time["element-wise (memory-bound)"] == 0.0  # a device without mem_bw: inside `achievable`
    assert p.time["element-wise (memory-bound)"] == pytest.approx(2 * 5 * kept / 1e9)  # 2 layers, 8 sequences in one micro-batch
    assert p.time["compute"] == pytest.approx(flat.time["compute"])
    assert p.step_s == pytest.approx(flat.step_s + 2 * 5 * kept / 1e9)
    piped = predict(TOY, Layout(pp=2, microbatches=4), Cluster(streaming, TOY_NET, 1, 2), optimizer="sgd")
    per_stage = 1 * 4 * TOY.elementwise_bytes_per_layer(2, 1, False, 4) / 1e9  # 1 layer per stage, 4 micro-batches of 2
    assert piped.time["element-wise (memory-bound)"] == pytest.approx(per_stage)
    assert piped.time["pipeline bubble"] == pytest.approx((piped.time["compute"] + per_stage) * 1 / 4)


def test_collectives_calibrate_timed_replace_the_ring_model_inside_a_node(tmp_path):
    """gloo's all-gather and reduce-scatter are not rings (on this machine 5-8x the ring model at 16 MB): a profile's
    tables are interpolated log-log at the message size, for groups of the size they were measured at, inside a node."""
    timed = replace(TOY_DEVICE, measured_group=2, message_bytes=(1e3, 1e6), all_reduce_s=(1e-4, 1e-3), all_gather_s=(2e-4, 8e-3),
                    reduce_scatter_s=(3e-4, 2.7e-2))
    assert measured_s(timed, "all_gather", 500, 2) == 2e-4  # below the smallest: its (latency-bound) time
    assert measured_s(timed, "all_gather", math.sqrt(1e3 * 1e6), 2) == pytest.approx(math.sqrt(2e-4 * 8e-3))  # halfway in logs
    assert measured_s(timed, "reduce_scatter", 4e6, 2) == pytest.approx(4 * 2.7e-2)  # beyond the largest: in proportion to bytes
    assert measured_s(timed, "all_gather", 1e6, 4) is None and measured_s(TOY_DEVICE, "all_gather", 1e6, 2) is None
    params = TOY.params() * 4
    fsdp = predict(TOY, Layout(fsdp=2), Cluster(replace(timed, overlaps_comm=False), TOY_NET, 1, 2), optimizer="sgd")
    gather, scatter = measured_s(timed, "all_gather", params, 2), measured_s(timed, "reduce_scatter", params, 2)
    assert fsdp.time["fsdp gather/scatter (exposed)"] == pytest.approx(2 * gather + scatter)
    tp = predict(TOY, Layout(tp=2), Cluster(timed, TOY_NET, 1, 2), optimizer="sgd")
    act = 8 * 16 * 64 * 4  # the whole batch's activations of one layer, fp32
    pair = measured_s(timed, "all_gather", act, 2) + measured_s(timed, "reduce_scatter", act, 2)  # sequence parallelism
    assert tp.time["tensor-parallel collectives"] == pytest.approx(2 * 4 * pair)
    across = predict(TOY, Layout(fsdp=2), Cluster(replace(timed, overlaps_comm=False), TOY_NET, 2, 1), optimizer="sgd")
    assert across.time["fsdp gather/scatter (exposed)"] == pytest.approx(  # a group across nodes: the network's ring model
        2 * all_gather_s(params, 2, 1e9, 0.0) + reduce_scatter_s(params, 2, 1e9, 0.0))
    profile = tmp_path / "timed.toml"
    profile.write_text(profile_toml(timed, TOY_NET, {}))
    assert load_cluster(str(profile), 1, 2).device == timed  # the tables survive the profile file


def test_layout_fixed_costs_per_layer_from_a_tiny_gpt():
    """What FSDP2 and tp add beyond FLOPs and bytes, per layer: measured on a tiny GPT, less the collectives the model
    already charges it; charged per layer (of a stage) and micro-batch, tp's a third more with recomputation."""
    from shoal.plan.fixed_costs import TINY, per_layer

    timed = replace(TOY_DEVICE, overlaps_comm=False, measured_group=2, message_bytes=(1e3, 1e6), all_reduce_s=(1e-4, 1e-3),
                    all_gather_s=(2e-4, 8e-3), reduce_scatter_s=(3e-4, 2.7e-2))
    tiny = ModelShape(**TINY)
    charged = predict(tiny, Layout(fsdp=2), Cluster(timed, TOY_NET, 1, 2)).time["fsdp gather/scatter (exposed)"]
    weights = tiny.params() * 4  # all of the tiny model's fp32 parameters, gathered twice and reduce-scattered once
    assert charged == pytest.approx(2 * measured_s(timed, "all_gather", weights, 2) + measured_s(timed, "reduce_scatter", weights, 2))
    fixed = per_layer({"plain": 0.010, "fsdp": 0.050, "tp": 0.110}, timed)
    assert fixed["fsdp_layer_s"] == pytest.approx((0.040 - charged) / 4)
    act = TINY["batch"] * TINY["seq"] * TINY["dim"] * 4  # 4 layers x 4 all-gather + reduce-scatter pairs of these activations
    tp_charged = 4 * 4 * (measured_s(timed, "all_gather", act, 2) + measured_s(timed, "reduce_scatter", act, 2))
    assert fixed["tp_layer_s"] == pytest.approx((0.100 - tp_charged) / 4)
    assert per_layer({"plain": 0.010, "fsdp": 0.010, "tp": 0.010}, timed) == {"fsdp_layer_s": 0.0, "tp_layer_s": 0.0}  # never negative
    costly = Cluster(replace(timed, **fixed), TOY_NET, 1, 2)
    assert predict(TOY, Layout(fsdp=2), costly).time["layout fixed costs"] == pytest.approx(2 * fixed["fsdp_layer_s"])
    assert predict(TOY, Layout(tp=2, recompute=True), costly).time["layout fixed costs"] == pytest.approx(2 * fixed["tp_layer_s"] * 4 / 3)
    assert predict(TOY, Layout(pp=2, microbatches=4), costly).time["layout fixed costs"] == 0.0
    assert predict(TOY, Layout(fsdp=2), Cluster(timed, TOY_NET, 1, 2)).time["layout fixed costs"] == 0.0  # presets: none


def test_groups_that_leave_the_node_use_the_network():
    slow = Network("slow", 1e8, 0.0, 1.0)  # a tenth of the node's 1 GB/s (0.8 x 1.25)
    inside = predict(TOY, Layout(dp=2), Cluster(TOY_DEVICE, slow, 1, 2)).time["gradient sync (exposed)"]
    across = predict(TOY, Layout(dp=2), Cluster(TOY_DEVICE, slow, 2, 1)).time["gradient sync (exposed)"]
    assert across > 5 * inside
    shared = Network("one link per node", 1e9, 0.0, 1.0, shared=True)
    assert shared.per_device_bw(8) == pytest.approx(1.25e8)  # a node's devices share its one link


def test_layouts_enumerated_and_refused_when_they_do_not_fit():
    assert divisors(12) == [1, 2, 3, 4, 6, 12] and microbatch_counts(16, 4) == [4, 8, 16] and microbatch_counts(6, 1) == [1, 2]
    small = load_cluster("a100:ib-hdr", 1, 8)
    with pytest.raises(ShoalError, match="no layout fits in 80 GB per device"):
        make_plan(GPT3, small)
    big = load_cluster("a100:ib-hdr", 96, 8)  # 768 devices: 1536 sequences split evenly over plain data parallel too
    plan = make_plan(GPT3, big)
    assert all(p.layout.world == 768 for p in plan.predictions) and len(plan.predictions) == len(layouts(GPT3, big))
    assert plan.best.fits and plan.best.memory_bytes <= 0.92 * 80e9 and any(not p.fits for p in plan.predictions)
    assert plan.best.step_s == pytest.approx(min(p.step_s for p in plan.fitting), rel=1e-3)  # ties: fewer micro-batches
    assert any("plain data parallel does not fit" in r for r in plan.reasons) and "fastest of the" in plan.reasons[0]


def test_presets_and_profiles(tmp_path):
    for device in ("a100", "h100", "h200", "mi300x"):
        for network in NETWORKS:
            assert load_cluster(f"{device}:{network}", 2, 8).world == 16
    assert DEVICES["h200"].memory_bytes > DEVICES["h100"].memory_bytes
    with pytest.raises(ShoalError, match="unknown device 'tpu'"):
        load_cluster("tpu", 1, 8)
    with pytest.raises(ShoalError, match="profile file .* not found"):
        load_cluster(str(tmp_path / "none.toml"), 1, 8)
    profile = tmp_path / "me.toml"
    profile.write_text(profile_toml(TOY_DEVICE, TOY_NET, {"sizes": [1, 2], "note": 'a "quoted" word'}))
    assert load_cluster(str(profile), 1, 4).device == TOY_DEVICE


def test_shapes_given_directly():
    shape = with_overrides(None, "layers=2,dim=64,heads=4,seq=16,vocab=100,batch=8,gated=true")
    assert shape.gated and shape.layers == 2
    with pytest.raises(ShoalError, match="give a job file or --model with dim"):
        with_overrides(None, "layers=2")
    with pytest.raises(ShoalError, match="'depth=3' is not KEY=VALUE"):
        with_overrides(shape, "depth=3")


def test_the_command_on_a_job_file(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["plan", "examples/gpt_shakespeare.toml", "--cluster", "cpu", "--nodes", "1", "--devices-per-node", "4",
              "--json", str(tmp_path / "plan.json")])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "recommended:" in out and "4 layers, dim 128" in out, out
    assert '"recommended"' in (tmp_path / "plan.json").read_text()
    with pytest.raises(SystemExit) as done:
        main(["plan", "--model", "layers=96,dim=12288,heads=96,seq=2048,vocab=51200,batch=1536", "--cluster", "h100", "--nodes", "1"])
    assert done.value.code == 2 and "no layout fits" in capsys.readouterr().err
