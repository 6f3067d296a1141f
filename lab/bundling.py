"""The lab's bundle: ``snapshot.json`` as an API server would return it, ``pod-ips.jsonl``,
``bundle.json``, ``truth.json`` (the flows the plan really made) and ``lab-report.json``.

Object and truth construction is pure (``snapshot``, ``truth_flows``, ``pod_ip_event``); only
``write_bundle`` touches files.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch

from kernel.bundles import (
    POD_IPS,
    SNAPSHOT_FILE,
    Manifest,
    Window,
    entries_for_layout,
    write_json,
    write_manifest,
)
from kernel.capture import CaptureMode
from kernel.names import CAPTURE_ENABLED, CAPTURE_LABEL
from lab.layouts import (
    DNS_WORKLOAD,
    NODE_IPV4,
    NODE_IPV6,
    NODE_NAME,
    POD_CIDR_V4,
    POD_CIDR_V6,
    LabPod,
    LabService,
    Layout,
    endpoints,
    make_uid,
)
from lab.manifests import WorkloadSpec, pod_template
from lab.plans import TrafficPlan
from webhook.capture import CaptureOptions
from webhook.mutations import Skip, plan_injection
from webhook.settings import WebhookSettings

JsonObject = dict[str, Any]
SYSTEM_NAMESPACES = ("default", "kube-system")
# The lab's own files beside the bundle's: what really happened, and how the plan went.
TRUTH = "truth.json"
LAB_REPORT = "lab-report.json"


def timestamp(epoch: float, *, precise: bool = False) -> str:
    """RFC 3339 in UTC: whole seconds as Kubernetes writes them, microseconds for event logs."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{text}.{int(epoch % 1 * 1_000_000):06d}Z" if precise else f"{text}Z"


def _metadata(
    name: str,
    *,
    namespace: str | None,
    uid: str,
    created: float,
    labels: Iterable[tuple[str, str]] = (),
    **extra: Any,
) -> JsonObject:
    metadata: JsonObject = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata |= {"uid": uid, "resourceVersion": "1", "creationTimestamp": timestamp(created)}
    if labels:
        metadata["labels"] = dict(labels)
    metadata.update(extra)
    return metadata


def _owner_reference(kind: str, name: str, uid: str) -> JsonObject:
    api = "v1" if kind == "Service" else "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _template_spec(workload: WorkloadSpec) -> JsonObject:
    if workload.kind == "Pod":
        return copy.deepcopy(workload.manifest.get("spec") or {})
    return copy.deepcopy(pod_template(workload.kind, workload.manifest).get("spec") or {})


def pod_object(pod: LabPod, *, ready_since: float) -> JsonObject:
    spec = _template_spec(pod.workload)
    spec["nodeName"] = NODE_NAME
    if pod.hostname:
        spec["hostname"] = pod.hostname
    if pod.subdomain:
        spec["subdomain"] = pod.subdomain
    extra: JsonObject = {}
    if pod.owner is not None:
        extra["ownerReferences"] = [_owner_reference(pod.owner.kind, pod.owner.name, pod.owner.uid)]
        if pod.workload.kind != "StatefulSet":
            extra["generateName"] = pod.name[: pod.name.rfind("-") + 1]
    source = (
        pod.workload.manifest
        if pod.workload.kind == "Pod"
        else pod_template(pod.workload.kind, pod.workload.manifest)
    )
    annotations = (source.get("metadata") or {}).get("annotations")
    if annotations:
        extra["annotations"] = dict(annotations)
    node_ips = [NODE_IPV4, NODE_IPV6] if len(pod.ips) > 1 else [NODE_IPV4]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(
            pod.name,
            namespace=pod.namespace,
            uid=pod.uid,
            created=pod.created,
            labels=pod.labels,
            **extra,
        ),
        "spec": spec,
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": timestamp(ready_since)}
            ],
            "hostIP": NODE_IPV4,
            "hostIPs": [{"ip": ip} for ip in node_ips],
            "podIP": pod.ips[0],
            "podIPs": [{"ip": ip} for ip in pod.ips],
            "startTime": timestamp(pod.created),
            "qosClass": "BestEffort",
        },
    }


