"""What the capture sidecar records: its modes and the BPF filter of each. The webhook builds
tcpdump's command line from them, the lab runs that command, collect reads the mode back from a
sidecar's arguments. Data only."""

from __future__ import annotations

from enum import StrEnum


class CaptureMode(StrEnum):
    HANDSHAKE = "handshake"  # TCP SYN/FIN/RST, SCTP, UDP and DNS: small, enough for policies
    FULL = "full"  # the headers of every packet: volumes and long-lived flows too


# TCP flags at byte 13 of the TCP header; tcp[tcpflags] only works for IPv4, so IPv6 (without
# extension headers) reads them at offset 40 + 13.
_TCP_CONTROL_V4 = "(tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0)"
_TCP_CONTROL_V6 = "(ip6 and tcp and (ip6[53] & 0x07 != 0))"
_HANDSHAKE_FILTER = f"{_TCP_CONTROL_V4} or {_TCP_CONTROL_V6} or udp or sctp or (tcp port 53)"
_FULL_FILTER = "ip or ip6"


def capture_filter(mode: CaptureMode) -> str:
    """The BPF expression for a capture mode."""
    return _HANDSHAKE_FILTER if mode is CaptureMode.HANDSHAKE else _FULL_FILTER
