"""Address texts: the C library's fast path gives what ``ipaddress`` gives, for every address
and every way of writing one; the cluster's ranges answer as ``ipaddress`` networks do."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyser.addresses import (
    address_key,
    address_value,
    is_ip,
    is_loopback_address,
    normalize_ip,
)
from analyser.networks import _Networks

ADDRESSES = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    # IPv4-mapped and -compatible IPv6 addresses: the C library writes them otherwise.
    st.builds(lambda v4: ipaddress.IPv6Address(0xFFFF << 32 | int(v4)), st.ip_addresses(v=4)),
    st.builds(lambda v4: ipaddress.IPv6Address(int(v4)), st.ip_addresses(v=4)),
    # Runs of zero groups of every length and place.
    st.builds(
        lambda groups: ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups)),
        st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xABC]), min_size=8, max_size=8),
    ),
)
EXAMPLES = settings(max_examples=2000, deadline=None, database=None)


def _texts(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> set[str]:
    """Ways of writing ``address``: ipaddress's, the C library's, exploded, upper case."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return {
        address.compressed,
        address.exploded,
        address.compressed.upper(),
        socket.inet_ntop(family, address.packed),
    }


@EXAMPLES
@given(ADDRESSES)
def test_every_written_form_normalizes_and_parses_as_ipaddress_says(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    for text in _texts(address):
        assert normalize_ip(text) == address.compressed, text
        assert address_value(text) == (address.version, int(address)), text
        assert address_key(text) == (address.version, int(address)), text
        assert is_ip(text)


@EXAMPLES
@given(ADDRESSES)
def test_loopback_is_127_slash_8_and_colon_colon_1(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    expected = (
        address in ipaddress.ip_network("127.0.0.0/8")
        if address.version == 4
        else (int(address) == 1)
    )
    for text in _texts(address):
        assert is_loopback_address(text) is expected


@pytest.mark.parametrize(
    "text",
    ["", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.0.0.1", "1.2.3.4\x00", " 1.2.3.4", "::g", ":::",
     "1:2:3:4:5:6:7:8:9", "example.com", "1.2.3.4/32"],
)  # fmt: skip
def test_what_is_no_address_is_refused_as_ipaddress_refuses_it(text: str) -> None:
    with pytest.raises(ValueError):
        ipaddress.ip_address(text)
    assert not is_ip(text)
    with pytest.raises(ValueError):
        normalize_ip(text)
    with pytest.raises(ValueError):
        address_value(text)


def test_a_scoped_ipv6_address_is_left_to_ipaddress() -> None:
    assert normalize_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1%eth0").compressed


NETWORKS = [
    ipaddress.ip_network(text)
    for text in ("10.244.0.0/24", "10.244.1.0/24", "10.96.0.0/12", "fd00:10:244::/64", "fd00::/8")
]


@EXAMPLES
@given(
    st.one_of(
        ADDRESSES,
        st.builds(lambda n, host: NETWORKS[n][host % NETWORKS[n].num_addresses],
                  st.integers(0, len(NETWORKS) - 1), st.integers(0, 1 << 64)),
    )
)  # fmt: skip
def test_networks_hold_what_ipaddress_says_they_hold(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    expected = any(address in network for network in NETWORKS if network.version == address.version)
    for text in _texts(address):
        assert (text in _Networks(NETWORKS)) is expected, text
