"""Where a data-parallel step's time goes: the MNIST CNN on 2 processes, with and without overlap.

The CNN of examples/mnist_cnn.toml has 0.82 MB of gradients. DDP's default first bucket is
1 MB, so by default all of them travel in one all-reduce that can start only when backward is
done ("no overlap"). With 0.1 MB buckets (comm.bucket_mb) the large fc1 gradient is reduced
while the conv layers' backward runs ("overlap"). Each run's training records split every
step into data wait, compute, exposed communication and update (see src/shoal/train/steptime.py);
the script prints their means over the run's steady windows, runs interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

JOB = Path(__file__).parents[1] / "examples" / "mnist_cnn.toml"
VARIANTS = {"no overlap (one 0.82 MB bucket)": [], "overlap (0.1 MB buckets)": ["comm.bucket_mb=0.1"]}
FIELDS = ("data_wait_s", "compute_s", "comm_exposed_s", "update_s", "step_s")


def run(out: Path, steps: int, sets: list[str]) -> dict[str, float]:
    extra = [a for s in sets for a in ("--set", s)]
    subprocess.run([sys.executable, "-m", "shoal", "train", str(JOB), "--nproc", "2", "--out", str(out), "--overwrite",
                    "--set", f"train.steps={steps}", "--set", "train.log_every=25", "--set", "checkpoint.at_end=false",
                    "--set", "data.limit_eval=256", *extra], check=True, stdout=subprocess.DEVNULL, timeout=900)
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in train if r["kind"] == "train"][1:]  # the first window holds start-up effects
    return {f: statistics.mean(r[f] for r in steady) for f in FIELDS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    results: dict[str, list[dict]] = {label: [] for label in VARIANTS}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(a.rounds):
            for label, sets in VARIANTS.items():
                results[label].append(run(Path(d) / "run", a.steps, sets))
    print(f"MNIST CNN, 2 processes, global batch 128, {a.steps} steps x {a.rounds} interleaved rounds (medians of round means, ms)")
    print("| variant | data wait | compute | exposed comm | update | step | exposed comm / step |")
    print("|---|---|---|---|---|---|---|")
    for label, rounds in results.items():
        med = {f: statistics.median(r[f] for r in rounds) * 1e3 for f in FIELDS}
        share = statistics.median(r["comm_exposed_s"] / r["step_s"] for r in rounds)
        print(f"| {label} | {med['data_wait_s']:.2f} | {med['compute_s']:.2f} | {med['comm_exposed_s']:.2f} | {med['update_s']:.2f} | "
              f"{med['step_s']:.2f} | {share:.1%} |")


if __name__ == "__main__":
    main()
