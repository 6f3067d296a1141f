"""The snapshot's Kubernetes objects as typed views, each read once: the snapshot's one schema.

A view is built from one object's JSON by reading the fields the analyser uses, and reading is
checking: a field is taken only when it has its type (and a name, namespace, label or kind only
when it is what the API server would have stored: the rules of :mod:`analyser.texts`), else the
reader raises :class:`~kernel.errors.SnapshotError` naming the file, the object and the field
(``items[3] (Pod shop/web-1): status.podIP must be an IP address, got 'x'``). Missing fields are
fine: everything is optional in practice. Each view keeps the object's JSON as it came (``raw``,
nulls dropped), as kopf's ``Body`` keeps its dict beside typed properties, for the places that
want it whole; nothing walks the JSON a second time.

The views: :class:`Pod` (addresses, containerPorts, lifetime), :class:`Service` (addresses,
selector, :class:`ServicePort` with its target port: a number, a name, or none),
:class:`EndpointSlice` and :class:`Endpoints`, :class:`Route` (an Ingress's or an HTTPRoute's
:class:`ServiceRef` list), :class:`ReferenceGrant`, :class:`Node` (addresses, podCIDRs, the gateway
annotations), :class:`Controller` (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, and a
CronJob's Job template: selector, template labels, hostNetwork) and :class:`KubeObject` for the
rest (Namespaces, NetworkPolicies), all with :class:`ObjectMeta` and its
:class:`OwnerReference` list. Kinds the analyser does not use have no view.

Also here, for JSON that no view reads (the API server's, for the collector; the lab's own
snapshot, for its judge): the same readings without checks, :func:`owner_references`,
:func:`controller_of` and :func:`pod_ips`.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from analyser.addresses import is_ip, normalize_ip
from analyser.flows import Protocol
from analyser.selectors import LabelRequirement, LabelSelector
from analyser.texts import (
    is_dns1123_label,
    is_dns1123_subdomain,
    is_kind,
    is_label_key,
    is_label_value,
)
from kernel.times import parse_timestamp

# ---------------------------------------------------------------------------------------------
# What a field must be, as the messages say it.


@dataclass(frozen=True, slots=True)
class TextRule:
    """What a text field must be: ``says`` in a message, ``holds`` as a check."""

    says: str
    holds: Callable[[str], bool]


TEXT = TextRule("a string", lambda text: True)
OBJECT_NAME = TextRule(
    "an object name (a DNS-1123 subdomain: a-z, 0-9, '-' and '.', at most 253)",
    is_dns1123_subdomain,
)
NAMESPACE_NAME = TextRule(
    "a namespace name (a DNS-1123 label: a-z, 0-9 and '-', at most 63)", is_dns1123_label
)
KIND = TextRule("a kind (letters, digits and '-', starting with a letter)", is_kind)
LABEL_KEY = TextRule(
    "a label key ([prefix/]name: a-z, A-Z, 0-9, '-', '_' and '.', at most 63)", is_label_key
)
LABEL_VALUE = TextRule(
    "a label value (empty, or a-z, A-Z, 0-9, '-', '_' and '.', at most 63)", is_label_value
)
OPERATOR = TextRule(
    "In, NotIn, Exists or DoesNotExist",
    lambda text: text in ("In", "NotIn", "Exists", "DoesNotExist"),
)
PORT_NAME = TextRule(
    "a port name (empty, or a DNS-1123 label)", lambda text: text == "" or is_dns1123_label(text)
)
LABELS = "a map of label keys to label values"
_BOOL, _LIST, _OBJECT, _TIME = "a boolean", "a list", "an object", "a timestamp"
_IP, _PORT, _PORT_OR_NAME = "an IP address", "a port number", "an integer or a string"


@dataclass(frozen=True, slots=True)
class BadLabel:
    """The first entry of a label map that is not a label: its key, what is wrong, the text."""

    key: object
    expected: str
    value: object


def bad_label(labels: Mapping[object, object]) -> BadLabel | None:
    for key, value in labels.items():
        if not (isinstance(key, str) and LABEL_KEY.holds(key)):
            return BadLabel(key, LABEL_KEY.says, key)
        if not (isinstance(value, str) and LABEL_VALUE.holds(value)):
            return BadLabel(key, LABEL_VALUE.says, value)
    return None


# Raises the error for the field at a path: (path, what it must be, what it is).
Fail = Callable[[str, str, object], NoReturn]


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


class _Fields:
    """One JSON object of the snapshot, read field by field: each getter returns the field (None
    when it is absent) when it is what the getter reads, and fails naming the field's path
    otherwise."""

    __slots__ = ("_fail", "_path", "_value")

    def __init__(self, value: Mapping[str, Any], path: str, fail: Fail) -> None:
        self._value = value
        self._path = path
        self._fail = fail

    @property
    def given(self) -> bool:
        """Whether the object has any field."""
        return bool(self._value)

    def _at(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _wrong(self, key: str, expected: str, value: object) -> NoReturn:
        self._fail(self._at(key), expected, value)

    def text(self, key: str, rule: TextRule = TEXT) -> str | None:
        value = self._value.get(key)
        if value is None or (isinstance(value, str) and (rule is TEXT or rule.holds(value))):
            return value
        self._wrong(key, rule.says, value)

    def port(self, key: str) -> int | None:
        value = self._value.get(key)
        if value is None or _is_port(value):
            return value
        self._wrong(key, _PORT, value)

    def port_or_name(self, key: str) -> int | str | None:
        value = self._value.get(key)
        if value is None or (isinstance(value, str | int) and not isinstance(value, bool)):
            return value
        self._wrong(key, _PORT_OR_NAME, value)

    def flag(self, key: str) -> bool | None:
        value = self._value.get(key)
        if value is None or isinstance(value, bool):
            return value
        self._wrong(key, _BOOL, value)

    def time(self, key: str) -> float | None:
        value = self._value.get(key)
        if value is None:
            return None
        try:
            return parse_timestamp(value)
        except ValueError:
            self._wrong(key, _TIME, value)

    def ip(self, key: str) -> str | None:
        value = self._value.get(key)
        if value is None or (isinstance(value, str) and is_ip(value)):
            return value
        self._wrong(key, _IP, value)

    def labels(self, key: str) -> Mapping[str, str] | None:
        value = self._value.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self._wrong(key, LABELS, value)
        bad = bad_label(value)
        if bad is not None:
            self._fail(f"{self._at(key)}[{bad.key!r:.60}]", bad.expected, bad.value)
        return value

    def object(self, key: str) -> _Fields:
        """The object at ``key`` (an empty one when absent)."""
        value = self._value.get(key)
        if value is None:
            return _Fields({}, self._at(key), self._fail)
        if not isinstance(value, dict):
            self._wrong(key, _OBJECT, value)
        return _Fields(value, self._at(key), self._fail)

    def _list(self, key: str) -> list[Any]:
        value = self._value.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self._wrong(key, _LIST, value)
        return value

    def objects(self, key: str) -> list[_Fields]:
        """The objects of the list at ``key``."""
        found = []
        for index, value in enumerate(self._list(key)):
            path = f"{self._at(key)}[{index}]"
            if not isinstance(value, dict):
                self._fail(path, _OBJECT, value)
            found.append(_Fields(value, path, self._fail))
        return found

    def texts(self, key: str, rule: TextRule = TEXT) -> list[str]:
        """The texts of the list at ``key``."""
        values = self._list(key)
        for index, value in enumerate(values):
            if not (isinstance(value, str) and rule.holds(value)):
                self._fail(f"{self._at(key)}[{index}]", rule.says, value)
        return values

    def ips(self, key: str) -> list[str]:
        """The IP addresses of the list at ``key``, as given."""
        values = self._list(key)
        for index, value in enumerate(values):
            if not (isinstance(value, str) and is_ip(value)):
                self._fail(f"{self._at(key)}[{index}]", _IP, value)
        return values


# ---------------------------------------------------------------------------------------------
# Metadata and owners.


@dataclass(frozen=True, slots=True)
class OwnerReference:
    """An ``ownerReferences`` entry (or a history line's or meta.json's ``owner``)."""

    kind: str
    name: str
    uid: str = ""
    controller: bool = False

    @property
    def names_an_object(self) -> bool:
        """Whether it names an object: a kind and an object name. The API server stores any text
        in an ownerReference, so whoever may create a pod may give it any owner."""
        return is_kind(self.kind) and is_dns1123_subdomain(self.name)


def controller_of(references: Iterable[OwnerReference]) -> OwnerReference | None:
    """The reference to the object's controller (``controller: true``: the API server allows one),
    None when none says so."""
    return next((reference for reference in references if reference.controller), None)


def owner_of(references: Sequence[OwnerReference]) -> OwnerReference | None:
    """The owner the analyser walks to: among the references that name an object, the
    controller, else (a snapshot written by hand says no controller) the first."""
    named = [reference for reference in references if reference.names_an_object]
    return controller_of(named) or (named[0] if named else None)


def owner_references(obj: Mapping[str, Any]) -> tuple[OwnerReference, ...]:
    """An object's ``metadata.ownerReferences`` in JSON no view read (the API server's, the lab's):
    the entries with a kind and a name as text, nothing checked further."""
    metadata = obj.get("metadata")
    entries = metadata.get("ownerReferences") if isinstance(metadata, dict) else None
    return tuple(
        OwnerReference(
            entry["kind"],
            entry["name"],
            uid if isinstance(uid := entry.get("uid"), str) else "",
            entry.get("controller") is True,
        )
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict)
        and isinstance(entry.get("kind"), str)
        and isinstance(entry.get("name"), str)
    )


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    name: str
    namespace: str  # "" for Namespaces and Nodes; "default" when a namespaced object names none
    uid: str
    labels: Mapping[str, str]
    created: float | None
    deleted: float | None
    owner_references: tuple[OwnerReference, ...]


def _meta(fields: _Fields, kind: str) -> ObjectMeta:
    name = fields.text("name", OBJECT_NAME) or ""
    if kind == "Namespace":
        fields.text("name", NAMESPACE_NAME)
    namespace = fields.text("namespace", NAMESPACE_NAME) or ""
    uid = fields.text("uid") or ""
    labels = fields.labels("labels") or {}
    created = fields.time("creationTimestamp")
    deleted = fields.time("deletionTimestamp")
    return ObjectMeta(
        name=name,
        namespace=namespace,
        uid=uid,
        labels=labels,
        created=created,
        deleted=deleted,
        owner_references=tuple(
            OwnerReference(
                kind=reference.text("kind") or "",
                name=reference.text("name") or "",
                uid=reference.text("uid") or "",
                controller=bool(reference.flag("controller")),
            )
            for reference in fields.objects("ownerReferences")
        ),
    )


@dataclass(frozen=True, slots=True)
class KubeObject:
    """An object of a kind the analyser uses: its kind, metadata and JSON."""

    kind: str
    meta: ObjectMeta
    raw: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def uid(self) -> str:
        return self.meta.uid

    @property
    def labels(self) -> Mapping[str, str]:
        return self.meta.labels

    @property
    def display_name(self) -> str:
        """``namespace/name``, or ``name`` for a cluster-scoped object."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def owner(self) -> OwnerReference | None:
        """The owner the analyser walks to (:func:`owner_of`)."""
        return owner_of(self.meta.owner_references)


