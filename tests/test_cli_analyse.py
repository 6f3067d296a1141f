"""`netpol-sniffer analyse` end to end on a bundle built here, and its errors and exit codes."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dpkt
import pytest
import yaml

import cli.analyse
from analyser import graphs, policies
from cli.main import ExitStatus, main
from kernel.bundles import Manifest, Window, entries_for_layout, write_manifest
from tests.bundle_builders import (
    CART_IP,
    CART_POD,
    CART_SERVICE_IP,
    FRONTEND_IP,
    FRONTEND_POD,
    NODE_IP,
    SYN,
    T0,
    handshake,
    make_bundle,
    tcp,
    udp,
    write_pcap,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"), damaged=True)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["analyse", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_analyse_writes_policies_graph_and_report(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    status, stdout, stderr = run([str(bundle), "--out", str(out), "--workers", "1"], capsys)
    assert status == ExitStatus.OK, stderr
    assert "2 policies from" in stdout and f"kubectl apply -f {out}" in stdout
    assert (out / "shop.cart.yaml").is_file()
    assert (out / "web.frontend.yaml").is_file()
    assert (out / "graph.dot").is_file() and (out / "report.md").is_file()
    kustomization = yaml.safe_load((out / "Kustomization").read_text())
    assert kustomization["resources"] == ["shop.cart.yaml", "web.frontend.yaml"]
    # the truncated ring file is a warning naming the file, not a failure
    assert f"warning: captures/shop/{CART_POD}/capture.pcap1:" in stderr
    # stderr is not a terminal here: no progress bar
    assert "reading captures" not in stderr


def test_json_summary_on_stdout(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    status, stdout, _ = run([str(bundle), "-o", str(out), "--json", "--default-deny"], capsys)
    assert status == ExitStatus.OK
    summary = json.loads(stdout)
    assert summary["output"] == str(out)
    assert summary["policies"] == [
        "shop.cart.yaml",
        "shop.default-deny-all.yaml",
        "web.default-deny-all.yaml",
        "web.frontend.yaml",
    ]
    assert summary["flows"] >= 3
    assert [p["path"] for p in summary["problems"]] == [f"captures/shop/{CART_POD}/capture.pcap1"]


def test_a_second_run_into_the_same_directory_replaces_the_first(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run([str(bundle), "-o", str(out), "--default-deny"], capsys)[0] == ExitStatus.OK
    assert (out / "shop.default-deny-all.yaml").is_file()
    assert run([str(bundle), "-o", str(out)], capsys)[0] == ExitStatus.OK
    assert not (out / "shop.default-deny-all.yaml").exists()


def test_a_directory_with_other_files_needs_force(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    status, _, stderr = run([str(bundle), "-o", str(tmp_path)], capsys)
    assert status == ExitStatus.ERROR
    assert "precious.txt" in stderr and "--force" in stderr
    assert not (tmp_path / "Kustomization").exists()
    status, _, _ = run([str(bundle), "-o", str(tmp_path), "--force"], capsys)
    assert status == ExitStatus.OK
    assert (tmp_path / "precious.txt").read_text() == "mine"
    assert (tmp_path / "Kustomization").is_file()


def test_a_missing_bundle_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, stderr = run([str(tmp_path / "nope"), "-o", str(tmp_path / "out")], capsys)
    assert status == ExitStatus.ERROR
    assert f"netpol-sniffer analyse: error: {tmp_path / 'nope'}: no such bundle directory" in stderr
    assert not (tmp_path / "out").exists()


def test_a_bundle_without_a_snapshot_is_a_clear_error(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    (copy / "snapshot.json").unlink()
    status, _, stderr = run([str(copy), "-o", str(tmp_path / "out")], capsys)
    assert status == ExitStatus.ERROR
    assert "no snapshot.json" in stderr


def test_a_bundle_without_captures_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "snapshot.json").write_text('{"apiVersion": "v1", "kind": "List", "items": []}')
    status, _, stderr = run([str(tmp_path), "-o", str(tmp_path / "out")], capsys)
    assert status == ExitStatus.ERROR
    assert "no capture files found" in stderr


def test_an_unusable_snapshot_is_a_clear_error(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    (copy / "snapshot.json").write_text("{not json")
    status, _, stderr = run([str(copy), "-o", str(tmp_path / "out")], capsys)
    assert status == ExitStatus.ERROR
    assert "snapshot.json" in stderr and "not valid" in stderr


def test_a_rendered_file_that_differs_from_the_model_is_not_written(
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from analyser import rendering

    # a quoting filter gone wrong: every value comes out one character short
    monkeypatch.setitem(
        rendering._ENV.filters, "q", lambda value: rendering.yaml_quoted(str(value)[:-1])
    )
    out = tmp_path / "out"
    status, stdout, stderr = run([str(bundle), "-o", str(out), "--workers", "1"], capsys)
    assert status == ExitStatus.ERROR and not stdout
    assert not out.exists()
    assert re.fullmatch(
        r"netpol-sniffer analyse: error: rendered shop\.cart\.yaml differs from the policy model "
        r"at \S+",
        stderr.splitlines()[-1],
    )


@pytest.mark.parametrize("workers", ["0", "-1", "many"])
def test_bad_worker_counts_are_usage_errors(
    bundle: Path, tmp_path: Path, workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["analyse", str(bundle), "-o", str(tmp_path), "--workers", workers])
    assert exit_info.value.code == ExitStatus.USAGE
    assert "--workers" in capsys.readouterr().err


def test_the_installed_command_runs(bundle: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "analyse",
            str(bundle),
            "-o",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policies"] == ["shop.cart.yaml", "web.frontend.yaml"]


def test_a_default_analyse_does_not_import_what_only_other_options_use(
    bundle: Path, tmp_path: Path
) -> None:
    # Imports are a fixed cost of every run (issue 13): the Cilium format's and the cluster
    # baseline's modules wait for --format cilium/all and --baseline cluster (their own tests run
    # them), difflib for a mistyped command.
    code = (
        "import sys\nfrom cli.main import main\n"
        f"assert main(['analyse', {str(bundle)!r}, '-o', {str(tmp_path)!r}]) == 0\n"
        "print(sorted(m for m in ('analyser.cilium', 'analyser.baselines', 'difflib') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_plain_folder_of_loose_pcaps_and_a_snapshot(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copy(bundle / "snapshot.json", folder / "snapshot.json")
    for index, pcap in enumerate(sorted(bundle.glob("captures/*/*/capture.pcap0"))):
        shutil.copy(pcap, folder / f"trace-{index}.pcap")
    # one conversation between two pods: it cannot tell whose capture it is
    write_pcap(folder / "pair.pcap", handshake(FRONTEND_IP, 41000, CART_IP, 8080, T0 + 9))
    out = tmp_path / "out"
    status, stdout, stderr = run([str(folder), "-o", str(out), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    summary = json.loads(stdout)
    # each loose file is tied to the one pod in all its flows
    assert summary["policies"] == ["shop.cart.yaml", "web.frontend.yaml"]
    assert [p["path"] for p in summary["problems"]] == ["pair.pcap"]
    assert "several pods (shop/cart-7f9b8-bbbbb, web/frontend-6c4d9-aaaaa)" in stderr
    cart = yaml.safe_load((out / "shop.cart.yaml").read_text())
    assert cart["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_on_a_terminal_counts_every_capture_byte(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["analyse", str(bundle), "-o", str(tmp_path), "--workers", "1"]) == ExitStatus.OK
    total = sum(p.stat().st_size for p in bundle.glob("captures/*/*/capture.pcap*"))
    drawn = terminal.getvalue()
    assert "\rreading captures (bytes) [" in drawn
    assert f"] {total}/{total}\n" in drawn
    # then what runs after the reading, each step with the time it took
    steps = re.findall(r"^(.*) \.\.\. \d+\.\d s$", drawn, flags=re.MULTILINE)
    assert [re.sub(r"\d[\d,]*", "N", step) for step in steps] == [
        "orienting N conversations",
        "building the workload graph of N flows",
        "making the policies, their review, the report and the pictures",
    ]


def test_a_loose_node_wide_capture_gives_the_nodes_pods_policies(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `tcpdump -i any` on node-1: both pods' traffic in one file, no pod in every flow
    folder = tmp_path / "node"
    folder.mkdir()
    shutil.copy(bundle / "snapshot.json", folder / "snapshot.json")
    frames = [
        frame
        for pcap in sorted(bundle.glob("captures/*/*/capture.pcap0"))
        for frame in dpkt.pcap.Reader(pcap.open("rb"))
    ]
    # the node's own noise: a DHCP request and mDNS, from no pod to no one in particular
    frames += [
        (T0 + 11, udp("0.0.0.0", 68, "255.255.255.255", 67, b"\x01" * 40)),
        (T0 + 12, udp(NODE_IP, 5353, "224.0.0.251", 5353, b"\x00" * 20)),
    ]
    write_pcap(folder / "node-1.pcap", frames)
    out = tmp_path / "out"
    status, stdout, stderr = run([str(folder), "-o", str(out), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    summary = json.loads(stdout)
    assert summary["policies"] == ["shop.cart.yaml", "web.frontend.yaml"]
    assert "node-1.pcap: not tied to a pod, but every flow has an end on node node-1" in stderr
    # no bundle.json: the window is the packets' span
    assert summary["window"] == {"start": "2026-01-01T10:00:01Z", "end": "2026-01-01T10:00:12Z"}
    cart = yaml.safe_load((out / "shop.cart.yaml").read_text())
    assert cart["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_empty_and_flowless_loose_files_get_one_clear_warning_each(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copy(bundle / "snapshot.json", folder / "snapshot.json")
    shutil.copy(bundle / "captures" / "shop" / CART_POD / "capture.pcap0", folder / "cart.pcap")
    (folder / "empty.pcap").write_bytes(b"")
    write_pcap(folder / "no-packets.pcap", [])
    write_pcap(folder / "lo.pcap", handshake("127.0.0.1", 45000, "127.0.0.1", 5432, T0 + 9))
    status, _, stderr = run([str(folder), "-o", str(tmp_path / "out")], capsys)
    assert status == ExitStatus.OK, stderr
    warnings = sorted(line for line in stderr.splitlines() if "warning:" in line)
    assert warnings == [
        "netpol-sniffer analyse: warning: empty.pcap: the file is empty; nothing in it could be "
        "used",
        "netpol-sniffer analyse: warning: lo.pcap: its only flows are on loopback, broadcast or "
        "multicast addresses: nothing ties it to a pod",
        "netpol-sniffer analyse: warning: no-packets.pcap: holds no TCP, UDP or SCTP traffic: "
        "nothing to analyse",
    ]


def test_a_kubectl_get_all_snapshot_works_and_warns_what_is_guessed(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "get-all"
    shutil.copytree(bundle, folder)
    snapshot = json.loads((folder / "snapshot.json").read_text())
    snapshot["items"] = [o for o in snapshot["items"] if o["kind"] not in ("Node", "Namespace")]
    (folder / "snapshot.json").write_text(json.dumps(snapshot))
    status, stdout, stderr = run([str(folder), "-o", str(tmp_path / "out"), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    assert json.loads(stdout)["policies"] == ["shop.cart.yaml", "web.frontend.yaml"]
    assert "warning: snapshot.json: no Nodes: node addresses are taken from the pods' hostIP" in (
        stderr
    )
    assert "kubectl get namespaces,nodes,pods," in stderr


def _analysed_with_frontend_capture(
    bundle: Path,
    tmp_path: Path,
    frames: list[tuple[float, bytes]],
    capsys: pytest.CaptureFixture[str],
) -> tuple[dict[str, Any], Path, Path, str]:
    """``analyse --json`` on a copy of ``bundle`` with ``frames`` as one more frontend capture:
    its summary, the copy, the output folder (the run must succeed) and its stderr."""
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    write_pcap(folder / "captures" / "web" / FRONTEND_POD / "capture.pcap1", frames)
    out = tmp_path / "out"
    status, stdout, stderr = run([str(folder), "-o", str(out), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    return json.loads(stdout), folder, out, stderr


def test_a_scan_s_attempts_past_the_report_s_rows_are_counted_in_one(
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A port scan makes a group per address: past MAX_ATTEMPT_GROUPS (3 here), the attempts are
    # counted in one last row, and the JSON still counts every one.
    monkeypatch.setattr(graphs, "MAX_ATTEMPT_GROUPS", 3)
    scan = [
        (T0 + 30 + n, tcp(FRONTEND_IP, 42000 + n, f"203.0.113.{n + 1}", 22, SYN)) for n in range(8)
    ]
    summary, _, out, _ = _analysed_with_frontend_capture(bundle, tmp_path, scan, capsys)
    assert summary["never_established"] == 8
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if "| TCP/22 |" in line]
    servers = [f"ip:203.0.113.{n} (203.0.113.{n})" for n in (1, 2, 3)]
    assert [row.split(" | ")[1] for row in rows] == servers
    assert "| other clients | other servers | other ports | 5 | 5 | " in report
    assert "the attempts past the first 3 rows" in report


def test_traffic_with_too_many_addresses_gets_rules_for_the_first_only(
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Datagrams sprayed at every address, and conversations forged with every address: past
    # MAX_ADDRESSES (3 here) of one workload side in one direction, for each kind, the flows get
    # no rule; analyse's own check passes, the report and --json count them, and verify names
    # them as not checked.
    monkeypatch.setattr(graphs, "MAX_ADDRESSES", 3)
    spray = [
        (T0 + 30 + n, udp(FRONTEND_IP, 41000, f"203.0.113.{n + 1}", 9999, b"x")) for n in range(8)
    ]
    forged = [
        frame
        for n in range(6)
        for frame in handshake(FRONTEND_IP, 43000 + n, f"10.244.200.{n + 1}", 8443, T0 + 40 + n)
    ]
    summary, folder, out, _ = _analysed_with_frontend_capture(
        bundle, tmp_path, spray + forged, capsys
    )
    # The bundle's frontend already talks with one unresolved address: two forged ones are kept.
    assert summary["one_way_left_out"] == 5 and summary["answered_left_out"] == 4
    frontend = (out / "web.frontend.yaml").read_text()
    assert [n for n in range(1, 9) if f"203.0.113.{n}/32" in frontend] == [1, 2, 3]
    assert [n for n in range(1, 7) if f"10.244.200.{n}/32" in frontend] == [1, 2]
    report = (out / "report.md").read_text()
    assert "## Traffic to or from too many addresses" in report
    rows = "| web/Deployment/frontend | to other addresses | "
    assert f"{rows}TCP/8443 | yes | 3 | 4 | 20 | " in report
    assert f"{rows}UDP/9999 | no, one way only | 3 | 5 | 5 | " in report
    assert main(["verify", str(folder), str(out), "--json"]) == ExitStatus.OK
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert (
        "not checked, one way only (nothing answered), past 3 addresses: 5 flows of "
        "web/Deployment/frontend to other addresses on UDP/9999"
    ) in notes
    assert (
        "not checked, answered, past 3 addresses: 4 flows of "
        "web/Deployment/frontend to other addresses on TCP/8443"
    ) in notes


def test_rules_past_a_policy_s_size_get_none_and_are_reported(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A capture claiming connections to cart on 2,500 ports, and datagrams to 2,000 addresses
    # (under MAX_ADDRESSES): past the bytes a policy's rules may take, the one-way addresses,
    # the least evidence, lose theirs. The policy stays small enough for a cluster to take,
    # analyse's own check passes, and stderr, --json and the report say what was left out.
    ports = [
        frame
        for n in range(2500)
        for frame in handshake(FRONTEND_IP, 40000 + n, CART_IP, 20000 + n, T0 + 20 + n / 1000)
    ]
    spray = [
        (
            T0 + 30 + n / 1000,
            udp(FRONTEND_IP, 41000, f"198.18.{n // 250}.{n % 250 + 1}", 9999, b"x"),
        )
        for n in range(2000)
    ]
    summary, folder, out, stderr = _analysed_with_frontend_capture(
        bundle, tmp_path, ports + spray, capsys
    )
    [side] = summary["rules_left_out"]
    kept = 2000 - side["peers"]
    assert side["workload"] == "web/Deployment/frontend" and side["direction"] == "egress"
    assert side["flows"] == side["peers"] > 0 and side["ports"] == ["UDP/9999"]
    frontend = yaml.safe_load((out / "web.frontend.yaml").read_text())
    egress = frontend["spec"]["egress"]
    [cart] = [
        rule
        for rule in egress
        if rule["to"][0].get("podSelector") == {"matchLabels": {"app": "cart"}}
        and "namespaceSelector" in rule["to"][0]
    ]
    assert {port["port"] for port in cart["ports"]} >= set(range(20000, 22500))
    blocks = [
        rule
        for rule in egress
        if rule["to"][0].get("ipBlock", {}).get("cidr", "").startswith("198.18.")
    ]
    assert len(blocks) == kept
    written = len(json.dumps(frontend, separators=(",", ":")))
    assert policies.MAX_RULE_BYTES - 8 * 1024 < written < 256 * 1024
    assert (
        f"warning: web/Deployment/frontend: egress to {side['peers']:,} peers on 1 ports "
        f"({side['peers']:,} flows) left out of its policy"
    ) in stderr
    report = (out / "report.md").read_text()
    assert "## Rules past a policy's size" in report
    assert (
        f"| web/Deployment/frontend | egress | {side['peers']} | {side['peers']} | UDP/9999 | "
        in report
    )
    # The policy says so, for verify, which finds those flows denied (they are) and says why
    # they may be.
    annotations = frontend["metadata"]["annotations"]
    assert json.loads(annotations["netpol-sniffer.io/rules-left-out"]) == {"egress": side["peers"]}
    assert main(["verify", str(folder), str(out), "--json"]) == ExitStatus.DENIED
    verified = json.loads(capsys.readouterr().out)
    assert len(verified["denied"]) == side["peers"]
    assert (
        f"{side['peers']:,} of the denied client → server ports are at a side whose policy says "
        "analyse left rules out of it for size (netpol-sniffer.io/rules-left-out on "
        "web/frontend): they may be those; analyse's report.md lists them under \"Rules past a "
        "policy's size\""
    ) in verified["notes"]


def test_a_refused_or_unanswered_connection_gets_no_rule_and_is_reported(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "refused"
    shutil.copytree(bundle, folder)
    rst_ack = 0x14
    refused = [
        (T0 + 30, tcp(FRONTEND_IP, 41001, CART_IP, 7777, SYN)),
        (T0 + 30.001, tcp(CART_IP, 7777, FRONTEND_IP, 41001, rst_ack)),
    ]
    unanswered = [(T0 + 40 + n, tcp(FRONTEND_IP, 41002, CART_IP, 9999, SYN)) for n in range(3)]
    # A client retrying: four more refused attempts on 7777, each from a port of its own.
    for n in range(4):
        refused += [
            (T0 + 31 + n, tcp(FRONTEND_IP, 41010 + n, CART_IP, 7777, SYN)),
            (T0 + 31.001 + n, tcp(CART_IP, 7777, FRONTEND_IP, 41010 + n, rst_ack)),
        ]
    write_pcap(folder / "captures" / "web" / FRONTEND_POD / "capture.pcap1", refused + unanswered)
    write_pcap(folder / "captures" / "shop" / CART_POD / "capture.pcap2", refused + unanswered)
    out = tmp_path / "out"
    status, stdout, stderr = run([str(folder), "-o", str(out), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    assert json.loads(stdout)["never_established"] == 6
    cart = yaml.safe_load((out / "shop.cart.yaml").read_text())
    assert cart["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]
    frontend = (out / "web.frontend.yaml").read_text()
    assert "7777" not in frontend and "9999" not in frontend
    report = (out / "report.md").read_text()
    assert "## Flows that were never established" in report
    # One row per client, server and port, however many attempts.
    assert (
        "| web/Deployment/frontend | shop/Deployment/cart (10.244.2.7) | TCP/7777 | 5 | 10 | "
        in report
    )
    assert (
        "| web/Deployment/frontend | shop/Deployment/cart (10.244.2.7) | TCP/9999 | 1 | 3 | "
        in (report)
    )
    assert report.count("| web/Deployment/frontend | shop/Deployment/cart (") == 2


def test_loopback_traffic_in_a_loose_pod_capture_does_not_hide_whose_it_is(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `tcpdump -i any` in the cart pod also sees its containers talk over lo
    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copy(bundle / "snapshot.json", folder / "snapshot.json")
    cart = bundle / "captures" / "shop" / CART_POD / "capture.pcap0"
    frames = list(dpkt.pcap.Reader(cart.open("rb")))
    frames += handshake("127.0.0.1", 45000, "127.0.0.1", 5432, T0 + 9)
    write_pcap(folder / "cart.pcap", frames)
    out = tmp_path / "out"
    status, stdout, stderr = run([str(folder), "-o", str(out), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    summary = json.loads(stdout)
    assert summary["policies"] == ["shop.cart.yaml"]
    assert summary["loopback_flows"] == 1
    assert "127.0.0.1" not in (out / "shop.cart.yaml").read_text()


def test_without_services_in_the_snapshot_both_captures_still_give_the_target_port(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pods-only"
    shutil.copytree(bundle, folder)
    snapshot = json.loads((folder / "snapshot.json").read_text())
    snapshot["items"] = [o for o in snapshot["items"] if o["kind"] != "Service"]
    (folder / "snapshot.json").write_text(json.dumps(snapshot))
    out = tmp_path / "out"
    status, _, stderr = run([str(folder), "-o", str(out)], capsys)
    assert status == ExitStatus.OK, stderr
    assert "warning: snapshot.json: no Services" in stderr
    frontend = yaml.safe_load((out / "web.frontend.yaml").read_text())
    to_cart = [r for r in frontend["spec"]["egress"] if "8080" in json.dumps(r)]
    assert to_cart[0]["to"][0]["podSelector"] == {"matchLabels": {"app": "cart"}}
    assert CART_SERVICE_IP not in json.dumps(frontend)


def test_a_pod_whose_captures_are_all_unreadable_gets_no_deny_all_policy(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "garbage"
    shutil.copytree(bundle, folder)
    (folder / "captures" / "web" / FRONTEND_POD / "capture.pcap0").write_bytes(b"\x00" * 300)
    out = tmp_path / "out"
    status, stdout, stderr = run([str(folder), "-o", str(out), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    # the cart's captures are fine: it keeps its policy; nothing is known of the frontend
    assert json.loads(stdout)["policies"] == ["shop.cart.yaml"]
    assert f"captures/web/{FRONTEND_POD}: no capture of this pod could be read: no policy" in (
        stderr
    )


def test_a_capture_folder_named_after_the_deployment_is_tied_by_its_traffic(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # hand-made: captures/shop/cart/ (not the pod's name), no bundle.json, no meta.json
    folder = tmp_path / "hand-made"
    folder.mkdir()
    shutil.copy(bundle / "snapshot.json", folder / "snapshot.json")
    cart = folder / "captures" / "shop" / "cart"
    cart.mkdir(parents=True)
    shutil.copy(bundle / "captures" / "shop" / CART_POD / "capture.pcap0", cart / "cart.pcap")
    out = tmp_path / "out"
    status, stdout, stderr = run([str(folder), "-o", str(out), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    assert json.loads(stdout)["policies"] == ["shop.cart.yaml"]
    assert "captures/shop/cart: pod shop/cart is not in the snapshot: its captures are tied" in (
        stderr
    )


def test_a_loose_file_of_one_conversation_is_tied_by_the_pod_its_name_gives(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "named"
    folder.mkdir()
    shutil.copy(bundle / "snapshot.json", folder / "snapshot.json")
    # both pods are in its only flow; the name says it is the frontend's
    write_pcap(folder / "frontend.pcap", handshake(FRONTEND_IP, 41000, CART_IP, 8080, T0 + 9))
    status, stdout, stderr = run([str(folder), "-o", str(tmp_path / "out"), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    summary = json.loads(stdout)
    assert summary["policies"] == ["web.frontend.yaml"]
    assert summary["problems"] == []


def test_a_captured_host_network_workload_is_named_for_what_it_is(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "host-network"
    shutil.copytree(bundle, folder)
    snapshot = json.loads((folder / "snapshot.json").read_text())
    for item in snapshot["items"]:
        if item["kind"] == "Pod" and item["metadata"]["name"] == CART_POD:
            item["spec"]["hostNetwork"] = True
    (folder / "snapshot.json").write_text(json.dumps(snapshot))
    out = tmp_path / "out"
    status, _, stderr = run([str(folder), "-o", str(out)], capsys)
    assert status == ExitStatus.OK, stderr
    assert (
        "warning: shop/Deployment/cart: its pods use the host network, where NetworkPolicy does "
        "not apply: no policy written" in stderr
    )
    assert "no stable label" not in (out / "report.md").read_text()


NODE_2_IP, NODE_3_IP, NODE_3_IP6 = "192.168.49.5", "192.168.49.7", "2001:db8::7"


@pytest.fixture(scope="module")
def three_node_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle on three nodes; cart also received LoadBalancer traffic that kube-proxy SNAT'd
    to node-2's address (``externalTrafficPolicy: Cluster``)."""
    root = make_bundle(tmp_path_factory.mktemp("three-nodes"))
    snapshot = json.loads((root / "snapshot.json").read_text())
    for name, addresses in (
        ("node-3", [("InternalIP", NODE_3_IP), ("ExternalIP", NODE_3_IP6), ("Hostname", "n3")]),
        ("node-2", [("InternalIP", NODE_2_IP)]),
    ):
        snapshot["items"].append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name},
                "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
            }
        )
    (root / "snapshot.json").write_text(json.dumps(snapshot))
    write_pcap(
        root / "captures" / "shop" / CART_POD / "capture.pcap1",
        handshake(NODE_2_IP, 31000, CART_IP, 8080, T0 + 9),
    )
    write_manifest(
        root,
        Manifest(
            producer="lab",
            capture_mode="sidecar",
            window=Window(T0, T0 + 60),
            captures=tuple(entries_for_layout(root)),
        ),
    )
    return root


