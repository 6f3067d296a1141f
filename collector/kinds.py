"""The resource kinds the collector reads and writes, and :class:`Cluster`: the seam between the
collector and a cluster (like httpx's transport). :class:`~collector.kube.KubernetesCluster` is
the real one, :class:`~collector.memory.MemoryCluster` an in-memory one for tests and dry runs.
Data only."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from collector.pulling import Frame

KubeObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Kind:
    """A resource kind the collector reads: where it lives in the API."""

    kind: str
    api_version: str  # "v1" or "group/version"
    plural: str
    namespaced: bool
    # An API a cluster may not serve (a CRD's): listing it answers 404 and the snapshot holds none.
    optional: bool = False

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def resource(self) -> str:
        """As RBAC names it: ``deployments.apps``, ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if namespace is not None and self.namespaced:
            prefix += f"/namespaces/{quote(namespace, safe='')}"
        path = f"{prefix}/{self.plural}"
        return f"{path}/{quote(name, safe='')}" if name is not None else path


NAMESPACES = Kind("Namespace", "v1", "namespaces", namespaced=False)
NODES = Kind("Node", "v1", "nodes", namespaced=False)
PODS = Kind("Pod", "v1", "pods", namespaced=True)
SERVICES = Kind("Service", "v1", "services", namespaced=True)
ENDPOINT_SLICES = Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", namespaced=True)
DEPLOYMENTS = Kind("Deployment", "apps/v1", "deployments", namespaced=True)
REPLICA_SETS = Kind("ReplicaSet", "apps/v1", "replicasets", namespaced=True)
STATEFUL_SETS = Kind("StatefulSet", "apps/v1", "statefulsets", namespaced=True)
DAEMON_SETS = Kind("DaemonSet", "apps/v1", "daemonsets", namespaced=True)
JOBS = Kind("Job", "batch/v1", "jobs", namespaced=True)
CRON_JOBS = Kind("CronJob", "batch/v1", "cronjobs", namespaced=True)
NETWORK_POLICIES = Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", namespaced=True)
INGRESSES = Kind("Ingress", "networking.k8s.io/v1", "ingresses", namespaced=True)
HTTP_ROUTES = Kind(
    "HTTPRoute", "gateway.networking.k8s.io/v1", "httproutes", namespaced=True, optional=True
)
# What lets an HTTPRoute send to another namespace's Service; every Gateway API release serves
# v1beta1.
REFERENCE_GRANTS = Kind(
    "ReferenceGrant",
    "gateway.networking.k8s.io/v1beta1",
    "referencegrants",
    namespaced=True,
    optional=True,
)
# In ARCHITECTURE.md's order; snapshot.json lists items in this order.
SNAPSHOT_KINDS = (
    NAMESPACES,
    NODES,
    PODS,
    SERVICES,
    ENDPOINT_SLICES,
    DEPLOYMENTS,
    REPLICA_SETS,
    STATEFUL_SETS,
    DAEMON_SETS,
    JOBS,
    CRON_JOBS,
    NETWORK_POLICIES,
    INGRESSES,
    HTTP_ROUTES,
    REFERENCE_GRANTS,
)
# What a rollout restart can roll; the rest is listed for the user.
ROLLABLE_KINDS = {kind.kind: kind for kind in (DEPLOYMENTS, STATEFUL_SETS, DAEMON_SETS)}


class Cluster(Protocol):
    """What collect and uninstall-sidecars need from a cluster. Objects are plain JSON dicts."""

    def list(
        self, kind: Kind, *, namespace: str | None = None, label_selector: str | None = None
    ) -> KubeObject:
        """A List (``items``, ``metadata.resourceVersion``), cluster-wide without namespace."""
        ...

    def get(self, kind: Kind, name: str, *, namespace: str | None = None) -> KubeObject: ...

    def watch(
        self, kind: Kind, *, resource_version: str, timeout_seconds: int
    ) -> Iterator[KubeObject]:
        """Watch events ``{"type", "object"}`` cluster-wide; an expired resourceVersion comes as
        an ``ERROR`` event whose object is a Status with ``code`` 410."""
        ...

    def patch(
        self, kind: Kind, name: str, patch: Mapping[str, Any], *, namespace: str | None = None
    ) -> None:
        """A JSON merge patch."""
        ...

    def exec(
        self, *, namespace: str, pod: str, container: str, command: Sequence[str]
    ) -> AbstractContextManager[Iterable[Frame]]: ...
