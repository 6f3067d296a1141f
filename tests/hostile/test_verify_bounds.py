"""verify and diff bounded too: the bundle verify replays is hostile input, and so may be the
policy files it is given. Policy files may hold YAML aliases within a budget (hand-written sets
reuse an anchored port list), never a "billion laughs", a structure that contains itself or
nesting past 100 levels; verify's work grows linearly with the addresses observed and the blocks
the policies name (work is counted in lines executed, never timed; bench/hostile_inputs.py
measures it on 2,000 and 20,000 outside addresses)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from analyser import evaluation, verifying
from analyser.evaluation import Address, IpBlock, PolicySet, pod
from analyser.flows import Protocol
from analyser.policysets import MAX_ALIAS_NODES, parse_policy_texts
from analyser.verifying import Observed, Universe, block_for, diff, verify
from cli.main import ExitStatus, main
from kernel.errors import PolicyError
from tests.hostile.test_bounds import PEAK_RSS, alias_bomb, cli_in_child
from tests.work_counting import executed_lines, growth

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
"""

ANCHORED = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: front}}}]
      ports: &web [{port: 8080}, {port: 8443}]
    - from: [{podSelector: {matchLabels: {app: probe}}}]
      ports: *web
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: web}}}]
      ports: &web [{port: 8080}, {port: 8443}]
  egress:
    - to: [{podSelector: {matchLabels: {app: web}}}]
      ports: *web
"""


def _written_out(text: str) -> str:
    """``ANCHORED`` with every alias replaced by what it names (anchors are per document)."""
    return text.replace("&web ", "").replace("*web", "[{port: 8080}, {port: 8443}]")


def test_a_hand_written_set_with_a_few_anchors_reads_as_written_out() -> None:
    anchored = parse_policy_texts({"set.yaml": ANCHORED})
    written = parse_policy_texts({"set.yaml": _written_out(ANCHORED)})
    assert anchored.documents == written.documents
    assert anchored.policies == written.policies


def test_an_alias_bomb_policy_file_is_one_error_line_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """verify and diff refuse it naming the file and the budget, before anything is walked."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "good.yaml").write_text(POLICY)
    bomb = policies / "bomb.yaml"
    bomb.write_text(alias_bomb() + POLICY)
    expected = (
        f"{bomb}: line 7: the YAML alias *l4: the aliases stand for more than "
        f"{MAX_ALIAS_NODES:,} nodes in all, expanded"
    )
    bundle = Path(__file__).resolve().parents[2] / "examples" / "microservices-demo" / "bundle"

    verified = cli_in_child("verify", str(bundle), str(policies))
    compared = cli_in_child("diff", str(policies), str(policies / "good.yaml"))

    assert verified.status == compared.status == ExitStatus.ERROR
    assert verified.stderr.splitlines() == [f"netpol-sniffer verify: error: {expected}"]
    assert compared.stderr.splitlines() == [f"netpol-sniffer diff: error: {expected}"]
    assert max(verified.peak_rss, compared.peak_rss) < PEAK_RSS


def test_an_alias_inside_the_node_it_names_is_refused() -> None:
    """PyYAML builds such a structure (a list that contains itself); walking it never ends."""
    text = POLICY + "  ingress: &loop\n    - from: *loop\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy_texts({"loop.yaml": text})
    assert str(caught.value) == (
        "loop.yaml: line 8: the YAML alias *loop is inside the node it names: a structure that "
        "contains itself has no end"
    )


def test_aliases_nested_past_the_depth_cap_once_expanded_are_refused() -> None:
    """Each alias one list deeper than the last: 150 short lines nest 150 deep, expanded."""
    chain = "".join(f"  l{n}: &l{n} [*l{n - 1}]\n" for n in range(1, 150))
    text = POLICY.replace("metadata:", f"chain:\n  l0: &l0 [x]\n{chain}metadata:")
    with pytest.raises(PolicyError, match=r"^chain.yaml: line \d+: nested more than 100 lists"):
        parse_policy_texts({"chain.yaml": text})


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_policy_file_nested_100000_deep_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    deep = tmp_path / f"deep{suffix}"
    deep.write_text('{"kind": "NetworkPolicy", "spec": ' + "[" * 100_000 + "]" * 100_000 + "}")

    status = main(["diff", str(deep), str(deep)])

    [line] = capsys.readouterr().err.splitlines()
    assert status == ExitStatus.ERROR
    assert line.startswith(f"netpol-sniffer diff: error: {deep}: ")
    assert "nested more than 100 lists and objects deep" in line or "nesting depth" in line


# -- work grows linearly with addresses and blocks ------------------------------------------------


def _outside(count: int) -> list[str]:
    return [str(ipaddress.ip_address("198.18.0.1") + index) for index in range(count)]


def _allowing(addresses: list[str]) -> PolicySet:
    """web may call each of ``addresses`` on 443 (one ipBlock each), and nothing else."""
    rules = [
        {"to": [{"ipBlock": {"cidr": f"{ip}/32"}}], "ports": [{"port": 443}]} for ip in addresses
    ]
    return PolicySet.from_documents(
        [
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "policyTypes": ["Egress"],
                    "egress": rules,
                },
            }
        ]
    )


WEB = pod(namespace="shop", labels={"app": "web"}, name="shop/Deployment/web")


def _verify_lines(count: int) -> int:
    addresses = _outside(count)
    policies = _allowing(addresses)
    observed = [Observed(WEB, Address(ip), Protocol.TCP, 443) for ip in addresses]

    def run() -> None:
        universe = Universe.of([WEB], [*policies.ip_blocks(), *map(block_for, addresses)])
        result = verify(policies, observed, universe)
        assert result.passed and result.checked == count

    return executed_lines(run, modules=(verifying, evaluation))


def test_verify_work_grows_linearly_with_the_outside_addresses() -> None:
    """Each observed address was checked against every block of the universe (quadratic: 4×
    the addresses, 16× the work); the blocks are now found through an index."""
    assert growth(_verify_lines, 150) < 1.5


def test_diff_work_grows_linearly_with_the_address_blocks() -> None:
    def work(count: int) -> int:
        old = _allowing(_outside(count))
        new = _allowing(_outside(count)[1:])
        universe = Universe.of([WEB], [*old.ip_blocks(), *new.ip_blocks()])
        return executed_lines(lambda: diff(old, new, universe), modules=(verifying, evaluation))

    assert growth(work, 150) < 1.5


def test_the_index_finds_the_blocks_the_blocks_themselves_say_hold_an_address() -> None:
    """Universe.holding is Block.matches for every block, found by prefix: nested networks,
    an except, both families, and the cluster's nodes folded into one block."""
    blocks = [
        IpBlock(ipaddress.ip_network("10.0.0.0/8"), (ipaddress.ip_network("10.1.0.0/16"),)),
        IpBlock(ipaddress.ip_network("10.1.2.0/24")),
        IpBlock(ipaddress.ip_network("10.1.2.3/32")),
        IpBlock(ipaddress.ip_network("fd00::/64")),
        IpBlock(ipaddress.ip_network("192.168.49.2/32")),
        IpBlock(ipaddress.ip_network("192.168.49.3/32")),
    ]
    nodes = {"192.168.49.2": "node-a", "192.168.49.3": "node-b"}
    universe = Universe.of([WEB], blocks, nodes=nodes)
    for ip in ("10.1.2.3", "10.1.9.9", "10.2.0.1", "fd00::5", "192.168.49.3", "8.8.8.8", "::1"):
        assert sorted(b.name for b in universe.holding(ip)) == sorted(
            b.name for b in universe.blocks if b.matches(ip)
        ), ip
