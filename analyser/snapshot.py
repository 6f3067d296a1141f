"""The cluster snapshot: ``kubectl get -o json`` output, pod IP history and the sidecar's
``meta.json`` files, loaded and indexed.

Each object of a kind the analyser uses becomes its typed view (:mod:`analyser.objects`: reading
it checks it, and it keeps its JSON as ``raw``); :class:`Snapshot` indexes the views (by
kind/name and uid, pods by IP, Services by address, nodes by address). The ``load_*`` functions
are the only file I/O here; the ``parse_*`` functions do the work on plain data.

Accepted snapshot shapes: a ``v1 List`` (``kubectl get ... -o json``), a typed list from the API
(``PodList``, whose items carry no ``kind``), a single object, a List of Lists, YAML of the same,
or a folder of such ``.json``/``.yaml``/``.yml`` files. Kinds the analyser does not use are
ignored. Anything unusable raises :class:`~kernel.errors.SnapshotError` naming the file (and
line, for JSON Lines), the object and what is wrong. Files are parsed with bounded work
(:mod:`analyser.documents`): YAML aliases are refused and nesting is capped.
"""

from __future__ import annotations

import codecs
import datetime as dt
import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

from analyser.addresses import is_ip, normalize_ip
from analyser.documents import DocumentError, json_value, json_values, yaml_values
from analyser.objects import (
    CLUSTER_SCOPED_KINDS,
    KIND,
    KINDS,
    LABELS,
    NAMESPACE_NAME,
    OBJECT_NAME,
    Controller,
    Endpoints,
    EndpointSlice,
    KubeObject,
    Node,
    OwnerReference,
    Pod,
    ReferenceGrant,
    Route,
    Service,
    TextRule,
    bad_label,
    owner_of,
    read_object,
)
from analyser.texts import inert
from kernel.errors import SnapshotError
from kernel.times import parse_timestamp

# ---------------------------------------------------------------------------------------------
# Parsing documents into objects.

_Fail = Callable[[str, str, object], NoReturn]


