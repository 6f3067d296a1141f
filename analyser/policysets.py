"""Loading a set of NetworkPolicies (and CiliumNetworkPolicies, ClusterNetworkPolicies) from
files: the generated ones or any hand-written set.

A path may be one file or a folder (searched recursively for ``*.yaml``, ``*.yml``, ``*.json``).
Files may hold several YAML documents, ``kind: List`` (or ``NetworkPolicyList``) objects, or the
output of ``kustomize build``. Objects that are not NetworkPolicies (a ``kustomization.yaml``, a
ConfigMap) are skipped with a note; a file that cannot be parsed, or a NetworkPolicy that is
malformed, raises :class:`PolicyError` naming the file. The same policy (namespace/name) twice is
an error too: which one wins would depend on the order ``kubectl apply`` sees them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analyser.ciliumsemantics import compile_cilium_policy
from analyser.clusterpolicies import KIND as CLUSTER_POLICY_KIND
from analyser.clusterpolicies import (
    CompiledClusterPolicy,
    TieredPolicySet,
    compile_cluster_policy,
)
from analyser.documents import DocumentError, json_value, yaml_values
from analyser.evaluation import CompiledPolicy, Direction, compile_policy, policy_name
from kernel.errors import PolicyError

POLICY_SUFFIXES = (".yaml", ".yml", ".json")
# What analyse writes on a policy that its rules for some observed peers did not fit in (their
# rules would have made it too big for a cluster to take: ``policies.MAX_RULE_BYTES``): how many
# peers of each direction were left out, as JSON ({"egress": 8613}).
RULES_LEFT_OUT_ANNOTATION = "netpol-sniffer.io/rules-left-out"
# YAML aliases in one policy file may stand for this many nodes in all, expanded. People write
# policies by hand (and Helm templates keep the anchors their authors wrote), where an anchored
# port list reused in a few rules is reasonable; nested aliases ("billion laughs") are not:
# each alias costs what it stands for, and past this the file is refused before anything is
# walked. kubectl and kustomize never write aliases.
MAX_ALIAS_NODES = 100_000
# The kinds read, each with its semantics (``evaluation``, ``ciliumsemantics``).
_COMPILERS: dict[str, Callable[..., CompiledPolicy]] = {
    "NetworkPolicy": compile_policy,
    "CiliumNetworkPolicy": compile_cilium_policy,
}


@dataclass(frozen=True, slots=True)
class LoadedPolicies:
    """The policies found under a path, and what was skipped there."""

    root: str
    documents: tuple[Mapping[str, Any], ...]  # the NetworkPolicy objects, as JSON
    policies: TieredPolicySet  # with the ClusterNetworkPolicies found
    notes: tuple[str, ...]  # objects or files skipped, and why


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise PolicyError(f"{root}: no such file or folder")
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix in POLICY_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def _parse(name: str, text: str) -> list[Any]:
    """The documents of one file's text; JSON for ``.json`` names, YAML otherwise; with bounded
    work (``documents``: nesting capped, YAML aliases within :data:`MAX_ALIAS_NODES`)."""
    try:
        if name.endswith(".json"):
            return [json_value(text)]
        return yaml_values(text, alias_nodes=MAX_ALIAS_NODES)
    except DocumentError as error:
        raise PolicyError(f"{name}: {error}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(f"{path}: cannot read: {error}") from None


def _objects(document: Any, where: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    """The objects in a document, with ``kind: *List`` flattened."""
    if document is None:
        return
    if not isinstance(document, Mapping):
        raise PolicyError(f"{where}: expected a Kubernetes object, found {type(document).__name__}")
    kind = document.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and "items" in document:
        items = document.get("items") or []
        if not isinstance(items, list):
            raise PolicyError(f"{where}: items of a {kind} must be a list")
        for index, item in enumerate(items):
            yield from _objects(item, f"{where} items[{index}]")
        return
    yield document, where


def _skipped_notes(source: str, skipped: list[tuple[str, str]]) -> list[str]:
    """One note per skipped object, or one per file when it holds several (a folder of manifests
    must not bury the verdict under a line per Deployment)."""
    if len(skipped) <= 1:
        return [f"{where}: skipped {kind}" for where, kind in skipped]
    kinds = Counter(kind for _, kind in skipped)
    listed = ", ".join(f"{kind} ×{count}" for kind, count in sorted(kinds.items()))
    return [f"{source}: skipped {len(skipped)} objects that are not NetworkPolicies ({listed})"]


def _policy_set(
    root: str, sources: Iterable[tuple[str, list[Any]]], notes: list[str]
) -> LoadedPolicies:
    """Policies from (source name, parsed documents) pairs; raises PolicyError on anything bad."""
    documents: list[Mapping[str, Any]] = []
    compiled: dict[tuple[str, str, str], CompiledPolicy] = {}
    cluster: dict[str, CompiledClusterPolicy] = {}
    sources_seen = 0
    for source, parsed in sources:
        sources_seen += 1
        skipped: list[tuple[str, str]] = []  # (where, kind) of what is not a NetworkPolicy
        for number, document in enumerate(parsed, start=1):
            for obj, where in _objects(document, f"{source} (document {number})"):
                if obj.get("kind") == CLUSTER_POLICY_KIND:
                    cluster_policy = compile_cluster_policy(obj, source=where)
                    if cluster_policy.name in cluster:
                        raise PolicyError(
                            f"{cluster_policy} is defined twice: in "
                            f"{cluster[cluster_policy.name].source} and in {where}"
                        )
                    cluster[cluster_policy.name] = cluster_policy
                    continue
                compile = _COMPILERS.get(str(obj.get("kind")))
                if compile is None:
                    skipped.append((where, str(obj.get("kind") or "an object without kind")))
                    continue
                policy = compile(obj, source=where)
                key = (policy.kind, policy.namespace, policy.name)
                if key in compiled:
                    raise PolicyError(
                        f"{policy.kind} {policy.namespace}/{policy.name} is defined twice: in "
                        f"{compiled[key].source} and in {where} (give one folder per policy set, "
                        "e.g. kustomize's output)"
                    )
                compiled[key] = policy
                documents.append(obj)
        notes += _skipped_notes(source, skipped)
    if sources_seen and not compiled and not cluster:
        notes.append(
            f"{root}: no NetworkPolicy found: without policies every connection is allowed"
        )
    return LoadedPolicies(
        root=root,
        documents=tuple(documents),
        policies=TieredPolicySet(
            policies=tuple(sorted(compiled.values(), key=lambda p: (p.namespace, p.name, p.kind))),
            cluster_policies=tuple(cluster[name] for name in sorted(cluster)),
        ),
        notes=tuple(notes),
    )


def namespace_label_keys(documents: Iterable[Mapping[str, Any]]) -> set[str]:
    """The label keys the policies' namespaceSelectors look at (matchLabels and
    matchExpressions), to tell whether the Namespaces' own labels matter."""
    keys: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, Mapping):
            selector = value.get("namespaceSelector")
            if isinstance(selector, Mapping):
                keys.update(str(k) for k in (selector.get("matchLabels") or {}))
                keys.update(
                    str(e.get("key"))
                    for e in selector.get("matchExpressions") or []
                    if isinstance(e, Mapping)
                )
            for child in value.values():
                visit(child)
        elif isinstance(value, list):
            for child in value:
                visit(child)

    for document in documents:
        visit(document.get("spec"))
    return keys


