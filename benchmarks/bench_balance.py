"""Batch balance on mixed-speed ranks: throughput with parallel.balance = "speed" over equal shares.

Two processes; rank 1 is a device of half the speed: the test throttle SHOAL_TEST_SLOW_FACTOR="1:2.0"
burns SHOAL_TEST_SAMPLE_S CPU seconds per sample on rank 0 and twice that on rank 1 (a small MLP on
digits adds little real compute), so with equal shares the fast rank waits half of every step.
Balanced 2:1 shares take 2/3 of the equal-share step time: the limit of the ratio is 1.5 (target
>= 1.4). Runs interleave (equal, speed, equal, ...) so drift on this shared machine hits both;
throughput is the job's training samples per second from its training records (start-up, the
speed probe and evaluation excluded), and the end-to-end wall time of `shoal train` is shown too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
JOB = """\
name = "bench-balance"
[model]
name = "mlp"
hidden = [64]
[data]
name = "digits"
limit_eval = 200
[train]
global_batch_size = {batch}
steps = {steps}
log_every = 10
eval_every = {steps}
[checkpoint]
at_end = false
"""
MODES = {"equal": "none", "speed": "speed"}


def run(tmp: Path, mode: str, i: int, sample_s: float, batch: int) -> dict:
    out = tmp / f"{mode}-{i}"
    env = {**os.environ, "SHOAL_TEST_SLOW_FACTOR": "1:2.0", "SHOAL_TEST_SAMPLE_S": str(sample_s)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "shoal", "train", str(tmp / "job.toml"), "--nproc", "2", "--out", str(out),
                    "--set", f"parallel.balance='{MODES[mode]}'"], check=True, capture_output=True, timeout=900, env=env)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    prev, seconds = 0, 0.0
    for r in train:  # each record covers the steps since the previous one, at its measured rate
        seconds += (r["step"] - prev) * batch / r["samples_per_s"]
        prev = r["step"]
    balance = [r for r in records if r["kind"] == "balance"]
    return {"steps": prev, "samples_per_s": prev * batch / seconds, "wall_s": wall, "load": os.getloadavg()[0],
            "shares": balance[-1]["shares"] if balance else None,
            "changes": max(len(balance) - 1, 0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=120)
    p.add_argument("--sample-s", type=float, default=0.0005, help="simulated CPU seconds per sample on the fast rank")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "job.toml").write_text(JOB.format(batch=a.batch, steps=a.steps))
        for i in range(a.rounds):
            for mode in MODES:
                r = run(tmp, mode, i, a.sample_s, a.batch)
                runs[mode].append(r)
                print(f"round {i} {mode:5s}: {r['samples_per_s']:7,.0f} samples/s, wall {r['wall_s']:5.1f} s, "
                      f"shares {r['shares']} ({r['changes']} changes), load {r['load']:.1f}", flush=True)
    rate = {m: [r["samples_per_s"] for r in rs] for m, rs in runs.items()}
    paired = sorted(s / e for s, e in zip(rate["speed"], rate["equal"]))
    med = {m: statistics.median(v) for m, v in rate.items()}
    wall = {m: statistics.median(r["wall_s"] for r in rs) for m, rs in runs.items()}
    print(f"\n2 processes, rank 1 at half speed ({a.sample_s * 1e3:g} / {2 * a.sample_s * 1e3:g} ms per sample), batch {a.batch}, "
          f"{a.steps} steps, {a.rounds} interleaved rounds (medians)")
    print("| shares | train samples/s | end-to-end wall s | final shares |")
    print("|---|---|---|---|")
    for m, rs in runs.items():
        print(f"| {m} | {med[m]:,.0f} | {wall[m]:.1f} | {', '.join(str(r['shares']) for r in rs) if m == 'speed' else '-'} |")
    print(f"ratio speed / equal: of medians {med['speed'] / med['equal']:.3f}; paired median {statistics.median(paired):.3f}, "
          f"range {paired[0]:.3f}-{paired[-1]:.3f} (limit 1.5, target >= 1.4)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "balance.json").write_text(json.dumps({"args": vars(a), "runs": runs, "ratio_of_medians": med["speed"] / med["equal"],
                                                      "paired": paired}, indent=1))


if __name__ == "__main__":
    main()
