"""Parameter server (issue 11): sync, async and ssp next to data parallel; and one worker at half speed.

Part 1 ("modes"): the MNIST CNN job (examples/mnist_cnn.toml, one epoch of 469 steps of 128,
AdamW with warm-up and cosine, 10,000 test images): data parallel on 2 processes, and the
parameter server with 1 server and 2 workers in each mode. Rounds are `comm_rounds`, MB per epoch
what one worker pushed and pulled (data parallel: what it put into the gradient all-reduce).

Part 2 ("slow"): digits, an MLP (64 hidden), 6 epochs of 45 steps of 32, SGD with momentum;
worker 1 runs at half speed (SHOAL_TEST_SLOW_FACTOR="1:2.0": every worker burns
SHOAL_TEST_SAMPLE_S CPU seconds per sample, worker 1 twice that). No evaluation or training
record until the end (both are collectives among the workers, which would make every mode wait
for the slow worker there); instead the server keeps its parameters every 5 updates with their
time (SHOAL_TEST_PS_TRACE), scored afterwards on the 360 held-out digits. Reported: seconds
from the server's start until the parameters first reach 90% and 95% accuracy.

    .venv/bin/python benchmarks/bench_param_server.py [--part modes|slow|all]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parents[1]
TARGETS = (0.90, 0.95)

SLOW_JOB = {
    "name": "bench-ps-slow",
    "model": {"name": "mlp", "hidden": [64]},
    "data": {"name": "digits"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"global_batch_size": 32, "epochs": 6, "log_every": 270, "eval_every": 100000},
    "checkpoint": {"at_end": False},
}


def ps(mode: str, staleness: int = 2) -> dict:
    return {"sync": "param_server", "ps": {"servers": 1, "mode": mode, "staleness": staleness}}


def train(job: dict, out: str, env: dict) -> dict:
    """One worker process of a run (spawned by launch_local): the job as `shoal train` workers run it."""
    from shoal.config import JobConfig
    from shoal.job.worker import run_job

    os.environ.update(env)
    return run_job(JobConfig.model_validate(job), out)


def launch(job: dict, out: Path, nproc: int, env: dict | None = None) -> float:
    from shoal.launch.local import launch_local

    t0 = time.perf_counter()
    launch_local(train, (job, str(out), env or {}), nproc=nproc)
    return time.perf_counter() - t0


def records(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def merged(a: dict, b: dict) -> dict:
    from shoal.config import deep_merge

    return deep_merge(a, b)


def modes(tmp: Path) -> list[dict]:
    base = tomllib.loads((ROOT / "examples" / "mnist_cnn.toml").read_text())
    base = merged(base, {"train": {"epochs": 1, "log_every": 50}, "checkpoint": {"at_end": False}})
    rows = []
    for name, extra, nproc in [("data parallel (all-reduce)", {}, 2), ("ps sync", ps("sync"), 3),
                               ("ps async", ps("async"), 3), ("ps ssp, staleness 2", ps("ssp"), 3)]:
        out = tmp / name.split(" (")[0].replace(" ", "-").replace(",", "")
        wall = launch(merged(base, extra), out, nproc)
        train_recs, last_eval = records(out, "train"), records(out, "eval")[-1]
        last = train_recs[-1]
        epochs = base["train"]["epochs"]
        if "comm_bytes_total" in last:
            rounds, mb = last["comm_rounds"], last["comm_bytes_total"] / epochs / 1e6
        else:  # all-reduce: one round per step, comm_bytes per step
            rounds, mb = last.get("comm_rounds", last["step"]), last["comm_bytes"] * last["step"] / epochs / 1e6
        rows.append({"variant": name, "rounds": rounds, "mb_per_epoch": mb, "accuracy": last_eval["accuracy"],
                     "staleness_max": last.get("staleness_max"), "staleness_mean_last": last.get("staleness_mean"), "wall_s": wall})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def score(trace: list, job: dict) -> list[tuple[float, int, float]]:
    """(seconds, version, eval accuracy) of each kept point of the server's parameters (one server: all of them)."""
    from shoal.config import JobConfig
    from shoal.data import load
    from shoal.models import build_model
    from shoal.sync.ps_wire import trainable, write_values

    cfg = JobConfig.model_validate(job)
    splits = load(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed).eval()
    x, y = splits.eval.tensors
    out = []
    with torch.no_grad():
        for seconds, version, values in trace:
            write_values(trainable(model), values)
            out.append((seconds, version, float((model(x).argmax(-1) == y).float().mean())))
    return out


def slow(tmp: Path, rounds: int) -> list[dict]:
    """Rounds interleave the variants (sync, async, ssp, ..., sync, ...) so drift in the machine's load hits all."""
    rows = []
    variants = [("sync", ps("sync")), ("async", ps("async")), ("ssp, staleness 2", ps("ssp")), ("ssp, staleness 8", ps("ssp", 8))]
    for i, (name, extra) in [(i, v) for i in range(rounds) for v in variants]:
        out = tmp / f"slow-{name.replace(' ', '').replace(',', '-')}-{i}"
        trace_dir = tmp / f"trace-{out.name}"
        trace_dir.mkdir()
        env = {"SHOAL_TEST_SLOW_FACTOR": "1:2.0", "SHOAL_TEST_SAMPLE_S": "0.0005", "SHOAL_TEST_PS_TRACE": str(trace_dir),
               "SHOAL_TEST_PS_TRACE_EVERY": "5"}
        job = merged(SLOW_JOB, extra)
        wall = launch(job, out, 3, env)
        points = score(torch.load(trace_dir / "server-0.pt", weights_only=False), job)
        reached = {t: next(((s, v) for s, v, acc in points if acc >= t), (None, None)) for t in TARGETS}
        last = records(out, "train")[-1]
        rows.append({"variant": name, "round": i, "load": os.getloadavg()[0], **{f"time_to_{t}_s": reached[t][0] for t in TARGETS},
                     **{f"updates_to_{t}": reached[t][1] for t in TARGETS}, "server_s": points[-1][0], "final_accuracy": records(out, "eval")[-1]["accuracy"],
                     "updates": points[-1][1], "staleness_max": last["staleness_max"], "wall_s": wall})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["modes", "slow", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=2, help="slow part: interleaved rounds of every variant")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("slow", "all"):
            result["slow"] = slow(Path(tmp), args.rounds)
        if args.part in ("modes", "all"):
            result["modes"] = modes(Path(tmp))
    result["load_after"] = os.getloadavg()[0]
    name = "param_server.json" if args.part == "all" else f"param_server-{args.part}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
