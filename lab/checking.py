"""Judge generated policies against the lab's ``truth.json``: is every flow that really happened
allowed, and is anything else allowed beyond cluster DNS and what the snapshot exposes?

Pure: the snapshot (Kubernetes JSON), the truth list and a compiled
:class:`~analyser.evaluation.PolicySet` in, a :class:`TruthCheck` out. The questions are asked of
the project's own NetworkPolicy semantics (``analyser.evaluation``).

"Anything else" is every ordered pair of the snapshot's workloads (one representative pod each,
with its labels, namespace labels and containerPorts) plus, both ways, every outside address the
truth names and one address nobody uses, on every port of every protocol; pairs where neither end
is in a namespace labelled for capture are left out (nothing there gets policies), and so are
node addresses (traffic between a pod and its node is always allowed). Outside addresses may
reach what the snapshot exposes (LoadBalancer and NodePort Services, externalIPs, hostPorts) on
its exposed ports: the world is its user by design.

The pods are read here from the snapshot's JSON, not through ``analyser.replaying``'s
``cluster_facts``/``observed_from_records``: the judge sees a pod as the cluster does (all its
labels, its own containerPorts, its node), where the analyser sees a workload through its own
resolver (non-volatile labels, ports of all its pods). A mistake in that view would otherwise be
in both the policies and their judge, and pass. It shares one reading with the analyser, which
ownerReference names an object's controller (``analyser.objects.controller_of``), not the walk
from a pod to its workload.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from analyser.evaluation import (
    Address,
    ContainerPort,
    Peer,
    Pod,
    PolicySet,
    PortRange,
    PortSet,
    pod,
)
from analyser.flows import Protocol
from analyser.objects import controller_of, owner_references
from kernel.names import CAPTURE_ENABLED, CAPTURE_LABEL
from lab.layouts import DNS_WORKLOAD

# An outside address no plan uses (TEST-NET-2): what "the rest of the internet" may reach.
UNUSED_OUTSIDE = ("198.51.100.254", "2001:db8:ffff::1")
DNS_PORTS = PortSet.of([PortRange(Protocol.UDP, 53, 53), PortRange(Protocol.TCP, 53, 53)])


@dataclass(frozen=True, slots=True)
class TruthCheck:
    flows: int  # truth flows checked
    denied: tuple[str, ...]  # truth flows the policies deny
    extra: tuple[str, ...]  # "client → server: ports" allowed beyond truth and DNS

    @property
    def passed(self) -> bool:
        return not self.denied and not self.extra


def _owner(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    owner = controller_of(owner_references(obj))
    return None if owner is None else (owner.kind, owner.name)


def captured_namespaces(snapshot: Mapping[str, Any]) -> set[str]:
    return {
        o["metadata"]["name"]
        for o in snapshot.get("items") or []
        if o.get("kind") == "Namespace"
        and (o["metadata"].get("labels") or {}).get(CAPTURE_LABEL) == CAPTURE_ENABLED
    }


def node_addresses(snapshot: Mapping[str, Any]) -> dict[str, str]:
    """Address → node name, for every address of every Node."""
    return {
        entry["address"]: o["metadata"]["name"]
        for o in snapshot.get("items") or []
        if o.get("kind") == "Node"
        for entry in (o.get("status") or {}).get("addresses") or []
        if entry.get("type") in ("InternalIP", "ExternalIP")
    }


def _pods_by_workload(snapshot: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """``NS/Kind/name`` → its Pod objects (by name), owners walked up to the workload."""
    items = snapshot.get("items") or []
    owners = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): _owner(o)
        for o in items
        if o.get("kind") in ("ReplicaSet", "Job")
    }
    result: dict[str, list[Mapping[str, Any]]] = {}
    for item in sorted(
        (o for o in items if o.get("kind") == "Pod"), key=lambda o: o["metadata"]["name"]
    ):
        metadata = item["metadata"]
        namespace = metadata["namespace"]
        kind, name = _owner(item) or ("Pod", metadata["name"])
        parent = owners.get((kind, namespace, name))
        if parent is not None and parent[0] in ("Deployment", "CronJob"):
            kind, name = parent
        result.setdefault(f"{namespace}/{kind}/{name}", []).append(item)
    return result


def workload_pods(snapshot: Mapping[str, Any]) -> dict[str, Pod]:
    """``NS/Kind/name`` → the policy-relevant facts of one of its pods."""
    namespace_labels = {
        o["metadata"]["name"]: (o["metadata"].get("labels") or {})
        for o in snapshot.get("items") or []
        if o.get("kind") == "Namespace"
    }
    result: dict[str, Pod] = {}
    for ref, items in _pods_by_workload(snapshot).items():
        item = items[0]
        metadata = item["metadata"]
        namespace = metadata["namespace"]
        ports = [
            ContainerPort(
                entry.get("name", ""),
                Protocol(entry.get("protocol", "TCP")),
                entry["containerPort"],
            )
            for container in (item.get("spec") or {}).get("containers") or []
            for entry in container.get("ports") or []
        ]
        result[ref] = pod(
            namespace=namespace,
            labels=metadata.get("labels") or {},
            namespace_labels=namespace_labels.get(namespace, {}),
            ports=ports,
            name=ref,
            node=(item.get("spec") or {}).get("nodeName"),
        )
    return result


def exposed_ports(snapshot: Mapping[str, Any]) -> dict[str, PortSet]:
    """``NS/Kind/name`` → the ports on which the world may reach its pods by design: the target
    ports of LoadBalancer and NodePort Services (and Services with externalIPs) selecting them,
    and containerPorts published with hostPort. Read from the snapshot's JSON, like the rest of
    the judge."""
    services = [
        o
        for o in snapshot.get("items") or []
        if o.get("kind") == "Service"
        and (
            (o.get("spec") or {}).get("type") in ("LoadBalancer", "NodePort")
            or (o.get("spec") or {}).get("externalIPs")
        )
    ]
    result: dict[str, PortSet] = {}
    for ref, items in _pods_by_workload(snapshot).items():
        ranges = []
        for item in items:
            metadata = item["metadata"]
            labels = metadata.get("labels") or {}
            declared = [
                entry
                for container in (item.get("spec") or {}).get("containers") or []
                for entry in container.get("ports") or []
            ]
            ranges += [
                PortRange(
                    Protocol(e.get("protocol", "TCP")), e["containerPort"], e["containerPort"]
                )
                for e in declared
                if e.get("hostPort")
            ]
            for service in services:
                spec = service.get("spec") or {}
                selector = spec.get("selector") or {}
                if (
                    service["metadata"].get("namespace") != metadata["namespace"]
                    or not selector
                    or any(labels.get(k) != v for k, v in selector.items())
                ):
                    continue
                for port in spec.get("ports") or []:
                    protocol = Protocol(port.get("protocol", "TCP"))
                    target = port.get("targetPort", port["port"])
                    if isinstance(target, str) and not target.isdigit():
                        target = next(
                            (
                                e["containerPort"]
                                for e in declared
                                if e.get("name") == target
                                and Protocol(e.get("protocol", "TCP")) is protocol
                            ),
                            None,
                        )
                    if target is not None:
                        ranges.append(PortRange(protocol, int(target), int(target)))
        if ranges:
            result[ref] = PortSet.of(ranges)
    return result


def _peer(
    name: str,
    pods: Mapping[str, Pod],
    nodes: Mapping[str, str],
    dns_names: Mapping[str, Collection[str]],
) -> Peer:
    if name.startswith("ip:"):
        address = name[3:]
        names = frozenset(dns_names.get(address, ()))
        return Address(address, node=nodes.get(address), name=name, dns_names=names)
    if name not in pods:
        raise KeyError(f"{name} is not a workload of the snapshot")
    return pods[name]


def check_truth(
    snapshot: Mapping[str, Any],
    truth: Iterable[Mapping[str, Any]],
    policies: PolicySet,
    *,
    dns_names: Mapping[str, Collection[str]] | None = None,
) -> TruthCheck:
    """Judge ``policies`` (NetworkPolicies, CiliumNetworkPolicies or both) against the truth.
    ``dns_names``: outside address → the names the bundle's DNS answers gave it, what a
    CiliumNetworkPolicy's ``toFQDNs`` matches (Cilium's DNS proxy learns them the same way)."""
    names = dns_names or {}
    pods = workload_pods(snapshot)
    nodes = node_addresses(snapshot)

    def peer(name: str) -> Peer:
        return _peer(name, pods, nodes, names)

    expected: dict[tuple[str, str], list[PortRange]] = {}
    denied = []
    flows = list(truth)
    for flow in flows:
        protocol = Protocol(flow["protocol"])
        port = int(flow["port"])
        client, server = str(flow["client"]), str(flow["server"])
        expected.setdefault((client, server), []).append(PortRange(protocol, port, port))
        allowed = policies.allowed_ports(
            _peer(client, pods, nodes, names), _peer(server, pods, nodes, names)
        )
        if not allowed.contains(protocol, port):
            denied.append(f"{client} → {server} {port}/{protocol}")
    outside = sorted(
        {
            n
            for f in flows
            for n in (f["client"], f["server"])
            if n.startswith("ip:") and n[3:] not in nodes
        }
    )
    outside += [f"ip:{address}" for address in UNUSED_OUTSIDE]
    exposed = exposed_ports(snapshot)
    captured = captured_namespaces(snapshot)
    scoped = [w for w in pods if pods[w].namespace in captured]
    pairs = [(a, b) for a in pods for b in pods if a in scoped or b in scoped]
    pairs += [(w, o) for w in scoped for o in outside] + [(o, w) for w in scoped for o in outside]
    extra = []
    for client, server in pairs:
        allowed = policies.allowed_ports(
            _peer(client, pods, nodes, names), _peer(server, pods, nodes, names)
        )
        beyond = allowed.difference(PortSet.of(expected.get((client, server), [])))
        if server == DNS_WORKLOAD:
            beyond = beyond.difference(DNS_PORTS)
        if client.startswith("ip:") and server in exposed:
            beyond = beyond.difference(exposed[server])
        if beyond:
            extra.append(f"{client} → {server}: {beyond}")
    return TruthCheck(len(flows), tuple(denied), tuple(extra))
