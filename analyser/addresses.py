"""IP addresses as text: whether a text is one, its one written form, its parsed value and its
sort order.

An address seen in a capture is already in its one written form (``packets.address_text``), and
a capture may name millions of distinct addresses (a scan, forged traffic): for such a text the
answers come from the C library's parser, with no ``ipaddress`` object. Any other text (from a
snapshot, a policy) is parsed by ``ipaddress``. Both are cached: the analysis asks about the same
few addresses again and again.

Pure: standard library only, no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
import socket


# The last few thousand: one address is asked about several times in a row (is it loopback,
# its written form, is it in the cluster's ranges), and a scan's millions each once in a while.
@functools.lru_cache(maxsize=1 << 12)
def _written_value(text: str) -> tuple[int, int] | None:
    """(IP version, value) when ``text`` is an address in the form ``ipaddress`` writes it
    compressed, else None (maybe an address written otherwise, maybe none)."""
    v6 = ":" in text
    # The C library writes IPv4-mapped and -compatible IPv6 addresses with a dotted tail,
    # ipaddress in hexadecimal: only ipaddress decides for those.
    if v6 and "." in text:
        return None
    family = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except (OSError, ValueError):  # not an address; an embedded NUL
        return None
    if socket.inet_ntop(family, packed) != text:
        return None
    return 6 if v6 else 4, int.from_bytes(packed, "big")


@functools.lru_cache(maxsize=1 << 16)
def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address's text parsed (ValueError when it is none)."""
    return ipaddress.ip_address(text)


def address_value(text: str) -> tuple[int, int]:
    """(IP version, the address as an integer) of an address's text (ValueError when it is
    none)."""
    written = _written_value(text)
    if written is not None:
        return written
    address = parse_address(text)
    return address.version, int(address)


def normalize_ip(text: str) -> str:
    """The compressed text form :class:`~analyser.flows.Endpoint` uses (ValueError when ``text``
    is no address)."""
    if _written_value(text) is not None:
        return text
    return _compressed(text)


@functools.lru_cache(maxsize=1 << 16)
def _compressed(text: str) -> str:
    return ipaddress.ip_address(text).compressed


def is_loopback_address(text: str) -> bool:
    """Whether the address ``text`` is a loopback address: in 127.0.0.0/8, or ::1."""
    version, value = address_value(text)
    return value >> 24 == 127 if version == 4 else value == 1


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address."""
    try:
        address_value(text)
    except ValueError:
        return False
    return True


def address_key(text: str) -> tuple[int, int]:
    """Sort key of an IP address's text: IPv4 first, then numerically."""
    return address_value(text)
