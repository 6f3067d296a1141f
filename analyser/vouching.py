"""Vouching: which side of a flow the captures speak for.

A capture comes from inside a pod, and that pod controls every byte of it. Flows in which the
pod is neither end are dropped as foreign while reading; the flows it keeps are its own word
about its own side only. So each side of a flow is *vouched for* by the captures at that side,
and a policy's rule comes only from flows vouched for at its own workload's side:

- a capture whose vantage point is the pod at that end saw the flow (the pod's own capture, a
  loose file tied to that pod, a node's capture for the pods on that node), or
- nothing could have vouched: that end was no pod (an address outside the cluster, a node, an
  unresolved address), or its pod had no capture covering that moment: it was not captured at
  all (an uncaptured workload or replica, a Service backend assumed because its pod's capture is
  missing), or the flow came before its capture's first retained packet (a ring that rotated, a
  sidecar that started later), with :data:`~analyser.graphs.TWIN_WINDOW` for clock skew.

A pod whose capture ran at the time and did not see the flow says it did not happen: the other
side's capture alone cannot give it an ingress (or egress) rule. And a flow claimed at a time
before the pod existed (a forged timestamp older than every input) is never excused.

Pure: capture paths, vantage points and times in, verdicts out; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping

from analyser.graphs import ALWAYS, TWIN_WINDOW, Span
from analyser.identities import Identity, Resolver, Vantage
from analyser.sources import CaptureReport


class Witnesses:
    """Where each capture file was taken and since when each vantage point was captured: asks
    whether a side of a flow is vouched for (:meth:`vouches`, ``graphs.Witness``)."""

    def __init__(
        self,
        vantages: Mapping[str, Iterable[Vantage]],
        reports: Iterable[CaptureReport],
        resolver: Resolver,
    ) -> None:
        """``vantages``: capture file (bundle-relative) → where it was taken (a pod's own
        capture, a loose file tied to a pod or a node); files without one vouch for nobody.
        ``reports``: what reading each file gave (``CaptureReport.first_seen``)."""
        self._vantages = {capture: frozenset(found) for capture, found in vantages.items()}
        self._resolver = resolver
        # Each node's captures, by the node: they vouch for its pods (in the namespaces each
        # speaks for).
        self._nodes: dict[str, set[Vantage]] = {}
        for found in self._vantages.values():
            for vantage in found:
                if vantage.node:
                    self._nodes.setdefault(vantage.node, set()).add(vantage)
        first = {
            report.path: report.first_seen for report in reports if report.ok or report.packets
        }
        since: dict[Vantage, float] = {}
        for capture, found in self._vantages.items():
            if capture not in first:
                continue  # missing or unreadable: it says nothing
            for vantage in found:
                since.setdefault(vantage, math.inf)
                seen = first[capture]
                if seen is not None:
                    since[vantage] = min(since[vantage], seen)
        # Read, and not one packet of a flow in any file of it: the capture ran and saw nothing,
        # so it covers all of its time.
        self._since = {v: -math.inf if at == math.inf else at for v, at in since.items()}

    def _own(self, identity: Identity) -> frozenset[Vantage]:
        """The vantage points that capture ``identity``'s traffic: its pod, and its node's
        captures that speak for its namespace."""
        pod = identity.pod
        assert pod is not None
        own = {Vantage(pod.namespace, pod.name)}
        node = self._resolver.node_of(identity)
        if node:
            own.update(v for v in self._nodes.get(node, ()) if v.speaks_for(pod.namespace))
        return frozenset(own)

    def captured_since(self, identity: Identity) -> float:
        """Since when ``identity``'s pod was captured: the first retained packet of a capture
        at one of its vantage points (``-inf``: a capture that saw nothing at all; ``inf``: none
        was read)."""
        if identity.pod is None:
            return math.inf
        return min((self._since.get(v, math.inf) for v in self._own(identity)), default=math.inf)

    def vouches(self, identity: Identity, at: float, captures: Collection[str]) -> bool:
        """Whether the side of a flow that was ``identity`` at ``at``, seen by the capture files
        ``captures``, is vouched for: a capture at that side saw it, or none could have (see the
        module's docstring)."""
        return at in self.span(identity, captures)

    def span(self, identity: Identity, captures: Collection[str]) -> Span:
        """When the side of a flow that was ``identity``, seen by ``captures``, is vouched for
        (:meth:`vouches` at any time in it): always when a capture at that side saw it or that
        side is no pod; else from when the pod existed until its own capture ran (and did not
        see it)."""
        if identity.pod is None:
            return ALWAYS
        own = self._own(identity)
        if any(not own.isdisjoint(self._vantages.get(c, ())) for c in captures):
            return ALWAYS
        return Span(
            self._resolver.existed_since(identity.pod),
            self.captured_since(identity) + TWIN_WINDOW,
        )
