"""Label selectors: the ``metav1.LabelSelector`` a workload's pods are chosen by, as the snapshot
gives it and as a policy writes it, and the labels that never belong in one.

Data only: standard library, no I/O. The snapshot's views read selectors into these types
(``analyser.objects``); the resolver chooses one per workload (``analyser.workloads``); the
policies and the renderer write them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Labels that change with every rollout or pod and must never appear in a selector.
VOLATILE_LABELS: frozenset[str] = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "batch.kubernetes.io/controller-uid",
        "batch.kubernetes.io/job-name",
        "batch.kubernetes.io/job-completion-index",  # one value per pod of an Indexed Job
        "controller-uid",
        "job-name",
        "rollouts-pod-template-hash",  # Argo Rollouts' pod-template-hash
    }
)


@dataclass(frozen=True, order=True, slots=True)
class LabelRequirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        """Whether the API server would accept it: a known operator, values exactly for In and
        NotIn."""
        if self.operator in ("In", "NotIn"):
            return bool(self.key and self.values)
        return bool(self.key) and self.operator in ("Exists", "DoesNotExist") and not self.values

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a pod with ``labels`` meets it (a :attr:`valid` requirement)."""
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        return (self.key in labels) == (self.operator == "Exists")

    def __str__(self) -> str:
        """As ``kubectl get -l`` writes it: ``tier in (a,b)``, ``env notin (dev)``, ``track``,
        ``!legacy``."""
        if self.operator in ("In", "NotIn"):
            return f"{self.key} {self.operator.lower()} ({','.join(self.values)})"
        return self.key if self.operator == "Exists" else f"!{self.key}"


@dataclass(frozen=True, order=True, slots=True)
class LabelSelector:
    """A ``metav1.LabelSelector``; sorted tuples keep it hashable and the output stable."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelRequirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    @property
    def pins_a_value(self) -> bool:
        """Whether it names at least one label value (a matchLabels entry, or ``In``): a selector
        of keys and exclusions only (``app`` Exists) also selects every future pod with the key."""
        return bool(self.match_labels) or any(r.operator == "In" for r in self.match_expressions)

    def without_volatile(self) -> LabelSelector:
        """Itself without the entries that name a :data:`VOLATILE_LABELS` key."""
        return LabelSelector(
            tuple((k, v) for k, v in self.match_labels if k not in VOLATILE_LABELS),
            tuple(r for r in self.match_expressions if r.key not in VOLATILE_LABELS),
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether it selects a pod with ``labels`` (every requirement :attr:`valid`)."""
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def __str__(self) -> str:
        """As ``kubectl get -l`` writes it: ``app=web,tier in (a,b)``; ``{}`` when empty."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        parts += [str(r) for r in self.match_expressions]
        return ",".join(parts) or "{}"
