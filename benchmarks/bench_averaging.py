"""Model averaging against data parallel on the MNIST CNN (examples/mnist_cnn.toml), 2 processes, side by side:
communication rounds, bytes each rank put on the wire per epoch, and final test accuracy for data parallel,
local SGD (H = 8, 32, 128) and DiLoCo. Every variant trains the same job (same seed, data order, batches,
steps); only `sync` and its section differ. Usage:

    python benchmarks/bench_averaging.py [--variants dp,local8,...] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
JOB = ROOT / "examples" / "mnist_cnn.toml"

VARIANTS = {
    "dp": [],
    "local8": ["sync='average'", "average.every=8"],
    "local32": ["sync='average'", "average.every=32"],
    "local128": ["sync='average'", "average.every=128"],
    "diloco32": ["sync='average'", "average.every=32", "average.outer='diloco'"],
    "diloco128": ["sync='average'", "average.every=128", "average.outer='diloco'"],
}


def sets_of(variant: str) -> list[str]:
    """The --set overrides of a variant (shared with bench_compression_link.py's --methods)."""
    return VARIANTS[variant]


def run(variant: str, out: Path, epochs: int) -> dict:
    sets = [*sets_of(variant), f"train.epochs={epochs}", "checkpoint.at_end=false", "train.log_every=50"]
    cmd = [sys.executable, "-m", "shoal", "train", str(JOB), "--nproc", "2", "--out", str(out), "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run([*cmd, *[a for s in sets for a in ("--set", s)]], check=True, capture_output=True, timeout=3600)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    last = train[-1]
    steps = last["step"]
    if "comm_bytes_total" in last:
        total = last["comm_bytes_total"]
    else:  # all-reduce reports bytes per step
        total = sum(r["comm_bytes"] * (r["step"] - p["step"]) for p, r in zip([{"step": 0}, *train], train))
    accuracy = [r for r in records if r["kind"] == "eval"][-1]["accuracy"]
    return {"rounds": last["comm_rounds"], "steps": steps, "mb_per_epoch": total / epochs / 1e6, "accuracy": accuracy, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for variant in a.variants.split(","):
            rows[variant] = run(variant, Path(d) / variant, a.epochs)
            print(variant, rows[variant], flush=True)
    base = rows.get("dp")
    print(f"\nMNIST CNN, 2 processes, {a.epochs} epochs, global batch 128, AdamW inside (DiLoCo: outer Nesterov SGD, lr 0.7, momentum 0.9)")
    print("| variant | rounds | fewer rounds than dp | MB sent per rank per epoch | final accuracy | vs dp (points) | wall s |")
    print("|---|---|---|---|---|---|---|")
    for variant, r in rows.items():
        fewer = f"{base['rounds'] / r['rounds']:.0f}x" if base else "-"
        points = f"{100 * (r['accuracy'] - base['accuracy']):+.2f}" if base else "-"
        print(f"| {variant} | {r['rounds']} | {fewer} | {r['mb_per_epoch']:.1f} | {r['accuracy']:.4f} | {points} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
