"""DNS: captured answers → which names an IP address had, and when.

A response for ``shop.example`` that says ``shop.example CNAME edge.cdn.example`` and
``edge.cdn.example A 192.0.2.7`` gives 192.0.2.7 both names: the one the client asked for and
every name on the CNAME chain. Pure: decoding is ``packets.decode_dns``'s job, no I/O here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from analyser.packets import DnsFault, DnsResponse, decode_dns

# Seconds by which clocks of two captures (two nodes) may disagree.
CLOCK_SKEW = 1.0


@dataclass(frozen=True, order=True, slots=True)
class DnsName:
    """One name seen for one address, with the first and last answer that said so."""

    ip: str
    name: str
    first_seen: float
    last_seen: float


def _chain_names(owner: str, aliases: tuple[tuple[str, str], ...]) -> set[str]:
    """``owner`` and every name whose CNAME chain leads to it."""
    pointing_at: dict[str, list[str]] = {}
    for alias, target in aliases:
        pointing_at.setdefault(target, []).append(alias)
    names = {owner}
    pending = [owner]
    while pending:
        for alias in pointing_at.get(pending.pop(), ()):
            if alias not in names:
                names.add(alias)
                pending.append(alias)
    return names


class DnsTable:
    """IP address (compressed text) → names, each with the times of the first and last answer."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, list[float]]] = {}

    def add(self, response: DnsResponse, at: float) -> None:
        """Record the addresses of one response, captured at ``at`` (UTC epoch seconds)."""
        for owner, ip in response.addresses:
            names = self._seen.setdefault(ip, {})
            for name in _chain_names(owner, response.aliases):
                self._note(names, name, at, at)

    def add_payload(self, payload: bytes, *, over_tcp: bool, at: float) -> DnsFault | None:
        """Decode a port-53 payload and record its answers; the fault if it could not be read."""
        responses = decode_dns(payload, over_tcp=over_tcp)
        if isinstance(responses, DnsFault):
            return responses
        for response in responses:
            self.add(response, at)
        return None

    @staticmethod
    def _note(names: dict[str, list[float]], name: str, first: float, last: float) -> None:
        seen = names.get(name)
        if seen is None:
            names[name] = [first, last]
        else:
            seen[0] = min(seen[0], first)
            seen[1] = max(seen[1], last)

    def merge(self, other: DnsTable) -> None:
        """Fold another table into this one (the result does not depend on the order)."""
        for ip, their_names in other._seen.items():
            names = self._seen.setdefault(ip, {})
            for name, (first, last) in their_names.items():
                self._note(names, name, first, last)

    def names_for(self, ip: str, at: float | None = None) -> tuple[str, ...]:
        """The names seen for ``ip`` (compressed text), sorted.

        With ``at``, only names from answers captured at or before that time (give or take
        ``CLOCK_SKEW`` seconds, as the answer and the flow may come from captures on different
        nodes): an address used before anyone looked it up does not take a later answer's name.
        """
        names = self._seen.get(ip, {})
        latest = None if at is None else at + CLOCK_SKEW
        return tuple(
            sorted(name for name, (first, _) in names.items() if latest is None or first <= latest)
        )

    def __iter__(self) -> Iterator[DnsName]:
        """Every (address, name) pair, sorted by address text then name."""
        for ip in sorted(self._seen):
            for name, (first, last) in sorted(self._seen[ip].items()):
                yield DnsName(ip, name, first, last)

    def __len__(self) -> int:
        """The number of addresses with at least one name."""
        return len(self._seen)
