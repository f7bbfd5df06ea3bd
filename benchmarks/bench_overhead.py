"""Framework overhead: `shoal train` vs a hand-written torch DDP loop (plain_ddp.py), 2 processes.

Same CNN, MNIST, AdamW, global batch and step count; runs alternate (shoal, plain, shoal,
plain, ...) so drift on this shared machine hits both. Training throughput excludes process
start-up and evaluation on both sides; end-to-end wall time (start-up included) is shown too.
Target: ratio >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
JOB = HERE.parent / "examples" / "mnist_cnn.toml"


def shoal_run(tmp: Path, steps: int, batch: int, i: int) -> tuple[float, float]:
    out = tmp / f"shoal-{i}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "shoal", "train", str(JOB), "--nproc", "2", "--out", str(out),
                    "--set", f"train.steps={steps}", "--set", f"train.global_batch_size={batch}", "--set", "train.log_every=50",
                    "--set", "schedule.name='constant'", "--set", "schedule.warmup_steps=0", "--set", "data.limit_eval=1000"],
                   check=True, stdout=subprocess.DEVNULL, timeout=300)
    wall = time.perf_counter() - t0
    train = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train"]
    samples = steps * batch
    # each record covers the steps since the previous one, at its measured rate
    prev, seconds = 0, 0.0
    for r in train:
        seconds += (r["step"] - prev) * batch / r["samples_per_s"]
        prev = r["step"]
    return samples / seconds, wall


def plain_run(tmp: Path, steps: int, batch: int, i: int) -> tuple[float, float]:
    out = tmp / f"plain-{i}.json"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(HERE / "plain_ddp.py"), "--steps", str(steps), "--batch", str(batch), "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    wall = time.perf_counter() - t0
    return json.loads(out.read_text())["samples_per_s"], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    shoal, plain = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.repeats):
            shoal.append(shoal_run(Path(d), a.steps, a.batch, i))
            plain.append(plain_run(Path(d), a.steps, a.batch, i))
    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    pairs = sorted(s[0] / p[0] for s, p in zip(shoal, plain))  # each shoal run against the plain run right after it
    print(f"MNIST CNN, 2 processes, {a.steps} steps x {a.batch} samples, {a.repeats} alternating runs each (medians)")
    print("| runner | train samples/s | end-to-end wall s |")
    print("|---|---|---|")
    print(f"| plain torch DDP loop (torchrun) | {med(plain, 0):,.0f} | {med(plain, 1):.1f} |")
    print(f"| shoal train | {med(shoal, 0):,.0f} | {med(shoal, 1):.1f} |")
    print(f"| ratio shoal / plain | {med(shoal, 0) / med(plain, 0):.3f} | {med(shoal, 1) / med(plain, 1):.3f} |")
    print(f"paired ratios: median {statistics.median(pairs):.3f}, range {pairs[0]:.3f}-{pairs[-1]:.3f}")
    print("per-run samples/s: shoal", [round(x[0]) for x in shoal], "plain", [round(x[0]) for x in plain])

if __name__ == "__main__":
    main()
