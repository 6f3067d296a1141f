"""The shipped webhook configuration and the webhook itself against a real kube-apiserver.

The MutatingWebhookConfiguration comes from ``kubectl kustomize manifests/base`` with only its
``clientConfig`` changed to a URL on 127.0.0.1 and the caBundle of a CA made by ``certs/``; the
webhook runs locally over TLS as ``netpol-sniffer-webhook``. Pods are admitted, mutated, validated
and stored by the API server; nothing runs them (there is no kubelet): admission does not need it.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from certs.make_certs import LOOPBACK_NAMES, make_certs
from tests.e2e.controlplane import ControlPlane, NamespaceFactory, die_with_parent, free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OPT_IN = {"netpol-sniffer.io/capture": "enabled"}
OPT_OUT = {"netpol-sniffer.io/capture": "disabled"}
SIDECAR = "netpol-sniffer-capture"
CAPTURES_VOLUME = "netpol-sniffer-captures"
STATUS_ANNOTATION = "netpol-sniffer.io/status"
APP_IMAGE = "app:1"
WAIT_S = 60.0

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The webhook process and its configuration in the cluster


@dataclass
class LocalWebhook:
    """``netpol-sniffer-webhook`` on 127.0.0.1 over TLS, stoppable and restartable on one port."""

    cert: Path
    key: Path
    ca: Path
    port: int = field(default_factory=free_port)
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    # Settings for the next start (NETPOL_SNIFFER_* variables).
    environ: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        executable = Path(sys.executable).with_name("netpol-sniffer-webhook")
        assert self.log is not None
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [
                    str(executable),
                    "--tls-cert",
                    str(self.cert),
                    "--tls-key",
                    str(self.key),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                env={**os.environ, **self.environ},
            )
        context = ssl.create_default_context(cafile=str(self.ca))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"webhook exited:\n{self.log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise AssertionError(f"webhook not ready:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def rendered_webhook_configuration(control_plane: ControlPlane) -> Json:
    """The MutatingWebhookConfiguration exactly as ``manifests/base`` ships it."""
    rendered = control_plane.kubectl("kustomize", str(REPO / "manifests" / "base")).stdout
    found = [
        document
        for document in yaml.safe_load_all(rendered)
        if document and document.get("kind") == "MutatingWebhookConfiguration"
    ]
    assert len(found) == 1, f"manifests/base renders {len(found)} MutatingWebhookConfigurations"
    configuration: Json = found[0]
    return configuration


def pointed_at(configuration: Json, *, url: str, ca_bundle: str) -> Json:
    """The same configuration with only each webhook's clientConfig sent to ``url``."""
    local = copy.deepcopy(configuration)
    for hook in local["webhooks"]:
        path = hook["clientConfig"].get("service", {}).get("path", "/mutate")
        hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca_bundle}
    return local


# ---------------------------------------------------------------------------------------------
# Pods and what the API server stored


def pod_spec(*, host_network: bool = False) -> Json:
    spec: Json = {"containers": [{"name": "app", "image": APP_IMAGE}]}
    if host_network:
        spec["hostNetwork"] = True
    return spec


def bare_pod(
    name: str, *, labels: dict[str, str] | None = None, host_network: bool = False
) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name, **(labels or {})}},
        "spec": pod_spec(host_network=host_network),
    }


def sidecars(pod: Json) -> list[Json]:
    """The capture containers of a pod, wherever the webhook put them."""
    spec = pod["spec"]
    return [
        container
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]
        if container["name"] == SIDECAR
    ]


def assert_injected(pod: Json) -> None:
    name = pod["metadata"].get("name") or pod["metadata"].get("generateName")
    assert len(sidecars(pod)) == 1, f"{name}: expected one {SIDECAR} container"
    # The default is a native sidecar: first init container, restarted for the pod's lifetime.
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["name"] == SIDECAR, name
    assert sidecar["restartPolicy"] == "Always", name
    mounts = {mount["name"]: mount["mountPath"] for mount in sidecar["volumeMounts"]}
    assert mounts[CAPTURES_VOLUME] == "/captures", name
    assert STATUS_ANNOTATION in pod["metadata"].get("annotations", {}), name
    volumes = [volume["name"] for volume in pod["spec"].get("volumes", [])]
    assert volumes.count(CAPTURES_VOLUME) == 1, f"{name}: volumes {volumes}"
    # The app container is untouched and still first among the regular containers.
    assert pod["spec"]["containers"][0]["name"] == "app"


def assert_not_injected(pod: Json) -> None:
    name = pod["metadata"]["name"]
    assert sidecars(pod) == [], f"{name} got the sidecar"
    assert STATUS_ANNOTATION not in pod["metadata"].get("annotations", {}), name


