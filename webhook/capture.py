"""The capture sidecar's tcpdump command line: the single source of truth.

The webhook puts it into the injected container and the lab runs the very same argv inside its
simulated pods. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DEFAULT_DIRECTORY = "/captures"
DEFAULT_INTERFACE = "any"
# Big enough for the headers of every packet and for whole DNS answers (names → IPs).
DEFAULT_SNAPLEN = 512
# Size-bounded ring: tcpdump -C (millions of bytes per file) and -W (number of files kept).
DEFAULT_ROTATE_MEGABYTES = 10
DEFAULT_ROTATE_FILES = 10
DEFAULT_FILE_NAME = "capture.pcap"


class CaptureMode(StrEnum):
    HANDSHAKE = "handshake"  # TCP SYN/FIN/RST, SCTP, UDP and DNS: small, enough for policies
    FULL = "full"  # the headers of every packet: volumes and long-lived flows too


# TCP flags at byte 13 of the TCP header; tcp[tcpflags] only works for IPv4, so IPv6 (without
# extension headers) reads them at offset 40 + 13.
_TCP_CONTROL_V4 = "(tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0)"
_TCP_CONTROL_V6 = "(ip6 and tcp and (ip6[53] & 0x07 != 0))"
_HANDSHAKE_FILTER = f"{_TCP_CONTROL_V4} or {_TCP_CONTROL_V6} or udp or sctp or (tcp port 53)"
_FULL_FILTER = "ip or ip6"


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    mode: CaptureMode = CaptureMode.HANDSHAKE
    directory: str = DEFAULT_DIRECTORY
    interface: str = DEFAULT_INTERFACE
    snaplen: int = DEFAULT_SNAPLEN
    rotate_megabytes: int = DEFAULT_ROTATE_MEGABYTES
    rotate_files: int = DEFAULT_ROTATE_FILES
    file_name: str = DEFAULT_FILE_NAME

    @property
    def max_bytes(self) -> int:
        """The most the ring of capture files can hold on disk."""
        return self.rotate_megabytes * 1_000_000 * self.rotate_files


def capture_filter(mode: CaptureMode) -> str:
    """The BPF expression for a capture mode."""
    return _HANDSHAKE_FILTER if mode is CaptureMode.HANDSHAKE else _FULL_FILTER


def tcpdump_argv(options: CaptureOptions) -> list[str]:
    """tcpdump's argv: all interfaces, not promiscuous, numeric, packet-buffered, stays root
    (the sidecar has only NET_RAW; no setuid dance), small snaplen, a size-bounded ring."""
    return [
        "tcpdump",
        "-i",
        options.interface,
        "-p",
        "-n",
        "-U",
        "-Z",
        "root",
        "-s",
        str(options.snaplen),
        "-C",
        str(options.rotate_megabytes),
        "-W",
        str(options.rotate_files),
        "-w",
        f"{options.directory.rstrip('/')}/{options.file_name}",
        capture_filter(options.mode),
    ]
