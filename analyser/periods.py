"""Periods: how long the capture windows were, and whether that is long enough for the cluster's
CronJobs.

A capture window sees what ran during it. A CronJob that runs nightly, or on Sundays, is seen
only by a window its run fell into; its policy (and its peers' rules for it) would otherwise miss
its traffic, and applying them would break its next run. So each CronJob of the snapshot (not
suspended) none of whose pods was captured or seen in a flow, while the windows together cover
less time than the longest gap between two of its runs, is named (:func:`uncovered_cronjobs`).

The longest gap between runs comes from the schedule's five fields (:func:`cron_period`): the
syntax the CronJob controller accepts (numbers, names of months and weekdays, ``*``, ``?``,
ranges, steps, lists; ``@hourly`` … ``@yearly``, ``@every DURATION``), with cron's rule that a
restricted day of month and day of week are either-or. Runs are laid out over 28 years (every
weekday of every date, leap years included) and the longest gap between two is the period.

Pure: schedules and windows in, periods and warnings out; no I/O.
"""

from __future__ import annotations

import calendar
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from itertools import pairwise
from typing import Any

from analyser.flows import Flow, FlowTable
from analyser.snapshot import Snapshot
from kernel.bundles import Window

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
# 28 years: the calendar repeats its weekdays and leap days (within a century) after that.
_YEARS = 28
_FIRST_DAY = date(2001, 1, 1)
_NEVER = _YEARS * 365.25 * DAY  # the period of a schedule that runs once in that span, at most
_MONTHS = {name.lower(): number for number, name in enumerate(calendar.month_abbr) if name}
_WEEKDAYS = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_GO_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|m|s|ms))+")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_GO_UNITS = {"h": HOUR, "m": MINUTE, "s": 1.0, "ms": 0.001}
# A number in a schedule has at most this many digits (cron's are at most 2).
_MAX_NUMBER = 4
# A schedule's text is read at most this long (a snapshot is input: no field is unbounded).
_MAX_SCHEDULE = 200


@dataclass(frozen=True, slots=True)
class CaptureWindow:
    """One bundle's capture window, as the analysis names it: ``label`` (the bundle's folder
    name, made unique), and its start and end (None: unknown, a plain folder without packets)."""

    label: str
    window: Window | None

    def as_json(self) -> dict[str, object]:
        return {
            "bundle": self.label,
            "start": None if self.window is None else self.window.start_text,
            "end": None if self.window is None else self.window.end_text,
        }


def covered_seconds(windows: Iterable[Window]) -> float:
    """How long the windows cover together (overlaps counted once)."""
    total, reach = 0.0, float("-inf")
    for window in sorted(windows, key=lambda w: (w.start, w.end)):
        start = max(window.start, reach)
        if window.end > start:
            total += window.end - start
        reach = max(reach, window.end)
    return total