def _job(layout: Layout, workload: WorkloadSpec, manifest: JsonObject, running: int) -> JsonObject:
    """A Job as the API server shows it: its generated selector and the labels it gives pods."""
    uid = manifest["metadata"]["uid"]
    name = manifest["metadata"]["name"]
    labels = dict(workload.template_labels) | {
        "batch.kubernetes.io/controller-uid": uid,
        "controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "job-name": name,
    }
    spec = manifest.setdefault("spec", {})
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    spec.setdefault("template", {}).setdefault("metadata", {})["labels"] = labels
    manifest["status"] = {"active": running, "startTime": timestamp(layout.created)}
    return manifest


def _workload_objects(layout: Layout, workload: WorkloadSpec) -> list[JsonObject]:
    if workload.kind == "Pod":
        return []
    manifest = copy.deepcopy(workload.manifest)
    manifest.pop("status", None)
    running = len(layout.pods_of(workload.ref))
    uid = layout.workload_uid(workload)
    metadata = manifest.get("metadata") or {}
    manifest["metadata"] = _metadata(
        workload.name,
        namespace=workload.namespace,
        uid=uid,
        created=layout.created,
        labels=sorted((metadata.get("labels") or {}).items()),
        generation=1,
    )
    if metadata.get("annotations"):
        manifest["metadata"]["annotations"] = metadata["annotations"]
    spec = manifest.setdefault("spec", {})
    if workload.kind == "Job":
        return [_job(layout, workload, manifest, running)]
    if workload.kind == "CronJob":
        job = layout.scheduled_job(workload)
        template = copy.deepcopy(spec.get("jobTemplate") or {})
        job_manifest = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _metadata(
                job.name,
                namespace=workload.namespace,
                uid=job.uid,
                created=layout.created,
                labels=sorted(((template.get("metadata") or {}).get("labels") or {}).items()),
                ownerReferences=[_owner_reference("CronJob", workload.name, uid)],
            ),
            "spec": template.get("spec") or {},
        }
        manifest["status"] = {
            "active": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job.name,
                    "namespace": workload.namespace,
                    "uid": job.uid,
                }
            ],
            "lastScheduleTime": timestamp(layout.created),
        }
        return [manifest, _job(layout, workload, job_manifest, running)]
    if workload.kind != "DaemonSet":
        spec["replicas"] = workload.replicas
    status_key = "numberReady" if workload.kind == "DaemonSet" else "readyReplicas"
    manifest["status"] = {"observedGeneration": 1, status_key: running}
    if workload.kind == "DaemonSet":
        manifest["status"] |= {"currentNumberScheduled": running, "desiredNumberScheduled": 1}
    else:
        manifest["status"]["replicas"] = running
    if workload.kind != "Deployment":
        return [manifest]
    pod_hash = layout.replica_set_hashes[workload.ref]
    owner = layout.owner_of(workload)
    assert owner is not None
    template = copy.deepcopy(spec.get("template") or {})
    template.setdefault("metadata", {})["labels"] = dict(workload.template_labels) | {
        "pod-template-hash": pod_hash
    }
    selector = copy.deepcopy(spec.get("selector") or {})
    selector["matchLabels"] = dict(selector.get("matchLabels") or {}) | {
        "pod-template-hash": pod_hash
    }
    replica_set = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": _metadata(
            owner.name,
            namespace=workload.namespace,
            uid=owner.uid,
            created=layout.created,
            labels=sorted(
                dict(workload.template_labels, **{"pod-template-hash": pod_hash}).items()
            ),
            annotations={"deployment.kubernetes.io/revision": "1"},
            ownerReferences=[_owner_reference("Deployment", workload.name, uid)],
        ),
        "spec": {"replicas": workload.replicas, "selector": selector, "template": template},
        "status": {"replicas": running, "readyReplicas": running, "observedGeneration": 1},
    }
    return [manifest, replica_set]


