"""Rendering: the policy model, the graph and the analysis facts → YAML, DOT and Markdown text,
through the Jinja templates in ``analyser/templates/`` (one per format). The only jinja2 import.

Pure: returns text, writes nothing. Every text from input (names, labels, DNS names, file names,
problems) leaves a template through a filter that makes it inert for that format (built on
``texts.inert``; see the filters below). Every YAML file rendered here is parsed back with
``yaml.safe_load_all`` and compared, field for field, with the object the model says it must be
(:func:`policy_object`, :func:`default_deny_object`, :func:`baseline_object`,
:func:`kustomization_object`): a template
mistake, or a character that escaped a filter, raises :class:`RenderError` instead of reaching
a cluster. Output is deterministic: the same input gives the same bytes (no wall-clock times;
rules, ports and files are sorted).

The one thing kept outside memory: compiled templates, in a cache directory the caller chooses
and has checked (:func:`use_bytecode_cache`; ``cli.caches`` picks a private per-user one), so a
run does not compile the same templates again (~0.08 CPU-s a run otherwise). Jinja keys each
entry by the template's path and checks it against the checksum of the template's source: an
edited template is compiled again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.bccache
import markupsafe
import yaml

from analyser import documents
from analyser.adopting import Adoption
from analyser.bundles import FileProblem
from analyser.explaining import CiliumReasons, RuleReasons
from analyser.flows import Evidence
from analyser.fqdnselectors import FqdnSelector, valid_name, valid_pattern
from analyser.graphs import ADDRESS_ROLES, EdgeStats, NodeRole, UnvouchedPair, WorkloadGraph
from analyser.peers import Exposure, IpPeer, PodPeer
from analyser.periods import CaptureWindow, UncoveredCronJob, duration_text
from analyser.pictures import (
    GroupKind,
    Picture,
    PictureEdge,
    PictureGroup,
    PictureNode,
    drawing_ids,
)
from analyser.policies import (
    EGRESS,
    INGRESS,
    MANAGED_BY_LABEL,
    MAX_RULE_BYTES,
    DefaultDeny,
    LeftOut,
    Policy,
    Rule,
    SelectorWarning,
    SideLeftOut,
    rule_sort_key,
)
from analyser.policysets import RULES_LEFT_OUT_ANNOTATION
from analyser.reviewing import Review
from analyser.rings import RingLoss
from analyser.selectors import LabelSelector
from analyser.texts import inert, is_dns1123_label, is_dns1123_subdomain
from analyser.vantages import Coverage
from kernel.bundles import Window
from kernel.errors import RenderError

if TYPE_CHECKING:
    # Only --baseline cluster and the Cilium format render these: their modules are imported
    # where that happens, not by every analyse (issue 13).
    from analyser.baselines import Baseline, BaselineRule
    from analyser.cilium import CiliumPlan, CiliumPolicy, CiliumRule

ANNOTATION_PREFIX = "netpol-sniffer.io/"
# Kustomize's extension-less file name: `kubectl apply -k DIR` reads it, while `kubectl apply -f
# DIR` (and Argo CD, kubeconform, anything reading a folder of manifests) skips files without a
# .yaml, .yml or .json suffix, so it is never sent to the cluster as a resource.
KUSTOMIZATION = "Kustomization"


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
    # NodeLocal DNSCache addresses (peers.ClusterDns.node_local): cluster DNS, not the outside
    node_local_dns: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the output leaves out, and why
    # Workloads with a policy that are exposed outside the cluster (node id → how), and whether
    # their exposed ports were allowed from anywhere.
    exposures: Mapping[str, tuple[Exposure, ...]] = field(default_factory=dict)
    exposed_anywhere: bool = True
    foreign_flows: int = 0  # flows dropped from a pod's capture: that pod was neither end
    left_out: tuple[LeftOut, ...] = ()  # traffic with special addresses given no rule
    # Traffic with addresses whose rules did not fit in their policy, by policy side.
    rules_left_out: tuple[SideLeftOut, ...] = ()
    selector_warnings: tuple[SelectorWarning, ...] = ()  # selectors narrowed or too wide
    # Traffic a side's own captures did not vouch for: no rule on that side (graphs).
    unvouched: tuple[UnvouchedPair, ...] = ()
    # Per captured pod, the vantage points (its own capture, its node's) that covered it.
    coverage: tuple[Coverage, ...] = ()
    # Capture rings that wrapped (or likely did): what each still covers and what it lost.
    rings: tuple[RingLoss, ...] = ()
    # Several bundles analysed together: each one's window, oldest first (none for one bundle).
    windows: tuple[CaptureWindow, ...] = ()
    # CronJobs whose runs the capture windows may all have missed.
    uncovered_cronjobs: tuple[UncoveredCronJob, ...] = ()
    # The policies against the cluster's current ones (the snapshot's).
    adoption: Adoption = field(default_factory=Adoption)


# -- filters: every scalar leaves a template through one of these -------------------------------
# Each starts from texts.inert: no character that is not printable survives (line and paragraph
# separators, NEL, controls, bidi and zero-width characters); each format then escapes its own.


def yaml_quoted(value: object) -> str:
    """A YAML double-quoted scalar for ``str(value)``: never a bool, number or null by accident,
    and safe whatever characters it holds (every character that is not printable as a YAML
    escape, which parses back to that character)."""
    text = str(value)
    if text.isprintable() and '"' not in text and "\\" not in text:  # the common case, in C
        return f'"{text}"'
    escaped = ('\\"' if char == '"' else "\\\\" if char == "\\" else inert(char) for char in text)
    return f'"{"".join(escaped)}"'


def one_line(value: object) -> str:
    """Text for a YAML comment or a Markdown line: printable, so no line break of any kind."""
    return inert(value).strip()


def dot_quoted(value: object) -> str:
    """A DOT double-quoted string of ``value``, or of the lines of a list or tuple joined by
    Graphviz's ``\\n``. Backslashes are doubled so Graphviz's label escapes (``\\N``, ``\\l``)
    cannot be triggered by data, and a line break in the data shows as ``\\n``."""
    lines = value if isinstance(value, list | tuple) else (value,)
    text = "\\n".join(one_line(line).replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return f'"{text}"'


# Markdown's inline specials (code, emphasis, strike-through, links and images, table cells) are
# backslash-escaped, HTML's become entities: no markup, tag or entity passes through. An
# underscore inside a word (not_ip) cannot emphasise anything and is left as it is.
_MARKDOWN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"} | {c: "\\" + c for c in "\\`*_~[]|"}
_MARKDOWN_SPECIALS = re.compile(r"[&<>\\`*~\[\]|]|(?<![^\W_])_|_(?![^\W_])")


def markdown_cell(value: object) -> str:
    """Text safe in a Markdown table cell or line: shown as it is, never as markup."""
    return _MARKDOWN_SPECIALS.sub(lambda match: _MARKDOWN_ESCAPES[match[0]], one_line(value))


def dot_html(value: object) -> str:
    """Text inside a Graphviz HTML-like label (``label=<...>``): one printable line, its
    markup characters as entities, so no tag, entity or end of the label comes from data."""
    return str(markupsafe.escape(one_line(value)))


def nest(text: str, width: int) -> str:
    """A macro's lines placed under a parent: lines after the first indented by ``width``, the
    trailing line break dropped (the template supplies its own)."""
    first, *rest = text.rstrip().split("\n")
    return "\n".join([first, *(" " * width + line if line else line for line in rest)])


TEMPLATES = Path(__file__).parent / "templates"


def _environment(templates: Path = TEMPLATES) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
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
        dot_html=dot_html,
        html=markupsafe.escape,
        duration=duration_text,
    )
    return env


_ENV = _environment()


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's own cache of compiled templates in a directory, whose failures cost only the
    cache: an entry that cannot be read is compiled again, and one that cannot be written (a full
    disk, a directory gone or read-only) is not kept, where Jinja's would raise in the middle of
    a render. Its file names carry what the compiled code depends on besides the source (see
    :func:`_compiled_by`)."""

    def __init__(self, directory: Path, env: jinja2.Environment) -> None:
        super().__init__(str(directory), f"__netpol_sniffer_{_compiled_by(env)}_%s.cache")

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # unreadable, or not an entry (pickle's errors are of many kinds)
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _compiled_by(env: jinja2.Environment) -> str:
    """What a compiled template depends on besides its source and Python's version (Jinja checks
    both): Jinja's version and the environment's syntax and compiler settings. Jinja keys its
    entries by the template's path only, so without this an upgraded Jinja or a changed setting
    would run code compiled before."""
    settings = (
        jinja2.__version__,
        env.block_start_string,
        env.block_end_string,
        env.variable_start_string,
        env.variable_end_string,
        env.comment_start_string,
        env.comment_end_string,
        env.line_statement_prefix,
        env.line_comment_prefix,
        env.trim_blocks,
        env.lstrip_blocks,
        env.newline_sequence,
        env.keep_trailing_newline,
        env.optimized,
        env.autoescape,
        env.is_async,
        sorted(env.extensions),
    )
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:16]


