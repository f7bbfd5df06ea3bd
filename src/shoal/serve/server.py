"""`shoal serve`: check the run, then run the app under uvicorn until SIGTERM or SIGINT: from then on /readyz says
503 and new requests are refused, what was accepted is answered, the replicas stop, and the process exits 0."""

from __future__ import annotations

import logging
import os
import signal
import sys

import uvicorn

from shoal.errors import ShoalError
from shoal.infer.prepack import check_mode
from shoal.infer.source import resolve
from shoal.serve.app import Service, create_app
from shoal.serve.validate import Limits

TOKEN_ENV = "SHOAL_SERVE_TOKEN"


class _Server(uvicorn.Server):
    """uvicorn's server, telling the service it is draining the moment a signal arrives."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:
        self.service.draining = True
        super().handle_exit(sig, frame)
        # uvicorn re-raises a captured signal once it has shut down (exit status -15); a drained SIGTERM is a clean exit
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list) and sig == signal.SIGTERM:
            captured.remove(sig)


def service_for(source_path: str, replicas: int, token: str | None, max_batch: int, max_wait_ms: float, max_queue: int,
                max_request_samples: int, max_body_bytes: int) -> Service:
    for name, value, least in (("--replicas", replicas, 1), ("--max-batch", max_batch, 1), ("--max-queue", max_queue, 1),
                               ("--max-request-samples", max_request_samples, 1), ("--max-body-bytes", max_body_bytes, 1)):
        if value < least:
            raise ShoalError(f"{name} {value}: must be {least} or more")
    if max_wait_ms < 0:
        raise ShoalError(f"--max-wait-ms {max_wait_ms}: must be 0 or more")
    if token is not None and not token.strip():
        raise ShoalError("--token: give a non-empty token (or leave it out to serve without one)")
    source = resolve(source_path, "serve")
    from shoal.infer.prepare import FittedRows, fitted_dir_of  # shoal.prep imports dask: only when needed

    fitted = fitted_dir_of(source)
    rows = FittedRows(fitted) if fitted is not None else None  # raw rows go through the run's fitted steps
    limits = Limits(tuple(source.spec.input_shape), source.spec.num_classes, source.task == "lm", max_request_samples,
                    max_body_bytes, source.is_gpt, rows is not None, source.spec.dict_inputs, _vocab(source))
    return Service(str(source_path), replicas, limits, (max_batch, max_wait_ms / 1000.0, max_queue), token, rows=rows)


def _vocab(source) -> int:
    """A transformers classifier's vocabulary (its config's, as `shoal.models.hf` builds it), for checking token ids."""
    if not source.spec.dict_inputs or source.task == "lm" or not source.cfg.model.name.startswith("hf:"):
        return 0
    from shoal.models.hf import model_class

    kwargs = source.cfg.model.kwargs
    return int(kwargs.get("vocab_size") or getattr(model_class(source.cfg.model.name).config_class(), "vocab_size", 0) or 0)


def serve_command(source_path: str, replicas: int = 1, port: int = 8000, host: str = "127.0.0.1", token: str | None = None,
                  max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256, max_request_samples: int = 256,
                  max_body_bytes: int = 8 << 20, log_level: str = "info", threads: int = 0, prepack: str = "auto") -> None:
    if not 0 < port < 65536:
        raise ShoalError(f"--port {port}: give a port between 1 and 65535")
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    if threads < 0:
        raise ShoalError(f"--threads {threads}: must be 0 (cores / replicas) or more")
    check_mode(prepack)
    service = service_for(source_path, replicas, token, max_batch, max_wait_ms, max_queue, max_request_samples, max_body_bytes)
    service.threads, service.prepack = threads, prepack
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=60, lifespan="on")
    print(f"serving {source_path} on http://{host}:{port} with {replicas} replica(s)"
          f"{' (token required)' if token else ''}", file=sys.stderr, flush=True)
    server = _Server(config, service)
    server.run()
    if not server.started:
        raise ShoalError(f"serve: could not start on {host}:{port} (is the port in use?)")