# ---------------------------------------------------------------------------------------------
# Pods.


def protocol_of(text: str | None) -> Protocol | None:
    """A port's ``protocol`` (TCP when absent), None for one NetworkPolicy has no rules for."""
    try:
        return Protocol((text or "TCP").upper())
    except ValueError:
        return None


@dataclass(frozen=True, order=True, slots=True)
class PodPort:
    """A containerPort: for a hostNetwork pod, a port of its node."""

    name: str
    port: int
    protocol: Protocol


@dataclass(frozen=True, order=True, slots=True)
class PublishedPort:
    """A containerPort published on the pod's node with ``hostPort``."""

    container_port: int
    protocol: Protocol
    host_port: int


def _listed_or_single(listed: Iterable[str], single: str | None) -> tuple[str, ...]:
    """A dual-stack list of addresses (``podIPs``), else the single one (``podIP``): normalized,
    each once, in order."""
    addresses = list(listed) or ([single] if single else [])
    return tuple(dict.fromkeys(normalize_ip(address) for address in addresses))


def pod_ips(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """A pod's addresses in JSON no view read (the API server's): ``status.podIPs``, else
    ``status.podIP``; what is not an address is left out."""
    status = pod.get("status")
    if not isinstance(status, dict):
        return ()
    entries = status.get("podIPs")
    listed = [
        entry["ip"]
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict) and isinstance(entry.get("ip"), str) and is_ip(entry["ip"])
    ]
    single = status.get("podIP")
    return _listed_or_single(listed, single if isinstance(single, str) and is_ip(single) else None)


