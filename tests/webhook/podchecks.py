"""Helpers for webhook tests: decode a response's patch, apply it, and check the patched pod the way
the API server would (OpenAPI schema, plus the name rules the schema cannot express)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate

DATA = Path(__file__).resolve().parent.parent / "data" / "admission"
# The oldest release with native sidecars on by default and the newest the validator ships.
SCHEMA_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def load_review(name: str) -> dict[str, Any]:
    review: dict[str, Any] = json.loads((DATA / name).read_text())
    return review


def decoded_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    patch: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"], validate=True))
    return patch


def apply(pod: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, patch)
    return patched


def schema_problems(obj: dict[str, Any], version: str) -> str | None:
    """The first line of the validator's complaint, or None when ``obj`` validates (strict)."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return str(error).splitlines()[0]
    return None


def name_problems(pod: dict[str, Any]) -> list[str]:
    """What the API server's pod validation refuses but the schema does not see."""
    spec = pod["spec"]
    problems = []
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    names = [c["name"] for c in containers]
    if len(names) != len(set(names)):
        problems.append(f"duplicate container names: {names}")
    volumes = [v["name"] for v in spec.get("volumes", [])]
    if len(volumes) != len(set(volumes)):
        problems.append(f"duplicate volume names: {volumes}")
    for container in containers:
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                problems.append(f"{container['name']} mounts missing volume {mount['name']}")
        env_names = [e["name"] for e in container.get("env", [])]
        if len(env_names) != len(set(env_names)):
            problems.append(f"{container['name']} has duplicate env names")
        if "restartPolicy" in container and container not in spec.get("initContainers", []):
            problems.append(f"{container['name']}: restartPolicy is only valid on init containers")
    return problems
