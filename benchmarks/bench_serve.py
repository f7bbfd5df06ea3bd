"""`shoal serve` under a bounded load generator on loopback: requests/s and p50/p99 latency for 1 and 2 replicas,
with and without dynamic batching, against a plain single-process loop over the same model.

The model: an MLP (64 features -> 3 x 1024 hidden -> 10 by default, `--hidden` for others) trained for one step
with `shoal train`. At 1024 wide a sample costs about 0.4 ms, so HTTP and JSON weigh as much as the model;
`--hidden 4096,4096,4096` (about 5 ms a sample) is a model whose own cost dominates. Every load is a fixed number of requests from a
fixed number of client threads on keep-alive connections, capped by a duration, counted after each client's
first `--warmup` requests (2: a new connection, and the round trip the service learns its turnaround from); every server is a real
`shoal serve` process. Every replica and the plain loop use one intra-op thread: on a shared 2-core machine
more threads mostly measure OpenMP threads spinning against other load. Targets (issue 12): batching >= 3x the requests/s of one-at-a-time serving at a p99 no
worse than twice one request's latency; the service's overhead over the plain loop at the same batch size <= 10%.
Closed-loop clients are what shoal.serve.returns batches together (it waits for the clients of the batch just
answered when they are due back within a pass).
Closed-loop clients put a request's latency at (clients / throughput) by Little's law whatever the server does, so
the p99 target is also read as an open-loop sweep: requests due at a fixed rate, latency counted from when each
was due, and the highest rate each mode serves with p99 within twice one lone request's latency (`--no-slo` skips it).
`--prepack on` (the default here) has `shoal serve` pack the linear layers' weights once for oneDNN
(shoal/infer/prepack.py), `off` keeps them as trained, and `both` measures every configuration both ways in each
round (the names of the rows as trained end in "(as trained)"); the plain loop runs the model the servers run.
(`shoal serve`'s own default, auto, times both at start and keeps the faster: packed for the 4096-wide MLP, as
trained for the 1024-wide one.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bench_jobs import wide_mlp  # noqa: E402

from shoal.distributed.env import free_port  # noqa: E402
from shoal.infer import build, resolve  # noqa: E402
from shoal.infer.prepack import prepack_linears, sample_for  # noqa: E402


def train(tmp: Path, hidden: tuple[int, ...]) -> Path:
    (tmp / "job.toml").write_text(wide_mlp("bench-serve", hidden))
    subprocess.run([sys.executable, "-m", "shoal", "train", str(tmp / "job.toml"), "--out", str(tmp / "run")], check=True,
                   capture_output=True, timeout=600)
    return tmp / "run"


def plain_loop(run: Path, batch: int, seconds: float, prepack: bool) -> dict:
    """The baseline: one process, the model the servers run, forward passes back to back (samples/s and per-batch latency)."""
    torch.set_num_threads(1)
    source = resolve(run)
    model = build(source)
    if prepack:
        prepack_linears(model, sample_for(source.spec), mode="on")
    x = torch.randn(batch, 64)
    times = []
    with torch.no_grad():
        for _ in range(3):
            model(x)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return {"samples_per_s": batch * len(times) / sum(times), "p50_ms": 1e3 * statistics.median(times)}


class Serve:
    def __init__(self, run: Path, *args: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "shoal", "serve", str(run), "--port", str(self.port), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5).status == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise SystemExit("shoal serve did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def request_body(samples: int) -> bytes:
    return json.dumps({"inputs": np.random.default_rng(0).standard_normal((samples, 64)).round(4).tolist()}).encode()


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def percentile_ms(latencies: list[float], q: float) -> float:
    lat = sorted(latencies)
    return 1e3 * lat[min(int(len(lat) * q), len(lat) - 1)]


def summary(latencies: list[float], codes: dict[int, int], wall: float, samples: int) -> dict:
    n = len(latencies)
    return {"requests": n, "codes": codes, "requests_per_s": n / wall, "samples_per_s": samples * n / wall,
            "p50_ms": percentile_ms(latencies, 0.5), "p99_ms": percentile_ms(latencies, 0.99)}


def run_threads(target, count: int) -> float:
    """Run `count` threads of `target` to the end; the wall time they took."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def load(port: int, requests: int, clients: int, samples: int, max_seconds: float, warmup: int = 0) -> dict:
    """Closed loop: `requests` POSTs of `samples` samples each from `clients` threads (keep-alive), each sending its
    next request when its last is answered, or fewer if `max_seconds` runs out. Each client first sends `warmup`
    requests on its new connection that are not counted (the service learns its turnaround from them); the
    count starts when every client has sent its warm-up. `p99_all_ms` counts the warm-up requests too."""
    body = request_body(samples)
    latencies: list[float] = []
    warm: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    left = [requests]
    started: list[float] = []
    barrier = threading.Barrier(clients, action=lambda: started.append(time.perf_counter()))
    deadline = time.perf_counter() + max_seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(warmup):
            t = time.perf_counter()
            post(conn, body)
            with lock:
                warm.append(time.perf_counter() - t)
        barrier.wait()
        while True:
            with lock:
                if left[0] == 0 or time.perf_counter() > deadline:
                    break
                left[0] -= 1
            t = time.perf_counter()
            status = post(conn, body)
            with lock:
                latencies.append(time.perf_counter() - t)
                codes[status] = codes.get(status, 0) + 1
        conn.close()

    run_threads(client, clients)
    result = summary(latencies, codes, time.perf_counter() - started[0], samples)
    return {**result, "warmup_per_client": warmup, "p99_all_ms": percentile_ms(latencies + warm, 0.99)}


