"""Rendering hostile text: every filter keeps input inert in its format (YAML values and comments,
Markdown, DOT), and the parse-back comparison refuses any file that differs from the model."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml

from analyser import rendering
from analyser.bundles import FileProblem
from analyser.graphs import GraphNode, NodeRole, WorkloadGraph
from analyser.peers import IpPeer, PortSpec
from analyser.pictures import picture_of
from analyser.policies import DefaultDeny, Policy, Rule
from analyser.rendering import (
    default_deny_object,
    dot_html,
    dot_quoted,
    first_difference,
    kustomization_object,
    markdown_cell,
    one_line,
    policy_object,
    render_default_deny,
    render_dot,
    render_kustomization,
    render_policy,
    render_policy_files,
    render_report,
    yaml_quoted,
)
from analyser.texts import inert
from kernel.errors import RenderError
from tests.analyser.test_rendering import (
    PROVENANCE,
    TCP,
    cart_policy,
    example_graph,
    report_facts,
    selector,
    workload_node,
)
from tests.analyser.text_payloads import BREAK_OUTS, DANGEROUS
from tests.kubectl import kubectl

HOSTILE = {**DANGEROUS, **BREAK_OUTS}
# YAML has no way to write a lone surrogate (an undecodable byte of a file name) in a value.
IN_YAML_VALUES = {
    what: text for what, text in HOSTILE.items() if not re.search("[\ud800-\udfff]", text)
}
# What YAML (PyYAML, libyaml, go-yaml) reads as a line break; only "\n" may end a line we write.
YAML_BREAKS = {"\r", "\x85", "\u2028", "\u2029"}
LOADERS: list[type[yaml.SafeLoader] | type[yaml.CSafeLoader]] = [
    yaml.SafeLoader,
    *([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else []),
]


def hostile_policy(text: str) -> Policy:
    """A policy whose every input-derived text holds ``text``: the DNS name of an address it
    calls, a label value and its workload name."""
    return Policy(
        "shop",
        "a",
        f"shop/Deployment/{text}",
        selector(app="a"),
        egress=(
            Rule(IpPeer("198.51.100.1/32", (text, "ok.example.com")), (PortSpec(TCP, 443),)),
            Rule(IpPeer("198.51.100.2/32", ("api.example.com",)), (PortSpec(TCP, 443),)),
        ),
        labels=(("example.com/note", text),),
    )


def only_our_lines(text: str) -> None:
    """Every line of ``text`` is printable, and no character but "\\n" breaks a line."""
    assert not set(text) & YAML_BREAKS
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)


@pytest.mark.parametrize("text", IN_YAML_VALUES.values(), ids=IN_YAML_VALUES.keys())
@pytest.mark.parametrize("loader", LOADERS, ids=lambda loader: loader.__name__)
def test_a_hostile_name_in_a_policy_parses_to_exactly_the_model(text: str, loader: Any) -> None:
    policy = hostile_policy(text)
    rendered = render_policy(policy, provenance=PROVENANCE)
    only_our_lines(rendered)
    documents = [d for d in yaml.load_all(rendered, Loader=loader) if d is not None]
    assert documents == [policy_object(policy, provenance=PROVENANCE)]
    (document,) = documents
    assert len(document["spec"]["egress"]) == 2  # no rule was added
    # the values are the input's, unchanged; the comment shows it escaped
    assert document["metadata"]["labels"]["example.com/note"] == text
    assert document["metadata"]["annotations"]["netpol-sniffer.io/workload"].endswith(text)
    names = json.loads(document["metadata"]["annotations"]["netpol-sniffer.io/dns-names"])
    assert text in names["198.51.100.1/32"]
    assert f"# 198.51.100.1/32: {one_line(sorted([text, 'ok.example.com'])[0])}" in rendered


def test_the_line_separator_break_out_is_shown_escaped_in_the_comment() -> None:
    rendered = render_policy(
        hostile_policy("evil.example.com\u2028    - {}"), provenance=PROVENANCE
    )
    assert "    # 198.51.100.1/32: evil.example.com\\u2028    - {}, ok.example.com\n" in rendered


def test_a_value_yaml_cannot_hold_is_a_render_error_not_a_file() -> None:
    with pytest.raises(RenderError, match=r"rendered shop\.a\.yaml is not valid YAML"):
        render_policy(hostile_policy("bad-\udc9b"), provenance=PROVENANCE)


@pytest.mark.parametrize("text", IN_YAML_VALUES.values(), ids=IN_YAML_VALUES.keys())
def test_yaml_quoted_round_trips_and_writes_only_printable_text(text: str) -> None:
    quoted = yaml_quoted(text)
    assert quoted.isprintable()
    for loader in LOADERS:
        assert yaml.load(f"key: {quoted}", Loader=loader) == {"key": text}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_one_line_is_printable_and_shows_every_escape(text: str) -> None:
    shown = one_line(text)
    assert shown.isprintable()
    assert shown == inert(text).strip()


# Markdown: what a renderer (GitHub, GitLab, an editor's preview) would turn into markup.
_RAW_MARKUP = re.compile(r"[<>]|&(?!amp;|lt;|gt;)|(?<!\\)[\[\]`|*~]")


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_markdown_cells_hold_no_markup_html_or_line_break(text: str) -> None:
    cell = markdown_cell(text)
    assert cell.isprintable()
    assert not _RAW_MARKUP.search(cell.replace("\\\\", "")), cell


def test_markdown_escapes_html_as_entities_and_inline_specials_with_backslashes() -> None:
    assert markdown_cell("<b>a & b</b>") == "&lt;b&gt;a &amp; b&lt;/b&gt;"
    assert markdown_cell("[x](http://e/) `c` *e* _u_ ~~s~~ a|b") == (
        "\\[x\\](http://e/) \\`c\\` \\*e\\* \\_u\\_ \\~\\~s\\~\\~ a\\|b"
    )
    assert markdown_cell("not_ip") == "not_ip"  # inside a word an underscore emphasises nothing
    assert markdown_cell("\x1b[31m") == "\\\\x1b\\[31m"  # renders as \x1b[31m


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_dot_strings_hold_one_line_of_printable_text(text: str) -> None:
    quoted = dot_quoted([text, "second line"])
    assert quoted.isprintable()
    assert quoted.endswith('\\nsecond line"')
    # inside the quotes every quote is escaped: the string cannot end early
    assert not re.search(r'(?<!\\)(\\\\)*"', quoted[1:-1])


def hostile_graph(text: str) -> WorkloadGraph:
    """The example graph with ``text`` in a workload's name and label and in an outside
    address's label and names."""
    graph = example_graph()
    outside = GraphNode(
        "ip:198.51.100.1",
        NodeRole.EXTERNAL,
        f"198.51.100.1 {text}",
        names=tuple(sorted((text, "ok.example.com"))),
    )
    client = workload_node(f"shop/Deployment/{text}", f"shop/Deployment/{text}")
    like_cart = graph.edge("shop/Deployment/cart", "ip:203.0.113.7")
    return dataclasses.replace(
        graph,
        nodes=(*graph.nodes, outside, client),
        edges=(*graph.edges, dataclasses.replace(like_cart, client=client.id, server=outside.id)),
    )


