"""Shared by the Cilium tests: Cilium's own CRD schemas, and the traffic that gives a workload
egress by DNS name."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.analyser.packet_builders import dns_query, dns_response
from tests.bundle_builders import Frame, handshake, udp

CRDS = Path(__file__).resolve().parent / "data" / "crds"
CILIUM_CRDS = (
    "cilium-v1.20.2-ciliumnetworkpolicies.yaml",
    "cilium-v1.15.19-ciliumnetworkpolicies.yaml",
)
CLUSTER_DNS = "10.96.0.10"  # the demo bundle's kube-dns Service


@functools.cache
def cilium_validator(crd: str) -> jsonschema.Draft4Validator:
    """A validator for the ``v2`` OpenAPI schema of a CiliumNetworkPolicy CRD file."""
    document = yaml.safe_load((CRDS / crd).read_text(encoding="utf-8"))
    (version,) = (v for v in document["spec"]["versions"] if v["name"] == "v2")
    return jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"])


def schema_errors(obj: Any) -> list[str]:
    """What each Cilium CRD's schema says is wrong with ``obj`` (empty: valid for all)."""
    return [
        f"{crd}: {'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for crd in CILIUM_CRDS
        for error in cilium_validator(crd).iter_errors(obj)
    ]


def lookup(
    client: str, question: str, answers: list[tuple[str, str, str]], at: float, *, port: int
) -> list[Frame]:
    """A DNS query from ``client`` to cluster DNS and its answer (owner, type, value records)."""
    return [
        (at, udp(client, port, CLUSTER_DNS, 53, dns_query(question))),
        (at + 0.001, udp(CLUSTER_DNS, 53, client, port, dns_response(question, answers))),
    ]


def named_egress(client: str, at: float) -> list[Frame]:
    """``client`` looks up api.shop.example (a CNAME to edge.cdn.example, 203.0.113.10) and
    connects to it on 443, and connects to 198.51.100.7:443, which no answer named."""
    return [
        *lookup(
            client,
            "api.shop.example",
            [
                ("api.shop.example", "CNAME", "edge.cdn.example"),
                ("edge.cdn.example", "A", "203.0.113.10"),
            ],
            at,
            port=40001,
        ),
        *handshake(client, 40002, "203.0.113.10", 443, at + 1),
        *handshake(client, 40003, "198.51.100.7", 443, at + 2),
    ]
