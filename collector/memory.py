"""A cluster in memory: the collector's :class:`~collector.kinds.Cluster` over plain dicts, like
httpx's ``MockTransport``. Tests (and anyone trying collect or uninstall-sidecars without a
cluster) hold the objects, script what a pod watch delivers, deny verbs to see RBAC errors, and
plug in how exec runs. Type-checked against the same protocol as the real cluster."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from collector.kinds import Kind, KubeObject
from collector.kube import translate_status
from collector.pulling import Frame
from kernel.errors import CollectError

ExecHandler = Callable[..., AbstractContextManager[Iterable[Frame]]]
"""How exec runs: called with ``namespace``, ``pod``, ``container`` and ``command`` (keywords);
returns the frames the API server would send (``collector.pulling.Frame``)."""


class MemoryCluster:
    """Objects by kind (``{"Pod": [...], "Namespace": [...]}``), copied in and out.

    ``watch_scripts`` are played one per watch call (their events change the Pods they name, an
    ``ERROR`` event calls ``on_expiry``: what changes while a watch is expired); ``patches``
    records every merge patch; ``denied`` holds ``(verb, resource)`` pairs RBAC refuses, as the
    API server would; ``unserved`` the resources it does not serve (a CRD not installed: 404);
    ``exec_handler`` runs exec (none: exec is refused).
    """

    def __init__(
        self,
        objects: Mapping[str, Sequence[KubeObject]],
        *,
        exec_handler: ExecHandler | None = None,
    ) -> None:
        self.objects: dict[str, list[KubeObject]] = {
            kind: copy.deepcopy(list(items)) for kind, items in objects.items()
        }
        self.watch_scripts: list[list[KubeObject]] = []
        self.patches: list[tuple[str, str, str | None, Mapping[str, Any]]] = []
        self.exec_handler = exec_handler
        self.denied: set[tuple[str, str]] = set()
        self.unserved: set[str] = set()
        self.on_expiry: Callable[[], None] | None = None

    def _check(self, verb: str, kind: Kind, namespace: str | None) -> None:
        if (verb, kind.resource) in self.denied:
            raise translate_status(
                403, None, verb=verb, resource=kind.resource, namespace=namespace
            )
        if kind.resource in self.unserved:
            raise translate_status(
                404, None, verb=verb, resource=kind.resource, namespace=namespace
            )

    def list(
        self, kind: Kind, *, namespace: str | None = None, label_selector: str | None = None
    ) -> KubeObject:
        """Equality selectors (``key=value``) only: what collect asks."""
        self._check("list", kind, namespace)
        items = [
            item
            for item in self.objects.get(kind.kind, [])
            if namespace is None or item["metadata"].get("namespace") == namespace
        ]
        if label_selector:
            key, _, value = label_selector.partition("=")
            items = [i for i in items if (i["metadata"].get("labels") or {}).get(key) == value]
        return {"metadata": {"resourceVersion": "100"}, "items": copy.deepcopy(items)}

    def get(self, kind: Kind, name: str, *, namespace: str | None = None) -> KubeObject:
        self._check("get", kind, namespace)
        for item in self.objects.get(kind.kind, []):
            if item["metadata"]["name"] == name and item["metadata"].get("namespace") == namespace:
                return copy.deepcopy(item)
        raise translate_status(
            404, None, verb="get", resource=kind.resource, namespace=namespace, name=name
        )

    def watch(
        self, kind: Kind, *, resource_version: str, timeout_seconds: int
    ) -> Iterator[KubeObject]:
        script = self.watch_scripts.pop(0) if self.watch_scripts else []
        for event in script:
            if event["type"] in {"ADDED", "MODIFIED", "DELETED"}:
                self._apply(event)
            elif event["type"] == "ERROR" and self.on_expiry is not None:
                self.on_expiry()
            yield event

    def _apply(self, event: KubeObject) -> None:
        obj = event["object"]
        pods = self.objects.setdefault("Pod", [])
        pods[:] = [p for p in pods if p["metadata"]["uid"] != obj["metadata"]["uid"]]
        if event["type"] != "DELETED":
            pods.append(obj)

    def patch(
        self, kind: Kind, name: str, patch: Mapping[str, Any], *, namespace: str | None = None
    ) -> None:
        self._check("patch", kind, namespace)
        self.patches.append((kind.kind, name, namespace, patch))

    def exec(
        self, *, namespace: str, pod: str, container: str, command: Sequence[str]
    ) -> AbstractContextManager[Iterable[Frame]]:
        if ("create", "pods/exec") in self.denied:
            raise translate_status(
                403, None, verb="create", resource="pods/exec", namespace=namespace, name=pod
            )
        if self.exec_handler is None:
            raise CollectError(f"exec into {namespace}/{pod}: this memory cluster runs no exec")
        return self.exec_handler(namespace=namespace, pod=pod, container=container, command=command)
