"""``kubectl kustomize`` renders every overlay, and what it renders validates and is wired right."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from certs.make_certs import LOOPBACK_NAMES, make_certs, service_names
from kernel.names import CAPTURE_ENABLED, CAPTURE_LABEL
from tests.kubectl import kubectl
from tests.webhook.podchecks import schema_problems
from webhook.app import DEFAULT_PORT
from webhook.settings import (
    SETTING_KEYS,
    WebhookSettings,
    build_settings,
    environment_config,
    parse_config_text,
)

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
# matchConditions are GA from 1.30; the newest schema the validator ships.
VERSIONS = ("1.30.0", "1.37.0")
NAMESPACE = "netpol-sniffer"
SERVICE = "netpol-sniffer-webhook"


pytestmark = pytest.mark.kubectl


def render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    # A copy, so generated certificates never land in the working tree.
    copy = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(MANIFESTS, copy, ignore=shutil.ignore_patterns("generated"))
    out = copy.parent / "certs"
    make_certs(
        out,
        names=[*service_names(SERVICE, NAMESPACE), *LOOPBACK_NAMES],
        overlay=copy / "overlays" / "self-signed",
    )
    return render(copy / "overlays" / "self-signed"), out


@pytest.fixture(scope="module")
def cert_manager() -> list[dict[str, Any]]:
    return render(MANIFESTS / "overlays" / "cert-manager")


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(MANIFESTS / "base")


def builtin(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if not o["apiVersion"].startswith("cert-manager.io/")]


def test_every_overlay_validates(
    base: list[dict[str, Any]],
    cert_manager: list[dict[str, Any]],
    self_signed: tuple[list[dict[str, Any]], Path],
) -> None:
    for objects in (base, cert_manager, self_signed[0]):
        for obj in builtin(objects):
            for version in VERSIONS:
                problem = schema_problems(obj, version)
                assert problem is None, (
                    f"{obj['kind']}/{obj['metadata']['name']} {version}: {problem}"
                )
            assert "SERVICE" not in yaml.safe_dump(obj) and "CERTIFICATE" not in yaml.safe_dump(obj)


def test_webhook_configuration(base: list[dict[str, Any]]) -> None:
    (webhook,) = one(base, "MutatingWebhookConfiguration", SERVICE)["webhooks"]
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["sideEffects"] == "None"
    assert webhook["timeoutSeconds"] == 5
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["reinvocationPolicy"] == "Never"
    assert webhook["clientConfig"]["service"] == {
        "name": SERVICE,
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": 443,
    }
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {"key": CAPTURE_LABEL, "operator": "In", "values": [CAPTURE_ENABLED]},
        {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", "kube-public", "kube-node-lease", NAMESPACE],
        },
    ]
    assert webhook["objectSelector"]["matchExpressions"] == [
        {"key": "netpol-sniffer.io/capture", "operator": "NotIn", "values": ["disabled"]}
    ]
    assert webhook["matchConditions"] == [
        {
            "name": "not-host-network",
            "expression": "!has(object.spec.hostNetwork) || !object.spec.hostNetwork",
        }
    ]


def test_deployment_and_service(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment", SERVICE)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"] == [
        {"name": "https", "containerPort": DEFAULT_PORT, "protocol": "TCP"}
    ]
    assert set(container["resources"]) == {"requests", "limits"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    assert Path(args["tls-cert"]).parent == Path(mounts["tls"])
    assert Path(args["config"]).parent == Path(mounts["config"])
    service = one(base, "Service", SERVICE)
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "https"
    assert mounts["tmp"] == "/tmp"  # the workers' metrics files (webhook.metrics)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"]["emptyDir"]["medium"] == "Memory"
    pdb = one(base, "PodDisruptionBudget", SERVICE)
    assert pdb["spec"]["selector"] == spec["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_shipped_config_is_valid_and_spells_out_the_defaults(base: list[dict[str, Any]]) -> None:
    config_map = one(base, "ConfigMap", "netpol-sniffer-webhook-config")
    config = parse_config_text(config_map["data"]["config.yaml"], source="configmap")
    assert build_settings(config, {}, source="configmap") == WebhookSettings()
    # Every setting but ownNamespace (the Deployment sets it from the downward API).
    assert set(config) == set(SETTING_KEYS) - {"ownNamespace"}


def test_self_signed_overlay_carries_secret_and_ca_bundle(
    self_signed: tuple[list[dict[str, Any]], Path],
) -> None:
    objects, certs = self_signed
    (webhook,) = one(objects, "MutatingWebhookConfiguration", SERVICE)["webhooks"]
    assert webhook["clientConfig"]["caBundle"] == (certs / "ca-bundle.txt").read_text().strip()
    secrets = [o for o in objects if o["kind"] == "Secret"]
    assert len(secrets) == 1 and secrets[0]["type"] == "kubernetes.io/tls"
    assert not [o for o in objects if o["metadata"]["name"] == "netpol-sniffer-ca-bundle"]
    deployment = one(objects, "Deployment", SERVICE)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == secrets[0]["metadata"]["name"]
    served = x509.load_pem_x509_certificate(base64.b64decode(secrets[0]["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(webhook["clientConfig"]["caBundle"]))
    served.verify_directly_issued_by(ca)
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{SERVICE}.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)


def test_cert_manager_overlay_is_wired(cert_manager: list[dict[str, Any]]) -> None:
    certificate = one(cert_manager, "Certificate", SERVICE)
    assert certificate["spec"]["dnsNames"] == service_names(SERVICE, NAMESPACE)
    issuer = one(cert_manager, "Issuer", certificate["spec"]["issuerRef"]["name"])
    ca_certificate = one(cert_manager, "Certificate", issuer["spec"]["ca"]["secretName"])
    assert ca_certificate["spec"]["isCA"] is True
    one(cert_manager, "Issuer", ca_certificate["spec"]["issuerRef"]["name"])
    configuration = one(cert_manager, "MutatingWebhookConfiguration", SERVICE)
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{SERVICE}"
    }
    deployment = one(cert_manager, "Deployment", SERVICE)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert not [o for o in cert_manager if o["kind"] == "Secret"]


def test_the_registry_example_sets_both_images() -> None:
    """The overlay README's journey copies: the webhook's image by kustomize's ``images:``, the
    sidecar's by the setting the webhook reads from its environment."""
    objects = render(MANIFESTS / "overlays" / "registry-example")
    registry = "registry.example.com/platform"
    deployment = one(objects, "Deployment", "netpol-sniffer-webhook")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{registry}/netpol-sniffer-webhook:0.1.0"
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    config_map = one(objects, "ConfigMap", "netpol-sniffer-webhook-config")
    settings = build_settings(
        parse_config_text(config_map["data"]["config.yaml"], source="configmap"),
        environment_config(environ),
    )
    assert settings.capture_image == f"{registry}/netpol-sniffer-capture:0.1.0"
    for obj in builtin(objects):
        assert schema_problems(obj, VERSIONS[-1]) is None, obj["kind"]
