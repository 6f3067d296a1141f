"""The policy model: frozen dataclasses describing the NetworkPolicies to write, and their
synthesis from the workload graph.

Data only, no I/O: rendering to YAML lives in ``rendering``; the semantics used to check a set of
policies live in ``evaluation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from analyser.flows import Protocol

# Labels that change with every rollout or pod and must never appear in a selector.
VOLATILE_LABELS: frozenset[str] = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "batch.kubernetes.io/controller-uid",
        "batch.kubernetes.io/job-name",
        "controller-uid",
        "job-name",
    }
)


@dataclass(frozen=True, order=True, slots=True)
class LabelRequirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()


@dataclass(frozen=True, order=True, slots=True)
class LabelSelector:
    """A ``metav1.LabelSelector``; sorted tuples keep it hashable and the output stable."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelRequirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


@dataclass(frozen=True, order=True, slots=True)
class PortSpec:
    """A target port (never a Service port) and its protocol."""

    protocol: Protocol
    port: int


@dataclass(frozen=True, order=True, slots=True)
class PodPeer:
    """Pods selected by ``pod_selector`` in ``namespace`` (None: the policy's own namespace)."""

    pod_selector: LabelSelector
    namespace: str | None = None
    description: str = ""  # the workload it stands for, e.g. "shop/Deployment/cart"


@dataclass(frozen=True, order=True, slots=True)
class IpPeer:
    """An address outside the cluster: a /32 or /128 ``ipBlock``."""

    cidr: str
    names: tuple[str, ...] = ()  # DNS names seen resolving to it, for the annotation


Peer = PodPeer | IpPeer


@dataclass(frozen=True, order=True, slots=True)
class Rule:
    """Traffic to (egress) or from (ingress) one peer on a set of ports."""

    peer: Peer
    ports: tuple[PortSpec, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """One NetworkPolicy for one workload, isolating both directions."""

    namespace: str
    name: str
    workload: str  # "NS/Kind/name"
    pod_selector: LabelSelector
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class DefaultDeny:
    """``--default-deny``: one policy per namespace selecting every pod, allowing nothing."""

    namespace: str
    name: str = "default-deny-all"


# The ports cluster DNS answers on when the snapshot does not say otherwise.
DNS_PORTS: tuple[PortSpec, ...] = (PortSpec(Protocol.TCP, 53), PortSpec(Protocol.UDP, 53))
DEFAULT_DNS_PEER = PodPeer(
    pod_selector=LabelSelector(match_labels=(("k8s-app", "kube-dns"),)),
    namespace="kube-system",
    description="cluster DNS (k8s-app=kube-dns)",
)


@dataclass(frozen=True, slots=True)
class ClusterDns:
    """Where pods send DNS queries: the peers every policy's DNS egress allows, the graph node
    ids of the DNS workloads (their DNS flows are not repeated as ordinary egress) and the
    target ports they answer on."""

    peers: tuple[PodPeer, ...] = (DEFAULT_DNS_PEER,)
    workloads: frozenset[str] = frozenset()
    ports: tuple[PortSpec, ...] = DNS_PORTS
