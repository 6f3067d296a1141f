"""uninstall-sidecars: unlabel a namespace and roll the workloads whose pods carry the sidecar,
so new pods come without it."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from collector.collecting import sidecar_of
from collector.history import controller, utc_now
from collector.kinds import NAMESPACES, PODS, REPLICA_SETS, ROLLABLE_KINDS, Cluster, KubeObject
from kernel.names import CAPTURE_LABEL

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


@dataclass(frozen=True, slots=True)
class UninstallPlan:
    """What removing the sidecars from one namespace takes."""

    namespace: str
    unlabel: bool  # the opt-in label is still there
    restarts: tuple[tuple[str, str], ...]  # (kind, name) of workloads to roll
    manual: tuple[tuple[str, str], ...]  # (pod, what the user must do)


def _workload_of(cluster: Cluster, pod: KubeObject) -> tuple[str, str] | str:
    """The rollable workload owning ``pod``, or what the user must do instead."""
    namespace = pod["metadata"]["namespace"]
    owner = controller(pod)
    if owner is None:
        return "a bare pod: delete it and create it again"
    if owner.kind == "ReplicaSet":
        replica_set = cluster.get(REPLICA_SETS, owner.name, namespace=namespace)
        parent = controller(replica_set)
        if parent is None or parent.kind != "Deployment":
            return f"owned by ReplicaSet {owner.name} without a Deployment: delete the pod"
        owner = parent
    if owner.kind in ROLLABLE_KINDS:
        return (owner.kind, owner.name)
    if owner.kind == "Job":
        return f"a pod of Job {owner.name}: it ends on its own; later Jobs come without it"
    return f"owned by {owner.kind} {owner.name}: restart that owner"


def plan_uninstall(cluster: Cluster, namespace: str) -> UninstallPlan:
    labels = cluster.get(NAMESPACES, namespace)["metadata"].get("labels") or {}
    restarts: set[tuple[str, str]] = set()
    manual: list[tuple[str, str]] = []
    for pod in cluster.list(PODS, namespace=namespace).get("items") or []:
        if sidecar_of(pod) is None:
            continue
        workload = _workload_of(cluster, pod)
        if isinstance(workload, tuple):
            restarts.add(workload)
        else:
            manual.append((pod["metadata"]["name"], workload))
    return UninstallPlan(
        namespace=namespace,
        unlabel=CAPTURE_LABEL in labels,
        restarts=tuple(sorted(restarts)),
        manual=tuple(sorted(manual)),
    )


def apply_uninstall(
    cluster: Cluster, plan: UninstallPlan, *, now: datetime.datetime | None = None
) -> None:
    """Unlabel first (so restarted pods are not injected again), then roll the workloads."""
    if plan.unlabel:
        cluster.patch(NAMESPACES, plan.namespace, {"metadata": {"labels": {CAPTURE_LABEL: None}}})
    stamp = (now or utc_now()).astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    restart = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
    for kind, name in plan.restarts:
        cluster.patch(ROLLABLE_KINDS[kind], name, restart, namespace=plan.namespace)
