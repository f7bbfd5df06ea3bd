"""`shoal bench` over 1 and 2 processes of a tiny job, and `shoal calibrate` into a profile the planner reads."""

from __future__ import annotations

import pytest

from job_files import digits_mlp
from shoal.cli import main
from shoal.plan import load_cluster, make_plan
from shoal.plan.calibrate import fit_link
from shoal.plan.shapes import ModelShape


def test_bench_runs_each_count_and_writes_table_and_report(tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text(digits_mlp("bench", "[train]\nglobal_batch_size = 32\nsteps = 12\nlog_every = 4\neval_every = 6\n"))
    with pytest.raises(SystemExit) as done:
        main(["bench", str(job), "--nproc", "1,2", "--out", str(tmp_path / "study"), "--target", "0.05"])
    said = capsys.readouterr()
    assert done.value.code == 0, said.out + said.err
    table = (tmp_path / "study" / "bench.md").read_text()
    assert "| 1 |" in table and "| 2 |" in table and "1.00x | 100% |" in table  # the first count is the baseline
    page = (tmp_path / "study" / "report.html").read_text()
    assert "(nproc-1)" in page and "(nproc-2)" in page
    with pytest.raises(SystemExit) as done:
        main(["bench", str(job), "--nproc", "1", "--out", str(tmp_path / "study")])
    assert done.value.code == 2 and "already has files" in capsys.readouterr().err


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
