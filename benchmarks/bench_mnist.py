"""The example the source documents end on: the MNIST CNN, 1 process vs 2 processes.

Same job (examples/mnist_cnn.toml), same epochs, same global batch, so both runs make the
same optimizer steps on the same global batches; only the number of processes differs.
Reports wall time (start-up included), training time and test accuracy (target >= 99.0%), for
one process using both cores as threads, one process on one core (the per-core baseline),
two single-thread processes, and two with fp16 gradient all-reduce.
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


VARIANTS = {  # label: (processes, extra --set overrides)
    "1 process, 2 threads": (1, []),
    "1 process, 1 thread": (1, ["train.threads=1"]),
    "2 processes, 1 thread each": (2, []),
    "2 processes, fp16 all-reduce": (2, ["comm.hook='fp16'"]),
}


def run(nproc: int, epochs: int, out: Path, sets: list[str]) -> dict:
    t0 = time.perf_counter()
    extra = [a for s in sets for a in ("--set", s)]
    subprocess.run([sys.executable, "-m", "shoal", "train", str(JOB), "--nproc", str(nproc), "--out", str(out),
                    "--set", f"train.epochs={epochs}", *extra], check=True, stdout=subprocess.DEVNULL, timeout=1800)
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
        results = {label: run(n, a.epochs, Path(d) / f"v{i}", sets) for i, (label, (n, sets)) in enumerate(VARIANTS.items())}
    base = results["1 process, 2 threads"]["train_s"]
    print(f"MNIST CNN (examples/mnist_cnn.toml), {a.epochs} epochs, global batch 128")
    print("| run | wall s (with start-up) | training s | vs 1 process, 2 threads | test accuracy | macro F1 |")
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['wall_s']:.1f} | {r['train_s']:.1f} | {base / r['train_s']:.2f}x | {r['accuracy']:.4f} | {r['f1']:.4f} |")


if __name__ == "__main__":
    main()
