"""Workloads and their selectors: the workload a pod belongs to (its owners walked up to a
Deployment, StatefulSet, DaemonSet, Job, CronJob, or the bare pod), and the selector its policy
and every rule naming it use: its own, minus volatile labels, narrowed when that selects other
workloads' pods too (:func:`exclusive_selector`).

Pure: no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from analyser.claims import Claims, PodRecord
from analyser.objects import Controller, KubeObject, OwnerReference
from analyser.selectors import VOLATILE_LABELS, LabelRequirement, LabelSelector
from analyser.snapshot import Snapshot

# Controllers with a pod template: the pods they would make count as theirs even before they exist.
_TEMPLATE_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob")


@dataclass(frozen=True, order=True, slots=True)
class WorkloadRef:
    """``NS/Kind/name``; Kind is Deployment, StatefulSet, DaemonSet, Job, CronJob or Pod."""

    namespace: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload and the selector its policy uses (its own selector minus volatile labels, or
    narrower: see :func:`exclusive_selector`)."""

    ref: WorkloadRef
    selector: LabelSelector
    pod_labels: tuple[tuple[str, str], ...] = ()
    host_network: bool = False  # its pods use the node's addresses (peers see the node IP)
    # Its own selector, when that selected more than its pods and ``selector`` is narrower.
    narrowed_from: LabelSelector | None = None
    # Other workloads (``NS/Kind/name``) whose pods ``selector`` selects too: no selector selects
    # only its pods, so it gets no policy (and as a peer, admits those pods too).
    also_selects: tuple[str, ...] = ()


def _without_volatile(labels: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels if k not in VOLATILE_LABELS))


@dataclass(frozen=True, slots=True)
class SelectorChoice:
    """The selector a workload's policy (and every rule naming it) uses; see
    :func:`exclusive_selector`."""

    selector: LabelSelector
    narrowed_from: LabelSelector | None = None
    also_selects: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Selected:
    """A pod or pod template of another workload that a selector selects."""

    workload: str  # NS/Kind/name
    labels: Mapping[str, str]


# The pods and pod templates of other workloads (of the workload's namespace) a selector selects.
SelectedElsewhere = Callable[[LabelSelector], Sequence[Selected]]


def exclusive_selector(
    own: LabelSelector,
    pod_labels: tuple[tuple[str, str], ...],
    own_pods: Sequence[Mapping[str, str]],
    selected_elsewhere: SelectedElsewhere,
) -> SelectorChoice:
    """The selector that selects the workload's pods and nothing else, the first of:

    1. its ``own`` (the snapshot's, minus volatile labels), when it is valid, names a label value
       (not ``app`` Exists alone: every future pod with the key) and selects no pod or pod
       template of another workload of its namespace (``selected_elsewhere``);
    2. its pod template's labels (``pod_labels``, minus volatile ones), when those select no other
       workload's pod or template;
    3. those labels plus ``KEY DoesNotExist`` for a key that each other workload's pod or template
       they select carries and the workload's pods do not (a stable ``app=web`` beside a canary
       ``app=web,track=canary`` becomes ``app=web,!track``).

    Each must also select the workload's pods (``own_pods``: their labels). A workload whose own
    selector is empty (a Job selecting by controller-uid, a bare pod) starts from its pod
    template's labels. ``narrowed_from`` is set when the result differs from where it started.

    When none selects only its pods, the narrowest of 1 and 2 is returned with the workloads it
    ``also_selects``: the caller gives it no policy, and as a peer it admits those pods too."""
    candidates = []
    if own.pins_a_value and all(r.valid for r in own.match_expressions):
        candidates.append(own)
    template = LabelSelector(match_labels=pod_labels)
    if pod_labels and template != own:
        candidates.append(template)
    # What the workload was selected by before this check: a change from it is said.
    usual = own if not own.is_empty else template

    def choice(selector: LabelSelector, also_selects: tuple[str, ...] = ()) -> SelectorChoice:
        narrowed = selector != usual and not usual.is_empty
        return SelectorChoice(selector, usual if narrowed else None, also_selects)

    def selects_its_pods(selector: LabelSelector) -> bool:
        return all(selector.matches(labels) for labels in own_pods)

    theirs = [c for c in candidates if selects_its_pods(c)]
    for candidate in theirs:
        if not selected_elsewhere(candidate):
            return choice(candidate)
    if pod_labels:
        # Selects nothing of what the template selects elsewhere, by construction.
        excluding = _excluding(template, own_pods, selected_elsewhere(template))
        if excluding is not None and selects_its_pods(excluding):
            return choice(excluding)
    if not theirs:
        return choice(LabelSelector())
    narrowest = theirs[-1]
    also = {selected.workload for selected in selected_elsewhere(narrowest)}
    return choice(narrowest, tuple(sorted(also)))


