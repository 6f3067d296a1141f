"""Ordinary Kubernetes manifests → the workloads and Services the lab simulates.

Pure: takes YAML text, returns frozen data. Objects the lab has no use for (ServiceAccounts,
ConfigMaps, ...) are skipped; the raw JSON of the kept ones is preserved so the snapshot can show
them as an API server would.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kernel.errors import LabError

JsonObject = dict[str, Any]

DEFAULT_NAMESPACE = "default"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True, order=True, slots=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str | None = None


def pod_template(kind: str, manifest: JsonObject) -> JsonObject:
    """The pod template of a workload manifest (a CronJob's sits in its jobTemplate)."""
    spec = manifest.get("spec") or {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return dict(spec.get("template") or {})


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """A Deployment, StatefulSet, DaemonSet, Job or bare Pod as written in a manifest."""

    namespace: str
    kind: str
    name: str
    replicas: int
    template_labels: tuple[tuple[str, str], ...]
    ports: tuple[ContainerPort, ...]
    manifest: JsonObject = field(compare=False, hash=False, repr=False)
    probe_ports: tuple[int, ...] = ()  # TCP ports the kubelet probes (httpGet, tcpSocket, grpc)

    @property
    def ref(self) -> str:
        """``NS/Kind/name``, the identity truth.json and the analyser use."""
        return f"{self.namespace}/{self.kind}/{self.name}"

    def named_port(self, name: str, protocol: str) -> int | None:
        for port in self.ports:
            if port.name == name and port.protocol == protocol:
                return port.port
        return None


@dataclass(frozen=True, order=True, slots=True)
class ServicePort:
    port: int
    target_port: int | str  # a number, or the name of a containerPort
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    namespace: str
    name: str
    type: str
    selector: tuple[tuple[str, str], ...] | None  # None: no selector, the lab manages no endpoints
    ports: tuple[ServicePort, ...]
    headless: bool
    manifest: JsonObject = field(compare=False, hash=False, repr=False)

    def selects(self, workload: WorkloadSpec) -> bool:
        if not self.selector or workload.namespace != self.namespace:
            return False
        labels = dict(workload.template_labels)
        return all(labels.get(key) == value for key, value in self.selector)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    namespaces: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (name, labels), sorted
    workloads: tuple[WorkloadSpec, ...]
    services: tuple[ServiceSpec, ...]

    def workload(self, ref: str) -> WorkloadSpec:
        for workload in self.workloads:
            if workload.ref == ref:
                return workload
        known = ", ".join(w.ref for w in self.workloads)
        raise LabError(f"no workload {ref!r} in the manifests (known: {known})")

    def merged(self, other: ClusterSpec) -> ClusterSpec:
        return _cluster(
            dict(self.namespaces) | dict(other.namespaces),
            [*self.workloads, *other.workloads],
            [*self.services, *other.services],
        )


def read_manifests(sources: Iterable[tuple[str, str]]) -> ClusterSpec:
    """``(source name, YAML text)`` pairs → the cluster they describe; errors name the source."""
    namespaces: dict[str, tuple[tuple[str, str], ...]] = {}
    workloads: list[WorkloadSpec] = []
    services: list[ServiceSpec] = []
    for source, text in sources:
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as error:
            raise LabError(f"{source}: not valid YAML: {error}") from error
        for document in _flatten(source, documents):
            kind = document.get("kind")
            metadata = document.get("metadata") or {}
            name = metadata.get("name")
            if not isinstance(name, str) or not name:
                raise LabError(f"{source}: a {kind} without metadata.name")
            where = f"{source}: {kind} {name}"
            if kind == "Namespace":
                namespaces[name] = _sorted_labels(metadata.get("labels"), where)
                continue
            namespace = metadata.get("namespace") or DEFAULT_NAMESPACE
            if kind in WORKLOAD_KINDS:
                workloads.append(_workload(document, kind, name, namespace, where))
            elif kind == "Service":
                services.append(_service(document, name, namespace, where))
            if kind in WORKLOAD_KINDS or kind == "Service":
                namespaces.setdefault(namespace, ())
    return _cluster(namespaces, workloads, services)


def _cluster(
    namespaces: Mapping[str, tuple[tuple[str, str], ...]],
    workloads: list[WorkloadSpec],
    services: list[ServiceSpec],
) -> ClusterSpec:
    seen: set[str] = set()
    for ref in [w.ref for w in workloads] + [f"{s.namespace}/Service/{s.name}" for s in services]:
        if ref in seen:
            raise LabError(f"{ref} is defined twice in the manifests")
        seen.add(ref)
    return ClusterSpec(
        namespaces=tuple(sorted(namespaces.items())),
        workloads=tuple(sorted(workloads, key=lambda w: w.ref)),
        services=tuple(sorted(services, key=lambda s: (s.namespace, s.name))),
    )


def _flatten(source: str, documents: list[Any]) -> Iterable[JsonObject]:
    for document in documents:
        if not isinstance(document, dict):
            raise LabError(f"{source}: a document that is not a mapping")
        if document.get("kind") == "List" or document.get("kind", "").endswith("List"):
            yield from _flatten(source, list(document.get("items") or []))
        else:
            yield document


def _sorted_labels(labels: Any, where: str) -> tuple[tuple[str, str], ...]:
    if labels is None:
        return ()
    if not isinstance(labels, dict):
        raise LabError(f"{where}: labels must be a mapping")
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def _workload(
    document: JsonObject, kind: str, name: str, namespace: str, where: str
) -> WorkloadSpec:
    manifest = copy.deepcopy(document)
    manifest.setdefault("metadata", {})["namespace"] = namespace
    if kind == "Pod":
        labels = _sorted_labels(manifest["metadata"].get("labels"), where)
        pod_spec = manifest.get("spec") or {}
        replicas = 1
    else:
        spec = manifest.get("spec") or {}
        template = pod_template(kind, manifest)
        labels = _sorted_labels((template.get("metadata") or {}).get("labels"), where)
        pod_spec = template.get("spec") or {}
        job_spec = ((spec.get("jobTemplate") or {}).get("spec") or {}) if kind == "CronJob" else {}
        replicas = _replicas(kind, job_spec or spec, where)
        selector = (spec.get("selector") or {}).get("matchLabels")
        if (
            kind not in ("Job", "CronJob")
            and not selector
            and not (spec.get("selector") or {}).get("matchExpressions")
        ):
            raise LabError(f"{where}: spec.selector is required")
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise LabError(f"{where}: no containers in the pod template")
    return WorkloadSpec(
        namespace=namespace,
        kind=kind,
        name=name,
        replicas=replicas,
        template_labels=labels,
        ports=tuple(_container_ports(containers, where)),
        manifest=manifest,
        probe_ports=tuple(sorted(set(_probe_ports(containers, where)))),
    )


def _replicas(kind: str, spec: JsonObject, where: str) -> int:
    if kind == "DaemonSet":
        return 1  # one node in the lab
    key = "parallelism" if kind in ("Job", "CronJob") else "replicas"
    value = spec.get(key, 1)
    if not isinstance(value, int) or value < 0:
        raise LabError(f"{where}: spec.{key} must be a non-negative integer, not {value!r}")
    return value


def _container_ports(containers: list[Any], where: str) -> Iterable[ContainerPort]:
    for container in containers:
        for entry in (container or {}).get("ports") or []:
            port = entry.get("containerPort")
            protocol = entry.get("protocol", "TCP")
            if not isinstance(port, int) or not 0 < port < 65536:
                raise LabError(f"{where}: containerPort {port!r} is not a port number")
            if protocol not in PROTOCOLS:
                raise LabError(f"{where}: containerPort {port} has protocol {protocol!r}")
            yield ContainerPort(port=port, protocol=protocol, name=entry.get("name"))


def _probe_ports(containers: list[Any], where: str) -> Iterable[int]:
    """The ports of network probes; a named port is looked up in the same container."""
    for container in containers:
        named = {
            entry.get("name"): entry.get("containerPort")
            for entry in (container or {}).get("ports") or []
        }
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = (container or {}).get(kind) or {}
            for action in ("httpGet", "tcpSocket", "grpc"):
                if action not in probe:
                    continue
                port = (probe[action] or {}).get("port")
                number = named.get(port) if isinstance(port, str) else port
                if not isinstance(number, int) or not 0 < number < 65536:
                    raise LabError(f"{where}: {kind} port {port!r} is not a port of the container")
                yield number


def _service(document: JsonObject, name: str, namespace: str, where: str) -> ServiceSpec:
    manifest = copy.deepcopy(document)
    manifest.setdefault("metadata", {})["namespace"] = namespace
    spec = manifest.get("spec") or {}
    ports = []
    for entry in spec.get("ports") or []:
        port = entry.get("port")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise LabError(f"{where}: port {port!r} is not a port number")
        target = entry.get("targetPort", port)
        if not isinstance(target, int | str) or (
            isinstance(target, int) and not 0 < target < 65536
        ):
            raise LabError(f"{where}: targetPort {target!r} is neither a port number nor a name")
        protocol = entry.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            raise LabError(f"{where}: port {port} has protocol {protocol!r}")
        ports.append(ServicePort(port, target, protocol, entry.get("name")))
    selector = spec.get("selector")
    return ServiceSpec(
        namespace=namespace,
        name=name,
        type=spec.get("type", "ClusterIP"),
        selector=_sorted_labels(selector, where) if selector else None,
        ports=tuple(ports),
        headless=spec.get("clusterIP") == "None",
        manifest=manifest,
    )