def hostile_facts(text: str) -> rendering.ReportFacts:
    return dataclasses.replace(
        report_facts(),
        source=f"bundle-{text}",
        producer=text,
        file_problems=(FileProblem(f"captures/shop/{text}.pcap", f"damaged: {text}"),),
        workload_policies={"shop/Deployment/x": f"shop/{text}.yaml"},
        notes=(f"note {text}",),
    )


def unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line))


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_name_in_the_report_adds_no_line_cell_or_markup(text: str) -> None:
    clean = render_report(hostile_facts("x"), hostile_graph("x"))
    report = render_report(hostile_facts(text), hostile_graph(text))
    only_our_lines(report)
    assert "<" not in report and ">" not in report
    assert report.count("\n") == clean.count("\n")
    for line, clean_line in zip(report.split("\n"), clean.split("\n"), strict=True):
        assert unescaped_pipes(line) == unescaped_pipes(clean_line), line


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_dot_html_is_one_line_without_markup(text: str) -> None:
    escaped = dot_html(text)
    assert escaped.isprintable()
    assert not set(escaped) & set("<>\"'")
    assert re.fullmatch(r"([^&]|&(amp|lt|gt|#34|#39);)*", escaped)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
@pytest.mark.parametrize("text", BREAK_OUTS.values(), ids=BREAK_OUTS.keys())
def test_a_hostile_name_in_the_graph_is_shown_as_text(text: str) -> None:
    clean = render_dot(picture_of(hostile_graph("x")))
    dot = render_dot(picture_of(hostile_graph(text)))
    only_our_lines(dot)
    assert dot.count("\n") == clean.count("\n")  # no line, node or edge added
    result = subprocess.run(
        ["dot", "-Tjson"], input=dot, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    objects = {o["name"]: o for o in json.loads(result.stdout)["objects"]}
    assert len(objects) == len(json.loads(graphviz_json(clean))["objects"])
    labels = [o["label"] for o in objects.values()]
    small = '<BR/><FONT POINT-SIZE="8" COLOR="#5f6368">{}</FONT>'
    # the workload's name as its title, the outside address's label as its detail: escaped
    assert f"<B>{dot_html(text)}</B>" + small.format("Deployment") in labels
    assert any(
        label.endswith(small.format(dot_html(f"+1 name · 198.51.100.1 {text}"))) for label in labels
    )
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True)
    drawn = ElementTree.fromstring(svg.stdout)  # well-formed: nothing broke out of a text
    assert not [e.tag for e in drawn.iter() if e.tag.split("}")[-1] in ("script", "img")]
    texts = [e.text.replace("\xa0", " ") for e in drawn.iter() if e.text]  # Graphviz: nbsp
    assert inert(text) in texts