def _status_addresses(status: _Fields, listed: str, single: str) -> tuple[str, ...]:
    entries = [entry.ip("ip") for entry in status.objects(listed)]
    return _listed_or_single((ip for ip in entries if ip), status.ip(single))


@dataclass(frozen=True, slots=True)
class PodSpecView:
    """What the analyser reads of a pod spec (a pod's, or a pod template's)."""

    node_name: str
    host_network: bool
    ports: tuple[PodPort, ...]  # sorted, each once; init containers' too
    published: tuple[PublishedPort, ...]  # sorted, each once


def _pod_spec(spec: _Fields) -> PodSpecView:
    ports: set[PodPort] = set()
    published: set[PublishedPort] = set()
    for containers in ("containers", "initContainers"):
        for container in spec.objects(containers):
            for entry in container.objects("ports"):
                name = entry.text("name", PORT_NAME) or ""
                number = entry.port("containerPort")
                host_port = entry.port("hostPort")
                protocol = protocol_of(entry.text("protocol"))
                if protocol is None or number is None:
                    continue
                ports.add(PodPort(name, number, protocol))
                if host_port:
                    published.add(PublishedPort(number, protocol, host_port))
    return PodSpecView(
        node_name=spec.text("nodeName", OBJECT_NAME) or "",
        host_network=bool(spec.flag("hostNetwork")),
        ports=tuple(sorted(ports)),
        published=tuple(sorted(published)),
    )


