"""Argument types and options that several subcommands share, so they read and fail alike.

Pure argparse: no I/O and no imports beyond the standard library, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import ipaddress
import re

# webhook.capture.CaptureMode's values, repeated so that parsing options imports no webhook code.
CAPTURE_MODES = ("handshake", "full")
# analyser.peers.ALLOWABLE_SPECIAL's values, repeated for the same reason (a test keeps them in
# step).
SPECIAL_CLASSES = ("metadata", "link-local", "unspecified", "broadcast", "multicast")


def positive_int(text: str) -> int:
    """A whole number ≥ 1 (worker and parallelism counts)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def network(text: str) -> str:
    """An IPv4 or IPv6 network in CIDR notation without host bits (``10.0.0.0/24``)."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=True))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"must be a network such as 10.0.0.0/24 or fd00::/64, got {text!r}: {error}"
        ) from error


# Units of byte_size: powers of 1,024.
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*([0-9]+)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


def byte_size(text: str) -> int:
    """A number of bytes ≥ 1, optionally with a unit: ``1073741824``, ``512M``, ``1G``,
    ``2GiB`` (K, M, G and T are powers of 1,024)."""
    match = _SIZE.fullmatch(text)
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()] if match else 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a size such as 1G, 512M or a number of bytes, got {text!r}"
        )
    return value


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not zero):
        wanted = "a number of seconds ≥ 0" if zero else "a positive number of seconds"
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A number of seconds ≥ 0 (0: do not wait)."""
    return _seconds(text, zero=True)


def positive_seconds(text: str) -> float:
    """A number of seconds > 0 (a capture window)."""
    return _seconds(text, zero=False)


def add_capture_mode(parser: argparse.ArgumentParser, *, help_prefix: str) -> None:
    """``--capture-mode``: the sidecar's capture mode in a lab run (default: handshake)."""
    parser.add_argument(
        "--capture-mode",
        choices=CAPTURE_MODES,
        default=CAPTURE_MODES[0],
        help=f"{help_prefix} (default: {CAPTURE_MODES[0]})",
    )
