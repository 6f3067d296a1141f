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
from analyser.policysets import load_policies

__all__ = [
    "Address",
    "BundleError",
    "CaptureError",
    "CollectError",
    "ContainerPort",
    "Denial",
    "Direction",
    "Endpoint",
    "Evidence",
    "Flow",
    "NetpolSnifferError",
    "PolicyError",
    "PolicySet",
    "PortSet",
    "Protocol",
    "SnapshotError",
    "UnsafePolicies",
    "load_policies",
    "pod",
]
