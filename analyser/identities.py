"""Identities: who an IP address was at a given time (pod → workload, Service, node, outside).

The data classes below are the contract the graph, the policies and verify build on; the resolver
that fills them from a ``snapshot.Snapshot`` (and pod IP history) lives here too. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from analyser.policies import LabelSelector


class EndpointKind(StrEnum):
    POD = "pod"
    SERVICE = "service"  # a ClusterIP; resolved further to its backing pods
    NODE = "node"  # a node's address: kubelet probes, SNAT, hostNetwork pods
    EXTERNAL = "external"  # outside the cluster
    UNRESOLVED = "unresolved"  # inside a cluster range but matching nothing known at that time


@dataclass(frozen=True, order=True, slots=True)
class WorkloadRef:
    """``NS/Kind/name``; Kind is Deployment, StatefulSet, DaemonSet, Job, CronJob or Pod."""

    namespace: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload and the selector its policy uses (its own selector minus volatile labels)."""

    ref: WorkloadRef
    selector: LabelSelector
    pod_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, order=True, slots=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    workload: WorkloadRef


@dataclass(frozen=True, slots=True)
class Identity:
    """What ``ip`` was at one instant."""

    kind: EndpointKind
    ip: str
    pod: PodRef | None = None
    service: tuple[str, str] | None = None  # (namespace, name) for EndpointKind.SERVICE
    node: str | None = None  # node name for EndpointKind.NODE
