"""The simulated cluster's layout: pods with names, uids and IPs, Services with ClusterIPs, the
outside world's addresses, what the cluster DNS answers, and where each Service port leads.

Pure and deterministic (names and uids derive from the plan's seed). The shells (``netns``,
``services``, ``bundling``) turn it into namespaces, iptables rules and files.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from kernel.errors import LabError
from lab.manifests import ClusterSpec, ContainerPort, ServiceSpec, WorkloadSpec, read_manifests
from lab.plans import ExternalHost, TrafficPlan

CLUSTER_DOMAIN = "cluster.local"
NODE_NAME = "lab-node-1"
NODE_IPV4 = "172.18.0.2"
NODE_IPV6 = "fd00:172:18::2"
POD_CIDR_V4 = ipaddress.ip_network("10.244.0.0/16")
POD_CIDR_V6 = ipaddress.ip_network("fd00:10:244::/56")
SERVICE_CIDR_V4 = ipaddress.ip_network("10.96.0.0/16")
SERVICE_CIDR_V6 = ipaddress.ip_network("fd00:10:96::/112")
# Documentation ranges: they exist only inside the lab's namespaces.
EXTERNAL_CIDR_V4 = ipaddress.ip_network("203.0.113.0/24")
EXTERNAL_CIDR_V6 = ipaddress.ip_network("2001:db8::/64")
# LoadBalancer addresses, seen from the outside world (documentation ranges as well).
LOAD_BALANCER_CIDR_V4 = ipaddress.ip_network("198.51.100.0/25")
LOAD_BALANCER_CIDR_V6 = ipaddress.ip_network("2001:db8:100::/64")
DNS_SERVICE_V4 = "10.96.0.10"
DNS_SERVICE_V6 = "fd00:10:96::a"
DNS_WORKLOAD = "kube-system/Deployment/coredns"
# The alphabet Kubernetes uses for generated name suffixes.
_SAFE = "bcdfghjklmnpqrstvwxz2456789"

CLUSTER_DNS_MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      containers:
        - name: coredns
          image: registry.k8s.io/coredns/coredns:v1.11.3
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
            - {name: metrics, containerPort: 9153, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, targetPort: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}
    - {name: metrics, port: 9153, targetPort: 9153, protocol: TCP}
"""


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()


def _suffix(length: int, *parts: object) -> str:
    return "".join(_SAFE[b % len(_SAFE)] for b in _digest(*parts)[:length])


def make_uid(*parts: object) -> str:
    """A deterministic UUID-shaped uid."""
    h = _digest("uid", *parts).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


@dataclass(frozen=True, slots=True)
class Owner:
    kind: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class LabPod:
    """One pod replica: a network namespace in the lab."""

    index: int  # network slot: namespace and veth names, MAC addresses
    name: str
    uid: str
    workload: WorkloadSpec
    labels: tuple[tuple[str, str], ...]
    ips: tuple[str, ...]  # IPv4 first, then IPv6 when dual-stack
    owner: Owner | None
    created: float  # epoch seconds
    hostname: str | None = None  # StatefulSet pods: their stable DNS name under the Service
    subdomain: str | None = None

    @property
    def namespace(self) -> str:
        return self.workload.namespace

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class LabService:
    spec: ServiceSpec
    cluster_ips: tuple[str, ...]  # empty for headless Services
    load_balancer_ips: tuple[str, ...] = ()  # type LoadBalancer: its ingress addresses

    @property
    def external_policy(self) -> str:
        """externalTrafficPolicy: Cluster (the default) hides the client behind the node."""
        return str((self.spec.manifest.get("spec") or {}).get("externalTrafficPolicy", "Cluster"))


