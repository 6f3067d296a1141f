"""The range of times the analyser takes, and their text: never an exception, whatever the
number."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from analyser.snapshot import load_pod_ip_history
from kernel.bundles import Window
from kernel.errors import SnapshotError
from kernel.times import EARLIEST, LATEST, parse_timestamp, possible, utc_text


def test_the_range_is_1970_to_the_end_of_9999() -> None:
    assert utc_text(EARLIEST) == "1970-01-01T00:00:00Z"
    assert utc_text(LATEST) == "9999-12-31T23:59:59Z"
    assert utc_text(1_767_261_600.75) == "2026-01-01T10:00:00Z"
    assert Window.text(1_767_261_600.0) == "2026-01-01T10:00:00Z"


@pytest.mark.parametrize(
    "epoch", [-1.0, LATEST + 1, 2.0**62, -(2.0**62), 1e300, math.inf, -math.inf, math.nan]
)
def test_a_time_out_of_range_is_written_as_the_number_it_is(epoch: float) -> None:
    # datetime raised OverflowError, ValueError or OSError on these (Window.text, the report's
    # `utc` filter, the capture-window annotation).
    assert not possible(epoch)
    assert Window.text(epoch) == f"{epoch!r} (not a time from 1970 to 9999)"
    with pytest.raises(ValueError, match="not a time from 1970 to 9999"):
        parse_timestamp(epoch)


@pytest.mark.parametrize(
    "text", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z"]
)
def test_rfc3339_text_that_leaves_the_range_once_in_utc_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a time from 1970 to 9999"):
        parse_timestamp(text)


def test_a_whole_number_too_large_for_a_float_is_out_of_range_not_an_overflow(
    tmp_path: Path,
) -> None:
    """JSON writes any whole number: 10**400 seconds must be refused like 1e300, not crash."""
    with pytest.raises(ValueError, match="not a time from 1970 to 9999"):
        parse_timestamp(10**400)
    history = tmp_path / "pod-ips.jsonl"
    history.write_text('{"time": 1' + "0" * 400 + ', "namespace": "a", "pod": "p"}\n')
    with pytest.raises(SnapshotError, match="'time' is not a timestamp"):
        load_pod_ip_history(history)
