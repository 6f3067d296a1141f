"""CiliumNetworkPolicy semantics (``cilium.io/v2``) for what the generator writes, compiled into
the same :class:`~analyser.evaluation.CompiledPolicy` NetworkPolicies compile to, so ``verify``,
``diff`` and the safety check of ``analyse`` judge both formats with one evaluation.

Pure: JSON policies (dicts) in, compiled policies out; no I/O, no YAML.

The rules implemented, as Cilium's policy language documents them:

- ``endpointSelector`` selects the endpoints (pods) of the policy's namespace it matches. A
  direction is enforced (default deny) when the policy has a non-empty ``ingress`` or ``egress``
  list, unless ``enableDefaultDeny`` says otherwise; an empty rule (``{}``) allows nothing.
- Label keys carry a source prefix (``k8s:``, ``any:``, none): it is dropped.
  ``io.kubernetes.pod.namespace`` is the pod's namespace and ``io.cilium.k8s.namespace.labels.K``
  a label ``K`` of it; a ``fromEndpoints``/``toEndpoints`` selector naming neither selects pods
  of the policy's own namespace.
- Within a rule, the peer lists (``toEndpoints``, ``toCIDR``, ``toCIDRSet``, ``toEntities``,
  ``toFQDNs``, and the ``from`` ones) are alternatives, and ``toPorts`` must match too; no peer
  list with ``toPorts`` matches every peer.
- ``toCIDR``/``toCIDRSet`` (with ``except``) match addresses outside the cluster, never a node:
  Cilium knows nodes by identity (``host``, ``remote-node``), not by address.
- ``toEntities``: see :class:`~analyser.evaluation.Entity`.
- ``toFQDNs`` (``matchName``, ``matchPattern``) match an address by the names the bundle's DNS
  answers gave it (``Address.dns_names``), as Cilium's DNS proxy learns them.
- ``toPorts``: ``port`` (a number as text, or a port name), ``endPort`` for a range, ``protocol``
  TCP, UDP, SCTP or ANY (all three); port 0 or none is every port. L7 ``rules`` (the DNS rule's
  names) filter inside a connection the ports allow: the connection itself is allowed.

Anything else (deny rules, ``toServices``, ``toGroups``, ``toNodes``, ICMP, several ``specs``, a
node selector) is refused with an error naming it rather than evaluated wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from analyser.evaluation import (
    NAMESPACE_NAME_LABEL,
    CompiledPolicy,
    Direction,
    Entity,
    IpBlock,
    Selector,
    _Invalid,
    _ip_block,
    _list,
    _mapping,
    _network,
    _PeerRule,
    _PortRule,
    _Requirement,
    _Rule,
    _selector,
)
from analyser.flows import Protocol
from analyser.fqdnselectors import FqdnSelector, valid_name, valid_pattern
from kernel.errors import PolicyError

KIND = "CiliumNetworkPolicy"
API_VERSION = "cilium.io/v2"
NAMESPACE_KEY = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
_SOURCES = ("k8s:", "any:")
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit also takes "²", which int() refuses
_PORT_NAME = re.compile(r"(?=.*[a-zA-Z])[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?")  # the CRD's
_ANY_PROTOCOLS = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)
_SUPPORTED_SPEC = frozenset(
    {"endpointSelector", "ingress", "egress", "enableDefaultDeny", "description", "labels"}
)
_PEERS = {
    Direction.INGRESS: ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
    Direction.EGRESS: ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toFQDNs"),
}


def _key(key: str) -> str:
    for source in _SOURCES:
        if key.startswith(source):
            return key.removeprefix(source)
    return key


def _endpoint_selectors(value: Any, where: str) -> tuple[Selector, Selector | None]:
    """A Cilium endpoint selector → (pod selector, namespace selector or None for the policy's
    own namespace), source prefixes dropped and the namespace's labels moved to the second."""
    raw = _selector(value, where)
    pods_labels, namespace_labels = [], []
    for key, item in raw.match_labels:
        plain = _key(key)
        if plain == NAMESPACE_KEY:
            namespace_labels.append((NAMESPACE_NAME_LABEL, item))
        elif plain.startswith(NAMESPACE_LABELS_PREFIX):
            namespace_labels.append((plain.removeprefix(NAMESPACE_LABELS_PREFIX), item))
        else:
            pods_labels.append((plain, item))
    pods_requirements, namespace_requirements = [], []
    for requirement in raw.requirements:
        plain = _key(requirement.key)
        if plain == NAMESPACE_KEY:
            namespace_requirements.append(
                _Requirement(NAMESPACE_NAME_LABEL, requirement.operator, requirement.values)
            )
        elif plain.startswith(NAMESPACE_LABELS_PREFIX):
            key = plain.removeprefix(NAMESPACE_LABELS_PREFIX)
            namespace_requirements.append(
                _Requirement(key, requirement.operator, requirement.values)
            )
        else:
            pods_requirements.append(_Requirement(plain, requirement.operator, requirement.values))
    pods = Selector(tuple(sorted(pods_labels)), tuple(pods_requirements))
    if not namespace_labels and not namespace_requirements:
        return pods, None
    return pods, Selector(tuple(sorted(namespace_labels)), tuple(namespace_requirements))


