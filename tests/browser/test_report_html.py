"""report.html in a real browser: Debian's chromium (make system-deps installs it) driven by
playwright (its python package; no browser of its own). The demo's output opened from disk with
nothing fetched; a reviewer filters by namespace, clicks a connection and a workload; names that
hold markup and script stay text and run nothing."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from analyser import reviewing
from analyser.analysing import GRAPH_SVG, REPORT_HTML, draw_namespaces, render_svg
from analyser.evaluation import NO_PORTS, PolicySet, PortSet
from analyser.graphs import GraphNode, NodeRole
from analyser.pictures import infrastructure_ids, picture_of
from analyser.rendering import render_dot, render_review
from analyser.replaying import ClusterFacts
from analyser.reviewing import Drawing, review
from analyser.verifying import Allowance
from cli.main import ExitStatus, main
from tests.analyser.test_pictures import DB, DNS, cluster_graph
from tests.analyser.test_rendering import example_graph, workload_node
from tests.hostile.hostile_helpers import EXAMPLE

pytestmark = pytest.mark.browser

# Each would run a script if it reached the page as markup: ending the data's script element,
# opening a comment, an element with a handler, a javascript: link.
INJECTIONS = (
    "</script><script>window.__injected = 1</script>",
    '<img src=x onerror="window.__injected = 2">',
    "<!--<script>window.__injected = 3</script>-->",
    '<a href="javascript:window.__injected=4">x</a>',
    '"><svg onload="window.__injected = 5">',
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: `make system-deps` installs Debian's (as root)")
    with sync_playwright() as playwright:
        # Chromium's sandbox needs user namespaces that a root test run does not get.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = playwright.chromium.launch(executable_path=chromium, args=args)
        yield launched
        launched.close()


@dataclass
class Opened:
    """A page opened from disk, with everything it asked for and every error and dialog."""

    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        found: dict[str, Any] = self.page.evaluate(
            "JSON.parse(document.getElementById('review-data').textContent)"
        )
        return found


def open_page(browser: Browser, path: Path) -> Opened:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    opened = Opened(page)
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.on(
        "console",
        lambda message: opened.errors.append(message.text) if message.type == "error" else None,
    )

    def dialog(shown: Any) -> None:
        opened.dialogs.append(shown.message)
        shown.dismiss()

    page.on("dialog", dialog)
    page.goto(path.as_uri())
    return opened


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's output folder: ``analyse`` on the recorded microservices-demo bundle."""
    if shutil.which("dot") is None:
        pytest.fail("Graphviz is not installed: `make system-deps` installs it (as root)")
    out = tmp_path_factory.mktemp("demo") / "policies"
    assert main(["analyse", str(EXAMPLE), "--out", str(out), "--workers", "1"]) == ExitStatus.OK
    return out


def lines_shown(text: str) -> list[str]:
    """A policy excerpt's lines as the page shows them, without their numbers."""
    return [line[6:] for line in text.split("\n") if line]


def numbers_shown(text: str) -> list[int]:
    return [int(line[:4]) for line in text.split("\n") if line]


def shape_of_workload(data: dict[str, Any], workload: str) -> str:
    (found,) = (
        shape
        for shape, node in data["views"][0]["shapes"]["nodes"].items()
        if node["members"] == [workload]
    )
    return str(found)


def shape_of_edge(data: dict[str, Any], client: str, server: str) -> str:
    (found,) = (
        shape
        for shape, edge in data["views"][0]["shapes"]["edges"].items()
        if [(data["edges"][i]["client"], data["edges"][i]["server"]) for i in edge["edges"]]
        == [(client, server)]
    )
    return str(found)


FRONTEND, CART = "default/Deployment/frontend", "default/Deployment/cartservice"
COREDNS = "kube-system/Deployment/coredns"


def test_the_demo_page_opens_from_disk_and_fetches_nothing(browser: Browser, demo: Path) -> None:
    opened = open_page(browser, demo / REPORT_HTML)
    page = opened.page
    assert opened.requests == [(demo / REPORT_HTML).as_uri()]
    assert opened.errors == [] and opened.dialogs == []
    assert page.locator("#picture svg g.node").count() > 12  # the workloads and the legend
    assert page.locator("#workloads tbody tr").count() == 13  # 12 captured, and coredns
    data = opened.data()
    assert page.locator("#connections tbody tr").count() == len(data["edges"]) == 31
    assert data["namespaces"] == ["default", "kube-system"]
    # the page's picture is graph.svg's
    assert page.locator("#picture svg g.edge").count() == (demo / GRAPH_SVG).read_text().count(
        'class="edge"'
    )


