"""The README's journey on a real node (``node.py``), under a real NetworkPolicy enforcer.

microservices-demo runs as the users' own manifests with every application image swapped (by
kustomize ``images:``) for a stand-in that listens on the original's ports and makes the traffic
plan's calls (``images/agent/node_agent.py``, the lab's servers and clients). The README's steps
run as a user types them: the webhook from its image behind its Service, the namespace labelled,
the pods with the capture sidecar, ``netpol-sniffer collect`` through the real kubelet's exec,
``netpol-sniffer analyse``, ``kubectl apply -k`` of the policies, ``uninstall-sidecars``. With
kube-router enforcing the policies, every planned call must still succeed and every call nobody
made (each client pod to every Service port and pod port it never called, and to an outside
address) must be blocked; the same probes are made before the policies, where each must connect.

Writes ``node-e2e-output/`` at the repository root: ``bundle/`` (with ``truth.json``),
``policies/``, ``report.json``; prints ``node-e2e: planned N/M allowed, unplanned K/L blocked``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from kernel.names import NODE_CAPTURE_NAMESPACE
from lab import bundling
from lab.plans import Expect, TrafficPlan, read_plan
from tests.e2e.node import (
    AGENT_IMAGE,
    CAPTURE_IMAGE,
    CLUSTER_CIDR,
    DNS_SERVICE_IP,
    IMAGES_DIR,
    LOAD_BALANCER_RANGE,
    OUTSIDE_SERVER,
    REPO,
    SUMMARY_LINES,
    Node,
    versions,
)

pytestmark = [pytest.mark.node, pytest.mark.timeout(3600)]

OUT = REPO / "node-e2e-output"
EXAMPLE = REPO / "examples" / "microservices-demo"
NAMESPACE = "default"
SIDECAR = "netpol-sniffer-capture"
# A name with a domain: containerd imports it (from an OCI layout) and looks it up as it is.
AGENT_NAME = f"localhost/{AGENT_IMAGE.split(':')[0]}"
LISTEN_ENV = "NETPOL_SNIFFER_AGENT_LISTEN"
# collect watches pod IPs this long; the plan's traffic runs inside it
COLLECT_MARGIN_S = 6.0
Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The cluster through kubectl and the agents through exec


@dataclass
class Cluster:
    node: Node

    @property
    def env(self) -> dict[str, str]:
        assert self.node.control_plane is not None
        return {
            **self.node.control_plane.env,
            "PATH": os.pathsep.join(
                [
                    str(self.node.built.k8s_bin),
                    str(Path(sys.executable).parent),
                    os.environ.get("PATH", ""),
                ]
            ),
        }

    def run(
        self, *command: str, cwd: Path = REPO, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(command), cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{' '.join(command)}` exited {result.returncode}:\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self.node.kubectl(*args, stdin=stdin).stdout

    def get(self, *args: str) -> list[Json]:
        items: list[Json] = json.loads(self.kubectl("get", *args, "-o", "json"))["items"]
        return items

    def pods(self, namespace: str = NAMESPACE) -> list[Json]:
        return [
            pod
            for pod in self.get("pods", "-n", namespace)
            if "deletionTimestamp" not in pod["metadata"]
        ]

    def exec_json(self, pod: Json, *command: str) -> Any:
        container = pod["spec"]["containers"][0]["name"]
        output = self.kubectl(
            "exec",
            "-n",
            pod["metadata"]["namespace"],
            pod["metadata"]["name"],
            "-c",
            container,
            "--",
            *command,
        )
        return json.loads(output.strip().splitlines()[-1])

    def agent(self, pod: Json, command: str, config: Json) -> Any:
        return self.exec_json(pod, "python", "-m", "node_agent", command, json.dumps(config))

    def outside_agent(self, command: str, config: Json) -> Any:
        agent = str(IMAGES_DIR / "agent" / "node_agent.py")
        output = self.node.run_outside(
            ["env", f"PYTHONPATH={REPO}", sys.executable, agent, command, json.dumps(config)]
        ).stdout
        return json.loads(output.strip().splitlines()[-1])


def workload_of(pod: Json, replica_sets: Mapping[str, Json]) -> str:
    """``NS/Kind/name`` of the pod's controller (a ReplicaSet's Deployment)."""
    namespace = pod["metadata"]["namespace"]
    owners = pod["metadata"].get("ownerReferences") or []
    if not owners:
        return f"{namespace}/Pod/{pod['metadata']['name']}"
    kind, name = owners[0]["kind"], owners[0]["name"]
    if kind == "ReplicaSet":
        rs_owners = replica_sets[f"{namespace}/{name}"]["metadata"].get("ownerReferences") or []
        if rs_owners:
            kind, name = rs_owners[0]["kind"], rs_owners[0]["name"]
    return f"{namespace}/{kind}/{name}"


# ---------------------------------------------------------------------------------------------
# The stand-in images and the users' manifests with them


def _image_repository(image: str) -> str:
    """The image reference without tag or digest (what kustomize's ``images: name`` matches)."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return without_digest.rsplit(":", 1)[0] if ":" in last else without_digest


def stand_ins(manifests: str) -> dict[str, tuple[str, str]]:
    """Every image of the manifests → (the stand-in's tag, the ports it listens on)."""
    ports: dict[str, set[str]] = defaultdict(set)
    for document in yaml.safe_load_all(manifests):
        if not document:
            continue
        spec = document.get("spec") or {}
        if document.get("kind") == "CronJob":
            spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
        template = (spec.get("template") or {}).get("spec") or (
            spec if document.get("kind") == "Pod" else {}
        )
        for container in [*template.get("containers", []), *template.get("initContainers", [])]:
            listens = ports[container["image"]]
            for port in container.get("ports") or []:
                listens.add(f"{port['containerPort']}/{port.get('protocol', 'TCP')}")
    result = {}
    for image, listens in sorted(ports.items()):
        repository = _image_repository(image)
        tag = image[len(repository) :].lstrip(":").split("@")[0] or "latest"
        variant = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{repository.rsplit('/', 1)[-1]}-{tag}")
        result[image] = (variant, " ".join(sorted(listens)))
    return result


def restricted_patches(manifests: str) -> list[Json]:
    """kustomize patches that make every Deployment's pods meet Pod Security ``restricted``
    (run as a user that is not root, no privilege escalation, every capability dropped, the
    runtime's seccomp profile), keeping what their securityContexts already say: what a team
    whose namespaces enforce ``restricted`` has in its own manifests."""
    patches = []
    for document in yaml.safe_load_all(manifests):
        if not document or document.get("kind") != "Deployment":
            continue
        spec = document["spec"]["template"]["spec"]
        pod_context = {
            "runAsUser": 1000,
            "runAsGroup": 1000,
            **(spec.get("securityContext") or {}),
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        operations = [
            {"op": "add", "path": "/spec/template/spec/securityContext", "value": pod_context}
        ]
        for kind in ("initContainers", "containers"):
            for index, container in enumerate(spec.get(kind) or []):
                context = {
                    **(container.get("securityContext") or {}),
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "runAsNonRoot": True,
                }
                path = f"/spec/template/spec/{kind}/{index}/securityContext"
                operations.append({"op": "add", "path": path, "value": context})
        patches.append(
            {
                "target": {"kind": "Deployment", "name": document["metadata"]["name"]},
                "patch": yaml.safe_dump(operations),
            }
        )
    return patches


def deploy_application(
    cluster: Cluster, work: Path, *, namespace: str = NAMESPACE, restricted: bool = False
) -> None:
    """The example's manifests, unchanged, with kustomize swapping in the stand-ins (into
    ``namespace``; ``restricted``: patched to meet Pod Security ``restricted``)."""
    manifests = (EXAMPLE / "kubernetes-manifests.yaml").read_text()
    images = cluster.node.built.images
    variants = stand_ins(manifests)
    names = []
    for variant, listen in variants.values():
        name = f"{AGENT_NAME}:{variant}"
        images.variant(AGENT_IMAGE, name, {LISTEN_ENV: listen})
        names.append(name)
    cluster.node.import_archive(images.oci_archive(names, work / "stand-ins.tar"))
    app = work / "app"
    app.mkdir()
    shutil.copy(EXAMPLE / "kubernetes-manifests.yaml", app)
    kustomization: Json = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": ["kubernetes-manifests.yaml"],
        "images": [
            {"name": _image_repository(image), "newName": AGENT_NAME, "newTag": variant}
            for image, (variant, _) in variants.items()
        ],
    }
    if restricted:
        kustomization["patches"] = restricted_patches(manifests)
    (app / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    cluster.run("kubectl", "apply", "-k", str(app))


# ---------------------------------------------------------------------------------------------
# Traffic: the plan's calls, and the probe matrix


def call_specs(plan: TrafficPlan, client: str) -> list[Json]:
    return [
        {
            "id": number,
            "host": call.host,
            "port": call.port,
            "protocol": call.protocol,
            "every": call.every,
            "ipv6": False,
            "long_lived": call.long_lived,
            "source": call.outside_address,
        }
        for number, call in enumerate(plan.calls)
        if call.client == client
    ]


@dataclass
class Played:
    """What one run of the plan did: per call of the plan, the agents' summed results."""

    totals: list[Json]
    outcomes: list[bundling.CallOutcome] = field(default_factory=list)

    def allowed(self, plan: TrafficPlan) -> list[bool]:
        """Did each call of the plan behave as planned, every time it was made?"""
        verdicts = []
        for call, total in zip(plan.calls, self.totals, strict=True):
            if call.expect is Expect.NXDOMAIN:
                verdicts.append(total["attempts"] > 0 and total["nxdomain"] == total["attempts"])
            else:
                verdicts.append(total["attempts"] > 0 and total["ok"] == total["attempts"])
        return verdicts


def play(
    cluster: Cluster,
    plan: TrafficPlan,
    pods: list[Json],
    workloads: Mapping[str, str],
    load_balancers: Mapping[str, str],
) -> Played:
    """Every pod of every calling workload makes its calls for the plan's duration (through
    ``kubectl exec``), the outside client too; all at once."""
    jobs: list[Callable[[], Any]] = []
    for pod in pods:
        client = workloads[pod["metadata"]["name"]]
        calls = call_specs(plan, client)
        if calls:
            config = {"calls": calls, "duration": plan.duration}
            jobs.append(partial(cluster.agent, pod, "calls", config))
    for client in sorted({c.client for c in plan.calls if c.outside_address}):
        calls = call_specs(plan, client)
        hosts = {c["host"]: [load_balancers[c["host"]]] for c in calls}
        config = {"calls": calls, "duration": plan.duration, "hosts": hosts}
        jobs.append(partial(cluster.outside_agent, "calls", config))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: job(), jobs))
    totals, outcomes = bundling.tally_calls(
        plan,
        (result for agent_results in answers for result in agent_results),
        server_name=lambda server: workloads.get(server, server),
    )
    return Played(totals, outcomes)


