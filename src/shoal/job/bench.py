"""`shoal bench`: one job at several process counts; speed-up, scaling efficiency and time to a target accuracy.

Why through `shoal train` itself: the study measures what a user gets, start-up included in the
wall time; each run is a normal run directory, and one report puts them side by side.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from shoal.config import load_job
from shoal.errors import ShoalError
from shoal.report import load_run, write_report


def time_to_target(run, target: float) -> float | None:
    """Training seconds until the first evaluation at or above `target` accuracy (from the training records' clock)."""
    clock = {r["step"]: r["time_s"] for r in run.train if "time_s" in r}
    for e in run.eval:
        if e.get("accuracy", -1) >= target and e["step"] in clock:
            return clock[e["step"]]
    return None


def table(rows: list[dict], target: float | None) -> list[str]:
    head = "| processes | samples/s | speed-up | scaling efficiency | wall s | final accuracy |" + (f" s to {target} |" if target else "")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "–"
        line = f"| {r['nproc']} | {r['rate']:,.0f} | {r['speedup']:.2f}x | {r['efficiency']:.0%} | {r['wall_s']:.1f} | {acc} |"
        if target:
            line += f" {r['to_target']:.1f} |" if r["to_target"] is not None else " not reached |"
        out.append(line)
    return out


def bench_command(job: Path, counts: list[int], out: Path, overrides: list[str], target: float | None, overwrite: bool) -> list[str]:
    if not counts or any(n < 1 for n in counts):
        raise ShoalError(f"bench --nproc: give process counts such as 1,2,4 (got {counts})")
    load_job(job, overrides)  # a mistake in the job fails here, once, not in every run
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ShoalError(f"bench --out: '{out}' already has files; pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    rows, dirs = [], []
    for n in counts:
        run_dir = out / f"nproc-{n}"
        args = [sys.executable, "-m", "shoal", "train", str(job), "--nproc", str(n), "--out", str(run_dir), "--overwrite",
                *(a for o in overrides for a in ("--set", o))]
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ShoalError(f"bench: the run with {n} processes failed: {last}")
        run = load_run(run_dir)
        rates = [r["samples_per_s"] for r in run.train if "samples_per_s" in r]
        rows.append({"nproc": n, "rate": statistics.median(rates) if rates else 0.0, "wall_s": wall,
                     "accuracy": run.eval[-1].get("accuracy") if run.eval else None,
                     "to_target": time_to_target(run, target) if target else None})
        dirs.append(run_dir)
    base = rows[0]
    for r in rows:
        r["speedup"] = r["rate"] / base["rate"] if base["rate"] else 0.0
        r["efficiency"] = r["speedup"] / (r["nproc"] / base["nproc"])
    lines = table(rows, target)
    md = out / "bench.md"
    tmp = md.with_name(f".bench.md.tmp-{os.getpid()}")
    tmp.write_text(f"# Scaling study: {job}\n\n" + "\n".join(lines) + "\n")
    os.replace(tmp, md)
    report = write_report(dirs, out / "report.html")
    return lines + ["", f"wrote {md} and {report}"]