def test_clicking_a_connection_shows_its_flows_and_the_rules_that_allow_it(
    browser: Browser, demo: Path
) -> None:
    opened = open_page(browser, demo / REPORT_HTML)
    page = opened.page
    page.locator(f"#{shape_of_edge(opened.data(), FRONTEND, CART)} text").first.click()
    details = page.locator("#details")
    assert details.locator("h3").all_inner_texts() == [f"{FRONTEND} → {CART}", "TCP/7070"]
    assert "6 flows, 24 packets, 1,344 bytes" in details.inner_text()
    assert details.locator("table tbody tr").count() == 6  # each flow
    rules = {
        rule.get_attribute("data-direction"): rule.locator("pre")
        for rule in details.locator(".rule").all()
    }
    assert set(rules) == {"egress", "ingress"}
    egress = lines_shown(rules["egress"].inner_text())
    # the rule's comment lines say why it exists: the flows behind it
    assert egress == [
        "    # to default/Deployment/cartservice",
        "    # TCP/7070: 6 flows via Service default/cartservice, first 2026-11-26T10:40:08Z, "
        "last 2026-11-26T10:40:13Z",
        "    - to:",
        "        - podSelector:",
        "            matchLabels:",
        '              "app": "cartservice"',
        "      ports:",
        '        - protocol: "TCP"',
        "          port: 7070",
    ]
    # the lines are the policy file's own, numbered as in the file
    in_file = (demo / "default.frontend.yaml").read_text().split("\n")
    assert egress == [in_file[n - 1] for n in numbers_shown(rules["egress"].inner_text())]
    ingress = lines_shown(rules["ingress"].inner_text())
    assert '              "app": "frontend"' in ingress and "          port: 7070" in ingress
    assert "default.cartservice.yaml" in details.inner_text()
    assert opened.errors == []


def test_clicking_a_workload_shows_its_policy_and_what_it_allows_that_was_never_observed(
    browser: Browser, demo: Path
) -> None:
    opened = open_page(browser, demo / REPORT_HTML)
    page = opened.page
    page.locator(f"#{shape_of_workload(opened.data(), FRONTEND)}").click()
    details = page.locator("#details")
    assert details.locator("h2").inner_text() == FRONTEND
    policy = details.locator('pre[data-file="default.frontend.yaml"]')
    assert lines_shown(policy.inner_text()) == (
        (demo / "default.frontend.yaml").read_text().rstrip("\n").split("\n")
    )
    # verify's answer: the DNS rule allows TCP/53 too, only UDP/53 was seen
    never = details.locator(".unobserved table tbody tr")
    assert [row.locator("td").all_inner_texts() for row in never.all()] == [
        ["it may connect to", COREDNS, "53/TCP", "53/UDP"]
    ]
    # a workload in the list shows the same
    page.locator(f'#workloads tr[data-workload="{CART}"]').click()
    assert details.locator("h2").inner_text() == CART
    assert opened.errors == []


def test_the_namespace_filter_keeps_what_touches_the_namespace(
    browser: Browser, demo: Path
) -> None:
    opened = open_page(browser, demo / REPORT_HTML)
    page, data = opened.page, opened.data()
    page.select_option("#namespace", "kube-system")
    shown = page.locator("#workloads tbody tr:not(.hidden)")
    assert [row.get_attribute("data-workload") for row in shown.all()] == [COREDNS]
    connections = page.locator("#connections tbody tr:not(.hidden) td:nth-child(2)")
    assert connections.all_inner_texts() == [COREDNS] * 4  # every DNS client's connection
    faded = "el => el.classList.contains('faded')"
    assert page.locator(f"#{shape_of_workload(data, FRONTEND)}").evaluate(faded)
    assert not page.locator(f"#{shape_of_workload(data, COREDNS)}").evaluate(faded)
    page.select_option("#namespace", "")
    assert page.locator("#workloads tbody tr.hidden").count() == 0
    assert page.locator("#picture .faded").count() == 0
    # a namespace's box chooses it
    default_box = next(
        shape
        for shape, group in data["views"][0]["shapes"]["groups"].items()
        if group["namespace"] == "default"
    )
    page.locator(f"#{default_box} > text").last.click()
    assert page.locator("#namespace").input_value() == "default"
    assert opened.errors == []


