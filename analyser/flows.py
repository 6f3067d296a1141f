"""Flows: the traffic facts the rest of the analyser works on (data, plus the pure step that
orients captured conversations into client → server flows).

No I/O here and no dpkt: packets arrive already decoded (see ``packets``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class Evidence(StrEnum):
    """How the direction of a flow (who is the client) was decided."""

    HANDSHAKE = "handshake"  # TCP SYN without ACK, or SCTP INIT, was captured
    KNOWN_LISTENER = "known-listener"  # the server side listens on that port per the snapshot
    HEURISTIC = "heuristic"  # port heuristics (well-known / lower port is the server)


@dataclass(frozen=True, order=True, slots=True)
class Endpoint:
    """An IP address (compressed text form, IPv4 or IPv6) and a port."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Flow:
    """One client → server conversation, as seen by one or more captures."""

    protocol: Protocol
    client: Endpoint
    server: Endpoint
    first_seen: float  # UTC epoch seconds
    last_seen: float
    packets: int
    bytes: int
    captures: frozenset[str]  # bundle-relative paths of the capture files that saw it
    evidence: Evidence


# "Does ENDPOINT listen on PROTOCOL at TIME?" — answered from the snapshot by the identity layer.
ListenerOracle = Callable[[Endpoint, Protocol, float], bool]