def _ingress_blocks(out: Path) -> list[tuple[str, list[dict[str, object]]]]:
    cart = yaml.safe_load((out / "shop.cart.yaml").read_text())
    return [
        (peer["ipBlock"]["cidr"], rule["ports"])
        for rule in cart["spec"]["ingress"]
        for peer in rule["from"]
        if "ipBlock" in peer
    ]


def test_traffic_from_one_node_is_allowed_from_every_node(
    three_node_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    status, _, stderr = run([str(three_node_bundle), "-o", str(out)], capsys)
    assert status == ExitStatus.OK, stderr
    port = [{"protocol": "TCP", "port": 8080}]
    assert _ingress_blocks(out) == [
        (f"{NODE_IP}/32", port),
        (f"{NODE_2_IP}/32", port),
        (f"{NODE_3_IP}/32", port),
        (f"{NODE_3_IP6}/128", port),
    ]
    text = (out / "shop.cart.yaml").read_text()
    assert f"# {NODE_3_IP}/32: cluster nodes" in text
    # frontend sent nothing to a node: no node block in its policy
    assert "cluster nodes" not in (out / "web.frontend.yaml").read_text()
    # the same bundle gives the same bytes
    again = tmp_path / "again"
    assert run([str(three_node_bundle), "-o", str(again)], capsys)[0] == ExitStatus.OK
    for path in sorted(out.rglob("*.yaml")):
        assert (again / path.relative_to(out)).read_bytes() == path.read_bytes()


def test_node_cidr_replaces_the_per_node_blocks(
    three_node_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = [str(three_node_bundle), "-o", str(out), "--node-cidr", "192.168.49.0/24"]
    status, _, stderr = run([*args, "--node-cidr", "2001:db8::/64"], capsys)
    assert status == ExitStatus.OK, stderr
    port = [{"protocol": "TCP", "port": 8080}]
    assert _ingress_blocks(out) == [("192.168.49.0/24", port), ("2001:db8::/64", port)]


@pytest.mark.parametrize("cidr", ["192.168.49.1/24", "10.0.0.0/33", "nodes"])
def test_a_bad_node_cidr_is_a_usage_error(
    three_node_bundle: Path, tmp_path: Path, cidr: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["analyse", str(three_node_bundle), "-o", str(tmp_path), "--node-cidr", cidr])
    assert exit_info.value.code == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "--node-cidr" in err and repr(cidr) in err


def test_max_outside_addresses_is_passed_on_and_its_help_gives_the_default(
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from analyser import analysing, windows
    from analyser.policies import MAX_OUTSIDE_ADDRESSES

    given = []
    real = analysing.conclude

    def spy(
        seen: analysing.Observation,
        cluster: analysing.ClusterContext,
        options: analysing.PolicyOptions,
    ) -> analysing.Analysis:
        given.append(options.max_outside_addresses)
        return real(seen, cluster, options)

    monkeypatch.setattr(windows, "conclude", spy)
    for extra in ([], ["--max-outside-addresses", "5"]):
        status, _, _ = run([str(bundle), "--out", str(tmp_path / "out"), "--force", *extra], capsys)
        assert status == ExitStatus.OK
    assert given == [MAX_OUTSIDE_ADDRESSES, 5]
    with pytest.raises(SystemExit) as exit_info:
        main(["analyse", str(bundle), "-o", str(tmp_path), "--max-outside-addresses", "0"])
    assert exit_info.value.code == ExitStatus.USAGE
    assert "--max-outside-addresses" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyse", "--help"])
    assert f"(default: {MAX_OUTSIDE_ADDRESSES})" in capsys.readouterr().out.replace("\n ", "")


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "microservices-demo" / "bundle"


@pytest.mark.parametrize("observed_only", [False, True])
def test_a_load_balanced_workload_is_open_to_anywhere_on_its_target_port_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], observed_only: bool
) -> None:
    """Online Boutique's frontend is behind the LoadBalancer frontend-external (80 → 8080): its
    users are the internet, not the one address the capture saw."""
    out = tmp_path / "out"
    flags = ["--observed-clients-only"] if observed_only else []
    status, stdout, stderr = run([str(EXAMPLE), "--out", str(out), "--json", *flags], capsys)
    assert status == ExitStatus.OK, stderr
    by = "Service default/frontend-external (LoadBalancer)"
    assert json.loads(stdout)["exposed"] == [
        {
            "workload": "default/Deployment/frontend",
            "protocol": "TCP",
            "port": 8080,
            "by": by,
            "from": "observed clients" if observed_only else "anywhere",
        }
    ]
    frontend = (out / "default.frontend.yaml").read_text()
    ingress = yaml.safe_load(frontend)["spec"]["ingress"]
    anywhere = [
        rule["ports"]
        for rule in ingress
        if rule["from"][0].get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    ]
    assert anywhere == ([] if observed_only else [[{"protocol": "TCP", "port": 8080}]])
    assert (f"# 0.0.0.0/0: anywhere: exposed by {by}" in frontend) is not observed_only
    assert "## Exposed workloads" in (out / "report.md").read_text()
    # Nothing else is opened: no other policy allows anything from anywhere.
    for path in out.glob("*.yaml"):
        if path.name != "default.frontend.yaml":
            assert "0.0.0.0/0" not in path.read_text()


def test_traffic_with_a_metadata_endpoint_is_a_warning_unless_allowed(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "metadata"
    shutil.copytree(bundle, folder)
    frames = handshake(FRONTEND_IP, 41005, "169.254.169.254", 80, T0 + 30)
    write_pcap(folder / "captures" / "web" / FRONTEND_POD / "capture.pcap1", frames)
    status, stdout, stderr = run([str(folder), "-o", str(tmp_path / "out"), "--json"], capsys)
    assert status == ExitStatus.OK, stderr
    assert (
        "netpol-sniffer analyse: warning: web/Deployment/frontend: egress to 169.254.169.254 "
        "(TCP/80) left out of its policy: a cloud metadata endpoint (it hands out the cloud "
        "credentials of the node or the pod); --allow-special metadata writes it"
    ) in stderr.splitlines()
    assert [item["class"] for item in json.loads(stdout)["left_out"]] == ["metadata"]
    assert "169.254.169.254" not in (tmp_path / "out" / "web.frontend.yaml").read_text()
    out = tmp_path / "allowed"
    status, stdout, stderr = run(
        [str(folder), "-o", str(out), "--json", "--allow-special", "metadata"], capsys
    )
    assert status == ExitStatus.OK, stderr
    assert "left out" not in stderr and json.loads(stdout)["left_out"] == []
    assert 'cidr: "169.254.169.254/32"' in (out / "web.frontend.yaml").read_text()


def test_an_unknown_special_address_class_is_a_usage_error(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["analyse", str(bundle), "-o", str(tmp_path), "--allow-special", "all"])
    assert exit_info.value.code == ExitStatus.USAGE
    assert "--allow-special: invalid choice: 'all'" in capsys.readouterr().err


def test_a_bundle_whose_every_capture_is_unreadable_is_an_error(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "garbage"
    shutil.copytree(bundle, folder)
    for capture in (folder / "captures").rglob("capture.pcap*"):
        capture.write_bytes(b"\x00" * 300)
    out = tmp_path / "out"
    status, stdout, stderr = run([str(folder), "-o", str(out)], capsys)
    assert status == ExitStatus.ERROR
    assert stdout == "" and not out.exists()
    assert "none of the 3 capture files could be read, nothing to analyse: " in stderr
    assert f"captures/shop/{CART_POD}/capture.pcap0: not a pcap or pcapng file" in stderr
    assert "Traceback" not in stderr


def test_special_addresses_past_the_warnings_bound_are_counted_in_one_line(
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Datagrams to every multicast address would be a warning each: past the bound, one line
    # counts the rest; --json still lists every one.
    monkeypatch.setattr(cli.analyse, "MAX_SPECIAL_WARNINGS", 2)
    frames = [
        (T0 + 30 + n, udp(FRONTEND_IP, 41000, f"239.1.1.{n + 1}", 9999, b"x")) for n in range(5)
    ]
    summary, _, _, stderr = _analysed_with_frontend_capture(bundle, tmp_path, frames, capsys)
    assert len([item for item in summary["left_out"] if item["class"] == "multicast"]) == 5
    warned = [line for line in stderr.splitlines() if "239.1.1." in line]
    assert len(warned) == 2
    assert "warning: 3 more special addresses left out: see the report" in stderr
