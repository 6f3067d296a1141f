"""Fuzzing the cron schedule reader (analyser.periods.cron_period): a CronJob's schedule comes
from the snapshot, so it may be any text. It is a period (a positive, finite number of seconds, at
least a second and at most the 28 years runs are laid out over) or None, never an exception.

Budget: ``FUZZ_EXAMPLES`` examples per target, as tests/fuzz/test_fuzz_inputs.py."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyser.periods import DAY, cron_period

pytestmark = pytest.mark.fuzz
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

_TOKENS = st.sampled_from(
    [
        "*",
        "?",
        "*/0",
        "*/7",
        "0",
        "1",
        "5",
        "7",
        "12",
        "23",
        "29",
        "30",
        "31",
        "59",
        "60",
        "1-5",
        "5-1",
        "0-7",
        "mon-fri",
        "sun",
        "jan",
        "feb",
        "L",
        "W",
        "#",
        ",",
        "/",
        "-",
        "@daily",
        "@every",
        "1h",
        "90m",
        "@reboot",
        "²",
        "٣",
        "99999999",
        "CRON_TZ=UTC",
        "TZ=",
        "",
    ]
)
_FIELD = st.lists(_TOKENS, min_size=1, max_size=4).map("".join)
_SCHEDULES = st.one_of(
    st.text(max_size=300),
    st.lists(_FIELD, min_size=0, max_size=7).map(" ".join),
)


@FUZZ
@given(_SCHEDULES)
def test_a_schedule_is_a_period_or_none(schedule: str) -> None:
    period = cron_period(schedule)
    if period is not None:
        assert math.isfinite(period) and 0 < period <= 28 * 366 * DAY
