"""Rendering: the policy model, the graph and the analysis facts → YAML, DOT and Markdown text,
through the Jinja templates in ``analyser/templates/`` (one per format). The only jinja2 import.

Pure: returns text, writes nothing. Every YAML document rendered here is parsed back with
``yaml.safe_load_all`` before it is returned, so a template mistake raises :class:`RenderError`
instead of reaching a cluster. Output is deterministic: the same input gives the same bytes (no
wall-clock times; rules, ports and files are sorted).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from analyser.bundles import FileProblem, Window
from analyser.errors import RenderError
from analyser.flows import Evidence
from analyser.graphs import EdgeStats, NodeRole, attempts, loopback_flows
from analyser.policies import (
    DefaultDeny,
    IpPeer,
    LabelSelector,
    LeftOut,
    PodPeer,
    Policy,
    PortSpec,
    Rule,
    SelectorWarning,
    rule_sort_key,
)

# What every generated object carries, so users (and a later run) can tell it apart.
MANAGED_BY_LABEL = ("app.kubernetes.io/managed-by", "netpol-sniffer")
ANNOTATION_PREFIX = "netpol-sniffer.io/"
KUSTOMIZATION = "kustomization.yaml"

# Kubernetes object names: a namespace is a DNS-1123 label, a NetworkPolicy a DNS-1123 subdomain.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where generated objects come from: the capture window of the bundle (ISO-8601 UTC), if
    known. Goes into an annotation; deliberately no time of the run, so output is reproducible."""

    window_start: str | None = None
    window_end: str | None = None

    @property
    def window(self) -> str | None:
        if self.window_start is None or self.window_end is None:
            return None
        return f"{self.window_start}/{self.window_end}"


@dataclass(frozen=True, slots=True)
class ReportFacts:
    """What the report says besides the graph: where the data came from and what was read."""

    source: str  # the bundle's directory name (not its absolute path: keeps output stable)
    provenance: Provenance
    producer: str | None
    capture_mode: str | None
    captures_read: int
    packets: int
    flows: int
    evidence_counts: Mapping[Evidence, int]
    file_problems: tuple[FileProblem, ...]
    policy_files: tuple[str, ...]  # paths relative to the output directory
    workload_policies: Mapping[str, str]  # workload node id ("NS/Kind/name") → its policy file
    unselectable: tuple[str, ...] = ()  # captured workloads without a stable label: no policy
    unselectable_reasons: Mapping[str, str] = field(default_factory=dict)  # node id → why
    skipped_packets: Mapping[str, int] = field(default_factory=dict)  # reason → packets unused
    # NodeLocal DNSCache addresses (policies.ClusterDns.node_local): cluster DNS, not the outside
    node_local_dns: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the output leaves out, and why
    left_out: tuple[LeftOut, ...] = ()  # traffic with special addresses given no rule
    selector_warnings: tuple[SelectorWarning, ...] = ()  # selectors narrowed or too wide


# -- filters: every scalar leaves a template through one of these -------------------------------

# Characters PyYAML accepts literally in a double-quoted scalar; anything else is escaped.
_PRINTABLE_RANGES = "\x20-\x7e\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff"
_YAML_PRINTABLE = re.compile(f"[{_PRINTABLE_RANGES}]")
_NOT_PRINTABLE = re.compile(f"[^{_PRINTABLE_RANGES}]")


def yaml_quoted(value: object) -> str:
    """A YAML double-quoted scalar for ``str(value)``: never a bool, number or null by accident,
    and safe whatever characters it holds."""
    out = ['"']
    for char in str(value):
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif _YAML_PRINTABLE.fullmatch(char):
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def one_line(value: object) -> str:
    """Text for a comment or a Markdown line: printable, no line breaks."""
    # One regex pass: a report or graph has a line per flow edge and address.
    return _NOT_PRINTABLE.sub(" ", str(value)).strip()


