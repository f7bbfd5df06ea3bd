"""Planner at scale: predictions for published large runs next to their published throughput.

Each row is a published layout (model shape, devices, tp/pp/dp, global batch) predicted with the
presets of `shoal plan` as they ship (no fitting to these numbers):
- Megatron-LM GPT on DGX A100 nodes with 8 x HDR InfiniBand (Narayanan et al., SC 2021, Table 1:
  sequence 2048, vocabulary 51200, activation recomputation, interleaved 1F1B). Megatron counts
  the recomputation's FLOPs: the figure compared is hardware FLOP/s per GPU;
- Llama 3 405B on H100 with RoCE (Llama 3 paper, 2024, Table 4: sequence 8192, vocabulary
  128256, 16M tokens per batch; 126 layers, width 16384, 128 heads, 8 KV heads, SwiGLU 53248):
  model FLOP/s per GPU (BF16 MFU x 989 TFLOP/s).
Micro-batches of one sequence, interleaved runs with two chunks per pipeline rank (the papers' v is not
restated here); results in benchmarks/results/plan-scale.json.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from shoal.plan import Layout, ModelShape, predict, preset

ROOT = Path(__file__).parents[1]
# name, shape, cluster preset, devices, (tp, pp, dp), schedule, recompute, published TFLOP/s per GPU, what it counts
RUNS = [
    ("Megatron GPT 18.4B, 256 A100", ModelShape(40, 6144, 48, 2048, 51200, 1024), "a100:ib-hdr", 256, (8, 1, 32), "1f1b", True, 135, "hardware"),
    ("Megatron GPT 39.1B, 512 A100", ModelShape(48, 8192, 64, 2048, 51200, 1536), "a100:ib-hdr", 512, (8, 2, 32), "interleaved", True, 138, "hardware"),
    ("Megatron GPT 76.1B, 1024 A100", ModelShape(60, 10240, 80, 2048, 51200, 1792), "a100:ib-hdr", 1024, (8, 4, 32), "interleaved", True, 140,
     "hardware"),
    ("Megatron GPT 145.6B, 1536 A100", ModelShape(80, 12288, 96, 2048, 51200, 2304), "a100:ib-hdr", 1536, (8, 8, 24), "interleaved", True, 148,
     "hardware"),
    ("Megatron GPT 310.1B, 1920 A100", ModelShape(96, 16384, 128, 2048, 51200, 2160), "a100:ib-hdr", 1920, (8, 16, 15), "interleaved", True, 155,
     "hardware"),
    ("Megatron GPT 529.6B, 2520 A100", ModelShape(105, 20480, 128, 2048, 51200, 2520), "a100:ib-hdr", 2520, (8, 35, 9), "1f1b", True, 163,
     "hardware"),
    ("Megatron GPT 1T, 3072 A100", ModelShape(128, 25600, 160, 2048, 51200, 3072), "a100:ib-hdr", 3072, (8, 64, 6), "interleaved", True, 163,
     "hardware"),
    ("Llama 3 405B, 8192 H100", ModelShape(126, 16384, 128, 8192, 128256, 2048, ffn=53248, kv_heads=8, gated=True), "h100:roce", 8192,
     (8, 16, 64), "interleaved", False, 430, "model"),
    ("Llama 3 405B, 16384 H100", ModelShape(126, 16384, 128, 8192, 128256, 2048, ffn=53248, kv_heads=8, gated=True), "h100:roce", 16384,
     (8, 16, 128), "interleaved", False, 400, "model"),
]


def main() -> None:
    rows = []
    for name, shape, spec, devices, (tp, pp, dp), schedule, recompute, published, counts in RUNS:
        cluster = preset(spec, devices // 8, 8)
        if name.startswith("Megatron"):  # 2021: a fused softmax over materialised scores (flash attention came in 2022)
            cluster = replace(cluster, device=replace(cluster.device, flash_attention=False))
        m = shape.batch // dp  # micro-batches of one sequence
        v = 2 if schedule == "interleaved" else 1  # two chunks per rank (Llama 3's 126 layers split unevenly; the model takes L / pp)
        layout = Layout(dp=dp, tp=tp, pp=pp, microbatches=m, schedule=schedule if v == 2 else "1f1b", stages_per_rank=v, recompute=recompute)
        p = predict(shape, layout, cluster)
        flops = shape.batch * shape.seq * shape.train_flops_per_token(recompute and counts == "hardware") / devices / p.step_s / 1e12
        rows.append({"run": name, "layout": layout.describe(), "predicted_tflops": flops, "published_tflops": published, "counts": counts,
                     "error": flops / published - 1, "predicted_step_s": p.step_s, "predicted_memory_gb": p.memory_bytes / 1e9, "fits": p.fits})
        print(f"{name:32} {layout.describe():38} predicted {flops:6.1f} published {published:4} TFLOP/s per GPU ({counts})  "
              f"error {flops / published - 1:+.0%}  memory {p.memory_bytes / 1e9:6.1f} GB{'' if p.fits else ' (over)'}")
    within = sum(abs(r["error"]) <= 0.2 for r in rows)
    print(f"{within} of {len(rows)} within 20%")
    (ROOT / "benchmarks" / "results" / "plan-scale.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
