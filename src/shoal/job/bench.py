"""`shoal bench`: one job at several process counts and strategies; speed-up, scaling efficiency and time to a target accuracy.

Why through `shoal train` itself: the study measures what a user gets, start-up included in the
wall time; each run is a normal run directory, and one report puts them side by side. Every
(strategy, process count) pair is checked as `shoal train` would check it before the first run
starts, so a pair that cannot work fails in one line with nothing written.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal.compress import COMPRESSORS
from shoal.config import load_job
from shoal.errors import ShoalError
from shoal.plugins import import_plugins
from shoal.report import load_run, write_report
from shoal.sync import SYNC

LAYOUTS = ("fsdp", "tp", "pp")  # a layout by name spans all the run's processes


def _compressions() -> list[str]:
    return [*COMPRESSORS.names(), "auto"]  # auto measures the link and picks one (shoal.compress.auto)


@dataclass(frozen=True)
class Strategy:
    """A label and the `--set` overrides it adds to the job; `{nproc}` in a value is the run's process count."""

    label: str
    overrides: tuple[str, ...] = field(default_factory=tuple)

    def at(self, nproc: int) -> list[str]:
        return [o.replace("{nproc}", str(nproc)) for o in self.overrides]


def by_name(name: str) -> Strategy:
    """A sync strategy (`sync = name`), a compressor (`comm.compression = name`) or a layout (`parallel.name = nproc`)."""
    if name in SYNC.names():
        return Strategy(name, (f"sync={name}",))
    if name in _compressions():
        return Strategy(name, (f"comm.compression={name}",))
    if name in LAYOUTS:
        return Strategy(name, (f"parallel.{name}={{nproc}}",))
    raise ShoalError(f"bench --strategies: unknown strategy '{name}'; name a sync strategy ({', '.join(SYNC.names())}), "
                     f"a compression ({', '.join(_compressions())}) or a layout ({', '.join(LAYOUTS)}), "
                     "or give a bundle such as 'LABEL:key=value;key=value'")


def parse_strategies(values: list[str]) -> list[Strategy]:
    """Each value is names separated by commas (`allreduce,fp16,fsdp`) or one bundle `LABEL:key=value;key=value`."""
    out: list[Strategy] = []
    for value in values:
        if ":" in value:
            label, _, body = value.partition(":")
            label, sets = label.strip(), tuple(s.strip() for s in body.split(";") if s.strip())
            if not re.fullmatch(r"[A-Za-z0-9_.+-]+", label) or not sets or any("=" not in s for s in sets):
                raise ShoalError(f"bench --strategies '{value}': write a bundle as LABEL:key=value;key=value with a label of "
                                 "letters, digits, '_', '.', '+' or '-' (e.g. 'local8:sync=average;average.every=8')")
            out.append(Strategy(label, sets))
        else:
            out += [by_name(n.strip()) for n in value.split(",") if n.strip()]
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise ShoalError(f"bench --strategies: the label '{next(x for x in labels if labels.count(x) > 1)}' is given twice; "
                         "labels name the run directories, give each strategy its own")
    return out


def time_to_target(run, target: float) -> float | None:
    """Training seconds until the first evaluation at or above `target` accuracy (from the training records' clock)."""
    clock = {r["step"]: r["time_s"] for r in run.train if "time_s" in r}
    for e in run.eval:
        if e.get("accuracy", -1) >= target and e["step"] in clock:
            return clock[e["step"]]
    return None


def measure(run, nproc: int, wall: float, target: float | None) -> dict:
    """One row from a run directory's own records: median throughput over its training records."""
    rates = [r["samples_per_s"] for r in run.train if "samples_per_s" in r]
    return {"nproc": nproc, "rate": statistics.median(rates) if rates else 0.0, "wall_s": wall,
            "accuracy": run.eval[-1].get("accuracy") if run.eval else None,
            "to_target": time_to_target(run, target) if target else None}