def _service_object(layout: Layout, service: LabService, node_port: int) -> JsonObject:
    manifest = copy.deepcopy(service.spec.manifest)
    metadata = manifest.get("metadata") or {}
    manifest["metadata"] = _metadata(
        service.spec.name,
        namespace=service.spec.namespace,
        uid=make_uid(layout.plan.seed, "svc", service.spec.namespace, service.spec.name),
        created=layout.created,
        labels=sorted((metadata.get("labels") or {}).items()),
    )
    spec = manifest.setdefault("spec", {})
    spec["type"] = service.spec.type
    families = ["IPv4", "IPv6"] if layout.dual_stack else ["IPv4"]
    spec["ipFamilies"] = families
    spec["ipFamilyPolicy"] = "PreferDualStack" if layout.dual_stack else "SingleStack"
    spec["clusterIP"] = service.cluster_ips[0] if service.cluster_ips else "None"
    spec["clusterIPs"] = list(service.cluster_ips) or ["None"]
    spec["sessionAffinity"] = "None"
    ports = []
    for number, port in enumerate(service.spec.ports):
        entry: JsonObject = {
            "port": port.port,
            "protocol": port.protocol,
            "targetPort": port.target_port,
        }
        if port.name:
            entry["name"] = port.name
        if service.spec.type in ("NodePort", "LoadBalancer"):
            entry["nodePort"] = node_port + number
        ports.append(entry)
    spec["ports"] = ports
    if service.spec.type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = service.external_policy
    ingress = [{"ip": ip, "ipMode": "VIP"} for ip in service.load_balancer_ips]
    manifest["status"] = {"loadBalancer": {"ingress": ingress} if ingress else {}}
    return manifest


def _endpoint_slices(layout: Layout, service: LabService) -> list[JsonObject]:
    if service.spec.selector is None:
        return []
    spec = service.spec
    families = [("IPv4", False), ("IPv6", True)] if layout.dual_stack else [("IPv4", False)]
    # Pods that resolve the Service's ports to the same numbers share a slice.
    by_ports: dict[tuple[tuple[str, int, str], ...], list[LabPod]] = {}
    for pod in sorted(
        {e.pod.key: e.pod for e in endpoints(service, layout.pods)}.values(), key=lambda p: p.name
    ):
        mapping = tuple(
            sorted(
                (port.name or "", e.target_port, e.protocol)
                for e in endpoints(service, [pod])
                for port in spec.ports
                if port.port == e.service_port and port.protocol == e.protocol
            )
        )
        by_ports.setdefault(mapping, []).append(pod)
    slices = []
    for family, v6 in families:
        for mapping, pods in sorted(by_ports.items()):
            name = f"{spec.name}-{make_uid(spec.namespace, spec.name, family, mapping)[:5]}"
            slices.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": _metadata(
                        name,
                        namespace=spec.namespace,
                        uid=make_uid("slice", spec.namespace, name),
                        created=layout.created,
                        labels=[
                            (
                                "endpointslice.kubernetes.io/managed-by",
                                "endpointslice-controller.k8s.io",
                            ),
                            ("kubernetes.io/service-name", spec.name),
                        ],
                        generateName=f"{spec.name}-",
                        ownerReferences=[
                            _owner_reference(
                                "Service",
                                spec.name,
                                make_uid(layout.plan.seed, "svc", spec.namespace, spec.name),
                            )
                        ],
                    ),
                    "addressType": family,
                    "endpoints": [
                        {
                            "addresses": [ip for ip in pod.ips if (":" in ip) == v6],
                            "conditions": {"ready": True, "serving": True, "terminating": False},
                            "nodeName": NODE_NAME,
                            "targetRef": {
                                "kind": "Pod",
                                "name": pod.name,
                                "namespace": pod.namespace,
                                "uid": pod.uid,
                            },
                        }
                        for pod in pods
                    ],
                    "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in mapping],
                }
            )
    return slices


