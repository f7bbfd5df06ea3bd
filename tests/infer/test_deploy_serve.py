"""`shoal deploy serve k8s RUN`: a Deployment and a Service that load into the official Kubernetes client models
(unknown keys and missing fields fail), with probes on /readyz and /healthz and the token from a Secret."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from shoal.cli import main

pytest.importorskip("kubernetes")
pytest.importorskip("kubeflow.training")
_spec = importlib.util.spec_from_file_location("deploy_checks", Path(__file__).parents[1] / "unit" / "test_deploy.py")
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)


def shoal(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code


def test_the_manifest_is_a_valid_deployment_and_service(runs, tmp_path):
    out = tmp_path / "serve.yaml"
    assert shoal("deploy", "serve", "k8s", str(runs["mlp"]), "--image", "reg.example/shoal:1", "--pods", "3", "--replicas", "2",
                 "--port", "9000", "--token-secret", "shoal-token", "--out", str(out)) == 0
    deployment, service = yaml.safe_load_all(out.read_text())
    built = checks.build("V1Deployment", deployment)
    svc = checks.build("V1Service", service)
    assert built.spec.replicas == 3 and built.metadata.name == "mlp-serve"
    container = built.spec.template.spec.containers[0]
    assert container.command[:5] == ["python", "-m", "shoal", "serve", "/runs/mlp"]
    assert container.command[container.command.index("--replicas") + 1] == "2" and "0.0.0.0" in container.command
    assert container.readiness_probe.http_get.path == "/readyz" and container.liveness_probe.http_get.path == "/healthz"
    assert container.env[0].value_from.secret_key_ref.name == "shoal-token"
    assert built.spec.template.spec.volumes[0].persistent_volume_claim.claim_name == "shoal-runs"
    assert svc.spec.selector == built.spec.selector.match_labels and svc.spec.ports[0].target_port == "http"


@pytest.mark.parametrize("args,message", [
    (["serve", "slurm", "RUN"], "only k8s"),
    (["serve", "k8s"], "name the run directory"),
    (["serve", "k8s", "RUN", "--pods", "0"], "--pods 0"),
    (["serve", "k8s", "RUN", "--port", "70000"], "--port 70000"),
    (["serve", "k8s", "/no/such/run"], "not found"),
])
def test_errors_are_one_line(runs, capsys, args, message):
    args = [str(runs["mlp"]) if a == "RUN" else a for a in args]
    assert shoal("deploy", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("args,message", [
    (["/no/such/run"], "not found"),
    (["RUN", "--replicas", "0"], "--replicas 0"),
    (["RUN", "--max-wait-ms", "-1"], "--max-wait-ms"),
    (["RUN", "--port", "0"], "--port 0"),
    (["RUN", "--token", " "], "--token"),
])
def test_serve_refuses_bad_options_before_starting(runs, capsys, args, message):
    args = [str(runs["mlp"]) if a == "RUN" else a for a in args]
    assert shoal("serve", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