def use_bytecode_cache(directory: Path | None) -> None:
    """Keep compiled templates in ``directory`` from now on, or (None) compile them in memory on
    every run. Jinja runs the code it finds there: the directory must be one only this user can
    write to (``cli.caches.template_cache`` checks). Output is the same either way."""
    _ENV.bytecode_cache = None if directory is None else _BytecodeCache(directory, _ENV)


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
    reasons: tuple[str, ...] = ()  # why the rule exists (``explaining``), for the comment


def _cidr(cidr: str, policy: Policy) -> str:
    try:
        return str(ipaddress.ip_network(cidr, strict=True))
    except ValueError as error:
        raise RenderError(
            f"policy {policy.namespace}/{policy.name}: bad ipBlock {cidr!r}: {error}"
        ) from error


def _rule_views(
    rules: Iterable[Rule], policy: Policy, reasons: Mapping[Rule, tuple[str, ...]] | None = None
) -> tuple[_RuleView, ...]:
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
        views.append(_RuleView(peer_view, ports, (reasons or {}).get(rule, ())))
    return tuple(views)


def _check_names(namespace: str, name: str) -> None:
    if not is_dns1123_label(namespace):
        raise RenderError(f"{namespace!r} is not a valid namespace name")
    if not is_dns1123_subdomain(name):
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


@dataclass(frozen=True, slots=True)
class _PolicyView:
    """What the NetworkPolicy template gets besides the policy itself."""

    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    ingress: tuple[_RuleView, ...]
    egress: tuple[_RuleView, ...]


