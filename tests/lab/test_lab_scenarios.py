"""End to end on the simulated cluster: real namespaces, DNAT, DNS, servers, clients and the
sidecar's tcpdump → bundle → the analyser → policies judged against what really happened.

Each scenario is its own short lab run (a few seconds). Needs root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from cli.main import main as main_cli
from kernel.errors import LabError
from lab import netns
from lab.layouts import DNS_WORKLOAD
from tests.lab.lab_helpers import (
    EXAMPLE,
    LabRunner,
    analyse_and_judge,
    lab_run_argv,
    own_namespaces,
)

pytestmark = pytest.mark.lab


def deployment(namespace: str, name: str, ports: str = "[]", replicas: int = 1) -> str:
    return f"""
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: main, image: example, ports: {ports}}}]}}
"""


def service(namespace: str, name: str, ports: str) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{selector: {{app: {name}}}, ports: {ports}}}
"""


WEB_API = (
    deployment("front", "web", "[{containerPort: 8080, name: http}]")
    + service("front", "web", "[{port: 80, targetPort: http}]")
    + deployment("back", "api", "[{containerPort: 9000}, {containerPort: 5353, protocol: UDP}]")
    + service(
        "back",
        "api",
        "[{name: grpc, port: 9000}, {name: stats, port: 53, targetPort: 5353, protocol: UDP}]",
    )
)


def flow(client: str, server: str, port: int, protocol: str = "TCP") -> dict[str, object]:
    return {"client": client, "server": server, "protocol": protocol, "port": port}


def assert_policies_match_truth(bundle: Path) -> dict[str, str]:
    judged = analyse_and_judge(bundle)
    assert judged.check.denied == (), "flows that happened are denied"
    assert judged.check.extra == (), "allowed beyond what happened"
    return judged.files


def test_microservices_demo(run_lab: LabRunner) -> None:
    lab = run_lab(
        (EXAMPLE / "kubernetes-manifests.yaml").read_text(),
        (EXAMPLE / "traffic.yaml").read_text(),
        duration=4,
    )
    truth = lab.truth
    assert (
        flow("default/Deployment/checkoutservice", "default/Deployment/emailservice", 8080) in truth
    )
    assert flow("default/Deployment/loadgenerator", "default/Deployment/frontend", 8080) in truth
    assert flow("default/Deployment/frontend", DNS_WORKLOAD, 53, "UDP") in truth
    # the Redis connection was opened before the capture: its FIN is there, its SYN is not
    assert (
        lab.packets("default", "cartservice", "tcp port 6379 and tcp[tcpflags] & tcp-syn != 0")
        == []
    )
    assert lab.packets("default", "cartservice", "tcp port 6379 and tcp[tcpflags] & tcp-fin != 0")
    # the kubelet probes every pod from the node's address, and truth says so
    assert lab.report["probes"]["ok"] > 0  # type: ignore[index]
    assert lab.packets("default", "frontend", "src host 172.18.0.2 and dst port 8080")
    assert flow("ip:172.18.0.2", "default/Deployment/emailservice", 8080) in truth
    files = assert_policies_match_truth(lab.bundle)
    judged = analyse_and_judge(lab.bundle)
    for workload in ("emailservice", "frontend"):
        text = judged.policy("default", workload)
        ports = [
            p.get("port")
            for rule in yaml.safe_load(text)["spec"].get("ingress", [])
            for p in rule.get("ports", [])
        ]
        assert set(ports) == {8080}, f"{workload} ingress ports {ports}"
    assert files


def test_two_namespaces_calling_each_other(run_lab: LabRunner) -> None:
    lab = run_lab(
        WEB_API,
        """
calls:
  - {from: front/Deployment/web, to: api.back:9000, every: 0.5}
  - {from: back/Deployment/api, to: web.front.svc.cluster.local:80, every: 0.5}
""",
        duration=2,
    )
    assert flow("front/Deployment/web", "back/Deployment/api", 9000) in lab.truth
    assert flow("back/Deployment/api", "front/Deployment/web", 8080) in lab.truth
    files = assert_policies_match_truth(lab.bundle)
    web = yaml.safe_load(next(t for p, t in files.items() if p.startswith("front.web")))
    namespaces = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in web["spec"]["egress"]
        for peer in rule.get("to", [])
        if "namespaceSelector" in peer
    ]
    assert "back" in namespaces