@dataclass(frozen=True, slots=True)
class LabExternal:
    host: ExternalHost
    ips: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One pod behind one Service port, with the target port resolved to a number."""

    pod: LabPod
    service_port: int
    target_port: int
    protocol: str


@dataclass
class Layout:
    """The cluster: static parts (Services, owners, the outside world) plus the current pods."""

    cluster: ClusterSpec
    plan: TrafficPlan
    services: tuple[LabService, ...]
    externals: tuple[LabExternal, ...]
    created: float
    pods: list[LabPod] = field(default_factory=list)
    replica_set_hashes: dict[str, str] = field(default_factory=dict)  # Deployment ref → hash
    _next_index: int = 0
    _generation: dict[str, int] = field(default_factory=dict)

    @property
    def dual_stack(self) -> bool:
        return self.plan.dual_stack

    def workload_uid(self, workload: WorkloadSpec) -> str:
        return make_uid(self.plan.seed, workload.ref)

    def owner_of(self, workload: WorkloadSpec) -> Owner | None:
        """The pod's controller: ReplicaSet for a Deployment, the workload itself otherwise."""
        if workload.kind == "Pod":
            return None
        if workload.kind == "Deployment":
            name = f"{workload.name}-{self.replica_set_hashes[workload.ref]}"
            return Owner("ReplicaSet", name, make_uid(self.plan.seed, workload.ref, "rs"))
        if workload.kind == "CronJob":
            return self.scheduled_job(workload)
        return Owner(workload.kind, workload.name, self.workload_uid(workload))

    def scheduled_job(self, workload: WorkloadSpec) -> Owner:
        """The Job a CronJob started for this window, named after its scheduled minute."""
        name = f"{workload.name}-{int(self.created // 60)}"
        return Owner("Job", name, make_uid(self.plan.seed, workload.ref, "job"))

    def pods_of(self, ref: str) -> list[LabPod]:
        return [pod for pod in self.pods if pod.workload.ref == ref]

    def new_pod(
        self, workload: WorkloadSpec, *, ordinal: int, now: float, reuse_index: int | None = None
    ) -> LabPod:
        """A pod for ``workload``; ``reuse_index`` takes the network slot (so the IPs) of a pod
        that is gone."""
        generation = self._generation.get(workload.ref, 0)
        self._generation[workload.ref] = generation + 1
        if reuse_index is None:
            index = self._next_index
            self._next_index += 1
        else:
            index = reuse_index
        labels = dict(workload.template_labels)
        hostname = subdomain = None
        seed = self.plan.seed
        if workload.kind == "Deployment":
            rs_hash = self.replica_set_hashes[workload.ref]
            labels["pod-template-hash"] = rs_hash
            name = f"{workload.name}-{rs_hash}-{_suffix(5, seed, workload.ref, generation)}"
        elif workload.kind == "StatefulSet":
            name = f"{workload.name}-{ordinal}"
            labels["apps.kubernetes.io/pod-index"] = str(ordinal)
            labels["controller-revision-hash"] = (
                f"{workload.name}-{_suffix(10, seed, workload.ref)}"
            )
            labels["statefulset.kubernetes.io/pod-name"] = name
            hostname = name
            subdomain = workload.manifest.get("spec", {}).get("serviceName") or None
        elif workload.kind == "DaemonSet":
            name = f"{workload.name}-{_suffix(5, seed, workload.ref, generation)}"
            labels["controller-revision-hash"] = _suffix(10, seed, workload.ref, "rev")
            labels["pod-template-generation"] = "1"
        elif workload.kind in ("Job", "CronJob"):
            job = self.owner_of(workload)
            assert job is not None
            name = f"{job.name}-{_suffix(5, seed, workload.ref, generation)}"
            uid = job.uid
            labels.update(
                {
                    "batch.kubernetes.io/controller-uid": uid,
                    "controller-uid": uid,
                    "batch.kubernetes.io/job-name": job.name,
                    "job-name": job.name,
                }
            )
        else:
            name = workload.name
        pod = LabPod(
            index=index,
            name=name,
            uid=make_uid(seed, workload.ref, "pod", generation),
            workload=workload,
            labels=tuple(sorted(labels.items())),
            ips=pod_ips(index, dual_stack=self.dual_stack),
            owner=self.owner_of(workload),
            created=now,
            hostname=hostname,
            subdomain=subdomain,
        )
        self.pods.append(pod)
        return pod

    def remove_pod(self, pod: LabPod) -> None:
        self.pods.remove(pod)

    def outside_clients(self) -> tuple[str, ...]:
        """The addresses of the plan's clients in the outside world."""
        return tuple(sorted({c.outside_address for c in self.plan.calls if c.outside_address}))

    def load_balancer(self, host: str) -> LabService | None:
        """The LoadBalancer Service an outside client names as ``NAME`` or ``NAME.NAMESPACE``."""
        name, _, namespace = host.partition(".")
        for service in self.services:
            if (service.spec.name, service.spec.namespace) == (name, namespace or "default"):
                return service if service.load_balancer_ips else None
        return None

    def service(self, namespace: str, name: str) -> LabService:
        for service in self.services:
            if (service.spec.namespace, service.spec.name) == (namespace, name):
                return service
        raise LabError(f"no Service {namespace}/{name}")