def _policy_view(
    policy: Policy, provenance: Provenance, reasons: RuleReasons | None = None
) -> _PolicyView:
    _check_names(policy.namespace, policy.name)
    found = reasons or {}
    ingress = _rule_views(
        policy.ingress, policy, {rule: lines for (d, rule), lines in found.items() if d == INGRESS}
    )
    egress = _rule_views(
        policy.egress, policy, {rule: lines for (d, rule), lines in found.items() if d == EGRESS}
    )
    dns_names = {
        rule.peer.cidr: list(rule.peer.names)
        for rule in (*ingress, *egress)
        if rule.peer.cidr is not None and rule.peer.names
    }
    extra = {"workload": policy.workload}
    if dns_names:
        extra["dns_names"] = json.dumps(dns_names, sort_keys=True, separators=(",", ":"))
    annotations = _annotations(provenance, **extra)
    left_out = Counter(item.direction for item in policy.rules_left_out)
    if left_out:  # so that verify can tell which of its denials these may be
        counts = json.dumps(dict(sorted(left_out.items())), separators=(",", ":"))
        annotations = tuple(sorted((*annotations, (RULES_LEFT_OUT_ANNOTATION, counts))))
    return _PolicyView(_labels(policy.labels), annotations, ingress, egress)


# -- the objects the YAML must parse to ----------------------------------------------------------
# Built from the model in Python, not through the templates: a rendered file that parses to
# anything else (a rule a comment let in, a field a filter rewrote) is refused, never written.

_API_VERSION = "networking.k8s.io/v1"
_POLICY_TYPES = ["Ingress", "Egress"]
_NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
BASELINE_API_VERSION = "policy.networking.k8s.io/v1beta1"


def _metadata_object(
    name: str,
    namespace: str | None,
    labels: tuple[tuple[str, str], ...],
    annotations: tuple[tuple[str, str], ...],
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:  # None: a cluster-scoped object
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


def _selector_object(selector: LabelSelector) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if selector.match_labels:
        document["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        document["matchExpressions"] = [
            {"key": req.key, "operator": req.operator}
            | ({"values": list(req.values)} if req.values else {})
            for req in selector.match_expressions
        ]
    return document


def _peer_object(peer: _PeerView) -> dict[str, Any]:
    if peer.pod_selector is None:
        block: dict[str, Any] = {"cidr": peer.cidr}
        if peer.excluded:
            block["except"] = list(peer.excluded)
        return {"ipBlock": block}
    pods = {"podSelector": _selector_object(peer.pod_selector)}
    if peer.namespace is None:
        return pods
    return {"namespaceSelector": {"matchLabels": {_NAMESPACE_NAME_LABEL: peer.namespace}}} | pods


def _rule_object(rule: _RuleView, peer_key: str) -> dict[str, Any]:
    document: dict[str, Any] = {peer_key: [_peer_object(rule.peer)]}
    if rule.ports:
        document["ports"] = [{"protocol": p.protocol, "port": p.port} for p in rule.ports]
    return document


def _policy_document(policy: Policy, view: _PolicyView) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "podSelector": _selector_object(policy.pod_selector),
        "policyTypes": list(_POLICY_TYPES),
    }
    if view.ingress:
        spec["ingress"] = [_rule_object(rule, "from") for rule in view.ingress]
    if view.egress:
        spec["egress"] = [_rule_object(rule, "to") for rule in view.egress]
    return {
        "apiVersion": _API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": _metadata_object(policy.name, policy.namespace, view.labels, view.annotations),
        "spec": spec,
    }


def policy_object(policy: Policy, *, provenance: Provenance) -> dict[str, Any]:
    """The NetworkPolicy object :func:`render_policy`'s YAML parses to."""
    return _policy_document(policy, _policy_view(policy, provenance))


def default_deny_object(deny: DefaultDeny, *, provenance: Provenance) -> dict[str, Any]:
    """The NetworkPolicy object :func:`render_default_deny`'s YAML parses to."""
    metadata = _metadata_object(deny.name, deny.namespace, _labels(()), _annotations(provenance))
    return {
        "apiVersion": _API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {"podSelector": {}, "policyTypes": list(_POLICY_TYPES)},
    }


def _baseline_rule_object(rule: BaselineRule, peer_key: str) -> dict[str, Any]:
    from analyser.baselines import NamespacesPeer, NetworksPeer

    peers: list[dict[str, Any]] = []
    for peer in rule.peers:
        if isinstance(peer, NetworksPeer):
            peers.append({"networks": list(peer.cidrs)})
        elif isinstance(peer, NamespacesPeer):
            peers.append({"namespaces": _selector_object(peer.selector)})
        else:
            pods = {
                "namespaceSelector": {"matchLabels": {_NAMESPACE_NAME_LABEL: peer.namespace}},
                "podSelector": _selector_object(peer.pod_selector),
            }
            peers.append({"pods": pods})
    document: dict[str, Any] = {"name": rule.name, "action": str(rule.action), peer_key: peers}
    if rule.protocols:
        document["protocols"] = [
            {
                ports.protocol: {
                    "destinationPort": {"number": ports.first}
                    if ports.first == ports.last
                    else {"range": {"start": ports.first, "end": ports.last}}
                }
            }
            for ports in rule.protocols
        ]
    return document


def baseline_object(baseline: Baseline, *, provenance: Provenance) -> dict[str, Any]:
    """The ClusterNetworkPolicy :func:`render_baseline`'s YAML parses to."""
    from analyser.baselines import egress_rules, ingress_rules, subject

    metadata = _metadata_object(baseline.name, None, _labels(()), _annotations(provenance))
    return {
        "apiVersion": BASELINE_API_VERSION,
        "kind": "ClusterNetworkPolicy",
        "metadata": metadata,
        "spec": {
            "tier": "Baseline",
            "priority": baseline.priority,
            "subject": {"namespaces": _selector_object(subject(baseline))},
            "ingress": [_baseline_rule_object(r, "from") for r in ingress_rules(baseline)],
            "egress": [_baseline_rule_object(r, "to") for r in egress_rules(baseline)],
        },
    }


