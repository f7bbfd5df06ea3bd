"""The lines `shoal infer` prints, kept out of cli.py so the command there stays one call."""

from __future__ import annotations

from pathlib import Path

import typer

from shoal.infer.command import infer_command


def infer_main(source: Path, out: Path, data: Path | None, nproc: int, split: str | None, batch: int, overwrite: bool,
               generating: bool, prompt: str, max_new_tokens: int, temperature: float, top_k: int, samples: int, seed: int,
               kv_cache: bool, prepack: str = "auto") -> dict:
    options = {"batch": batch, "split": split, "prepack": prepack}
    if generating:
        options.update(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, samples=samples,
                       seed=seed, kv_cache=kv_cache)
    summary = infer_command(source, out, nproc, None if generating else data, overwrite, **options)
    if generating:
        for text in summary["text"]:
            typer.echo(text)
        typer.echo(f"wrote {summary['out']}: {summary['tokens']} tokens in {summary['seconds']:.2f} s ({summary['tokens_per_s']:.0f} tokens/s)")
    else:
        typer.echo(f"wrote {summary['out']}: {summary['rows']} rows in {summary['shards']} shard(s), "
                   f"{summary['seconds']:.2f} s ({summary['rows_per_s']:.0f} rows/s)")
    for name, value in summary.get("metrics", {}).items():
        typer.echo(f"  {name} {value:.4f}" if isinstance(value, float) else f"  {name} {value}")
    return summary
