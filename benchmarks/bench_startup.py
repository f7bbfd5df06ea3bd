"""Start-up and restart time of `shoal train --nproc 2`: workers forked from a fork server that imported torch,
Shoal and torchmetrics once (the default) against workers spawned fresh (SHOAL_START_METHOD=spawn), same job,
interleaved rounds, medians.

Measured per run: wall time of the whole command (start-up, 30 steps of a digits MLP, evaluation, the report);
seconds from the command's start to the first step's record; and, in a run whose rank 1 is SIGKILLed after step 12,
seconds from the last step before the kill to the first step after the restart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
JOB = """name = "startup"
seed = 1
[model]
name = "mlp"
hidden = [32]
[data]
name = "digits"
[train]
global_batch_size = 64
steps = 30
log_every = 1
[checkpoint]
every = 5
"""


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run(job: Path, out: Path, method: str, kill: bool) -> dict[str, float]:
    env = {**os.environ, "SHOAL_START_METHOD": method}
    args = [sys.executable, "-m", "shoal", "train", str(job), "--nproc", "2", "--out", str(out), "--overwrite"]
    if kill:
        env["SHOAL_TEST_KILL"] = "1:12"
        args += ["--max-restarts", "1"]
    start = time.time()
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=600)
    wall = time.time() - start
    rows = records(out)
    trained = [r for r in rows if r["kind"] == "train"]
    result = {"wall_s": wall, "first_step_s": trained[0]["unix_time"] - start}
    if kill:
        i = next(i for i, r in enumerate(rows) if r["kind"] == "resume")
        before = max(r["unix_time"] for r in rows[:i] if r["kind"] == "train")
        again = next(r for r in rows[i:] if r["kind"] == "train")["unix_time"]
        result["restart_s"] = again - before
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    a = p.parse_args()
    seen: dict[str, list[dict]] = {"spawn": [], "forkserver": []}
    with tempfile.TemporaryDirectory() as d:
        job = Path(d) / "job.toml"
        job.write_text(JOB)
        for i in range(a.rounds):
            for method in (("spawn", "forkserver") if i % 2 == 0 else ("forkserver", "spawn")):
                plain = run(job, Path(d) / f"{method}-plain", method, kill=False)
                killed = run(job, Path(d) / f"{method}-killed", method, kill=True)
                seen[method].append({**plain, "restart_s": killed["restart_s"], "killed_wall_s": killed["wall_s"]})
                print(method, seen[method][-1], flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in seen.items()}
    rows = ["| measure | spawn | forkserver | forkserver / spawn |", "|---|---|---|---|"]
    for key, what in (("wall_s", "whole run, s"), ("first_step_s", "command start to first step, s"),
                      ("restart_s", "last step before a SIGKILL to the first after the restart, s"),
                      ("killed_wall_s", "whole run with the kill and restart, s")):
        rows.append(f"| {what} | {med['spawn'][key]:.2f} | {med['forkserver'][key]:.2f} | {med['forkserver'][key] / med['spawn'][key]:.2f} |")
    print("\n".join(rows))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "machine": platform.node(),
                                 "cpus": os.cpu_count(), "load": os.getloadavg(), "rounds": seen, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
