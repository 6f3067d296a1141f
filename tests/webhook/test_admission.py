"""admit() on real AdmissionReview v1 fixtures: the patch applies, the result is a valid pod, and
a second review of the patched pod adds nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kernel.capture import CaptureMode
from kernel.names import CONTAINER_NAME, STATUS_ANNOTATION
from tests.webhook.podchecks import (
    DATA,
    SCHEMA_VERSIONS,
    apply,
    decoded_patch,
    load_review,
    name_problems,
    schema_problems,
)
from webhook.admission import Outcome, UnreadableReview, admit
from webhook.capture import CaptureOptions, tcpdump_argv
from webhook.settings import WebhookSettings

SETTINGS = WebhookSettings()
INJECTED = [
    "deployment-pod.json",
    "annotated-pod.json",
    "init-and-volumes-pod.json",
    "job-pod.json",
    "bad-annotations-pod.json",
]
SKIPPED = {
    "host-network-pod.json": "host-network",
    "opted-out-pod.json": "opted-out",
    "already-injected-pod.json": "already-injected",
    "own-namespace-pod.json": "own-namespace",
}


def admit_review(review: dict[str, Any], settings: WebhookSettings = SETTINGS) -> Any:
    return admit(json.dumps(review).encode(), settings)


def test_every_fixture_is_covered() -> None:
    on_disk = {path.name for path in DATA.glob("*.json")}
    assert on_disk == set(INJECTED) | set(SKIPPED)


@pytest.mark.parametrize("name", INJECTED)
def test_injected_patch_yields_a_valid_pod(name: str) -> None:
    review = load_review(name)
    admission = admit_review(review)
    response = admission.review["response"]
    assert admission.outcome is Outcome.INJECTED
    assert admission.review["apiVersion"] == "admission.k8s.io/v1"
    assert admission.review["kind"] == "AdmissionReview"
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    pod = apply(review["request"]["object"], decoded_patch(response))
    for version in SCHEMA_VERSIONS:
        assert schema_problems(pod, version) is None, version
    assert name_problems(pod) == []
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["name"] == CONTAINER_NAME
    assert sidecar["restartPolicy"] == "Always"
    assert STATUS_ANNOTATION in pod["metadata"]["annotations"]


@pytest.mark.parametrize("name", INJECTED)
def test_injection_only_adds(name: str) -> None:
    review = load_review(name)
    original = review["request"]["object"]
    patch = decoded_patch(admit_review(review).review["response"])
    assert {op["op"] for op in patch} == {"add"}
    pod = apply(original, patch)
    # Everything that was there is still there, in order, after the sidecar.
    init = pod["spec"]["initContainers"]
    assert init[1:] == original["spec"].get("initContainers", [])
    assert pod["spec"]["containers"] == original["spec"]["containers"]
    volumes = pod["spec"]["volumes"]
    assert volumes[: len(original["spec"].get("volumes", []))] == original["spec"].get(
        "volumes", []
    )
    annotations = dict(pod["metadata"]["annotations"])
    del annotations[STATUS_ANNOTATION]
    assert annotations == original["metadata"].get("annotations", {})
    assert {k: v for k, v in pod.items() if k not in ("spec", "metadata")} == {
        k: v for k, v in original.items() if k not in ("spec", "metadata")
    }


@pytest.mark.parametrize("name", INJECTED)
def test_second_review_of_patched_pod_adds_nothing(name: str) -> None:
    review = load_review(name)
    pod = apply(review["request"]["object"], decoded_patch(admit_review(review).review["response"]))
    review["request"]["object"] = pod
    again = admit_review(review)
    assert again.outcome is Outcome.SKIPPED
    assert again.reason == "already-injected"
    assert "patch" not in again.review["response"]


@pytest.mark.parametrize(("name", "reason"), sorted(SKIPPED.items()))
def test_skipped_pods_get_no_patch_and_a_warning(name: str, reason: str) -> None:
    review = load_review(name)
    admission = admit_review(review)
    response = admission.review["response"]
    assert admission.outcome is Outcome.SKIPPED
    assert admission.reason == reason
    assert response == {
        "uid": review["request"]["uid"],
        "allowed": True,
        "warnings": [f"netpol-sniffer: no capture sidecar: {admission.message}"],
    }
    assert schema_problems(review["request"]["object"], SCHEMA_VERSIONS[-1]) is None


def test_deployment_pod_learns_its_identity_from_the_downward_api() -> None:
    review = load_review("deployment-pod.json")
    assert "name" not in review["request"]["object"]["metadata"]  # generateName only
    admission = admit_review(review)
    assert admission.pod == "shop/frontend-7c9d8b6f5d-*"
    pod = apply(review["request"]["object"], decoded_patch(admission.review["response"]))
    sidecar = pod["spec"]["initContainers"][0]
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in sidecar["env"]
        if "valueFrom" in e
    }
    assert fields == {
        "NETPOL_SNIFFER_POD_NAME": "metadata.name",
        "NETPOL_SNIFFER_POD_NAMESPACE": "metadata.namespace",
        "NETPOL_SNIFFER_POD_UID": "metadata.uid",
        "NETPOL_SNIFFER_POD_IPS": "status.podIPs",
        "NETPOL_SNIFFER_NODE_NAME": "spec.nodeName",
    }
    podinfo = next(v for v in pod["spec"]["volumes"] if v["name"] == "netpol-sniffer-podinfo")
    assert podinfo["downwardAPI"]["items"] == [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}
    ]
    # The full tcpdump argv is the container's args: one source of truth with the lab.
    assert sidecar["args"] == tcpdump_argv(CaptureOptions())
    assert sidecar["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_RAW", "SETGID"],
    }


def test_annotation_keys_with_slash_and_tilde_are_escaped() -> None:
    review = load_review("annotated-pod.json")
    patch = decoded_patch(admit_review(review).review["response"])
    annotation_ops = [op for op in patch if op["path"].startswith("/metadata/annotations")]
    assert annotation_ops == [
        {
            "op": "add",
            "path": "/metadata/annotations/netpol-sniffer.io~1status",
            "value": annotation_ops[0]["value"],
        }
    ]
    pod = apply(review["request"]["object"], patch)
    assert pod["metadata"]["annotations"]["example.com/odd~key"] == "tilde"
    assert json.loads(pod["metadata"]["annotations"][STATUS_ANNOTATION])["mode"] == "full"


def test_per_pod_annotations_override_mode_and_limits() -> None:
    review = load_review("annotated-pod.json")
    admission = admit_review(review)
    assert "warnings" not in admission.review["response"]
    pod = apply(review["request"]["object"], decoded_patch(admission.review["response"]))
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["args"] == tcpdump_argv(CaptureOptions(mode=CaptureMode.FULL))
    assert sidecar["resources"]["limits"] == {"cpu": "300m", "memory": "96Mi"}
    assert sidecar["resources"]["requests"] == {"cpu": "10m", "memory": "16Mi"}


def test_bad_annotations_warn_and_fall_back_to_defaults() -> None:
    review = load_review("bad-annotations-pod.json")
    admission = admit_review(review)
    warnings = admission.review["response"]["warnings"]
    assert len(warnings) == 3
    assert "capture-mode='everything'" in warnings[0]
    assert "memory-request" in warnings[1] and "'lots'" in warnings[1]
    assert "cpu request 2 is above its limit 500m" in warnings[2]
    pod = apply(review["request"]["object"], decoded_patch(admission.review["response"]))
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["resources"] == {
        "requests": {"cpu": "10m", "memory": "16Mi"},
        "limits": {"cpu": "200m", "memory": "64Mi"},
    }
    assert sidecar["args"] == tcpdump_argv(CaptureOptions())


def test_existing_init_containers_stay_after_the_sidecar() -> None:
    review = load_review("init-and-volumes-pod.json")
    pod = apply(review["request"]["object"], decoded_patch(admit_review(review).review["response"]))
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [CONTAINER_NAME, "migrate"]
    assert [v["name"] for v in pod["spec"]["volumes"]] == [
        "config",
        "kube-api-access-x7k2p",
        "netpol-sniffer-captures",
        "netpol-sniffer-podinfo",
    ]
    # The pod says runAsNonRoot; the sidecar must say otherwise or the kubelet refuses it.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["initContainers"][0]["securityContext"]["runAsNonRoot"] is False


def test_plain_container_mode_appends_a_container() -> None:
    settings = WebhookSettings(native_sidecar=False)
    review = load_review("deployment-pod.json")
    admission = admit_review(review, settings)
    pod = apply(review["request"]["object"], decoded_patch(admission.review["response"]))
    assert "initContainers" not in pod["spec"]
    sidecar = pod["spec"]["containers"][-1]
    assert sidecar["name"] == CONTAINER_NAME and "restartPolicy" not in sidecar
    assert name_problems(pod) == []
    assert schema_problems(pod, "1.28.0") is None


def test_plain_container_mode_skips_a_jobs_pod() -> None:
    admission = admit_review(load_review("job-pod.json"), WebhookSettings(native_sidecar=False))
    assert admission.outcome is Outcome.SKIPPED
    assert admission.reason == "runs-to-completion"


def test_pod_security_namespaces_are_skipped_with_a_warning() -> None:
    settings = WebhookSettings(pod_security_namespaces=frozenset({"shop"}))
    admission = admit_review(load_review("deployment-pod.json"), settings)
    assert admission.reason == "pod-security"
    assert "NET_RAW" in admission.review["response"]["warnings"][0]


def test_dry_run_requests_are_injected_too() -> None:
    review = load_review("deployment-pod.json")
    review["request"]["dryRun"] = True
    assert admit_review(review).outcome is Outcome.INJECTED


@pytest.mark.parametrize(
    ("change", "value"),
    [("operation", "UPDATE"), ("kind", {"group": "apps", "version": "v1", "kind": "Deployment"})],
)
def test_anything_but_a_pod_create_is_allowed_untouched(change: str, value: object) -> None:
    review = load_review("deployment-pod.json")
    review["request"][change] = value
    admission = admit_review(review)
    assert admission.outcome is Outcome.SKIPPED
    assert admission.review["response"] == {"uid": review["request"]["uid"], "allowed": True}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("v1beta1.json", "unsupported-version"),
        ("object-not-a-pod.json", "no-object"),
        ("containers-not-a-list.json", "malformed-pod"),
    ],
)
def test_garbage_with_a_uid_is_allowed_without_a_patch(name: str, reason: str) -> None:
    body = (DATA / "garbage" / name).read_bytes()
    admission = admit(body, SETTINGS)
    response = admission.review["response"]
    assert admission.outcome is Outcome.INVALID
    assert admission.reason == reason
    assert response["uid"] == json.loads(body)["request"]["uid"]
    assert response["allowed"] is True
    assert "patch" not in response


@pytest.mark.parametrize("name", ["not-json.txt", "empty.txt", "json-array.json", "no-uid.json"])
def test_garbage_without_a_uid_cannot_be_answered(name: str) -> None:
    with pytest.raises(UnreadableReview):
        admit((DATA / "garbage" / name).read_bytes(), SETTINGS)