def assert_inert(opened: Opened) -> None:
    """Nothing the data holds ran: no global set, no dialog, no error, only the page's own
    scripts (the data, svg-pan-zoom, review.js) and no element with a handler."""
    page = opened.page
    assert page.evaluate("window.__injected") is None
    assert opened.dialogs == [] and opened.errors == []
    assert page.evaluate("document.scripts.length") == 3
    handlers = page.evaluate(
        "[...document.querySelectorAll('*')].flatMap(e => [...e.attributes].filter(a =>"
        " a.name.startsWith('on') || (['href', 'src', 'xlink:href', 'action'].includes(a.name)"
        " && a.value.trim().toLowerCase().startsWith('javascript:'))).map(a => a.name))"
    )
    assert handlers == []


def test_names_holding_markup_are_shown_as_text_and_run_nothing(
    browser: Browser, tmp_path: Path
) -> None:
    """Workload and DNS names are checked where they are read (a snapshot's names are DNS-1123,
    a DNS name is letters, digits, '-' and '_'): this feeds the page names no check passed."""
    graph = example_graph()
    hostile = [workload_node(f"shop/Deployment/{text}") for text in INJECTIONS]
    outside = GraphNode("ip:198.51.100.1", NodeRole.EXTERNAL, "198.51.100.1", names=INJECTIONS)
    cart = graph.edge("shop/Deployment/cart", "ip:203.0.113.7")
    graph = dataclasses.replace(
        graph,
        nodes=(*graph.nodes, *hostile, outside),
        edges=(
            *graph.edges,
            *(dataclasses.replace(cart, client=node.id) for node in hostile),
            dataclasses.replace(cart, server=outside.id),
        ),
    )
    picture = picture_of(graph)
    page_text = render_review(
        review(
            graph,
            source=INJECTIONS[0],
            window=INJECTIONS[1],
            drawings=(Drawing(None, picture, render_svg(render_dot(picture))),),
            policy_files={"shop.x.yaml": f"# {INJECTIONS[0]}\n"},
            policies=PolicySet(),
            cluster=ClusterFacts({}, {}, {}, {}, {}),
            allowances=[  # each hostile workload may call the next
                Allowance(node.id, peer.id, PortSet.everything(), NO_PORTS)
                for node, peer in zip(hostile, [*hostile[1:], hostile[0]], strict=True)
            ],
        )
    )
    path = tmp_path / REPORT_HTML
    path.write_text(page_text, encoding="utf-8")
    opened = open_page(browser, path)
    page = opened.page
    assert_inert(opened)
    assert page.title() == f"netpol-sniffer: {INJECTIONS[0]}"
    assert page.locator("header .window").inner_text() == f"capture window {INJECTIONS[1]}"
    listed = page.locator("#connections tbody td:first-child").all_inner_texts()
    assert {f"shop/Deployment/{text}" for text in INJECTIONS} <= set(listed)
    drawn = page.locator("#picture svg").text_content() or ""
    assert all(text in drawn for text in INJECTIONS[1:])  # as titles and DNS names
    # the panels put them in as text too
    for text, peer in zip(INJECTIONS, [*INJECTIONS[1:], INJECTIONS[0]], strict=True):
        page.locator("#workloads tbody tr", has_text=text).first.click()
        assert page.locator("#details h2").inner_text() == f"shop/Deployment/{text}"
        assert f"shop/Deployment/{peer}" in page.locator("#details .unobserved").inner_text()
    page.locator("#connections tbody tr").last.click()
    assert_inert(opened)


def test_a_bundle_named_with_markup_runs_nothing(browser: Browser, tmp_path: Path) -> None:
    name = '<img src=x onerror="window.__injected = 1">'  # a folder name holds no '/'
    bundle = tmp_path / name
    shutil.copytree(EXAMPLE, bundle)
    out = tmp_path / "out"
    assert main(["analyse", str(bundle), "--out", str(out), "--workers", "1"]) == ExitStatus.OK
    opened = open_page(browser, out / REPORT_HTML)
    assert_inert(opened)
    assert opened.page.locator("#source").inner_text() == name


def test_every_policy_file_can_be_read_whole(browser: Browser, tmp_path: Path) -> None:
    out = tmp_path / "out"
    arguments = ["analyse", str(EXAMPLE), "--out", str(out), "--workers", "1"]
    assert main([*arguments, "--baseline", "cluster"]) == ExitStatus.OK
    opened = open_page(browser, out / REPORT_HTML)
    page = opened.page
    listed = page.locator("#files li").all_inner_texts()
    assert listed == sorted(path.name for path in out.glob("*.yaml"))
    baseline = "ClusterNetworkPolicy.netpol-sniffer-baseline.yaml"
    page.locator("#files button", has_text=baseline).click()
    assert page.locator("#details h2").inner_text() == baseline
    shown = page.locator(f'#details pre[data-file="{baseline}"]').inner_text()
    assert lines_shown(shown) == (out / baseline).read_text().rstrip("\n").split("\n")
    assert opened.errors == []