def _field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int] | None:
    """The values one cron field allows, or None when it is not valid. ``a/n`` runs from a to
    the field's end."""
    allowed: set[int] = set()
    for part in text.split(","):
        spread, slash, step_text = part.partition("/")
        step = int(step_text) if _is_number(step_text) else 0 if slash else 1
        if step <= 0:
            return None
        if spread in ("*", "?"):
            first, last = low, high
        else:
            start_text, dash, end_text = spread.partition("-")
            first_value = _value(start_text, names)
            last_value = _value(end_text, names) if dash else high if slash else first_value
            if first_value is None or last_value is None:
                return None
            first, last = first_value, last_value
        if not low <= first <= last <= high:
            return None
        allowed.update(range(first, last + 1, step))
    return allowed


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²`` and other digits ``int`` refuses."""
    return text.isascii() and text.isdigit() and len(text) <= _MAX_NUMBER


def _value(text: str, names: dict[str, int] | None) -> int | None:
    if _is_number(text):
        return int(text)
    return None if names is None else names.get(text.lower())


@dataclass(frozen=True, slots=True)
class _Schedule:
    minutes: set[int]
    hours: set[int]
    days: set[int]
    months: set[int]
    weekdays: set[int]
    days_star: bool  # the day-of-month field starts with * or ?: the day of week decides alone
    weekdays_star: bool

    def run_days(self) -> list[int]:
        """The days it runs on, as days since :data:`_FIRST_DAY`, over :data:`_YEARS` years:
        per month, the days of month it allows and those whose weekday it allows (one set
        operation each, not a loop over every day)."""
        days: list[int] = []
        offset = 0
        by_weekdays: dict[tuple[int, int], frozenset[int]] = {}  # 28 kinds of month at most
        for year in range(_FIRST_DAY.year, _FIRST_DAY.year + _YEARS):
            for month in range(1, 13):
                monday_first, length = calendar.monthrange(year, month)
                if month in self.months:
                    by_day = self.days & _MONTH_DAYS[length]
                    kind = ((monday_first + 1) % 7, length)
                    if kind not in by_weekdays:
                        by_weekdays[kind] = self._by_weekday(*kind)
                    by_weekday = by_weekdays[kind]
                    if self.days_star or self.weekdays_star:
                        found = by_day & by_weekday
                    else:
                        found = by_day | by_weekday
                    days += sorted(offset + day - 1 for day in found)
                offset += length
        return days

    def _by_weekday(self, first: int, length: int) -> frozenset[int]:
        """The days of a month of ``length`` days whose first is weekday ``first`` (Sunday 0)
        that fall on an allowed weekday."""
        return frozenset(
            day for day in range(1, length + 1) if (first + day - 1) % 7 in self.weekdays
        )


_MONTH_DAYS = {length: frozenset(range(1, length + 1)) for length in (28, 29, 30, 31)}


def _parse(schedule: str) -> _Schedule | None:
    fields = _MACROS.get(schedule.lower(), schedule).split()
    if len(fields) != 5:
        return None
    minutes = _field(fields[0], 0, 59)
    hours = _field(fields[1], 0, 23)
    days = _field(fields[2], 1, 31)
    months = _field(fields[3], 1, 12, _MONTHS)
    weekdays = _field(fields[4], 0, 7, _WEEKDAYS)
    if minutes is None or hours is None or days is None or months is None or weekdays is None:
        return None
    weekdays = {day % 7 for day in weekdays}  # 7 is Sunday too
    return _Schedule(
        minutes,
        hours,
        days,
        months,
        weekdays,
        fields[2][:1] in ("*", "?"),
        fields[4][:1] in ("*", "?"),
    )


def _every(schedule: str) -> float | None:
    """``@every 1h30m``: a Go duration."""
    text = schedule[len("@every") :].strip()
    if not _GO_DURATION.fullmatch(text):
        return None
    seconds = sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_PART.findall(text))
    return min(seconds, _NEVER) if seconds > 0 else None


@lru_cache(maxsize=1024)
def cron_period(schedule: str) -> float | None:
    """The longest time (seconds) between two runs of a CronJob's ``schedule``; None when it is
    not a schedule this understands, or never runs (``0 0 30 2 *``). A ``CRON_TZ=``/``TZ=``
    prefix is skipped: a time zone moves the runs, not the gaps between them."""
    text = " ".join(schedule[:_MAX_SCHEDULE].split())
    if text.startswith(("CRON_TZ=", "TZ=")):
        text = text.partition(" ")[2]
    if text.lower().startswith("@every"):
        return _every(text)
    parsed = _parse(text)
    if parsed is None:
        return None
    times = sorted(h * HOUR + m * MINUTE for h in parsed.hours for m in parsed.minutes)
    within = max((b - a for a, b in pairwise(times)), default=0.0)
    days = parsed.run_days()
    if not days:
        return None
    if len(days) == 1:
        return _NEVER  # once in the whole span
    between = max(
        (later - earlier) * DAY - times[-1] + times[0] for earlier, later in pairwise(days)
    )
    return max(within, between)


@dataclass(frozen=True, slots=True)
class CronJobSchedule:
    """A CronJob of the snapshot: ``NS/name``, its graph node id (``NS/CronJob/name``) and its
    schedule's text."""

    name: str
    node_id: str
    schedule: str


