"""Fuzzing the CiliumNetworkPolicy reader that verify and diff use on any set they are given:
it ends in a compiled policy or a PolicyError naming the policy, never another exception, and
what it compiles can be asked about any peer."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyser.ciliumsemantics import compile_cilium_policy
from analyser.evaluation import Address, PolicySet, pod
from analyser.flows import Protocol
from kernel.errors import PolicyError

pytestmark = pytest.mark.fuzz
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KEYS = ["endpointSelector", "ingress", "egress", "enableDefaultDeny", "fromEndpoints",
        "toEndpoints", "toCIDR", "toCIDRSet", "fromCIDRSet", "toEntities", "fromEntities",
        "toFQDNs", "toPorts", "ports", "port", "endPort", "protocol", "rules", "dns",
        "matchName", "matchPattern", "matchLabels", "matchExpressions", "key", "operator",
        "values", "cidr", "except", "egressDeny", "specs"]  # fmt: skip
WORDS = ["", "0", "53", "443", "²", "65536", "TCP", "UDP", "ANY", "ICMP", "world", "host",
         "remote-node", "kube-apiserver", "health", "10.0.0.0/8", "0.0.0.0/0", "::/0",
         "fd00::/8", "10.0.0.1/33", "k8s:io.kubernetes.pod.namespace", "k8s:app", "web",
         "*.example", "api.example", "bad name", "In", "Exists"]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from(WORDS),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5),
    ),
    max_leaves=40,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5), VALUES)
def test_cilium_policies_compile_or_fail_with_a_policy_error(
    spec: dict[str, Any], metadata: object
) -> None:
    document = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": metadata if isinstance(metadata, dict) else {"name": "p", "namespace": "ns"},
        "spec": spec,
    }
    try:
        policy = compile_cilium_policy(document)
    except PolicyError as error:
        assert "CiliumNetworkPolicy" in str(error)
        return
    policies = PolicySet.of([policy])
    subject = pod(namespace=policy.namespace, labels={"app": "web"})
    for peer in (
        pod(namespace="other", labels={"app": "web"}),
        Address("203.0.113.1", dns_names=frozenset({"api.example"})),
        Address("10.0.0.1", node="n1"),
        Address("fd00::1", apiserver=True),
    ):
        policies.allowed_ports(subject, peer)
        policies.allowed_ports(peer, subject)
        policies.allows(subject, peer, Protocol.UDP, 53)
