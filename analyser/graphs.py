"""The who-talks-to-whom graph: flows + identities → a networkx DiGraph of workloads and
endpoints outside the cluster. The only module that imports networkx.

Schema (a contract for policies, rendering, verify and the report):

- Edges point from client to server.
- Node ids (str): ``"NS/Kind/name"`` for a workload (``WorkloadRef.__str__``), ``"ip:ADDRESS"``
  for an address outside the cluster, ``"node:NAME"`` for a node, ``"unresolved:ADDRESS"`` for an
  in-cluster address that matched nothing known at the time.
- Node attributes: ``role`` (a :class:`NodeRole`), ``label`` (display text), ``workload``
  (:class:`~analyser.identities.Workload` or None), ``names`` (tuple of DNS names seen for the
  address, sorted), ``in_scope`` (bool: its pods were captured, so it gets a policy).
- Edge attribute ``ports``: ``dict[PortSpec, EdgeStats]``, keyed by the *target* port.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from analyser.flows import Evidence


class NodeRole(StrEnum):
    WORKLOAD = "workload"
    EXTERNAL = "external"
    NODE = "node"
    UNRESOLVED = "unresolved"


@dataclass(frozen=True, slots=True)
class EdgeStats:
    """What was observed on one edge for one target port."""

    flows: int
    packets: int
    bytes: int
    first_seen: float
    last_seen: float
    evidence: frozenset[Evidence]