def graphviz_json(dot: str) -> str:
    return subprocess.run(
        ["dot", "-Tjson"], input=dot, capture_output=True, text=True, check=True
    ).stdout


# -- the parse-back comparison -------------------------------------------------------------------


def test_every_file_parses_to_the_object_the_model_gives() -> None:
    policy = cart_policy()
    assert yaml.safe_load(render_policy(policy, provenance=PROVENANCE)) == policy_object(
        policy, provenance=PROVENANCE
    )
    deny = DefaultDeny("shop")
    assert yaml.safe_load(render_default_deny(deny, provenance=PROVENANCE)) == (
        default_deny_object(deny, provenance=PROVENANCE)
    )
    resources = ["shop/b.yaml", "shop/a.yaml"]
    assert yaml.safe_load(render_kustomization(resources)) == kustomization_object(resources)


def test_a_filter_that_lets_a_line_separator_through_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the comment filter as it was before: U+2028 counted as printable
    monkeypatch.setitem(rendering._ENV.filters, "one_line", lambda value: str(value).strip())
    policy = Policy(
        "shop",
        "a",
        "shop/Deployment/a",
        selector(app="a"),
        egress=(Rule(IpPeer("198.51.100.1/32", ("evil.example.com\u2028    - {}",)), ()),),
    )
    leaked = rendering._render(
        "networkpolicy.yaml.j2",
        policy=policy,
        labels=(),
        annotations=(),
        ingress=(),
        egress=rendering._rule_views(policy.egress, policy),
    )
    # the break-out works on YAML parsers: an allow-all rule comes first
    assert yaml.safe_load(leaked)["spec"]["egress"][0] == {}
    with pytest.raises(
        RenderError, match=r"rendered shop\.a\.yaml differs from the policy model at spec\.egress"
    ):
        render_policy(policy, provenance=PROVENANCE)