def test_external_egress_by_name(run_lab: LabRunner) -> None:
    lab = run_lab(
        WEB_API,
        """
external:
  - {name: api.payments.example.com, ports: [443]}
  - {name: www.shipping.example.org, cname: edge-7.cdn.example.net, ports: [443]}
calls:
  - {from: back/Deployment/api, to: api.payments.example.com:443, every: 0.5}
  - {from: back/Deployment/api, to: www.shipping.example.org:443, every: 0.5}
""",
        duration=2,
    )
    outside = sorted(str(f["server"])[3:] for f in lab.truth if str(f["server"]).startswith("ip:"))
    assert len(outside) == 2 and all(a.startswith("203.0.113.") for a in outside)
    answers = lab.packets("back", "api", "udp port 53")
    for address in outside:
        assert any(f"A {address}" in line for line in answers), answers
    assert any("CNAME edge-7.cdn.example.net" in line for line in answers)
    judged = analyse_and_judge(lab.bundle)
    assert judged.check.denied == () and judged.check.extra == ()
    policy = "".join(text for path, text in judged.files.items() if path.startswith("back.api"))
    for address in outside:
        assert f"{address}/32" in policy
    assert "api.payments.example.com" in policy and "www.shipping.example.org" in policy
    # The Cilium set allows them by the names asked for, not by address or by the CNAME target.
    cilium = yaml.safe_load(judged.cilium["back.api.yaml"])["spec"]["egress"]
    by_name = [rule["toFQDNs"] for rule in cilium if "toFQDNs" in rule]
    assert by_name == [
        [{"matchName": "api.payments.example.com"}, {"matchName": "www.shipping.example.org"}]
    ]
    assert not any(address in str(cilium) for address in outside)


def test_udp(run_lab: LabRunner) -> None:
    lab = run_lab(
        WEB_API,
        """
calls:
  - {from: front/Deployment/web, to: api.back:53, protocol: UDP, every: 0.5}
""",
        duration=2,
    )
    assert flow("front/Deployment/web", "back/Deployment/api", 5353, "UDP") in lab.truth
    assert lab.packets("back", "api", "udp port 5353")
    assert_policies_match_truth(lab.bundle)


def test_named_target_port(run_lab: LabRunner) -> None:
    lab = run_lab(
        WEB_API,
        """
calls:
  - {from: back/Deployment/api, to: web.front:80, every: 0.5}
""",
        duration=2,
    )
    assert lab.truth == [
        flow("back/Deployment/api", "front/Deployment/web", 8080),
        flow("back/Deployment/api", DNS_WORKLOAD, 53, "UDP"),
    ]
    # the client saw the Service port, the server the named target port's number
    assert lab.packets("back", "api", "tcp dst port 80 and tcp[tcpflags] & tcp-syn != 0")
    assert lab.packets("front", "web", "tcp dst port 8080 and tcp[tcpflags] & tcp-syn != 0")
    assert_policies_match_truth(lab.bundle)


def test_ip_reuse_after_restart(run_lab: LabRunner) -> None:
    manifests = WEB_API + deployment("back", "worker")
    lab = run_lab(
        manifests,
        """
calls:
  - {from: front/Deployment/web, to: api.back:9000, every: 0.3}
  - {from: back/Deployment/worker, to: web.front:80, every: 0.3}
events:
  - {restart: front/Deployment/web, at: 1.2, ip-to: back/Deployment/worker}
""",
        duration=3,
    )
    (restart,) = cast(list[dict[str, Any]], lab.report["restarts"])
    # the sidecar of the pod that took the IP wrote it into its meta.json
    metas = [json.loads((d / "meta.json").read_text()) for d in lab.pod_dirs("back", "worker-")]
    takers = [m["pod"] for m in metas if restart["old_ips"][0] in m["ips"]]
    assert takers == [restart["ip_reused_by"].split("/")[1]]
    events = [json.loads(line) for line in (lab.bundle / "pod-ips.jsonl").read_text().splitlines()]
    old_ip = restart["old_ips"][0]
    holders = [(e["event"], e["namespace"], e["pod"]) for e in events if old_ip in e["ips"]]
    assert [h[0] for h in holders] == ["ADDED", "DELETED", "ADDED"]
    assert holders[0][1] == "front" and holders[2][1] == "back"
    assert len(lab.pod_dirs("front", "web-")) == 2  # the deleted pod's captures are kept
    # web called api with that IP before the restart, worker called web with it after
    assert lab.packets("back", "api", f"src host {old_ip} and tcp[tcpflags] & tcp-syn != 0")
    assert_policies_match_truth(lab.bundle)


