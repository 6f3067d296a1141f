"""netpol-sniffer's analyser: captures + a cluster snapshot → least-privilege NetworkPolicies.

The public surface is listed in ``__all__``; everything else is internal.
"""

from analyser.errors import (
    BundleError,
    CaptureError,
    CollectError,
    NetpolSnifferError,
    PolicyError,
    SnapshotError,
    UnsafePolicies,
)
from analyser.evaluation import Address, ContainerPort, Denial, Direction, PolicySet, PortSet, pod
from analyser.flows import Endpoint, Evidence, Flow, Protocol
from analyser.identities import Resolver, Workload, WorkloadRef
from analyser.policies import DefaultDeny, Policy, synthesize
from analyser.policysets import load_policies
from analyser.snapshot import Snapshot, load_snapshot

__all__ = [
    "Address",
    "BundleError",
    "CaptureError",
    "CollectError",
    "ContainerPort",
    "DefaultDeny",
    "Denial",
    "Direction",
    "Endpoint",
    "Evidence",
    "Flow",
    "NetpolSnifferError",
    "Policy",
    "PolicyError",
    "PolicySet",
    "PortSet",
    "Protocol",
    "Resolver",
    "Snapshot",
    "SnapshotError",
    "UnsafePolicies",
    "Workload",
    "WorkloadRef",
    "load_policies",
    "load_snapshot",
    "pod",
    "synthesize",
]