def pod_ips(index: int, *, dual_stack: bool) -> tuple[str, ...]:
    """Pod slot → its IPs (10.244.0.2, 10.244.0.3, ...; fd00:10:244::2, ... when dual-stack)."""
    v4 = str(POD_CIDR_V4[index + 2])
    return (v4, str(POD_CIDR_V6[index + 2])) if dual_stack else (v4,)


def build_layout(cluster: ClusterSpec, plan: TrafficPlan, *, now: float) -> Layout:
    """Place every replica, give Services ClusterIPs and outside names addresses."""
    # The lab provides cluster DNS; manifests that define it too fail as "defined twice".
    cluster = cluster.merged(read_manifests([("cluster DNS", CLUSTER_DNS_MANIFEST)]))
    _check_plan(cluster, plan)
    layout = Layout(
        cluster=cluster,
        plan=plan,
        services=tuple(_assign_cluster_ips(cluster.services, dual_stack=plan.dual_stack)),
        externals=tuple(_assign_external_ips(plan.external, dual_stack=plan.dual_stack)),
        created=now,
    )
    for workload in cluster.workloads:
        if workload.kind == "Deployment":
            layout.replica_set_hashes[workload.ref] = _suffix(10, plan.seed, workload.ref, "rs")
    for workload in cluster.workloads:
        for ordinal in range(workload.replicas):
            layout.new_pod(workload, ordinal=ordinal, now=now)
    return layout


def _check_plan(cluster: ClusterSpec, plan: TrafficPlan) -> None:
    refs = {w.ref: w for w in cluster.workloads}
    for call in plan.calls:
        if call.outside_address is not None:
            if _inside_lab(call.outside_address):
                raise LabError(f"{call.client} is inside the cluster's ranges")
            name, _, namespace = call.host.partition(".")
            if not any(
                (s.name, s.namespace, s.type) == (name, namespace or "default", "LoadBalancer")
                for s in cluster.services
            ):
                raise LabError(
                    f"{call.client} calls {call.host}: outside clients call a "
                    "LoadBalancer Service, named NAME or NAME.NAMESPACE"
                )
            continue
        workload = refs.get(call.client)
        if workload is None:
            cluster.workload(call.client)  # raises, listing the known workloads
        elif workload.replicas == 0:
            raise LabError(f"{call.client} has no replicas, so it cannot make calls")
    for restart in plan.restarts:
        for ref in filter(None, (restart.workload, restart.ip_to)):
            if ref not in refs or refs[ref].replicas == 0:
                raise LabError(f"restart: {ref} is not a workload with a running pod")
        if restart.ip_to == restart.workload:
            raise LabError(f"restart: ip-to names {restart.workload} itself")
        for ref in filter(None, (restart.workload, restart.ip_to)):
            if refs[ref].kind == "Pod":
                raise LabError(f"restart: {ref} is a bare Pod: no controller recreates it")
        if refs[restart.workload].kind == "StatefulSet":
            raise LabError(
                f"restart: {restart.workload}: StatefulSet pods keep their names; "
                "restart a Deployment, DaemonSet, Job or Pod"
            )