def _excluding(
    template: LabelSelector,
    own_pods: Sequence[Mapping[str, str]],
    selected: Sequence[Selected],
) -> LabelSelector | None:
    """``template`` plus ``KEY DoesNotExist`` for a (stable) label key of each of the ``selected``
    pods and templates of other workloads that none of the workload's pods carries; None when
    nothing is selected, or something selected has no such key."""
    if not selected:
        return None
    own_keys = {key for labels in own_pods for key in labels}
    own_keys |= {key for key, _ in template.match_labels}
    keys: set[str] = set()
    for entry in sorted(selected, key=lambda s: (s.workload, sorted(s.labels.items()))):
        labels = entry.labels
        if keys & labels.keys():
            continue
        extra = sorted(k for k in labels if k not in own_keys and k not in VOLATILE_LABELS)
        if not extra:
            return None
        keys.add(extra[0])
    absent = tuple(LabelRequirement(key, "DoesNotExist") for key in sorted(keys))
    return LabelSelector(template.match_labels, absent)


def describe_workload(
    ref: WorkloadRef,
    obj: Controller | None,
    record: PodRecord,
    *,
    own_pods: Sequence[Mapping[str, str]] = (),
    selected_elsewhere: SelectedElsewhere = lambda _: (),
) -> Workload:
    """The workload's selector: its own (minus volatile labels); when that leaves nothing (Jobs
    select by controller-uid), its pod template's labels; without the object, the pod's labels;
    narrowed when it selects more than the workload (:func:`exclusive_selector`)."""
    own = LabelSelector()
    template_labels: tuple[tuple[str, str], ...] = ()
    host_network = record.host_network
    if obj is not None:
        own = obj.selector.without_volatile()
        template_labels = _without_volatile(obj.template_labels.items())
        host_network = host_network or obj.host_network
    pod_labels = template_labels or _without_volatile(record.labels)
    choice = exclusive_selector(own, pod_labels, own_pods, selected_elsewhere)
    return Workload(
        ref=ref,
        selector=choice.selector,
        pod_labels=pod_labels,
        host_network=host_network,
        narrowed_from=choice.narrowed_from,
        also_selects=choice.also_selects,
    )


@dataclass(frozen=True, slots=True)
class _Labelled:
    """The labels of a pod, or of a pod template (the pods it would make), and their workload."""

    workload: WorkloadRef
    labels: Mapping[str, str]
    is_pod: bool


class _NamespaceLabels:
    """The label sets of a namespace's pods and pod templates, each with its workload, indexed
    by label: "which other workloads does this selector select?" then reads only the entries
    that carry one of the values it pins."""

    def __init__(self, entries: Iterable[_Labelled]) -> None:
        self._entries = list(entries)
        self._by_label: dict[tuple[str, str], list[int]] = defaultdict(list)
        self._pods: dict[WorkloadRef, list[Mapping[str, str]]] = defaultdict(list)
        for index, entry in enumerate(self._entries):
            for pair in entry.labels.items():
                self._by_label[pair].append(index)
            if entry.is_pod:
                self._pods[entry.workload].append(entry.labels)

    def pods_of(self, ref: WorkloadRef) -> list[Mapping[str, str]]:
        """The labels of the workload's pods."""
        return self._pods.get(ref, [])

    def selected_elsewhere(self, selector: LabelSelector, ref: WorkloadRef) -> list[Selected]:
        """The pods and pod templates of workloads other than ``ref`` that ``selector``
        selects."""
        # Only entries with one of its pinned values can match: its rarest matchLabels pair or
        # In requirement, else (keys and exclusions only) every entry.
        pinned: list[Sequence[int]] = [self._by_label.get(p, []) for p in selector.match_labels]
        pinned += [
            [i for value in r.values for i in self._by_label.get((r.key, value), [])]
            for r in selector.match_expressions
            if r.operator == "In"
        ]
        indexes = min(pinned, key=len) if pinned else range(len(self._entries))
        return [
            Selected(str(entry.workload), entry.labels)
            for entry in (self._entries[index] for index in indexes)
            if entry.workload != ref and selector.matches(entry.labels)
        ]


@dataclass(frozen=True, slots=True)
class OwnerWalk:
    """Where a pod's owners lead: its workload's kind and name, and the object whose selector
    describes its pods (None when the snapshot does not have it)."""

    kind: str
    name: str
    obj: KubeObject | None


@dataclass(frozen=True, slots=True)
class _Owned:
    """A pod's workload, and the controller whose selector and template describe its pods."""

    ref: WorkloadRef
    controller: Controller | None


