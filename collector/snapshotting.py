"""The snapshot: every snapshot kind listed in all namespaces, as ``kubectl get -o json``
prints them (``apiVersion``/``kind`` set on each item, ``managedFields`` dropped)."""

from __future__ import annotations

import logging

from collector.kinds import SNAPSHOT_KINDS, Cluster, Kind, KubeObject
from kernel.errors import NotFound

log = logging.getLogger(__name__)


def snapshot_item(kind: Kind, item: KubeObject) -> KubeObject:
    """An item as ``kubectl get -o json`` prints it inside a List."""
    cleaned: KubeObject = {"apiVersion": kind.api_version, "kind": kind.kind}
    cleaned.update((key, value) for key, value in item.items() if key not in cleaned)
    metadata: KubeObject = dict(cleaned.get("metadata") or {})
    metadata.pop("managedFields", None)
    cleaned["metadata"] = metadata
    return cleaned


def _item_key(item: KubeObject) -> tuple[str, str]:
    metadata = item.get("metadata") or {}
    return (metadata.get("namespace", ""), metadata.get("name", ""))


def take_snapshot(cluster: Cluster) -> KubeObject:
    """A v1 List of every snapshot kind in all namespaces, in a stable order. An optional kind
    the cluster does not serve (its CRD is not installed) has no objects there to list."""
    items = []
    for kind in SNAPSHOT_KINDS:
        try:
            listed = cluster.list(kind).get("items") or []
        except NotFound:
            if not kind.optional:
                raise
            log.info("%s is not served by this cluster: the snapshot holds none", kind.resource)
            continue
        items += [snapshot_item(kind, item) for item in sorted(listed, key=_item_key)]
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}
