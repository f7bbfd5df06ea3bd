"""`shoal bench` over 1 and 2 processes and two strategies of a tiny job, and `shoal calibrate` into a profile the planner reads."""

from __future__ import annotations

import json
import statistics

import pytest

from job_files import digits_mlp
from shoal.cli import main
from shoal.plan import load_cluster, make_plan
from shoal.plan.calibrate import fit_link
from shoal.plan.shapes import ModelShape
from shoal.report import load_run


@pytest.mark.dist
def test_bench_over_counts_and_strategies_computes_its_table_from_the_runs_records(tmp_path, capsys):
    """Two strategies (a name and a bundle) at 1 and 2 processes: every figure of the table is recomputed from the run
    directories' own metrics.jsonl, and each run carries its strategy's settings."""
    job = tmp_path / "job.toml"
    job.write_text(digits_mlp("bench", "[train]\nglobal_batch_size = 32\nsteps = 8\nlog_every = 2\neval_every = 4\n"))
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as done:
        main(["bench", str(job), "--nproc", "1,2", "--out", str(out), "--target", "0.05",
              "--strategies", "allreduce", "--strategies", "avg2:sync=average;average.every=2"])
    said = capsys.readouterr()
    assert done.value.code == 0, said.out + said.err
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [(r["strategy"], r["nproc"], r["run"]) for r in rows] == [
        ("allreduce", 1, "allreduce-nproc-1"), ("allreduce", 2, "allreduce-nproc-2"), ("avg2", 1, "avg2-nproc-1"), ("avg2", 2, "avg2-nproc-2")]
    table = (out / "bench.md").read_text()
    base = statistics.median(r["samples_per_s"] for r in load_run(out / rows[0]["run"]).train)
    for r in rows:
        run = load_run(out / r["run"])
        assert run.config["sync"] == ("average" if r["strategy"] == "avg2" else "allreduce")
        assert run.config["nproc"] == r["nproc"] and len(run.train) == 4
        rate = statistics.median(t["samples_per_s"] for t in run.train)
        speedup = rate / base
        assert r["rate"] == pytest.approx(rate) and r["speedup"] == pytest.approx(speedup)
        assert r["efficiency"] == pytest.approx(speedup / r["nproc"])  # against the first row's single process
        first = next(e["step"] for e in run.eval if e["accuracy"] >= 0.05)
        assert r["to_target"] == pytest.approx(next(t["time_s"] for t in run.train if t["step"] == first))
        assert f"| {r['strategy']} | {r['nproc']} | {rate:,.0f} | {speedup:.2f}x | {speedup / r['nproc']:.0%} |" in table
    assert "| allreduce | 1 |" in table and "1.00x | 100% |" in table
    page = (out / "report.html").read_text()
    assert all(f"({r['run']})" in page for r in rows)
    with pytest.raises(SystemExit) as done:
        main(["bench", str(job), "--nproc", "1", "--out", str(out)])
    assert done.value.code == 2 and "already has files" in capsys.readouterr().err


@pytest.mark.parametrize("strategies, said", [
    (["allreduce,nosuch"], "unknown strategy 'nosuch'"),
    (["fp16", "fp16"], "'fp16' is given twice"),
    (["bad label:sync=average"], "LABEL:key=value"),
    (["pp"], "strategy 'pp' at 2 processes"),  # a layout that cannot be: refused by shoal train's own checks
])
def test_bench_refuses_a_bad_strategy_before_any_run(tmp_path, capsys, strategies, said):
    job = tmp_path / "job.toml"
    job.write_text(digits_mlp("bench", "[train]\nglobal_batch_size = 32\nepochs = 1\n"))  # 300 samples: a last batch of 12
    args = [a for s in strategies for a in ("--strategies", s)]
    with pytest.raises(SystemExit) as done:
        main(["bench", str(job), "--nproc", "1,2", "--out", str(tmp_path / "study"), *args])
    err = capsys.readouterr().err
    assert done.value.code == 2 and said in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "study").exists()


def test_fit_link_recovers_bandwidth_and_latency():
    bw, lat, n = 1e9, 1e-4, 2
    ring = lambda size: 2 * (n - 1) / n * size / bw + 2 * (n - 1) * lat  # noqa: E731
    times = {s: {"all_reduce": ring(s)} for s in (4096, 1 << 20, 16 << 20)}
    got_bw, got_lat = fit_link(times, n)
    assert got_bw == pytest.approx(bw) and got_lat == pytest.approx(lat)


def test_calibrate_writes_a_profile_the_planner_reads(tmp_path, capsys):
    profile = tmp_path / "here.toml"
    with pytest.raises(SystemExit) as done:
        main(["calibrate", "--out", str(profile), "--nproc", "2", "--seconds", "0.01"])
    assert done.value.code == 0 and profile.is_file()
    cluster = load_cluster(str(profile), 1, 2)
    assert cluster.device.peak_flops > 1e8 and cluster.device.intra_bw > 1e6 and cluster.device.memory_bytes > 1e8
    plan = make_plan(ModelShape(layers=2, dim=64, heads=4, seq=16, vocab=100, batch=8), cluster)
    assert plan.best.fits