def test_connection_opened_before_capture(run_lab: LabRunner) -> None:
    lab = run_lab(
        WEB_API,
        """
calls:
  - {from: front/Deployment/web, to: api.back:9000, long-lived: true, every: 0.5}
""",
        duration=2,
    )
    assert flow("front/Deployment/web", "back/Deployment/api", 9000) in lab.truth
    assert lab.packets("back", "api", "tcp port 9000 and tcp[tcpflags] & tcp-syn != 0") == []
    assert lab.packets("back", "api", "tcp port 9000 and tcp[tcpflags] & tcp-fin != 0")
    assert_policies_match_truth(lab.bundle)


@pytest.mark.parametrize("mode", ["handshake", "full"])
def test_capture_modes(run_lab: LabRunner, mode: str) -> None:
    lab = run_lab(
        WEB_API,
        """
calls:
  - {from: front/Deployment/web, to: api.back:9000, every: 0.5}
""",
        capture_mode=mode,
        duration=2,
    )
    bundle = json.loads((lab.bundle / "bundle.json").read_text())
    assert bundle["capture_mode"] == mode
    data = lab.packets(
        "back", "api", "tcp port 9000 and tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) == 0"
    )
    assert bool(data) == (mode == "full"), data[:3]  # handshake mode keeps control packets only
    assert_policies_match_truth(lab.bundle)


@pytest.mark.skipif(not netns.ipv6_available(), reason="IPv6 is disabled on this kernel")
def test_ipv6_dual_stack(run_lab: LabRunner) -> None:
    lab = run_lab(
        WEB_API,
        """
dual-stack: true
external: [{name: v6.example.net, ports: [443]}]
calls:
  - {from: front/Deployment/web, to: api.back:9000, family: IPv6, every: 0.5}
  - {from: back/Deployment/api, to: v6.example.net:443, family: IPv6, every: 0.5}
""",
        duration=2,
    )
    assert flow("front/Deployment/web", "back/Deployment/api", 9000) in lab.truth
    assert any(str(f["server"]).startswith("ip:2001:db8:") for f in lab.truth)
    assert lab.packets("back", "api", "ip6 and tcp port 9000")
    snapshot = json.loads((lab.bundle / "snapshot.json").read_text())
    pod = next(
        o for o in snapshot["items"] if o["kind"] == "Pod" and o["metadata"]["namespace"] == "back"
    )
    assert len(pod["status"]["podIPs"]) == 2
    assert_policies_match_truth(lab.bundle)


def test_refused_call(run_lab: LabRunner) -> None:
    manifests = WEB_API + service("back", "api-broken", "[{port: 81, targetPort: 9999}]").replace(
        "app: api-broken", "app: api"
    )
    lab = run_lab(
        manifests,
        """
calls:
  - {from: front/Deployment/web, to: api-broken.back:81, expect: refused, every: 0.5}
  - {from: front/Deployment/web, to: api.back:9000, every: 0.5}
""",
        duration=2,
    )
    calls = cast(list[dict[str, Any]], lab.report["calls"])
    refused = next(c for c in calls if c["expect"] == "refused")
    assert refused["refused"] and not refused["ok"]
    assert all(f["port"] != 9999 for f in lab.truth)
    assert lab.packets("back", "api", "tcp port 9999 and tcp[tcpflags] & tcp-rst != 0")
    judged = analyse_and_judge(lab.bundle)
    assert judged.check.denied == ()
    # the refused attempt (to 9999) may be allowed; nothing else beyond the truth may
    assert [line for line in judged.check.extra if "9999" not in line] == []


def test_a_run_that_fails_removes_everything(run_lab: LabRunner) -> None:
    # the Service has no such port: the error says what happened to the calls
    with pytest.raises(
        LabError, match=r"never succeeded .*failed [1-9].*Connect call failed"
    ) as info:
        run_lab(WEB_API, "calls: [{from: front/Deployment/web, to: api.back:9001}]", duration=1)
    assert "bundle kept in" in str(info.value)
    assert own_namespaces() == []


def test_leftovers_of_a_killed_run_are_removed(run_lab: LabRunner) -> None:
    dead = f"{netns.PREFIX}4194999-node"  # above the kernel's largest pid: never alive
    netns.run(["ip", "netns", "add", dead])
    try:
        run_lab(WEB_API, "calls: [{from: front/Deployment/web, to: api.back:9000}]", duration=1)
        assert dead not in netns.list_namespaces()
    finally:
        if dead in netns.list_namespaces():
            netns.delete_namespace(dead)


