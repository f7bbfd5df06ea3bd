"""`shoal deploy serve k8s RUN`: a Deployment running `shoal serve` in each pod, and a Service in front of it.

The run directory comes from a PersistentVolumeClaim (mounted read-only at /runs), the token from a Secret;
the readiness probe is /readyz (a pod takes traffic once a replica has loaded, and stops when it drains) and
the liveness probe /healthz. terminationGracePeriodSeconds leaves SIGTERM time to answer what was accepted.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from shoal.errors import ShoalError
from shoal.run_dir import atomic_write_bytes

RUNS_MOUNT = "/runs"


def _label(name: str) -> str:
    """A DNS-1123 label, which Kubernetes requires of object names."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:50] or "shoal-serve"


def manifest(run: str, image: str, pods: int, replicas: int, port: int, claim: str, token_secret: str | None,
             max_batch: int, max_wait_ms: float, name: str | None = None) -> str:
    run_name = Path(run).name
    name = _label(name or f"{run_name}-serve")
    labels = {"app": name}
    command = ["python", "-m", "shoal", "serve", f"{RUNS_MOUNT}/{run_name}", "--host", "0.0.0.0", "--port", str(port),
               "--replicas", str(replicas), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    container = {
        "name": "shoal-serve",
        "image": image,
        "command": command,
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 10, "periodSeconds": 10,
                          "failureThreshold": 3},
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 60},
        "volumeMounts": [{"name": "runs", "mountPath": RUNS_MOUNT, "readOnly": True}],
    }
    if token_secret:
        container["env"] = [{"name": "SHOAL_SERVE_TOKEN", "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "token"}}}]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": pods,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": 75,  # the server drains for up to 60 s after SIGTERM
                "containers": [container],
                "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
            }},
        },
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    header = (f"# shoal deploy serve k8s {run_name}: {pods} pod(s) x {replicas} replica(s); the run directory must be on "
              f"PersistentVolumeClaim '{claim}' as {RUNS_MOUNT}/{run_name}\n")
    return header + yaml.safe_dump_all([deployment, service], sort_keys=False)


def deploy_serve(target: str, run: Path | None, image: str, pods: int, replicas: int, port: int, claim: str,
                 token_secret: str | None, max_batch: int, max_wait_ms: float, out: Path | None) -> Path:
    if target != "k8s":
        raise ShoalError(f"deploy serve '{target}': only k8s is supported")
    if run is None:
        raise ShoalError("deploy serve k8s: name the run directory to serve: shoal deploy serve k8s RUN_DIR")
    from shoal.infer.source import resolve

    resolve(run, "deploy serve")  # the run must load here before a cluster is asked to load it
    for flag, value in (("--pods", pods), ("--replicas", replicas), ("--max-batch", max_batch)):
        if value < 1:
            raise ShoalError(f"{flag} {value}: must be 1 or more")
    if not 0 < port < 65536:
        raise ShoalError(f"--port {port}: give a port between 1 and 65535")
    if not image.strip():
        raise ShoalError("--image: give the container image that has shoal installed")
    if not claim.strip():
        raise ShoalError("--claim: give the PersistentVolumeClaim that holds the run directory")
    text = manifest(str(run), image.strip(), pods, replicas, port, claim.strip(), token_secret, max_batch, max_wait_ms)
    target_path = out or Path(f"{_label(Path(run).name + '-serve')}.yaml")
    target_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target_path, text.encode())
    return target_path