def captured_namespaces(layout: Layout) -> list[str]:
    """The namespaces of the user's manifests: the ones labelled for capture."""
    return sorted({w.namespace for w in layout.cluster.workloads} - {"kube-system"})


def injected(pod: JsonObject, *, capture_mode: str) -> JsonObject:
    """The pod as the webhook admits it: its own injection patch applied (sidecar, volumes,
    status annotation)."""
    namespace = pod["metadata"]["namespace"]
    settings = WebhookSettings(capture=CaptureOptions(mode=CaptureMode(capture_mode)))
    plan = plan_injection(pod, namespace=namespace, settings=settings)
    if isinstance(plan, Skip):
        return pod
    patched: JsonObject = jsonpatch.apply_patch(pod, list(plan.patch))
    return patched


def snapshot(
    layout: Layout, *, capture_mode: str = "handshake", sidecars: bool = True
) -> JsonObject:
    """A ``kubectl get ... -A -o json`` List of the cluster as it is now; pods of the captured
    namespaces carry the webhook's sidecar (unless ``sidecars`` is False: the node's capture
    covers them, and no pod was changed)."""
    captured = set(captured_namespaces(layout))
    labels_of = dict(layout.cluster.namespaces)
    items: list[JsonObject] = []
    for name in sorted(set(labels_of) | set(SYSTEM_NAMESPACES)):
        labels = dict(labels_of.get(name, ())) | {"kubernetes.io/metadata.name": name}
        if name in captured:
            labels[CAPTURE_LABEL] = CAPTURE_ENABLED
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": _metadata(
                    name,
                    namespace=None,
                    uid=make_uid("ns", name),
                    created=layout.created,
                    labels=sorted(labels.items()),
                ),
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }
        )
    pod_cidrs = [str(POD_CIDR_V4), str(POD_CIDR_V6)] if layout.dual_stack else [str(POD_CIDR_V4)]
    addresses = [{"type": "InternalIP", "address": NODE_IPV4}]
    if layout.dual_stack:
        addresses.append({"type": "InternalIP", "address": NODE_IPV6})
    items.append(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": _metadata(
                NODE_NAME,
                namespace=None,
                uid=make_uid("node", NODE_NAME),
                created=layout.created,
                labels=[
                    ("kubernetes.io/arch", "amd64"),
                    ("kubernetes.io/hostname", NODE_NAME),
                    ("kubernetes.io/os", "linux"),
                ],
            ),
            "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs},
            "status": {"addresses": [*addresses, {"type": "Hostname", "address": NODE_NAME}]},
        }
    )
    for pod in sorted(layout.pods, key=lambda p: (p.namespace, p.name)):
        item = pod_object(pod, ready_since=pod.created)
        inject = sidecars and pod.namespace in captured
        items.append(injected(item, capture_mode=capture_mode) if inject else item)
    node_port = 30080
    for service in layout.services:
        items.append(_service_object(layout, service, node_port))
        node_port += len(service.spec.ports)
    for service in layout.services:
        items += _endpoint_slices(layout, service)
    objects = [o for w in layout.cluster.workloads for o in _workload_objects(layout, w)]
    for kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob"):
        items += [o for o in objects if o["kind"] == kind]
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


def pod_ip_event(pod: LabPod, event: str, at: float) -> JsonObject:
    """One line of pod-ips.jsonl, as ``collect`` writes it: ``ADDED`` with the pod's IPs, or
    ``DELETED`` with the IPs it released."""
    return {
        "time": timestamp(at, precise=True),
        "event": event,
        "namespace": pod.namespace,
        "pod": pod.name,
        "uid": pod.uid,
        "ips": list(pod.ips),
        "labels": dict(pod.labels),
        "owner": None if pod.owner is None else {"kind": pod.owner.kind, "name": pod.owner.name},
        "node": NODE_NAME,
    }


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What one pod's agent reported for one call of the plan."""

    client: str  # the workload NS/Kind/name, or ip:ADDRESS for a client outside
    protocol: str
    ok: int
    dns_answered: bool
    servers: tuple[tuple[str, int, str], ...]  # (server, target port, client address it saw)


