"""deploy/k8s renders with kustomize (pinned in tools/kustomize, built by `make setup`) and
every object it makes is valid against the Kubernetes schemas, offline (kubernetes-validate,
strict: an unknown field fails). Then what an operator counts on: every role has gRPC health
probes, resource requests, a PodDisruptionBudget and a Secret for its credentials (none
inline); the GPU worker asks for a GPU on a GPU node; the CPU worker scales."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZE = Path(sys.executable).with_name("kustomize")
KUBERNETES = "1.33"
"""The oldest Kubernetes release still supported upstream when this was written."""

TARGETS = ["overlays/postgres", "overlays/cassandra", "workers"]


def render(target: str) -> list[dict[str, Any]]:
    built = subprocess.run(
        [str(KUSTOMIZE), "build", str(K8S / target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid_for_kubernetes(target: str) -> None:
    objects = render(target)
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{target}: {obj['kind']} {obj['metadata']['name']}: {e.message}")


@pytest.mark.parametrize("overlay", ["overlays/postgres", "overlays/cassandra"])
def test_every_role_is_probed_budgeted_and_configured_from_secrets(overlay: str) -> None:
    objects = render(overlay)
    deployments = by_kind(objects, "Deployment")
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert set(deployments) == {"tideflow-frontend", "tideflow-history", "tideflow-matching"}
    for name, deployment in deployments.items():
        assert deployment["metadata"]["namespace"] == "tideflow"
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        port = container["ports"][0]["containerPort"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"] == {"port": port}, (name, probe)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert container["envFrom"] == [{"secretRef": {"name": "tideflow-secrets"}}]
        secret_env = [e for e in container.get("env", []) if "PASSWORD" in e["name"]]
        assert secret_env == []  # credentials only through the Secret
        role = name.removeprefix("tideflow-")
        assert f"--roles={role}" in container["args"]
        assert name in budgets
    services = by_kind(objects, "Service")
    for role in ("history", "matching"):
        assert services[f"tideflow-{role}"]["spec"]["clusterIP"] == "None"  # headless
    config = next(iter(by_kind(objects, "ConfigMap").values()))
    backend = overlay.rsplit("/", 1)[1]
    assert yaml.safe_load(config["data"]["persistence.yaml"])["persistence"]["backend"] == backend
    assert yaml.safe_load(config["data"]["tideflow.yaml"])["security"]["auth"]["enabled"]
    (job,) = by_kind(objects, "Job").values()
    assert "schema" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_gpu_worker_gets_a_gpu_node_and_the_cpu_worker_scales() -> None:
    objects = render("workers")
    deployments = by_kind(objects, "Deployment")
    gpu = deployments["tideflow-model-worker"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--provider=cuda" in gpu["containers"][0]["args"]
    assert gpu["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tideflow-cpu-worker"
    assert hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    for deployment in deployments.values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "tideflow-worker-key"}}]
