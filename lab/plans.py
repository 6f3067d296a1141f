"""The traffic plan: who calls what, how often, and what happens during the window.

Pure: YAML text → frozen data, checked once. The format is documented in ``docs/lab.md``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import yaml

from kernel.errors import LabError

DEFAULT_DURATION = 10.0
DEFAULT_EVERY = 1.0
LAB_PROTOCOLS = ("TCP", "UDP")  # SCTP needs a kernel module this lab cannot count on


class Expect(StrEnum):
    OK = "ok"  # the call must succeed at least once
    REFUSED = "refused"  # nothing listens: the connection is refused (TCP RST / ICMP)
    NXDOMAIN = "nxdomain"  # the name does not resolve, so no connection is made


class Family(StrEnum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"


@dataclass(frozen=True, slots=True)
class Call:
    """``client`` (a workload ``NS/Kind/name``) calls ``host:port`` every ``every`` seconds.

    ``host`` is resolved by the client's own resolver through the cluster DNS and its search path,
    exactly like a pod would: a Service name, ``svc.ns``, a headless pod name or an outside name.
    """

    client: str  # NS/Kind/name, or ip:ADDRESS for a client in the outside world
    host: str
    port: int
    protocol: str = "TCP"
    every: float = DEFAULT_EVERY
    family: Family = Family.IPV4
    long_lived: bool = False  # opened before capture starts, used during the window, then closed
    expect: Expect = Expect.OK

    @property
    def outside_address(self) -> str | None:
        """The outside client's address, for a call from the outside world."""
        return self.client[3:] if self.client.startswith("ip:") else None


@dataclass(frozen=True, slots=True)
class ExternalHost:
    """A public-looking name served by the outside world namespace."""

    name: str
    ports: tuple[tuple[int, str], ...]  # (port, protocol)
    ipv4: str | None = None  # chosen by the lab when not given
    ipv6: str | None = None
    cname: str | None = None  # the name is an alias: DNS answers a CNAME to this, then addresses


@dataclass(frozen=True, slots=True)
class Restart:
    """At ``at`` seconds into the window the pod of ``workload`` is deleted and replaced by a new
    pod with a new IP; with ``ip_to`` the pod of that workload is replaced as well, and its new pod
    takes the old IP of ``workload``'s pod (an IP reused by another pod)."""

    workload: str
    at: float
    ip_to: str | None = None


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    calls: tuple[Call, ...]
    external: tuple[ExternalHost, ...] = ()
    restarts: tuple[Restart, ...] = ()
    duration: float = DEFAULT_DURATION
    dual_stack: bool = False
    seed: int = 1


