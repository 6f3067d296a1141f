"""Resolving addresses at the time of the packet, owner walks and Service backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from analyser.claims import PodRecord
from analyser.flows import Endpoint, Evidence, Flow, Protocol
from analyser.identities import EndpointKind, Resolver, Vantage
from analyser.objects import PodPort, ServicePort
from analyser.peers import DNS_PORTS, Exposure, PortSpec
from analyser.selectors import LabelRequirement, LabelSelector
from analyser.services import target_port
from analyser.snapshot import (
    Snapshot,
    load_pod_ip_history,
    load_snapshot,
    parse_capture_meta,
    parse_pod_ip_history,
    parse_snapshot_documents,
)
from analyser.workloads import SelectorChoice, Workload, WorkloadRef, exclusive_selector
from kernel.times import parse_timestamp

DATA = Path(__file__).parent.parent / "data" / "snapshots"


def at(clock: str) -> float:
    return parse_timestamp(f"2026-11-26T{clock}Z")


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return load_snapshot(DATA / "cluster.json")


@pytest.fixture(scope="module")
def resolver(snapshot: Snapshot) -> Resolver:
    return Resolver(snapshot, ip_history=load_pod_ip_history(DATA / "pod-ips.jsonl"))


def workload_at(resolver: Resolver, ip: str, clock: str) -> str:
    identity = resolver.resolve(ip, at(clock))
    assert identity.kind is EndpointKind.POD, identity
    assert identity.pod is not None
    return str(identity.pod.workload)


# -- owner walks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "workload", "selector"),
    [
        (
            "10.244.0.10",
            "bookinfo/Deployment/productpage-v1",
            {"app": "productpage", "version": "v1"},
        ),
        # Its ReplicaSet is missing from the snapshot: derived from the name and pod-template-hash.
        ("10.244.1.11", "bookinfo/Deployment/reviews-v3", {"app": "reviews", "version": "v3"}),
        ("10.244.1.50", "shop/StatefulSet/db", {"app": "db"}),
        ("10.244.1.31", "shop/CronJob/nightly", {"app": "nightly"}),  # Job missing, CronJob found
        ("10.244.0.99", "shop/Pod/debug", {}),
        ("10.244.0.2", "kube-system/Deployment/coredns", {"k8s-app": "kube-dns"}),
    ],
)
def test_owner_walk_to_the_workload(
    resolver: Resolver, ip: str, workload: str, selector: dict[str, str]
) -> None:
    name = workload_at(resolver, ip, "09:45:00")
    assert name == workload
    ref = WorkloadRef(*name.split("/"))
    assert dict(resolver.workload(ref).selector.match_labels) == selector


def test_cron_job_via_its_job_and_volatile_job_labels_dropped(resolver: Resolver) -> None:
    assert workload_at(resolver, "10.244.0.30", "09:05:00") == "shop/CronJob/report"
    report = resolver.workload(WorkloadRef("shop", "CronJob", "report"))
    # The Job's own selector is controller-uid only (volatile): the template labels are used.
    assert report.selector == LabelSelector(match_labels=(("app", "report"),))
    assert report.pod_labels == (("app", "report"),)


def test_stateful_set_pod_labels_lose_volatile_labels(resolver: Resolver) -> None:
    resolver.resolve("10.244.1.50", at("09:00:00"))
    db = resolver.workload(WorkloadRef("shop", "StatefulSet", "db"))
    assert db.pod_labels == (("app", "db"),)


def test_daemon_set_on_host_network_listens_on_the_node_address(resolver: Resolver) -> None:
    node = resolver.resolve("192.168.49.2", at("09:00:00"))
    assert (node.kind, node.node) == (EndpointKind.NODE, "node-a")
    exporter = resolver.resolve("192.168.49.2", at("09:00:00"), port=9100, protocol=Protocol.TCP)
    assert exporter.kind is EndpointKind.POD and exporter.pod is not None
    assert str(exporter.pod.workload) == "kube-system/DaemonSet/node-exporter"
    assert resolver.workload(exporter.pod.workload).host_network
    # A port nobody declared on that node stays the node (kubelet, SNAT), not the internet.
    other = resolver.resolve("192.168.49.2", at("09:00:00"), port=9101, protocol=Protocol.TCP)
    assert other.kind is EndpointKind.NODE


def _objects(*pods: dict[str, object], extra: tuple[dict[str, Any], ...] = ()) -> Snapshot:
    return Snapshot(
        parse_snapshot_documents([{"kind": "List", "items": [*pods, *extra]}], source="t")
    )


def _pod(
    name: str, ip: str, labels: dict[str, str], owner: tuple[str, str] | None = None
) -> dict[str, object]:
    metadata: dict[str, object] = {
        "name": name,
        "namespace": "app",
        "uid": f"uid-{name}",
        "labels": labels,
    }
    if owner:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner[0],
                "name": owner[1],
                "uid": f"uid-{owner[1]}",
                "controller": True,
            }
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": {"podIP": ip}}


def test_deployment_derived_when_neither_replica_set_nor_deployment_is_in_the_snapshot() -> None:
    labels = {"app": "cart", "pod-template-hash": "6d9c7f5b8"}
    resolver = Resolver(
        _objects(_pod("cart-6d9c7f5b8-x1", "10.1.0.5", labels, ("ReplicaSet", "cart-6d9c7f5b8")))
    )
    identity = resolver.resolve("10.1.0.5", 0.0)
    assert identity.pod is not None
    assert identity.pod.workload == WorkloadRef("app", "Deployment", "cart")
    assert resolver.workload(identity.pod.workload).selector.match_labels == (("app", "cart"),)


def test_match_expressions_are_kept_and_volatile_keys_dropped() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "cart", "namespace": "app", "uid": "uid-cart"},
        "spec": {
            "selector": {
                "matchLabels": {"app": "cart"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["web", "api"]},
                    {"key": "pod-template-hash", "operator": "Exists"},
                ],
            }
        },
    }
    replica_set: dict[str, object] = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "cart-abc",
            "namespace": "app",
            "uid": "uid-cart-abc",
            "ownerReferences": [
                {"kind": "Deployment", "name": "cart", "uid": "uid-cart", "controller": True}
            ],
        },
    }
    pod = _pod("cart-abc-1", "10.1.0.6", {"app": "cart", "tier": "web"}, ("ReplicaSet", "cart-abc"))
    resolver = Resolver(_objects(pod, extra=(deployment, replica_set)))
    ref = resolver.workload_of_pod("app", "cart-abc-1")
    assert ref == WorkloadRef("app", "Deployment", "cart")
    assert resolver.workload(ref).selector == LabelSelector(
        match_labels=(("app", "cart"),),
        match_expressions=(LabelRequirement("tier", "In", ("api", "web")),),
    )


# -- addresses over time -----------------------------------------------------------------------


def test_an_ip_reused_by_a_second_pod_resolves_to_each_in_turn(resolver: Resolver) -> None:
    # pod-ips.jsonl: ratings' old pod held 10.244.1.20 until 09:20; details got it at 09:30.
    # The snapshot's details pod was created at 09:05 (it was Pending until then): the history,
    # which knows when the IP really changed hands, wins over the creation time.
    assert workload_at(resolver, "10.244.1.20", "09:10:00") == "bookinfo/Deployment/ratings-v1"
    assert workload_at(resolver, "10.244.1.20", "09:31:00") == "bookinfo/Deployment/details-v1"


def test_what_a_vantage_point_holds(resolver: Resolver) -> None:
    """A pod holds its own address while the resolver says the address is that pod, and its
    loopback; a hostNetwork pod its node's addresses; a node its addresses and its pods'."""
    details = Vantage("bookinfo", "details-v1-79f774bdb9-d8f5g")
    ratings_old = Vantage("bookinfo", "ratings-v1-b6994bb9-old42")
    # 10.244.1.20 passed from the old ratings pod (until 09:20) to details (from 09:30).
    assert resolver.holds(ratings_old, "10.244.1.20", at("09:10:00"))
    assert not resolver.holds(details, "10.244.1.20", at("09:10:00"))
    assert resolver.holds(details, "10.244.1.20", at("09:31:00"))
    assert not resolver.holds(ratings_old, "10.244.1.20", at("09:31:00"))
    assert not resolver.holds(details, "10.244.1.12", at("09:31:00"))  # ratings' other pod
    assert resolver.holds(details, "127.0.0.1", at("09:31:00"))
    assert resolver.holds(details, "::1", at("09:31:00"))
    exporter = Vantage("kube-system", "node-exporter-7xk2p")  # hostNetwork on node-a
    assert resolver.holds(exporter, "192.168.49.2", at("09:31:00"))
    assert not resolver.holds(exporter, "192.168.49.3", at("09:31:00"))
    assert not resolver.holds(exporter, "10.244.0.40", at("09:31:00"))  # a pod on its node
    node_a = Vantage(node="node-a")
    assert resolver.holds(node_a, "192.168.49.2", at("09:31:00"))
    assert resolver.holds(node_a, "10.244.0.40", at("09:31:00"))  # web on node-a
    assert not resolver.holds(node_a, "10.244.1.40", at("09:31:00"))  # web on node-b
    assert not resolver.holds(node_a, "203.0.113.7", at("09:31:00"))
    assert str(details) == "pod bookinfo/details-v1-79f774bdb9-d8f5g"
    assert str(node_a) == "node node-a"
    assert resolver.knows_addresses(details) and resolver.knows_addresses(exporter)
    assert resolver.knows_addresses(node_a)
    assert not resolver.knows_addresses(Vantage(node="node-z"))
    assert not resolver.knows_addresses(Vantage("shop", "nobody"))


def test_after_the_last_claim_ends_the_last_holder_keeps_the_address(snapshot: Snapshot) -> None:
    history = [e for e in load_pod_ip_history(DATA / "pod-ips.jsonl") if "ratings" in e.pod]
    # Without the details pod in the snapshot, nobody claims the IP after 09:20: packets
    # then are the deleted pod's last ones.
    no_details = Snapshot([o for o in snapshot.pods if not o.name.startswith("details")])
    resolver = Resolver(no_details, ip_history=history)
    assert workload_at(resolver, "10.244.1.20", "09:25:00") == "bookinfo/Deployment/ratings-v1"


def test_ip_reuse_from_snapshot_times_alone(snapshot: Snapshot) -> None:
    resolver = Resolver(snapshot)  # no history: creation times and a finished Job pod
    assert workload_at(resolver, "10.244.0.30", "09:05:00") == "shop/CronJob/report"
    assert workload_at(resolver, "10.244.0.30", "09:20:00") == "shop/Pod/cache"


def test_history_wins_over_snapshot_times(snapshot: Snapshot) -> None:
    # Without the history, the deleted ratings pod is unknown: its old IP is still in-cluster.
    plain = Resolver(snapshot)
    assert workload_at(plain, "10.244.1.20", "09:10:00") == "bookinfo/Deployment/details-v1"
    history = Resolver(snapshot, ip_history=load_pod_ip_history(DATA / "pod-ips.jsonl"))
    assert workload_at(history, "10.244.1.20", "09:10:00") == "bookinfo/Deployment/ratings-v1"


def test_meta_json_places_a_pod_the_snapshot_no_longer_has(snapshot: Snapshot) -> None:
    meta = parse_capture_meta(
        {
            "pod": "checkout-5b7f9c6d4-zz9k1",
            "namespace": "shop",
            "uid": "uid-checkout",
            "ips": ["10.244.1.77"],
            "labels": {"app": "checkout", "pod-template-hash": "5b7f9c6d4"},
            "owner": {"kind": "ReplicaSet", "name": "checkout-5b7f9c6d4"},
            "node": "node-b",
            "start_time": "2026-11-26T09:00:00Z",
        },
        source="captures/shop/checkout-5b7f9c6d4-zz9k1/meta.json",
    )
    without = Resolver(snapshot)
    assert without.resolve("10.244.1.77", at("09:05:00")).kind is EndpointKind.UNRESOLVED
    resolver = Resolver(snapshot, captures=[meta])
    assert workload_at(resolver, "10.244.1.77", "09:05:00") == "shop/Deployment/checkout"
    scope = resolver.scope_of([("shop", "checkout-5b7f9c6d4-zz9k1"), ("shop", "gone")])
    assert scope.workloads == {WorkloadRef("shop", "Deployment", "checkout")}
    assert scope.unknown_pods == (("shop", "gone"),)


@pytest.mark.parametrize(
    ("ip", "kind"),
    [
        ("10.96.20.1", EndpointKind.SERVICE),
        ("fd00:10:96::20", EndpointKind.SERVICE),  # the dual-stack Service's second ClusterIP
        ("fd00:10:96:0::20", EndpointKind.SERVICE),  # any spelling of it
        ("fd00:10:244::40", EndpointKind.POD),  # a dual-stack pod's IPv6 address
        ("192.168.49.3", EndpointKind.NODE),
        ("10.244.1.200", EndpointKind.UNRESOLVED),  # inside node-b's podCIDR, nobody there
        ("10.244.1.1", EndpointKind.NODE),  # node-b's bridge on its podCIDR: kubelet probes
        ("10.96.0.200", EndpointKind.UNRESOLVED),  # among the ClusterIPs, no Service
        ("93.184.216.34", EndpointKind.EXTERNAL),
        ("2606:4700::6810:84e5", EndpointKind.EXTERNAL),
    ],
)
def test_address_kinds(resolver: Resolver, ip: str, kind: EndpointKind) -> None:
    assert resolver.resolve(ip, at("09:40:00")).kind is kind


def test_dual_stack_service_is_one_service(resolver: Resolver) -> None:
    v4 = resolver.resolve("10.96.20.1", 0.0)
    v6 = resolver.resolve("fd00:10:96::20", 0.0)
    assert v4.service == v6.service == ("shop", "web")


# -- Services ---------------------------------------------------------------------------------


def _backends(
    resolver: Resolver, service: tuple[str, str], port: int, **kw: int
) -> set[tuple[str, int]]:
    return {
        (
            str(b.identity.pod.workload)
            if b.identity.pod
            else f"{b.identity.kind}:{b.identity.ip}",
            b.port,
        )
        for b in resolver.service_backends(service, port, Protocol.TCP, at("09:40:00"), **kw)
    }


def test_named_target_port_resolves_per_pod(resolver: Resolver) -> None:
    # Service api :80 → targetPort "api": 8080 on the blue pods, 9090 on the green ones.
    assert _backends(resolver, ("shop", "api"), 80) == {
        ("shop/Deployment/api-blue", 8080),
        ("shop/Deployment/api-green", 9090),
    }


@pytest.mark.parametrize(
    ("target", "port"),
    [
        (8443, 8443),  # a number (``targetPort: "8443"`` is read as one)
        ("https", 9443),  # a name, looked up in the pod's containerPorts
        ("metrics", None),  # a name the pod does not have: kube-proxy sends it nothing
        (None, None),  # no targetPort and no port
    ],
)
def test_the_target_port_rule(target: int | str | None, port: int | None) -> None:
    record = PodRecord(
        "shop",
        "web-1",
        "u1",
        (),
        None,
        "",
        False,
        (PodPort("https", 9443, Protocol.TCP), PodPort("metrics", 9100, Protocol.UDP)),
    )
    service_port = ServicePort("web", 443, Protocol.TCP, target, None)
    assert target_port(service_port, record, Protocol.TCP) == port


def test_selector_backends_and_dual_stack_family(resolver: Resolver) -> None:
    backends = resolver.service_backends(
        ("shop", "web"), 80, Protocol.TCP, at("09:40:00"), family=6
    )
    assert {(b.identity.ip, b.port) for b in backends} == {
        ("fd00:10:244::40", 8080),
        ("fd00:10:244:1::40", 8080),
    }
    backends = resolver.service_backends(
        ("shop", "web"), 80, Protocol.TCP, at("09:40:00"), family=4
    )
    assert {b.identity.ip for b in backends} == {"10.244.0.40", "10.244.1.40"}


def test_endpoint_slices_give_two_deployments_behind_one_service(resolver: Resolver) -> None:
    assert _backends(resolver, ("bookinfo", "reviews"), 9080) == {
        ("bookinfo/Deployment/reviews-v1", 9080),
        ("bookinfo/Deployment/reviews-v3", 9080),
    }


def test_legacy_endpoints_to_a_node_and_unknown_ports(resolver: Resolver) -> None:
    assert _backends(resolver, ("default", "kubernetes"), 443) == {("node:192.168.49.2", 6443)}
    assert _backends(resolver, ("default", "kubernetes"), 80) == set()
    assert _backends(resolver, ("default", "nope"), 80) == set()


def test_cluster_dns_is_found(resolver: Resolver) -> None:
    dns = resolver.cluster_dns()
    assert dns.workloads == {"kube-system/Deployment/coredns"}
    assert [(p.namespace, p.pod_selector.match_labels) for p in dns.peers] == [
        ("kube-system", (("k8s-app", "kube-dns"),))
    ]
    assert dns.ports == DNS_PORTS


def test_cluster_dns_defaults_when_the_snapshot_has_none() -> None:
    dns = Resolver(_objects(_pod("a", "10.1.0.5", {"app": "a"}))).cluster_dns()
    assert dns.workloads == frozenset()
    assert dns.peers[0].namespace == "kube-system"


def _dns_pod(
    namespace: str, name: str, ip: str, labels: dict[str, str], owner_name: str = "dns"
) -> dict[str, object]:
    owner = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": owner_name, "uid": owner_name}
    metadata = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**metadata, "ownerReferences": [{**owner, "controller": True}]},
        "status": {"podIP": ip},
    }


def _dns_service(namespace: str, name: str, selector: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "clusterIP": "172.30.0.10",
            "selector": selector,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353},
            ],
        },
    }


@pytest.mark.parametrize(
    ("namespace", "service", "pod_labels", "service_selector"),
    [
        # OpenShift: found by the pods' label alone, and by the Service.
        ("openshift-dns", None, {"dns.operator.openshift.io/daemonset-dns": "default"}, None),
        (
            "openshift-dns",
            "dns-default",
            {"dns.operator.openshift.io/daemonset-dns": "default"},
            {"dns.operator.openshift.io/daemonset-dns": "default"},
        ),
        # RKE2: only its Service names it.
        (
            "kube-system",
            "rke2-coredns-rke2-coredns",
            {"app.kubernetes.io/name": "rke2-coredns"},
            {"app.kubernetes.io/name": "rke2-coredns"},
        ),
    ],
)
def test_cluster_dns_of_other_distributions(
    namespace: str,
    service: str | None,
    pod_labels: dict[str, str],
    service_selector: dict[str, str] | None,
) -> None:
    extra = () if service is None else (_dns_service(namespace, service, service_selector or {}),)
    resolver = Resolver(
        _objects(
            _dns_pod(namespace, "dns-1", "10.128.0.5", pod_labels),
            _pod("a", "10.128.0.9", {"app": "a"}),
            extra=extra,
        )
    )
    dns = resolver.cluster_dns()
    assert dns.workloads == {f"{namespace}/DaemonSet/dns"}
    assert [(p.namespace, dict(p.pod_selector.match_labels)) for p in dns.peers] == [
        (namespace, pod_labels)
    ]
    if service is not None:
        assert {(p.protocol.value, p.port) for p in dns.ports} == {("TCP", 5353), ("UDP", 5353)}


def _dns_flow(client: str, server: str, packets: int, protocol: Protocol = Protocol.UDP) -> Flow:
    return Flow(
        protocol,
        Endpoint(client, 40000),
        Endpoint(server, 53),
        0.0,
        1.0,
        packets,
        packets * 80,
        frozenset({"c.pcap"}),
        Evidence.KNOWN_LISTENER,
    )


def test_cluster_dns_without_conventions_is_the_service_receiving_most_dns() -> None:
    resolver_service = _dns_service("infra", "resolver", {"app": "resolver"})
    other = _dns_service("infra", "other", {"app": "other"})
    other["spec"] = {**other["spec"], "clusterIP": "172.30.0.20"}  # type: ignore[dict-item]
    snapshot = _objects(
        _dns_pod("infra", "resolver-1", "10.128.0.5", {"app": "resolver"}, "resolver"),
        _dns_pod("infra", "other-1", "10.128.0.6", {"app": "other"}, "other"),
        _pod("a", "10.128.0.9", {"app": "a"}),
        extra=(resolver_service, other),
    )
    flows = [
        _dns_flow("10.128.0.9", "172.30.0.10", 40),  # infra/resolver
        _dns_flow("10.128.0.9", "172.30.0.20", 30),  # infra/other
        _dns_flow("10.128.0.9", "172.30.0.20", 30, Protocol.TCP),  # not 53/UDP
        _dns_flow("10.128.0.9", "10.128.0.6", 90),  # to a pod, not a Service
    ]
    resolver = Resolver(snapshot)
    assert resolver.busiest_dns_service(flows) == ("infra", "resolver")
    dns = resolver.cluster_dns(flows)
    assert dns.workloads == {"infra/DaemonSet/resolver"}
    assert [dict(p.pod_selector.match_labels) for p in dns.peers] == [{"app": "resolver"}]
    # A tie goes to the first by namespace and name; no DNS traffic: the default.
    tie = [_dns_flow("10.128.0.9", "172.30.0.10", 5), _dns_flow("10.128.0.9", "172.30.0.20", 5)]
    assert resolver.busiest_dns_service(tie) == ("infra", "other")
    assert resolver.cluster_dns().workloads == frozenset()


@pytest.mark.parametrize(
    ("ip", "port", "protocol", "listens"),
    [
        ("10.244.0.40", 8080, Protocol.TCP, True),  # containerPort
        ("10.244.0.40", 8081, Protocol.TCP, False),
        ("10.244.0.2", 53, Protocol.UDP, True),
        ("10.244.0.2", 53, Protocol.SCTP, False),
        ("10.96.20.1", 80, Protocol.TCP, True),  # a Service port on its ClusterIP
        ("fd00:10:96::20", 80, Protocol.TCP, True),
        ("10.96.20.1", 8080, Protocol.TCP, False),
        ("192.168.49.2", 9100, Protocol.TCP, True),  # hostNetwork DaemonSet
        ("192.168.49.2", 10250, Protocol.TCP, True),  # kubelet
        ("192.168.49.2", 22, Protocol.TCP, False),
        ("93.184.216.34", 443, Protocol.TCP, False),
    ],
)
def test_known_listener(
    resolver: Resolver, ip: str, port: int, protocol: Protocol, listens: bool
) -> None:
    assert resolver.known_listener(Endpoint(ip, port), protocol, at("09:40:00")) is listens


def test_a_service_target_port_counts_as_listening_without_container_ports() -> None:
    pod = _pod("w", "10.1.0.5", {"app": "w"})
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "w", "namespace": "app"},
        "spec": {
            "clusterIP": "10.96.0.9",
            "selector": {"app": "w"},
            "ports": [{"port": 80, "targetPort": 8000}],
        },
    }
    resolver = Resolver(_objects(pod, extra=(service,)))
    assert resolver.known_listener(Endpoint("10.1.0.5", 8000), Protocol.TCP, 0.0)
    assert not resolver.known_listener(Endpoint("10.1.0.5", 80), Protocol.TCP, 0.0)


def test_load_balancer_and_external_ips_are_the_service() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "w", "namespace": "app"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.9",
            "externalIPs": ["198.51.100.4"],
            "selector": {"app": "w"},
            "ports": [{"port": 80, "targetPort": 8000, "nodePort": 30080}],
        },
        "status": {
            "loadBalancer": {"ingress": [{"ip": "203.0.113.50"}, {"hostname": "lb.example"}]}
        },
    }
    resolver = Resolver(_objects(_pod("w", "10.1.0.5", {"app": "w"}), extra=(service,)))
    for address in ("10.96.0.9", "198.51.100.4", "203.0.113.50"):
        identity = resolver.resolve(address, 0.0)
        assert (identity.kind, identity.service) == (EndpointKind.SERVICE, ("app", "w"))
        assert resolver.known_listener(Endpoint(address, 80), Protocol.TCP, 0.0)


def test_a_job_without_cron_job_is_the_workload_and_statics_are_bare_pods() -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate-20261126", "namespace": "app", "uid": "uid-migrate-20261126"},
        "spec": {
            "selector": {
                "matchLabels": {"batch.kubernetes.io/controller-uid": "uid-migrate-20261126"}
            },
            "template": {
                "metadata": {"labels": {"app": "migrate", "job-name": "migrate-20261126"}}
            },
        },
    }
    job_pod = _pod(
        "migrate-20261126-abcde", "10.1.0.7", {"app": "migrate"}, ("Job", "migrate-20261126")
    )
    static = _pod("etcd-node-a", "10.1.0.8", {"component": "etcd"}, ("Node", "node-a"))
    resolver = Resolver(_objects(job_pod, static, extra=(job,)))
    migrate = resolver.workload_of_pod("app", "migrate-20261126-abcde")
    assert migrate == WorkloadRef("app", "Job", "migrate-20261126")
    assert resolver.workload(migrate).selector.match_labels == (("app", "migrate"),)
    assert resolver.workload_of_pod("app", "etcd-node-a") == WorkloadRef(
        "app", "Pod", "etcd-node-a"
    )


def test_a_host_network_pods_meta_json_does_not_claim_the_node_address(snapshot: Snapshot) -> None:
    meta = parse_capture_meta(
        {"pod": "agent-x", "namespace": "kube-system", "ips": ["192.168.49.3"], "node": "node-b"},
        source="meta.json",
    )
    resolver = Resolver(snapshot, captures=[meta])
    assert resolver.resolve("192.168.49.3", at("09:40:00")).kind is EndpointKind.NODE


def test_a_replica_set_of_another_controller_is_one_revision_of_it() -> None:
    # Argo Rollouts: Rollout → ReplicaSet → Pod, with its own template-hash label
    labels = {"app": "cart", "rollouts-pod-template-hash": "6d9c7f5b8"}
    replica_set: dict[str, object] = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "cart-6d9c7f5b8",
            "namespace": "app",
            "uid": "uid-cart-6d9c7f5b8",
            "labels": labels,
            "ownerReferences": [
                {"kind": "Rollout", "name": "cart", "uid": "uid-rollout", "controller": True}
            ],
        },
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}}},
    }
    pod = _pod("cart-6d9c7f5b8-x1", "10.1.0.5", labels, ("ReplicaSet", "cart-6d9c7f5b8"))
    resolver = Resolver(_objects(pod, extra=(replica_set,)))
    identity = resolver.resolve("10.1.0.5", 0.0)
    assert identity.pod is not None
    assert identity.pod.workload == WorkloadRef("app", "Rollout", "cart")
    assert resolver.workload(identity.pod.workload).selector.match_labels == (("app", "cart"),)


def test_an_indexed_jobs_completion_index_is_not_in_its_selector() -> None:
    labels = {"app": "batch", "batch.kubernetes.io/job-completion-index": "3", "job-name": "j"}
    resolver = Resolver(_objects(_pod("j-3-abcde", "10.1.0.6", labels, ("Job", "j"))))
    identity = resolver.resolve("10.1.0.6", 0.0)
    assert identity.pod is not None
    assert resolver.workload(identity.pod.workload).selector.match_labels == (("app", "batch"),)


def test_an_address_long_before_its_only_pod_existed_is_not_that_pod() -> None:
    # The snapshot was taken the next day: its pod got the address after the capture, so the
    # packets came from a pod deleted since, which the snapshot does not know.
    pod = _pod("late-1", "10.1.0.7", {"app": "late"})
    pod["metadata"]["creationTimestamp"] = "2026-11-27T09:00:00Z"  # type: ignore[index]
    old = _pod("old-1", "10.1.0.8", {"app": "old"})
    old["metadata"]["creationTimestamp"] = "2026-11-01T09:00:00Z"  # type: ignore[index]
    resolver = Resolver(_objects(pod, old, extra=(_node_with_pod_cidr(),)))
    captured = parse_timestamp("2026-11-26T09:00:00Z")
    assert resolver.resolve("10.1.0.7", captured).kind is EndpointKind.UNRESOLVED
    # its own packets, also a few seconds before the API server's clock said it was created
    assert resolver.resolve("10.1.0.7", captured + 86_400 - 5).pod is not None
    assert resolver.resolve("10.1.0.7", captured + 86_400 + 5).pod is not None
    # a capture older than every pod the snapshot knows: the clocks do not tell, so the pod
    # that has the address is still the best guess
    alone = Resolver(_objects(pod, extra=(_node_with_pod_cidr(),)))
    assert alone.resolve("10.1.0.7", captured).pod is not None


def _node_with_pod_cidr() -> dict[str, object]:
    return {"kind": "Node", "metadata": {"name": "n"}, "spec": {"podCIDR": "10.1.0.0/16"}}


def test_host_network_pods_selected_by_a_service_receive_on_their_node_address() -> None:
    # `kubectl get all`: no EndpointSlices, so the backends come from the selector
    items = [
        o
        for o in json.loads((DATA / "cluster.json").read_text())["items"]
        if o["kind"] not in ("EndpointSlice", "Endpoints")
    ]
    items.append(
        {
            "kind": "Service",
            "metadata": {"name": "node-exporter", "namespace": "kube-system"},
            "spec": {
                "clusterIP": "10.96.0.50",
                "selector": {"app": "node-exporter"},
                "ports": [{"port": 9100, "targetPort": "metrics"}],
            },
        }
    )
    resolver = Resolver(Snapshot(parse_snapshot_documents(items, source="all.json")))
    (backend,) = resolver.service_backends(
        ("kube-system", "node-exporter"), 9100, Protocol.TCP, at("09:40:00"), family=4
    )
    assert (backend.identity.ip, backend.port) == ("192.168.49.2", 9100)
    assert backend.identity.pod is not None
    assert backend.identity.pod.workload == WorkloadRef("kube-system", "DaemonSet", "node-exporter")


def test_a_nodes_router_address_named_by_its_cni_is_the_node() -> None:
    node = {
        "kind": "Node",
        "metadata": {
            "name": "n1",
            "annotations": {"network.cilium.io/ipv4-cilium-host": "10.1.0.77"},
        },
        "spec": {"podCIDR": "10.1.0.0/16"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.5"}]},
    }
    resolver = Resolver(_objects(_pod("a-1", "10.1.0.1", {"app": "a"}), extra=(node,)))
    probe = resolver.resolve("10.1.0.77", 0.0)
    assert (probe.kind, probe.node) == (EndpointKind.NODE, "n1")
    # a pod holding the podCIDR's first address (an IPAM that does not keep it) is that pod
    assert resolver.resolve("10.1.0.1", 0.0).kind is EndpointKind.POD


def _service(name: str, spec: dict[str, object]) -> dict[str, object]:
    metadata = {"name": name, "namespace": "app"}
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def _with_ports(pod: dict[str, object], *ports: dict[str, object]) -> dict[str, object]:
    return {**pod, "spec": {"containers": [{"name": "main", "ports": list(ports)}]}}


def test_exposures_are_what_the_snapshot_opens_to_the_outside() -> None:
    web = _with_ports(
        _pod("web", "10.1.0.5", {"app": "web"}, owner=("StatefulSet", "web")),
        {"name": "http", "containerPort": 8080},
        {"name": "admin", "containerPort": 9000},
    )
    agent = _with_ports(
        _pod("agent", "10.1.0.6", {"app": "agent"}),
        {"containerPort": 5000, "protocol": "UDP", "hostPort": 5514},
    )
    internal = _pod("db", "10.1.0.7", {"app": "db"})
    services = (
        _service(
            "web-public",
            {
                "type": "LoadBalancer",
                "clusterIPs": ["10.96.0.9", "fd00::9"],
                "selector": {"app": "web"},
                "ports": [{"port": 80, "targetPort": "http", "nodePort": 30080}],
            },
        ),
        _service(
            "web-ops",
            {
                "type": "NodePort",
                "clusterIP": "10.96.0.10",
                "selector": {"app": "web"},
                "ports": [{"port": 9000, "targetPort": 9000, "nodePort": 30900}],
            },
        ),
        _service(
            "db-legacy",
            {
                "clusterIP": "10.96.0.11",
                "externalIPs": ["198.51.100.4"],
                "selector": {"app": "db"},
                "ports": [{"port": 5432}],
            },
        ),
        _service(
            "web-internal",
            {"clusterIP": "10.96.0.12", "selector": {"app": "web"}, "ports": [{"port": 81}]},
        ),
    )
    resolver = Resolver(_objects(web, agent, internal, extra=services))
    tcp = Protocol.TCP
    assert resolver.exposures() == {
        "app/Pod/agent": (Exposure(PortSpec(Protocol.UDP, 5000), "hostPort 5514", (4,)),),
        "app/Pod/db": (Exposure(PortSpec(tcp, 5432), "Service app/db-legacy (externalIPs)", (4,)),),
        "app/StatefulSet/web": (
            Exposure(PortSpec(tcp, 8080), "Service app/web-public (LoadBalancer)", (4, 6)),
            Exposure(PortSpec(tcp, 9000), "Service app/web-ops (NodePort)", (4,)),
        ),
    }


def _route(kind: str, name: str, spec: dict[str, object]) -> dict[str, object]:
    api = "networking.k8s.io/v1" if kind == "Ingress" else "gateway.networking.k8s.io/v1"
    metadata = {"name": name, "namespace": "app"}
    return {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}


def _ingress_backend(service: str, port: dict[str, object]) -> dict[str, object]:
    return {"service": {"name": service, "port": port}}


def _in_shop(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "namespace": "shop"}}


def _reference_grant(name: str, source_kind: str, service: str = "") -> dict[str, object]:
    """A ReferenceGrant in namespace shop opening its Service ``service`` (all when "") to
    ``source_kind`` objects of namespace app."""
    target = {"group": "", "kind": "Service"} | ({"name": service} if service else {})
    source = {"group": "gateway.networking.k8s.io", "kind": source_kind, "namespace": "app"}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"from": [source], "to": [target]},
    }


def test_the_backends_of_ingresses_and_http_routes_are_exposed() -> None:
    """A cloud load balancer or a gateway's proxies reach an Ingress's or an HTTPRoute's pods
    directly, from addresses nobody lists, even behind a ClusterIP Service. An HTTPRoute reaches
    another namespace's Service only as a ReferenceGrant there permits."""
    web = _with_ports(
        _pod("web", "10.1.0.5", {"app": "web"}, owner=("StatefulSet", "web")),
        {"name": "http", "containerPort": 8080},
        {"name": "admin", "containerPort": 9000},
    )
    api = _with_ports(_pod("api", "10.1.0.6", {"app": "api"}), {"containerPort": 7000})
    db = _with_ports(_pod("db", "10.1.0.7", {"app": "db"}), {"containerPort": 5432})
    cart = _in_shop(_with_ports(_pod("cart", "10.1.0.8", {"app": "cart"}), {"containerPort": 6000}))
    till = _in_shop(_with_ports(_pod("till", "10.1.0.9", {"app": "till"}), {"containerPort": 6100}))
    services = (
        _service(
            "web",
            {
                "clusterIP": "10.96.0.9",
                "selector": {"app": "web"},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "admin", "port": 9000},
                ],
            },
        ),
        _service(
            "api",
            {
                "clusterIP": "10.96.0.10",
                "selector": {"app": "api"},
                "ports": [{"port": 70, "targetPort": 7000}],
            },
        ),
        _service(
            "db", {"clusterIP": "10.96.0.11", "selector": {"app": "db"}, "ports": [{"port": 5432}]}
        ),
        _in_shop(
            _service(
                "cart",
                {
                    "clusterIP": "10.96.0.12",
                    "selector": {"app": "cart"},
                    "ports": [{"port": 60, "targetPort": 6000}],
                },
            )
        ),
        _in_shop(
            _service(
                "till",
                {"clusterIP": "10.96.0.13", "selector": {"app": "till"}, "ports": [{"port": 6100}]},
            )
        ),
        _reference_grant("cart-to-routes", "HTTPRoute", "cart"),
        _reference_grant("all-to-grpc-routes", "GRPCRoute"),  # not for HTTPRoutes
        _route(
            "Ingress",
            "site",
            {
                "defaultBackend": _ingress_backend("api", {"number": 70}),
                "rules": [
                    {
                        "http": {
                            "paths": [
                                {"path": "/", "backend": _ingress_backend("web", {"name": "http"})},
                                {"path": "/x", "backend": _ingress_backend("gone", {"number": 80})},
                                {"path": "/y", "backend": _ingress_backend("db", {"number": 1})},
                                {
                                    "path": "/z",
                                    "backend": {"resource": {"kind": "Bucket", "name": "b"}},
                                },
                            ]
                        }
                    }
                ],
            },
        ),
        _route(
            "HTTPRoute",
            "shop-route",
            {
                "rules": [
                    {
                        "backendRefs": [
                            {"name": "cart", "namespace": "shop", "port": 60},
                            {"name": "till", "namespace": "shop", "port": 6100},  # no grant
                            {"group": "", "kind": "Service", "name": "web", "port": 9000},
                        ]
                    },
                    {
                        "backendRefs": [
                            {
                                "group": "multicluster.x-k8s.io",
                                "kind": "ServiceImport",
                                "name": "db",
                                "port": 5432,
                            },
                            {"kind": "Backend", "name": "db", "port": 5432},
                            {"name": "db"},  # no port: the gateway refuses it
                        ]
                    },
                ]
            },
        ),
    )
    resolver = Resolver(_objects(web, api, db, cart, till, extra=services))
    tcp = Protocol.TCP
    assert resolver.exposures() == {
        "app/Pod/api": (Exposure(PortSpec(tcp, 7000), "Ingress app/site", (4,)),),
        "app/StatefulSet/web": (
            Exposure(PortSpec(tcp, 8080), "Ingress app/site", (4,)),
            Exposure(PortSpec(tcp, 9000), "HTTPRoute app/shop-route", (4,)),
        ),
        "shop/Pod/cart": (Exposure(PortSpec(tcp, 6000), "HTTPRoute app/shop-route", (4,)),),
    }


