"""The cluster snapshot: ``kubectl get -o json`` output, pod IP history and the sidecar's
``meta.json`` files, loaded and indexed.

Kubernetes JSON stays JSON: the TypedDicts below describe the fields the analyser reads, the
objects themselves are the dicts ``kubectl`` printed (checked once, on load, for the fields we
use). :class:`Snapshot` adds indices on top (objects by kind/name and uid, pods by IP, Services
by ClusterIP, nodes by address). The ``load_*`` functions are the only file I/O here; the
``parse_*`` functions do the work on plain data.

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
import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

from analyser.addresses import is_ip, normalize_ip
from analyser.documents import DocumentError, json_value, json_values, yaml_values
from analyser.texts import (
    inert,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_kind,
    is_label_key,
    is_label_value,
)
from kernel.errors import SnapshotError
from kernel.times import parse_timestamp

# ---------------------------------------------------------------------------------------------
# The JSON shapes (only the fields the analyser reads; everything else is kept, untouched).


class OwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    ownerReferences: list[OwnerReference]
    creationTimestamp: str
    deletionTimestamp: str


class LabelSelectorRequirementJson(TypedDict, total=False):
    key: str
    operator: str
    values: list[str]


class LabelSelectorJson(TypedDict, total=False):
    matchLabels: dict[str, str]
    matchExpressions: list[LabelSelectorRequirementJson]


class ContainerPort(TypedDict, total=False):
    name: str
    containerPort: int
    hostPort: int
    protocol: str


class Container(TypedDict, total=False):
    name: str
    ports: list[ContainerPort]


class PodSpec(TypedDict, total=False):
    nodeName: str
    hostNetwork: bool
    containers: list[Container]
    initContainers: list[Container]


class PodIP(TypedDict):
    ip: str


class TerminatedState(TypedDict, total=False):
    finishedAt: str


class ContainerState(TypedDict, total=False):
    terminated: TerminatedState


class ContainerStatus(TypedDict, total=False):
    name: str
    state: ContainerState


class PodStatus(TypedDict, total=False):
    phase: str
    podIP: str
    podIPs: list[PodIP]
    hostIP: str
    hostIPs: list[PodIP]
    startTime: str
    containerStatuses: list[ContainerStatus]


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus


class ServicePort(TypedDict, total=False):
    name: str
    port: int
    targetPort: int | str
    protocol: str
    nodePort: int


class ServiceSpec(TypedDict, total=False):
    type: str
    clusterIP: str
    clusterIPs: list[str]
    externalIPs: list[str]
    selector: dict[str, str]
    ports: list[ServicePort]


class LoadBalancerIngress(TypedDict, total=False):
    ip: str
    hostname: str


class LoadBalancerStatus(TypedDict, total=False):
    ingress: list[LoadBalancerIngress]


class ServiceStatus(TypedDict, total=False):
    loadBalancer: LoadBalancerStatus


class Service(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: ServiceSpec
    status: ServiceStatus


class ObjectReference(TypedDict, total=False):
    kind: str
    namespace: str
    name: str
    uid: str


class SliceEndpoint(TypedDict, total=False):
    addresses: list[str]
    targetRef: ObjectReference
    nodeName: str


class SlicePort(TypedDict, total=False):
    name: str
    port: int
    protocol: str


class EndpointSlice(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    addressType: str
    endpoints: list[SliceEndpoint]
    ports: list[SlicePort]


class EndpointAddress(TypedDict, total=False):
    ip: str
    targetRef: ObjectReference


class EndpointPort(TypedDict, total=False):
    name: str
    port: int
    protocol: str


class EndpointSubset(TypedDict, total=False):
    addresses: list[EndpointAddress]
    notReadyAddresses: list[EndpointAddress]
    ports: list[EndpointPort]


class Endpoints(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    subsets: list[EndpointSubset]


class NodeAddress(TypedDict):
    type: str
    address: str


class NodeSpec(TypedDict, total=False):
    podCIDR: str
    podCIDRs: list[str]


class NodeStatus(TypedDict, total=False):
    addresses: list[NodeAddress]


class Node(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: NodeSpec
    status: NodeStatus


class PodTemplate(TypedDict, total=False):
    metadata: ObjectMeta
    spec: PodSpec


class ControllerSpec(TypedDict, total=False):
    selector: LabelSelectorJson
    template: PodTemplate


class JobTemplate(TypedDict, total=False):
    spec: ControllerSpec


class CronJobSpec(TypedDict, total=False):
    jobTemplate: JobTemplate


class Controller(TypedDict, total=False):
    """Deployment, ReplicaSet, StatefulSet, DaemonSet or Job (CronJob: see :class:`CronJob`)."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: ControllerSpec


