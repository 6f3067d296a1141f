"""netpol-sniffer's analyser: captures + a cluster snapshot → least-privilege NetworkPolicies.

Pure (data in, data out, no I/O):
    packets     bytes → L3/L4 facts and DNS answers (the only dpkt import)
    flows       the flow types, and what a capture file's conversations are
    orienting   conversations merged over files → client → server flows (compiled, like packets)
    dns         DNS answers → the names an address had, and when
    objects     the snapshot's objects as typed views, each read (and so checked) once: the schema
    identities  (IP, time) → pod, workload, Service, node or outside: ``Resolver``, a thin facade
    clusterdns  where cluster DNS answers (conventions, the busiest Service), node-local caches
    services    a Service's backends and target ports (``target_port``), listeners, exposures
    workloads   a pod's workload (the owner walk) and the selector its policy uses
    claims      which pod held which address when (IP history, meta.json, snapshot lifetimes)
    networks    the nodes' addresses, theirs on the pod network, the cluster's ranges
    vouching    which side of a flow its captures speak for (a pod's capture: its own side)
    vantages    where each capture was taken (a pod, a node) and which pods each covered
    rings       capture rings (tcpdump -C -W) that wrapped: what each lost, what it still covers
    periods     capture windows, CronJob schedules' longest gaps, the CronJobs windows may miss
    graphs      flows + identities → the workload graph: typed nodes and edges, its schema
    policies    the policy model, and the plan (policies, default-denies) made from the graph
    pictures    the graph as a reviewer sees it: namespaces, infrastructure apart, outside gathered
    explaining  why each rule exists: the flows behind it, or why every policy has it
    adopting    the generated policies against the cluster's current ones: collisions, combined
    baselines   the cluster baseline: one Baseline-tier ClusterNetworkPolicy for the plan
    selectors   label selectors, and the volatile labels that never belong in one
    peers       target ports, pod and address peers, special addresses, cluster DNS, exposures
    addresses   IP addresses as text: checked, normalized, parsed, sorted
    evaluation  NetworkPolicy semantics: what does a set of policies allow?
    clusterpolicies  ClusterNetworkPolicy semantics and the tiers (Admin, NetworkPolicy, Baseline)
    ciliumsemantics  CiliumNetworkPolicy semantics, compiled into evaluation's policies
    fqdnselectors  Cilium's DNS name selectors (matchName, matchPattern): matching, and names →
                selectors
    cilium      the plan → CiliumNetworkPolicies (``analyse --format cilium``)
    verifying   observed connections and a policy set → verify's and diff's reports
    replaying   the graph and the snapshot → the facts evaluation works on
    reviewing   what report.html shows: each connection's flows and rules, unobserved allowances
    rendering   policies, graph and facts → YAML, DOT, Markdown, HTML (the only jinja2 import)
    texts       Kubernetes name rules, and any text from input made inert for an output

Files (``snapshot`` and ``policysets`` parse plain data; their ``load_*`` functions read files):
    sources     capture files → (timestamp, linktype, bytes) records
    reading     capture files → traffic, on every core (or through a ``CaptureMap``)
    spilling    a day's conversations merged in parts on disk, and its flows kept there
    distributing  the map step of reading on a Dask cluster (the only Dask import; optional)
    bundles     a bundle directory (kernel.bundles' format) → manifest, snapshot, captures, damage
    documents   JSON and YAML text → values, with bounded work (no YAML aliases, nesting capped)
    snapshot    snapshot.json, pod IP history and meta.json → the views, indexed
    policysets  policy files → a policy set
    analysing   the whole pipeline; ``write_output`` is the only writer of analyse's output
    windows     several bundles (capture windows) → one analysis, each bundle resolved on its own

Each module imports only those below it in the layers of ``pyproject.toml`` (import-linter).

The cluster is the ``collector`` package's business, the command line the ``cli`` package's.

Errors are one tree, in ``kernel.errors`` (shared by every package), re-exported here. The public
surface is listed in ``__all__``; everything else is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from analyser.evaluation import (
        Address,
        ContainerPort,
        Denial,
        Direction,
        PolicySet,
        PortSet,
        pod,
    )
    from analyser.flows import Endpoint, Evidence, Flow, Protocol
    from analyser.identities import Resolver
    from analyser.peers import SpecialAddress
    from analyser.policies import DefaultDeny, Policy, synthesize
    from analyser.policysets import load_policies
    from analyser.snapshot import Snapshot, load_snapshot
    from analyser.workloads import Workload, WorkloadRef
    from kernel.errors import (
        BundleError,
        CaptureError,
        CollectError,
        NetpolSnifferError,
        PolicyError,
        SnapshotError,
        UnsafePolicies,
    )

# Where each public name lives. They are imported on first use (PEP 562): a reader process, the
# webhook and short commands import only the modules they need, not evaluation, identities,
# policies and YAML with them (0.07 CPU-seconds per process, see docs/captures.md).
_EXPORTS = {
    "kernel.errors": (
        "BundleError",
        "CaptureError",
        "CollectError",
        "NetpolSnifferError",
        "PolicyError",
        "SnapshotError",
        "UnsafePolicies",
    ),
    "analyser.evaluation": (
        "Address",
        "ContainerPort",
        "Denial",
        "Direction",
        "PolicySet",
        "PortSet",
        "pod",
    ),
    "analyser.flows": ("Endpoint", "Evidence", "Flow", "Protocol"),
    "analyser.identities": ("Resolver",),
    "analyser.workloads": ("Workload", "WorkloadRef"),
    "analyser.peers": ("SpecialAddress",),
    "analyser.policies": ("DefaultDeny", "Policy", "synthesize"),
    "analyser.policysets": ("load_policies",),
    "analyser.snapshot": ("Snapshot", "load_snapshot"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

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
    "SpecialAddress",
    "UnsafePolicies",
    "Workload",
    "WorkloadRef",
    "load_policies",
    "load_snapshot",
    "pod",
    "synthesize",
]


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'analyser' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
