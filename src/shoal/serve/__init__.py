"""Online serving (`shoal serve`): an HTTP JSON API over model replicas in their own processes, with dynamic
batching, back-pressure, Prometheus metrics, token auth, replica restarts and graceful shutdown."""

from shoal.serve.app import Service, create_app
from shoal.serve.server import serve_command

__all__ = ["Service", "create_app", "serve_command"]
