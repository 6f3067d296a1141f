"""Claims over time: which pod held which address when.

Three inputs say it, each for its own span: the pod IP history (``pod-ips.jsonl``: a line's
addresses from its time until the pod's next line), the sidecars' ``meta.json`` (from the
capture's start on) and the snapshot's pods (from creation, or start, until deletion, or until a
completed pod's containers finished). What they say of one pod is merged into one
:class:`PodRecord`. When two claims cover the same instant, the history wins over meta.json, which
wins over the snapshot; when none covers it, the latest claim that started before it (a pod's last
packets after its deletion), else the earliest one, if it starts at most :data:`CLAIM_SKEW` later.

hostNetwork pods claim no address of their own: they are found by their node and the ports they
declare (:meth:`Claims.host_listener`). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Container, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

from analyser.addresses import parse_address
from analyser.flows import Protocol
from analyser.objects import OwnerReference, Pod, PodPort, PublishedPort
from analyser.snapshot import CaptureMeta, PodIpEvent, Snapshot

# A pod cannot have sent a packet long before it existed: an address seen this many seconds (clock
# skew between nodes and the API server, a watcher noticing an IP late) or more before the first
# claim on it belonged to someone the snapshot no longer knows.
CLAIM_SKEW = 300.0


@dataclass(frozen=True, slots=True)
class PodRecord:
    """What is known about one pod from the snapshot, the IP history and meta.json, merged."""

    namespace: str
    name: str
    uid: str
    labels: tuple[tuple[str, str], ...]
    owner: OwnerReference | None
    node: str
    host_network: bool
    # containerPorts; for hostNetwork pods they are node ports.
    ports: tuple[PodPort, ...]
    # containerPorts published on the node with hostPort.
    published: tuple[PublishedPort, ...] = ()

    @property
    def key(self) -> str:
        return self.uid or f"{self.namespace}/{self.name}"

    def port_named(self, name: str, protocol: Protocol) -> int | None:
        return next((p.port for p in self.ports if p.name == name and p.protocol is protocol), None)

    def listens(self, port: int, protocol: Protocol) -> bool:
        return any(p.port == port and p.protocol is protocol for p in self.ports)


@dataclass(frozen=True, slots=True)
class Lifetime:
    """From ``start`` until ``end`` (exclusive), in UTC epoch seconds (infinite when open)."""

    start: float
    end: float

    def covers(self, at: float) -> bool:
        return self.start <= at < self.end


def pod_lifetime(pod: Pod) -> Lifetime:
    """When the pod could hold its IPs: creation (or start) until deletion, or until its
    containers finished for a completed pod (its IP is free for reuse from then on)."""
    created = pod.meta.created or pod.started
    start = created if created else -math.inf
    end = math.inf
    if pod.meta.deleted:
        end = pod.meta.deleted
    if pod.phase in ("Succeeded", "Failed"):
        finished = [time for time in pod.finished if time]
        if finished:
            end = min(end, max(finished))
    return Lifetime(start, end)


class _Source(IntEnum):
    """Where an IP claim comes from; lower wins when two claims cover the same instant."""

    HISTORY = 0
    META = 1
    SNAPSHOT = 2


@dataclass(frozen=True, order=True, slots=True)
class _Claim:
    """Pod ``key`` held ``ip`` from ``start`` until ``end`` (exclusive), per ``source``."""

    start: float
    end: float
    source: _Source
    key: str
    ip: str


class Claims:
    """The pods the inputs know (:class:`PodRecord`, by key and by name) and the addresses each
    held when. Built once; read-only after."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        ip_history: Sequence[PodIpEvent] = (),
        captures: Sequence[CaptureMeta] = (),
        node_addresses: Container[str] = (),
    ) -> None:
        """``node_addresses``: addresses no pod claims (a hostNetwork pod the snapshot did not
        mark has its node's)."""
        self._node_addresses = node_addresses
        self._records: dict[str, PodRecord] = {}
        self._by_name: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._claims: dict[str, list[_Claim]] = defaultdict(list)
        self._add_snapshot_pods(snapshot)
        self._add_captures(captures)
        self._add_history(ip_history)
        self._claims_of: dict[str, list[_Claim]] = defaultdict(list)
        # Per address, the first claim when every claim on it is one pod's (from several sources).
        self._one_pod: dict[str, _Claim] = {}
        for ip, claims in self._claims.items():
            claims.sort()
            for claim in claims:
                self._claims_of[claim.key].append(claim)
            if all(claim.key == claims[0].key for claim in claims):
                self._one_pod[ip] = claims[0]
        # Before every pod the inputs know existed, the capture's clock and the snapshot's do not
        # tell who was who: then a claim starting later is still the best guess.
        self._known_since = min(
            (claims[0].start for claims in self._claims.values()), default=-math.inf
        )
        self._host_network: dict[str, list[PodRecord]] = defaultdict(list)
        for record in sorted(self._records.values(), key=lambda r: r.key):
            if record.host_network and record.node:
                self._host_network[record.node].append(record)

    # -- building -------------------------------------------------------------------------

    def _register(self, record: PodRecord) -> None:
        if record.key not in self._records:
            self._by_name[(record.namespace, record.name)].append(record.key)
        self._records[record.key] = record

    def _find_record(self, namespace: str, name: str, uid: str) -> PodRecord | None:
        if uid and uid in self._records:
            return self._records[uid]
        keys = self._by_name.get((namespace, name), [])
        # Without a uid, a name reused by a later pod is ambiguous: the last one registered wins.
        return self._records[keys[-1]] if keys and not uid else None

    def _claim(
        self, record: PodRecord, ips: Iterable[str], span: Lifetime, source: _Source
    ) -> None:
        if record.host_network:
            return
        for ip in ips:
            if ip in self._node_addresses:
                continue  # a node's address: a hostNetwork pod the snapshot did not mark
            self._claims[ip].append(_Claim(span.start, span.end, source, record.key, ip))

    def _add_snapshot_pods(self, snapshot: Snapshot) -> None:
        for pod in snapshot.pods:
            record = PodRecord(
                namespace=pod.namespace,
                name=pod.name,
                uid=pod.uid,
                labels=tuple(sorted(pod.labels.items())),
                owner=pod.owner,
                node=pod.node_name,
                host_network=pod.host_network,
                ports=pod.spec.ports,
                published=pod.spec.published,
            )
            self._register(record)
            self._claim(record, pod.ips, pod_lifetime(pod), _Source.SNAPSHOT)

    def _merged(
        self,
        namespace: str,
        name: str,
        uid: str,
        *,
        labels: tuple[tuple[str, str], ...],
        owner: OwnerReference | None,
        node: str = "",
    ) -> PodRecord:
        """The known record for this pod with what a history line or meta.json adds to it,
        or a new record."""
        known = self._find_record(namespace, name, uid)
        if known is None:
            record = PodRecord(namespace, name, uid, labels, owner, node, False, ())
        else:
            # The uid stays as it was: it is the record's key, which claims refer to.
            record = replace(
                known,
                labels=known.labels or labels,
                owner=known.owner or owner,
                node=known.node or node,
            )
        self._register(record)
        return record

    def _add_captures(self, captures: Sequence[CaptureMeta]) -> None:
        for capture in captures:
            record = self._merged(
                capture.namespace,
                capture.pod,
                capture.uid,
                labels=capture.labels,
                owner=capture.owner,
                node=capture.node,
            )
            start = -math.inf if capture.start_time is None else capture.start_time
            self._claim(record, capture.ips, Lifetime(start, math.inf), _Source.META)

    def _add_history(self, events: Sequence[PodIpEvent]) -> None:
        by_pod: dict[str, list[PodIpEvent]] = defaultdict(list)
        for event in sorted(events, key=lambda e: e.time):
            record = self._merged(
                event.namespace,
                event.pod,
                event.uid,
                labels=event.labels,
                owner=event.owner,
                node=event.node,
            )
            by_pod[record.key].append(event)
        for key, pod_events in by_pod.items():
            record = self._records[key]
            for event, following in zip(pod_events, [*pod_events[1:], None], strict=True):
                if event.deleted:
                    continue
                end = following.time if following is not None else math.inf
                self._claim(record, event.ips, Lifetime(event.time, end), _Source.HISTORY)

    # -- pods -------------------------------------------------------------------------------

    @property
    def records(self) -> Collection[PodRecord]:
        """Every pod the inputs know, the snapshot's first, in the order they became known."""
        return self._records.values()

    def record(self, key: str) -> PodRecord | None:
        """The pod of :attr:`PodRecord.key` ``key``."""
        return self._records.get(key)

    def named(self, namespace: str, name: str) -> list[PodRecord]:
        """The pods of that name (a name reused by a later pod: each), in the order they became
        known."""
        return [self._records[key] for key in self._by_name.get((namespace, name), ())]

    def host_listener(self, node: str, port: int, protocol: Protocol) -> PodRecord | None:
        """The hostNetwork pod on ``node`` that declares ``port``/``protocol``, if any."""
        return next(
            (r for r in self._host_network.get(node, []) if r.listens(port, protocol)), None
        )

    # -- addresses over time ----------------------------------------------------------------

    @property
    def claimed(self) -> Collection[str]:
        """Every address some pod claims at some time."""
        return self._claims.keys()

    def holder(self, ip: str, at: float) -> PodRecord | None:
        """The pod that held ``ip`` (normalized) at ``at``; None when no pod the inputs know
        could have."""
        claims = self._claims.get(ip)
        if not claims:
            return None
        covering = [c for c in claims if c.start <= at < c.end]
        if covering:
            best = min(covering, key=lambda c: (c.source, -c.start))
        else:
            earlier = [c for c in claims if c.start <= at]
            if earlier:
                best = max(earlier, key=lambda c: (c.start, -c.source))
            elif self._may_precede(claims[0], at):
                best = claims[0]
            else:
                return None  # before any pod the snapshot knows had it: a pod deleted since
        return self._records[best.key]

    def timeless(self, ip: str, at: float) -> bool:
        """Whether who held ``ip`` at ``at`` is who held it at any time from then on: at most one
        pod ever claims it (and ``at`` is not long before its first claim). A pod's claims from
        several sources (the history, the snapshot, meta.json) are one pod's."""
        first = self._one_pod.get(ip)
        if first is None:
            return ip not in self._claims
        return self._may_precede(first, at)

    def _may_precede(self, claim: _Claim, at: float) -> bool:
        """Whether a packet at ``at`` may still be the claim's pod although the claim starts
        later: clock skew, or a capture older than everything the inputs know."""
        return claim.start - at <= CLAIM_SKEW or at < self._known_since

    def address_of(self, record: PodRecord, at: float, version: int | None = None) -> str:
        """The pod's address at ``at``, of IP ``version`` when it has one (dual-stack pods)."""
        claims = self._claims_of.get(record.key, [])
        if version is not None:
            claims = [c for c in claims if parse_address(c.ip).version == version] or claims
        covering = [c for c in claims if c.start <= at < c.end]
        earlier = covering or [c for c in claims if c.start <= at]
        if earlier:
            return max(earlier, key=lambda c: c.start).ip
        return claims[0].ip if claims else ""

    def addresses_of(self, record: PodRecord) -> tuple[str, ...]:
        """Every address the pod claims at some time."""
        return tuple(claim.ip for claim in self._claims_of.get(record.key, ()))

    def lifetime(self, record: PodRecord) -> Lifetime | None:
        """From the pod's first claim to the end of its last; None when it claims nothing."""
        claims = self._claims_of.get(record.key)
        if not claims:
            return None
        return Lifetime(min(c.start for c in claims), max(c.end for c in claims))