def _assign_cluster_ips(
    services: Iterable[ServiceSpec], *, dual_stack: bool
) -> Iterable[LabService]:
    """ClusterIPs from the Service range (kube-dns: the conventional .10), and an ingress
    address for every LoadBalancer."""

    def pair(v4: object, v6: object) -> tuple[str, ...]:
        return (str(v4), str(v6)) if dual_stack else (str(v4),)

    next_host = 100
    balancers = 0
    for spec in services:
        if spec.headless:
            yield LabService(spec, ())
            continue
        if (spec.namespace, spec.name) == ("kube-system", "kube-dns"):
            cluster_ips = pair(DNS_SERVICE_V4, DNS_SERVICE_V6)
        else:
            cluster_ips = pair(SERVICE_CIDR_V4[next_host], SERVICE_CIDR_V6[next_host])
            next_host += 1
        balancer_ips: tuple[str, ...] = ()
        if spec.type == "LoadBalancer":
            balancers += 1
            balancer_ips = pair(
                LOAD_BALANCER_CIDR_V4[100 + balancers], LOAD_BALANCER_CIDR_V6[100 + balancers]
            )
        yield LabService(spec, cluster_ips, balancer_ips)


def _assign_external_ips(
    hosts: Iterable[ExternalHost], *, dual_stack: bool
) -> Iterable[LabExternal]:
    for number, host in enumerate(hosts, start=10):
        v4 = host.ipv4 or str(EXTERNAL_CIDR_V4[number])
        v6 = host.ipv6 or str(EXTERNAL_CIDR_V6[number])
        for address in (v4, v6):
            if _inside_lab(address):
                raise LabError(
                    f"outside host {host.name}: {address} is inside the cluster's ranges"
                )
        yield LabExternal(host, (v4, v6) if dual_stack else (v4,))


def _inside_lab(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in (POD_CIDR_V4, POD_CIDR_V6, SERVICE_CIDR_V4, SERVICE_CIDR_V6))


def resolve_target_port(
    service_port_target: int | str, protocol: str, ports: Iterable[ContainerPort]
) -> int | None:
    """A Service's targetPort for one pod: numbers as they are, names through containerPorts."""
    if isinstance(service_port_target, int):
        return service_port_target
    for port in ports:
        if port.name == service_port_target and port.protocol == protocol:
            return port.port
    return None


def endpoints(service: LabService, pods: Iterable[LabPod]) -> list[Endpoint]:
    """The pods behind a Service, per port (a pod whose named port does not resolve is skipped,
    as the EndpointSlice controller does)."""
    result = []
    for pod in pods:
        if not service.spec.selects(pod.workload):
            continue
        for port in service.spec.ports:
            target = resolve_target_port(port.target_port, port.protocol, pod.workload.ports)
            if target is not None:
                result.append(Endpoint(pod, port.port, target, port.protocol))
    return result


def _dns_name(*labels: str) -> str:
    return ".".join((*labels, CLUSTER_DOMAIN))


def dns_records(layout: Layout) -> dict[str, dict[str, list[str]]]:
    """name → {"A": [...], "AAAA": [...]}: what the cluster DNS answers right now."""
    records: dict[str, dict[str, list[str]]] = {}

    def add(name: str, addresses: Iterable[str]) -> None:
        entry = records.setdefault(name, {"A": [], "AAAA": []})
        for address in addresses:
            kind = "AAAA" if ":" in address else "A"
            if address not in entry[kind]:
                entry[kind].append(address)

    for service in layout.services:
        name = _dns_name(service.spec.name, service.spec.namespace, "svc")
        if service.spec.headless:
            backing = sorted(
                {e.pod.key: e.pod for e in endpoints(service, layout.pods)}.values(),
                key=lambda p: p.name,
            )
            add(name, [ip for pod in backing for ip in pod.ips])
        else:
            add(name, service.cluster_ips)
    for pod in layout.pods:
        if pod.hostname and pod.subdomain:
            add(_dns_name(pod.hostname, pod.subdomain, pod.namespace, "svc"), pod.ips)
    for external in layout.externals:
        if external.host.cname is None:
            add(external.host.name, external.ips)
        else:
            records[external.host.name] = {"CNAME": [external.host.cname]}
            add(external.host.cname, external.ips)
    return {name: records[name] for name in sorted(records)}


def search_path(namespace: str) -> tuple[str, ...]:
    """A pod's resolv.conf search list (with ndots:5, as the kubelet writes it)."""
    return (f"{namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN)
