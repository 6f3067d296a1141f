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
)
from analyser.flows import Endpoint, Evidence, Flow, Protocol

__all__ = [
    "BundleError",
    "CaptureError",
    "CollectError",
    "Endpoint",
    "Evidence",
    "Flow",
    "NetpolSnifferError",
    "PolicyError",
    "Protocol",
    "SnapshotError",
]
