"""The overload decision, the answer a shed request gets, and the log line that names shed pods
(pure; the server under a real burst is in test_webhook_server.py)."""

from __future__ import annotations

import json

import pytest

from tests.webhook.podchecks import DATA, load_review
from webhook.admission import OVERLOADED_MESSAGE, Outcome, UnreadableReview, skip_overloaded
from webhook.mutations import SkipReason
from webhook.settings import ServingLimits
from webhook.shedding import (
    SUMMARY_NAMES,
    OverloadCause,
    in_flight_limit,
    overflows,
    overload_cause,
    shed_summary,
    worker_limits,
)

LIMITS = ServingLimits(max_in_flight=4, max_wait_seconds=0.05)


@pytest.mark.parametrize(
    ("in_flight", "waited", "overflowed_recently", "cause"),
    [
        (1, 0.0, False, None),
        (4, 0.05, False, None),  # at the limits is still admitted
        (5, 0.0, False, OverloadCause.IN_FLIGHT),
        (1, 0.051, False, OverloadCause.WAITED),
        (9, 1.0, False, OverloadCause.IN_FLIGHT),  # both: the count is named
        (2, 0.0, True, None),  # overloaded: half the place
        (3, 0.0, True, OverloadCause.IN_FLIGHT),
    ],
)
def test_overload_cause(
    in_flight: int, waited: float, overflowed_recently: bool, cause: OverloadCause | None
) -> None:
    found = overload_cause(
        in_flight=in_flight,
        waited_seconds=waited,
        overflowed_recently=overflowed_recently,
        limits=LIMITS,
    )
    assert found is cause


@pytest.mark.parametrize(
    ("replica", "workers", "each", "overloaded"),
    [(16, 1, 16, 8), (16, 2, 8, 4), (16, 3, 5, 2), (16, 64, 1, 1), (1, 1, 1, 1), (3, 1, 3, 1)],
)
def test_workers_share_the_replicas_places_and_halve_them_after_an_overflow(
    replica: int, workers: int, each: int, overloaded: int
) -> None:
    given = ServingLimits(max_in_flight=replica, max_wait_seconds=0.02, max_connections=replica)
    mine = worker_limits(given, workers)
    assert mine == ServingLimits(max_in_flight=each, max_wait_seconds=0.02, max_connections=each)
    assert in_flight_limit(mine, overflowed_recently=False) == each
    assert in_flight_limit(mine, overflowed_recently=True) == overloaded
    assert not overflows(each, mine) and overflows(each + 1, mine)


@pytest.mark.parametrize("name", sorted(path.name for path in DATA.glob("*.json")))
def test_a_shed_request_is_allowed_unmodified_with_a_warning(name: str) -> None:
    review = load_review(name)
    admission = skip_overloaded(json.dumps(review).encode())
    response = admission.review["response"]
    assert admission.review["apiVersion"] == "admission.k8s.io/v1"
    assert admission.review["kind"] == "AdmissionReview"
    assert response == {
        "uid": review["request"]["uid"],
        "allowed": True,
        "warnings": [f"netpol-sniffer: no capture sidecar: {OVERLOADED_MESSAGE}"],
    }
    assert admission.outcome is Outcome.SKIPPED
    assert admission.reason == SkipReason.OVERLOADED
    metadata = review["request"]["object"]["metadata"]
    name_part = metadata.get("name") or f"{metadata['generateName']}*"
    assert admission.pod == f"{review['request']['namespace']}/{name_part}"


def test_a_shed_request_needs_only_a_uid() -> None:
    admission = skip_overloaded(b'{"request": {"uid": "u-1", "object": "not a pod"}}')
    assert admission.review["response"]["uid"] == "u-1"
    assert admission.pod == "/?"
    with pytest.raises(UnreadableReview):
        skip_overloaded(b'{"request": {}}')
    with pytest.raises(UnreadableReview):
        skip_overloaded(b"\xff")


def test_summary_names_every_pod_most_shed_first() -> None:
    line = shed_summary(
        {"shop/web-1": 1, "shop/frontend-7c9d8b6f5d-*": 30, "jobs/etl-*": 30},
        {OverloadCause.WAITED: 40, OverloadCause.IN_FLIGHT: 21},
        seconds=1.0,
    )
    assert line == (
        "overloaded: 61 pod(s) admitted without the capture sidecar in the last 1.0 s "
        "(21 over maxInFlight, 40 over maxWaitMilliseconds): "
        "jobs/etl-* ×30, shop/frontend-7c9d8b6f5d-* ×30, shop/web-1"
    )


def test_summary_counts_the_names_past_its_limit() -> None:
    pods = {f"batch/pod-{index:04d}": 1 for index in range(SUMMARY_NAMES + 7)}
    line = shed_summary(pods, {OverloadCause.IN_FLIGHT: len(pods)}, seconds=1.0)
    assert "batch/pod-0000" in line and f"batch/pod-{SUMMARY_NAMES - 1:04d}" in line
    assert f"batch/pod-{SUMMARY_NAMES:04d}" not in line
    assert line.endswith(" and 7 more under 7 other names")
