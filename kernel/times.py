"""Times: UTC epoch seconds as netpol-sniffer uses them, the range an input may name, their
RFC 3339 text, and reading a time an input names.

A capture (pcapng's 64-bit timestamps shifted by ``if_tsoffset``) or an input file can name any
moment; the analyser takes those from 1970 to the end of year 9999 (what RFC 3339 and Python's
``datetime`` can write). A time out of that range is damage: a packet is skipped and counted, a
time in an input file is an error naming the field.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

EARLIEST = 0.0  # 1970-01-01T00:00:00Z
LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z


def possible(epoch: float) -> bool:
    """Whether ``epoch`` (UTC epoch seconds) is in the range the analyser takes (NaN is not)."""
    return EARLIEST <= epoch <= LATEST


def utc_text(epoch: float) -> str:
    """``2026-01-01T10:00:00Z`` (whole seconds); a time out of range is written as the number it
    is, never raised on."""
    if not possible(epoch):
        return f"{epoch!r} (not a time from 1970 to 9999)"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339(epoch: float) -> str:
    """RFC 3339 to the microsecond, for a file to keep (``2026-01-01T10:00:00.250000Z``); a time
    out of range as :func:`utc_text` writes it."""
    if not possible(epoch):
        return utc_text(epoch)
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: object) -> float:
    """RFC 3339 text (``2024-05-01T10:00:00Z``, fractions and offsets allowed; UTC without an
    offset), a ``datetime``, or epoch seconds → UTC epoch seconds in the range
    :func:`possible` takes. Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        try:
            epoch = float(value)
        except OverflowError:  # a whole number beyond any float (JSON writes any)
            epoch = math.nan
    else:
        if isinstance(value, datetime):
            when = value
        elif isinstance(value, str):
            when = datetime.fromisoformat(value.strip())
        else:
            raise ValueError(f"not a timestamp: {value!r}")
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        try:
            epoch = when.timestamp()
        except OverflowError:
            epoch = math.nan
    if not possible(epoch):
        raise ValueError(f"not a time from 1970 to 9999: {value!r}")
    return epoch