# -- selectors that select more than their workload --------------------------------------------


def _deployment(
    name: str,
    template: dict[str, str],
    *,
    match_labels: dict[str, str] | None = None,
    expressions: list[dict[str, object]] | None = None,
) -> dict[str, object]:
    selector: dict[str, object] = {}
    if match_labels is not None:
        selector["matchLabels"] = match_labels
    if expressions is not None:
        selector["matchExpressions"] = expressions
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "app", "uid": f"uid-{name}"},
        "spec": {"selector": selector, "template": {"metadata": {"labels": template}}},
    }


def _deployed(name: str, ip: str, labels: dict[str, str]) -> dict[str, object]:
    """A pod of Deployment ``name`` (its ReplicaSet missing: derived by pod-template-hash)."""
    return _pod(
        f"{name}-5d8f9-x1",
        ip,
        {**labels, "pod-template-hash": "5d8f9"},
        ("ReplicaSet", f"{name}-5d8f9"),
    )


def _workload(resolver: Resolver, ip: str) -> Workload:
    identity = resolver.resolve(ip, 0.0)
    assert identity.pod is not None
    return resolver.workload(identity.pod.workload)


def test_a_selector_by_key_only_is_narrowed_to_the_pod_template_labels() -> None:
    web = _deployment(
        "web", {"app": "web", "tier": "front"}, expressions=[{"key": "app", "operator": "Exists"}]
    )
    resolver = Resolver(
        _objects(_deployed("web", "10.1.0.5", {"app": "web", "tier": "front"}), extra=(web,))
    )
    workload = _workload(resolver, "10.1.0.5")
    assert workload.selector == LabelSelector(match_labels=(("app", "web"), ("tier", "front")))
    assert workload.narrowed_from == LabelSelector(
        match_expressions=(LabelRequirement("app", "Exists"),)
    )
    assert workload.also_selects == ()