def paced_load(port: int, rate: float, requests: int, connections: int = 64) -> dict:
    """Open loop: request i (one sample) is due at start + i / rate whatever the server's pace, and its latency counts
    from when it was due, so a server that falls behind pays for the wait (no coordinated omission)."""
    body = request_body(1)
    latencies: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    issued = [0]
    start = time.perf_counter() + 0.1

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = issued[0]
                if i == requests:
                    break
                issued[0] += 1
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            status = post(conn, body)
            with lock:
                latencies.append(time.perf_counter() - due)
                codes[status] = codes.get(status, 0) + 1
        conn.close()

    wall = run_threads(client, connections) - 0.1
    return {"offered_per_s": rate, **summary(latencies, codes, wall, 1)}


def rate_under_slo(port: int, slo_ms: float, lone_rate: float) -> dict:
    """Offer rising rates (multiples of one lone request's rate, about 3 s each) until p99 passes `slo_ms` twice in
    a row; the highest offered rate whose p99 stayed within it, every request answered 200, and every rate tried."""
    tried, best, misses = [], 0.0, 0
    for multiple in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0):
        rate = multiple * lone_rate
        r = paced_load(port, rate, max(150, int(3 * rate)))
        tried.append(r)
        if r["p99_ms"] <= slo_ms and set(r["codes"]) == {200}:
            best, misses = rate, 0
        else:
            misses += 1
            if misses == 2:
                break
    return {"slo_ms": slo_ms, "requests_per_s": best, "tried": tried}