def kustomization_object(resources: Iterable[str]) -> dict[str, Any]:
    """The Kustomization :func:`render_kustomization`'s YAML parses to."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(resources),
    }


_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def _difference(actual: object, expected: object) -> list[object] | None:
    """The keys and indices (innermost first) down to where ``actual`` first differs from
    ``expected``, or None. Paths are built only for a difference: this runs on every file."""
    if type(actual) is not type(expected):
        return []
    if isinstance(actual, dict) and isinstance(expected, dict):
        if actual.keys() != expected.keys():
            return [min(actual.keys() ^ expected.keys(), key=repr)]
        for key, value in expected.items():
            found = _difference(actual[key], value)
            if found is not None:
                return [*found, key]
        return None
    if isinstance(actual, list) and isinstance(expected, list):
        for index, (item, wanted) in enumerate(zip(actual, expected, strict=False)):
            found = _difference(item, wanted)
            if found is not None:
                return [*found, index]
        return None if len(actual) == len(expected) else [min(len(actual), len(expected))]
    return None if actual == expected else []


def first_difference(actual: object, expected: object) -> str | None:
    """Where ``actual`` (parsed YAML) first differs from ``expected``: a path such as
    ``spec.egress[3]`` or ``metadata.labels['app.kubernetes.io/name']`` ("" for the whole),
    None when they are equal, types included (``"80"`` is not ``80``, ``true`` not ``1``)."""
    found = _difference(actual, expected)
    if found is None:
        return None
    path = ""
    for step in reversed(found):
        if isinstance(step, int):
            path += f"[{step}]"
        elif isinstance(step, str) and _FIELD_NAME.fullmatch(step):
            path += f".{step}" if path else step
        else:
            path += f"[{step!r}]"
    return path


def _parse_back(text: str, what: str, expected: dict[str, Any]) -> None:
    """``text`` must parse to exactly one document, ``expected``; else RenderError naming
    ``what`` (the file) and where they differ."""
    try:
        parsed = [
            doc
            for doc in yaml.load_all(text, Loader=documents.RENDERED_TEXT_LOADER)
            if doc is not None
        ]
    except yaml.YAMLError as error:
        raise RenderError(f"rendered {what} is not valid YAML: {error}") from error
    if len(parsed) != 1:
        raise RenderError(
            f"rendered {what} differs from the policy model: {len(parsed)} YAML documents, not 1"
        )
    difference = first_difference(parsed[0], expected)
    if difference is not None:
        raise RenderError(
            f"rendered {what} differs from the policy model at {difference or 'the top level'}"
        )


def render_policy(
    policy: Policy, *, provenance: Provenance, reasons: RuleReasons | None = None
) -> str:
    """One NetworkPolicy document for one workload; ``reasons`` (``explaining.explain``) are
    written as comments above their rules."""
    view = _policy_view(policy, provenance, reasons)
    text = _render(
        "networkpolicy.yaml.j2",
        policy=policy,
        labels=view.labels,
        annotations=view.annotations,
        ingress=view.ingress,
        egress=view.egress,
    )
    _parse_back(text, policy_path(policy.namespace, policy.name), _policy_document(policy, view))
    return text


def render_default_deny(deny: DefaultDeny, *, provenance: Provenance) -> str:
    """A policy selecting every pod of a namespace and allowing nothing in either direction."""
    return _render_default_deny(
        "default-deny.yaml.j2", deny, provenance, default_deny_object(deny, provenance=provenance)
    )


def _render_default_deny(
    template: str, deny: DefaultDeny, provenance: Provenance, expected: dict[str, Any]
) -> str:
    """A default-deny of either format from its template, read back against ``expected``."""
    _check_names(deny.namespace, deny.name)
    text = _render(
        template,
        deny=deny,
        labels=_labels(()),
        annotations=_annotations(provenance),
    )
    _parse_back(text, policy_path(deny.namespace, deny.name), expected)
    return text


# -- CiliumNetworkPolicy (analyse --format cilium) ------------------------------------------------

_CILIUM_API_VERSION = "cilium.io/v2"
_CILIUM_KIND = "CiliumNetworkPolicy"


def _cilium_names_object(names: Iterable[FqdnSelector]) -> list[dict[str, str]]:
    return [{"matchPattern" if n.pattern else "matchName": n.text} for n in names]


def _cilium_rule_object(rule: CiliumRule, prefix: str, policy: Policy) -> dict[str, Any]:
    document: dict[str, Any]
    if rule.endpoints is not None:
        document = {f"{prefix}Endpoints": [_selector_object(rule.endpoints)]}
    elif rule.entities:
        document = {f"{prefix}Entities": list(rule.entities)}
    elif rule.fqdns:
        document = {"toFQDNs": _cilium_names_object(rule.fqdns)}
    else:
        blocks = []
        for block in rule.cidrs:
            entry: dict[str, Any] = {"cidr": _cidr(block.cidr, policy)}
            if block.excluded:
                entry["except"] = [_cidr(hole, policy) for hole in block.excluded]
            blocks.append(entry)
        document = {f"{prefix}CIDRSet": blocks}
    ports: dict[str, Any] = {
        "ports": [{"port": str(p.port), "protocol": str(p.protocol)} for p in rule.ports]
    }
    if rule.dns:
        ports["rules"] = {"dns": _cilium_names_object(rule.dns)}
    document["toPorts"] = [ports]
    return document


def _cilium_document(cilium: CiliumPolicy, view: _PolicyView) -> dict[str, Any]:
    policy = cilium.policy
    spec: dict[str, Any] = {
        "endpointSelector": _selector_object(policy.pod_selector),
        "ingress": [_cilium_rule_object(r, "from", policy) for r in cilium.ingress] or [{}],
        "egress": [_cilium_rule_object(r, "to", policy) for r in cilium.egress] or [{}],
    }
    return {
        "apiVersion": _CILIUM_API_VERSION,
        "kind": _CILIUM_KIND,
        "metadata": _metadata_object(policy.name, policy.namespace, view.labels, view.annotations),
        "spec": spec,
    }


def cilium_policy_object(cilium: CiliumPolicy, *, provenance: Provenance) -> dict[str, Any]:
    """The CiliumNetworkPolicy object :func:`render_cilium_policy`'s YAML parses to."""
    return _cilium_document(cilium, _policy_view(cilium.policy, provenance))


