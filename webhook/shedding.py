"""When a worker answers a request at once, without admitting it: the overload decision. Pure.

A shed request is answered like any other skip: allowed, no patch, a warning, counted under
``netpol_sniffer_skipped_total{reason="overloaded"}`` (docs/webhook.md, "Under load", says why
this and not a 503 or a refused connection).

``maxInFlight`` is a replica's: its workers share it. A worker admits a burst up to its share;
for ``OVERFLOW_MEMORY_SECONDS`` after more arrived than that, only half of it. A burst is then
served whole, while under a sustained overload the queue stays short, and with it the time the
API server's requests are outstanding: it keeps 25 idle connections, and each request that finds
none opens a new one, with a TLS handshake that costs the worker twice an admission. Only an
overflow of the whole share renews the half measure, so a worker that is merely busy goes back
to its whole share a second after a burst.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from enum import StrEnum

from webhook.settings import ServingLimits


class OverloadCause(StrEnum):
    """Which limit a shed request hit; for the log line."""

    IN_FLIGHT = "over maxInFlight"  # more requests in the worker than in_flight_limit, itself too
    WAITED = "over maxWaitMilliseconds"  # it waited longer than max_wait_seconds for its turn


# A worker whose share overflowed this recently is still overloaded (see the module docstring).
OVERFLOW_MEMORY_SECONDS = 1.0


def worker_limits(limits: ServingLimits, workers: int) -> ServingLimits:
    """One worker's limits: an even share of the replica's ``max_in_flight`` and
    ``max_connections``, at least 1 of each."""
    return replace(
        limits,
        max_in_flight=max(1, limits.max_in_flight // workers),
        max_connections=max(1, limits.max_connections // workers),
    )


def overflows(in_flight: int, limits: ServingLimits) -> bool:
    """Whether ``in_flight`` requests (the new one included) are more than the worker's share."""
    return in_flight > limits.max_in_flight


def in_flight_limit(limits: ServingLimits, *, overflowed_recently: bool) -> int:
    """How many requests a worker may hold: its share, or half of it while it is overloaded."""
    return max(1, limits.max_in_flight // 2) if overflowed_recently else limits.max_in_flight


def overload_cause(
    *, in_flight: int, waited_seconds: float, overflowed_recently: bool, limits: ServingLimits
) -> OverloadCause | None:
    """Why this request must be shed, or None to admit it. ``in_flight`` counts it too; ``limits``
    are the worker's (:func:`worker_limits`)."""
    if in_flight > in_flight_limit(limits, overflowed_recently=overflowed_recently):
        return OverloadCause.IN_FLIGHT
    if waited_seconds > limits.max_wait_seconds:
        return OverloadCause.WAITED
    return None


# A summary line names at most this many pods (the rest are counted): a burst of bare pods with
# distinct names must not make a line too long for a log pipeline.
SUMMARY_NAMES = 100


def shed_summary(
    pods: Mapping[str, int], causes: Mapping[OverloadCause, int], *, seconds: float
) -> str:
    """One log line for the pods shed in the last ``seconds``: how many, which limit, and their
    names ("namespace/name", or "namespace/generateName*" for pods not yet named), most first."""
    total = sum(pods.values())
    why = ", ".join(f"{causes[cause]} {cause}" for cause in OverloadCause if causes.get(cause))
    ranked = sorted(pods.items(), key=lambda item: (-item[1], item[0]))
    names = ", ".join(
        f"{pod} ×{count}" if count > 1 else pod for pod, count in ranked[:SUMMARY_NAMES]
    )
    rest = sum(count for _, count in ranked[SUMMARY_NAMES:])
    more = f" and {rest} more under {len(ranked) - SUMMARY_NAMES} other names" if rest else ""
    return (
        f"overloaded: {total} pod(s) admitted without the capture sidecar in the last "
        f"{seconds:.1f} s ({why}): {names}{more}"
    )