def median_of(runs: list[dict]) -> dict:
    """Per key, the median over the rounds (codes: summed)."""
    out = {}
    for key in runs[0]:
        if key == "codes":
            out[key] = {c: sum(r[key].get(c, 0) for r in runs) for c in {c for r in runs for c in r[key]}}
        else:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def one_round(run: Path, args, results: dict, sweeps: dict, prepack: bool, suffix: str) -> None:
    """Every configuration once, in a fixed order; a result per name (+ `suffix`) is appended to `results`, and every
    rate an open-loop sweep tried to `sweeps`."""
    add = lambda name, value: results.setdefault(name + suffix, []).append(value)  # noqa: E731
    add("plain batch 1", plain_loop(run, 1, 3.0, prepack))
    add("plain batch 32", plain_loop(run, 32, 3.0, prepack))
    for replicas in (1, 2):
        for batching in (False, True):
            flags = ["--replicas", str(replicas), "--max-queue", "1024", "--threads", "1"] + ["--prepack", "on" if prepack else "off"]
            flags += ["--max-batch", "32", "--max-wait-ms", "5"] if batching else ["--max-batch", "1", "--max-wait-ms", "0"]
            server = Serve(run, *flags)
            try:
                name = f"serve {replicas} replica{'s' if replicas > 1 else ''}, {'batching' if batching else 'one at a time'}"
                if replicas == 1 and not batching:
                    add("single request", load(server.port, 100, 1, 1, args.max_seconds, args.warmup))
                for clients in args.clients:
                    add(f"{name}, {clients} clients", load(server.port, args.requests, clients, 1, args.max_seconds, args.warmup))
                if replicas == 1 and batching:  # the same batch size as the plain loop: what the service adds
                    add("serve 1 replica, requests of 32", load(server.port, args.requests // 4, args.overhead_clients, 32,
                                                                args.max_seconds, args.warmup))
                if replicas == 1 and args.slo:
                    lone_ms = results["single request" + suffix][-1]["p50_ms"]
                    found = rate_under_slo(server.port, 2 * lone_ms, 1e3 / lone_ms)
                    sweeps.setdefault(name + suffix, []).append(found.pop("tried"))
                    add(f"{name}, open loop, highest rate with p99 <= 2x one request", found)
            finally:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--clients", type=lambda v: [int(c) for c in v.split(",")], default=[6, 8, 32],
                        help="client threads of each load, comma-separated")
    parser.add_argument("--hidden", type=lambda v: tuple(int(h) for h in v.split(",")), default=(1024, 1024, 1024),
                        help="the MLP's hidden widths, comma-separated (4096,4096,4096: a model whose cost, not HTTP's, dominates)")
    parser.add_argument("--overhead-clients", type=int, default=2,
                        help="client threads sending the 32-sample requests of the overhead row")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=int, default=2,
                        help="requests each closed-loop client sends on its new connection before the count starts (p99_all_ms counts them)")
    parser.add_argument("--no-slo", dest="slo", action="store_false",
                        help="skip the open-loop sweeps for the highest rate at p99 <= 2x one request's latency")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every configuration, interleaved; report the medians")
    parser.add_argument("--prepack", choices=("on", "off", "both"), default="on",
                        help="serve with the linear layers prepacked for oneDNN (--prepack on), as trained (--prepack off), or both")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args()
    rounds: dict[str, list[dict]] = {}
    sweeps: dict[str, list[list[dict]]] = {}
    loads = [open("/proc/loadavg").read().split()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        run = train(Path(tmp), args.hidden)
        variants = {"on": [(True, "")], "off": [(False, "")], "both": [(True, ""), (False, " (as trained)")]}[args.prepack]
        for _ in range(args.rounds):
            for prepack, suffix in variants:
                one_round(run, args, rounds, sweeps, prepack, suffix)
            loads.append(open("/proc/loadavg").read().split()[0])
    results = {name: median_of(runs) for name, runs in rounds.items()}
    print(f"MLP 64 -> {' x '.join(map(str, args.hidden))} -> 10; {args.rounds} round(s), medians; "
          f"load average (1 min) at the start and after each round: {', '.join(loads)}")
    for name, r in results.items():
        print(f"{name:40s} " + "  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    for _, suffix in variants:
        print(f"-- {'prepacked' if not suffix else suffix.strip(' ()')}:")
        report(args, *(of_variant(rows, suffix) for rows in (results, rounds, sweeps)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report_json = {"hidden": args.hidden, "overhead_clients": args.overhead_clients, "prepack": args.prepack, "medians": results,
                   "rounds": rounds, "sweeps": sweeps, "load": loads}
    args.json.write_text(json.dumps(report_json, indent=1) + "\n")


def of_variant(rows: dict, suffix: str) -> dict:
    """The rows of one variant, under their names without the suffix."""
    if not suffix:
        return {k: v for k, v in rows.items() if not k.endswith(" (as trained)")}
    return {k[: -len(suffix)]: v for k, v in rows.items() if k.endswith(suffix)}


def report(args, results: dict, rounds: dict, sweeps: dict) -> None:
    """The ratios against the targets, for one variant's rows."""
    for clients in args.clients:
        one, batched = results[f"serve 1 replica, one at a time, {clients} clients"], results[f"serve 1 replica, batching, {clients} clients"]
        ratios = [b["requests_per_s"] / o["requests_per_s"] for o, b in zip(rounds[f"serve 1 replica, one at a time, {clients} clients"],
                                                                            rounds[f"serve 1 replica, batching, {clients} clients"])]
        print(f"{clients} clients, 1 replica: batching serves {batched['requests_per_s'] / one['requests_per_s']:.2f}x the requests/s of "
              f"one at a time (per round: {', '.join(f'{r:.2f}' for r in ratios)}); p99 {batched['p99_ms']:.1f} ms = "
              f"{batched['p99_ms'] / results['single request']['p50_ms']:.1f}x one request's latency ({results['single request']['p50_ms']:.1f} ms; "
              f"{batched['p99_all_ms']:.1f} ms counting each client's {args.warmup} warm-up requests)"
              f", one at a time p99 {one['p99_ms']:.1f} ms")
    overheads = [1 - s["samples_per_s"] / p["samples_per_s"] for s, p in zip(rounds["serve 1 replica, requests of 32"], rounds["plain batch 32"])]
    overhead = 1 - results["serve 1 replica, requests of 32"]["samples_per_s"] / results["plain batch 32"]["samples_per_s"]
    print(f"service overhead at batch 32 (1 replica vs plain loop): {100 * overhead:.1f}% (per round: "
          f"{', '.join(f'{100 * o:.0f}%' for o in overheads)})")
    for name, runs in sweeps.items():
        print(f"{name}, open loop, last round: " + ", ".join(f"{r['offered_per_s']:.0f}/s p99 {r['p99_ms']:.1f} ms" for r in runs[-1]))
    if args.slo:
        within = {mode: f"serve 1 replica, {mode}, open loop, highest rate with p99 <= 2x one request" for mode in ("one at a time", "batching")}
        per_round = [b["requests_per_s"] / max(o["requests_per_s"], 1e-9) for o, b in zip(rounds[within["one at a time"]], rounds[within["batching"]])]
        print(f"open loop, 1 replica, p99 within 2x one request's latency ({results[within['batching']]['slo_ms']:.1f} ms): batching "
              f"{results[within['batching']]['requests_per_s']:.0f} requests/s, one at a time {results[within['one at a time']]['requests_per_s']:.0f}"
              f" (per round: {', '.join(f'{r:.2f}x' for r in per_round)})")


if __name__ == "__main__":
    main()
