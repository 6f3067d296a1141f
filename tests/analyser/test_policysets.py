"""Loading policy folders: multi-document YAML, Lists, JSON, kustomize output, bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from analyser.evaluation import Direction, pod
from analyser.flows import Protocol
from analyser.policysets import (
    RULES_LEFT_OUT_ANNOTATION,
    load_policies,
    parse_policy_texts,
    sides_left_out,
)
from kernel.errors import PolicyError

DENY_ALL = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"""

ALLOW_WEB = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}]
"""

WEB = pod(namespace="shop", labels={"app": "web"})
API = pod(namespace="shop", labels={"app": "api"})


def test_multi_document_yaml_and_kustomization_in_subfolders(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "all.yaml").write_text(f"---\n{DENY_ALL}---\n{ALLOW_WEB}---\n")
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [shop/all.yaml]\n"
    )
    (tmp_path / "README.md").write_text("not a policy")
    loaded = load_policies(tmp_path)
    assert [str(p) for p in loaded.policies.policies] == ["shop/deny-all", "shop/web"]
    assert loaded.notes == (f"{tmp_path}/kustomization.yaml (document 1): skipped Kustomization",)
    assert loaded.policies.allows(WEB, API, Protocol.UDP, 53) is False  # api's ingress denies
    assert loaded.policies.allowed_ports(WEB, pod(namespace="other")).count == 1


def test_list_objects_and_json(tmp_path: Path) -> None:
    items = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"p{n}", "namespace": "shop"},
            "spec": {"podSelector": {}},
        }
        for n in range(3)
    ]
    items.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    (tmp_path / "list.json").write_text(json.dumps({"kind": "List", "items": items}))
    (tmp_path / "typed.yml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems:\n"
        "- apiVersion: networking.k8s.io/v1\n"
        "  kind: NetworkPolicy\n"
        "  metadata: {name: x, namespace: shop}\n"
        "  spec: {podSelector: {}}\n"
    )
    loaded = load_policies(tmp_path)
    assert [str(p) for p in loaded.policies.policies] == [
        "shop/p0",
        "shop/p1",
        "shop/p2",
        "shop/x",
    ]
    assert loaded.notes == (f"{tmp_path}/list.json (document 1) items[3]: skipped ConfigMap",)
    assert len(loaded.documents) == 4


def test_a_single_file_is_a_policy_set(tmp_path: Path) -> None:
    file = tmp_path / "one.yaml"
    file.write_text(DENY_ALL)
    assert [str(p) for p in load_policies(file).policies.policies] == ["shop/deny-all"]


def test_unparsable_yaml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(DENY_ALL)
    (tmp_path / "bad.yaml").write_text("kind: NetworkPolicy\nspec: [unclosed\n")
    with pytest.raises(PolicyError, match=r"bad\.yaml: not valid YAML"):
        load_policies(tmp_path)


def test_unparsable_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PolicyError, match=r"bad\.json: not valid JSON"):
        load_policies(tmp_path)


def test_malformed_policy_names_file_and_document(tmp_path: Path) -> None:
    broken = ALLOW_WEB.replace("protocol: UDP", "protocol: ICMP")
    (tmp_path / "p.yaml").write_text(f"{DENY_ALL}---\n{broken}")
    with pytest.raises(
        PolicyError, match=r"shop/web in /.*/p\.yaml \(document 2\).*unknown protocol"
    ):
        load_policies(tmp_path)


def test_scalar_document_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("just text\n")
    with pytest.raises(PolicyError, match=r"p\.yaml \(document 1\): expected a Kubernetes object"):
        load_policies(tmp_path)


def test_same_policy_twice_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(DENY_ALL)
    (tmp_path / "b.yaml").write_text(DENY_ALL)
    with pytest.raises(PolicyError, match="shop/deny-all is defined twice"):
        load_policies(tmp_path)


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file or folder"):
        load_policies(tmp_path / "nope")
    empty = load_policies(tmp_path)
    assert not empty.policies.policies
    assert empty.notes == (f"{tmp_path}: no .yaml, .yml or .json files",)


def test_rendered_texts_are_read_like_files() -> None:
    loaded = parse_policy_texts(
        {
            "shop/web.yaml": ALLOW_WEB,
            "kustomization.yaml": "kind: Kustomization\nresources: [shop/web.yaml]\n",
        }
    )
    assert [str(p) for p in loaded.policies.policies] == ["shop/web"]
    assert loaded.notes == ("kustomization.yaml (document 1): skipped Kustomization",)
    with pytest.raises(PolicyError, match=r"shop/x\.yaml: not valid YAML"):
        parse_policy_texts({"shop/x.yaml": "a: [b\n"})


def test_the_public_api_checks_a_folder_in_a_few_lines(tmp_path: Path) -> None:
    import analyser

    (tmp_path / "p.yaml").write_text(f"{DENY_ALL}---\n{ALLOW_WEB}")
    policies = analyser.load_policies(tmp_path).policies
    web = analyser.pod(namespace="shop", labels={"app": "web"}, name="shop/web")
    assert policies.allows(web, analyser.Address("10.9.9.9"), analyser.Protocol.UDP, 53)
    [denial] = policies.denials(web, analyser.Address("10.9.9.9"), analyser.Protocol.TCP, 443)
    assert denial.side is analyser.Direction.EGRESS
    assert {"PolicySet", "load_policies", "pod", "Address", "Denial"} <= set(analyser.__all__)


def test_a_folder_of_other_manifests_gets_one_note_per_file_and_a_verdict(tmp_path: Path) -> None:
    manifests = "".join(
        f"---\nkind: {kind}\nmetadata: {{name: x{index}}}\n"
        for index, kind in enumerate(["Deployment", "Service", "Deployment"])
    )
    (tmp_path / "app.yaml").write_text(manifests)
    loaded = load_policies(tmp_path)
    assert not loaded.policies.policies
    assert loaded.notes == (
        f"{tmp_path}/app.yaml: skipped 3 objects that are not NetworkPolicies "
        "(Deployment ×2, Service ×1)",
        f"{tmp_path}: no NetworkPolicy found: without policies every connection is allowed",
    )


def test_sides_left_out_reads_analyse_s_annotation_and_passes_over_anything_else() -> None:
    def policy(name: str, annotation: object = None, kind: str = "NetworkPolicy") -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name, "namespace": "shop"}
        if annotation is not None:
            metadata["annotations"] = {RULES_LEFT_OUT_ANNOTATION: annotation}
        return {"kind": kind, "metadata": metadata}

    documents = [
        policy("web", '{"egress":3,"ingress":1}'),
        policy("cart", '{"egress":0}'),  # nothing left out
        policy("api", '{"egress":2}', kind="CiliumNetworkPolicy"),
        policy("plain"),
        policy("garbled", "{egress"),  # hand-edited: not JSON
        policy("listed", "[1, 2]"),
        policy("number", 7),
        {"kind": "NetworkPolicy", "metadata": "not a mapping"},
    ]
    assert sides_left_out(documents) == {
        "shop/web": frozenset({Direction.EGRESS, Direction.INGRESS}),
        "CiliumNetworkPolicy shop/api": frozenset({Direction.EGRESS}),
    }
