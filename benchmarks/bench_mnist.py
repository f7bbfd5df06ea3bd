"""The example the source documents end on: the MNIST CNN, 1 process vs 2 processes.

Same job (examples/mnist_cnn.toml), same epochs, same global batch, so both runs make the
same optimizer steps on the same global batches; only the number of processes differs.
Reports wall time (start-up included), training throughput and test accuracy (target >= 99.0%).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = Path(__file__).parents[1] / "examples" / "mnist_cnn.toml"


def run(nproc: int, epochs: int, out: Path) -> dict:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "shoal", "train", str(JOB), "--nproc", str(nproc), "--out", str(out),
                    "--set", f"train.epochs={epochs}"], check=True, stdout=subprocess.DEVNULL, timeout=1800)
    wall = time.perf_counter() - t0
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    final_eval = [r for r in records if r["kind"] == "eval"][-1]
    train = [r for r in records if r["kind"] == "train"]
    return {"wall_s": wall, "train_s": train[-1]["time_s"], "accuracy": final_eval["accuracy"], "f1": final_eval["f1"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        results = {n: run(n, a.epochs, Path(d) / f"n{n}") for n in (1, 2)}
    print(f"MNIST CNN (examples/mnist_cnn.toml), {a.epochs} epochs, global batch 128")
    print("| processes | wall s (with start-up) | training s | test accuracy | macro F1 |")
    print("|---|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['wall_s']:.1f} | {r['train_s']:.1f} | {r['accuracy']:.4f} | {r['f1']:.4f} |")
    print(f"speed-up of 2 processes (training time): {results[1]['train_s'] / results[2]['train_s']:.2f}x")


if __name__ == "__main__":
    main()
