"""The small job the multi-process tests train: an MLP (16 hidden) on the first 300 digits images."""

from __future__ import annotations


def digits_mlp(name: str, rest: str, *, seed: int | None = None, data: str = "") -> str:
    """Job-file text: `data` adds keys to [data], `rest` holds the sections that follow it."""
    head = f'name = "{name}"\n' + (f"seed = {seed}\n" if seed is not None else "")
    return head + '[model]\nname = "mlp"\nhidden = [16]\n[data]\nname = "digits"\nlimit_train = 300\n' + data + rest