@dataclass(frozen=True, slots=True)
class Pod(KubeObject):
    spec: PodSpecView
    phase: str
    ips: tuple[str, ...]  # status.podIPs, else status.podIP; normalized
    host_ips: tuple[str, ...]  # status.hostIPs, else status.hostIP; normalized
    started: float | None  # status.startTime
    finished: tuple[float, ...]  # when each terminated container finished

    @property
    def node_name(self) -> str:
        return self.spec.node_name

    @property
    def host_network(self) -> bool:
        return self.spec.host_network


def _pod(kind: str, meta: ObjectMeta, raw: Mapping[str, Any], fields: _Fields) -> Pod:
    spec = _pod_spec(fields.object("spec"))
    status = fields.object("status")
    phase = status.text("phase") or ""
    ips = _status_addresses(status, "podIPs", "podIP")
    host_ips = _status_addresses(status, "hostIPs", "hostIP")
    started = status.time("startTime")
    finished = tuple(
        time
        for container in status.objects("containerStatuses")
        if (time := container.object("state").object("terminated").time("finishedAt")) is not None
    )
    return Pod(kind, meta, raw, spec, phase, ips, host_ips, started, finished)


# ---------------------------------------------------------------------------------------------
# Services and their endpoints.


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int | None
    protocol: Protocol | None  # None: one NetworkPolicy has no rules for
    # targetPort: a number, a name (of a containerPort of the pods), or (no targetPort and no
    # port) none. Absent, it is the port, as the API server defaults it.
    target: int | str | None
    node_port: int | None


