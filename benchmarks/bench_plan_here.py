"""Planner accuracy on this machine: predicted vs measured step time of the GPT on Shakespeare over 2 processes.

Each round, `shoal calibrate --job` measures this machine (matmul peak, collectives, the share of the
peak one step of this model reaches on one process's half of the batch, the sharded layouts' fixed
costs); `shoal plan`'s cost model then predicts each layout's step from that round's profile, and
each layout is trained for real through
`shoal train` and its median `step_s` over the steady windows is the measurement. Also: whether
the planner's recommended layout is the measured fastest. Results in benchmarks/results/plan-here.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from shoal.config import load_job
from shoal.plan import Layout, load_cluster, make_plan, predict
from shoal.plan.calibrate import calibrate
from shoal.plan.command import shape_of_job

ROOT = Path(__file__).parents[1]
JOB = ROOT / "examples" / "gpt_shakespeare.toml"
# name: (shoal train --set overrides, the planner's Layout)
LAYOUTS = {
    "dp=2": ([], Layout(dp=2)),
    "dp=2 accum=2": (["train.grad_accum=2"], Layout(dp=2, microbatches=2)),
    "dp=2 recompute": (["parallel.activation_checkpointing=true"], Layout(dp=2, recompute=True)),
    "fsdp=2": (["parallel.fsdp=2"], Layout(fsdp=2)),
    "tp=2": (["parallel.tp=2"], Layout(tp=2)),
    "tp=2 recompute": (["parallel.tp=2", "parallel.activation_checkpointing=true"], Layout(tp=2, recompute=True)),
    "pp=2 1f1b mb=2": (["parallel.pp=2", "parallel.microbatches=2"], Layout(pp=2, microbatches=2)),
    "pp=2 1f1b mb=4": (["parallel.pp=2", "parallel.microbatches=4"], Layout(pp=2, microbatches=4)),
    "pp=2 gpipe mb=4": (["parallel.pp=2", "parallel.microbatches=4", 'parallel.pp_schedule="gpipe"'],
                        Layout(pp=2, microbatches=4, schedule="gpipe")),
    "pp=2 interleaved mb=4": (["parallel.pp=2", "parallel.microbatches=4", 'parallel.pp_schedule="interleaved"'],
                              Layout(pp=2, microbatches=4, schedule="interleaved", stages_per_rank=2)),
}


def measure(out: Path, sets: list[str], steps: int) -> float:
    extra = [a for s in sets for a in ("--set", s)]
    subprocess.run([sys.executable, "-m", "shoal", "train", str(JOB), "--nproc", "2", "--out", str(out), "--overwrite",
                    "--set", f"train.steps={steps}", "--set", "train.log_every=10", "--set", "train.eval_every=0",
                    "--set", "checkpoint.at_end=false", "--set", "data.limit_eval=64", *extra],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in train if r["kind"] == "train"][1:]  # the first window holds start-up effects
    return statistics.median(r["step_s"] for r in steady)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--calibrate-seconds", type=float, default=2.0, help="how long calibrate times each of its measurements")
    a = p.parse_args()
    shape = shape_of_job(load_job(JOB))
    measured: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    predicted: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    profiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):  # each round calibrates, then measures every layout: a change of load hits both alike
            profile = calibrate(Path(tmp) / "here.toml", nproc=2, seconds=a.calibrate_seconds, job=JOB)
            profiles.append(profile.read_text())
            cluster = load_cluster(str(profile), 1, 2)
            for name, (sets, layout) in LAYOUTS.items():
                predicted[name].append(predict(shape, layout, cluster, "adamw").step_s)
                measured[name].append(measure(Path(tmp) / "run", sets, a.steps))
    rows = []
    for name, (_, layout) in LAYOUTS.items():
        parts = predict(shape, layout, cluster, "adamw").time  # the last round's profile
        pred, got = statistics.median(predicted[name]), statistics.median(measured[name])
        rows.append({"layout": name, "predicted_s": pred, "measured_s": got, "error": pred / got - 1, "measured_rounds": measured[name],
                     "predicted_rounds": predicted[name], "predicted_parts_last_round": parts})
        print(f"{name:24} predicted {pred * 1e3:8.1f} ms  measured {got * 1e3:8.1f} ms  error {pred / got - 1:+.0%}  "
              f"(rounds: {', '.join(f'{p / m - 1:+.0%}' for p, m in zip(predicted[name], measured[name], strict=True))})")
    best_measured = min(rows, key=lambda r: r["measured_s"])["layout"]
    plan = make_plan(shape, cluster)
    print(f"planner recommends {plan.best.layout.describe()}; measured fastest of these: {best_measured}")
    within = sum(abs(r["error"]) <= 0.15 for r in rows)
    print(f"{within} of {len(rows)} layouts within 15%")
    result = {"rows": rows, "recommended": plan.best.layout.describe(), "measured_best": best_measured,
              "achievable": cluster.device.achievable, "peak_flops": cluster.device.peak_flops, "link_bw": cluster.device.intra_bw,
              "profiles": profiles}  # every round's whole profile: predictions can be recomputed from these alone
    (ROOT / "benchmarks" / "results" / "plan-here.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