def test_a_selector_matching_another_workloads_pods_is_narrowed() -> None:
    """web selects tier=front; so do the pods of api (and the template of admin, scaled to 0)."""
    web = _deployment("web", {"tier": "front", "app": "web"}, match_labels={"tier": "front"})
    api = _deployment("api", {"tier": "front", "app": "api"}, match_labels={"app": "api"})
    admin = _deployment("admin", {"tier": "front", "app": "admin"}, match_labels={"app": "admin"})
    resolver = Resolver(
        _objects(
            _deployed("web", "10.1.0.5", {"tier": "front", "app": "web"}),
            _deployed("api", "10.1.0.6", {"tier": "front", "app": "api"}),
            extra=(web, api, admin),
        )
    )
    workload = _workload(resolver, "10.1.0.5")
    assert workload.selector == LabelSelector(match_labels=(("app", "web"), ("tier", "front")))
    assert workload.narrowed_from == LabelSelector(match_labels=(("tier", "front"),))
    # api's own selector selects only its pods: kept as it is
    api_workload = _workload(resolver, "10.1.0.6")
    assert api_workload.selector == LabelSelector(match_labels=(("app", "api"),))
    assert api_workload.narrowed_from is None


def test_a_stable_workload_beside_its_canary_excludes_the_canarys_own_label() -> None:
    """web's pod labels are a subset of canary's: web's selector becomes app=web,!track."""
    web = _deployment("web", {"app": "web"}, match_labels={"app": "web"})
    canary = _deployment(
        "canary", {"app": "web", "track": "canary"}, match_labels={"app": "web", "track": "canary"}
    )
    resolver = Resolver(
        _objects(
            _deployed("web", "10.1.0.5", {"app": "web"}),
            _deployed("canary", "10.1.0.6", {"app": "web", "track": "canary"}),
            extra=(web, canary),
        )
    )
    workload = _workload(resolver, "10.1.0.5")
    assert workload.selector == LabelSelector(
        match_labels=(("app", "web"),),
        match_expressions=(LabelRequirement("track", "DoesNotExist"),),
    )
    assert str(workload.selector) == "app=web,!track"
    assert (workload.narrowed_from, workload.also_selects) == (
        LabelSelector(match_labels=(("app", "web"),)),
        (),
    )
    assert _workload(resolver, "10.1.0.6").narrowed_from is None