@dataclass(frozen=True)
class Target:
    kind: str  # service, pod or outside
    name: str  # namespace/name[:port] as reported
    address: str
    port: int
    protocol: str

    def as_json(self) -> Json:
        return {
            "kind": self.kind,
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "protocol": self.protocol,
        }


# (address, port, protocol) a client reaches: a ClusterIP's port or a pod's port
Endpoint = tuple[str, int, str]


@dataclass(frozen=True)
class Topology:
    """The cluster's pods (all namespaces), Services and the pods' workloads, as listed once
    the application runs."""

    pods: list[Json]
    services: list[Json]
    workloads: dict[str, str]  # pod name → NS/Kind/name
    namespace: str = NAMESPACE  # the application's: where the plan's outside clients call

    def selected(self, service: Json) -> list[Json]:
        """The pods a Service selects."""
        selector = service["spec"].get("selector") or {}
        return [
            pod
            for pod in self.pods
            if selector
            and pod["metadata"]["namespace"] == service["metadata"]["namespace"]
            and all(pod["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]

    def service_targets(self, service: Json, port: int, protocol: str) -> set[Endpoint]:
        """The Service's address and port, and its backends' pod address and target port."""
        reached = {(service["spec"]["clusterIP"], port, protocol)}
        for service_port in service["spec"]["ports"]:
            if service_port["port"] != port or service_port.get("protocol", "TCP") != protocol:
                continue
            for pod in self.selected(service):
                target = _target_port(pod, service_port.get("targetPort", port), protocol)
                if target is not None:
                    reached.add((pod["status"]["podIP"], target, protocol))
        return reached

    def called(self, plan: TrafficPlan) -> dict[str, set[Endpoint]]:
        """Per client workload, what its planned calls reach: the Services it names and their
        backends' target ports, and the cluster DNS."""
        by_name = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in self.services}
        dns = next(s for s in self.services if s["spec"].get("clusterIP") == DNS_SERVICE_IP)
        reached: dict[str, set[Endpoint]] = defaultdict(set)
        for client in set(self.workloads.values()):
            # a lookup goes over UDP or, when the answer does not fit, TCP: the analyser allows
            # both to the cluster DNS (docs/semantics.md), and so does this matrix
            for protocol in ("UDP", "TCP"):
                reached[client] |= self.service_targets(dns, 53, protocol)
        for call in plan.calls:
            namespace = call.client.split("/")[0] if not call.outside_address else self.namespace
            parts = call.host.split(".")
            service = by_name.get((parts[1] if len(parts) > 1 else namespace, parts[0]))
            if service is not None:
                reached[call.client] |= self.service_targets(service, call.port, call.protocol)
        return reached

    def probe_targets(self, client_pod: Json, reached: set[Endpoint]) -> list[Target]:
        """Every Service port and pod port in the cluster that the client never called, and
        the outside world's server."""
        targets = []
        for service in self.services:
            address = service["spec"].get("clusterIP")
            if not address or address == "None":
                continue
            for port in service["spec"]["ports"]:
                key = (address, int(port["port"]), port.get("protocol", "TCP"))
                # A NetworkPolicy sees the pod and its target port, not the Service that led
                # there: a Service port whose every backend port the client called is as open
                # as the call (frontend-external:80 for whoever calls frontend:80).
                backends = self.service_targets(service, key[1], key[2]) - {key}
                if key in reached or (backends and backends <= reached):
                    continue
                name = f"{service['metadata']['namespace']}/{service['metadata']['name']}"
                targets.append(Target("service", name, *key))
        for pod in self.pods:
            if pod["metadata"]["uid"] == client_pod["metadata"]["uid"]:
                continue
            if pod["spec"].get("hostNetwork"):
                continue
            for container in pod["spec"]["containers"]:
                for port in container.get("ports") or []:
                    protocol = port.get("protocol", "TCP")
                    key = (pod["status"]["podIP"], int(port["containerPort"]), protocol)
                    if key not in reached:
                        name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
                        targets.append(Target("pod", name, *key))
        targets.append(Target("outside", OUTSIDE_SERVER, OUTSIDE_SERVER, 443, "TCP"))
        return targets


def _target_port(pod: Json, target: int | str, protocol: str) -> int | None:
    if isinstance(target, int):
        return target
    for container in pod["spec"]["containers"]:
        for port in container.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def probe_matrix(
    cluster: Cluster, clients: list[Json], targets: Mapping[str, list[Target]]
) -> dict[str, list[Json]]:
    """One connection attempt per (client pod, target), all client pods at once."""

    def probe(pod: Json) -> list[Json]:
        config = {"targets": [t.as_json() for t in targets[pod["metadata"]["name"]]]}
        results: list[Json] = cluster.agent(pod, "probe", config)
        return results

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        answers = pool.map(probe, clients)
    return {pod["metadata"]["name"]: answer for pod, answer in zip(clients, answers, strict=True)}


# ---------------------------------------------------------------------------------------------
# Checks on pods


def sidecar_of(pod: Json) -> Json | None:
    for container in pod["spec"].get("initContainers") or []:
        if container["name"] == SIDECAR:
            return cast(Json, container)
    return None


def assert_native_sidecar_running(pod: Json) -> None:
    name = pod["metadata"]["name"]
    sidecar = sidecar_of(pod)
    assert sidecar is not None, f"{name} has no capture sidecar"
    assert sidecar.get("restartPolicy") == "Always", f"{name}: the sidecar is not native"
    assert sidecar["image"] == CAPTURE_IMAGE
    statuses = {s["name"]: s for s in pod["status"].get("initContainerStatuses") or []}
    assert "running" in statuses[SIDECAR]["state"], f"{name}: {statuses[SIDECAR]['state']}"
    assert pod["status"]["phase"] == "Running", f"{name} is {pod['status']['phase']}"


def capture_bytes(cluster: Cluster, pod: Json) -> int:
    """The size of the pod's capture files, as its capture container (the sidecar, or the node
    capture's) sees them."""
    output = cluster.kubectl(
        "exec",
        "-n",
        pod["metadata"]["namespace"],
        pod["metadata"]["name"],
        "-c",
        SIDECAR,
        "--",
        "sh",
        "-c",
        "cat /captures/capture.pcap* | wc -c",
    )
    return int(output.strip())


def restarted_pods(cluster: Cluster) -> list[Json] | None:
    """The pods of every Deployment's newest ReplicaSet, once each has made all of them."""
    found = []
    replica_sets = cluster.get("replicasets", "-n", NAMESPACE)
    for deployment in cluster.get("deployments", "-n", NAMESPACE):
        owned = [
            rs
            for rs in replica_sets
            if any(
                o["uid"] == deployment["metadata"]["uid"]
                for o in rs["metadata"].get("ownerReferences") or []
            )
        ]
        newest = max(
            owned,
            key=lambda rs: int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]),
        )
        if newest["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1":
            return None  # not restarted yet
        template_hash = newest["metadata"]["labels"]["pod-template-hash"]
        pods = cluster.get("pods", "-n", NAMESPACE, "-l", f"pod-template-hash={template_hash}")
        if len(pods) < (newest["spec"].get("replicas") or 0):
            return None
        found += pods
    return found


def wait_for(what: str, ready: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def rollouts(cluster: Cluster, namespace: str = NAMESPACE, timeout: float = 300) -> None:
    for deployment in cluster.get("deployments", "-n", namespace):
        name = deployment["metadata"]["name"]
        cluster.node.wait_rollout(namespace, f"deployment/{name}", timeout=timeout)


# ---------------------------------------------------------------------------------------------
# The tests


def test_the_node_serves_names_and_services(node: Node) -> None:
    """Node Ready; CoreDNS answers through the kube-dns Service; a Service is reached through
    kube-proxy's rules (from inside the node's network namespace)."""
    assert node._node_ready()
    assert node.control_plane is not None
    assert node.resolve("kubernetes.default.svc.cluster.local") == (
        node.control_plane.kubernetes_service_ip
    )
    connect = (
        "import socket; socket.create_connection"
        f"(('{node.control_plane.kubernetes_service_ip}', 443), timeout=5).close()"
    )
    node.run_inside([sys.executable, "-c", connect])


def test_the_readme_journey_under_kube_router(node: Node, tmp_path: Path) -> None:
    cluster = Cluster(node)
    try:
        journey(cluster, tmp_path)
    except BaseException:
        diagnose(cluster)
        raise


def diagnose(cluster: Cluster) -> None:
    """What the cluster looked like when the journey failed: node-e2e-output/diagnostics/."""
    where = OUT / "diagnostics"
    where.mkdir(parents=True, exist_ok=True)
    for name, args in (
        ("pods.txt", ["get", "pods", "-A", "-o", "wide"]),
        ("events.txt", ["get", "events", "-A", "--sort-by=.lastTimestamp"]),
        ("node.txt", ["describe", "node"]),
        ("policies.txt", ["get", "networkpolicies", "-A", "-o", "yaml"]),
    ):
        result = cluster.node.kubectl(*args, check=False)
        (where / name).write_text(result.stdout + result.stderr)
    # What the enforcer made of the policies: its chains and address sets on the node.
    for name, command in (("iptables.txt", ["iptables-save"]), ("ipsets.txt", ["ipset", "list"])):
        result = cluster.node.run_inside(command, check=False)
        (where / name).write_text(result.stdout + result.stderr)
    for log in (cluster.node.workdir / "logs").glob("*.log"):
        lines = log.read_text(errors="replace").splitlines()[-300:]
        (where / log.name).write_text("\n".join(lines) + "\n")


def journey(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.node
    plan = read_plan("traffic.yaml", (EXAMPLE / "traffic.yaml").read_text())
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    report: Json = {"versions": versions(), "steps": {}}
    steps = report["steps"]

    # 2. The README's webhook steps, in a copy of the repository's files (they write the
    # overlay's generated/ inputs), as typed.
    workspace = tmp_path / "repo"
    for directory in ("certs", "manifests"):
        shutil.copytree(
            REPO / directory,
            workspace / directory,
            ignore=shutil.ignore_patterns("generated", "out", "__pycache__"),
        )
    cluster.run(
        sys.executable,
        "-m",
        "certs.make_certs",
        "--overlay",
        "manifests/overlays/self-signed",
        cwd=workspace,
    )
    cluster.run("kubectl", "apply", "-k", "manifests/overlays/self-signed", cwd=workspace)
    node.wait_rollout("netpol-sniffer", "deployment/netpol-sniffer-webhook")
    steps["webhook"] = "running from its image behind its Service"

    # 3. Opt in, deploy; every pod with the native sidecar; a Job completes with it.
    cluster.kubectl("label", "namespace", NAMESPACE, "netpol-sniffer.io/capture=enabled")
    deploy_application(cluster, tmp_path)
    rollouts(cluster)
    pods = cluster.pods()
    for pod in pods:
        assert_native_sidecar_running(pod)
    # the API server reached the webhook through its Service: that is how the sidecars got in
    steps["pods"] = sorted(p["metadata"]["name"] for p in pods)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "once",
                            "image": AGENT_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["python", "-c", "print('done')"],
                        }
                    ],
                }
            },
        },
    }
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(job))
    cluster.run(
        "kubectl",
        "wait",
        "-n",
        NAMESPACE,
        "--for=condition=complete",
        "job/once",
        "--timeout=180s",
        timeout=240,
    )
    [job_pod] = cluster.get("pods", "-n", NAMESPACE, "-l", "job-name=once")
    assert sidecar_of(job_pod) is not None and job_pod["status"]["phase"] == "Succeeded"
    # a finished pod's captures cannot be pulled: collect would list it as skipped
    cluster.kubectl("delete", "-n", NAMESPACE, "job/once", "--cascade=foreground")
    steps["job"] = "completed with the native sidecar"

    # 4. and 5. The plan's traffic inside collect's window; analyse, apply, enforce.
    observe_and_enforce(
        cluster,
        plan,
        pods=pods,
        capturers=pods,
        collect_options=[],
        load_balancer_ip=str(LOAD_BALANCER_RANGE[1]),
        out=OUT,
        report=report,
    )

    # 6. uninstall-sidecars: the namespace unlabelled, every Deployment restarted, and the new
    # pods, admitted while the webhook still runs, come without the sidecar.
    cluster.run(
        str(Path(sys.executable).parent / "netpol-sniffer"),
        "uninstall-sidecars",
        "--namespace",
        NAMESPACE,
    )
    labels = json.loads(cluster.kubectl("get", "namespace", NAMESPACE, "-o", "json"))
    assert "netpol-sniffer.io/capture" not in labels["metadata"].get("labels", {})
    wait_for("every Deployment's restarted pod", lambda: restarted_pods(cluster) is not None)
    restarted = restarted_pods(cluster) or []
    assert restarted and all(sidecar_of(p) is None for p in restarted), [
        p["metadata"]["name"] for p in restarted if sidecar_of(p) is not None
    ]
    # The install step undone (`kubectl delete -k`): on a 2-CPU node the webhook's requests are
    # what the last surge pods of the rolling restarts need (docs/e2e.md).
    cluster.run(
        "kubectl", "delete", "-k", "manifests/overlays/self-signed", "--wait=false", cwd=workspace
    )
    rollouts(cluster)
    wait_for("pods without the sidecar", lambda: all(sidecar_of(p) is None for p in cluster.pods()))
    steps["uninstall"] = "pods back without the sidecar"
    (OUT / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def observe_and_enforce(
    cluster: Cluster,
    plan: TrafficPlan,
    *,
    pods: list[Json],
    capturers: list[Json],
    collect_options: Sequence[str],
    load_balancer_ip: str,
    out: Path,
    report: Json,
    label: str = "node-e2e",
) -> None:
    """The plan's traffic inside collect's window (``collect_options`` added to its command
    line), truth.json, analyse, the probe matrix before the policies, the policies applied and
    enforced, the plan and the matrix again; the verdict in ``report``, ``out`` and one summary
    line starting with ``label``. ``pods``: the application's pods (in one namespace);
    ``capturers``: the pods whose captures must grow (the sidecars', or the node capture's)."""
    namespace = pods[0]["metadata"]["namespace"]
    replica_sets = {
        f"{rs['metadata']['namespace']}/{rs['metadata']['name']}": rs
        for rs in cluster.get("replicasets", "-A")
    }
    all_pods = [p for p in cluster.get("pods", "-A") if "deletionTimestamp" not in p["metadata"]]
    workloads = {p["metadata"]["name"]: workload_of(p, replica_sets) for p in all_pods}
    lb_ip = load_balancer_ip
    cluster.kubectl(
        "patch",
        "service",
        "frontend-external",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}}),
    )
    load_balancers = {"frontend-external": lb_ip}
    before = {p["metadata"]["name"]: capture_bytes(cluster, p) for p in capturers}
    bundle = out / "bundle"
    collect = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "netpol-sniffer"),
            "--debug",
            "collect",
            *collect_options,
            "--namespace",
            namespace,
            "--out",
            str(bundle),
            "--duration",
            str(plan.duration + 2 * COLLECT_MARGIN_S),
        ],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(COLLECT_MARGIN_S)
    played = play(cluster, plan, pods, workloads, load_balancers)
    seen = {
        p["metadata"]["name"]: cluster.exec_json(p, "python", "-m", "node_agent", "seen")
        for p in pods
    }
    after = {p["metadata"]["name"]: capture_bytes(cluster, p) for p in capturers}
    collect_out, collect_err = collect.communicate(timeout=900)
    (out / "collect.log").write_text(collect_out + collect_err)
    protocols = sorted(set(re.findall(r"exec \S+: protocol (\S+)", collect_err)))
    report["exec_protocol"] = protocols[0] if len(protocols) == 1 else protocols
    report["capture_growth"] = {name: after[name] - before[name] for name in before}
    report["steps"]["collect"] = f"exit {collect.returncode}"
    (out / "plan-run.json").write_text(json.dumps(played.totals, indent=2))

    # truth.json: the agents' answers, and the non-pod callers the servers answered (the kubelet's
    # probes, the LoadBalancer's masqueraded clients)
    pod_ips = {p["status"].get("podIP") for p in all_pods}
    outcomes = list(played.outcomes)
    for pod in pods:
        for peer, port, protocol, _count in seen[pod["metadata"]["name"]]:
            if peer not in pod_ips:
                outcomes.append(
                    bundling.CallOutcome(
                        client=f"ip:{peer}",
                        protocol=protocol,
                        ok=1,
                        dns_answered=False,
                        servers=((workloads[pod["metadata"]["name"]], port, peer),),
                    )
                )
    truth = bundling.truth_flows(outcomes)
    if bundle.is_dir():
        (bundle / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")

    # 5. analyse, apply, enforce.
    policies = out / "policies"
    analysed = cluster.run(
        str(Path(sys.executable).parent / "netpol-sniffer"),
        "analyse",
        str(bundle),
        "--out",
        str(policies),
        check=False,
    )
    (out / "analyse.log").write_text(analysed.stdout + analysed.stderr)
    clients = pods
    topology = Topology(all_pods, cluster.get("services", "-A"), workloads, namespace)
    reached = topology.called(plan)
    targets = {
        p["metadata"]["name"]: topology.probe_targets(p, reached[workloads[p["metadata"]["name"]]])
        for p in clients
    }
    baseline = probe_matrix(cluster, clients, targets)
    cluster.run("kubectl", "apply", "-k", str(policies))
    addresses = [p["status"]["podIP"] for p in clients]
    wait_for(
        "kube-router to program the policies",
        lambda: _policies_programmed(cluster.node, addresses),
    )
    enforced = play(cluster, plan, pods, workloads, load_balancers)
    (out / "plan-enforced.json").write_text(json.dumps(enforced.totals, indent=2))
    matrix = probe_matrix(cluster, clients, targets)
    planned = enforced.allowed(plan)
    unplanned = []
    unanswered = []
    for client_pod in clients:
        name = client_pod["metadata"]["name"]
        for before_probe, after_probe in zip(baseline[name], matrix[name], strict=True):
            entry = {
                "client": workloads[name],
                "pod": name,
                **after_probe,
                "baseline": before_probe["outcome"],
            }
            if before_probe["outcome"] != "connected":
                unanswered.append(entry)
            else:
                unplanned.append(entry)
    blocked = [e for e in unplanned if e["outcome"] != "connected"]
    report["planned"] = {"allowed": sum(planned), "total": len(planned)}
    report["unplanned"] = {"blocked": len(blocked), "total": len(unplanned)}
    report["planned_calls"] = [
        {**total, "allowed": verdict}
        for total, verdict in zip(enforced.totals, planned, strict=True)
    ]
    report["unplanned_allowed"] = [e for e in unplanned if e["outcome"] == "connected"]
    report["unanswered_before_policies"] = unanswered
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    summary = (
        f"{label}: planned {report['planned']['allowed']}/{report['planned']['total']} allowed, "
        f"unplanned {report['unplanned']['blocked']}/{report['unplanned']['total']} blocked"
    )
    SUMMARY_LINES.append(summary)
    (out / "summary.txt").write_text(summary + "\n")
    assert collect.returncode == 0, collect_err[-3000:]
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    assert all(growth > 0 for growth in report["capture_growth"].values()), report["capture_growth"]
    denied = {f"{c['from']} → {c['to']}" for c in report["planned_calls"] if not c["allowed"]}
    assert not denied, report["planned_calls"]
    assert len(blocked) == len(unplanned), report["unplanned_allowed"]


RESTRICTED = "bank"


def test_node_captures_in_a_restricted_namespace(node: Node, tmp_path: Path) -> None:
    cluster = Cluster(node)
    try:
        restricted_journey(cluster, tmp_path)
    except BaseException:
        diagnose(cluster)
        raise


def restricted_journey(cluster: Cluster, tmp_path: Path) -> None:
    """The node capture instead of sidecars, for a namespace that enforces Pod Security
    ``restricted``: the application's pods are admitted as they are (no sidecar, nothing
    restarted), ``collect --node-captures`` pulls the node's capture, ``analyse`` writes the
    policies, and under kube-router the planned calls pass and the probe matrix is blocked."""
    node = cluster.node
    text = (EXAMPLE / "traffic.yaml").read_text().replace("default/", f"{RESTRICTED}/")
    plan = read_plan("traffic.yaml", text)
    out = OUT / "node-captures"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    report: Json = {"versions": versions(), "steps": {}}
    steps = report["steps"]
    # The README journey's application, if it ran: a second copy would not fit on two CPUs.
    cluster.kubectl("delete", "deployments,networkpolicies", "--all", "-n", NAMESPACE)
    wait_for("the first application's pods to go", lambda: not cluster.pods())

    # A namespace that enforces restricted, opted in: the sidecar would be refused there.
    cluster.kubectl("create", "namespace", RESTRICTED)
    cluster.kubectl(
        "label",
        "namespace",
        RESTRICTED,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        "netpol-sniffer.io/capture=enabled",
    )
    node.control_plane.wait_for_default_service_account(RESTRICTED)  # type: ignore[union-attr]
    with_net_raw = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "with-net-raw"},
        "spec": {
            "containers": [
                {
                    "name": "capture",
                    "image": CAPTURE_IMAGE,
                    "securityContext": {"capabilities": {"add": ["NET_RAW"]}},
                }
            ]
        },
    }
    refused = node.kubectl(
        "apply", "-n", RESTRICTED, "-f", "-", stdin=json.dumps(with_net_raw), check=False
    )
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr
    steps["restricted"] = "a pod with NET_RAW is refused"

    # The node capture, its pod networks set by an overlay, as a user sets them.
    overlay = tmp_path / "node-capture"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(REPO / "manifests" / "node-capture", overlay)],
                "configMapGenerator": [
                    {
                        "name": "netpol-sniffer-node-capture",
                        "namespace": NODE_CAPTURE_NAMESPACE,
                        "behavior": "merge",
                        "literals": [f"NETPOL_SNIFFER_POD_NETWORKS={CLUSTER_CIDR}"],
                    }
                ],
            }
        )
    )
    cluster.run("kubectl", "apply", "-k", str(overlay))
    node.wait_rollout(NODE_CAPTURE_NAMESPACE, "daemonset/netpol-sniffer-node-capture")
    capturers = cluster.pods(NODE_CAPTURE_NAMESPACE)
    assert len(capturers) == 1 and capturers[0]["spec"]["hostNetwork"] is True
    steps["node capture"] = "running on the node"

    # The application, admitted as it is: no sidecar, every pod running.
    deploy_application(cluster, tmp_path, namespace=RESTRICTED, restricted=True)
    rollouts(cluster, RESTRICTED)
    pods = cluster.pods(RESTRICTED)
    names = {
        container["name"]
        for pod in pods
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
    }
    assert SIDECAR not in names and all(p["status"]["phase"] == "Running" for p in pods)
    steps["pods"] = sorted(p["metadata"]["name"] for p in pods)

    observe_and_enforce(
        cluster,
        plan,
        pods=pods,
        capturers=capturers,
        collect_options=["--node-captures"],
        load_balancer_ip=str(LOAD_BALANCER_RANGE[2]),
        out=out,
        report=report,
        label="node-e2e (node capture, restricted namespace)",
    )
    node_name = capturers[0]["spec"]["nodeName"]
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    assert {entry.get("node") for entry in bundle["captures"]} == {node_name}
    coverage = (out / "policies" / "report.md").read_text()
    for pod in pods:
        assert f"| {RESTRICTED}/{pod['metadata']['name']} | node {node_name} |" in coverage