def _service_port(fields: _Fields) -> ServicePort:
    name = fields.text("name", PORT_NAME) or ""
    port = fields.port("port")
    target = fields.port_or_name("targetPort")
    protocol = protocol_of(fields.text("protocol"))
    node_port = fields.port("nodePort")
    if target is None:
        target = port
    elif isinstance(target, str) and target.isdigit():
        target = int(target)
    return ServicePort(name, port, protocol, target, node_port)


@dataclass(frozen=True, slots=True)
class Service(KubeObject):
    type: str  # ClusterIP when absent
    cluster_ips: tuple[str, ...]  # spec.clusterIPs, else spec.clusterIP; none when headless
    external_ips: tuple[str, ...]  # spec.externalIPs
    balancer_ips: tuple[str, ...]  # status.loadBalancer.ingress[].ip
    selector: Mapping[str, str] | None  # spec.selector (equality only); None: no selector
    ports: tuple[ServicePort, ...]

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address kube-proxy rewrites to the Service's pods for traffic from inside the
        cluster: its ClusterIPs, ``spec.externalIPs`` and load-balancer ingress IPs."""
        return tuple(dict.fromkeys([*self.cluster_ips, *self.external_ips, *self.balancer_ips]))

    def port(self, port: int, protocol: Protocol) -> ServicePort | None:
        """The Service port ``port``/``protocol``, None when the Service has none."""
        return next(
            (p for p in self.ports if p.port == port and p.protocol is protocol),
            None,
        )


def _service(kind: str, meta: ObjectMeta, raw: Mapping[str, Any], fields: _Fields) -> Service:
    spec = fields.object("spec")
    type_ = spec.text("type") or "ClusterIP"
    cluster_ip = spec.text("clusterIP")
    listed = spec.texts("clusterIPs") or ([cluster_ip] if cluster_ip is not None else [])
    external = spec.ips("externalIPs")
    balancers = [
        ip
        for ingress in fields.object("status").object("loadBalancer").objects("ingress")
        if (ip := ingress.ip("ip")) is not None
    ]
    selector = spec.labels("selector")
    ports = tuple(_service_port(port) for port in spec.objects("ports"))
    return Service(
        kind,
        meta,
        raw,
        type=type_,
        cluster_ips=tuple(dict.fromkeys(normalize_ip(ip) for ip in listed if is_ip(ip))),
        external_ips=tuple(normalize_ip(ip) for ip in external),
        balancer_ips=tuple(normalize_ip(ip) for ip in balancers),
        selector=selector,
        ports=ports,
    )


@dataclass(frozen=True, slots=True)
class TargetRef:
    """An endpoint's ``targetRef``: the object (a pod, usually) behind the address."""

    kind: str
    namespace: str
    name: str
    uid: str

    @property
    def pod_key(self) -> str:
        """The pod it names as the resolver keys pods (its uid, else ``namespace/name``); "" when
        it names no pod."""
        if self.kind != "Pod":
            return ""
        return self.uid or f"{self.namespace}/{self.name}"


def _target_ref(fields: _Fields, key: str) -> TargetRef | None:
    ref = fields.object(key)
    kind = ref.text("kind", KIND)
    name = ref.text("name", OBJECT_NAME)
    namespace = ref.text("namespace", NAMESPACE_NAME)
    uid = ref.text("uid")
    if not ref.given:
        return None  # absent or empty: it names nothing
    return TargetRef(kind or "Pod", namespace or "", name or "", uid or "")


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    port: int | None
    protocol: Protocol | None


