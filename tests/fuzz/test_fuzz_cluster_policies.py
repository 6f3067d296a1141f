"""Fuzzing the ClusterNetworkPolicy reader: `verify` and `diff` read policy files from anywhere,
so any document must end in a compiled policy or a PolicyError naming it, and a compiled one must
answer questions without crashing. Budget: ``FUZZ_EXAMPLES`` per target, as in
``test_fuzz_inputs``."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyser.clusterpolicies import TieredPolicySet, compile_cluster_policy
from analyser.evaluation import Address, pod
from kernel.errors import PolicyError
from tests.analyser.test_clusterpolicies import BASELINE
from tests.fuzz.test_fuzz_inputs import EXAMPLES, SCALARS

pytestmark = pytest.mark.fuzz
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KEYS = ["tier", "priority", "subject", "namespaces", "pods", "podSelector", "namespaceSelector",
        "ingress", "egress", "action", "from", "to", "networks", "protocols", "tcp", "udp",
        "sctp", "destinationPort", "number", "range", "start", "end", "name", "matchLabels",
        "matchExpressions", "key", "operator", "values"]  # fmt: skip
WORDS = ["Admin", "Baseline", "Accept", "Deny", "Pass", "0.0.0.0/0", "10.0.0.1/8", "::/0",
         "fe80::1/64", "NotIn", "In", "Exists", "kube-system"]  # fmt: skip
VALUES = st.recursive(
    SCALARS | st.sampled_from(WORDS),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=30,
)
SUBJECTS = (
    pod(namespace="shop", labels={"app": "web"}),
    pod(namespace="kube-system", labels={"k8s-app": "kube-dns"}),
    Address("10.1.2.3"),
    Address("fd00::1"),
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*path, index))
    return found


@st.composite
def mutated_policies(draw: st.DrawFn) -> dict[str, Any]:
    """The baseline analyse writes, with a few of its values replaced by anything."""
    document = copy.deepcopy(BASELINE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(document["spec"])))
        if not path:
            continue
        parent = document["spec"]
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = draw(VALUES)
    return document


@FUZZ
@given(mutated_policies() | st.builds(lambda spec: {**BASELINE, "spec": spec}, VALUES))
def test_a_cluster_policy_compiles_or_is_a_policy_error(document: dict[str, Any]) -> None:
    try:
        policy = compile_cluster_policy(document, source="fuzz.yaml")
    except PolicyError as error:
        assert "fuzz.yaml" in str(error)
        return
    policies = TieredPolicySet(cluster_policies=(policy,))
    for client in SUBJECTS:
        for server in SUBJECTS:
            policies.allowed_ports(client, server)