class CronJob(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: CronJobSpec


class KubeObject(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta


CONTROLLER_KINDS: frozenset[str] = frozenset(
    {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"}
)
KINDS: frozenset[str] = CONTROLLER_KINDS | {
    "Namespace",
    "Node",
    "Pod",
    "Service",
    "EndpointSlice",
    "Endpoints",
    "CronJob",
    "NetworkPolicy",
}
CLUSTER_SCOPED_KINDS: frozenset[str] = frozenset({"Namespace", "Node"})

# ---------------------------------------------------------------------------------------------
# Checking the fields we read. A path names a field; ``x[]`` walks every element of list ``x``.
# Missing fields are fine (everything is optional in practice); present ones must have the type.
# Names, namespaces, labels and kinds must also be what the API server would have stored: one
# that is not comes from a tampered snapshot, and is refused rather than carried into an output.

_STR, _INT, _BOOL, _LIST, _DICT = "a string", "an integer", "a boolean", "a list", "an object"
_TIME, _IP, _PORT = "a timestamp", "an IP address", "a port number"
_INT_OR_STR = "an integer or a string"
_NAME = "an object name (a DNS-1123 subdomain: a-z, 0-9, '-' and '.', at most 253)"
_NAMESPACE = "a namespace name (a DNS-1123 label: a-z, 0-9 and '-', at most 63)"
_KIND = "a kind (letters, digits and '-', starting with a letter)"
_LABELS = "a map of label keys to label values"
_LABEL_KEY = "a label key ([prefix/]name: a-z, A-Z, 0-9, '-', '_' and '.', at most 63)"
_LABEL_VALUE = "a label value (empty, or a-z, A-Z, 0-9, '-', '_' and '.', at most 63)"
_OPERATOR = "In, NotIn, Exists or DoesNotExist"
_PORT_NAME = "a port name (empty, or a DNS-1123 label)"

_SELECTOR = (
    ("matchLabels", _LABELS),
    ("matchExpressions", _LIST),
    ("matchExpressions[]", _DICT),
    ("matchExpressions[].key", _LABEL_KEY),
    ("matchExpressions[].operator", _OPERATOR),
    ("matchExpressions[].values", _LIST),
    ("matchExpressions[].values[]", _LABEL_VALUE),
)
_CONTAINER = (
    ("", _LIST),
    ("[]", _DICT),
    ("[].ports", _LIST),
    ("[].ports[]", _DICT),
    ("[].ports[].name", _PORT_NAME),
    ("[].ports[].containerPort", _PORT),
    ("[].ports[].hostPort", _PORT),
    ("[].ports[].protocol", _STR),
)
_POD_SPEC = (
    *(
        (f"{field}{path}", kind)
        for field in ("containers", "initContainers")
        for path, kind in _CONTAINER
    ),
    ("nodeName", _NAME),
    ("hostNetwork", _BOOL),
)
_CONTROLLER = (
    ("spec", _DICT),
    ("spec.selector", _DICT),
    *((f"spec.selector.{p}", k) for p, k in _SELECTOR),
    ("spec.template", _DICT),
    ("spec.template.metadata", _DICT),
    ("spec.template.metadata.labels", _LABELS),
)

_CHECKS: dict[str, tuple[tuple[str, str], ...]] = {
    "*": (
        ("metadata", _DICT),
        ("metadata.name", _NAME),
        ("metadata.namespace", _NAMESPACE),
        ("metadata.uid", _STR),
        ("metadata.labels", _LABELS),
        ("metadata.creationTimestamp", _TIME),
        ("metadata.deletionTimestamp", _TIME),
        ("metadata.ownerReferences", _LIST),
        ("metadata.ownerReferences[]", _DICT),
        # Text only: the API server does not check an ownerReference's kind and name, so whoever
        # may create a pod may give it any owner. Invalid ones are ignored (``owner_problems``),
        # not fatal: one pod must not make the whole snapshot unusable.
        ("metadata.ownerReferences[].kind", _STR),
        ("metadata.ownerReferences[].name", _STR),
        ("metadata.ownerReferences[].uid", _STR),
        ("metadata.ownerReferences[].controller", _BOOL),
    ),
    "Pod": (
        ("spec", _DICT),
        *((f"spec.{p}", k) for p, k in _POD_SPEC),
        ("status", _DICT),
        ("status.phase", _STR),
        ("status.podIP", _IP),
        ("status.podIPs", _LIST),
        ("status.podIPs[]", _DICT),
        ("status.podIPs[].ip", _IP),
        ("status.hostIP", _IP),
        ("status.hostIPs", _LIST),
        ("status.hostIPs[]", _DICT),
        ("status.hostIPs[].ip", _IP),
        ("status.startTime", _TIME),
        ("status.containerStatuses", _LIST),
        ("status.containerStatuses[]", _DICT),
        ("status.containerStatuses[].state", _DICT),
        ("status.containerStatuses[].state.terminated", _DICT),
        ("status.containerStatuses[].state.terminated.finishedAt", _TIME),
    ),
    "Service": (
        ("spec", _DICT),
        ("spec.type", _STR),
        ("spec.clusterIP", _STR),
        ("spec.clusterIPs", _LIST),
        ("spec.clusterIPs[]", _STR),
        ("spec.externalIPs", _LIST),
        ("spec.externalIPs[]", _IP),
        ("status", _DICT),
        ("status.loadBalancer", _DICT),
        ("status.loadBalancer.ingress", _LIST),
        ("status.loadBalancer.ingress[]", _DICT),
        ("status.loadBalancer.ingress[].ip", _IP),
        ("spec.selector", _LABELS),
        ("spec.ports", _LIST),
        ("spec.ports[]", _DICT),
        ("spec.ports[].name", _PORT_NAME),
        ("spec.ports[].port", _PORT),
        ("spec.ports[].targetPort", _INT_OR_STR),
        ("spec.ports[].protocol", _STR),
        ("spec.ports[].nodePort", _PORT),
    ),
    "EndpointSlice": (
        ("addressType", _STR),
        ("endpoints", _LIST),
        ("endpoints[]", _DICT),
        ("endpoints[].addresses", _LIST),
        ("endpoints[].addresses[]", _STR),
        ("endpoints[].targetRef", _DICT),
        ("endpoints[].targetRef.kind", _KIND),
        ("endpoints[].targetRef.name", _NAME),
        ("endpoints[].targetRef.namespace", _NAMESPACE),
        ("endpoints[].targetRef.uid", _STR),
        ("ports", _LIST),
        ("ports[]", _DICT),
        ("ports[].name", _PORT_NAME),
        ("ports[].port", _PORT),
        ("ports[].protocol", _STR),
    ),
    "Endpoints": tuple(
        (f"subsets{path}", kind)
        for path, kind in (
            ("", _LIST),
            ("[]", _DICT),
            ("[].ports", _LIST),
            ("[].ports[]", _DICT),
            ("[].ports[].name", _PORT_NAME),
            ("[].ports[].port", _PORT),
            ("[].ports[].protocol", _STR),
        )
    )
    + tuple(
        (f"subsets[].{field}{path}", kind)
        for field in ("addresses", "notReadyAddresses")
        for path, kind in (
            ("", _LIST),
            ("[]", _DICT),
            ("[].ip", _IP),
            ("[].targetRef", _DICT),
            ("[].targetRef.kind", _KIND),
            ("[].targetRef.name", _NAME),
            ("[].targetRef.namespace", _NAMESPACE),
            ("[].targetRef.uid", _STR),
        )
    ),
    "Namespace": (("metadata.name", _NAMESPACE),),
    "Node": (
        ("spec", _DICT),
        ("spec.podCIDR", _STR),
        ("spec.podCIDRs", _LIST),
        ("spec.podCIDRs[]", _STR),
        ("status", _DICT),
        ("status.addresses", _LIST),
        ("status.addresses[]", _DICT),
        ("status.addresses[].type", _STR),
        ("status.addresses[].address", _STR),
    ),
    "CronJob": (
        ("spec", _DICT),
        ("spec.jobTemplate", _DICT),
        *((f"spec.jobTemplate.{p}", k) for p, k in _CONTROLLER),
    ),
    **{kind: _CONTROLLER for kind in CONTROLLER_KINDS},
}


# The checks of text: a string that follows the rule.
_TEXT_RULES: dict[str, Callable[[str], bool]] = {
    _STR: lambda text: True,
    _NAME: is_dns1123_subdomain,
    _NAMESPACE: is_dns1123_label,
    _KIND: is_kind,
    _LABEL_KEY: is_label_key,
    _LABEL_VALUE: is_label_value,
    _OPERATOR: lambda text: text in ("In", "NotIn", "Exists", "DoesNotExist"),
    _PORT_NAME: lambda text: text == "" or is_dns1123_label(text),
}


def _is(value: object, expected: str) -> bool:
    rule = _TEXT_RULES.get(expected)
    if rule is not None:
        return isinstance(value, str) and rule(value)
    if expected in (_INT, _PORT):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return ok and (expected == _INT or 0 <= cast(int, value) <= 65535)
    if expected == _BOOL:
        return isinstance(value, bool)
    if expected == _LIST:
        return isinstance(value, list)
    if expected == _DICT:
        return isinstance(value, dict)
    if expected == _LABELS:
        return isinstance(value, dict) and _bad_label(value) is None
    if expected == _INT_OR_STR:
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    if expected == _TIME:
        try:
            parse_timestamp(value)
        except ValueError:
            return False
        return True
    if expected == _IP:
        return isinstance(value, str) and is_ip(value)
    raise AssertionError(expected)


@dataclass(frozen=True, slots=True)
class _BadLabel:
    """The first entry of a label map that is not a label: its key, what is wrong, the text."""

    key: object
    expected: str
    value: object


def _bad_label(labels: Mapping[object, object]) -> _BadLabel | None:
    for key, value in labels.items():
        if not _is(key, _LABEL_KEY):
            return _BadLabel(key, _LABEL_KEY, key)
        if not _is(value, _LABEL_VALUE):
            return _BadLabel(key, _LABEL_VALUE, value)
    return None


@dataclass(slots=True)
class _FieldChecks:
    """The checks of one field (``expected``), of each element when it is a list (``element``)
    and of its own fields when it is an object (``fields``): the paths above, as a tree, so each
    field of an object is visited once."""

    expected: list[str] = field(default_factory=list)
    element: _FieldChecks | None = None
    fields: dict[str, _FieldChecks] = field(default_factory=dict)


@functools.cache
def _check_tree(kind: str) -> _FieldChecks:
    root = _FieldChecks()
    for path, expected in _CHECKS["*"] + _CHECKS.get(kind, ()):
        node = root
        for segment in path.split("."):
            name = segment.removesuffix("[]")
            node = node.fields.setdefault(name, _FieldChecks())
            if segment.endswith("[]"):
                node.element = node.element or _FieldChecks()
                node = node.element
        node.expected.append(expected)
    return root


def _check_value(value: object, checks: _FieldChecks, path: str, fail: Callable[..., None]) -> None:
    for expected in checks.expected:
        if expected == _LABELS and isinstance(value, dict) and (bad := _bad_label(value)):
            fail(f"{path}[{bad.key!r:.60}]", bad.expected, bad.value)
        if not _is(value, expected):
            fail(path, expected, value)
    if checks.element is not None and isinstance(value, list):
        for index, element in enumerate(value):
            _check_value(element, checks.element, f"{path}[{index}]", fail)
    if checks.fields and isinstance(value, dict):
        for name, child in checks.fields.items():
            if name in value:
                _check_value(value[name], child, f"{path}.{name}" if path else name, fail)


def _check(obj: Mapping[str, object], kind: str, *, source: str, where: str) -> None:
    def fail(path: str, expected: str, value: object) -> None:
        raise SnapshotError(f"{source}: {where}: {path} must be {expected}, got {value!r:.60}")

    _check_value(obj, _check_tree(kind), "", fail)


# ---------------------------------------------------------------------------------------------
# Parsing documents into objects.


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
    """Objects of the kinds the analyser uses, checked, in document order."""
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
            _check(obj, kind, source=source, where=label)
            if kind not in CLUSTER_SCOPED_KINDS and "namespace" not in obj["metadata"]:
                obj = {**obj, "metadata": {**obj["metadata"], "namespace": "default"}}
            objects.append(cast(KubeObject, obj))
    return objects


def is_owner(reference: OwnerReference) -> bool:
    """Whether an ownerReference names an object: a kind and an object name (the API server
    stores any text there)."""
    kind, name = reference.get("kind", ""), reference.get("name", "")
    return is_kind(kind) and is_dns1123_subdomain(name)


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
class OwnerHint:
    """The pod's controlling owner as a history line or meta.json names it."""

    kind: str
    name: str
    uid: str = ""


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
    owner: OwnerHint | None

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
    owner: OwnerHint | None
    source: str  # the meta.json path, for messages


def _owner_hint(value: object, *, where: str) -> OwnerHint | None:
    """``{"kind", "name"[, "uid"]}`` (an ownerReference), a list of them, or ``"Kind/name"``."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        refs = [v for v in value if isinstance(v, dict)]
        chosen = next((r for r in refs if r.get("controller") is True), refs[0] if refs else None)
        return _owner_hint(chosen, where=where)
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
    for field_name, text, expected in (("kind", kind, _KIND), ("name", name, _NAME)):
        if not _is(text, expected):
            raise SnapshotError(f"{where}: owner {field_name} must be {expected}, got {text!r:.60}")
    if not isinstance(uid, str):
        raise SnapshotError(f"{where}: owner uid must be a string")
    return OwnerHint(kind=str(kind), name=str(name), uid=uid)


def _labels(value: object, *, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise SnapshotError(f"{where}: labels must be {_LABELS}")
    bad = _bad_label(value)
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


def _required_name(record: Mapping[str, object], key: str, expected: str, *, where: str) -> str:
    """``record[key]``, which must be ``expected`` (``_NAME`` or ``_NAMESPACE``)."""
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise SnapshotError(f"{where}: {key!r} must be a non-empty string")
    if not _is(value, expected):
        raise SnapshotError(f"{where}: {key!r} must be {expected}, got {value!r:.60}")
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
        events.append(
            PodIpEvent(
                time=_time(record.get("time"), where=where, key="time"),
                event=event,
                namespace=_required_name(record, "namespace", _NAMESPACE, where=where),
                pod=_required_name(record, "pod", _NAME, where=where),
                uid=uid,
                ips=_ips(record.get("ips"), where=where),
                labels=_labels(record.get("labels"), where=where),
                owner=_owner_hint(record.get("owner"), where=where),
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
    if node and not _is(node, _NAME):
        raise SnapshotError(f"{source}: 'node' must be {_NAME}, got {node!r:.60}")
    return CaptureMeta(
        namespace=_required_name(record, "namespace", _NAMESPACE, where=source),
        pod=_required_name(record, "pod", _NAME, where=source),
        uid=uid,
        ips=_ips(record.get("ips"), where=source),
        labels=_labels(record.get("labels"), where=source),
        node=node,
        start_time=None if start is None else _time(start, where=source, key="start_time"),
        owner=_owner_hint(record.get("owner"), where=source),
        source=source,
    )


def load_capture_meta(path: Path) -> CaptureMeta:
    try:
        record = json_value(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as error:
        raise SnapshotError(f"{path}: cannot read: {error}") from error
    except DocumentError as error:
        raise SnapshotError(f"{path}: {error}") from None
    return parse_capture_meta(record, source=str(path))


# ---------------------------------------------------------------------------------------------
# The indexed snapshot.


def meta(
    obj: KubeObject | Pod | Service | Node | Controller | CronJob | EndpointSlice | Endpoints,
) -> ObjectMeta:
    return obj.get("metadata", {})


def pod_ips(pod: Pod) -> tuple[str, ...]:
    """``status.podIPs`` (dual-stack), else ``status.podIP``; normalized, in order."""
    status = pod.get("status", {})
    ips = [entry["ip"] for entry in status.get("podIPs", []) if "ip" in entry]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return tuple(dict.fromkeys(normalize_ip(ip) for ip in ips))


def host_ips(pod: Pod) -> tuple[str, ...]:
    status = pod.get("status", {})
    ips = [entry["ip"] for entry in status.get("hostIPs", []) if "ip" in entry]
    if not ips and status.get("hostIP"):
        ips = [status["hostIP"]]
    return tuple(dict.fromkeys(normalize_ip(ip) for ip in ips))


def service_addresses(service: Service) -> tuple[str, ...]:
    """Every address kube-proxy rewrites to the Service's pods for traffic from inside the
    cluster: its ClusterIPs, ``spec.externalIPs`` and load-balancer ingress IPs."""
    spec = service.get("spec", {})
    balancers = service.get("status", {}).get("loadBalancer", {}).get("ingress", [])
    extra = [*spec.get("externalIPs", []), *(b["ip"] for b in balancers if "ip" in b)]
    return tuple(dict.fromkeys([*cluster_ips(service), *(normalize_ip(ip) for ip in extra)]))


def cluster_ips(service: Service) -> tuple[str, ...]:
    """``spec.clusterIPs`` (dual-stack), else ``spec.clusterIP``; headless ("None") has none."""
    spec = service.get("spec", {})
    ips = list(spec.get("clusterIPs", [])) or ([spec["clusterIP"]] if "clusterIP" in spec else [])
    return tuple(dict.fromkeys(normalize_ip(ip) for ip in ips if is_ip(ip)))


class Snapshot:
    """The snapshot's objects, by kind, with indices. Built once; treat as read-only."""

    def __init__(self, objects: Iterable[KubeObject]) -> None:
        by_key: dict[tuple[str, str, str], KubeObject] = {}
        for obj in objects:
            # The first copy wins when a folder holds the same object twice.
            by_key.setdefault((obj["kind"], meta(obj).get("namespace", ""), meta(obj)["name"]), obj)
        self._by_key = by_key
        self._by_uid = {meta(o)["uid"]: o for o in by_key.values() if meta(o).get("uid")}
        kinds: dict[str, list[KubeObject]] = defaultdict(list)
        for obj in by_key.values():
            kinds[obj["kind"]].append(obj)
        self._kinds = kinds

        self.pods: list[Pod] = cast(list[Pod], kinds["Pod"])
        self.services: list[Service] = cast(list[Service], kinds["Service"])
        self.endpoint_slices: list[EndpointSlice] = cast(
            list[EndpointSlice], kinds["EndpointSlice"]
        )
        self.endpoints: list[Endpoints] = cast(list[Endpoints], kinds["Endpoints"])
        self.nodes: list[Node] = cast(list[Node], kinds["Node"])
        self.namespaces: list[KubeObject] = kinds["Namespace"]
        self.network_policies: list[KubeObject] = kinds["NetworkPolicy"]

        self.services_by_cluster_ip: dict[str, Service] = {
            ip: service for service in self.services for ip in cluster_ips(service)
        }
        # ClusterIPs first: an external or load-balancer IP never hides a ClusterIP.
        self.services_by_address: dict[str, Service] = {
            ip: service for service in self.services for ip in service_addresses(service)
        } | self.services_by_cluster_ip
        self.node_by_address: dict[str, str] = {}
        for node in self.nodes:
            for address in node.get("status", {}).get("addresses", []):
                if address.get("type") != "Hostname" and is_ip(address.get("address", "")):
                    self.node_by_address[normalize_ip(address["address"])] = meta(node)["name"]
        for pod in self.pods:
            node_name = pod.get("spec", {}).get("nodeName")
            if node_name:
                for ip in host_ips(pod):
                    self.node_by_address.setdefault(ip, node_name)
        pods_by_ip: dict[str, list[Pod]] = defaultdict(list)
        for pod in self.pods:
            if not pod.get("spec", {}).get("hostNetwork"):
                for ip in pod_ips(pod):
                    pods_by_ip[ip].append(pod)
        self.pods_by_ip: dict[str, list[Pod]] = dict(pods_by_ip)
        slices: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
        for slice_ in self.endpoint_slices:
            service_name = meta(slice_).get("labels", {}).get("kubernetes.io/service-name")
            if service_name:
                slices[(meta(slice_).get("namespace", ""), service_name)].append(slice_)
        self._slices = dict(slices)

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        """An object by kind, namespace ("" for cluster-scoped kinds) and name."""
        return self._by_key.get((kind, namespace, name))

    def by_uid(self, uid: str) -> KubeObject | None:
        return self._by_uid.get(uid) if uid else None

    def of_kind(self, kind: str) -> list[KubeObject]:
        return self._kinds.get(kind, [])

    def service(self, namespace: str, name: str) -> Service | None:
        return cast(Service | None, self.get("Service", namespace, name))

    def slices_for(self, namespace: str, service: str) -> list[EndpointSlice]:
        """The Service's EndpointSlices (by the ``kubernetes.io/service-name`` label)."""
        return self._slices.get((namespace, service), [])

    def endpoints_for(self, namespace: str, service: str) -> Endpoints | None:
        return cast(Endpoints | None, self.get("Endpoints", namespace, service))

    @property
    def pod_cidrs(self) -> tuple[str, ...]:
        """Every node's ``spec.podCIDRs`` (or ``podCIDR``), as given."""
        cidrs: list[str] = []
        for node in self.nodes:
            spec = node.get("spec", {})
            cidrs += spec.get("podCIDRs", []) or ([spec["podCIDR"]] if "podCIDR" in spec else [])
        return tuple(dict.fromkeys(cidrs))

    def owner_problems(self) -> tuple[str, ...]:
        """One line per ownerReference that names no object (its kind or name is not what an
        object can have): the owner walk ignores it, so its pod or controller stands alone."""
        return tuple(
            f"{obj['kind']} {_display_name(obj)}: ownerReference {inert(ref.get('kind', ''))}/"
            f"{inert(ref.get('name', ''))} names no object (not a kind and an object name): "
            "ignored"
            for obj in self._by_key.values()
            for ref in meta(obj).get("ownerReferences", [])
            if not is_owner(ref)
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
            _display_name(service)
            for service in self.services
            if cluster_ips(service) and not service.get("spec", {}).get("selector")
        )
        if selectorless and not self.endpoint_slices and not self.endpoints:
            shown = ", ".join(selectorless[:3]) + (", ..." if len(selectorless) > 3 else "")
            found.append(
                f"no EndpointSlices, and {len(selectorless)} Services have no selector "
                f"({shown}): traffic to them cannot be followed to their endpoints"
            )
        return tuple(found)