def read_plan(source: str, text: str) -> TrafficPlan:
    """Parse and check a plan; every error names ``source`` and the offending entry."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise LabError(f"{source}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise LabError(f"{source}: a traffic plan is a mapping with 'calls'")
    unknown = set(data) - {"calls", "external", "events", "duration", "dual-stack", "seed"}
    if unknown:
        raise LabError(f"{source}: unknown keys {sorted(unknown)}")
    calls = tuple(
        _call(entry, f"{source}: calls[{i}]") for i, entry in enumerate(data.get("calls") or [])
    )
    if not calls:
        raise LabError(f"{source}: the plan has no calls")
    external = tuple(
        _external(entry, f"{source}: external[{i}]")
        for i, entry in enumerate(data.get("external") or [])
    )
    restarts = tuple(
        _restart(entry, f"{source}: events[{i}]")
        for i, entry in enumerate(data.get("events") or [])
    )
    duration = _positive(data.get("duration", DEFAULT_DURATION), f"{source}: duration")
    for restart in restarts:
        if restart.at >= duration:
            raise LabError(
                f"{source}: restart of {restart.workload} at {restart.at}s is after "
                f"the end of the {duration}s window"
            )
    dual_stack = data.get("dual-stack", False)
    if not isinstance(dual_stack, bool):
        raise LabError(f"{source}: dual-stack must be true or false")
    seed = data.get("seed", 1)
    if not isinstance(seed, int):
        raise LabError(f"{source}: seed must be an integer")
    if not dual_stack and any(c.family is Family.IPV6 for c in calls):
        raise LabError(f"{source}: IPv6 calls need 'dual-stack: true'")
    for call in calls:
        address = call.outside_address
        if address is None:
            continue
        if (":" in address) != (call.family is Family.IPV6):
            raise LabError(f"{source}: {call.client} calls over {call.family}")
        if call.long_lived or call.expect is Expect.NXDOMAIN:
            raise LabError(f"{source}: calls from outside are short and name a LoadBalancer")
    return TrafficPlan(calls, external, restarts, duration, dual_stack, seed)


def _mapping(entry: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise LabError(f"{where}: must be a mapping")
    unknown = set(entry) - allowed
    if unknown:
        raise LabError(f"{where}: unknown keys {sorted(unknown)}")
    return entry


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise LabError(f"{where}: must be a positive number of seconds, not {value!r}")
    return float(value)


def _workload_ref(value: Any, where: str) -> str:
    if not isinstance(value, str) or value.count("/") != 2 or not all(value.split("/")):
        raise LabError(f"{where}: {value!r} is not a workload NAMESPACE/Kind/name")
    return value


def _client(value: Any, where: str) -> str:
    """A workload, or ``ip:ADDRESS``: a client in the outside world at that address."""
    if isinstance(value, str) and value.startswith("ip:"):
        try:
            return f"ip:{ipaddress.ip_address(value[3:])}"
        except ValueError as error:
            raise LabError(f"{where}: {error}") from error
    return _workload_ref(value, where)


def _protocol(value: Any, where: str) -> str:
    if value not in LAB_PROTOCOLS:
        raise LabError(
            f"{where}: protocol must be one of {', '.join(LAB_PROTOCOLS)}, not {value!r}"
        )
    return str(value)


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise LabError(f"{where}: {value!r} is not a port number")
    return value


def _call(entry: Any, where: str) -> Call:
    fields = _mapping(
        entry, where, {"from", "to", "protocol", "every", "family", "long-lived", "expect"}
    )
    target = fields.get("to")
    if not isinstance(target, str) or ":" not in target:
        raise LabError(f"{where}: 'to' must be HOST:PORT, not {target!r}")
    host, _, port_text = target.rpartition(":")
    if not host or not port_text.isdigit():
        raise LabError(f"{where}: 'to' must be HOST:PORT, not {target!r}")
    long_lived = fields.get("long-lived", False)
    if not isinstance(long_lived, bool):
        raise LabError(f"{where}: long-lived must be true or false")
    protocol = _protocol(fields.get("protocol", "TCP"), where)
    if long_lived and protocol != "TCP":
        raise LabError(f"{where}: only TCP connections can be long-lived")
    try:
        family = Family(fields.get("family", Family.IPV4))
        expect = Expect(fields.get("expect", Expect.OK))
    except ValueError as error:
        raise LabError(f"{where}: {error}") from error
    return Call(
        client=_client(fields.get("from"), f"{where}: from"),
        host=host.lower().rstrip("."),
        port=_port(int(port_text), where),
        protocol=protocol,
        every=_positive(fields.get("every", DEFAULT_EVERY), f"{where}: every"),
        family=family,
        long_lived=long_lived,
        expect=expect,
    )


def _external(entry: Any, where: str) -> ExternalHost:
    fields = _mapping(entry, where, {"name", "ports", "ipv4", "ipv6", "cname"})
    name = _outside_name(fields.get("name"), f"{where}: name")
    cname = fields.get("cname")
    if cname is not None:
        cname = _outside_name(cname, f"{where}: cname")
    ports = []
    for value in fields.get("ports") or []:
        text = str(value)
        number, _, protocol = text.partition("/")
        if not number.isdigit():
            raise LabError(f"{where}: port {value!r} is not PORT or PORT/PROTOCOL")
        ports.append((_port(int(number), where), _protocol(protocol or "TCP", where)))
    if not ports:
        raise LabError(f"{where}: an outside host needs ports")
    addresses = {}
    for key, version in (("ipv4", 4), ("ipv6", 6)):
        value = fields.get(key)
        if value is None:
            continue
        try:
            address = ipaddress.ip_address(value)
        except ValueError as error:
            raise LabError(f"{where}: {key}: {error}") from error
        if address.version != version:
            raise LabError(f"{where}: {key} {value!r} is not an IPv{version} address")
        addresses[key] = str(address)
    return ExternalHost(name, tuple(sorted(set(ports))), cname=cname, **addresses)


def _outside_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or "." not in value or value.endswith("cluster.local"):
        raise LabError(f"{where}: must be a dotted outside name, not {value!r}")
    return value.lower().rstrip(".")


def _restart(entry: Any, where: str) -> Restart:
    fields = _mapping(entry, where, {"restart", "at", "ip-to"})
    ip_to = fields.get("ip-to")
    return Restart(
        workload=_workload_ref(fields.get("restart"), f"{where}: restart"),
        at=_positive(fields.get("at"), f"{where}: at"),
        ip_to=None if ip_to is None else _workload_ref(ip_to, f"{where}: ip-to"),
    )
