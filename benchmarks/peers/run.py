"""Shoal against its peers on equal work: the MNIST CNN of examples/mnist_cnn.toml, 2 processes.

Peers, each in its own environment (setup.sh; none of them a Shoal dependency): a hand-written
torch DDP loop under torchrun, Accelerate (under torchrun), Lightning, DeepSpeed (under torchrun)
and Ray Train. work.py exports what Shoal would train on (data, initial weights, every step's
batch indices, optimizer, threads, seed) and each peer trains exactly that.

1. Equal work: a short run of every system; the per-step losses of each peer (mean over ranks)
   must agree with Shoal's (log_every = 1) to --tolerance, or the script stops before timing.
2. Timing: --rounds rounds; in each, every system runs once, in an order that rotates from round
   to round (drift on a shared machine hits all). Training throughput is steps x batch over the
   training time each side measures from its first step to after its last (Shoal: its records);
   wall time is from the launch command to its exit, start-up, evaluation and saving included.
   Ratios are Shoal / peer per round (against the run of the same round), reported as medians.
   On a loaded machine wall clocks measure the load as much as the system, so each run also
   reports CPU seconds per training step (each rank's process_time over its loop, every thread;
   Shoal's rank_busy_s records). Not the whole run's CPU: getrusage misses processes nobody
   reaps (Shoal's forkserver, Ray's daemons), so it cannot compare start-up.

python benchmarks/peers/run.py [--steps 300] [--rounds 3] [--peers ddp,accelerate,...]
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from work import JOB, export, job  # noqa: E402

VENVS = HERE / ".venvs"
PEERS = {  # name: (how it launches, the script); torchrun picks a free port itself (--standalone)
    "ddp": ("torchrun", "ddp_loop.py"),
    "accelerate": ("torchrun", "accelerate_loop.py"),
    "lightning": ("python", "lightning_loop.py"),
    "deepspeed": ("torchrun", "deepspeed_loop.py"),
    "ray": ("python", "ray_loop.py"),
}
LABEL = {"ddp": "hand-written DDP loop (torchrun)", "accelerate": "Accelerate (torchrun)", "lightning": "Lightning (ddp)",
         "deepspeed": "DeepSpeed (torchrun)", "ray": "Ray Train (TorchTrainer)"}
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0", "PYTHONPATH": str(HERE),
       "RAY_DEDUP_LOGS": "0", "PYTHONWARNINGS": "ignore"}


def run_peer(name: str, work: Path, out: Path, timeout: float) -> dict:
    how, script = PEERS[name]
    python = VENVS / name / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"peers: no environment for {name} in {VENVS / name}; run benchmarks/peers/setup.sh (make peers)")
    cmd = [str(python), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if how == "torchrun" else [str(python)]
    t0 = time.time()
    proc = subprocess.run([*cmd, str(HERE / script), str(work), str(out)], cwd=HERE, env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"peers: {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
    steps = len(ranks[0]["losses"])
    losses = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    train_s = max(r["train_s"] for r in ranks)
    cpu_step = statistics.mean(r["cpu_s"] for r in ranks) / steps if all("cpu_s" in r for r in ranks) else float("nan")
    return {"losses": losses, "train_s": train_s, "steps": steps, "wall_s": wall, "accuracy": ranks[0].get("accuracy"),
            "startup_s": min(r["t_import"] for r in ranks) - t0, "cpu_per_step_s": cpu_step}


def shoal_python() -> str:
    """Shoal as `pip install shoal` makes it (setup.sh), else the interpreter running this script."""
    plain = VENVS / "shoal" / "bin" / "python"
    return str(plain) if (VENVS / "shoal" / ".done").exists() else sys.executable


def run_shoal(overrides: list[str], batch: int, out: Path, timeout: float) -> dict:
    t0 = time.time()
    proc = subprocess.run([shoal_python(), "-m", "shoal", "train", str(JOB), "--nproc", "2", "--out", str(out), "--overwrite",
                           *(a for o in overrides for a in ("--set", o))], capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"peers: shoal train failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    prev, seconds, cpu, losses = 0, 0.0, 0.0, []
    for r in train:  # each record covers the steps since the previous one, at its measured rate and CPU seconds per step
        seconds += (r["step"] - prev) * batch / r["samples_per_s"]
        busy = r.get("rank_busy_s_per_rank") or [r.get("rank_busy_s", float("nan"))]
        cpu += (r["step"] - prev) * statistics.mean(busy)
        losses.append(r["loss"])
        prev = r["step"]
    return {"losses": losses, "train_s": seconds, "steps": prev, "wall_s": wall, "accuracy": evals[-1]["accuracy"] if evals else None,
            "cpu_per_step_s": cpu / prev}


def check_equal(peers: list[str], steps: int, tolerance: float, tmp: Path, timeout: float) -> dict:
    cfg, overrides = job(steps, 1)
    work = tmp / "check.pt"
    export(cfg, work)
    ref = run_shoal(overrides, cfg.train.global_batch_size, tmp / "check-shoal", timeout)["losses"]
    out = {}
    for name in peers:
        got = run_peer(name, work, tmp / f"check-{name}", timeout)["losses"]
        worst = max(abs(a - b) for a, b in zip(ref, got)) if len(got) == len(ref) else float("inf")
        bitwise = got == ref
        out[name] = {"max_abs_diff": worst, "bitwise": bitwise, "steps": len(got)}
        print(f"equal work, {name}: {len(got)} steps, max |loss - shoal's| = {worst:.2e}{' (bit for bit)' if bitwise else ''}", flush=True)
        if not worst <= tolerance:
            raise SystemExit(f"peers: {name}'s losses differ from Shoal's by {worst:.3g} (> {tolerance}): the work is not equal; "
                             f"first steps shoal {ref[:3]} vs {name} {got[:3]}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3, help="0: only the equal-work check")
    p.add_argument("--check-steps", type=int, default=20)
    p.add_argument("--tolerance", type=float, default=1e-6)
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run (DeepSpeed's first start builds an op for ~4 min)")
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "peers.json")
    a = p.parse_args()
    peers = [x for x in a.peers.split(",") if x]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; choose from {', '.join(PEERS)}")
    load = [os.getloadavg()[0]]
    print(f"shoal: {shoal_python()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="shoal-peers-") as d:
        tmp = Path(d)
        equal = check_equal(peers, a.check_steps, a.tolerance, tmp, a.timeout)
        if not a.rounds:
            return
        cfg, overrides = job(a.steps)
        work = tmp / "work.pt"
        export(cfg, work)
        systems = ["shoal", *peers]
        runs: dict[str, list[dict]] = {s: [] for s in systems}
        for k in range(a.rounds):
            order = systems[k % len(systems):] + systems[: k % len(systems)]
            for s in order:
                out = tmp / f"r{k}-{s}"
                r = run_shoal(overrides, cfg.train.global_batch_size, out, a.timeout) if s == "shoal" else run_peer(s, work, out, a.timeout)
                r["samples_per_s"] = r["steps"] * cfg.train.global_batch_size / r["train_s"]
                runs[s].append({k2: v for k2, v in r.items() if k2 != "losses"})
                load.append(os.getloadavg()[0])
                print(f"round {k + 1}, {s}: {r['samples_per_s']:,.0f} samples/s, wall {r['wall_s']:.1f} s (load {load[-1]:.1f})", flush=True)
    report(a, peers, runs, equal, load)


def report(a, peers: list[str], runs: dict, equal: dict, load: list[float]) -> None:
    """Medians per system, and Shoal/peer ratios per round (each Shoal run against the same round's peer run), medians."""
    med = lambda s, k: statistics.median(r[k] for r in runs[s])  # noqa: E731
    ratio = lambda s, f: statistics.median(f(x, y) for x, y in zip(runs["shoal"], runs[s]))  # noqa: E731
    rows = []
    print(f"\nMNIST CNN, 2 processes, {a.steps} steps x 128 samples, {a.rounds} interleaved rounds (medians); load {min(load):.1f}-{max(load):.1f}")
    print("| system | train samples/s | wall s | train CPU ms/step | throughput Shoal/peer | CPU per step peer/Shoal "
          "| wall Shoal/peer | max abs loss diff |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| Shoal (`shoal train`) | {med('shoal', 'samples_per_s'):,.0f} | {med('shoal', 'wall_s'):.1f} | "
          f"{1000 * med('shoal', 'cpu_per_step_s'):.1f} | | | | |")
    for s in peers:
        row = {"peer": s, "throughput_ratio": ratio(s, lambda x, y: x["samples_per_s"] / y["samples_per_s"]),
               "cpu_per_step_ratio": ratio(s, lambda x, y: y["cpu_per_step_s"] / x["cpu_per_step_s"]),
               "wall_ratio": ratio(s, lambda x, y: x["wall_s"] / y["wall_s"])}
        rows.append(row)
        print(f"| {LABEL[s]} | {med(s, 'samples_per_s'):,.0f} | {med(s, 'wall_s'):.1f} | {1000 * med(s, 'cpu_per_step_s'):.1f} | "
              f"{row['throughput_ratio']:.3f} | {row['cpu_per_step_ratio']:.3f} | {row['wall_ratio']:.3f} | {equal[s]['max_abs_diff']:.1e} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit(), "steps": a.steps, "rounds": a.rounds,
                                 "load": load, "equal": equal, "ratios": rows, "runs": runs}, indent=1) + "\n")
    print(f"wrote {a.out}")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
