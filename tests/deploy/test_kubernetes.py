"""The Kubernetes manifests (deploy/kubernetes) and the image (Dockerfile): valid against the
Kubernetes schemas, and consistent with what the router and replicas need of them."""

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from common.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes still supported when this was written


def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    return document


def resources() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        found += [d for d in yaml.safe_load_all((KUSTOMIZE / name).read_text()) if d]
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources() if r["kind"] == kind}


def cluster_config() -> Any:
    [generator] = kustomization()["configMapGenerator"]
    [file_name] = generator["files"]
    return parse_config(yaml.safe_load((KUSTOMIZE / file_name).read_text()), source=file_name)


@pytest.mark.parametrize(
    "resource", resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_every_resource_is_valid_against_the_kubernetes_schema(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_config_map_holds_a_config_the_servers_accept() -> None:
    config = cluster_config()
    assert config.router.host == "0.0.0.0"
    assert config.deployment.host == "0.0.0.0"


def test_every_container_has_probes_a_drain_hook_resources_and_the_secret() -> None:
    for name, deployment in by_kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            assert {"readinessProbe", "livenessProbe"} <= container.keys(), name
            assert container["readinessProbe"]["httpGet"]["path"] == "/-/healthz", name
            assert "preStop" in container["lifecycle"], name
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            secrets = [e for e in container["env"] if e["name"] == "MODELPLEX_SECRET"]
            assert secrets[0]["valueFrom"]["secretKeyRef"]["name"] in by_kind("Secret"), name


def test_a_replica_has_longer_to_stop_than_its_drain_takes() -> None:
    pod = by_kind("Deployment")["modelplex-replica"]["spec"]["template"]["spec"]
    assert (
        pod["terminationGracePeriodSeconds"]
        > cluster_config().deployment.graceful_shutdown_timeout_s
    )


def test_replicas_report_to_the_router_service_and_listen_where_they_advertise() -> None:
    container = by_kind("Deployment")["modelplex-replica"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    argv = container["command"]
    router_url = argv[argv.index("--router") + 1]
    service = by_kind("Service")["modelplex-router"]
    assert (
        router_url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    )
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--advertise-url") + 1] == f"http://$(POD_IP):{port}"
    assert int(port) == container["ports"][0]["containerPort"]
    assert by_kind("Service")["modelplex-replicas"]["spec"]["clusterIP"] == "None"  # headless


def test_the_image_holds_every_package_the_servers_import() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.MULTILINE))
    assert {"common", "replica", "router", "examples"} <= copied
    assert "pip install ." in dockerfile
    assert re.search(r"^USER \d+$", dockerfile, re.MULTILINE)  # not root
