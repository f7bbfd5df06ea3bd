"""`shoal report`: one self-contained HTML page from one or more run directories."""

from __future__ import annotations

import os
from pathlib import Path

from shoal.errors import ShoalError
from shoal.report.load import Run, load_run
from shoal.report.page import render

__all__ = ["Run", "load_run", "render", "write_report"]


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Writes the page (to a temporary name, then renamed); default RUN/report.html for one run, ./report.html for several."""
    if not run_dirs:
        raise ShoalError("report: give at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    target = Path(out) if out is not None else (runs[0].path / "report.html" if len(runs) == 1 else Path("report.html"))
    if target.is_dir():
        raise ShoalError(f"report --out: '{target}' is a directory; give a file name such as {target / 'report.html'}")
    if not target.parent.exists():
        raise ShoalError(f"report --out: directory '{target.parent}' does not exist")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(render(runs), encoding="utf-8")
    os.replace(tmp, target)
    return target