def test_a_workload_no_selector_can_tell_from_another_selects_it_too() -> None:
    """Two Deployments with the same pod labels: neither can be selected alone."""
    labels = {"app": "web"}
    resolver = Resolver(
        _objects(
            _deployed("web", "10.1.0.5", labels),
            _deployed("web2", "10.1.0.6", labels),
            extra=(
                _deployment("web", labels, match_labels=labels),
                _deployment("web2", labels, match_labels=labels),
            ),
        )
    )
    workload = _workload(resolver, "10.1.0.5")
    assert workload.selector == LabelSelector(match_labels=(("app", "web"),))
    assert workload.also_selects == ("app/Deployment/web2",)
    assert _workload(resolver, "10.1.0.6").also_selects == ("app/Deployment/web",)


def test_two_bare_pods_with_the_same_labels_select_each_other() -> None:
    resolver = Resolver(
        _objects(
            _pod("debug-a", "10.1.0.5", {"run": "debug"}),
            _pod("debug-b", "10.1.0.6", {"run": "debug"}),
        )
    )
    assert _workload(resolver, "10.1.0.5").also_selects == ("app/Pod/debug-b",)
    assert _workload(resolver, "10.1.0.6").also_selects == ("app/Pod/debug-a",)


def test_the_replica_sets_and_jobs_of_a_workload_are_its_own() -> None:
    """A Deployment's ReplicaSets and a CronJob's Jobs carry its template: not other workloads."""
    resolver = Resolver(load_snapshot(DATA / "cluster.json"))
    for ip, name in (("10.244.0.10", "productpage-v1"), ("10.244.0.30", "report")):
        workload = _workload(resolver, ip)
        assert workload.ref.name == name
        assert (workload.narrowed_from, workload.also_selects) == (None, ()), name


