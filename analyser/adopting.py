"""Adopting: what applying the generated policies does to the NetworkPolicies a cluster has now
(the snapshot's).

``kubectl apply`` replaces a NetworkPolicy of the same namespace and name and leaves every other
one in place, and policies selecting the same pod combine: what any of them allows is allowed.
So, against the snapshot's policies:

- a :class:`Collision` is one with the namespace and name of a generated policy: applying
  replaces it. One an earlier run wrote (label ``app.kubernetes.io/managed-by: netpol-sniffer``)
  is an update; anyone else's is overwritten (the command line refuses that without --force);
- a differently named policy that isolates a workload's pods for a direction its new policy
  isolates too *combines* with it: the workload then allows what either allows (:attr:`combined`);
- the changes are ``verifying.diff`` (the ``diff --snapshot`` view) between the current set and
  the set after applying (the current one without the replaced policies, plus the generated
  ones), for every pair with a workload that gets a policy.

A current policy that cannot be read is left out with a note, and so are the changes past
:data:`MAX_COMPARED_PAIRS` pairs. Pure: documents and pod facts in, the comparison out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from analyser.evaluation import CompiledPolicy, Direction, Pod, PolicySet, compile_policy
from analyser.policies import MANAGED_BY_LABEL
from analyser.verifying import Change, Universe, diff
from kernel.errors import PolicyError

# The pairs compared (each workload that gets a policy with every workload and address block,
# both ways, on every port) past which the changes are left to `netpol-sniffer diff`, said in a
# note: a large cluster, or a tampered snapshot naming any number of ipBlocks, would make this
# the slowest step of analyse. Collisions and combinations are still found.
MAX_COMPARED_PAIRS = 100_000


@dataclass(frozen=True, order=True, slots=True)
class Collision:
    """A current policy with the namespace and name of a generated one."""

    policy: str  # "NS/name"
    workload: str  # whose generated policy it is, "NS/Kind/name"
    ours: bool  # written by an earlier run (its managed-by label): applying updates it


@dataclass(frozen=True, slots=True)
class Adoption:
    """The generated policies against the cluster's current ones (see the module docstring)."""

    current: tuple[str, ...] = ()  # "NS/name" of the current policies read, sorted
    collisions: tuple[Collision, ...] = ()
    # Workload ("NS/Kind/name") → the current policies, not replaced, that combine with its new
    # one; only workloads that have some.
    combined: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    changes: tuple[Change, ...] = ()  # verifying.diff(current, after applying)
    notes: tuple[str, ...] = ()  # current policies left out, and why

    @property
    def overwritten(self) -> tuple[Collision, ...]:
        """Collisions with policies netpol-sniffer did not write: applying would replace them."""
        return tuple(item for item in self.collisions if not item.ours)

    def by_workload(self, workloads: Iterable[str]) -> dict[str, WorkloadChanges]:
        """For each of ``workloads`` (sorted), the changes with it at either end."""
        wanted = sorted(workloads)
        gained: dict[str, list[Change]] = {workload: [] for workload in wanted}
        lost: dict[str, int] = dict.fromkeys(wanted, 0)
        for change in self.changes:
            for end in {change.client, change.server} & gained.keys():
                if change.newly_allowed:
                    gained[end].append(change)
                if change.newly_denied:
                    lost[end] += 1
        return {w: WorkloadChanges(tuple(gained[w]), lost[w]) for w in wanted}


@dataclass(frozen=True, slots=True)
class WorkloadChanges:
    """What applying changes for one workload: the pairs (it at either end) that gain ports,
    and how many lose some (newly denied: what applying is for)."""

    gained: tuple[Change, ...]
    lost: int


def _compiled(
    documents: Iterable[tuple[str, Mapping[str, Any]]], notes: list[str]
) -> list[tuple[CompiledPolicy, bool]]:
    """Each current policy compiled, with whether an earlier run wrote it."""
    found = []
    for where, document in documents:
        try:
            policy = compile_policy(document, source=where)
        except PolicyError as error:
            notes.append(f"{where}: left out of the comparison: {error}")
            continue
        labels = (document.get("metadata") or {}).get("labels") or {}
        found.append((policy, labels.get(MANAGED_BY_LABEL[0]) == MANAGED_BY_LABEL[1]))
    return found


def adopt(
    current: Iterable[tuple[str, Mapping[str, Any]]],
    generated: PolicySet,
    workloads: Mapping[str, str],
    pods: Mapping[str, Pod],
    *,
    nodes: Mapping[str, str] | None = None,
) -> Adoption:
    """``current``: the snapshot's NetworkPolicies (where each was read, its JSON);
    ``generated``: the rendered policies read back; ``workloads``: workload → its generated
    policy ("NS/name"); ``pods``: every workload of the snapshot as policies see it
    (``replaying.cluster_facts``); ``nodes``: node address → name (folds node blocks into one
    row, as verify does)."""
    notes: list[str] = []
    compiled = _compiled(current, notes)
    if not compiled:
        return Adoption(notes=tuple(notes))
    policy_of = {name: workload for workload, name in workloads.items()}
    collisions = tuple(
        sorted(
            Collision(str(policy), policy_of[str(policy)], ours)
            for policy, ours in compiled
            if str(policy) in policy_of
        )
    )
    replaced = {item.policy for item in collisions}
    before = PolicySet.of(policy for policy, _ in compiled)
    kept = PolicySet.of(policy for policy, _ in compiled if str(policy) not in replaced)
    after = PolicySet.of((*kept.policies, *generated.policies))
    combined = {}
    generated_by_name = {str(policy): policy for policy in generated.policies}
    for workload, name in sorted(workloads.items()):
        pod = pods.get(workload)
        if pod is None or name not in generated_by_name:
            continue
        own = [generated_by_name[name]]
        also = {
            str(policy)
            for direction in Direction
            if any(p.selects(pod, direction) for p in own)
            for policy in kept.selecting(pod, direction)
        }
        if also:
            combined[workload] = tuple(sorted(also))
    changes: tuple[Change, ...] = ()
    blocks = [*before.ip_blocks(), *generated.ip_blocks()]
    universe = Universe.of(pods.values(), blocks, focus=workloads, nodes=nodes)
    pairs = len(workloads) * (len(universe.pods) + 2 * len(universe.blocks))
    if pairs > MAX_COMPARED_PAIRS:
        notes.append(
            f"what applying changes is not computed here: {pairs} pairs to compare (more than "
            f"{MAX_COMPARED_PAIRS}); netpol-sniffer diff shows it"
        )
    else:
        changes = tuple(diff(before, after, universe))
    return Adoption(
        current=tuple(sorted(str(policy) for policy, _ in compiled)),
        collisions=collisions,
        combined=combined,
        changes=changes,
        notes=tuple(notes),
    )
