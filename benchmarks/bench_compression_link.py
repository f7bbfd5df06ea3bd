"""Gradient compression over a slow link: two "machines" (network namespaces, one process each) joined
by a 100 Mbit/s link (tc tbf on both ends), the MNIST CNN (and optionally the gpt) trained with
every compression method. Per method: median step time, bytes on the wire per step (what the
compressor reports), the time at which test accuracy first reaches the target (wall time since the
first step, evaluations included, and training time alone: the steps' own time), and the final
accuracy. Needs root (namespaces; the root namespace is never touched). Usage:

    python benchmarks/bench_compression_link.py [--methods none,fp16,...] [--steps N] [--rate 100mbit]

`--methods` also takes PowerSGD with its rank, warm-up and DDP bucket size in the name (powersgd16w20: rank 16,
20 warm-up steps; powersgd16w20b0.25: the same in 0.25 MB buckets, whose all-reduces overlap backward; powersgd16w10h:
factors in fp16, powersgd16w10bf: in bf16) and the
averaging variants of bench_averaging.py (local8, local32, diloco32, ...): data parallel, local SGD and DiLoCo over
the same slow link.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "tests" / "distributed" / "multinode"))
from bench_averaging import VARIANTS  # noqa: E402
from netns import Network, ip, namespaces_available  # noqa: E402

MODELS = {
    "mnist-cnn": (ROOT / "examples" / "mnist_cnn.toml", ["data.limit_eval=2000"]),
    "gpt": (ROOT / "examples" / "gpt_shakespeare.toml", []),
}
METHODS = "none,fp16,bf16,int8,qsgd,topk,randk,powersgd"


def shape_links(net: Network, rate: str) -> None:
    for ns in net.names:
        ip("-n", ns, "link", "set", "eth0", "mtu", "1500")
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate,
                        "burst", "1mbit", "latency", "50ms"], check=True, capture_output=True, timeout=10)


# Each "machine" gets cores of its own (taskset) and one torch thread per core it has: two machines sharing every
# core of this host, each with a thread per host core, would oversubscribe them (measured: the MNIST CNN's compute
# 24 ms a step instead of 16) and slow every method's compute, which real machines do not share.
CORES_PER_MACHINE = max((os.cpu_count() or 1) // 2, 1)


def machine_cores(node: int) -> list[str]:
    if (os.cpu_count() or 1) < 2:
        return []
    first = node * CORES_PER_MACHINE
    return ["taskset", "-c", ",".join(str(c) for c in range(first, first + CORES_PER_MACHINE))]


def train(net: Network, job: Path, out: Path, sets: list[str], logs: Path) -> list[dict]:
    port = random.randint(20000, 29000)
    extra = [a for s in [f"train.threads={CORES_PER_MACHINE}", *sets] for a in ("--set", s)]
    procs = [net.start(i, [*machine_cores(i), sys.executable, "-m", "shoal", "train", str(job), "--nproc", "1", "--out", str(out), "--overwrite",
                           "--nnodes", "2", "--node-rank", str(i), "--rdzv", f"{net.address(0)}:{port}", *extra], logs / f"node{i}.log")
             for i in range(2)]
    for proc in procs:
        proc.wait(timeout=3600)
    if any(p.returncode for p in procs):
        kept = Path(tempfile.mkdtemp(prefix="shoal-link-failed-"))
        for node_log in logs.glob("node*.log"):
            node_log.rename(kept / node_log.name)
        raise SystemExit(f"training failed (exit codes {[p.returncode for p in procs]}); node logs kept in {kept}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# powersgd16w20b0.25: rank 16, 20 warm-up steps, 0.25 MB buckets; powersgd16w10h: factors in fp16 (bf16: "bf")
POWERSGD_TUNED = re.compile(r"powersgd(\d+)(?:w(\d+))?(?:b([\d.]+))?(h|bf)?")
FACTORS = {"h": "fp16", "bf": "bf16"}  # the name's suffix -> comm.powersgd_factors


def variant_sets(name: str) -> list[str]:
    """A compression method (none, fp16, ...), PowerSGD with its rank and warm-up in the name (powersgd8, powersgd16w20),
    or an averaging variant of bench_averaging.py (local32, ...)."""
    tuned = POWERSGD_TUNED.fullmatch(name)
    if tuned:
        rank, warmup, bucket_mb, factors = tuned.groups()
        return ["comm.compression='powersgd'", f"comm.powersgd_rank={rank}", *([f"comm.powersgd_warmup={warmup}"] if warmup else []),
                *([f"comm.bucket_mb={bucket_mb}"] if bucket_mb else []),
                *([f"comm.powersgd_factors='{FACTORS[factors]}'"] if factors else [])]
    return VARIANTS[name] if name in VARIANTS and name != "dp" else [f"comm.hook='{name}'"]


def summarize(records: list[dict], target: float) -> dict:
    train = [r for r in records if r["kind"] == "train"][1:]
    evals = [r for r in records if r["kind"] == "eval"]
    key = "accuracy"
    reached = next((r for r in evals if r[key] >= target), None)
    times = {r["step"]: r["time_s"] for r in records if r["kind"] == "train"}
    trained, before, training = 0.0, 0, {}  # training time alone: each window's steps x its mean step time
    for r in (r for r in records if r["kind"] == "train"):
        trained += r["step_s"] * (r["step"] - before)
        before, training[r["step"]] = r["step"], trained
    return {"step_ms": 1e3 * statistics.median(r["step_s"] for r in train),
            "exposed_ms": 1e3 * statistics.median(r.get("comm_exposed_s", 0.0) for r in train),
            "kb_per_step": statistics.median(r.get("comm_bytes", 0) for r in train) / 1e3,
            "ratio": statistics.median(r.get("compression_ratio", 1.0) for r in train),
            "to_target_s": times.get(reached["step"]) if reached else None,
            "train_to_target_s": training.get(reached["step"]) if reached else None,
            "final": evals[-1][key], "chosen": next((r.get("method") for r in records if r["kind"] == "compression"), None)}


def median_row(runs: list[dict]) -> dict:
    """Each figure's median over the rounds ("not reached" in most rounds stays not reached)."""
    out = {"chosen": ",".join(sorted({r["chosen"] for r in runs if r["chosen"]})) or None, "rounds": len(runs)}
    for key in ("step_ms", "exposed_ms", "kb_per_step", "ratio", "final", "wall_s", "to_target_s", "train_to_target_s"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if len(values) * 2 > len(runs) else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=sorted(MODELS), default="mnist-cnn")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--target", type=float, default=0.97)
    p.add_argument("--rate", default="100mbit")
    p.add_argument("--rounds", type=int, default=1, help="every method this many times, interleaved; medians are shown")
    p.add_argument("--json", type=Path, help="also write every round's figures here")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still tears its namespaces down
    why_not = namespaces_available()
    if why_not:
        raise SystemExit(why_not)
    job, sets = MODELS[a.model]
    methods = a.methods.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as d:
        for round_ in range(a.rounds):
            for method in methods:
                net = Network(2)
                try:
                    shape_links(net, a.rate)
                    t0 = time.perf_counter()
                    records = train(net, job, Path(d) / "run", [*sets, f"train.steps={a.steps}", f"train.eval_every={a.eval_every}",
                                                                f"train.log_every={a.eval_every}", "checkpoint.at_end=false",
                                                                *variant_sets(method)], Path(d))
                    runs[method].append({**summarize(records, a.target), "wall_s": time.perf_counter() - t0})
                finally:
                    net.close()
                print(f"round {round_ + 1}", method, runs[method][-1], flush=True)
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "rate": a.rate, "steps": a.steps, "target": a.target, "runs": runs}, indent=1))
    rows = {m: median_row(r) for m, r in runs.items()}
    per_round = {m: [base["to_target_s"] / r["to_target_s"] if base["to_target_s"] and r["to_target_s"] else None
                     for base, r in zip(runs.get("none", []), rs)] for m, rs in runs.items()}
    base = rows.get("none", {}).get("to_target_s")
    base_train = rows.get("none", {}).get("train_to_target_s")
    print(f"\n{a.model}, 2 namespaced machines x 1 process, {a.rate} link, {a.steps} steps, target accuracy {a.target}, "
          f"medians of {a.rounds} round(s)")
    print("| method | step ms | exposed comm ms | KB on the wire per step | ratio | s to target | vs none | training s to target | vs none "
          "| final accuracy | vs none, each round |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method, r in rows.items():
        to = f"{r['to_target_s']:.1f}" if r["to_target_s"] else "not reached"
        speed = f"{base / r['to_target_s']:.2f}x" if base and r["to_target_s"] else "-"
        trained = f"{r['train_to_target_s']:.1f}" if r["train_to_target_s"] else "not reached"
        train_speed = f"{base_train / r['train_to_target_s']:.2f}x" if base_train and r["train_to_target_s"] else "-"
        label = f"{method} ({r['chosen']})" if r["chosen"] else method
        rounds = ", ".join(f"{x:.2f}" if x else "-" for x in per_round[method])
        print(f"| {label} | {r['step_ms']:.1f} | {r['exposed_ms']:.1f} | {r['kb_per_step']:.1f} | {r['ratio']:.1f} | {to} | {speed} | "
              f"{trained} | {train_speed} | {r['final']:.4f} | {rounds} |")


if __name__ == "__main__":
    main()
