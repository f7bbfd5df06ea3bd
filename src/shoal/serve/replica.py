"""One model replica: a process of its own that loads the run and answers batches over a pipe until told to stop
(or until the server goes away: the pipe closes and the replica exits)."""

from __future__ import annotations

import os
import pickle
import time

import torch

DELAY_ENV = "SHOAL_TEST_SERVE_DELAY_S"  # test-only: seconds each batch takes at least, so a test can kill a replica mid-batch


def replica_main(source_path: str, conn, threads: int, prepack: str = "auto") -> None:
    from shoal.data.batches import call_model
    from shoal.infer.generate import generate
    from shoal.infer.predict import scores
    from shoal.infer.prepack import prepack_linears, sample_for
    from shoal.infer.source import build, resolve

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    source = resolve(source_path, "serve")
    model = build(source)
    vocab, key = source.spec.num_classes, source.cfg.train.output_key
    note = prepack_linears(model, sample_for(source.spec), key, prepack)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    conn.send(("ready", os.getpid(), note))
    while True:
        try:
            message = unpack(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message is None:
            return
        kind, payload = message
        started = time.perf_counter()
        try:
            if kind == "predict":
                x = {k: torch.from_numpy(v) for k, v in payload.items()} if isinstance(payload, dict) else torch.from_numpy(payload)
                out = scores(call_model(model, x), vocab, key)
                result = {"outputs": out.numpy(), "predictions": out.argmax(dim=-1).numpy()}
            else:
                tokens = generate(model, torch.tensor([payload["tokens"]]), payload["max_new_tokens"], vocab,
                                  payload["temperature"], payload["top_k"], payload["seed"])
                result = {"tokens": tokens[0].tolist()}
        except Exception as err:  # a bug or an input the checks let through: that batch fails, the replica lives on
            result = {"error": f"{type(err).__name__}: {err}"}
        if delay:
            time.sleep(max(delay - (time.perf_counter() - started), 0))
        conn.send_bytes(pack(("done", result)))


def pack(message) -> bytes:
    """A message for the pipe: plain pickle (Connection.send builds a ForkingPickler per message, a sixth of the
    server's time per batch when profiled)."""
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes):
    return pickle.loads(data)