def dot_quoted(value: object) -> str:
    """A DOT double-quoted string. Backslashes are doubled so Graphviz's label escapes (``\\N``,
    ``\\l``) cannot be triggered by data; line breaks become Graphviz's ``\\n``."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{one_line(text)}"'


def markdown_cell(value: object) -> str:
    """Text safe inside a Markdown table cell."""
    return one_line(value).replace("\\", "\\\\").replace("|", "\\|")


def nest(text: str, width: int) -> str:
    """A macro's lines placed under a parent: lines after the first indented by ``width``, the
    trailing line break dropped (the template supplies its own)."""
    first, *rest = text.rstrip().split("\n")
    return "\n".join([first, *(" " * width + line if line else line for line in rest)])


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # YAML, DOT and Markdown: every scalar goes through a filter instead
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        q=yaml_quoted,
        nest=nest,
        one_line=one_line,
        dot=dot_quoted,
        md=markdown_cell,
        utc=Window.text,
    )
    return env


_ENV = _environment()


def _render(template: str, **context: object) -> str:
    try:
        return _ENV.get_template(template).render(**context)
    except jinja2.TemplateError as error:
        raise RenderError(f"template {template} failed: {error}") from error


# -- policies -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PortView:
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class _PeerView:
    namespace: str | None  # set only for a peer in another namespace
    pod_selector: LabelSelector | None
    cidr: str | None
    names: tuple[str, ...]
    description: str  # what an ipBlock stands for ("cluster nodes"), for the comment
    excluded: tuple[str, ...] = ()  # the ipBlock's except list


@dataclass(frozen=True, slots=True)
class _RuleView:
    peer: _PeerView
    ports: tuple[_PortView, ...]


def _cidr(cidr: str, policy: Policy) -> str:
    try:
        return str(ipaddress.ip_network(cidr, strict=True))
    except ValueError as error:
        raise RenderError(
            f"policy {policy.namespace}/{policy.name}: bad ipBlock {cidr!r}: {error}"
        ) from error


def _rule_views(rules: Iterable[Rule], policy: Policy) -> tuple[_RuleView, ...]:
    rules = tuple(rules)
    for rule in rules:  # every address checked before sorting parses them
        if isinstance(rule.peer, IpPeer):
            _cidr(rule.peer.cidr, policy)
    views = []
    for rule in sorted(rules, key=rule_sort_key):
        peer = rule.peer
        if isinstance(peer, PodPeer):
            other_namespace = (
                peer.namespace if peer.namespace not in (None, policy.namespace) else None
            )
            peer_view = _PeerView(other_namespace, peer.pod_selector, None, (), "")
        else:
            peer_view = _PeerView(
                None,
                None,
                _cidr(peer.cidr, policy),
                tuple(sorted(set(peer.names))),
                peer.description,
                tuple(_cidr(hole, policy) for hole in peer.excluded),
            )
        ports = tuple(_PortView(str(p.protocol), p.port) for p in sorted(set(rule.ports)))
        views.append(_RuleView(peer_view, ports))
    return tuple(views)


def _check_names(namespace: str, name: str) -> None:
    if not _DNS1123_LABEL.fullmatch(namespace) or len(namespace) > 63:
        raise RenderError(f"{namespace!r} is not a valid namespace name")
    if not _DNS1123_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        raise RenderError(f"{namespace}/{name!r} is not a valid NetworkPolicy name")


def _labels(extra: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    labels = dict(extra)
    labels[MANAGED_BY_LABEL[0]] = MANAGED_BY_LABEL[1]
    return tuple(sorted(labels.items()))


def _annotations(provenance: Provenance, **extra: str) -> tuple[tuple[str, str], ...]:
    annotations = {ANNOTATION_PREFIX + key.replace("_", "-"): value for key, value in extra.items()}
    if provenance.window is not None:
        annotations[ANNOTATION_PREFIX + "capture-window"] = provenance.window
    return tuple(sorted(annotations.items()))


# libyaml's safe loader when PyYAML was built with it (fifty times faster), else the Python one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_back(text: str, what: str, kind: str) -> None:
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=_SAFE_LOADER) if doc is not None]
    except yaml.YAMLError as error:
        raise RenderError(f"{what} is not valid YAML: {error}") from error
    if (
        len(documents) != 1
        or not isinstance(documents[0], dict)
        or documents[0].get("kind") != kind
    ):
        raise RenderError(f"{what} did not render to one {kind}")


def render_policy(policy: Policy, *, provenance: Provenance) -> str:
    """One NetworkPolicy document for one workload."""
    _check_names(policy.namespace, policy.name)
    ingress = _rule_views(policy.ingress, policy)
    egress = _rule_views(policy.egress, policy)
    dns_names = {
        rule.peer.cidr: list(rule.peer.names)
        for rule in (*ingress, *egress)
        if rule.peer.cidr is not None and rule.peer.names
    }
    extra = {"workload": policy.workload}
    if dns_names:
        extra["dns_names"] = json.dumps(dns_names, sort_keys=True, separators=(",", ":"))
    text = _render(
        "networkpolicy.yaml.j2",
        policy=policy,
        labels=_labels(policy.labels),
        annotations=_annotations(provenance, **extra),
        ingress=ingress,
        egress=egress,
    )
    _parse_back(text, f"policy {policy.namespace}/{policy.name}", "NetworkPolicy")
    return text


def render_default_deny(deny: DefaultDeny, *, provenance: Provenance) -> str:
    """A policy selecting every pod of a namespace and allowing nothing in either direction."""
    _check_names(deny.namespace, deny.name)
    text = _render(
        "default-deny.yaml.j2",
        deny=deny,
        labels=_labels(()),
        annotations=_annotations(provenance),
    )
    _parse_back(text, f"default-deny {deny.namespace}/{deny.name}", "NetworkPolicy")
    return text


def render_kustomization(resources: Iterable[str]) -> str:
    text = _render("kustomization.yaml.j2", resources=sorted(resources))
    _parse_back(text, KUSTOMIZATION, "Kustomization")
    return text


def policy_path(namespace: str, name: str) -> str:
    """Where a policy goes, relative to the output directory."""
    return f"{namespace}/{name}.yaml"


def render_policy_files(
    policies: Iterable[Policy],
    *,
    default_denies: Iterable[DefaultDeny] = (),
    provenance: Provenance,
) -> dict[str, str]:
    """Every policy file plus the ``kustomization.yaml`` that lists them, keyed by path relative
    to the output directory (sorted)."""
    files: dict[str, str] = {}

    def add(path: str, text: str) -> None:
        if path in files:
            raise RenderError(f"two policies would both be written to {path}")
        files[path] = text

    for deny in default_denies:
        add(
            policy_path(deny.namespace, deny.name), render_default_deny(deny, provenance=provenance)
        )
    for policy in policies:
        add(
            policy_path(policy.namespace, policy.name), render_policy(policy, provenance=provenance)
        )
    files[KUSTOMIZATION] = render_kustomization(files)
    return dict(sorted(files.items()))


# -- graph and report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NodeView:
    node_id: str
    dot_id: str
    role: str
    label: str
    names: tuple[str, ...]
    in_scope: bool


@dataclass(frozen=True, slots=True)
class _PortStatsView:
    protocol: str
    port: int
    stats: EdgeStats
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _EdgeView:
    client: _NodeView
    server: _NodeView
    ports: tuple[_PortStatsView, ...]

    @property
    def flows(self) -> int:
        return sum(p.stats.flows for p in self.ports)


def _graph_views(graph: Any) -> tuple[tuple[_NodeView, ...], tuple[_EdgeView, ...]]:
    """The graph (schema in ``analyser.graphs``) as sorted plain records for the templates."""
    nodes: dict[str, _NodeView] = {}
    for index, (node_id, attrs) in enumerate(
        sorted(graph.nodes(data=True), key=lambda n: str(n[0]))
    ):
        nodes[node_id] = _NodeView(
            node_id=str(node_id),
            dot_id=f"n{index}",
            role=str(attrs.get("role", NodeRole.UNRESOLVED)),
            label=str(attrs.get("label") or node_id),
            names=tuple(sorted(attrs.get("names") or ())),
            in_scope=bool(attrs.get("in_scope", False)),
        )
    edges = []
    for client, server, attrs in sorted(
        graph.edges(data=True), key=lambda e: (str(e[0]), str(e[1]))
    ):
        port_map: Mapping[PortSpec, EdgeStats] = attrs.get("ports") or {}
        ports = tuple(
            _PortStatsView(
                str(spec.protocol), spec.port, stats, tuple(sorted(str(e) for e in stats.evidence))
            )
            for spec, stats in sorted(port_map.items())
        )
        edges.append(_EdgeView(nodes[client], nodes[server], ports))
    return tuple(nodes.values()), tuple(edges)


def render_dot(graph: Any) -> str:
    """Graphviz DOT for the workload graph (a networkx DiGraph following ``analyser.graphs``)."""
    nodes, edges = _graph_views(graph)
    return _render("graph.dot.j2", nodes=nodes, edges=edges)


def render_report(facts: ReportFacts, graph: Any) -> str:
    """The Markdown report: workloads, flows per edge, external names, unresolved addresses,
    damaged files and how each flow's direction was decided."""
    nodes, edges = _graph_views(graph)
    evidence = [(str(e), facts.evidence_counts.get(e, 0)) for e in Evidence]
    return _render(
        "report.md.j2",
        facts=facts,
        nodes=nodes,
        edges=edges,
        evidence=evidence,
        attempts=attempts(graph),
        loopback=loopback_flows(graph),
    )
