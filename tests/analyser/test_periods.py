"""Capture windows against CronJob schedules (analyser.periods): the longest gap between a
schedule's runs, what windows cover together, which CronJobs they may miss, and the flows a
bundle may speak for."""

from __future__ import annotations

from dataclasses import replace

import pytest

from analyser.periods import (
    DAY,
    HOUR,
    MINUTE,
    WINDOW_SLACK,
    CronJobSchedule,
    covered_seconds,
    cron_period,
    duration_text,
    uncovered_cronjobs,
    within_window,
)
from kernel.bundles import Window
from tests.analyser.flow_builders import flow

WEEK = 7 * DAY


@pytest.mark.parametrize(
    ("schedule", "period"),
    [
        ("* * * * *", MINUTE),
        ("*/15 * * * *", 15 * MINUTE),
        ("5/20 * * * *", 20 * MINUTE),  # 5, 25, 45: from 45 to the next hour's 5
        ("0 * * * *", HOUR),
        ("30 2 * * *", DAY),
        ("0 0,12 * * *", 12 * HOUR),
        ("0 3 * * 0", WEEK),
        ("0 3 * * 7", WEEK),  # 7 is Sunday too
        ("0 3 * * sun", WEEK),
        ("0 9-17 * * mon-fri", 2 * DAY + 16 * HOUR),  # Friday 17:00 to Monday 09:00
        ("0 0 1 * *", 31 * DAY),
        ("0 0 1 */3 *", 92 * DAY),  # 1 October to 1 January
        ("0 0 1 jan *", 366 * DAY),  # over a leap year's February
        ("0 0 29 2 *", 1461 * DAY),  # leap days: four years apart
        ("0 0 1,15 * 5", WEEK),  # day of month OR day of week when both are restricted
        ("@hourly", HOUR),
        ("@daily", DAY),
        ("@midnight", DAY),
        ("@weekly", WEEK),
        ("@monthly", 31 * DAY),
        ("@every 90m", 90 * MINUTE),
        ("@every 1h30m", 90 * MINUTE),
        ("CRON_TZ=Europe/Paris 30 2 * * *", DAY),
        ("TZ=UTC 0 3 * * 0", WEEK),
        ("0  3 *  * 0", WEEK),  # extra spaces
    ],
)
def test_the_longest_gap_between_runs(schedule: str, period: float) -> None:
    assert cron_period(schedule) == pytest.approx(period)


def test_the_13th_or_a_friday_is_at_most_a_week_apart() -> None:
    # Both fields restricted: either day runs, so never more than a week between runs.
    assert cron_period("0 0 13 * 5") == WEEK


@pytest.mark.parametrize(
    "schedule",
    [
        "",
        "not a schedule",
        "* * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "0 0 30 2 *",  # never runs
        "0 0 * foo *",
        "@reboot",
        "@every",
        "@every 10x",
        "L * * * *",
        "x" * 10_000,
        "² * * * *",  # a digit to str.isdigit, not to int
        "0 0 ٣ * *",  # an Arabic-Indic three: int reads it, cron does not
        "0 0 1 1 * " + "1" * 5000,
    ],
)
def test_what_is_no_schedule_has_no_period(schedule: str) -> None:
    assert cron_period(schedule) is None


def test_windows_cover_their_union() -> None:
    assert covered_seconds([]) == 0
    assert covered_seconds([Window(0, 10), Window(5, 20), Window(30, 40)]) == 30
    assert covered_seconds([Window(30, 40), Window(0, 100)]) == 100


def test_durations_read_as_two_units_at_most() -> None:
    assert [duration_text(s) for s in (30, 90 * 60, WEEK, DAY + 2 * HOUR + 5 * MINUTE)] == [
        "30 s",
        "1 h 30 min",
        "7 d",
        "1 d 2 h",
    ]


NIGHTLY = CronJobSchedule("batch/nightly", "batch/CronJob/nightly", "0 3 * * *")
WEEKLY = CronJobSchedule("batch/weekly", "batch/CronJob/weekly", "0 3 * * 0")
EVERY_MINUTE = CronJobSchedule("batch/poll", "batch/CronJob/poll", "* * * * *")
BROKEN = CronJobSchedule("batch/broken", "batch/CronJob/broken", "not a schedule")


def test_cronjobs_whose_runs_the_windows_may_miss() -> None:
    hour = [Window(0, HOUR)]
    found = uncovered_cronjobs([NIGHTLY, WEEKLY, EVERY_MINUTE, BROKEN], hour, seen=())
    assert [(item.cronjob, item.period, item.covered) for item in found] == [
        ("batch/nightly", DAY, HOUR),
        ("batch/weekly", WEEK, HOUR),
    ]
    assert "CronJob batch/weekly runs at most 7 d apart" in found[1].text
    assert found[1].as_json() == {
        "cronjob": "batch/weekly",
        "schedule": "0 3 * * 0",
        "period_seconds": WEEK,
        "covered_seconds": HOUR,
    }


def test_a_cronjob_whose_traffic_was_seen_or_whose_period_the_windows_cover_is_fine() -> None:
    days = [Window(index * DAY, index * DAY + 5 * HOUR) for index in range(6)]  # 30 h
    assert uncovered_cronjobs([NIGHTLY], days, seen=()) == ()
    assert uncovered_cronjobs([WEEKLY], days, seen={"batch/CronJob/weekly"}) == ()
    assert [item.cronjob for item in uncovered_cronjobs([WEEKLY], days, seen=())] == [
        "batch/weekly"
    ]


def test_a_bundle_speaks_only_for_its_own_window() -> None:
    window = Window(1_000_000.0, 1_003_600.0)
    inside = replace(
        flow("10.0.0.1:40000", "10.0.0.2:80", capture="a.pcap"),
        first_seen=window.start + 10,
        last_seen=window.start + 20,
    )
    skewed = replace(inside, first_seen=window.start - WINDOW_SLACK + 1)
    before = replace(inside, first_seen=window.start - DAY, last_seen=window.start - DAY + 1)
    after = replace(inside, last_seen=window.end + WINDOW_SLACK + 1)
    found = within_window([inside, skewed, before, after], window)
    assert found.kept == (inside, skewed)
    assert found.outside == {"a.pcap": 2}