def _endpoint_ports(fields: _Fields) -> tuple[EndpointPort, ...]:
    return tuple(
        EndpointPort(
            port.text("name", PORT_NAME) or "",
            port.port("port"),
            protocol_of(port.text("protocol")),
        )
        for port in fields.objects("ports")
    )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Addresses of one endpoint (EndpointSlice) or one address (Endpoints), and what it is."""

    addresses: tuple[str, ...]  # as given: an EndpointSlice's may be names (addressType FQDN)
    target: TargetRef | None


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """An EndpointSlice's endpoints, or one subset of an Endpoints object (ready addresses and not
    ready ones), with the ports they receive on."""

    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]

    def port_for(self, name: str, protocol: Protocol) -> int | None:
        """The port these endpoints receive the Service port ``name`` on."""
        return next(
            (
                p.port
                for p in self.ports
                if p.port is not None and p.name == name and p.protocol is protocol
            ),
            None,
        )


@dataclass(frozen=True, slots=True)
class EndpointSlice(KubeObject):
    service_name: str  # its kubernetes.io/service-name label
    address_type: str  # IPv4, IPv6 or FQDN
    endpoints: EndpointSet


def _endpoint_slice(
    kind: str, meta: ObjectMeta, raw: Mapping[str, Any], fields: _Fields
) -> EndpointSlice:
    address_type = fields.text("addressType") or ""
    endpoints = tuple(
        Endpoint(tuple(endpoint.texts("addresses")), _target_ref(endpoint, "targetRef"))
        for endpoint in fields.objects("endpoints")
    )
    ports = _endpoint_ports(fields)
    service_name = meta.labels.get("kubernetes.io/service-name", "")
    return EndpointSlice(kind, meta, raw, service_name, address_type, EndpointSet(endpoints, ports))


@dataclass(frozen=True, slots=True)
class Endpoints(KubeObject):
    subsets: tuple[EndpointSet, ...]


def _endpoints(kind: str, meta: ObjectMeta, raw: Mapping[str, Any], fields: _Fields) -> Endpoints:
    subsets = []
    for subset in fields.objects("subsets"):
        ports = _endpoint_ports(subset)
        addresses = tuple(
            Endpoint((address.ip("ip") or "",), _target_ref(address, "targetRef"))
            for key in ("addresses", "notReadyAddresses")
            for address in subset.objects(key)
        )
        subsets.append(EndpointSet(addresses, ports))
    return Endpoints(kind, meta, raw, tuple(subsets))


# ---------------------------------------------------------------------------------------------
# Ingresses and HTTPRoutes: the Services a proxy sends outside traffic to.


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A Service an Ingress or an HTTPRoute sends to, and its port there: a number, or (an
    Ingress's ``port.name``) a Service port's name."""

    namespace: str
    name: str
    port: int | str


@dataclass(frozen=True, slots=True)
class Route(KubeObject):
    """An Ingress or an HTTPRoute: the Services its controller sends traffic from outside the
    cluster to (each once, sorted). References that name no Service port are left out: the
    controller sends them nothing. An HTTPRoute's references to another namespace are kept as
    written: whether a ReferenceGrant permits them is the reader's question."""

    backends: tuple[ServiceRef, ...]


def _route(kind: str, meta: ObjectMeta, raw: Mapping[str, Any], found: set[ServiceRef]) -> Route:
    # A port may be a number or a name: sorted as text, so a mix sorts too.
    ordered = sorted(found, key=lambda ref: (ref.namespace, ref.name, str(ref.port)))
    return Route(kind, meta, raw, tuple(ordered))


def _ingress_backend(backend: _Fields, namespace: str) -> ServiceRef | None:
    """An Ingress backend's ``service`` (a ``resource`` backend names no Service). Always in the
    Ingress's own namespace: the Ingress API has no field for another."""
    service = backend.object("service")
    name = service.text("name", OBJECT_NAME)
    port = service.object("port")
    number = port.port("number")
    port_name = port.text("name", PORT_NAME)
    which = number if number is not None else port_name
    return ServiceRef(namespace, name, which) if name and which else None


def _ingress(kind: str, meta: ObjectMeta, raw: Mapping[str, Any], fields: _Fields) -> Route:
    spec = fields.object("spec")
    backends = [spec.object("defaultBackend")] + [
        path.object("backend")
        for rule in spec.objects("rules")
        for path in rule.object("http").objects("paths")
    ]
    found = {ref for b in backends if (ref := _ingress_backend(b, meta.namespace)) is not None}
    return _route(kind, meta, raw, found)