def _yaml_plain(value: object) -> object:
    """YAML turns unquoted timestamps into datetimes; JSON shapes want text."""
    if isinstance(value, dict):
        return {k: _yaml_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _without_nulls(value: Any) -> Any:
    """The API server (and ``kubectl get -o json``) writes ``null`` for empty Go slices and
    maps, e.g. an EndpointSlice without endpoints: null means absent, so drop those keys."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _flatten(
    document: object, *, source: str, where: str, item_kind: str | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(document, dict):
        raise SnapshotError(
            f"{source}: {where or 'document'}: expected an object, got {type(document).__name__}"
        )
    kind = document.get("kind", item_kind)
    if "items" in document and (kind is None or (isinstance(kind, str) and kind.endswith("List"))):
        items = document["items"]
        if not isinstance(items, list):
            raise SnapshotError(f"{source}: {where or 'document'}: items must be a list")
        # The API's typed lists (PodList) leave kind off their items.
        inner = kind.removesuffix("List") or None if isinstance(kind, str) else None
        for index, item in enumerate(items):
            path = f"{where}.items[{index}]" if where else f"items[{index}]"
            yield from _flatten(item, source=source, where=path, item_kind=inner)
        return
    if not isinstance(kind, str) or not kind:
        raise SnapshotError(f"{source}: {where or 'document'}: no kind")
    yield where or "document", {**document, "kind": kind}


def parse_snapshot_documents(documents: Iterable[object], *, source: str) -> list[KubeObject]:
    """The views of the objects of the kinds the analyser uses, in document order."""
    objects: list[KubeObject] = []
    for number, document in enumerate(documents):
        if document is None:  # an empty YAML document
            continue
        prefix = f"document[{number}]" if number else ""
        for where, obj in _flatten(document, source=source, where=prefix, item_kind=None):
            kind = obj["kind"]
            if kind not in KINDS:
                continue
            obj = _without_nulls(obj)
            meta = obj.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            if not isinstance(name, str) or not name:
                raise SnapshotError(f"{source}: {where}: {kind} without metadata.name")
            label = f"{where} ({kind} {inert(_display_name(obj))})"  # not checked yet
            if kind not in CLUSTER_SCOPED_KINDS and "namespace" not in obj["metadata"]:
                obj = {**obj, "metadata": {**obj["metadata"], "namespace": "default"}}
            objects.append(read_object(obj, fail=_failing(source, label)))
    return objects


def _failing(source: str, where: str) -> _Fail:
    def fail(path: str, expected: str, value: object) -> NoReturn:
        raise SnapshotError(f"{source}: {where}: {path} must be {expected}, got {value!r:.60}")

    return fail


def _display_name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


def _decode(data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark), or UTF-16 with one (what PowerShell's ``>``
    writes)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    return data.decode("utf-8-sig")


def _read_documents(path: Path) -> list[object]:
    """The documents of one snapshot file: JSON (several one after the other allowed, as
    ``kubectl get pods -o json >> f`` appends them) or YAML, parsed with bounded work
    (:mod:`analyser.documents`: no YAML aliases, nesting capped)."""
    try:
        text = _decode(path.read_bytes())
    except (OSError, UnicodeDecodeError) as error:
        raise SnapshotError(f"{path}: cannot read: {error}") from error
    if not text.strip():
        raise SnapshotError(f"{path}: empty file")
    try:
        # `kubectl get -o yaml` saved as snapshot.json is YAML all the same: JSON starts with {
        # or [.
        if path.suffix.lower() in (".yaml", ".yml") or text.lstrip()[0] not in "{[":
            return [_yaml_plain(d) for d in yaml_values(text)]
        return json_values(text)
    except DocumentError as error:
        raise SnapshotError(f"{path}: {error}") from None


SNAPSHOT_SUFFIXES = (".json", ".yaml", ".yml")


def load_snapshot(path: Path) -> Snapshot:
    """A snapshot file, or a folder of them (its ``.json``/``.yaml``/``.yml`` files, sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SNAPSHOT_SUFFIXES)
        if not files:
            raise SnapshotError(f"{path}: no .json or .yaml files in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise SnapshotError(f"{path}: no such file or folder")
    objects: list[KubeObject] = []
    for file in files:
        objects += parse_snapshot_documents(_read_documents(file), source=str(file))
    return Snapshot(objects)


# ---------------------------------------------------------------------------------------------
# Pod IP history and capture metadata.


@dataclass(frozen=True, slots=True)
class PodIpEvent:
    """One line of ``pod-ips.jsonl``: from ``time`` on, the pod has ``ips`` (none once deleted)."""

    time: float
    event: str  # ADDED, MODIFIED, DELETED (watch event types; any case)
    namespace: str
    pod: str
    uid: str
    ips: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    owner: OwnerReference | None
    node: str = ""  # the node the pod ran on, when the line says it

    @property
    def deleted(self) -> bool:
        return self.event.upper() in ("DELETED", "DELETE")


@dataclass(frozen=True, slots=True)
class CaptureMeta:
    """A sidecar's ``meta.json``: which pod a capture folder belongs to."""

    namespace: str
    pod: str
    uid: str
    ips: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    node: str
    start_time: float | None
    owner: OwnerReference | None
    source: str  # the meta.json path, for messages


@dataclass(frozen=True, slots=True)
class NodeCaptureMeta:
    """A node capture's ``meta.json`` (``captures/_node/NODE/``): the node, its addresses and
    the pod networks its capture was filtered to (none: not filtered)."""

    node: str
    ips: tuple[str, ...]
    pod_networks: tuple[str, ...]
    start_time: float | None
    source: str  # the meta.json path, for messages


def _owner_hint(value: object, *, where: str) -> OwnerReference | None:
    """``{"kind", "name"[, "uid"]}`` (an ownerReference), a list of them (the one
    :func:`~analyser.objects.owner_of` picks), or ``"Kind/name"``."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        references = [_owner_hint(v, where=where) for v in value if isinstance(v, dict)]
        return owner_of([reference for reference in references if reference is not None])
    kind: object
    name: object
    uid: object
    if isinstance(value, str) and value.count("/") == 1:
        kind, name = value.split("/")
        uid = ""
    elif isinstance(value, dict):
        kind, name, uid = value.get("kind"), value.get("name"), value.get("uid", "")
    else:
        raise SnapshotError(
            f"{where}: owner must be an ownerReference or 'Kind/name', got {value!r:.60}"
        )
    for field_name, text, rule in (("kind", kind, KIND), ("name", name, OBJECT_NAME)):
        if not (isinstance(text, str) and rule.holds(text)):
            raise SnapshotError(
                f"{where}: owner {field_name} must be {rule.says}, got {text!r:.60}"
            )
    if not isinstance(uid, str):
        raise SnapshotError(f"{where}: owner uid must be a string")
    controller = isinstance(value, dict) and value.get("controller") is True
    return OwnerReference(kind=str(kind), name=str(name), uid=uid, controller=controller)


def _labels(value: object, *, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise SnapshotError(f"{where}: labels must be {LABELS}")
    bad = bad_label(value)
    if bad is not None:
        raise SnapshotError(
            f"{where}: labels[{bad.key!r:.60}] must be {bad.expected}, got {bad.value!r:.60}"
        )
    return tuple(sorted(cast(dict[str, str], value).items()))


def _ips(value: object, *, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and is_ip(v) for v in value):
        raise SnapshotError(f"{where}: ips must be a list of IP addresses, got {value!r:.80}")
    return tuple(normalize_ip(v) for v in value)


def _required_name(record: Mapping[str, object], key: str, rule: TextRule, *, where: str) -> str:
    """``record[key]``, which must follow ``rule`` (an object or namespace name)."""
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise SnapshotError(f"{where}: {key!r} must be a non-empty string")
    if not rule.holds(value):
        raise SnapshotError(f"{where}: {key!r} must be {rule.says}, got {value!r:.60}")
    return value


def _time(value: object, *, where: str, key: str) -> float:
    try:
        return parse_timestamp(value)
    except ValueError as error:
        raise SnapshotError(f"{where}: {key!r} is not a timestamp: {value!r}") from error


def parse_pod_ip_history(lines: Iterable[str], *, source: str) -> list[PodIpEvent]:
    """``pod-ips.jsonl`` lines → events sorted by time (blank lines skipped)."""
    events: list[PodIpEvent] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json_value(line)
        except DocumentError as error:
            raise SnapshotError(f"{where}: {error}") from None
        if not isinstance(record, dict):
            raise SnapshotError(f"{where}: expected an object")
        uid = record.get("uid") or ""
        if not isinstance(uid, str):
            raise SnapshotError(f"{where}: 'uid' must be a string")
        event = record.get("event") or "MODIFIED"
        if not isinstance(event, str):
            raise SnapshotError(f"{where}: 'event' must be a string")
        node = record.get("node") or ""
        if not isinstance(node, str) or (node and not OBJECT_NAME.holds(node)):
            raise SnapshotError(f"{where}: 'node' must be {OBJECT_NAME.says}, got {node!r:.60}")
        events.append(
            PodIpEvent(
                time=_time(record.get("time"), where=where, key="time"),
                event=event,
                namespace=_required_name(record, "namespace", NAMESPACE_NAME, where=where),
                pod=_required_name(record, "pod", OBJECT_NAME, where=where),
                uid=uid,
                ips=_ips(record.get("ips"), where=where),
                labels=_labels(record.get("labels"), where=where),
                owner=_owner_hint(record.get("owner"), where=where),
                node=node,
            )
        )
    events.sort(key=lambda e: (e.time, e.namespace, e.pod, e.uid))
    return events


def load_pod_ip_history(path: Path) -> list[PodIpEvent]:
    try:
        with path.open(encoding="utf-8-sig") as lines:
            return parse_pod_ip_history(lines, source=str(path))
    except (OSError, UnicodeDecodeError) as error:
        raise SnapshotError(f"{path}: cannot read: {error}") from error


def parse_capture_meta(record: object, *, source: str) -> CaptureMeta:
    """A ``meta.json`` document: ``pod``, ``namespace`` (required), ``uid``, ``ips``,
    ``labels``, ``node``, ``start_time`` (RFC 3339 or epoch seconds), ``owner``."""
    if not isinstance(record, dict):
        raise SnapshotError(f"{source}: expected an object")
    start = record.get("start_time")
    uid, node = record.get("uid") or "", record.get("node") or ""
    if not isinstance(uid, str) or not isinstance(node, str):
        raise SnapshotError(f"{source}: 'uid' and 'node' must be strings")
    if node and not OBJECT_NAME.holds(node):
        raise SnapshotError(f"{source}: 'node' must be {OBJECT_NAME.says}, got {node!r:.60}")
    return CaptureMeta(
        namespace=_required_name(record, "namespace", NAMESPACE_NAME, where=source),
        pod=_required_name(record, "pod", OBJECT_NAME, where=source),
        uid=uid,
        ips=_ips(record.get("ips"), where=source),
        labels=_labels(record.get("labels"), where=source),
        node=node,
        start_time=None if start is None else _time(start, where=source, key="start_time"),
        owner=_owner_hint(record.get("owner"), where=source),
        source=source,
    )


def _networks(value: object, *, where: str) -> tuple[str, ...]:
    """A list of networks (CIDR text), normalized; a comma-separated string is taken too."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SnapshotError(f"{where}: pod_networks must be a list of networks, got {value!r:.80}")
    networks = []
    for text in value:
        try:
            networks.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise SnapshotError(f"{where}: {text!r:.60} is not a network (CIDR)") from None
    return tuple(networks)


def parse_node_capture_meta(record: object, *, source: str) -> NodeCaptureMeta:
    """A node capture's ``meta.json`` document: ``node`` (required), ``ips`` (the node's
    addresses), ``pod_networks`` (what its capture kept), ``start_time``."""
    if not isinstance(record, dict):
        raise SnapshotError(f"{source}: expected an object")
    start = record.get("start_time")
    return NodeCaptureMeta(
        node=_required_name(record, "node", OBJECT_NAME, where=source),
        ips=_ips(record.get("ips"), where=source),
        pod_networks=_networks(record.get("pod_networks"), where=source),
        start_time=None if start is None else _time(start, where=source, key="start_time"),
        source=source,
    )


def _meta_document(path: Path) -> object:
    try:
        return json_value(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as error:
        raise SnapshotError(f"{path}: cannot read: {error}") from error
    except DocumentError as error:
        raise SnapshotError(f"{path}: {error}") from None


def load_capture_meta(path: Path) -> CaptureMeta:
    """A sidecar's ``meta.json``."""
    return parse_capture_meta(_meta_document(path), source=str(path))


def load_node_capture_meta(path: Path) -> NodeCaptureMeta:
    """A node capture's ``meta.json``."""
    return parse_node_capture_meta(_meta_document(path), source=str(path))


# ---------------------------------------------------------------------------------------------
# The indexed snapshot.


class Snapshot:
    """The snapshot's objects (their views), by kind, with indices. Built once; read-only."""

    def __init__(self, objects: Iterable[KubeObject]) -> None:
        by_key: dict[tuple[str, str, str], KubeObject] = {}
        for obj in objects:
            # The first copy wins when a folder holds the same object twice.
            by_key.setdefault((obj.kind, obj.namespace, obj.name), obj)
        self._by_key = by_key
        self._by_uid = {o.uid: o for o in by_key.values() if o.uid}
        kinds: dict[str, list[KubeObject]] = defaultdict(list)
        for obj in by_key.values():
            kinds[obj.kind].append(obj)
        self._kinds = kinds

        self.pods: list[Pod] = [o for o in kinds["Pod"] if isinstance(o, Pod)]
        self.services: list[Service] = [o for o in kinds["Service"] if isinstance(o, Service)]
        self.endpoint_slices: list[EndpointSlice] = [
            o for o in kinds["EndpointSlice"] if isinstance(o, EndpointSlice)
        ]
        self.endpoints: list[Endpoints] = [
            o for o in kinds["Endpoints"] if isinstance(o, Endpoints)
        ]
        self.nodes: list[Node] = [o for o in kinds["Node"] if isinstance(o, Node)]
        self.namespaces: list[KubeObject] = kinds["Namespace"]
        self.network_policies: list[KubeObject] = kinds["NetworkPolicy"]
        self.routes: list[Route] = [
            o for kind in ("Ingress", "HTTPRoute") for o in kinds[kind] if isinstance(o, Route)
        ]
        self.reference_grants: list[ReferenceGrant] = [
            o for o in kinds["ReferenceGrant"] if isinstance(o, ReferenceGrant)
        ]

        self.services_by_cluster_ip: dict[str, Service] = {
            ip: service for service in self.services for ip in service.cluster_ips
        }
        # ClusterIPs first: an external or load-balancer IP never hides a ClusterIP.
        self.services_by_address: dict[str, Service] = {
            ip: service for service in self.services for ip in service.addresses
        } | self.services_by_cluster_ip
        self.node_by_address: dict[str, str] = {
            ip: node.name for node in self.nodes for ip in node.ip_addresses
        }
        for pod in self.pods:
            if pod.node_name:
                for ip in pod.host_ips:
                    self.node_by_address.setdefault(ip, pod.node_name)
        pods_by_ip: dict[str, list[Pod]] = defaultdict(list)
        for pod in self.pods:
            if not pod.host_network:
                for ip in pod.ips:
                    pods_by_ip[ip].append(pod)
        self.pods_by_ip: dict[str, list[Pod]] = dict(pods_by_ip)
        slices: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
        for slice_ in self.endpoint_slices:
            if slice_.service_name:
                slices[(slice_.namespace, slice_.service_name)].append(slice_)
        self._slices = dict(slices)

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        """An object by kind, namespace ("" for cluster-scoped kinds) and name."""
        return self._by_key.get((kind, namespace, name))

    def by_uid(self, uid: str) -> KubeObject | None:
        return self._by_uid.get(uid) if uid else None

    def of_kind(self, kind: str) -> list[KubeObject]:
        return self._kinds.get(kind, [])

    def controllers(self, kind: str) -> list[Controller]:
        """The objects of a controller kind (``objects.CONTROLLER_KINDS``)."""
        return [o for o in self._kinds.get(kind, []) if isinstance(o, Controller)]

    def service(self, namespace: str, name: str) -> Service | None:
        found = self.get("Service", namespace, name)
        return found if isinstance(found, Service) else None

    def slices_for(self, namespace: str, service: str) -> list[EndpointSlice]:
        """The Service's EndpointSlices (by the ``kubernetes.io/service-name`` label)."""
        return self._slices.get((namespace, service), [])

    def endpoints_for(self, namespace: str, service: str) -> Endpoints | None:
        found = self.get("Endpoints", namespace, service)
        return found if isinstance(found, Endpoints) else None

    @property
    def namespace_names(self) -> tuple[str, ...]:
        """Every namespace the snapshot knows, sorted: its Namespace objects and the namespaces
        its other objects are in."""
        named = {ns.name for ns in self.namespaces}
        in_objects = {obj.namespace for obj in self._by_key.values() if obj.namespace}
        return tuple(sorted(named | in_objects))

    @property
    def pod_cidrs(self) -> tuple[str, ...]:
        """Every node's ``spec.podCIDRs`` (or ``podCIDR``), as given."""
        return tuple(dict.fromkeys(cidr for node in self.nodes for cidr in node.pod_cidrs))

    def owner_problems(self) -> tuple[str, ...]:
        """One line per ownerReference that names no object (its kind or name is not what an
        object can have): the owner walk ignores it, so its pod or controller stands alone."""
        return tuple(
            f"{obj.kind} {obj.display_name}: ownerReference {inert(ref.kind)}/"
            f"{inert(ref.name)} names no object (not a kind and an object name): ignored"
            for obj in self._by_key.values()
            for ref in obj.meta.owner_references
            if not ref.names_an_object
        )

    def gaps(self) -> tuple[str, ...]:
        """What the analyser must guess because a kind is missing (``kubectl get all`` leaves
        out Nodes and EndpointSlices; ``kubectl get pods`` everything else), one line each."""
        found: list[str] = []
        if not self.pods:
            found.append("no Pods: no address can be tied to a workload")
        if not self.services:
            found.append(
                "no Services: traffic to a ClusterIP cannot be followed to the pods behind it "
                "(it becomes an ipBlock of the ClusterIP, which NetworkPolicy never matches)"
            )
        if not self.nodes:
            found.append(
                "no Nodes: node addresses are taken from the pods' hostIP and the pod network is "
                "guessed from the pods' addresses"
            )
        selectorless = sorted(
            service.display_name
            for service in self.services
            if service.cluster_ips and not service.selector
        )
        if selectorless and not self.endpoint_slices and not self.endpoints:
            shown = ", ".join(selectorless[:3]) + (", ..." if len(selectorless) > 3 else "")
            found.append(
                f"no EndpointSlices, and {len(selectorless)} Services have no selector "
                f"({shown}): traffic to them cannot be followed to their endpoints"
            )
        return tuple(found)