def test_an_invalid_own_selector_is_replaced_by_the_pod_labels() -> None:
    own = LabelSelector(match_expressions=(LabelRequirement("app", "Bogus", ("web",)),))
    choice = exclusive_selector(own, (("app", "web"),), [{"app": "web"}], lambda _: ())
    assert choice == SelectorChoice(LabelSelector(match_labels=(("app", "web"),)), own, ())


def test_a_selector_by_in_that_takes_in_another_workload_is_narrowed() -> None:
    web = _deployment(
        "web",
        {"app": "web"},
        expressions=[{"key": "app", "operator": "In", "values": ["web", "api"]}],
    )
    resolver = Resolver(
        _objects(
            _deployed("web", "10.1.0.5", {"app": "web"}),
            _deployed("api", "10.1.0.6", {"app": "api"}),
            extra=(web,),
        )
    )
    workload = _workload(resolver, "10.1.0.5")
    assert workload.selector == LabelSelector(match_labels=(("app", "web"),))
    assert workload.narrowed_from == LabelSelector(
        match_expressions=(LabelRequirement("app", "In", ("api", "web")),)
    )


def test_an_address_one_pod_claims_in_several_inputs_is_timeless(snapshot: Snapshot) -> None:
    # The history and the snapshot both naming one pod at its address are one owner: who the
    # address was does not depend on the time (build_graph resolves such a pair once).
    address = "10.244.0.2"
    pod = Resolver(snapshot).resolve(address, at("09:40:00")).pod
    assert pod is not None
    added = {
        "time": "2026-11-26T09:00:00Z",
        "event": "ADDED",
        "namespace": pod.namespace,
        "pod": pod.name,
        "uid": pod.uid,
        "ips": [address],
    }
    history = parse_pod_ip_history([json.dumps(added)], source="pod-ips.jsonl")
    resolver = Resolver(snapshot, ip_history=history)
    assert resolver.timeless(address, at("09:40:00"))
    reused = Resolver(snapshot, ip_history=load_pod_ip_history(DATA / "pod-ips.jsonl"))
    assert not reused.timeless("10.244.1.20", at("09:40:00"))  # ratings', then details'