def _policies_programmed(node: Node, addresses: Sequence[str]) -> bool:
    """Whether kube-router has programmed the policies for every one of these pods: its policy
    chains exist, and each pod's traffic is sent to its firewall chain from INPUT (to the node:
    its API server, its kubelet), FORWARD (to other pods) and OUTPUT. kube-router adds them over
    several syncs; probing before the last one lets a call to the node through."""
    rules = node.run_inside(["iptables", "-S"], check=False).stdout.splitlines()
    if not any("KUBE-NWPLCY-" in rule for rule in rules):
        return False
    for address in addresses:
        for chain in ("KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT"):
            if not any(
                rule.startswith(f"-A {chain} ")
                and f"-s {address}/32" in rule
                and "-j KUBE-POD-FW-" in rule
                for rule in rules
            ):
                return False
    return True


def test_a_stopped_node_leaves_nothing_behind(node: Node) -> None:
    """A second node beside the first, a pod on it, its mount namespace's holder killed first (as
    a signal to the whole process group does): stop() still leaves no process, network
    namespace, host interface, cgroup or directory behind."""
    second = Node(node.built).start()
    try:
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "idle"},
            "spec": {
                "selector": {"matchLabels": {"app": "idle"}},
                "template": {
                    "metadata": {"labels": {"app": "idle"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "idle",
                                "image": AGENT_IMAGE,
                                "imagePullPolicy": "IfNotPresent",
                            }
                        ]
                    },
                },
            },
        }
        second.kubectl("apply", "-f", "-", stdin=json.dumps(deployment))
        second.wait_rollout("default", "deployment/idle")
        mount_ns = second._mount_ns_id
        assert second._holder is not None
        second._holder.kill()
    finally:
        second.stop()
    leftovers = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(proc / "ns" / "mnt") == mount_ns or str(second.workdir) in (
                proc / "cmdline"
            ).read_text(errors="replace"):
                leftovers.append(proc.name)
    assert leftovers == []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert second.netns not in namespaces and second.outside_netns not in namespaces
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert second.host_veth not in links
    assert not any(Path("/sys/fs/cgroup").glob(f"*{second.cgroup_root}"))
    assert not second.workdir.exists()