def _cidr_peer(value: Any, where: str) -> _PeerRule:
    if isinstance(value, str):
        return _PeerRule(None, None, IpBlock(_network(value, where)), outside_only=True)
    spec = _mapping(value, where)
    unknown = set(spec) - {"cidr", "except"}
    if unknown:
        raise _Invalid(f"{where}: {', '.join(sorted(unknown))} not supported")
    return _PeerRule(None, None, _ip_block(spec, where), outside_only=True)


def _entities(value: Any, where: str) -> _PeerRule:
    entities = []
    for index, item in enumerate(_list(value, where)):
        try:
            entities.append(Entity(item))
        except ValueError:
            raise _Invalid(f"{where}[{index}]: entity {item!r} not supported") from None
    return _PeerRule(None, None, None, entities=frozenset(entities))


def _fqdns(value: Any, where: str) -> _PeerRule:
    selectors = []
    for index, item in enumerate(_list(value, where)):
        at = f"{where}[{index}]"
        spec = _mapping(item, at)
        name, pattern = spec.get("matchName"), spec.get("matchPattern")
        if isinstance(name, str) and pattern is None and valid_name(name):
            selectors.append(FqdnSelector(name))
        elif isinstance(pattern, str) and name is None and valid_pattern(pattern):
            selectors.append(FqdnSelector(pattern, pattern=True))
        else:
            raise _Invalid(f"{at}: needs one valid matchName or matchPattern")
    return _PeerRule(None, None, None, fqdns=tuple(selectors))


def _peers(spec: Mapping[str, Any], key: str, where: str) -> list[_PeerRule]:
    value = spec.get(key)
    at = f"{where}.{key}"
    if key.endswith("Endpoints"):
        return [
            _PeerRule(*_endpoint_selectors(item, f"{at}[{index}]"), None)
            for index, item in enumerate(_list(value, at))
        ]
    if key.endswith("CIDR") or key.endswith("CIDRSet"):
        return [_cidr_peer(item, f"{at}[{index}]") for index, item in enumerate(_list(value, at))]
    if key.endswith("Entities"):
        return [_entities(value, at)]
    return [_fqdns(value, at)]


def _ports(value: Any, where: str) -> tuple[_PortRule, ...]:
    rules: list[_PortRule] = []
    for index, item in enumerate(_list(value, where)):
        at = f"{where}[{index}]"
        spec = _mapping(item, at)
        unknown = set(spec) - {"ports", "rules"}
        if unknown:
            raise _Invalid(f"{at}: {', '.join(sorted(unknown))} not supported")
        for number, port in enumerate(_list(spec.get("ports"), f"{at}.ports")):
            rules += _port(port, f"{at}.ports[{number}]")
    return tuple(rules)


