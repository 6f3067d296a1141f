"""Identities: who an IP address was at a given time (pod → workload, Service, node, outside).

The data classes below are the contract the graph, the policies and verify build on; the resolver
that fills them from a ``snapshot.Snapshot`` (and pod IP history) lives here too. Pure: no I/O.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum

from analyser.addresses import address_key, is_ip, normalize_ip, parse_address
from analyser.flows import Endpoint, Flow, Protocol
from analyser.objects import (
    Controller,
    KubeObject,
    OwnerReference,
    Pod,
    PodPort,
    PublishedPort,
    Service,
    ServicePort,
)
from analyser.peers import (
    DNS_PORTS,
    ClusterDns,
    Exposure,
    IpPeer,
    PodPeer,
    PortSpec,
    node_local_dns_peer,
    special_address,
)
from analyser.selectors import VOLATILE_LABELS, LabelRequirement, LabelSelector
from analyser.snapshot import CaptureMeta, PodIpEvent, Snapshot

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    """A workload and the selector its policy uses (its own selector minus volatile labels, or
    narrower: see :func:`exclusive_selector`)."""

    ref: WorkloadRef
    selector: LabelSelector
    pod_labels: tuple[tuple[str, str], ...] = ()
    host_network: bool = False  # its pods use the node's addresses (peers see the node IP)
    # Its own selector, when that selected more than its pods and ``selector`` is narrower.
    narrowed_from: LabelSelector | None = None
    # Other workloads (``NS/Kind/name``) whose pods ``selector`` selects too: no selector selects
    # only its pods, so it gets no policy (and as a peer, admits those pods too).
    also_selects: tuple[str, ...] = ()


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


@dataclass(frozen=True, slots=True)
class ServiceBackend:
    """A pod (or address) behind a Service port at one instant, and the port it receives on."""

    identity: Identity
    port: int  # the target port after DNAT, named ports resolved


@dataclass(frozen=True, slots=True)
class Scope:
    """The workloads whose pods were captured (they get policies), and the captured pods that
    could not be placed in a workload."""

    workloads: frozenset[WorkloadRef]
    unknown_pods: tuple[tuple[str, str], ...] = ()  # (namespace, pod)


@dataclass(frozen=True, order=True, slots=True)
class Vantage:
    """Where a capture was taken, so what it speaks for: a pod (``namespace``, ``pod``) or a node
    (``node``). See :meth:`Resolver.holds`."""

    namespace: str = ""
    pod: str = ""
    node: str = ""

    def __str__(self) -> str:
        return f"pod {self.namespace}/{self.pod}" if self.pod else f"node {self.node}"


@dataclass(frozen=True, slots=True)
class PodRecord:
    """What is known about one pod from the snapshot, the IP history and meta.json, merged."""

    namespace: str
    name: str
    uid: str
    labels: tuple[tuple[str, str], ...]
    owner: OwnerReference | None
    node: str
    host_network: bool
    # containerPorts; for hostNetwork pods they are node ports.
    ports: tuple[PodPort, ...]
    # containerPorts published on the node with hostPort.
    published: tuple[PublishedPort, ...] = ()

    @property
    def key(self) -> str:
        return self.uid or f"{self.namespace}/{self.name}"

    def port_named(self, name: str, protocol: Protocol) -> int | None:
        return next(
            (p.port for p in self.ports if p.name == name and p.protocol is protocol), None
        )

    def listens(self, port: int, protocol: Protocol) -> bool:
        return any(p.port == port and p.protocol is protocol for p in self.ports)


class _Source(IntEnum):
    """Where an IP claim comes from; lower wins when two claims cover the same instant."""

    HISTORY = 0
    META = 1
    SNAPSHOT = 2


@dataclass(frozen=True, order=True, slots=True)
class _Claim:
    """Pod ``key`` held ``ip`` from ``start`` until ``end`` (exclusive), per ``source``."""

    start: float
    end: float
    source: _Source
    key: str
    ip: str


# Port on which every kubelet listens on its node's addresses (probes and logs go the other way,
# but an API server → kubelet flow must not make the node look like the internet).
KUBELET_PORT = 10250
# Service types whose backends are reached from outside the cluster.
_EXPOSING_TYPES = ("LoadBalancer", "NodePort")
DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"
DNS_POD_LABEL = ("k8s-app", "kube-dns")


@dataclass(frozen=True, slots=True)
class DnsConvention:
    """Where a distribution runs its cluster DNS: a Service and, optionally, the label of its pods
    (found even when the Service or its endpoints are missing from the snapshot)."""

    namespace: str
    service: str
    pod_label: tuple[str, str] | None = None


# kubeadm, EKS, GKE, AKS and k3s: kube-system/kube-dns; RKE2 names its CoreDNS Service after the
# Helm chart; OpenShift's DNS operator runs a DaemonSet behind openshift-dns/dns-default.
DNS_CONVENTIONS = (
    DnsConvention(DNS_NAMESPACE, DNS_SERVICE, DNS_POD_LABEL),
    DnsConvention(DNS_NAMESPACE, "rke2-coredns-rke2-coredns"),
    DnsConvention(
        "openshift-dns", "dns-default", ("dns.operator.openshift.io/daemonset-dns", "default")
    ),
)
# The smallest prefix accepted for a network inferred to cover the pods' or Services' addresses;
# anything wider would swallow the internet, so each address then gets a /16 (/64) of its own.
_MIN_INFERRED_PREFIX = {4: 8, 6: 32}
_FALLBACK_PREFIX = {4: 16, 6: 64}
# A pod cannot have sent a packet long before it existed: an address seen this many seconds (clock
# skew between nodes and the API server, a watcher noticing an IP late) or more before the first
# claim on it belonged to someone the snapshot no longer knows.
CLAIM_SKEW = 300.0


def _without_volatile(labels: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels if k not in VOLATILE_LABELS))


def _pod_lifetime(pod: Pod) -> tuple[float, float]:
    """When the pod could hold its IPs: creation (or start) until deletion, or until its
    containers finished for a completed pod (its IP is free for reuse from then on)."""
    created = pod.meta.created or pod.started
    start = created if created else -math.inf
    end = math.inf
    if pod.meta.deleted:
        end = pod.meta.deleted
    if pod.phase in ("Succeeded", "Failed"):
        finished = [time for time in pod.finished if time]
        if finished:
            end = min(end, max(finished))
    return start, end


class _Networks:
    """A set of networks that answers "is this address in one of them?" with one set lookup per
    prefix length in use (a thousand nodes' podCIDRs have one or two), not one test per network."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = frozenset(networks)
        self._lengths = {
            version: sorted({n.prefixlen for n in self.networks if n.version == version})
            for version in (4, 6)
        }

    def __contains__(self, ip: str) -> bool:
        address = parse_address(ip)
        return any(
            ipaddress.ip_network((address, length), strict=False) in self.networks
            for length in self._lengths[address.version]
        )


def _pod_network_gateways(snapshot: Snapshot) -> dict[str, str]:
    """Address → node, for the addresses a node has on the pod network: the first address of its
    podCIDRs (the bridge or gateway of flannel, k3s, the bridge plugin) and the addresses its
    annotations name (``objects.GATEWAY_ANNOTATIONS``). Kubelet probes and other host traffic to
    pods come from them. Consulted after pods: a pod that holds such an address is that pod."""
    gateways: dict[str, str] = {}
    for node in snapshot.nodes:
        for cidr in node.pod_cidrs:
            with contextlib.suppress(ValueError):
                network = ipaddress.ip_network(cidr, strict=False)
                if network.num_addresses > 2:
                    gateways.setdefault(str(network.network_address + 1), node.name)
        for address in node.gateway_addresses:
            gateways.setdefault(address, node.name)
    return gateways


def _ordinary(node_of_address: Mapping[str, str]) -> dict[str, str]:
    """Address → node, without the special addresses (``policies.special_address``)."""
    return {ip: node for ip, node in node_of_address.items() if special_address(ip) is None}


def _covering_networks(ips: Iterable[str]) -> set[IPNetwork]:
    """The smallest network holding all of ``ips``, per address family (or, when that would be
    implausibly wide, a /16 or /64 per address)."""
    by_family: dict[int, list[int]] = defaultdict(list)
    for text in ips:
        address = ipaddress.ip_address(text)
        by_family[address.version].append(int(address))
    networks: set[IPNetwork] = set()
    for version, values in by_family.items():
        bits = 32 if version == 4 else 128
        spread = max(v ^ values[0] for v in values).bit_length()
        prefix = bits - spread
        if prefix >= _MIN_INFERRED_PREFIX[version]:
            networks.add(ipaddress.ip_network((values[0] >> spread << spread, prefix)))
        else:
            prefix = _FALLBACK_PREFIX[version]
            networks |= {ipaddress.ip_network((v, prefix), strict=False) for v in values}
    return networks


# Controllers with a pod template: the pods they would make count as theirs even before they exist.
_TEMPLATE_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob")


class _NamespaceLabels:
    """The label sets of a namespace's pods and pod templates, each with its workload, indexed
    by label: "which other workloads does this selector select?" then reads only the entries
    that carry one of the values it pins."""

    def __init__(self, entries: Iterable[tuple[WorkloadRef, Mapping[str, str], bool]]) -> None:
        self._entries = list(entries)  # (workload, labels, is a pod rather than a template)
        self._by_label: dict[tuple[str, str], list[int]] = defaultdict(list)
        self._pods: dict[WorkloadRef, list[Mapping[str, str]]] = defaultdict(list)
        for index, (owner, labels, pod) in enumerate(self._entries):
            for pair in labels.items():
                self._by_label[pair].append(index)
            if pod:
                self._pods[owner].append(labels)

    def pods_of(self, ref: WorkloadRef) -> list[Mapping[str, str]]:
        """The labels of the workload's pods."""
        return self._pods.get(ref, [])

    def selected_elsewhere(
        self, selector: LabelSelector, ref: WorkloadRef
    ) -> list[tuple[str, Mapping[str, str]]]:
        """The pods and pod templates of workloads other than ``ref`` that ``selector`` selects:
        (``NS/Kind/name``, labels) each."""
        # Only entries with one of its pinned values can match: its rarest matchLabels pair or
        # In requirement, else (keys and exclusions only) every entry.
        pinned: list[Sequence[int]] = [self._by_label.get(p, []) for p in selector.match_labels]
        pinned += [
            [i for value in r.values for i in self._by_label.get((r.key, value), [])]
            for r in selector.match_expressions
            if r.operator == "In"
        ]
        indexes = min(pinned, key=len) if pinned else range(len(self._entries))
        return [
            (str(owner), labels)
            for owner, labels, _ in (self._entries[index] for index in indexes)
            if owner != ref and selector.matches(labels)
        ]


class Resolver:
    """Answers "who was this address at that time?" from a snapshot, the pod IP history
    (``pod-ips.jsonl``) and the captures' ``meta.json``.

    For pods, the IP history wins over meta.json, which wins over the snapshot's own times
    (creation/deletion). When no claim covers the instant, the latest claim that started
    before it is used (a pod's last packets after its deletion), else the earliest one.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        ip_history: Sequence[PodIpEvent] = (),
        captures: Sequence[CaptureMeta] = (),
    ) -> None:
        self._snapshot = snapshot
        self._records: dict[str, PodRecord] = {}
        self._by_name: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._claims: dict[str, list[_Claim]] = defaultdict(list)
        self._workloads: dict[WorkloadRef, Workload] = {}
        self._workload_of_key: dict[str, WorkloadRef] = {}
        # A special address (a metadata endpoint, link-local, ...: policies.special_address) is
        # never taken for a node's, whatever the snapshot says: every policy naming the nodes
        # would allow it.
        self._node_of_address = _ordinary(snapshot.node_by_address)
        self._addresses_of_node: dict[str, list[str]] = defaultdict(list)
        for ip, node in sorted(self._node_of_address.items(), key=lambda a: address_key(a[0])):
            self._addresses_of_node[node].append(ip)
        self._add_snapshot_pods()
        self._add_captures(captures)
        self._add_history(ip_history)
        self._claims_of: dict[str, list[_Claim]] = defaultdict(list)
        for claims in self._claims.values():
            claims.sort()
            for claim in claims:
                self._claims_of[claim.key].append(claim)
        # Before every pod the inputs know existed, the capture's clock and the snapshot's do not
        # tell who was who: then a claim starting later is still the best guess.
        self._known_since = min(
            (claims[0].start for claims in self._claims.values()), default=-math.inf
        )
        self._host_network: dict[str, list[PodRecord]] = defaultdict(list)
        for record in sorted(self._records.values(), key=lambda r: r.key):
            if record.host_network and record.node:
                self._host_network[record.node].append(record)
        self._ranges = self._cluster_ranges()
        self._gateways = _ordinary(_pod_network_gateways(snapshot))
        self._range_set = _Networks(self._ranges)
        self._node_ports = {
            (port.node_port, port.protocol)
            for service in snapshot.services
            for port in service.ports
            if port.node_port is not None and port.protocol is not None
        }
        # Caches: what Services send each pod, and the pods each Service selects.
        self._target_ports: dict[str, frozenset[tuple[int, Protocol]]] = {}
        self._selected: dict[tuple[str, str], list[PodRecord]] = {}
        self._by_label: dict[tuple[str, str, str], list[PodRecord]] = defaultdict(list)
        self._timeless: dict[tuple[str, int | None, Protocol | None], Identity] = {}
        self._walked: dict[str, tuple[WorkloadRef, Controller | None]] = {}
        self._namespace_labels: dict[str, _NamespaceLabels] | None = None

    # -- building -------------------------------------------------------------------------

    def _register(self, record: PodRecord) -> None:
        if record.key not in self._records:
            self._by_name[(record.namespace, record.name)].append(record.key)
        self._records[record.key] = record

    def _find_record(self, namespace: str, name: str, uid: str) -> PodRecord | None:
        if uid and uid in self._records:
            return self._records[uid]
        keys = self._by_name.get((namespace, name), [])
        # Without a uid, a name reused by a later pod is ambiguous: the last one registered wins.
        return self._records[keys[-1]] if keys and not uid else None

    def _claim(
        self, record: PodRecord, ips: Iterable[str], span: tuple[float, float], source: _Source
    ) -> None:
        if record.host_network:
            return
        for ip in ips:
            if ip in self._node_of_address:
                continue  # a node's address: a hostNetwork pod the snapshot did not mark
            self._claims[ip].append(_Claim(span[0], span[1], source, record.key, ip))

    def _add_snapshot_pods(self) -> None:
        for pod in self._snapshot.pods:
            record = PodRecord(
                namespace=pod.namespace,
                name=pod.name,
                uid=pod.uid,
                labels=tuple(sorted(pod.labels.items())),
                owner=pod.owner,
                node=pod.node_name,
                host_network=pod.host_network,
                ports=pod.spec.ports,
                published=pod.spec.published,
            )
            self._register(record)
            self._claim(record, pod.ips, _pod_lifetime(pod), _Source.SNAPSHOT)

    def _merged(
        self,
        namespace: str,
        name: str,
        uid: str,
        *,
        labels: tuple[tuple[str, str], ...],
        owner: OwnerReference | None,
        node: str = "",
    ) -> PodRecord:
        """The known record for this pod with what a history line or meta.json adds to it,
        or a new record."""
        known = self._find_record(namespace, name, uid)
        if known is None:
            record = PodRecord(namespace, name, uid, labels, owner, node, False, ())
        else:
            # The uid stays as it was: it is the record's key, which claims refer to.
            record = replace(
                known,
                labels=known.labels or labels,
                owner=known.owner or owner,
                node=known.node or node,
            )
        self._register(record)
        return record

    def _add_captures(self, captures: Sequence[CaptureMeta]) -> None:
        for capture in captures:
            record = self._merged(
                capture.namespace,
                capture.pod,
                capture.uid,
                labels=capture.labels,
                owner=capture.owner,
                node=capture.node,
            )
            start = -math.inf if capture.start_time is None else capture.start_time
            self._claim(record, capture.ips, (start, math.inf), _Source.META)

    def _add_history(self, events: Sequence[PodIpEvent]) -> None:
        by_pod: dict[str, list[PodIpEvent]] = defaultdict(list)
        for event in sorted(events, key=lambda e: e.time):
            record = self._merged(
                event.namespace, event.pod, event.uid, labels=event.labels, owner=event.owner
            )
            by_pod[record.key].append(event)
        for key, pod_events in by_pod.items():
            record = self._records[key]
            for event, following in zip(pod_events, [*pod_events[1:], None], strict=True):
                if event.deleted:
                    continue
                end = following.time if following is not None else math.inf
                self._claim(record, event.ips, (event.time, end), _Source.HISTORY)

    def _cluster_ranges(self) -> tuple[IPNetwork, ...]:
        """The networks treated as inside the cluster (node podCIDRs, else inferred from pod
        addresses; Service addresses): an unknown address in them is UNRESOLVED, not EXTERNAL."""
        ranges: set[IPNetwork] = set()
        for cidr in self._snapshot.pod_cidrs:
            with contextlib.suppress(ValueError):
                ranges.add(ipaddress.ip_network(cidr, strict=False))
        # Pod addresses outside every node's podCIDR (or all of them, without podCIDRs).
        node_ranges = _Networks(ranges)
        outside = [ip for ip in self._claims if ip not in node_ranges]
        ranges |= _covering_networks(outside)
        ranges |= _covering_networks(self._snapshot.services_by_cluster_ip)
        return tuple(sorted(ranges, key=lambda n: (n.version, str(n))))

    # -- pods and workloads -----------------------------------------------------------------

    def _record_at(self, ip: str, at: float) -> PodRecord | None:
        claims = self._claims.get(ip)
        if not claims:
            return None
        covering = [c for c in claims if c.start <= at < c.end]
        if covering:
            best = min(covering, key=lambda c: (c.source, -c.start))
        else:
            earlier = [c for c in claims if c.start <= at]
            if earlier:
                best = max(earlier, key=lambda c: (c.start, -c.source))
            elif self._may_precede(claims[0], at):
                best = claims[0]
            else:
                return None  # before any pod the snapshot knows had it: a pod deleted since
        return self._records[best.key]

    def _may_precede(self, claim: _Claim, at: float) -> bool:
        """Whether a packet at ``at`` may still be the claim's pod although the claim starts
        later: clock skew, or a capture older than everything the inputs know."""
        return claim.start - at <= CLAIM_SKEW or at < self._known_since

    def _ip_of(self, record: PodRecord, at: float, version: int | None = None) -> str:
        """The pod's address at ``at``, of IP ``version`` when it has one (dual-stack pods)."""
        claims = self._claims_of.get(record.key, [])
        if version is not None:
            claims = [c for c in claims if parse_address(c.ip).version == version] or claims
        covering = [c for c in claims if c.start <= at < c.end]
        earlier = covering or [c for c in claims if c.start <= at]
        if earlier:
            return max(earlier, key=lambda c: c.start).ip
        return claims[0].ip if claims else ""

    def _node_address(self, node: str, version: int | None) -> str:
        """An address of ``node``, of IP ``version`` when it has one ("" for an unknown node)."""
        addresses = self._addresses_of_node.get(node, [])
        same = [ip for ip in addresses if parse_address(ip).version == version]
        return (same or addresses or [""])[0]

    def _lifetime(self, record: PodRecord) -> tuple[float, float] | None:
        claims = self._claims_of.get(record.key)
        if not claims:
            return None
        return min(c.start for c in claims), max(c.end for c in claims)

    def _object(self, kind: str, namespace: str, hint: OwnerReference) -> KubeObject | None:
        found = self._snapshot.by_uid(hint.uid)
        if found is not None and found.kind == kind:
            return found
        return self._snapshot.get(kind, namespace, hint.name)

    def _walk_owners(self, record: PodRecord) -> tuple[str, str, KubeObject | None]:
        """The workload's kind and name, and the object whose selector describes its pods."""
        owner = record.owner
        if owner is None or owner.kind == "Node":  # bare or static (mirror) pod
            return "Pod", record.name, None
        namespace = record.namespace
        obj = self._object(owner.kind, namespace, owner)
        if owner.kind == "ReplicaSet":
            labels = dict(record.labels)
            parent = obj.owner if obj else None
            if parent is not None:
                # A Deployment, or another controller that rolls out through ReplicaSets (an
                # Argo Rollout): the ReplicaSet is one revision of it, not the workload.
                return (
                    parent.kind,
                    parent.name,
                    self._object(parent.kind, namespace, parent) or obj,
                )
            template_hash = labels.get("pod-template-hash", "")
            if obj is None and template_hash and owner.name.endswith(f"-{template_hash}"):
                name = owner.name.removesuffix(f"-{template_hash}")
                return "Deployment", name, self._snapshot.get("Deployment", namespace, name)
        if owner.kind == "Job":
            parent = obj.owner if obj else None
            if parent is not None and parent.kind == "CronJob":
                return "CronJob", parent.name, self._object("CronJob", namespace, parent) or obj
            # A CronJob names its Jobs "<cronjob>-<scheduled time in minutes>".
            prefix, _, suffix = owner.name.rpartition("-")
            if obj is None and suffix.isdigit():
                cron = self._snapshot.get("CronJob", namespace, prefix)
                if cron is not None:
                    return "CronJob", prefix, cron
        return owner.kind, owner.name, obj

    def _owners(self, record: PodRecord) -> tuple[WorkloadRef, Controller | None]:
        """The pod's workload and the object whose selector describes its pods, without
        describing the workload (:meth:`_workload_for` does)."""
        found = self._walked.get(record.key)
        if found is None:
            kind, name, obj = self._walk_owners(record)
            controller = obj if isinstance(obj, Controller) else None
            found = (WorkloadRef(record.namespace, kind, name), controller)
            self._walked[record.key] = found
        return found

    def _labels_of(self, namespace: str) -> _NamespaceLabels:
        """The labels of every pod and pod template of ``namespace``, with their workloads."""
        if self._namespace_labels is None:
            entries: dict[str, list[tuple[WorkloadRef, Mapping[str, str], bool]]] = defaultdict(
                list
            )
            for record in sorted(self._records.values(), key=lambda r: r.key):
                entries[record.namespace].append(
                    (self._owners(record)[0], dict(record.labels), True)
                )
            for kind in _TEMPLATE_KINDS:
                for obj in self._snapshot.controllers(kind):
                    labels = obj.template_labels
                    # Whose pods these would be: as if a pod of this object.
                    owner = OwnerReference(kind, obj.name, obj.uid)
                    labelled = tuple(labels.items())
                    pod = PodRecord(obj.namespace, "", "", labelled, owner, "", False, ())
                    ref = WorkloadRef(obj.namespace, *self._walk_owners(pod)[:2])
                    entries[obj.namespace].append((ref, dict(labels), False))
            self._namespace_labels = {ns: _NamespaceLabels(found) for ns, found in entries.items()}
        return self._namespace_labels.get(namespace) or _NamespaceLabels(())

    def _workload_for(self, record: PodRecord) -> WorkloadRef:
        if record.key in self._workload_of_key:
            return self._workload_of_key[record.key]
        ref, obj = self._owners(record)
        if ref not in self._workloads:
            labels = self._labels_of(record.namespace)
            self._workloads[ref] = _describe_workload(
                ref,
                obj,
                record,
                own_pods=labels.pods_of(ref),
                selected_elsewhere=lambda selector: labels.selected_elsewhere(selector, ref),
            )
        self._workload_of_key[record.key] = ref
        return ref

    def _pod_ref(self, record: PodRecord) -> PodRef:
        return PodRef(record.namespace, record.name, record.uid, self._workload_for(record))

    def workload(self, ref: WorkloadRef) -> Workload:
        """The workload ``ref`` names (KeyError when no known pod belongs to it)."""
        if ref not in self._workloads:
            for record in self._records.values():
                self._workload_for(record)
        return self._workloads[ref]

    def workload_of_pod(self, namespace: str, pod: str) -> WorkloadRef | None:
        keys = self._by_name.get((namespace, pod))
        return self._workload_for(self._records[keys[-1]]) if keys else None

    def node_of(self, identity: Identity) -> str | None:
        """The node an identity is on: a node address's node, a pod's ``spec.nodeName`` (or
        meta.json's ``node``); None when unknown or outside the cluster."""
        if identity.node:
            return identity.node
        if identity.pod is None:
            return None
        pod = identity.pod
        record = self._records.get(pod.uid or f"{pod.namespace}/{pod.name}")
        return record.node if record is not None and record.node else None

    def scope_of(self, pods: Iterable[tuple[str, str]]) -> Scope:
        """The workloads of the captured pods (``(namespace, pod)``, from capture paths or
        meta.json)."""
        workloads: set[WorkloadRef] = set()
        unknown: set[tuple[str, str]] = set()
        for namespace, pod in pods:
            ref = self.workload_of_pod(namespace, pod)
            if ref is None:
                unknown.add((namespace, pod))
            else:
                workloads.add(ref)
        return Scope(frozenset(workloads), tuple(sorted(unknown)))

    # -- addresses --------------------------------------------------------------------------

    def holds(self, vantage: Vantage, ip: str, at: float) -> bool:
        """Whether ``ip`` was ``vantage``'s own address at ``at``, as :meth:`resolve` tells who it
        was (with its tolerance for clock skew): a pod's own address (a hostNetwork pod's: an
        address of its node), or a node's address or one of its pods'. Loopback addresses are
        everyone's own."""
        if parse_address(ip).is_loopback:
            return True
        identity = self.resolve(ip, at)
        if not vantage.pod:
            return self.node_of(identity) == vantage.node
        if identity.pod is not None:
            return (identity.pod.namespace, identity.pod.name) == (vantage.namespace, vantage.pod)
        return identity.kind is EndpointKind.NODE and any(
            self._records[key].host_network and self._records[key].node == identity.node
            for key in self._by_name.get((vantage.namespace, vantage.pod), ())
        )

    def knows_addresses(self, vantage: Vantage) -> bool:
        """Whether any address of ``vantage`` is known at all (a pod's from a claim, a hostNetwork
        pod's or a node's from its node): without one, :meth:`holds` is never true."""
        if not vantage.pod:
            return bool(self._addresses_of_node.get(vantage.node))
        return any(
            self._claims_of.get(key)
            or (
                self._records[key].host_network
                and self._addresses_of_node.get(self._records[key].node)
            )
            for key in self._by_name.get((vantage.namespace, vantage.pod), ())
        )

    def resolve(
        self, ip: str, at: float, *, port: int | None = None, protocol: Protocol | None = None
    ) -> Identity:
        """What ``ip`` was at ``at``. With ``port``/``protocol`` (the side that listens), a node
        address resolves to the hostNetwork pod that declares that port, if any."""
        ip = normalize_ip(ip)
        key = (ip, port, protocol)
        claims = self._claims.get(ip, ())
        # With at most one pod ever at this address, the answer does not depend on the time
        # (from shortly before that pod's claim on it on).
        timeless = not claims or (len(claims) == 1 and self._may_precede(claims[0], at))
        if timeless:
            known = self._timeless.get(key)
            if known is not None:
                return known
        identity = self._resolve(ip, at, port, protocol)
        if timeless:
            self._timeless[key] = identity
        return identity

    def _resolve(self, ip: str, at: float, port: int | None, protocol: Protocol | None) -> Identity:
        service = self._snapshot.services_by_address.get(ip)
        if service is not None:
            return Identity(EndpointKind.SERVICE, ip, service=(service.namespace, service.name))
        record = self._record_at(ip, at)
        if record is not None:
            return Identity(EndpointKind.POD, ip, pod=self._pod_ref(record))
        node = self._node_of_address.get(ip)
        if node is not None:
            if port is not None:
                listener = self._host_listener(node, port, protocol or Protocol.TCP)
                if listener is not None:
                    return Identity(EndpointKind.POD, ip, pod=self._pod_ref(listener), node=node)
            return Identity(EndpointKind.NODE, ip, node=node)
        gateway = self._gateways.get(ip)
        if gateway is not None:
            return Identity(EndpointKind.NODE, ip, node=gateway)
        if ip in self._range_set:
            return Identity(EndpointKind.UNRESOLVED, ip)
        return Identity(EndpointKind.EXTERNAL, ip)

    def _host_listener(self, node: str, port: int, protocol: Protocol) -> PodRecord | None:
        return next(
            (r for r in self._host_network.get(node, []) if r.listens(port, protocol)), None
        )

    def known_listener(self, endpoint: Endpoint, protocol: Protocol, at: float) -> bool:
        """Whether the snapshot says ``endpoint`` listens on ``protocol`` at ``at``
        (a :data:`~analyser.flows.ListenerOracle`)."""
        ip = normalize_ip(endpoint.ip)
        service = self._snapshot.services_by_address.get(ip)
        if service is not None:
            return service.port(endpoint.port, protocol) is not None
        record = self._record_at(ip, at)
        if record is not None:
            return record.listens(endpoint.port, protocol) or self._is_target_port(
                record, endpoint.port, protocol
            )
        node = self._node_of_address.get(ip)
        if node is None:
            return False
        if protocol is Protocol.TCP and endpoint.port == KUBELET_PORT:
            return True
        return (endpoint.port, protocol) in self._node_ports or (
            self._host_listener(node, endpoint.port, protocol) is not None
        )

    def _is_target_port(self, record: PodRecord, port: int, protocol: Protocol) -> bool:
        """Whether a Service selecting the pod sends it traffic on ``port``."""
        if record.key not in self._target_ports:
            self._target_ports[record.key] = frozenset(
                (target, proto)
                for service in self._snapshot.services
                if service.namespace == record.namespace and _selects(service.selector, record)
                for service_port in service.ports
                if (proto := service_port.protocol) is not None
                and (target := _target_port(service_port, record, proto)) is not None
            )
        return (port, protocol) in self._target_ports[record.key]

    # -- Services -----------------------------------------------------------------------------

    def service_backends(
        self,
        service: tuple[str, str],
        port: int,
        protocol: Protocol,
        at: float,
        *,
        family: int | None = None,
    ) -> tuple[ServiceBackend, ...]:
        """The pods behind ``service`` (namespace, name) on its port ``port`` at ``at``, each with
        its target port: from EndpointSlices when the snapshot has them, else legacy Endpoints,
        else the Service's selector over the pods known at that time. ``family`` (4 or 6, the
        ClusterIP's) picks which address of a dual-stack pod to report."""
        found = self._snapshot.service(*service)
        service_port = found.port(port, protocol) if found is not None else None
        if found is None or service_port is None:
            return ()
        backends: set[tuple[str, int, str]] = set()
        slices = self._snapshot.slices_for(*service)
        endpoints = self._snapshot.endpoints_for(*service)
        if slices:
            # Dual-stack Services have one set of slices per family.
            same_family = [s for s in slices if s.address_type == f"IPv{family}"]
            sets = [s.endpoints for s in same_family or slices if s.address_type != "FQDN"]
        elif endpoints is not None:
            sets = list(endpoints.subsets)
        else:
            sets = []
        for endpoint_set in sets:
            target = endpoint_set.port_for(service_port.name, protocol)
            if target is None:
                continue
            for endpoint in endpoint_set.endpoints:
                key = endpoint.target.pod_key if endpoint.target is not None else ""
                backends |= {(ip, target, key) for ip in endpoint.addresses}
        if not slices and endpoints is None:
            for record in self._selected_pods(found, at):
                target = _target_port(service_port, record, protocol)
                if target is None:
                    continue
                if record.host_network:  # it receives on its node's address
                    ip = self._node_address(record.node, family)
                else:
                    ip = self._ip_of(record, at, family)
                backends.add((ip, target, record.key))
        result = [
            ServiceBackend(self._backend_identity(ip, uid, target, protocol, at), target)
            for ip, target, uid in sorted(backends)
            if is_ip(ip)
        ]
        return tuple(result)

    def _backend_identity(
        self, ip: str, key: str, port: int, protocol: Protocol, at: float
    ) -> Identity:
        record = self._records.get(key) if key else None
        if record is not None and not record.host_network:
            return Identity(EndpointKind.POD, normalize_ip(ip), pod=self._pod_ref(record))
        return self.resolve(ip, at, port=port, protocol=protocol)

    def _selected_pods(self, service: Service, at: float) -> list[PodRecord]:
        selector = service.selector
        if not selector:
            return []
        namespace = service.namespace
        key = (namespace, service.name)
        if key not in self._selected:
            if not self._by_label:
                for record in sorted(self._records.values(), key=lambda r: r.key):
                    for label in record.labels:
                        self._by_label[(record.namespace, *label)].append(record)
            # The pods carrying the selector's rarest label, checked for the others.
            fewest = min(
                (self._by_label.get((namespace, k, v), []) for k, v in selector.items()), key=len
            )
            self._selected[key] = [r for r in fewest if _selects(selector, r)]
        matching = self._selected[key]
        alive = []
        for record in matching:
            lifetime = self._lifetime(record)
            if lifetime is None or lifetime[0] <= at < lifetime[1]:
                alive.append(record)
        return alive or matching

    # -- exposure --------------------------------------------------------------------------------

    def exposures(self) -> dict[str, tuple[Exposure, ...]]:
        """Graph node id (``NS/Kind/name``) of each workload the snapshot shows reachable from
        outside the cluster → its exposed target ports and what exposes them: the backends of
        LoadBalancer and NodePort Services and of Services with ``externalIPs`` (each on its
        target port, per IP version of the Service's ClusterIPs), and containerPorts published
        with ``hostPort``. Sorted."""
        found: dict[tuple[str, PortSpec, str], set[int]] = defaultdict(set)
        for service in self._snapshot.services:
            kind = service.type
            how = kind if kind in _EXPOSING_TYPES else "externalIPs"
            if kind not in _EXPOSING_TYPES and not service.external_ips:
                continue
            namespace, name = service.namespace, service.name
            by = f"Service {namespace}/{name} ({how})"
            versions: set[int] = {parse_address(ip).version for ip in service.cluster_ips} or {4}
            for service_port in service.ports:
                protocol = service_port.protocol
                if protocol is None or service_port.port is None:
                    continue
                for version in sorted(versions):
                    for backend in self.service_backends(
                        (namespace, name), service_port.port, protocol, math.inf, family=version
                    ):
                        if backend.identity.pod is not None:
                            workload = str(backend.identity.pod.workload)
                            found[(workload, PortSpec(protocol, backend.port), by)].add(version)
        for record in self._records.values():
            if not record.published or record.host_network:
                continue  # a hostNetwork pod gets no policy: NetworkPolicy does not apply to it
            versions = {parse_address(c.ip).version for c in self._claims_of.get(record.key, [])}
            for published in record.published:
                key = (
                    str(self._workload_for(record)),
                    PortSpec(published.protocol, published.container_port),
                    f"hostPort {published.host_port}",
                )
                found[key] |= versions or {4}
        exposures: dict[str, list[Exposure]] = defaultdict(list)
        for (workload, port, by), versions in sorted(found.items()):
            exposures[workload].append(Exposure(port, by, tuple(sorted(versions))))
        return {workload: tuple(items) for workload, items in sorted(exposures.items())}

    # -- cluster DNS ---------------------------------------------------------------------------

    def cluster_dns(self, flows: Iterable[Flow] = ()) -> ClusterDns:
        """The cluster DNS workloads and the ports they receive DNS on.

        First by the conventions in :data:`DNS_CONVENTIONS`: the pods carrying a convention's
        label in its namespace and the pods behind its Service (all conventions together: a
        cluster follows one). When none of them finds a pod, by the traffic in ``flows``: the
        pods behind :meth:`busiest_dns_service`. Without either, the conventional
        ``k8s-app=kube-dns`` selector in kube-system. Plus the node-local DNS cache addresses
        ``flows`` went to (:func:`node_local_dns`)."""
        records = [
            r
            for r in self._records.values()
            for convention in DNS_CONVENTIONS
            if r.namespace == convention.namespace and convention.pod_label in r.labels
        ]
        ports: set[PortSpec] = set()
        for convention in DNS_CONVENTIONS:
            self._dns_backends((convention.namespace, convention.service), records, ports)
        if not records:
            busiest = self.busiest_dns_service(flows)
            if busiest is not None:
                self._dns_backends(busiest, records, ports)
        node_local = node_local_dns(flows)
        refs = sorted({self._workload_for(r) for r in records})
        if not refs:
            return ClusterDns(node_local=node_local)
        peers = tuple(
            sorted(
                {
                    PodPeer(self._workloads[ref].selector, ref.namespace, str(ref))
                    for ref in refs
                    if not self._workloads[ref].selector.is_empty
                }
            )
        )
        return ClusterDns(
            peers=peers or ClusterDns().peers,
            workloads=frozenset(str(ref) for ref in refs),
            ports=tuple(sorted(ports)) if ports else DNS_PORTS,
            node_local=node_local,
        )

    def _dns_backends(
        self, service: tuple[str, str], records: list[PodRecord], ports: set[PortSpec]
    ) -> None:
        """Add the pods behind ``service``'s port 53 to ``records`` and their ports to ``ports``."""
        for protocol in (Protocol.UDP, Protocol.TCP):
            for backend in self.service_backends(service, 53, protocol, math.inf):
                ports.add(PortSpec(protocol, backend.port))
                if backend.identity.pod is not None:
                    key = backend.identity.pod.uid or (
                        f"{backend.identity.pod.namespace}/{backend.identity.pod.name}"
                    )
                    if key in self._records:
                        records.append(self._records[key])

    def busiest_dns_service(self, flows: Iterable[Flow]) -> tuple[str, str] | None:
        """The Service (namespace, name), in any namespace, whose address received the most
        packets of 53/UDP flows, counted in both directions; ties go to the first by namespace
        and name. None when no 53/UDP flow went to a Service."""
        packets: dict[tuple[str, str], int] = defaultdict(int)
        for flow in flows:
            if flow.protocol is not Protocol.UDP or flow.server.port != 53:
                continue
            identity = self.resolve(flow.server.ip, flow.first_seen)
            if identity.kind is EndpointKind.SERVICE and identity.service is not None:
                packets[identity.service] += flow.packets
        return min(packets, key=lambda s: (-packets[s], s), default=None)


def node_local_dns(flows: Iterable[Flow]) -> tuple[IpPeer, ...]:
    """The NodeLocal DNSCache addresses in ``flows``: link-local addresses (169.254.0.0/16,
    fe80::/10; the cache listens on one on every node, 169.254.20.10 by default) that received
    TCP or UDP on port 53. Sorted by family and address."""
    addresses = {
        parse_address(flow.server.ip)
        for flow in flows
        if flow.server.port == 53
        and flow.protocol in (Protocol.UDP, Protocol.TCP)
        and parse_address(flow.server.ip).is_link_local
    }
    return tuple(
        node_local_dns_peer(str(a)) for a in sorted(addresses, key=lambda a: (a.version, int(a)))
    )


def _selects(selector: Mapping[str, str] | None, record: PodRecord) -> bool:
    """A Service's ``spec.selector`` (equality only) against the pod's labels; none selects
    nothing."""
    if not selector:
        return False
    labels = dict(record.labels)
    return all(labels.get(k) == v for k, v in selector.items())


def _target_port(service_port: ServicePort, record: PodRecord, protocol: Protocol) -> int | None:
    """The pod's port for a Service port: a number, a name looked up in the pod's containerPorts
    (None when the pod has no such port: kube-proxy sends it nothing), or the Service port."""
    target = service_port.target
    if isinstance(target, str):
        return record.port_named(target, protocol)
    return target


@dataclass(frozen=True, slots=True)
class SelectorChoice:
    """The selector a workload's policy (and every rule naming it) uses; see
    :func:`exclusive_selector`."""

    selector: LabelSelector
    narrowed_from: LabelSelector | None = None
    also_selects: tuple[str, ...] = ()


# Pods and pod templates of other workloads a selector selects: (``NS/Kind/name``, labels) each.
SelectedElsewhere = Callable[[LabelSelector], Sequence[tuple[str, Mapping[str, str]]]]


def exclusive_selector(
    own: LabelSelector,
    pod_labels: tuple[tuple[str, str], ...],
    own_pods: Sequence[Mapping[str, str]],
    selected_elsewhere: SelectedElsewhere,
) -> SelectorChoice:
    """The selector that selects the workload's pods and nothing else, the first of:

    1. its ``own`` (the snapshot's, minus volatile labels), when it is valid, names a label value
       (not ``app`` Exists alone: every future pod with the key) and selects no pod or pod
       template of another workload of its namespace (``selected_elsewhere``);
    2. its pod template's labels (``pod_labels``, minus volatile ones), when those select no other
       workload's pod or template;
    3. those labels plus ``KEY DoesNotExist`` for a key that each other workload's pod or template
       they select carries and the workload's pods do not (a stable ``app=web`` beside a canary
       ``app=web,track=canary`` becomes ``app=web,!track``).

    Each must also select the workload's pods (``own_pods``: their labels). A workload whose own
    selector is empty (a Job selecting by controller-uid, a bare pod) starts from its pod
    template's labels. ``narrowed_from`` is set when the result differs from where it started.

    When none selects only its pods, the narrowest of 1 and 2 is returned with the workloads it
    ``also_selects``: the caller gives it no policy, and as a peer it admits those pods too."""
    candidates = []
    if own.pins_a_value and all(r.valid for r in own.match_expressions):
        candidates.append(own)
    template = LabelSelector(match_labels=pod_labels)
    if pod_labels and template != own:
        candidates.append(template)
    # What the workload was selected by before this check: a change from it is said.
    usual = own if not own.is_empty else template

    def choice(selector: LabelSelector, also_selects: tuple[str, ...] = ()) -> SelectorChoice:
        narrowed = selector != usual and not usual.is_empty
        return SelectorChoice(selector, usual if narrowed else None, also_selects)

    def selects_its_pods(selector: LabelSelector) -> bool:
        return all(selector.matches(labels) for labels in own_pods)

    theirs = [c for c in candidates if selects_its_pods(c)]
    for candidate in theirs:
        if not selected_elsewhere(candidate):
            return choice(candidate)
    if pod_labels:
        # Selects nothing of what the template selects elsewhere, by construction.
        excluding = _excluding(template, own_pods, selected_elsewhere(template))
        if excluding is not None and selects_its_pods(excluding):
            return choice(excluding)
    if not theirs:
        return choice(LabelSelector())
    narrowest = theirs[-1]
    return choice(narrowest, tuple(sorted({name for name, _ in selected_elsewhere(narrowest)})))


def _excluding(
    template: LabelSelector,
    own_pods: Sequence[Mapping[str, str]],
    selected: Sequence[tuple[str, Mapping[str, str]]],
) -> LabelSelector | None:
    """``template`` plus ``KEY DoesNotExist`` for a (stable) label key of each of the ``selected``
    pods and templates of other workloads that none of the workload's pods carries; None when
    nothing is selected, or something selected has no such key."""
    if not selected:
        return None
    own_keys = {key for labels in own_pods for key in labels}
    own_keys |= {key for key, _ in template.match_labels}
    keys: set[str] = set()
    for _, labels in sorted(selected, key=lambda entry: (entry[0], sorted(entry[1].items()))):
        if keys & labels.keys():
            continue
        extra = sorted(k for k in labels if k not in own_keys and k not in VOLATILE_LABELS)
        if not extra:
            return None
        keys.add(extra[0])
    absent = tuple(LabelRequirement(key, "DoesNotExist") for key in sorted(keys))
    return LabelSelector(template.match_labels, absent)


def _describe_workload(
    ref: WorkloadRef,
    obj: Controller | None,
    record: PodRecord,
    *,
    own_pods: Sequence[Mapping[str, str]] = (),
    selected_elsewhere: SelectedElsewhere = lambda _: (),
) -> Workload:
    """The workload's selector: its own (minus volatile labels); when that leaves nothing (Jobs
    select by controller-uid), its pod template's labels; without the object, the pod's labels;
    narrowed when it selects more than the workload (:func:`exclusive_selector`)."""
    own = LabelSelector()
    template_labels: tuple[tuple[str, str], ...] = ()
    host_network = record.host_network
    if obj is not None:
        own = obj.selector.without_volatile()
        template_labels = _without_volatile(obj.template_labels.items())
        host_network = host_network or obj.host_network
    pod_labels = template_labels or _without_volatile(record.labels)
    choice = exclusive_selector(own, pod_labels, own_pods, selected_elsewhere)
    return Workload(
        ref=ref,
        selector=choice.selector,
        pod_labels=pod_labels,
        host_network=host_network,
        narrowed_from=choice.narrowed_from,
        also_selects=choice.also_selects,
    )