def tally_calls(
    plan: TrafficPlan,
    results: Iterable[Mapping[str, Any]],
    *,
    server_name: Callable[[str], str] = str,
) -> tuple[list[JsonObject], list[CallOutcome]]:
    """The agents' results summed per call of the plan (the totals a run reports, servers and
    errors sorted) and one CallOutcome per result (what ``truth_flows`` reads); ``server_name``
    turns the server an agent saw into the name the truth uses."""
    totals: list[dict[str, Any]] = [
        {
            "from": call.client,
            "to": f"{call.host}:{call.port}",
            "protocol": call.protocol,
            "expect": str(call.expect),
            "attempts": 0,
            "ok": 0,
            "refused": 0,
            "nxdomain": 0,
            "failed": 0,
            "servers": set(),
            "errors": set(),
        }
        for call in plan.calls
    ]
    outcomes = []
    for result in results:
        call = plan.calls[result["id"]]
        total = totals[result["id"]]
        for key in ("attempts", "ok", "refused", "nxdomain", "failed"):
            total[key] += result[key]
        servers = tuple(
            (server_name(str(server)), int(port), str(peer))
            for server, port, peer in result["servers"]
        )
        total["servers"].update(f"{s}:{p}" for s, p, _ in servers)
        if result["last_error"]:
            total["errors"].add(result["last_error"])
        outcomes.append(
            CallOutcome(
                client=call.client,
                protocol=call.protocol,
                ok=result["ok"],
                dns_answered=result["dns_answered"],
                servers=servers,
            )
        )
    for total in totals:
        total["servers"] = sorted(total["servers"])
        total["errors"] = sorted(total["errors"])
    return totals, outcomes


def truth_flows(outcomes: Iterable[CallOutcome]) -> list[JsonObject]:
    """The flows that really happened, one entry per (client, server, protocol, target port),
    DNS lookups to the cluster DNS included; sorted. A client outside the cluster is the address
    the server saw (the node's, when a LoadBalancer with externalTrafficPolicy Cluster hid it)."""
    flows: set[tuple[str, str, str, int]] = set()
    for outcome in outcomes:
        if outcome.dns_answered:
            flows.add((outcome.client, DNS_WORKLOAD, "UDP", 53))
        if outcome.ok:
            for server, port, peer in outcome.servers:
                client = f"ip:{peer}" if outcome.client.startswith("ip:") else outcome.client
                flows.add((client, server, outcome.protocol, port))
    return [{"client": c, "server": s, "protocol": p, "port": n} for c, s, p, n in sorted(flows)]


def write_bundle(
    out: Path,
    *,
    layout: Layout,
    window: tuple[float, float],
    capture_mode: str,
    sidecars: bool = True,
    pod_events: Sequence[JsonObject],
    truth: list[JsonObject],
    report: JsonObject,
) -> None:
    """Everything but the captures themselves (already under ``out/captures``). ``sidecars``:
    whether the pods carry the capture sidecar (False: the node's capture took their traffic)."""
    write_manifest(
        out,
        Manifest(
            producer="lab",
            capture_mode=capture_mode,
            window=Window(*window),
            captures=tuple(entries_for_layout(out)),
        ),
    )
    write_json(out / SNAPSHOT_FILE, snapshot(layout, capture_mode=capture_mode, sidecars=sidecars))
    (out / POD_IPS).write_text(
        "".join(json.dumps(e, sort_keys=True) + "\n" for e in pod_events), encoding="utf-8"
    )
    write_json(out / TRUTH, truth)
    write_json(out / LAB_REPORT, report)