def cilium_default_deny_object(deny: DefaultDeny, *, provenance: Provenance) -> dict[str, Any]:
    """The CiliumNetworkPolicy object :func:`render_cilium_default_deny`'s YAML parses to."""
    metadata = _metadata_object(deny.name, deny.namespace, _labels(()), _annotations(provenance))
    return {
        "apiVersion": _CILIUM_API_VERSION,
        "kind": _CILIUM_KIND,
        "metadata": metadata,
        "spec": {"endpointSelector": {}, "ingress": [{}], "egress": [{}]},
    }


def _check_cilium(cilium: CiliumPolicy) -> None:
    """Names a CiliumNetworkPolicy may hold (``toFQDNs`` and DNS rules: the CRD's pattern)."""
    policy = cilium.policy
    for rule in (*cilium.ingress, *cilium.egress):
        for name in (*rule.fqdns, *rule.dns):
            valid = valid_pattern(name.text) if name.pattern else valid_name(name.text)
            if not valid:
                raise RenderError(
                    f"policy {policy.namespace}/{policy.name}: {name.text!r} is no DNS name"
                )


def render_cilium_policy(
    cilium: CiliumPolicy, *, provenance: Provenance, reasons: CiliumReasons | None = None
) -> str:
    """One CiliumNetworkPolicy document for one workload; ``reasons``
    (``explaining.explain_cilium``) are written as comments above their rules."""
    policy = cilium.policy
    view = _policy_view(policy, provenance)
    _check_cilium(cilium)
    found = reasons or {}
    text = _render(
        "ciliumnetworkpolicy.yaml.j2",
        policy=cilium,
        labels=view.labels,
        annotations=view.annotations,
        ingress=[(rule, found.get((INGRESS, rule), ())) for rule in cilium.ingress],
        egress=[(rule, found.get((EGRESS, rule), ())) for rule in cilium.egress],
    )
    _parse_back(text, policy_path(policy.namespace, policy.name), _cilium_document(cilium, view))
    return text


def render_cilium_default_deny(deny: DefaultDeny, *, provenance: Provenance) -> str:
    """A CiliumNetworkPolicy selecting every pod of a namespace and allowing nothing."""
    return _render_default_deny(
        "cilium-default-deny.yaml.j2",
        deny,
        provenance,
        cilium_default_deny_object(deny, provenance=provenance),
    )


def render_baseline(baseline: Baseline, *, provenance: Provenance) -> str:
    """The cluster baseline: one Baseline-tier ClusterNetworkPolicy (``analyser.baselines``)."""
    from analyser.baselines import egress_rules, ingress_rules, subject

    if not is_dns1123_subdomain(baseline.name):
        raise RenderError(f"{baseline.name!r} is not a valid ClusterNetworkPolicy name")
    for namespace in (*baseline.exempt_namespaces, *(peer.namespace for peer in baseline.dns)):
        if namespace is None or not is_dns1123_label(namespace):
            raise RenderError(f"{namespace!r} is not a valid namespace name")
    text = _render(
        "clusternetworkpolicy.yaml.j2",
        baseline=baseline,
        subject=subject(baseline),
        ingress=ingress_rules(baseline),
        egress=egress_rules(baseline),
        labels=_labels(()),
        annotations=_annotations(provenance),
    )
    _parse_back(text, baseline_path(baseline), baseline_object(baseline, provenance=provenance))
    return text


def baseline_path(baseline: Baseline) -> str:
    """``ClusterNetworkPolicy.NAME.yaml``, at the top beside the policies: no namespace is
    called so (a namespace name has no capitals), so it never meets a policy's file."""
    return f"ClusterNetworkPolicy.{baseline.name}.yaml"


def render_kustomization(resources: Iterable[str]) -> str:
    listed = sorted(resources)
    text = _render("kustomization.yaml.j2", resources=listed)
    _parse_back(text, KUSTOMIZATION, kustomization_object(listed))
    return text


def policy_path(namespace: str, name: str) -> str:
    """Where a policy goes, relative to the output directory: ``NAMESPACE.NAME.yaml`` at the top,
    so ``kubectl apply -f DIR`` applies every policy without ``-R`` (a namespace is a DNS label,
    without dots: the first dot ends it)."""
    return f"{namespace}.{name}.yaml"