def _http_route(kind: str, meta: ObjectMeta, raw: Mapping[str, Any], fields: _Fields) -> Route:
    found: set[ServiceRef] = set()
    for rule in fields.object("spec").objects("rules"):
        for ref in rule.objects("backendRefs"):
            group = ref.text("group")
            ref_kind = ref.text("kind", KIND)
            name = ref.text("name", OBJECT_NAME)
            namespace = ref.text("namespace", NAMESPACE_NAME) or meta.namespace
            port = ref.port("port")
            # Group "" and kind Service (their defaults): a Service; anything else is not.
            if (group or "") == "" and (ref_kind or "Service") == "Service" and name and port:
                found.add(ServiceRef(namespace, name, port))
    return _route(kind, meta, raw, found)


@dataclass(frozen=True, slots=True)
class GrantFrom:
    """A ReferenceGrant's ``from`` entry: objects of this group and kind in this namespace may
    refer to the grant's namespace."""

    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class GrantTo:
    """A ReferenceGrant's ``to`` entry: the objects of its namespace that may be referred to."""

    group: str
    kind: str
    name: str  # "" for every object of the kind


@dataclass(frozen=True, slots=True)
class ReferenceGrant(KubeObject):
    """A Gateway API ReferenceGrant: without one in a Service's namespace, an HTTPRoute of
    another namespace may not send to it (the gateway refuses the reference)."""

    sources: tuple[GrantFrom, ...]
    targets: tuple[GrantTo, ...]

    def grants(self, source: GrantFrom, target: GrantTo) -> bool:
        """Whether an object ``source`` describes may refer to the object ``target`` names."""
        return source in self.sources and any(
            (granted.group, granted.kind) == (target.group, target.kind)
            and granted.name in ("", target.name)
            for granted in self.targets
        )


def _reference_grant(
    kind: str, meta: ObjectMeta, raw: Mapping[str, Any], fields: _Fields
) -> ReferenceGrant:
    spec = fields.object("spec")
    sources = tuple(
        GrantFrom(
            entry.text("group") or "",
            entry.text("kind", KIND) or "",
            entry.text("namespace", NAMESPACE_NAME) or "",
        )
        for entry in spec.objects("from")
    )
    targets = tuple(
        GrantTo(
            entry.text("group") or "",
            entry.text("kind", KIND) or "",
            entry.text("name", OBJECT_NAME) or "",
        )
        for entry in spec.objects("to")
    )
    return ReferenceGrant(kind, meta, raw, sources, targets)


# ---------------------------------------------------------------------------------------------
# Nodes.

# Node annotations naming the node's own address on the pod network (Cilium's router, Calico's
# tunnel ends): the source of what the node itself sends to its pods.
GATEWAY_ANNOTATIONS = (
    "network.cilium.io/ipv4-cilium-host",
    "network.cilium.io/ipv6-cilium-host",
    "io.cilium.network.ipv4-cilium-host",
    "io.cilium.network.ipv6-cilium-host",
    "projectcalico.org/IPv4IPIPTunnelAddr",
    "projectcalico.org/IPv4VXLANTunnelAddr",
    "projectcalico.org/IPv6VXLANTunnelAddr",
)


@dataclass(frozen=True, slots=True)
class NodeAddress:
    type: str  # InternalIP, ExternalIP, Hostname, ...
    address: str


@dataclass(frozen=True, slots=True)
class Node(KubeObject):
    pod_cidrs: tuple[str, ...]  # spec.podCIDRs, else spec.podCIDR; as given
    addresses: tuple[NodeAddress, ...]
    # The addresses GATEWAY_ANNOTATIONS name, normalized. Annotations are free text: one that is
    # not an address names nothing (it is no error).
    gateway_addresses: tuple[str, ...]

    @property
    def ip_addresses(self) -> tuple[str, ...]:
        """Its addresses that are IP addresses (not host names), normalized."""
        return tuple(
            normalize_ip(entry.address)
            for entry in self.addresses
            if entry.type != "Hostname" and is_ip(entry.address)
        )


