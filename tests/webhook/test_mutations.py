"""plan_injection() on small hand-made pods: the shapes the fixtures do not cover."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from kernel.names import CAPTURES_VOLUME, CONTAINER_NAME, STATUS_ANNOTATION
from tests.webhook.podchecks import apply, name_problems, schema_problems
from webhook.mutations import (
    Injection,
    MalformedPod,
    Skip,
    SkipReason,
    escape_pointer,
    plan_injection,
)
from webhook.settings import WebhookSettings

SETTINGS = WebhookSettings()


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }


def injected(obj: dict[str, Any], settings: WebhookSettings = SETTINGS) -> dict[str, Any]:
    plan = plan_injection(obj, namespace="shop", settings=settings)
    assert isinstance(plan, Injection), plan
    patched = apply(obj, [dict(op) for op in plan.patch])
    assert schema_problems(patched, "1.37.0") is None
    assert name_problems(patched) == []
    return patched


@pytest.mark.parametrize(
    ("key", "escaped"),
    [("a/b", "a~1b"), ("a~b", "a~0b"), ("~/", "~0~1"), ("a~1", "a~01"), ("plain", "plain")],
)
def test_escape_pointer(key: str, escaped: str) -> None:
    assert escape_pointer(key) == escaped


def test_pod_without_metadata_gets_a_whole_map() -> None:
    obj = pod()
    del obj["metadata"]
    patched = injected(obj)
    assert list(patched["metadata"]) == ["annotations"]
    assert STATUS_ANNOTATION in patched["metadata"]["annotations"]


@pytest.mark.parametrize("field", ["annotations", "labels"])
def test_null_maps_count_as_absent(field: str) -> None:
    obj = pod()
    obj["metadata"][field] = None
    patched = injected(obj)
    assert STATUS_ANNOTATION in patched["metadata"]["annotations"]


def test_null_lists_count_as_absent() -> None:
    patched = injected(pod(initContainers=None, volumes=None))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == [CONTAINER_NAME]
    assert patched["spec"]["volumes"][0]["name"] == CAPTURES_VOLUME


@pytest.mark.parametrize(
    ("obj", "namespace", "settings", "reason"),
    [
        (pod(), "kube-system", SETTINGS, SkipReason.EXCLUDED_NAMESPACE),
        (pod(), "sniffer", WebhookSettings(own_namespace="sniffer"), SkipReason.OWN_NAMESPACE),
        (pod(os={"name": "windows"}), "shop", SETTINGS, SkipReason.WINDOWS),
        (
            pod(volumes=[{"name": CAPTURES_VOLUME, "emptyDir": {}}]),
            "shop",
            SETTINGS,
            SkipReason.NAME_CONFLICT,
        ),
        (
            pod(initContainers=[{"name": CONTAINER_NAME, "image": "x"}]),
            "shop",
            SETTINGS,
            SkipReason.ALREADY_INJECTED,
        ),
        (pod(hostNetwork=True), "shop", SETTINGS, SkipReason.HOST_NETWORK),
    ],
)
def test_skips(
    obj: dict[str, Any], namespace: str, settings: WebhookSettings, reason: SkipReason
) -> None:
    plan = plan_injection(obj, namespace=namespace, settings=settings)
    assert isinstance(plan, Skip)
    assert plan.reason is reason


def test_host_network_false_is_injected() -> None:
    injected(pod(hostNetwork=False))


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"metadata": [], "spec": {"containers": []}}, "metadata is a list"),
        ({"metadata": {"annotations": {"a": 1}}, "spec": {}}, "not a string"),
        ({"spec": {"containers": [{"image": "x"}]}}, "has no name"),
        ({"spec": {"volumes": "none"}}, "spec.volumes is a str"),
    ],
)
def test_malformed_pods(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedPod, match=message):
        plan_injection(obj, namespace="shop", settings=SETTINGS)


def test_capture_is_light() -> None:
    # The lab imports webhook.capture: that must not drag the HTTP shell in.
    probe = "import sys, webhook.capture; print(sorted({'fastapi', 'uvicorn'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