def _baseline_files(baseline: Baseline | None, provenance: Provenance) -> dict[str, str]:
    if baseline is None:
        return {}
    return {baseline_path(baseline): render_baseline(baseline, provenance=provenance)}


def _policy_set_files(
    documents: Iterable[tuple[str, str, str]],
    folder: str = "",
    others: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """(namespace, name, text) of every policy, and ``others`` (path → text: the baseline) → the
    files plus the ``Kustomization`` that lists them, in ``folder`` (a path prefix ending in "/",
    or "" for the top), sorted."""
    files: dict[str, str] = dict(others or {})
    for namespace, name, text in documents:
        path = policy_path(namespace, name)
        if path in files:
            raise RenderError(f"two policies would both be written to {folder}{path}")
        files[path] = text
    files[KUSTOMIZATION] = render_kustomization(files)
    return {folder + path: text for path, text in sorted(files.items())}


def render_policy_files(
    policies: Iterable[Policy],
    *,
    default_denies: Iterable[DefaultDeny] = (),
    baseline: Baseline | None = None,
    provenance: Provenance,
    folder: str = "",
    reasons: Mapping[str, RuleReasons] | None = None,
) -> dict[str, str]:
    """Every policy file (and the ``baseline``'s, when there is one) plus the ``Kustomization``
    that lists them, keyed by path relative to the output directory (in ``folder``: "" or a
    prefix ending in "/"), sorted. ``reasons``: each policy's rule comments, by the policy's
    workload (``explaining.explain``)."""
    documents = [
        (deny.namespace, deny.name, render_default_deny(deny, provenance=provenance))
        for deny in default_denies
    ] + [
        (
            policy.namespace,
            policy.name,
            render_policy(
                policy, provenance=provenance, reasons=(reasons or {}).get(policy.workload)
            ),
        )
        for policy in policies
    ]
    return _policy_set_files(documents, folder, _baseline_files(baseline, provenance))


def render_cilium_files(
    plan: CiliumPlan,
    *,
    baseline: Baseline | None = None,
    provenance: Provenance,
    folder: str = "",
    reasons: Mapping[str, CiliumReasons] | None = None,
) -> dict[str, str]:
    """Every CiliumNetworkPolicy file of ``plan`` (and the ``baseline``'s, when there is one)
    plus their ``Kustomization``, keyed by path relative to the output directory (in
    ``folder``), sorted. ``reasons``: each policy's rule comments, by the policy's workload
    (``explaining.explain_cilium``)."""
    documents = [
        (deny.namespace, deny.name, render_cilium_default_deny(deny, provenance=provenance))
        for deny in plan.default_denies
    ] + [
        (
            item.policy.namespace,
            item.policy.name,
            render_cilium_policy(
                item, provenance=provenance, reasons=(reasons or {}).get(item.policy.workload)
            ),
        )
        for item in plan.policies
    ]
    return _policy_set_files(documents, folder, _baseline_files(baseline, provenance))


# -- graph and report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NodeView:
    node_id: str
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


# Rows of report.md's "Flows per edge" for one workload's traffic with single addresses: at most
# MAX_ADDRESS_ROWS on one port and MAX_SIDE_ROWS in one direction; and lines of its lists of
# outside and unresolved addresses. A public ingress meets a hundred thousand clients a day, and
# a capture can name any number of addresses on any number of ports. The rest are counted in
# one more row per port (and one per direction, past that), with their flows.
MAX_ADDRESS_ROWS = 50
MAX_SIDE_ROWS = 1_000
MAX_ADDRESS_LINES = 10_000


@dataclass(frozen=True, slots=True)
class _RowView:
    """One row of report.md's "Flows per edge": ``server`` (or ``client``) a label, or, for the
    addresses past the bounds, how many more; ``port`` its stats, ``ports`` their text."""

    client: str
    server: str
    port: _PortStatsView
    ports: str


class _Folded:
    """Address rows past the bounds, counted together: how many addresses, on which ports."""

    __slots__ = ("addresses", "ports", "stats")

    def __init__(self, stats: EdgeStats) -> None:
        self.addresses: set[str] = set()
        self.ports: set[tuple[str, int]] = set()
        self.stats = stats

    def add(self, address: str, port: _PortStatsView) -> None:
        if self.ports:
            self.stats = self.stats.merged(port.stats)
        self.addresses.add(address)
        self.ports.add((port.protocol, port.port))


def _edge_rows(edges: Iterable[_EdgeView]) -> list[_RowView]:
    """The rows of report.md's "Flows per edge", in the edges' order: per workload, direction and
    port, the first :data:`MAX_ADDRESS_ROWS` addresses, and per workload and direction the first
    :data:`MAX_SIDE_ROWS`; then one row for the others of each port, and one for the others of
    each direction past that."""
    rows: list[_RowView] = []
    on_port: Counter[tuple[str, str, str, int]] = Counter()
    on_side: Counter[tuple[str, str]] = Counter()
    folded: dict[tuple[str, str, str, int] | tuple[str, str], _Folded] = {}
    for edge in edges:
        client, server = edge.client, edge.server
        for port in edge.ports:
            text = f"{port.protocol}/{port.port}"
            if server.role in ADDRESS_ROLES and client.role not in ADDRESS_ROLES:
                side, address = (client.label, "to"), server.label
            elif client.role in ADDRESS_ROLES and server.role not in ADDRESS_ROLES:
                side, address = (server.label, "from"), client.label
            else:
                rows.append(_RowView(client.label, server.label, port, text))
                continue
            on = (*side, port.protocol, port.port)
            if on_side[side] < MAX_SIDE_ROWS and on_port[on] < MAX_ADDRESS_ROWS:
                on_port[on] += 1
                on_side[side] += 1
                rows.append(_RowView(client.label, server.label, port, text))
                continue
            key = side if on_side[side] >= MAX_SIDE_ROWS else on
            folded.setdefault(key, _Folded(port.stats)).add(address, port)
    for key, rest in folded.items():
        workload, way = key[0], key[1]
        others = f"{len(rest.addresses):,} more addresses"
        ends = (workload, others) if way == "to" else (others, workload)
        protocol, number = min(rest.ports)
        evidence = tuple(sorted(str(e) for e in rest.stats.evidence))
        ports = f"{protocol}/{number}" if len(rest.ports) == 1 else f"{len(rest.ports):,} ports"
        view = _PortStatsView(protocol, number, rest.stats, evidence)
        rows.append(_RowView(*ends, view, ports))
    return rows


def _graph_views(graph: WorkloadGraph) -> tuple[tuple[_NodeView, ...], tuple[_EdgeView, ...]]:
    """The graph as plain records for the templates, in its order (nodes by id, edges by ends)."""
    nodes: dict[str, _NodeView] = {}
    for node in graph.nodes:
        nodes[node.id] = _NodeView(
            node_id=node.id,
            role=str(node.role),
            label=node.label,
            names=tuple(sorted(node.names)),
            in_scope=node.in_scope,
        )
    edges = []
    for edge in graph.edges:
        ports = tuple(
            _PortStatsView(
                str(spec.protocol), spec.port, stats, tuple(sorted(str(e) for e in stats.evidence))
            )
            for spec, stats in sorted(edge.ports.items())
        )
        edges.append(_EdgeView(nodes[edge.client], nodes[edge.server], ports))
    return tuple(nodes.values()), tuple(edges)


# Per workload, the newly allowed pairs listed in report.md; the rest counted.
MAX_REPORTED_CHANGES = 20


@dataclass(frozen=True, slots=True)
class _AdoptionView:
    """One workload's row of report.md's comparison with the current policies."""

    workload: str
    combined: tuple[str, ...]
    gained: int  # pairs (with it at either end) gaining ports
    lost: int
    allowed: tuple[str, ...]  # "CLIENT → SERVER: PORTS" newly allowed, the first ones
    more: int  # newly allowed pairs not listed


def _adoption_views(adoption: Adoption, workloads: Iterable[str]) -> list[_AdoptionView]:
    """Per workload with a policy: what it combines with, the changes with it at either end
    counted, the newly allowed ones listed (newly denied is what applying is for); none when
    there is no change (or none was computed: the adoption's notes say why)."""
    if not adoption.changes:
        return []
    views = []
    for workload, changes in adoption.by_workload(workloads).items():
        lines = [f"{c.client} → {c.server}: {c.newly_allowed}" for c in changes.gained]
        views.append(
            _AdoptionView(
                workload,
                adoption.combined.get(workload, ()),
                len(lines),
                changes.lost,
                tuple(lines[:MAX_REPORTED_CHANGES]),
                max(0, len(lines) - MAX_REPORTED_CHANGES),
            )
        )
    return views


def render_report(facts: ReportFacts, graph: WorkloadGraph) -> str:
    """The Markdown report: workloads, flows per edge, external names, unresolved addresses,
    damaged files and how each flow's direction was decided."""
    nodes, edges = _graph_views(graph)
    rows = _edge_rows(edges)
    evidence = [(str(e), facts.evidence_counts.get(e, 0)) for e in Evidence]
    return _render(
        "report.md.j2",
        facts=facts,
        nodes=nodes,
        rows=rows,
        folded=len(rows) < sum(len(edge.ports) for edge in edges),
        max_address_lines=MAX_ADDRESS_LINES,
        rows_per_port=MAX_ADDRESS_ROWS,
        rows_per_side=MAX_SIDE_ROWS,
        evidence=evidence,
        attempts=graph.attempts,
        attempts_left_out=graph.attempts_left_out,
        flows_left_out=graph.flows_left_out,
        rule_kib=MAX_RULE_BYTES // 1024,
        loopback=graph.loopback,
        adoption=_adoption_views(facts.adoption, facts.workload_policies),
    )


# -- the picture: graph.dot ------------------------------------------------------------------------
# Drawn from analyser.pictures (namespaces as boxes, infrastructure apart and faint, outside
# addresses gathered, a legend); report.html draws the same picture in the browser.

# The colours of a node by its role (the legend uses them too).
_FILLS = {
    NodeRole.WORKLOAD: "#e8f0fe",
    NodeRole.NODE: "#f1f3f4",
    NodeRole.EXTERNAL: "#fef7e0",
    NodeRole.UNRESOLVED: "#fce8e6",
}
_SHAPES = {
    NodeRole.WORKLOAD: "box",
    NodeRole.NODE: "hexagon",
    NodeRole.EXTERNAL: "ellipse",
    NodeRole.UNRESOLVED: "octagon",
}


@dataclass(frozen=True, slots=True)
class _DotNode:
    dot_id: str
    node: PictureNode
    shape: str
    style: str
    fill: str
    tooltip: tuple[str, ...]  # the graph nodes it stands for (their ids: NS/Kind/name, ip:...)


@dataclass(frozen=True, slots=True)
class _DotGroup:
    dot_id: str
    group: PictureGroup
    style: str
    color: str
    nodes: tuple[_DotNode, ...]


@dataclass(frozen=True, slots=True)
class _DotEdge:
    dot_id: str
    tail: str
    head: str
    ltail: str | None  # the cluster an edge from a whole group starts at
    lhead: str | None  # the cluster an edge to a whole group ends at
    edge: PictureEdge
    tooltip: tuple[str, ...]


# A tooltip lists this many graph nodes or edges, then how many more.
_TOOLTIP_LINES = 12


def _tooltip(lines: list[str]) -> tuple[str, ...]:
    if len(lines) <= _TOOLTIP_LINES:
        return tuple(lines)
    return (*lines[: _TOOLTIP_LINES - 1], f"... and {len(lines) - _TOOLTIP_LINES + 1} more")


def _dot_node(dot_id: str, node: PictureNode, summary: bool) -> _DotNode:
    if summary:
        shape, style = (
            "box",
            "rounded,filled" if node.role is NodeRole.WORKLOAD else "rounded,dashed",
        )
    else:
        shape = _SHAPES[node.role]
        dashed = node.role is NodeRole.WORKLOAD and not node.in_scope
        style = ("rounded," if shape == "box" else "") + ("dashed" if dashed else "filled")
    tooltip = [node.title] if summary else list(node.members)
    return _DotNode(dot_id, node, shape, style, _FILLS[node.role], _tooltip(tooltip))


def render_dot(picture: Picture, prefix: str = "") -> str:
    """Graphviz DOT for a picture of the workload graph (``pictures.picture_of``, or
    ``pictures.namespace_picture``), with a legend; shapes carry ``pictures.drawing_ids`` (with
    ``prefix``)."""
    ids = drawing_ids(picture, prefix)
    dot_ids = dict(ids.nodes)
    members: dict[str, list[_DotNode]] = {group.id: [] for group in picture.groups}
    loose: list[_DotNode] = []
    for node in picture.nodes:
        item = _dot_node(dot_ids[node.id], node, picture.summary)
        (loose if picture.summary else members[node.group]).append(item)
    clusters = ids.groups
    drawn = {member: node for node in picture.nodes for member in node.members}
    groups = tuple(
        _DotGroup(
            clusters[group.id],
            group,
            "rounded" if group.kind is GroupKind.NAMESPACE else "rounded,dashed",
            "#5f6368" if group.kind is GroupKind.NAMESPACE else "#9aa0a6",
            tuple(members[group.id]),
        )
        for group in picture.groups
        if members[group.id]
    )
    edges = []
    for edge, edge_id in zip(picture.edges, ids.edges, strict=True):
        # An edge to a whole group (picture_of's gathered infrastructure edges) is drawn to its
        # box: from or to the group's first member in the edge, clipped at the box.
        anchors = {
            group: next(
                dot_ids[drawn[end].id]
                for member in edge.members
                for end in member
                if end in drawn and drawn[end].group == group
            )
            for group in (edge.client, edge.server)
            if group not in dot_ids
        }
        edges.append(
            _DotEdge(
                edge_id,
                anchors.get(edge.client, dot_ids.get(edge.client, "")),
                anchors.get(edge.server, dot_ids.get(edge.server, "")),
                clusters[edge.client] if edge.client in anchors else None,
                clusters[edge.server] if edge.server in anchors else None,
                edge,
                _tooltip([f"{client} → {server}" for client, server in edge.members]),
            )
        )
    return _render(
        "graph.dot.j2",
        picture=picture,
        groups=groups,
        loose=tuple(loose),
        edges=tuple(edges),
        fills={str(role): fill for role, fill in _FILLS.items()},
    )


# -- report.html --------------------------------------------------------------------------------
# One self-contained page: its data as JSON in a script element the page's script reads, its
# script and the vendored svg-pan-zoom (npm, BSD-2-Clause: templates/vendor/) inline, a Content
# Security Policy that runs only those two scripts (by hash) and fetches nothing.

_PAGE_ASSETS = Path(__file__).parent / "templates"
# What would end a script element or open an HTML comment in it, and the JavaScript line breaks.
_SCRIPT_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def script_json(value: object) -> str:
    """JSON to put inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` (so no
    ``</script>`` or ``<!--`` from data), JSON.parse reads it back unchanged."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda match: _SCRIPT_ESCAPES[match[0]], text)


def _csp_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def render_review(review: Review) -> str:
    """report.html: the picture to click, filter by namespace, each connection's flows and the
    rules that allow it, each workload's policy and what it allows that was never observed."""
    scripts = [
        (_PAGE_ASSETS / "vendor" / "svg-pan-zoom.min.js").read_text(encoding="utf-8"),
        (_PAGE_ASSETS / "report" / "review.js").read_text(encoding="utf-8"),
    ]
    for script in scripts:
        if re.search(r"</script|<!--", script, re.IGNORECASE):
            raise RenderError("a page script holds '</script' or '<!--': it would end early")
    return _render(
        "report.html.j2",
        review=review,
        data=script_json(review.as_json()),
        scripts=scripts,
        script_hashes=" ".join(_csp_hash(script) for script in scripts),
        style=(_PAGE_ASSETS / "report" / "review.css").read_text(encoding="utf-8"),
        licence=(_PAGE_ASSETS / "vendor" / "svg-pan-zoom.LICENSE").read_text(encoding="utf-8"),
    )