def sides_left_out(documents: Iterable[Mapping[str, Any]]) -> dict[str, frozenset[Direction]]:
    """The policies (named as ``evaluation.policy_name`` names them) whose
    :data:`RULES_LEFT_OUT_ANNOTATION` says analyse left rules out of them, and the directions it
    names. Only a hint for the reader of verify's denials: an annotation that is not such JSON
    is passed over."""
    found: dict[str, frozenset[Direction]] = {}
    for document in documents:
        metadata = document.get("metadata")
        if not isinstance(metadata, Mapping):
            continue
        annotations = metadata.get("annotations")
        if not isinstance(annotations, Mapping):
            continue
        try:
            counts = json.loads(str(annotations.get(RULES_LEFT_OUT_ANNOTATION, "")))
        except ValueError:
            continue
        if not isinstance(counts, dict):
            continue
        directions = frozenset(direction for direction in Direction if counts.get(direction))
        if directions:
            kind, namespace = str(document.get("kind")), str(metadata.get("namespace") or "default")
            found[policy_name(kind, namespace, str(metadata.get("name")))] = directions
    return found


def load_policies(path: str | Path) -> LoadedPolicies:
    """Every NetworkPolicy under ``path``, compiled; raises PolicyError on anything unusable."""
    root = Path(path)
    files = _files(root)
    notes = [] if files else [f"{root}: no .yaml, .yml or .json files"]
    # Files are named as found under the path the user gave, so messages point at them.
    return _policy_set(
        str(root), ((f.as_posix(), _parse(f.as_posix(), _read(f))) for f in files), notes
    )


def parse_policy_texts(files: Mapping[str, str]) -> LoadedPolicies:
    """Policies from rendered texts keyed by file name (e.g. ``rendering.render_policy_files``'s
    output), read exactly as :func:`load_policies` would read them from disk."""
    return _policy_set(
        "(rendered)", ((name, _parse(name, text)) for name, text in sorted(files.items())), []
    )