def create(control_plane: ControlPlane, namespace: str, manifest: Json) -> Json:
    """Create an object and return it as the API server stored it."""
    return control_plane.kubectl_json(
        "create", "-n", namespace, "-f", "-", stdin=json.dumps(manifest)
    )


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def controller_pods(
    control_plane: ControlPlane, namespace: str, selector: str, count: int
) -> list[Json]:
    """The pods a controller made, once there are ``count`` of them."""

    def listed() -> list[Json] | None:
        pods: list[Json] = control_plane.kubectl_json(
            "get", "pods", "-n", namespace, "-l", selector
        )["items"]  # type: ignore[assignment]
        return pods if len(pods) >= count else None

    pods: list[Json] = wait_for(f"{count} pods {selector} in {namespace}", listed)
    return pods


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def webhook(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalWebhook]:
    """The webhook running locally and registered with the API server, injecting already."""
    certificates = tmp_path_factory.mktemp("webhook-certs")
    ca_bundle = make_certs(certificates, names=list(LOOPBACK_NAMES))
    local = LocalWebhook(
        cert=certificates / "tls.crt",
        key=certificates / "tls.key",
        ca=certificates / "ca.crt",
        log=certificates / "webhook.log",
    )
    configuration = pointed_at(
        rendered_webhook_configuration(control_plane), url=local.url, ca_bundle=ca_bundle
    )
    name = configuration["metadata"]["name"]
    probe_namespace = "e2e-webhook-probe"
    try:
        local.start()
        control_plane.kubectl("apply", "-f", "-", stdin=json.dumps(configuration))
        control_plane.kubectl("create", "namespace", probe_namespace)
        control_plane.kubectl(
            "label", "namespace", probe_namespace, "netpol-sniffer.io/capture=enabled"
        )
        control_plane.wait_for_default_service_account(probe_namespace)
        # The API server picks up webhook configurations through an informer: wait until it does.
        wait_for(
            "the API server to call the webhook",
            lambda: sidecars(dry_run_pod(control_plane, probe_namespace, bare_pod("probe"))),
        )
        yield local
    finally:
        control_plane.kubectl("delete", "namespace", probe_namespace, "--wait=false", check=False)
        control_plane.kubectl(
            "delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False
        )
        local.stop()


def dry_run_pod(control_plane: ControlPlane, namespace: str, manifest: Json) -> Json:
    """What the API server would store, after admission and validation, without storing it."""
    return control_plane.kubectl_json(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", stdin=json.dumps(manifest)
    )


# ---------------------------------------------------------------------------------------------
# Injected


def test_deployment_pods_made_by_the_controller_are_stored_with_the_sidecar(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    namespace = namespace_factory("e2e-deploy", labels=OPT_IN)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec()},
        },
    }
    create(control_plane, namespace, deployment)
    pods = controller_pods(control_plane, namespace, "app=web", 2)
    for pod in pods:
        # Made by the ReplicaSet controller from generateName: no name at admission.
        assert pod["metadata"]["generateName"].startswith("web-")
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert_injected(pod)


def test_job_pod_is_stored_with_the_sidecar(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    namespace = namespace_factory("e2e-job", labels=OPT_IN)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "once"}},
                "spec": {**pod_spec(), "restartPolicy": "Never"},
            }
        },
    }
    create(control_plane, namespace, job)
    [pod] = controller_pods(control_plane, namespace, "app=once", 1)
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert_injected(pod)


def test_statefulset_pod_is_stored_with_the_sidecar(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    namespace = namespace_factory("e2e-sts", labels=OPT_IN)
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": pod_spec()},
        },
    }
    create(control_plane, namespace, statefulset)
    [pod] = controller_pods(control_plane, namespace, "app=db", 1)
    assert pod["metadata"]["name"] == "db-0"
    assert_injected(pod)