def compare(rows: list[dict]) -> None:
    """Speed-up against the first row (the first strategy at the first count); efficiency divides it by the process ratio."""
    base = rows[0]
    for r in rows:
        r["speedup"] = r["rate"] / base["rate"] if base["rate"] else 0.0
        r["efficiency"] = r["speedup"] / (r["nproc"] / base["nproc"])


def table(rows: list[dict], target: float | None, strategies: bool = False) -> list[str]:
    head = ("| strategy " if strategies else "") + "| processes | samples/s | speed-up | scaling efficiency | wall s | final accuracy |" + \
        (f" s to {target} |" if target else "")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "–"
        line = (f"| {r['strategy']} " if strategies else "") + \
            f"| {r['nproc']} | {r['rate']:,.0f} | {r['speedup']:.2f}x | {r['efficiency']:.0%} | {r['wall_s']:.1f} | {acc} |"
        if target:
            line += f" {r['to_target']:.1f} |" if r["to_target"] is not None else " not reached |"
        out.append(line)
    return out


def check_pairs(job: Path, counts: list[int], strategies: list[Strategy], overrides: list[str]) -> None:
    """`shoal train`'s own checks (keys, parts, layout against the count, the dry run) for every pair, before any run."""
    from shoal.job.command import preflight

    for s in strategies:
        for n in counts:
            try:
                preflight(load_job(job, [*overrides, *s.at(n), f"nproc={n}"]))
            except ShoalError as err:
                where = f"strategy '{s.label}' at {n} processes" if s.overrides else f"{n} processes"
                raise ShoalError(f"bench: {where}: {err}") from None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def bench_command(job: Path, counts: list[int], out: Path, overrides: list[str], target: float | None, overwrite: bool,
                  strategies: list[str] = ()) -> list[str]:
    if not counts or any(n < 1 for n in counts):
        raise ShoalError(f"bench --nproc: give process counts such as 1,2,4 (got {counts})")
    if strategies:
        import_plugins(load_job(job, overrides).plugins)  # a plugin's sync strategy or compressor is a name too
    chosen = parse_strategies(list(strategies)) if strategies else [Strategy("")]
    check_pairs(job, counts, chosen, overrides)  # a mistake fails here, once, not in the middle of the study
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ShoalError(f"bench --out: '{out}' already has files; pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    rows, dirs = [], []
    for s in chosen:
        for n in counts:
            run_dir = out / (f"{s.label}-nproc-{n}" if s.label else f"nproc-{n}")
            sets = [*overrides, *s.at(n)]
            args = [sys.executable, "-m", "shoal", "train", str(job), "--nproc", str(n), "--out", str(run_dir), "--overwrite",
                    *(a for o in sets for a in ("--set", o))]
            t0 = time.perf_counter()
            proc = subprocess.run(args, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                which = f"strategy '{s.label}' with {n} processes" if s.label else f"the run with {n} processes"
                raise ShoalError(f"bench: {which} failed: {last}")
            rows.append({"strategy": s.label, "overrides": s.at(n), "run": run_dir.name, **measure(load_run(run_dir), n, wall, target)})
            dirs.append(run_dir)
    compare(rows)
    lines = table(rows, target, strategies=bool(strategies))
    md, data = out / "bench.md", out / "bench.json"
    note = "" if not strategies else ("\nSpeed-up and scaling efficiency are against the first strategy at the first process count; "
                                      "strategies: " + "; ".join(f"{s.label} = {', '.join(s.overrides) or 'the job as it is'}" for s in chosen) + "\n")
    _write(md, f"# Scaling study: {job}\n\n" + "\n".join(lines) + "\n" + note)
    _write(data, json.dumps({"job": str(job), "target": target, "rows": rows}, indent=1) + "\n")
    report = write_report(dirs, out / "report.html")
    return lines + ["", f"wrote {md}, {data} and {report}"]
