"""The `shoal` command. Thin: parse, call the library, turn ShoalError into one line and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from shoal.errors import ShoalError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Shoal: take a PyTorch training job beyond one process, with exact numerics and honest numbers.")


@app.command()
def train(
    job: Annotated[Path, typer.Argument(help="job file (TOML); see `shoal config` for every key")],
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="worker processes on this machine (overrides the job's nproc)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="run directory (default runs/NAME-TIMESTAMP)")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a key: --set train.epochs=3 (repeatable)")] = [],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="allow writing into a run directory that has files")] = False,
) -> None:
    """Train a job: spawns the workers here, or runs as one worker when started by torchrun."""
    from shoal.train.entry import train_command

    train_command(job, nproc, out, list(set_), overwrite)


@app.command()
def prep(
    pipeline: Annotated[Optional[Path], typer.Argument(help="pipeline file (TOML): sources and steps")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="output directory (Parquet shards + manifest.json)")] = None,
    cluster: Annotated[Optional[str], typer.Option("--cluster", help="Dask scheduler address, e.g. tcp://HOST:8786 (default: local)")] = None,
    apply: Annotated[Optional[Path], typer.Option("--apply", help="reapply the fitted parameters saved in this prep output")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output directory")] = False,
) -> None:
    """Preprocess data on Dask: statistics, integration, cleaning, reduction, transformation."""
    from shoal.prep import run_prep

    result = run_prep(pipeline, out, cluster=cluster, apply_dir=apply, overwrite=overwrite)
    for line in result.summary_lines():
        typer.echo(line)


@app.command("config")
def show_config() -> None:
    """Print every job-file key with its default and meaning."""
    from shoal.config_doc import render_markdown

    typer.echo(render_markdown())


def main() -> None:
    try:
        app()
    except ShoalError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
