"""IP addresses as text: whether a text is one, its one written form, its parsed value and its
sort order. Cached: the analysis asks about the same few addresses again and again (both ends of
every flow, every pod's and Service's addresses).

Pure: standard library only, no I/O.
"""

from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=1 << 16)
def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address's text parsed (ValueError when it is none)."""
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=1 << 16)
def normalize_ip(text: str) -> str:
    """The compressed text form :class:`~analyser.flows.Endpoint` uses (ValueError when ``text``
    is no address)."""
    return ipaddress.ip_address(text).compressed


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address."""
    try:
        parse_address(text)
    except ValueError:
        return False
    return True


def address_key(text: str) -> tuple[int, int]:
    """Sort key of an IP address's text: IPv4 first, then numerically."""
    address = parse_address(text)
    return address.version, int(address)
