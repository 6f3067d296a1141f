"""A pod (raw Kubernetes JSON) and the settings → the JSON Patch that injects the capture sidecar,
or the reason it must not be injected.

Works on the JSON as it came: adds whole arrays and maps where they are absent, escapes ``~`` and
``/`` in keys (RFC 6901), never rewrites what is there. Idempotent: a pod that already carries the
status annotation or the container gets no patch. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from kernel.capture import CaptureMode
from kernel.names import (
    CAPTURE_DISABLED,
    CAPTURE_LABEL,
    CAPTURES_VOLUME,
    CONTAINER_NAME,
    STATUS_ANNOTATION,
)
from webhook.capture import (
    PODINFO_VOLUME,
    CaptureOptions,
    SidecarResources,
    sidecar_container,
    sidecar_volumes,
)
from webhook.quantities import parse_quantity
from webhook.reviews import PatchOperation
from webhook.settings import WebhookSettings, resources_problem

# Per-pod overrides. A bad value gets a warning and the configured default, never a blocked pod.
MODE_ANNOTATION = "netpol-sniffer.io/capture-mode"
RESOURCE_ANNOTATIONS = {
    "cpu_request": "netpol-sniffer.io/cpu-request",
    "memory_request": "netpol-sniffer.io/memory-request",
    "cpu_limit": "netpol-sniffer.io/cpu-limit",
    "memory_limit": "netpol-sniffer.io/memory-limit",
}
WARNING_PREFIX = "netpol-sniffer: "


class SkipReason(StrEnum):
    """Why a pod gets no sidecar; the value is the metrics label."""

    ALREADY_INJECTED = "already-injected"
    OWN_NAMESPACE = "own-namespace"
    EXCLUDED_NAMESPACE = "excluded-namespace"
    HOST_NETWORK = "host-network"
    OPTED_OUT = "opted-out"
    WINDOWS = "windows"
    POD_SECURITY = "pod-security"
    NAME_CONFLICT = "name-conflict"
    # A plain (non-native) sidecar never exits: a Job's pod would never complete.
    RUNS_TO_COMPLETION = "runs-to-completion"
    # Not a property of the pod: the worker was overloaded and answered without looking
    # (webhook.shedding).
    OVERLOADED = "overloaded"


class MalformedPod(ValueError):
    """The object is not a pod spec this code can patch (wrong types where lists/maps belong)."""


@dataclass(frozen=True, slots=True)
class Skip:
    reason: SkipReason
    message: str


@dataclass(frozen=True, slots=True)
class Injection:
    patch: tuple[PatchOperation, ...]
    warnings: tuple[str, ...]
    capture: CaptureOptions
    resources: SidecarResources


def escape_pointer(key: str) -> str:
    """A map key as one JSON Pointer segment: ``~`` → ``~0``, ``/`` → ``~1`` (in that order)."""
    return key.replace("~", "~0").replace("/", "~1")


def plan_injection(
    pod: Mapping[str, Any], *, namespace: str, settings: WebhookSettings
) -> Injection | Skip:
    """The patch that injects the sidecar into ``pod`` (created in ``namespace``), or why not.

    Raises MalformedPod when the pod's structure is not what Kubernetes would send.
    """
    metadata = _mapping(pod, "metadata")
    spec = _mapping(pod, "spec")
    annotations = _string_map(metadata, "annotations")
    labels = _string_map(metadata, "labels")
    containers = _list(spec, "containers")
    init_containers = _list(spec, "initContainers")
    volumes = _list(spec, "volumes")
    skip = _skip(
        namespace=namespace,
        settings=settings,
        spec=spec,
        annotations=annotations,
        labels=labels,
        container_names={_name(c) for c in [*containers, *init_containers]},
        volume_names={_name(v) for v in volumes},
    )
    if skip is not None:
        return skip
    capture, resources, warnings = pod_overrides(annotations, settings)
    container = sidecar_container(
        capture,
        image=settings.capture_image,
        image_pull_policy=settings.image_pull_policy,
        resources=resources,
        native=settings.native_sidecar,
    )
    patch: list[PatchOperation] = []
    if not settings.native_sidecar:
        patch.append({"op": "add", "path": "/spec/containers/-", "value": container})
    elif "initContainers" in spec and spec["initContainers"] is not None:
        # First, so capture starts before the other init containers and the app.
        patch.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
    else:
        patch.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    new_volumes = sidecar_volumes(capture)
    if spec.get("volumes") is None:
        patch.append({"op": "add", "path": "/spec/volumes", "value": new_volumes})
    else:
        patch += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in new_volumes]
    status = status_annotation(capture, native=settings.native_sidecar)
    if "metadata" not in pod:
        patch.append({"op": "add", "path": "/metadata", "value": {"annotations": status}})
    elif metadata.get("annotations") is None:
        patch.append({"op": "add", "path": "/metadata/annotations", "value": status})
    else:
        patch += [
            {"op": "add", "path": f"/metadata/annotations/{escape_pointer(key)}", "value": value}
            for key, value in status.items()
        ]
    return Injection(tuple(patch), tuple(warnings), capture, resources)


def status_annotation(capture: CaptureOptions, *, native: bool) -> dict[str, str]:
    """What was injected, as the status annotation (also the guard against a second injection)."""
    status = {
        "container": CONTAINER_NAME,
        "native": native,
        "volumes": [CAPTURES_VOLUME, PODINFO_VOLUME],
        "mode": str(capture.mode),
    }
    return {STATUS_ANNOTATION: json.dumps(status, sort_keys=True, separators=(",", ":"))}


def pod_overrides(
    annotations: Mapping[str, str], settings: WebhookSettings
) -> tuple[CaptureOptions, SidecarResources, list[str]]:
    """The capture options and resources after the pod's annotations, with a warning for each
    value that was refused (and replaced by the configured default)."""
    warnings: list[str] = []
    capture = settings.capture
    mode_text = annotations.get(MODE_ANNOTATION)
    if mode_text is not None:
        try:
            capture = replace(capture, mode=CaptureMode(mode_text))
        except ValueError:
            choices = "|".join(m.value for m in CaptureMode)
            warnings.append(
                f"{WARNING_PREFIX}annotation {MODE_ANNOTATION}={mode_text!r} ignored "
                f"(expected {choices}); using {capture.mode}"
            )
    resources = settings.resources
    overrides: dict[str, str] = {}
    for field, annotation in RESOURCE_ANNOTATIONS.items():
        text = annotations.get(annotation)
        if text is None:
            continue
        try:
            parse_quantity(text)
        except ValueError as error:
            warnings.append(f"{WARNING_PREFIX}annotation {annotation} ignored: {error}")
            continue
        overrides[field] = text
    if overrides:
        candidate = replace(resources, **overrides)
        problem = resources_problem(candidate)
        if problem is None:
            resources = candidate
        else:
            warnings.append(
                f"{WARNING_PREFIX}resource annotations ignored ({problem}); using the defaults"
            )
    return capture, resources, warnings


def _skip(
    *,
    namespace: str,
    settings: WebhookSettings,
    spec: Mapping[str, Any],
    annotations: Mapping[str, str],
    labels: Mapping[str, str],
    container_names: set[str],
    volume_names: set[str],
) -> Skip | None:
    if STATUS_ANNOTATION in annotations or CONTAINER_NAME in container_names:
        return Skip(SkipReason.ALREADY_INJECTED, "already has the capture sidecar")
    if namespace == settings.own_namespace:
        return Skip(SkipReason.OWN_NAMESPACE, f"{namespace} is the webhook's own namespace")
    if namespace in settings.excluded_namespaces:
        return Skip(SkipReason.EXCLUDED_NAMESPACE, f"namespace {namespace} is excluded")
    if spec.get("hostNetwork") is True:
        return Skip(SkipReason.HOST_NETWORK, "hostNetwork pods would capture the node's traffic")
    if labels.get(CAPTURE_LABEL) == CAPTURE_DISABLED:
        return Skip(SkipReason.OPTED_OUT, f"the pod is labelled {CAPTURE_LABEL}={CAPTURE_DISABLED}")
    os_field = spec.get("os")
    if isinstance(os_field, Mapping) and os_field.get("name") == "windows":
        return Skip(SkipReason.WINDOWS, "the capture sidecar is a Linux container")
    if namespace in settings.pod_security_namespaces:
        return Skip(
            SkipReason.POD_SECURITY,
            f"namespace {namespace} enforces Pod Security baseline/restricted, which refuses "
            "the sidecar's NET_RAW capability",
        )
    taken = {CAPTURES_VOLUME, PODINFO_VOLUME} & volume_names
    if taken:
        return Skip(SkipReason.NAME_CONFLICT, f"the pod already has a volume {sorted(taken)[0]}")
    if not settings.native_sidecar and spec.get("restartPolicy") in ("Never", "OnFailure"):
        return Skip(
            SkipReason.RUNS_TO_COMPLETION,
            "a plain sidecar container would keep this run-to-completion pod alive "
            "(enable nativeSidecar on Kubernetes 1.29+)",
        )
    return None


def _mapping(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedPod(f"{key} is a {type(value).__name__}, not an object")
    return value


def _string_map(parent: Mapping[str, Any], key: str) -> Mapping[str, str]:
    value = _mapping(parent, key)
    if not all(isinstance(v, str) for v in value.values()):
        raise MalformedPod(f"metadata.{key} has a value that is not a string")
    return value


def _list(parent: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPod(f"spec.{key} is a {type(value).__name__}, not a list")
    return value


def _name(item: object) -> str:
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise MalformedPod("a container or volume has no name")
    name: str = item["name"]
    return name