def test_bare_pod_is_stored_with_the_sidecar(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    namespace = namespace_factory("e2e-bare", labels=OPT_IN)
    stored = create(control_plane, namespace, bare_pod("bare"))
    assert_injected(stored)
    assert_injected(control_plane.kubectl_json("get", "pod", "bare", "-n", namespace))


def test_server_side_dry_run_shows_the_sidecar_and_reapplying_adds_no_second(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    namespace = namespace_factory("e2e-dryrun", labels=OPT_IN)
    previewed = dry_run_pod(control_plane, namespace, bare_pod("preview"))
    assert_injected(previewed)
    # Nothing was stored by the dry run.
    listed = control_plane.kubectl_json("get", "pods", "-n", namespace)
    assert listed["items"] == []

    stored = create(control_plane, namespace, bare_pod("original"))
    # The stored, injected pod sent through admission again, as a new pod: still one sidecar.
    again = copy.deepcopy(stored)
    metadata = again["metadata"]
    for server_field in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
        metadata.pop(server_field, None)
    metadata["name"] = "reapplied"
    again.pop("status", None)
    recreated = create(control_plane, namespace, again)
    assert_injected(recreated)
    assert recreated["spec"]["volumes"] == stored["spec"]["volumes"]


# ---------------------------------------------------------------------------------------------
# Not injected


def test_pod_in_an_unlabelled_namespace_is_not_injected(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    namespace = namespace_factory("e2e-plain")
    assert_not_injected(create(control_plane, namespace, bare_pod("plain")))


def test_opted_out_pod_is_not_injected(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    namespace = namespace_factory("e2e-optout", labels=OPT_IN)
    assert_not_injected(create(control_plane, namespace, bare_pod("quiet", labels=OPT_OUT)))


def test_host_network_pod_is_not_injected(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    namespace = namespace_factory("e2e-hostnet", labels=OPT_IN)
    assert_not_injected(create(control_plane, namespace, bare_pod("node-agent", host_network=True)))


# kube-system and friends, and the webhook's own namespace (its pods must start without it).
@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "netpol-sniffer"])
def test_excluded_namespaces_are_not_injected_even_when_labelled(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace: str
) -> None:
    existed = bool(
        control_plane.kubectl(
            "get", "namespace", namespace, "--ignore-not-found", "-o", "name"
        ).stdout.strip()
    )
    if not existed:
        control_plane.kubectl("create", "namespace", namespace)
    control_plane.kubectl("label", "namespace", namespace, "netpol-sniffer.io/capture=enabled")
    try:
        control_plane.wait_for_default_service_account(namespace)
        assert_not_injected(dry_run_pod(control_plane, namespace, bare_pod("system-pod")))
    finally:
        if existed:
            control_plane.kubectl("label", "namespace", namespace, "netpol-sniffer.io/capture-")
        else:
            control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def fail_open_count(control_plane: ControlPlane) -> float:
    """How often the API server admitted a pod after failing to call the capture webhook."""
    metrics = control_plane.kubectl("get", "--raw", "/metrics").stdout
    prefix = 'apiserver_admission_webhook_fail_open_count{name="capture.netpol-sniffer.io"'
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))


def test_pods_are_still_created_while_the_webhook_is_down(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    namespace = namespace_factory("e2e-down", labels=OPT_IN)
    webhook.stop()
    try:
        failed_open = fail_open_count(control_plane)
        # failurePolicy Ignore: the API server admits the pod unchanged, and counts an error.
        assert_not_injected(create(control_plane, namespace, bare_pod("unwatched")))
        assert fail_open_count(control_plane) == failed_open + 1
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec()},
            },
        }
        create(control_plane, namespace, deployment)
        [pod] = controller_pods(control_plane, namespace, "app=web", 1)
        assert_not_injected(pod)
    finally:
        webhook.start()


def test_an_overloaded_webhook_answers_and_the_api_server_does_not_fail_open(
    control_plane: ControlPlane, webhook: LocalWebhook, namespace_factory: NamespaceFactory
) -> None:
    """Under overload the webhook answers (allowed, no patch, a warning) instead of failing: the
    pod is stored without the sidecar, kubectl shows the warning, and the API server counts a
    successful call, not a fail-open (docs/webhook.md, "Under load")."""
    namespace = namespace_factory("e2e-overload", labels=OPT_IN)
    webhook.stop()
    webhook.environ = {"NETPOL_SNIFFER_MAX_IN_FLIGHT": "1"}
    webhook.start()
    context = ssl.create_default_context(cafile=str(webhook.ca))
    # A request of our own holds the worker's one place: headers and half the body.
    held = context.wrap_socket(
        socket.create_connection(("127.0.0.1", webhook.port), timeout=10),
        server_hostname="127.0.0.1",
    )
    body = json.dumps({"request": {"uid": "held"}}).encode()
    held.sendall(
        f"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:5]
    )

    def webhook_metric(name: str) -> float:
        with urllib.request.urlopen(f"{webhook.url}/metrics", context=context, timeout=10) as r:
            lines = r.read().decode().splitlines()
        return sum(float(line.split()[-1]) for line in lines if line.startswith(name))

    try:
        wait_for(
            "the held request in the webhook",
            lambda: webhook_metric("netpol_sniffer_admission_wait_seconds_count") == 1,
        )
        failed_open = fail_open_count(control_plane)
        created = control_plane.kubectl(
            "create",
            "-n",
            namespace,
            "-f",
            "-",
            "-o",
            "json",
            stdin=json.dumps(bare_pod("crowded")),
        )
        assert_not_injected(json.loads(created.stdout))
        warning = "Warning: netpol-sniffer: no capture sidecar: the webhook is overloaded"
        assert warning in created.stderr
        assert fail_open_count(control_plane) == failed_open
        assert webhook_metric('netpol_sniffer_skipped_total{reason="overloaded"}') == 1
    finally:
        held.close()
        webhook.stop()
        webhook.environ = {}
        webhook.start()
