"""deploy/k8s: every manifest validates against the Kubernetes API schemas (kubernetes-validate,
strict: unknown fields are errors) and hangs together: the sidecar's options are ones it accepts,
named ports exist, Services select pods, and Prometheus scrapes the port /metrics listens on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.settings import Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
# gRPC probes are GA from 1.27 (app-with-sidecar.yaml's readiness probe): the oldest supported.
VERSIONS = ("1.27", kubernetes_validate.latest_version())


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}: {doc['kind']} {doc['metadata']['name']}", doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, doc in documents():
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield where, doc["spec"]["template"]


def test_there_are_manifests_to_check() -> None:
    kinds = {doc["kind"] for _, doc in documents()}
    assert len(MANIFESTS) >= 7
    assert {"Deployment", "Service", "Secret", "ConfigMap", "Job", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("where", [w for w, _ in documents()])
def test_manifest_matches_the_kubernetes_schema(where: str, version: str) -> None:
    doc = dict(documents())[where]
    kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
          "spec": {"ports": [{"port": "eighty"}]}}, kubernetes_validate.ValidationError),
        ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
          "spec": {"ports": [{"port": 80}], "selectr": {"a": "b"}}},
         kubernetes_validate.ValidationError),
        ({"apiVersion": "v1", "kind": "NoSuchKind", "metadata": {"name": "x"}},
         kubernetes_validate.SchemaNotFoundError),
    ],
)  # fmt: skip
def test_invalid_manifests_are_rejected(doc: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


def sidecar_container() -> dict[str, Any]:
    containers = [
        c for _, pod in pod_templates() for c in pod["spec"]["containers"]
        if c["name"] == "trafficsplit"
    ]  # fmt: skip
    assert len(containers) == 1
    return containers[0]


def test_the_sidecar_accepts_its_arguments_and_environment() -> None:
    container = sidecar_container()
    known = {env_name(name) for name in Settings.__dataclass_fields__}
    env = {
        e["name"]: e.get("value", "redis://secret-from-kubernetes:6379/0")
        for e in container.get("env", [])
        if e["name"].startswith("TRAFFICSPLIT_")
    }
    assert set(env) <= known, f"unknown settings: {sorted(set(env) - known)}"
    settings = load_settings(container.get("args", []), env)  # SystemExit on a bad option
    assert settings.metrics_listen == "0.0.0.0:9464"
    assert settings.listen == "0.0.0.0:8500"


def test_prometheus_scrapes_the_port_metrics_listen_on() -> None:
    scraped = 0
    for where, pod in pod_templates():
        annotations = pod["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        ports = {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert int(annotations["prometheus.io/port"]) in ports, where
        scraped += 1
    assert scraped >= 2  # the sidecar's pod and Triton's
    listen = {e["name"]: e.get("value") for e in sidecar_container()["env"]}
    assert listen["TRAFFICSPLIT_METRICS_LISTEN"].endswith(":9464")


def test_named_ports_exist_and_services_select_pods() -> None:
    pods = list(pod_templates())
    for where, pod in pods:
        for container in pod["spec"]["containers"]:
            names = {p.get("name") for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                for handler in ("tcpSocket", "httpGet", "grpc"):
                    port = container.get(probe, {}).get(handler, {}).get("port")
                    if isinstance(port, str):
                        assert port in names, f"{where}: {probe} port {port}"
    for where, doc in documents():
        if doc["kind"] != "Service":
            continue
        selector = doc["spec"]["selector"]
        selected = [pod for _, pod in pods if selector.items() <= pod["metadata"]["labels"].items()]
        assert selected, f"{where} selects no pod"
        names = {
            p.get("name") for pod in selected for c in pod["spec"]["containers"]
            for p in c.get("ports", [])
        }  # fmt: skip
        for port in doc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert not isinstance(target, str) or target in names, f"{where}: {target}"
