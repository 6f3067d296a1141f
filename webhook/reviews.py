"""The shapes of ``admission.k8s.io/v1`` AdmissionReview and JSON Patch, as TypedDicts.

Kubernetes JSON stays JSON: these describe the dicts where they enter and leave; the pod inside a
request is never converted into a model (that would drop fields the model does not know). Data
only, no I/O.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"

JsonObject = dict[str, Any]


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class AdmissionRequest(TypedDict):
    uid: str
    kind: GroupVersionKind
    resource: GroupVersionResource
    operation: str
    namespace: NotRequired[str]
    name: NotRequired[str]
    subResource: NotRequired[str]
    dryRun: NotRequired[bool]
    userInfo: NotRequired[JsonObject]
    object: NotRequired[JsonObject]
    oldObject: NotRequired[JsonObject | None]
    options: NotRequired[JsonObject | None]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: str
    request: AdmissionRequest


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]  # base64 of the JSON Patch document
    warnings: NotRequired[list[str]]


class AdmissionReviewResponse(TypedDict):
    apiVersion: str
    kind: str
    response: AdmissionResponse


class PatchOperation(TypedDict):
    """One RFC 6902 operation; the injection only ever adds."""

    op: Literal["add"]
    path: str
    value: Any
