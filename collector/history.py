"""The pod IP history of a capture window: a pod watch → ``pod-ips.jsonl`` lines (an expired
watch is resumed by listing again and diffing)."""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from analyser.objects import OwnerReference, controller_of, owner_references, pod_ips
from collector.kinds import PODS, Cluster, KubeObject
from collector.kube import server_message
from kernel.errors import CollectError
from kernel.times import rfc3339

log = logging.getLogger(__name__)

_WATCH_CHUNK_S = 300  # the longest single watch request; the API server may end it sooner


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def controller(obj: KubeObject) -> OwnerReference | None:
    """The object's controller (``analyser.objects.controller_of``)."""
    return controller_of(owner_references(obj))


@dataclass
class PodIPHistory:
    """Turns pod lists and watch events into ``pod-ips.jsonl`` lines: one per change of a pod's
    IPs (first seen with IPs, or given its first IPs: ``ADDED``; changed: ``MODIFIED``; gone:
    ``DELETED`` with the IPs it released). A pod first seen in a list is dated by its
    ``status.startTime`` (its IPs are that old at most); everything else by when the change
    was observed."""

    sink: TextIO
    clock: Callable[[], datetime.datetime] = utc_now
    known: dict[str, tuple[tuple[str, ...], KubeObject]] = field(default_factory=dict)
    lines: int = 0

    def _write(self, event: str, pod: KubeObject, ips: Sequence[str], moment: str) -> None:
        metadata = pod.get("metadata") or {}
        owner = controller(pod)
        line = {
            "time": moment,
            "event": event,
            "namespace": metadata.get("namespace"),
            "pod": metadata.get("name"),
            "uid": metadata.get("uid"),
            "ips": list(ips),
            "labels": metadata.get("labels") or {},
            "owner": None if owner is None else {"kind": owner.kind, "name": owner.name},
        }
        node = (pod.get("spec") or {}).get("nodeName")
        if node:  # which node's capture saw the pod, once it is gone from the snapshot
            line["node"] = node
        self.sink.write(json.dumps(line, sort_keys=True) + "\n")
        self.lines += 1

    def observe(self, event: str, pod: KubeObject, *, from_list: bool = False) -> None:
        uid = (pod.get("metadata") or {}).get("uid", "")
        now = rfc3339(self.clock().timestamp())
        previous = self.known.get(uid)
        if event == "DELETED":
            self.known.pop(uid, None)
            if previous is not None and previous[0]:
                self._write("DELETED", pod, previous[0], now)
            return
        ips = pod_ips(pod)
        self.known[uid] = (ips, pod)
        if not (previous and previous[0]):
            if ips:
                started = (pod.get("status") or {}).get("startTime")
                self._write("ADDED", pod, ips, started if from_list and started else now)
        elif ips != previous[0]:
            self._write("MODIFIED", pod, ips, now)

    def resync(self, pods: Iterable[KubeObject]) -> None:
        """A fresh list (start, or after the watch expired): report what changed meanwhile."""
        seen = set()
        for pod in pods:
            seen.add((pod.get("metadata") or {}).get("uid", ""))
            self.observe("MODIFIED", pod, from_list=True)
        for uid in sorted(set(self.known) - seen):
            self.observe("DELETED", self.known[uid][1])


def record_pod_ips(
    cluster: Cluster, history: PodIPHistory, *, duration: float, progress: Callable[[], None]
) -> None:
    """List pods, then watch them until ``duration`` seconds have passed, resuming on expiry."""
    deadline = time.monotonic() + duration
    listed = cluster.list(PODS)
    history.resync(listed.get("items") or [])
    resource_version = (listed.get("metadata") or {}).get("resourceVersion", "")
    while (remaining := deadline - time.monotonic()) >= 1:
        timeout = int(min(remaining, _WATCH_CHUNK_S))
        events = cluster.watch(PODS, resource_version=resource_version, timeout_seconds=timeout)
        quiet = True
        for event in events:
            quiet = False
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") != 410:
                    raise CollectError(f"watching pods failed: {server_message(json.dumps(obj))}")
                log.info("pod watch expired; listing again")
                listed = cluster.list(PODS)
                history.resync(listed.get("items") or [])
                resource_version = (listed.get("metadata") or {}).get("resourceVersion", "")
                break
            resource_version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
            if kind in {"ADDED", "MODIFIED", "DELETED"}:
                history.observe(str(kind), obj)
            progress()
            if time.monotonic() >= deadline:
                break
        if quiet:  # a watch that ends at once, again and again, must not spin
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