def _node(kind: str, meta: ObjectMeta, raw: Mapping[str, Any], fields: _Fields) -> Node:
    spec = fields.object("spec")
    pod_cidr = spec.text("podCIDR")
    pod_cidrs = spec.texts("podCIDRs") or ([pod_cidr] if pod_cidr is not None else [])
    addresses = tuple(
        NodeAddress(address.text("type") or "", address.text("address") or "")
        for address in fields.object("status").objects("addresses")
    )
    annotations = raw["metadata"].get("annotations")
    gateways = [
        value
        for key in GATEWAY_ANNOTATIONS
        if isinstance(annotations, dict)
        and isinstance(value := annotations.get(key), str)
        and is_ip(value)
    ]
    return Node(
        kind,
        meta,
        raw,
        tuple(pod_cidrs),
        addresses,
        tuple(normalize_ip(ip) for ip in gateways),
    )


# ---------------------------------------------------------------------------------------------
# Controllers.

# The kinds whose pods a Controller view describes (CronJob: its Job template's).
CONTROLLER_KINDS: frozenset[str] = frozenset(
    {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob"}
)


@dataclass(frozen=True, slots=True)
class Controller(KubeObject):
    """A Deployment, ReplicaSet, StatefulSet, DaemonSet or Job, or a CronJob by its Job template:
    the selector and pod template that describe its pods."""

    selector: LabelSelector  # as given (volatile labels too), sorted; empty when absent
    template_labels: Mapping[str, str]
    host_network: bool  # its pod template's spec.hostNetwork


def _selector(fields: _Fields) -> LabelSelector:
    match_labels = fields.labels("matchLabels") or {}
    requirements = [
        LabelRequirement(
            key=expression.text("key", LABEL_KEY) or "",
            operator=expression.text("operator", OPERATOR) or "",
            values=tuple(sorted(set(expression.texts("values", LABEL_VALUE)))),
        )
        for expression in fields.objects("matchExpressions")
    ]
    return LabelSelector(tuple(sorted(match_labels.items())), tuple(sorted(requirements)))


def _controller(kind: str, meta: ObjectMeta, raw: Mapping[str, Any], fields: _Fields) -> Controller:
    spec = fields.object("spec")
    if kind == "CronJob":
        spec = spec.object("jobTemplate").object("spec")
    selector = _selector(spec.object("selector"))
    template = spec.object("template")
    template_labels = template.object("metadata").labels("labels") or {}
    host_network = bool(template.object("spec").flag("hostNetwork"))
    return Controller(kind, meta, raw, selector, template_labels, host_network)


# ---------------------------------------------------------------------------------------------
# Reading an object.

_Reader = Callable[[str, ObjectMeta, Mapping[str, Any], _Fields], KubeObject]
_READERS: dict[str, _Reader] = {
    "Pod": _pod,
    "Service": _service,
    "EndpointSlice": _endpoint_slice,
    "Endpoints": _endpoints,
    "Node": _node,
    "Ingress": _ingress,
    "HTTPRoute": _http_route,
    "ReferenceGrant": _reference_grant,
    **dict.fromkeys(CONTROLLER_KINDS, _controller),
}
# The kinds the analyser reads: those above, and Namespaces and NetworkPolicies (metadata only).
KINDS: frozenset[str] = frozenset({*_READERS, "Namespace", "NetworkPolicy"})
CLUSTER_SCOPED_KINDS: frozenset[str] = frozenset({"Namespace", "Node"})


def read_object(raw: Mapping[str, Any], *, fail: Fail) -> KubeObject:
    """The view of ``raw``, an object of one of :data:`KINDS` (with a ``kind``, nulls dropped);
    ``fail`` raises the error for a field that is not what the view reads."""
    fields = _Fields(raw, "", fail)
    kind: str = raw["kind"]
    meta = _meta(fields.object("metadata"), kind)
    reader = _READERS.get(kind)
    if reader is None:
        return KubeObject(kind, meta, raw)
    return reader(kind, meta, raw, fields)
