"""Ingresses and HTTPRoutes in a tampered snapshot: an Ingress sends only to Services of its own
namespace (the Ingress API has no field for another), and an HTTPRoute to another namespace's
only as a ReferenceGrant there permits, so one forged elsewhere cannot open a workload it does
not own to the outside; a genuine one in the workload's namespace does."""

from __future__ import annotations

from pathlib import Path

from tests.hostile.hostile_helpers import NAMESPACE, policy_files, run, snapshot, write_snapshot

PAYMENT_POLICY = f"{NAMESPACE}.paymentservice.yaml"


def _ingress(namespace: str, service: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "pay", "namespace": namespace},
        "spec": {"rules": [{"http": {"paths": [{"path": "/", "backend": {"service": service}}]}}]},
    }


def _add(bundle: Path, *objects: dict[str, object]) -> None:
    document = snapshot(bundle)
    document["items"] = [*document["items"], *objects]  # type: ignore[misc]
    write_snapshot(bundle, document)


def test_an_ingress_in_another_namespace_cannot_expose_a_workload(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    port = {"number": 50051}
    _add(
        bundle,
        # A "namespace" beside the name is no Ingress field: the Service is looked up in the
        # Ingress's own namespace, where there is no paymentservice.
        _ingress("attacker", {"name": "paymentservice", "namespace": NAMESPACE, "port": port}),
    )
    analysis = run(bundle)
    assert policy_files(analysis) == clean_policies
    assert "paymentservice" not in str(analysis.exposures)


def _http_route(namespace: str, ref: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "pay", "namespace": namespace},
        "spec": {"rules": [{"backendRefs": [ref]}]},
    }


def test_an_http_route_in_another_namespace_needs_a_reference_grant(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    ref = {"name": "paymentservice", "namespace": NAMESPACE, "port": 50051}
    grant: dict[str, object] = {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        # in the attacker's own namespace: a grant opens only the namespace it is in
        "metadata": {"name": "open", "namespace": "attacker"},
        "spec": {
            "from": [
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "attacker"}
            ],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    _add(bundle, _http_route("attacker", ref), grant)
    analysis = run(bundle)
    assert policy_files(analysis) == clean_policies
    assert "paymentservice" not in str(analysis.exposures)


def test_an_ingress_in_the_workloads_namespace_exposes_it(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    _add(bundle, _ingress(NAMESPACE, {"name": "paymentservice", "port": {"name": "grpc"}}))
    analysis = run(bundle)
    files = policy_files(analysis)
    assert files[PAYMENT_POLICY].count("0.0.0.0/0") > clean_policies[PAYMENT_POLICY].count(
        "0.0.0.0/0"
    )
    assert {path: text for path, text in files.items() if path != PAYMENT_POLICY} == {
        path: text for path, text in clean_policies.items() if path != PAYMENT_POLICY
    }
    assert [e.by for e in analysis.exposures[f"{NAMESPACE}/Deployment/paymentservice"]] == [
        f"Ingress {NAMESPACE}/pay"
    ]
