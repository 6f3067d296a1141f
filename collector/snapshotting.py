"""The snapshot: every snapshot kind listed in all namespaces, as ``kubectl get -o json``
prints them (``apiVersion``/``kind`` set on each item, ``managedFields`` dropped)."""

from __future__ import annotations

from collector.kinds import SNAPSHOT_KINDS, Cluster, Kind, KubeObject


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
    """A v1 List of every snapshot kind in all namespaces, in a stable order."""
    items = []
    for kind in SNAPSHOT_KINDS:
        listed = cluster.list(kind).get("items") or []
        items += [snapshot_item(kind, item) for item in sorted(listed, key=_item_key)]
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}