def test_a_namespace_chosen_is_shown_in_a_picture_of_its_own(
    browser: Browser, tmp_path: Path
) -> None:
    graph = cluster_graph()
    infrastructure = infrastructure_ids(graph, dns_workloads={DNS}, node_local_dns=())
    picture = picture_of(graph, infrastructure=infrastructure)
    drawings = (
        Drawing(None, picture, render_svg(render_dot(picture))),
        *draw_namespaces(graph, infrastructure, picture),
    )
    assert [drawing.namespace for drawing in drawings] == [None, "data", "shop"]
    path = tmp_path / REPORT_HTML
    path.write_text(
        render_review(
            review(
                graph,
                source="cluster",
                window="",
                drawings=drawings,
                policy_files={},
                policies=PolicySet(),
                cluster=ClusterFacts({}, {}, {}, {}, {}),
                allowances=[],
            )
        ),
        encoding="utf-8",
    )
    opened = open_page(browser, path)
    page = opened.page
    shown = page.locator("#picture > .view:not([hidden])")
    assert shown.get_attribute("data-view") == "0"
    page.select_option("#namespace", "data")
    assert shown.get_attribute("data-view") == "1"
    titles = shown.locator("g.node:not([id^=node]) text").all_text_contents()
    # data's workload, its client in shop, the node that probes it: nothing else
    assert {"db", "cart", "worker-1"} <= set(titles)
    assert "web" not in titles and "coredns" not in titles
    shown.locator("g.node", has_text="db").first.click()
    assert page.locator("#details h2").inner_text() == DB
    page.select_option("#namespace", "")
    assert shown.get_attribute("data-view") == "0"
    assert opened.errors == []


def test_a_workload_s_many_single_addresses_are_summed_up_and_shown_as_text(
    browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_ADDRESS_EDGES connections of a workload with single addresses in one direction,
    the page sums the others up: a row of the connections' list, a line of the workload's
    panel and the picture's edges lead to the sum; the workload's name (no check passed) stays
    text there too."""
    monkeypatch.setattr(reviewing, "MAX_ADDRESS_EDGES", 2)
    graph = example_graph()
    subject = workload_node(f"shop/Deployment/{INJECTIONS[1]}")
    cart = graph.edge("shop/Deployment/cart", "ip:203.0.113.7")
    clients = [
        GraphNode(f"ip:198.51.100.{n}", NodeRole.EXTERNAL, f"198.51.100.{n}") for n in range(1, 8)
    ]
    graph = dataclasses.replace(
        graph,
        nodes=(*graph.nodes, subject, *clients),
        edges=(
            *graph.edges,
            *(dataclasses.replace(cart, client=node.id, server=subject.id) for node in clients),
        ),
    )
    picture = picture_of(graph)
    page_text = render_review(
        review(
            graph,
            source="bundle",
            window="",
            drawings=(Drawing(None, picture, render_svg(render_dot(picture))),),
            policy_files={},
            policies=PolicySet(),
            cluster=ClusterFacts({}, {}, {}, {}, {}),
            allowances=[],
        )
    )
    path = tmp_path / REPORT_HTML
    path.write_text(page_text, encoding="utf-8")
    opened = open_page(browser, path)
    page = opened.page
    (folded,) = opened.data()["folded"]
    assert (folded["subject"], folded["edges"]) == (subject.id, 5)
    row = page.locator("#connections tbody tr[data-folded]")
    flows = 5 * sum(stats.flows for stats in cart.ports.values())
    assert row.all_inner_texts() == [f"5 more addresses\t{subject.id}\t{folded['ports']}\t{flows}"]
    row.click()
    assert page.locator("#details h2").inner_text() == "5 connections"
    shown = page.locator("#details section.folded").inner_text()
    assert f"5 more addresses → {subject.id}" in shown and f"on {folded['ports']}." in shown
    page.locator("#workloads tbody tr", has_text=INJECTIONS[1]).first.click()
    page.locator("#details li", has_text="5 more addresses").locator("button").click()
    assert page.locator("#details section.folded").count() == 1
    assert_inert(opened)
