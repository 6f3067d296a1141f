"""When a worker answers a request at once, without admitting it: the overload decision. Pure.

A shed request is answered like any other skip: allowed, no patch, a warning, counted under
``netpol_sniffer_skipped_total{reason="overloaded"}`` (docs/webhook.md, "Under load", says why
this and not a 503 or a refused connection).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from webhook.settings import ServingLimits


class OverloadCause(StrEnum):
    """Which limit a shed request hit; for the log line."""

    IN_FLIGHT = "over maxInFlight"  # more than max_in_flight requests in the worker, itself too
    WAITED = "over maxWaitMilliseconds"  # it waited longer than max_wait_seconds for its turn


def overload_cause(
    *, in_flight: int, waited_seconds: float, limits: ServingLimits
) -> OverloadCause | None:
    """Why this request must be shed, or None to admit it."""
    if in_flight > limits.max_in_flight:
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