class Workloads:
    """The workload of each pod the claims know, described once."""

    def __init__(self, snapshot: Snapshot, claims: Claims) -> None:
        self._snapshot = snapshot
        self._claims = claims
        self._workloads: dict[WorkloadRef, Workload] = {}
        self._workload_of_key: dict[str, WorkloadRef] = {}
        self._owned: dict[str, _Owned] = {}
        self._namespace_labels: dict[str, _NamespaceLabels] | None = None

    def _object(self, kind: str, namespace: str, reference: OwnerReference) -> KubeObject | None:
        found = self._snapshot.by_uid(reference.uid)
        if found is not None and found.kind == kind:
            return found
        return self._snapshot.get(kind, namespace, reference.name)

    def walk_owners(self, record: PodRecord) -> OwnerWalk:
        """Where the pod's owner references lead (through a ReplicaSet to its Deployment, a Job to
        its CronJob; by their names when the snapshot lacks them)."""
        owner = record.owner
        if owner is None or owner.kind == "Node":  # bare or static (mirror) pod
            return OwnerWalk("Pod", record.name, None)
        namespace = record.namespace
        obj = self._object(owner.kind, namespace, owner)
        if owner.kind == "ReplicaSet":
            labels = dict(record.labels)
            parent = obj.owner if obj else None
            if parent is not None:
                # A Deployment, or another controller that rolls out through ReplicaSets (an
                # Argo Rollout): the ReplicaSet is one revision of it, not the workload.
                parent_obj = self._object(parent.kind, namespace, parent) or obj
                return OwnerWalk(parent.kind, parent.name, parent_obj)
            template_hash = labels.get("pod-template-hash", "")
            if obj is None and template_hash and owner.name.endswith(f"-{template_hash}"):
                name = owner.name.removesuffix(f"-{template_hash}")
                deployment = self._snapshot.get("Deployment", namespace, name)
                return OwnerWalk("Deployment", name, deployment)
        if owner.kind == "Job":
            parent = obj.owner if obj else None
            if parent is not None and parent.kind == "CronJob":
                cron = self._object("CronJob", namespace, parent) or obj
                return OwnerWalk("CronJob", parent.name, cron)
            # A CronJob names its Jobs "<cronjob>-<scheduled time in minutes>".
            prefix, _, suffix = owner.name.rpartition("-")
            if obj is None and suffix.isdigit():
                found = self._snapshot.get("CronJob", namespace, prefix)
                if found is not None:
                    return OwnerWalk("CronJob", prefix, found)
        return OwnerWalk(owner.kind, owner.name, obj)

    def _owners(self, record: PodRecord) -> _Owned:
        """The pod's workload and its controller, without describing the workload (:meth:`of`
        does)."""
        found = self._owned.get(record.key)
        if found is None:
            walk = self.walk_owners(record)
            controller = walk.obj if isinstance(walk.obj, Controller) else None
            found = _Owned(WorkloadRef(record.namespace, walk.kind, walk.name), controller)
            self._owned[record.key] = found
        return found

    def _labels_of(self, namespace: str) -> _NamespaceLabels:
        """The labels of every pod and pod template of ``namespace``, with their workloads."""
        if self._namespace_labels is None:
            entries: dict[str, list[_Labelled]] = defaultdict(list)
            for record in sorted(self._claims.records, key=lambda r: r.key):
                entry = _Labelled(self._owners(record).ref, dict(record.labels), True)
                entries[record.namespace].append(entry)
            for kind in _TEMPLATE_KINDS:
                for obj in self._snapshot.controllers(kind):
                    labels = obj.template_labels
                    # Whose pods these would be: as if a pod of this object.
                    owner = OwnerReference(kind, obj.name, obj.uid)
                    labelled = tuple(labels.items())
                    pod = PodRecord(obj.namespace, "", "", labelled, owner, "", False, ())
                    walk = self.walk_owners(pod)
                    ref = WorkloadRef(obj.namespace, walk.kind, walk.name)
                    entries[obj.namespace].append(_Labelled(ref, dict(labels), False))
            self._namespace_labels = {ns: _NamespaceLabels(found) for ns, found in entries.items()}
        return self._namespace_labels.get(namespace) or _NamespaceLabels(())

    def of(self, record: PodRecord) -> WorkloadRef:
        """The pod's workload (described on first use)."""
        if record.key in self._workload_of_key:
            return self._workload_of_key[record.key]
        owned = self._owners(record)
        ref = owned.ref
        if ref not in self._workloads:
            labels = self._labels_of(record.namespace)
            self._workloads[ref] = describe_workload(
                ref,
                owned.controller,
                record,
                own_pods=labels.pods_of(ref),
                selected_elsewhere=lambda selector: labels.selected_elsewhere(selector, ref),
            )
        self._workload_of_key[record.key] = ref
        return ref

    def get(self, ref: WorkloadRef) -> Workload:
        """The workload ``ref`` names (KeyError when no known pod belongs to it)."""
        if ref not in self._workloads:
            for record in self._claims.records:
                self.of(record)
        return self._workloads[ref]

    def of_pod(self, namespace: str, pod: str) -> WorkloadRef | None:
        """The workload of the pod of that name (the latest known, when the name was reused)."""
        records = self._claims.named(namespace, pod)
        return self.of(records[-1]) if records else None