def _port(value: Any, where: str) -> list[_PortRule]:
    spec = _mapping(value, where)
    text = spec.get("protocol") or "ANY"
    if text == "ANY":
        protocols: Sequence[Protocol] = _ANY_PROTOCOLS
    else:
        try:
            protocols = (Protocol(text),)
        except ValueError:
            raise _Invalid(f"{where}: unknown protocol {text!r}") from None
    raw = spec.get("port")
    end = spec.get("endPort")
    if raw is None or raw == "0":
        port: int | str | None = None
    elif not isinstance(raw, str):
        raise _Invalid(f"{where}: port must be text (a number or a port name)")
    elif _DIGITS.fullmatch(raw):
        port = int(raw)
        if not 1 <= port <= 65535:
            raise _Invalid(f"{where}: port {raw} is outside 1-65535")
    elif _PORT_NAME.fullmatch(raw):
        port = raw.lower()
    else:
        raise _Invalid(f"{where}: port {raw!r} is neither a number nor a port name")
    if end is not None and end != 0:
        if not isinstance(port, int) or isinstance(end, bool) or not isinstance(end, int):
            raise _Invalid(f"{where}: endPort needs a numeric port and must be a number")
        if not port <= end <= 65535:
            raise _Invalid(f"{where}: endPort {end} must be between port {port} and 65535")
    else:
        end = None
    return [_PortRule(protocol, port, end) for protocol in protocols]


def _rules(value: Any, direction: Direction) -> tuple[_Rule, ...]:
    where = f"spec.{direction}"
    rules = []
    for index, item in enumerate(_list(value, where)):
        at = f"{where}[{index}]"
        spec = _mapping(item, at)
        unknown = set(spec) - {*_PEERS[direction], "toPorts"}
        if unknown:
            raise _Invalid(f"{at}: {', '.join(sorted(unknown))} not supported")
        present = [key for key in _PEERS[direction] if spec.get(key) is not None]
        peers = [peer for key in present for peer in _peers(spec, key, at)]
        ports = _ports(spec.get("toPorts"), f"{at}.toPorts")
        if not present and not ports:
            continue  # an empty rule: allows nothing (it only turns the direction's deny on)
        if present and not peers:
            continue  # an empty, non-nil peer list selects nothing
        rules.append(_Rule(tuple(peers), ports))
    return tuple(rules)


def _directions(spec: Mapping[str, Any]) -> frozenset[Direction]:
    default_deny = _mapping(spec.get("enableDefaultDeny"), "spec.enableDefaultDeny")
    found = set()
    for direction in Direction:
        enabled = default_deny.get(str(direction))
        if enabled is not None and not isinstance(enabled, bool):
            raise _Invalid(f"spec.enableDefaultDeny.{direction} must be true or false")
        has_rules = bool(_list(spec.get(str(direction)), f"spec.{direction}"))
        if has_rules if enabled is None else enabled:
            found.add(direction)
    return frozenset(found)


def compile_cilium_policy(document: Mapping[str, Any], *, source: str = "") -> CompiledPolicy:
    """A CiliumNetworkPolicy dict → :class:`CompiledPolicy` (``kind`` CiliumNetworkPolicy).

    Raises :class:`PolicyError` naming the policy and ``source`` when the document is not a
    well-formed ``cilium.io/v2`` CiliumNetworkPolicy of the subset this evaluation knows."""
    raw_metadata = document.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, Mapping) else {}
    name = str(metadata.get("name", "?"))
    namespace = str(metadata.get("namespace") or "default")
    origin = f" in {source}" if source else ""
    try:
        if document.get("apiVersion") != API_VERSION:
            raise _Invalid(f"apiVersion {document.get('apiVersion')!r} is not {API_VERSION}")
        if name == "?":
            raise _Invalid("metadata.name is required")
        if document.get("specs") is not None:
            raise _Invalid("specs (several rules in one object) not supported: use spec")
        spec = _mapping(document.get("spec"), "spec")
        unknown = set(spec) - _SUPPORTED_SPEC
        if unknown:
            raise _Invalid(f"spec: {', '.join(sorted(unknown))} not supported")
        if "endpointSelector" not in spec:
            raise _Invalid("spec.endpointSelector is required")
        pods, namespaces = _endpoint_selectors(spec["endpointSelector"], "spec.endpointSelector")
        if namespaces is not None:
            raise _Invalid("spec.endpointSelector: a namespace label is not supported there")
        return CompiledPolicy(
            namespace=namespace,
            name=name,
            source=source,
            pod_selector=pods,
            directions=_directions(spec),
            ingress=_rules(spec.get("ingress"), Direction.INGRESS),
            egress=_rules(spec.get("egress"), Direction.EGRESS),
            kind=KIND,
        )
    except _Invalid as error:
        raise PolicyError(f"{KIND} {namespace}/{name}{origin}: {error}") from None
