"""An AdmissionReview's bytes → the AdmissionReview to answer, and what happened (for metrics).

The answer always allows the pod: the webhook only ever adds a sidecar, and a request it cannot
understand gets no patch rather than a refusal. Only a body without a readable ``request.uid``
cannot be answered at all (:class:`UnreadableReview`; the HTTP shell answers 400). Pure: no HTTP,
no I/O.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from webhook.mutations import (
    WARNING_PREFIX,
    Injection,
    MalformedPod,
    SkipReason,
    plan_injection,
)
from webhook.reviews import API_VERSION, KIND, AdmissionResponse, AdmissionReviewResponse
from webhook.settings import WebhookSettings

NOT_A_POD_CREATE = "not-a-pod-create"
OVERLOADED_MESSAGE = "the webhook is overloaded"


class Outcome(StrEnum):
    INJECTED = "injected"
    SKIPPED = "skipped"
    INVALID = "invalid"  # answered (allowed, no patch), but the request made no sense


class UnreadableReview(ValueError):
    """The body has no readable ``request.uid``, so no AdmissionReview can answer it."""


@dataclass(frozen=True, slots=True)
class Admission:
    review: AdmissionReviewResponse
    outcome: Outcome
    # The skip reason (a SkipReason value or NOT_A_POD_CREATE) or what was invalid; "" if injected.
    reason: str
    message: str
    # "namespace/name", or "namespace/generateName*" before the name exists; for logs.
    pod: str = ""


def _read_request(body: bytes) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The review, its ``request`` and ``request.uid``; UnreadableReview when one is missing."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise UnreadableReview(f"the body is not JSON: {error}") from None
    request = data.get("request") if isinstance(data, dict) else None
    if not isinstance(request, dict):
        raise UnreadableReview("the body has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise UnreadableReview("the body has no request.uid")
    return data, request, uid


def request_uid(body: bytes) -> str | None:
    """The ``request.uid`` of a body, if one can be read at all."""
    try:
        return _read_request(body)[2]
    except UnreadableReview:
        return None


def allowed_without_patch(uid: str, message: str) -> AdmissionReviewResponse:
    """The answer when something went wrong: allow the pod as it is, and say why."""
    return _review(
        {
            "uid": uid,
            "allowed": True,
            "warnings": [f"{WARNING_PREFIX}no capture sidecar: {message}"],
        }
    )


def admit(body: bytes, settings: WebhookSettings) -> Admission:
    """The answer to one AdmissionReview request body.

    Raises UnreadableReview when the body is not JSON or carries no ``request.uid``.
    """
    data, request, uid = _read_request(body)
    if data.get("apiVersion") != API_VERSION or data.get("kind") != KIND:
        return _invalid(
            uid,
            "unsupported-version",
            f"expected {API_VERSION} {KIND}, got {data.get('apiVersion')!r} {data.get('kind')!r}",
        )
    if not _is_pod_create(request):
        return _answer(uid, Outcome.SKIPPED, NOT_A_POD_CREATE, "not a pod CREATE", warn=False)
    pod = request.get("object")
    if not isinstance(pod, dict):
        return _invalid(uid, "no-object", "request.object is not a pod")
    namespace = _namespace(request, pod)
    try:
        plan = plan_injection(pod, namespace=namespace, settings=settings)
    except MalformedPod as error:
        return _invalid(uid, "malformed-pod", str(error))
    if isinstance(plan, Injection):
        admission = _injected(uid, plan)
    else:
        admission = _answer(uid, Outcome.SKIPPED, str(plan.reason), plan.message, warn=True)
    return replace(admission, pod=_pod_name(namespace, pod))


def skip_overloaded(body: bytes) -> Admission:
    """The answer when the worker is overloaded (webhook.shedding): the pod allowed as it is, with
    a warning, whatever the request holds. Only the uid and the pod's name are read.

    Raises UnreadableReview when the body is not JSON or carries no ``request.uid``.
    """
    _, request, uid = _read_request(body)
    pod = request.get("object")
    pod = pod if isinstance(pod, dict) else {}
    admission = _answer(uid, Outcome.SKIPPED, SkipReason.OVERLOADED, OVERLOADED_MESSAGE, warn=True)
    return replace(admission, pod=_pod_name(_namespace(request, pod), pod))


def _is_pod_create(request: Mapping[str, Any]) -> bool:
    kind = request.get("kind")
    resource = request.get("resource")
    return (
        request.get("operation") == "CREATE"
        and isinstance(kind, dict)
        and kind.get("group") == ""
        and kind.get("kind") == "Pod"
        and isinstance(resource, dict)
        and resource.get("resource") == "pods"
        and not request.get("subResource")
    )


def _namespace(request: Mapping[str, Any], pod: Mapping[str, Any]) -> str:
    # The request names the namespace even when the pod's own metadata does not.
    namespace = request.get("namespace")
    if isinstance(namespace, str) and namespace:
        return namespace
    metadata = pod.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("namespace"), str):
        return str(metadata["namespace"])
    return ""


def _pod_name(namespace: str, pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        return f"{namespace}/?"
    name, generate_name = metadata.get("name"), metadata.get("generateName")
    if isinstance(name, str) and name:
        return f"{namespace}/{name}"
    return f"{namespace}/{generate_name}*" if isinstance(generate_name, str) else f"{namespace}/?"


def _review(response: AdmissionResponse) -> AdmissionReviewResponse:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def _injected(uid: str, injection: Injection) -> Admission:
    patch = json.dumps(list(injection.patch), separators=(",", ":")).encode()
    response: AdmissionResponse = {
        "uid": uid,
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(patch).decode("ascii"),
    }
    if injection.warnings:
        response["warnings"] = list(injection.warnings)
    return Admission(_review(response), Outcome.INJECTED, "", "capture sidecar injected")


def _answer(uid: str, outcome: Outcome, reason: str, message: str, *, warn: bool) -> Admission:
    if warn:
        return Admission(allowed_without_patch(uid, message), outcome, reason, message)
    return Admission(_review({"uid": uid, "allowed": True}), outcome, reason, message)


def _invalid(uid: str, reason: str, message: str) -> Admission:
    return _answer(uid, Outcome.INVALID, reason, message, warn=True)
