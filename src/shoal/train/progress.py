"""What a person watching sees: a live bar on a terminal, plain lines in a log, and a summary."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class ProgressView:
    def __init__(self, total_steps: int, enabled: bool):
        self.console = Console(stderr=False)
        self.total = total_steps
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self._bar = None
        self._next_line = 0
        if self.live:
            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
            self._task = self._bar.add_task("train", total=total_steps, info="")
            self._bar.start()

    def update(self, step: int, info: str) -> None:
        if not self.enabled:
            return
        if self.live:
            self._bar.update(self._task, completed=step, info=info)
        elif step >= self._next_line or step == self.total:  # about ten lines per run in a log file
            print(f"step {step}/{self.total} {info}", flush=True)
            self._next_line = step + max(self.total // 10, 1)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        (self._bar.console.print if self.live else print)(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def print_summary(rows: list[tuple[str, str]], title: str = "Shoal run") -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in rows:
        table.add_row(k, v)
    Console(file=sys.stdout).print(table)
