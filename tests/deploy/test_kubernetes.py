"""The Kubernetes manifests (deploy/kubernetes) and the image (Dockerfile): valid against the
Kubernetes schemas, and consistent with what the router and replicas need of them."""

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from common.config import parse_config
from replica._cli import _parse_args as parse_replica_args
from replica._discovery import RouterName

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


def replica_container() -> dict[str, Any]:
    pod = by_kind("Deployment")["modelplex-replica"]["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def router_pod_labels() -> dict[str, str]:
    labels: dict[str, str] = by_kind("Deployment")["modelplex-router"]["spec"]["template"][
        "metadata"
    ]["labels"]
    return labels


def selects_routers(selector: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= router_pod_labels().items()


def test_replicas_find_every_router_pod_through_the_headless_service() -> None:
    argv = replica_container()["command"]
    assert argv[:3] == ["python", "-m", "replica"]
    args = parse_replica_args(argv[3:])  # the flags are the replica's
    assert args.router == []  # a ClusterIP Service reaches one router pod, not each
    [url] = args.router_dns
    name = RouterName.parse(url)
    service = by_kind("Service")[name.host]
    assert service["spec"]["clusterIP"] == "None"  # one DNS record per router pod
    # A router is ready only once replicas report to it, and they find it only by this name.
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert selects_routers(service["spec"]["selector"])
    [port] = service["spec"]["ports"]
    assert name.scheme == "http"
    assert name.port == port["port"]
    router = by_kind("Deployment")["modelplex-router"]["spec"]["template"]["spec"]
    [router_port] = [p for p in router["containers"][0]["ports"] if p["name"] == port["targetPort"]]
    assert router_port["containerPort"] == cluster_config().router.port


def test_several_routers_run_behind_the_client_service_and_one_survives_disruptions() -> None:
    routers = by_kind("Deployment")["modelplex-router"]
    assert routers["spec"]["replicas"] >= 2
    clients = by_kind("Service")["modelplex-router"]
    assert clients["spec"].get("clusterIP") != "None"  # one stable address for clients
    assert selects_routers(clients["spec"]["selector"])
    [budget] = by_kind("PodDisruptionBudget").values()
    assert 1 <= budget["spec"]["minAvailable"] < routers["spec"]["replicas"]
    assert selects_routers(budget["spec"]["selector"]["matchLabels"])


def test_replicas_listen_where_they_advertise() -> None:
    container = replica_container()
    argv = container["command"]
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
