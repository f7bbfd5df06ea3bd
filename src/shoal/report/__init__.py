"""`shoal report`: one self-contained HTML page from one or more run directories."""

from __future__ import annotations

import os
from pathlib import Path

from shoal.errors import ShoalError, is_no_space
from shoal.report.load import Run, load_run
from shoal.report.page import render

__all__ = ["Run", "load_run", "render", "write_report"]


def write_report(run_dirs: list[str | Path], out: str | Path | None = None, kept: str = "") -> Path:
    """Writes the page (to a temporary name, then renamed); default RUN/report.html for one run, ./report.html for several.

    A full disk is one line (what `kept` says is safe, and the command that writes the page later); no temporary file stays.
    """
    if not run_dirs:
        raise ShoalError("report: give at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    default = runs[0].path / "report.html" if len(runs) == 1 else Path("report.html")
    target = Path(out) if out is not None else default
    if target.is_dir():
        raise ShoalError(f"report --out: '{target}' is a directory; give a file name such as {target / 'report.html'}")
    if not target.parent.exists():
        raise ShoalError(f"report --out: directory '{target.parent}' does not exist")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    page = render(runs)
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if not is_no_space(err, target.parent):
            raise
        again = " ".join(["shoal report", *map(str, run_dirs), *([f"--out {target}"] if target != default else [])])
        raise ShoalError(f"no space left on the device of '{target.parent}' while writing {target.name}{'; ' + kept if kept else ''}; "
                         f"free space there and run `{again}`") from None
    return target