def test_an_owner_kind_that_rewrites_metadata_through_a_leaky_filter_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(rendering._ENV.filters, "one_line", lambda value: str(value).strip())
    policy = dataclasses.replace(
        cart_policy(), workload="shop/Evil\u2029metadata: {name: other}/cart"
    )
    with pytest.raises(RenderError, match=r"rendered shop\.cart\.yaml (is not valid YAML|differs)"):
        render_policy(policy, provenance=PROVENANCE)


@pytest.mark.parametrize(
    ("template_mistake", "where"),
    [
        (("port: 443", "port: 444"), r"spec\.egress\[2\]\.ports\[0\]\.port"),
        (("port: 443", 'port: "443"'), r"spec\.egress\[2\]\.ports\[0\]\.port"),
        (("    - Egress\n", ""), r"spec\.policyTypes\[1\]"),
        (('"app": "cart"', '"app": "cart2"'), r"metadata\.labels\.app"),
        (("spec:\n", "spec:\n  extra: 1\n"), r"spec\.extra"),
    ],
)
def test_a_template_mistake_is_a_render_error_naming_the_file_and_the_field(
    monkeypatch: pytest.MonkeyPatch, template_mistake: tuple[str, str], where: str
) -> None:
    real = rendering._render

    def mistaken(template: str, **context: object) -> str:
        return real(template, **context).replace(*template_mistake, 1)

    monkeypatch.setattr(rendering, "_render", mistaken)
    with pytest.raises(
        RenderError, match=rf"^rendered shop\.cart\.yaml differs from the policy model at {where}$"
    ):
        render_policy(cart_policy(), provenance=PROVENANCE)


def test_a_second_document_or_a_changed_resource_list_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = rendering._render
    monkeypatch.setattr(
        rendering, "_render", lambda template, **context: real(template, **context) + "---\n{}\n"
    )
    with pytest.raises(RenderError, match=r"rendered shop\.a\.yaml differs .*: 2 YAML documents"):
        render_policy(hostile_policy("x"), provenance=PROVENANCE)
    monkeypatch.setattr(
        rendering,
        "_render",
        lambda template, **context: real(template, **context) + '  - "../secret.yaml"\n',
    )
    with pytest.raises(RenderError, match=r"rendered Kustomization differs .* resources\[1\]"):
        render_kustomization(["shop/a.yaml"])


def test_first_difference_names_the_path_and_minds_types() -> None:
    expected = {"spec": {"egress": [{"to": [1]}], "port": 80}, "a.b": True}
    assert first_difference(json.loads(json.dumps(expected)), expected) is None
    assert first_difference({**expected, "a.b": 1}, expected) == "['a.b']"
    assert first_difference(
        {**expected, "spec": {"egress": [{"to": [1]}], "port": "80"}}, expected
    ) == ("spec.port")
    assert (
        first_difference({**expected, "spec": {"egress": [{"to": [1]}, {}], "port": 80}}, expected)
        == "spec.egress[1]"
    )
    assert first_difference({"spec": expected["spec"]}, expected) == "['a.b']"
    assert first_difference([], {}) == ""
    assert first_difference({"k\u2028": 1}, {}) == "['k\\u2028']"


@pytest.mark.kubectl
def test_kustomize_reads_exactly_the_model_from_hostile_policies(tmp_path: Path) -> None:
    # go-yaml (kubectl, kustomize) also reads U+2028, U+2029 and NEL as line breaks. Only the
    # DNS names are hostile here: go-yaml refuses to write a label value holding a control
    # character (no such label passes the snapshot's checks).
    hostile = [
        dataclasses.replace(
            hostile_policy(text), name=f"p{index}", workload="shop/Deployment/a", labels=()
        )
        for index, text in enumerate(HOSTILE.values())
    ]
    files = render_policy_files(hostile, provenance=PROVENANCE)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text, encoding="utf-8")
    built = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    objects = {o["metadata"]["name"]: o for o in yaml.safe_load_all(built.stdout) if o}
    assert objects == {p.name: policy_object(p, provenance=PROVENANCE) for p in hostile}
