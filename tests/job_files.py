"""The small job the multi-process tests train: an MLP (16 hidden) on the first 300 digits images."""

from __future__ import annotations


def digits_mlp(name: str, rest: str, *, seed: int | None = None, data: str = "", top: str = "") -> str:
    """Job-file text: `top` adds top-level keys (sync = ...), `data` keys to [data], `rest` the sections after it."""
    head = f'name = "{name}"\n' + (f"seed = {seed}\n" if seed is not None else "") + top
    return head + '[model]\nname = "mlp"\nhidden = [16]\n[data]\nname = "digits"\nlimit_train = 300\n' + data + rest


def restart_job(method: str, keys: str = "") -> str:
    """The 14-step job the SIGKILL-restart tests kill at step 6 (checkpoints every 4) for each compression method."""
    return digits_mlp(method, f"""
[optimizer]
name = "sgd"
lr = 0.05
[train]
global_batch_size = 32
steps = 14
log_every = 1
[comm]
compression = "{method}"
{keys}
[checkpoint]
every = 4
""", seed=3)