def cronjob_schedules(snapshot: Snapshot) -> tuple[CronJobSchedule, ...]:
    """The snapshot's CronJobs that are not suspended, by name."""
    found = []
    for cronjob in snapshot.of_kind("CronJob"):
        spec: Any = cronjob.raw.get("spec")
        if not isinstance(spec, dict) or spec.get("suspend") is True:
            continue
        schedule = spec.get("schedule")
        if isinstance(schedule, str):
            found.append(
                CronJobSchedule(
                    f"{cronjob.namespace}/{cronjob.name}",
                    f"{cronjob.namespace}/CronJob/{cronjob.name}",
                    schedule[:_MAX_SCHEDULE],
                )
            )
    return tuple(sorted(found, key=lambda item: item.name))


@dataclass(frozen=True, slots=True)
class UncoveredCronJob:
    """A CronJob whose runs the capture windows may all have missed: none of its pods' traffic
    was seen, and the windows cover less time than the longest gap between its runs."""

    cronjob: str  # NS/name
    schedule: str
    period: float  # seconds: the longest gap between two runs
    covered: float  # seconds the windows cover together

    @property
    def text(self) -> str:
        return (
            f"CronJob {self.cronjob} runs at most {duration_text(self.period)} apart "
            f"(schedule {self.schedule!r}) and no traffic of its pods was captured; the capture "
            f"windows cover {duration_text(self.covered)} in all: its runs may have fallen "
            "outside them, and the policies miss its traffic (capture a window that holds a run, "
            "or analyse several bundles together: analyse BUNDLE BUNDLE…)"
        )

    def as_json(self) -> dict[str, object]:
        """An entry of ``--json``'s ``uncovered_cronjobs``."""
        return {
            "cronjob": self.cronjob,
            "schedule": self.schedule,
            "period_seconds": self.period,
            "covered_seconds": self.covered,
        }


def duration_text(seconds: float) -> str:
    """``7 d``, ``1 d 2 h``, ``1 h 30 min``, ``30 s``: at most the two largest units."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    counts: list[tuple[int, str]] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        count, whole = divmod(whole, size)
        if count or counts:
            counts.append((count, unit))
    return " ".join(f"{count} {unit}" for count, unit in counts[:2] if count)


def uncovered_cronjobs(
    cronjobs: Iterable[CronJobSchedule],
    windows: Sequence[Window],
    *,
    seen: Collection[str],
) -> tuple[UncoveredCronJob, ...]:
    """The CronJobs whose runs the ``windows`` may have missed: whose graph node is not in
    ``seen`` (the ids of the workloads captured or with traffic), and whose schedule's longest
    gap is longer than the windows cover together. A schedule this does not understand is left
    alone."""
    covered = covered_seconds(windows)
    found = []
    for cronjob in cronjobs:
        if cronjob.node_id in seen:
            continue
        period = cron_period(cronjob.schedule)
        if period is not None and covered < period:
            found.append(UncoveredCronJob(cronjob.name, cronjob.schedule, period, covered))
    return tuple(found)


# How far a bundle's flow may lie outside its own capture window: the window comes from the
# collector's clock and the sidecars' start times (to the second), the packets from the nodes'.
WINDOW_SLACK = 300.0


@dataclass(frozen=True, slots=True)
class WithinWindow:
    """A bundle's flows split by its window: those inside it (with :data:`WINDOW_SLACK`), and per
    capture file how many were dated outside it."""

    kept: FlowTable
    outside: Mapping[str, int]


def within_window(flows: Iterable[Flow], window: Window) -> WithinWindow:
    """The flows of ``flows`` dated within ``window`` (and :data:`WINDOW_SLACK`), and how many of
    each capture file's were not. When several bundles are analysed together, a bundle speaks
    only for its own window: a packet dated on another day (a forged timestamp, a wrong clock)
    would be resolved with this bundle's snapshot, and excused by this bundle's captures, at a
    time another bundle's captures covered."""
    start, end = window.start - WINDOW_SLACK, window.end + WINDOW_SLACK
    kept = []
    outside: Counter[str] = Counter()
    for group in FlowTable.of(flows).groups:
        firsts, lasts = group.firsts, group.lasts
        inside = [i for i in range(len(group)) if start <= firsts[i] and lasts[i] <= end]
        if len(inside) == len(group):
            kept.append(group)
            continue
        if inside:
            kept.append(group.taken(inside))
        for capture in group.captures:
            outside[capture] += len(group) - len(inside)
    return WithinWindow(FlowTable(kept), dict(sorted(outside.items())))
