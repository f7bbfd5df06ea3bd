"""`shoal report` from real short runs: every run directory has its report, the page holds its plots, needs no network,
marks the straggler, puts runs side by side, and renders in a real headless browser (a screenshot is taken)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

import shoal
import shoal.report
from job_files import digits_mlp
from runs import records, shoal_train
from shoal.cli import main
from shoal.config import load_job
from shoal.data import load as load_data
from shoal.models import build_model
from shoal.report import load_run, write_report
from shoal.report.page import _per_rank
from shoal.report.svg import nice_ticks

JOB = """
[optimizer]
lr = 0.05
[train]
global_batch_size = 32
steps = 30
log_every = 5
eval_every = 10
[health]
straggler_windows = 1
"""


def _job(root):
    job = root / "job.toml"
    job.write_text(digits_mlp("report", JOB))
    return job


def _fit_here(job, out):
    """The job through shoal.fit in this process: quicker than `shoal train`."""
    cfg = load_job(job)
    splits = load_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed)
    return shoal.fit(model, splits.train, splits.eval, cfg, out=out, summary=False, show_progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-process run whose rank 1 burns 30 ms more CPU per step (a straggler), and one 1-process run."""
    root = tmp_path_factory.mktemp("report")
    job = _job(root)
    slow, single = root / "slow", root / "single"
    shoal_train(job, slow, "--nproc", "2", env={"SHOAL_TEST_SLOW_RANK": "1", "SHOAL_TEST_SLOW_S": "0.03"})
    _fit_here(job, single)
    return slow, single


def test_every_run_directory_gets_its_report_with_its_plots(runs):
    slow, _ = runs
    page = (slow / "report.html").read_text()
    for title in ("training loss", "evaluation accuracy", "throughput", "model FLOPs utilization", "where a step",
                  "busy (CPU) time per rank", "step time per rank", "CPU use per rank", "resident memory per rank"):
        assert title in page, title
    assert page.count("<svg") >= 10 and "no data in this run" not in page.split("resident memory per rank")[0]
    assert records(slow, "straggler"), "the throttled rank should have been named"
    assert 'class="mark"' in page and "rank 1 at step" in page  # the straggler ringed on its line and named
    assert not re.search(r"<script|<link|src=|href=|@import|url\(", page)  # self-contained: nothing to fetch


def test_several_runs_side_by_side_through_the_command(runs, tmp_path, capsys):
    out = tmp_path / "both.html"
    with pytest.raises(SystemExit) as done:
        main(["report", *map(str, runs), "--out", str(out)])
    assert done.value.code == 0 and str(out) in capsys.readouterr().out
    page = out.read_text()
    assert all(f"({r.name})" in page for r in runs)  # both named in the summary and the legends
    summary = page[page.index("<h2>Summary"):page.index("<h2>Side by side")]
    assert "<td>2</td>" in summary and "<td>1</td>" in summary  # processes of each


def test_an_elastic_run_whose_world_size_changes_gets_its_report(tmp_path):
    """A node left at step 20 and another joined at step 40: each rank's line holds the steps it took part in, paired
    with its own values, and a straggler named on a rank that had left does not stop the page (it did, with an
    IndexError that failed the finished job in every restart)."""
    sizes = {10: 2, 20: 2, 30: 1, 40: 2, 50: 2}
    rows = [{"kind": "train", "step": step, "loss": 1.0 / step, "rank_busy_s_per_rank": [0.01 * (r + 1) + step / 1e4 for r in range(n)],
             "rank_step_s_per_rank": [0.02] * n} for step, n in sizes.items()]
    rows.insert(2, {"kind": "straggler", "rank": 1, "step": 30, "step_s": 0.05, "median_s": 0.02})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    busy = _per_rank(load_run(tmp_path), "rank_busy_s")
    assert [line.xs for line in busy] == [[10, 20, 30, 40, 50], [10, 20, 40, 50]]
    assert busy[1].ys == [0.02 + step / 1e4 for step in (10, 20, 40, 50)]
    page = write_report([tmp_path]).read_text()
    assert "rank 1 at step 30" in page and 'class="mark"' in page


def test_a_page_that_fails_to_render_is_a_warning_not_a_failed_job(tmp_path, monkeypatch, capsys):
    def broken(runs):
        raise IndexError("list index out of range")
    monkeypatch.setattr(shoal.report, "render", broken)
    result = _fit_here(_job(tmp_path), tmp_path / "run")
    assert result.steps == 30 and (tmp_path / "run" / "model.pt").is_file() and not (tmp_path / "run" / "report.html").exists()
    err = capsys.readouterr().err
    assert "report.html was not written (IndexError: list index out of range)" in err and "`shoal report" in err


def test_a_directory_without_metrics_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path)])
    assert done.value.code == 2 and "not a run directory (no metrics.jsonl)" in capsys.readouterr().err


def test_nice_ticks_cover_the_range():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    ticks = nice_ticks(3.2, 917)
    assert ticks[0] <= 3.2 and ticks[-1] >= 917 and len(ticks) <= 8


def _browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here (Debian: apt-get install chromium)")
def test_the_report_renders_in_a_headless_browser(runs, tmp_path):
    page = runs[0] / "report.html"
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([_browser(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == page.read_text().count("<svg") and "Shoal report" in dom.stdout  # parsed, nothing lost
    subprocess.run([_browser(), *flags, "--window-size=1400,2200", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    shutil.copy(shot, runs[0].parent / "report.png")  # left beside the runs for a person to look at
