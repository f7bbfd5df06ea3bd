"""The HTTP API (Starlette, under uvicorn): /v1/predict, /v1/generate, /healthz, /readyz, /metrics, /v1/replicas.

Every answer is JSON (metrics excepted); every refusal says why: 4xx for the client's mistakes, 503 with
Retry-After when the queue is full or the service is shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shoal.data.batches import batch_len
from shoal.errors import ShoalError
from shoal.serve.batcher import Batcher, QueueFull, Work
from shoal.serve.metrics import Metrics
from shoal.serve.pool import Pool, ReplicaFailed
from shoal.serve.validate import BadRequest, Limits, generate_request, parse_body, predict_inputs

OPEN = ("/healthz", "/readyz")  # probes need no token
ENDPOINTS = ("/v1/predict", "/v1/generate", "/healthz", "/readyz", "/metrics", "/v1/replicas")
RETRY_AFTER_S = 1


@dataclass
class Service:
    source: str
    replicas: int
    limits: Limits
    batcher_args: tuple[int, float, int]  # max_batch, max_wait_s, max_queue
    token: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    pool: Pool | None = None
    batcher: Batcher | None = None
    draining: bool = False
    threads: int = 0  # intra-op threads per replica (0: cores / replicas)
    prepack: str = "auto"  # CPU: linear layers' weights packed once for oneDNN: auto | on | off (shoal.infer.prepack)
    rows: Callable | None = None  # raw rows -> features: the run's fitted preprocessing (shoal.infer.prepare.FittedRows)

    @property
    def ready(self) -> bool:
        return not self.draining and self.pool is not None and self.pool.ready > 0


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(service: Service) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher = Batcher(*service.batcher_args)
        service.pool = Pool(service.source, service.replicas, service.batcher, service.metrics, service.threads, service.prepack)
        await service.pool.start()
        yield
        service.draining = True
        await service.pool.stop()

    async def submit(request: Request, endpoint: str, kind: str) -> Response:
        if service.draining:
            return error(503, "shutting down", {"Retry-After": str(RETRY_AFTER_S)})
        batcher = service.batcher
        conn = request.client  # (host, port): one keep-alive connection
        batcher.arrive(conn)  # a batch being formed may wait for this one while it is read and checked
        try:
            body = await request.body()
            data = parse_body(body, request.headers.get("content-type", ""), service.limits)
            if kind == "predict":
                x = predict_inputs(data, service.limits)
                if isinstance(x, list):  # raw rows: the fitted steps, off the event loop
                    x = await prepared(x)
                work = Work("predict", x, batch_len(x), conn=conn)
            else:
                work = Work("generate", generate_request(data, service.limits), conn=conn)
        except BaseException:
            await batcher.leave()
            raise
        try:
            result = await batcher.submit(work, arrived=True)
        except QueueFull:
            service.metrics.rejected.inc()
            return error(503, f"the queue is full ({service.batcher.max_queue} requests); retry later", {"Retry-After": str(RETRY_AFTER_S)})
        except ReplicaFailed as err:
            return error(500, str(err))
        if kind == "predict":
            return JSONResponse({"outputs": result["outputs"].tolist(), "predictions": result["predictions"].tolist()})
        from shoal.infer.generate import decode

        return JSONResponse({"tokens": result["tokens"], "text": decode(result["tokens"])})

    async def prepared(rows: list[dict]):
        try:
            x = await asyncio.get_running_loop().run_in_executor(None, service.rows, rows)
        except ShoalError as err:
            raise BadRequest(422, str(err)) from None
        if list(x.shape[1:]) != list(service.limits.input_shape):
            raise BadRequest(422, f"the fitted steps give {x.shape[1]} features, the model takes {list(service.limits.input_shape)}")
        return x

    async def predict(request: Request) -> Response:
        return await submit(request, "predict", "predict")

    async def generate(request: Request) -> Response:
        return await submit(request, "generate", "generate")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready = service.pool.ready if service.pool else 0
        body = {"ready": service.ready, "replicas_ready": ready, "replicas": service.replicas, "draining": service.draining}
        return JSONResponse(body, status_code=200 if service.ready else 503)

    async def metrics(request: Request) -> Response:
        service.metrics.queue_depth.set(len(service.batcher) if service.batcher else 0)
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    async def replicas(request: Request) -> Response:
        pool = service.pool
        return JSONResponse({"replicas": [{"index": r.index, "pid": r.pid, "ready": r.ready, "restarts": r.restarts}
                                          for r in (pool.replicas if pool else [])]})

    routes = [Route("/v1/predict", predict, methods=["POST"]), Route("/v1/generate", generate, methods=["POST"]),
              Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
              Route("/v1/replicas", replicas)]

    async def bad_request(request: Request, exc: BadRequest) -> Response:
        return error(exc.status, exc.message)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, exc.detail or "error", getattr(exc, "headers", None))

    async def guard(scope, receive, send, app) -> None:
        """Token check, then count and time every answer by endpoint and status (plain ASGI: no per-request task)."""
        if scope["type"] != "http":
            return await app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if service.token and path not in OPEN and not _authorized(Request(scope), service.token):
            response = error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send_status)
        else:
            await app(scope, receive, send_status)
        service.metrics.requests.labels(endpoint, str(status[0])).inc()
        service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(Guard, guard=guard)],
                     exception_handlers={BadRequest: bad_request, HTTPException: http_error})


class Guard:
    """ASGI middleware calling `guard(scope, receive, send, app)` around the app."""

    def __init__(self, app, guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send) -> None:
        await self.guard(scope, receive, send, self.app)


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