def _start_cli_run(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """``netpol-sniffer lab run`` in a child process, returned once its window is open."""
    (tmp_path / "m.yaml").write_text(WEB_API)
    (tmp_path / "p.yaml").write_text("calls: [{from: front/Deployment/web, to: api.back:9000}]")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            *lab_run_argv(tmp_path / "m.yaml", tmp_path / "p.yaml", tmp_path / "bundle"),
            "--duration",
            "30",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "capturing" in line:
            break
    return process, f"{netns.PREFIX}{process.pid}-"


def test_a_killed_run_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    process, prefix = _start_cli_run(tmp_path)
    process.kill()  # SIGKILL: no clean-up of its own
    process.wait(timeout=10)
    left = [n for n in netns.list_namespaces() if n.startswith(prefix)]
    assert left, "a killed run leaves its namespaces"
    try:
        assert main_cli(["lab", "clean"]) == 0
        assert [n for n in netns.list_namespaces() if n.startswith(prefix)] == []
    finally:
        for name in netns.list_namespaces():
            if name.startswith(prefix):
                netns.delete_namespace(name)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_remove_everything(tmp_path: Path, sig: signal.Signals) -> None:
    process, prefix = _start_cli_run(tmp_path)
    assert any(n.startswith(prefix) for n in netns.list_namespaces())
    process.send_signal(sig)
    assert process.wait(timeout=30) == 130
    time.sleep(0.1)
    assert [n for n in netns.list_namespaces() if n.startswith(prefix)] == []
    assert not os.path.exists(tmp_path / "bundle")  # no half bundle left


KINDS = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: data}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, ports: [{containerPort: 5432, name: pg}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432, targetPort: pg}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: data}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: backup, namespace: data}
spec:
  template:
    metadata: {labels: {app: backup}}
    spec: {restartPolicy: Never, containers: [{name: backup}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: vacuum, namespace: data}
spec:
  schedule: "*/5 * * * *"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: vacuum}}
        spec: {restartPolicy: OnFailure, containers: [{name: vacuum}]}
---
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: data, labels: {app: debug}}
spec: {containers: [{name: debug}]}
"""


def test_workload_kinds_and_a_headless_service(run_lab: LabRunner) -> None:
    lab = run_lab(
        KINDS,
        """
calls:
  - {from: data/DaemonSet/agent, to: db:5432, every: 0.5}
  - {from: data/Job/backup, to: db-1.db:5432, every: 0.5}
  - {from: data/Pod/debug, to: db-0.db.data.svc.cluster.local:5432, every: 0.5}
""",
        duration=2,
    )
    for client in ("data/DaemonSet/agent", "data/Job/backup", "data/Pod/debug"):
        assert flow(client, "data/StatefulSet/db", 5432) in lab.truth
    # a headless name resolves to the pods themselves: the client connects to a pod IP
    snapshot = json.loads((lab.bundle / "snapshot.json").read_text())
    db1 = next(
        o for o in snapshot["items"] if o["kind"] == "Pod" and o["metadata"]["name"] == "db-1"
    )
    assert lab.packets("data", "backup", f"dst host {db1['status']['podIP']} and dst port 5432")
    assert_policies_match_truth(lab.bundle)


def test_outside_clients_through_load_balancers(run_lab: LabRunner) -> None:
    manifests = (
        WEB_API
        + """
---
apiVersion: v1
kind: Service
metadata: {name: web-public, namespace: front}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: api-public, namespace: back}
spec:
  type: LoadBalancer
  selector: {app: api}
  ports: [{port: 443, targetPort: 9000}]
"""
    )
    lab = run_lab(
        manifests,
        """
calls:
  - {from: "ip:198.51.100.200", to: web-public.front:80, every: 0.5}
  - {from: "ip:198.51.100.200", to: api-public.back:443, every: 0.5}
""",
        duration=2,
    )
    # Local keeps the client's address; Cluster (the default) shows the pod the node instead
    assert flow("ip:198.51.100.200", "front/Deployment/web", 8080) in lab.truth
    assert flow("ip:172.18.0.2", "back/Deployment/api", 9000) in lab.truth
    assert lab.packets("front", "web", "src host 198.51.100.200 and dst port 8080")
    assert lab.packets("back", "api", "src host 172.18.0.2 and dst port 9000")
    snapshot = json.loads((lab.bundle / "snapshot.json").read_text())
    public = next(
        o
        for o in snapshot["items"]
        if o["kind"] == "Service" and o["metadata"]["name"] == "web-public"
    )
    assert public["status"]["loadBalancer"]["ingress"][0]["ip"].startswith("198.51.100.")
    files = assert_policies_match_truth(lab.bundle)
    web = "".join(text for path, text in files.items() if path.startswith("front.web"))
    # The LoadBalancer exposes web: its users are everybody, not the one client seen.
    assert "# 0.0.0.0/0: anywhere: exposed by Service front/web-public (LoadBalancer)" in web
    assert "198.51.100.200/32" not in web
